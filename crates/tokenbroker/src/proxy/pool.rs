//! Keep-alive HTTP/1.1 connections to one upstream, for one server worker: the idle ones
//! waiting for the next request, and the connection a request is on until its answer's body
//! has been relayed ([`Lease`]).
//!
//! Each connection is hyper's own (`client::conn::http1`), driven by a task on the worker's
//! runtime. A connection goes back to the pool when its answer's last byte has been read
//! and its request has been sent whole, with no task to wait for it; an answer cut off
//! early closes it. The most recently used idle connection is taken first, so the others
//! age out: one idle for [`IDLE`] is closed when the pool is next used (upstreams close
//! theirs sooner, typically after 5 to 75 s, which the connection's task notices).
//!
//! A request sent on a reused connection that the upstream closed meanwhile (it is never
//! written) is sent again on another one; one that was written is not replayed here.

use std::collections::VecDeque;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// How long a connection may stay idle in the pool.
pub(super) const IDLE: Duration = Duration::from_secs(90);

/// The most idle connections kept; more are closed as their answers end.
const MAX_IDLE: usize = 512;

/// Why an upstream request got no answer; never quotes a header or a body.
pub(super) type SendError = Box<dyn Error + Send + Sync>;

/// How to reach the upstream: its host and port, and TLS for an `https` one.
pub(super) struct Endpoint {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// One worker's connections to one upstream.
pub(super) struct Pool {
    endpoint: Arc<Endpoint>,
    /// Idle connections, the most recently used last.
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// A connection a request was sent on, until its answer's body has been read.
pub(super) struct Lease {
    sender: SendRequest<Body>,
    pool: Arc<Pool>,
}

impl Lease {
    /// Puts the connection back for the next request; call once the answer has been read
    /// to its end (else hyper closes the connection, and the pool drops it at checkout).
    pub(super) fn release(self) {
        self.pool.put_back(self.sender);
    }
}

impl Pool {
    pub(super) fn new(endpoint: Arc<Endpoint>) -> Self {
        Self {
            endpoint,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// An empty pool to the same upstream, for another worker.
    pub(super) fn for_worker(&self) -> Self {
        Self::new(self.endpoint.clone())
    }

    /// Sends `request` (origin-form URI, `Host` set) on an idle connection, or on a new
    /// one when none is left; answers the response head and the connection it came on.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            // Ready once the previous answer on it has been read; an error if it closed.
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(e.into());
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        sender,
                        pool: self.clone(),
                    };
                    return Ok((response, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed under it. Once more, elsewhere.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().expect("upstream pool lock poisoned");
        let now = Instant::now();
        while let Some(Idle { sender, since }) = idle.pop_back() {
            if now.duration_since(since) >= IDLE {
                // The newest is too old, so all are.
                idle.clear();
                return None;
            }
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request if its connection is ready for one: not when the
    /// upstream answered before it read the whole request body, which is still going out
    /// (at the client's pace; the next request would wait for it). Such a connection is
    /// dropped, and hyper closes it once that exchange has ended.
    fn put_back(&self, sender: SendRequest<Body>) {
        if !sender.is_ready() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("upstream pool lock poisoned");
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= IDLE)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle { sender, since: now });
        }
    }

    /// A new connection, its task spawned on this worker's runtime.
    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let endpoint = &*self.endpoint;
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        tcp.set_nodelay(true)?;
        match &endpoint.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => handshake(connector.connect(name.clone(), tcp).await?).await,
        }
    }
}

async fn handshake<I>(io: I) -> Result<SendRequest<Body>, SendError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
