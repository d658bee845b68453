//! Running the broker: open the store, build the core from a config, serve the API on a
//! bound listener until a shutdown future resolves, then let in-flight requests and
//! issuances finish.
//!
//! [`run`] takes the listener and the shutdown signal from its caller, so `serve` passes a
//! socket it bound and SIGINT/SIGTERM, and tests pass port 0 and a channel of their own.
//!
//! HTTP is served by `workers` threads, each with a single-threaded runtime of its own.
//! [`run`] accepts and hands each new connection to the worker serving the fewest; the
//! worker keeps it, with the proxy's upstream connections it opens, to itself: a request
//! never changes threads, and no two workers contend for a lock on the request path. The
//! core (the slots' drivers and the store) stays on the runtime that called [`run`].

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokenbroker_core::access::Access;
use tokenbroker_core::broker::StartError;
use tokenbroker_core::config::ServerConfig;
use tokenbroker_core::seal::Sealer;
use tokenbroker_core::slot::Persistence;
use tokenbroker_core::{Broker, Config};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

use crate::api::{AppState, Endpoint, Peer, ServedCounters};
use crate::backend::{self, Missing};
use crate::exit;
use crate::proxy::{UpstreamError, Upstreams};
use crate::rendered::RenderCache;

mod idle;

use idle::{Activity, Answer, Reader, Reading, Sweeper};

/// How long in-flight requests get to finish after the shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// How long a client gets to complete its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Broker(#[from] StartError),
    #[error(transparent)]
    Proxy(#[from] UpstreamError),
}

impl AppState {
    /// Opens the store `config` names with `sealer` and starts the core: stored tokens are
    /// reused, nobody logs in until a consumer asks.
    pub async fn start(config: Config, sealer: Sealer) -> Result<Self, StartupError> {
        let backend = backend::open(&config.store, Missing::Create)
            .await
            .map_err(StartError::from)?;
        let persistence = Persistence {
            store: backend.store,
            sealer: Arc::new(sealer),
            holder: holder_id(),
            sync_every: Some(backend.sync_every),
        };
        let access = Arc::new(Access::from_config(&config));
        let upstreams = Arc::new(Upstreams::new(config.providers.values())?);
        let rendered = Arc::new(RenderCache::new(
            config.providers.keys().map(String::as_str),
        ));
        let broker = Arc::new(Broker::start(config.providers, persistence).await?);
        let served = Arc::new(ServedCounters::new(
            broker.metrics(),
            broker.slots().map(|slot| slot.config().name.as_str()),
        ));
        Ok(Self {
            broker,
            access,
            upstreams,
            rendered,
            served,
            scheme: "http",
        })
    }
}

/// This process's name as an issuance-lease holder: unique per start.
fn holder_id() -> String {
    format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// How the server serves its connections: `[server]`'s `workers` and `idle_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    /// How many threads serve HTTP.
    pub workers: NonZeroUsize,
    /// How long a connection may stay idle: with no request of its being answered.
    pub idle_timeout: Duration,
}

impl Serving {
    /// What `config` asks for, with one worker per CPU unless it says otherwise.
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            workers: config.workers.unwrap_or_else(|| {
                std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
            }),
            idle_timeout: config.idle_timeout,
        }
    }
}

impl Default for Serving {
    /// What a config without a `[server]` table gets.
    fn default() -> Self {
        Self::new(&ServerConfig::default())
    }
}

/// Serves the API over plain HTTP on `listener` until `shutdown` resolves, then drains
/// (bounded) and stops the slots' drivers.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, state, None, serving, shutdown).await
}

/// Serves the API over HTTPS, as [`run`] does over plain HTTP.
pub async fn run_tls(
    listener: TcpListener,
    mut state: AppState,
    tls: Arc<rustls::ServerConfig>,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    state.scheme = "https";
    serve(
        listener,
        state,
        Some(TlsAcceptor::from(tls)),
        serving,
        shutdown,
    )
    .await
}

async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<TlsAcceptor>,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let broker = state.broker.clone();
    let workers = serving.workers.get();
    let mut lanes = Vec::with_capacity(workers);
    let mut finished = Vec::with_capacity(workers);
    for index in 0..workers {
        let (handoff, accepted) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            accepted,
            load: load.clone(),
            endpoint: Endpoint::new(state.for_worker()),
            tls: tls.clone(),
            idle_timeout: serving.idle_timeout,
        };
        let (done, result) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("tokenbroker-http-{index}"))
            .spawn(move || {
                let _ = done.send(worker.run());
            })?;
        lanes.push(Lane { handoff, load });
        finished.push(result);
    }
    // Accept until the signal, or until a worker gives up (it only does when it cannot run).
    let mut first = futures_util::future::select_all(finished);
    let mut shutdown = std::pin::pin!(shutdown);
    let early = loop {
        tokio::select! {
            () = &mut shutdown => break None,
            (result, _, rest) = &mut first => break Some((result, rest)),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => hand_over(&lanes, stream, peer),
                Err(e) => accept_failed(e).await,
            },
        }
    };
    // No more connections: each worker finishes those it has (bounded) and ends.
    drop(listener);
    drop(lanes);
    let (mut result, rest) = match early {
        None => {
            tracing::info!("shutting down: finishing requests in flight");
            let (result, _, rest) = first.await;
            (result, rest)
        }
        Some((result, rest)) => (result, rest),
    };
    for other in rest {
        let other = other.await;
        if result.as_ref().is_ok_and(Result::is_ok) {
            result = other;
        }
    }
    broker.shutdown().await;
    result.unwrap_or_else(|_| Err(std::io::Error::other("a server worker panicked")))
}

/// The way to one worker: where its new connections go, and how many it is serving.
struct Lane {
    handoff: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    load: Arc<AtomicUsize>,
}

/// Gives a new connection to the worker serving the fewest. (Left to accept for
/// themselves, the worker that happened to be awake took every connection of a burst.)
fn hand_over(lanes: &[Lane], stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let Some(lane) = lanes
        .iter()
        .min_by_key(|lane| lane.load.load(Ordering::Relaxed))
    else {
        return;
    };
    match stream.into_std() {
        Ok(stream) => {
            lane.load.fetch_add(1, Ordering::Relaxed);
            if lane.handoff.send((stream, peer)).is_err() {
                // The worker has ended; the connection closes with the stream.
                lane.load.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Err(e) => tracing::warn!(%peer, error = %e, "cannot hand a connection to a worker"),
    }
}

/// One HTTP thread: its runtime, the connections handed to it, its own upstream pools.
struct Worker {
    accepted: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    /// How many connections it is serving, for [`hand_over`].
    load: Arc<AtomicUsize>,
    endpoint: Endpoint,
    tls: Option<TlsAcceptor>,
    idle_timeout: Duration,
}

/// Counts a connection in its worker's load while it lives.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Worker {
    /// Serves on this thread until no connection can come any more, then drains its
    /// connections (bounded).
    fn run(self) -> std::io::Result<()> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self.serve())
    }

    async fn serve(mut self) -> std::io::Result<()> {
        let connections = GracefulShutdown::new();
        let mut sweeper = Sweeper::new(self.idle_timeout);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.accepted.recv() => match accepted {
                    Some(accepted) => accepted,
                    None => break,
                },
                () = sweeper.sweep() => continue,
            };
            let counted = Counted(self.load.clone());
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot take up a connection");
                    continue;
                }
            };
            let endpoint = self.endpoint.clone();
            let watcher = connections.watcher();
            match self.tls.clone() {
                None => sweeper.spawn(|activity| async move {
                    connection(stream, peer, endpoint, watcher, activity).await;
                    drop(counted);
                }),
                Some(acceptor) => sweeper.spawn(|activity| async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            connection(stream, peer, endpoint, watcher, activity).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                    drop(counted);
                }),
            }
        }
        // The sweeper goes on looking while the connections drain: a client trickling a
        // head in does not hold the drain longer than its idle timeout.
        let drained = tokio::time::timeout(DRAIN, connections.shutdown());
        tokio::pin!(drained);
        let drained = loop {
            tokio::select! {
                drained = &mut drained => break drained,
                () = sweeper.sweep() => {}
            }
        };
        if drained.is_err() {
            tracing::warn!(
                drain_s = DRAIN.as_secs(),
                "requests still in flight after the drain window; closing"
            );
        }
        Ok(())
    }
}

/// Serves one client connection's requests until it closes, or until the worker stops
/// (then the request under way finishes and the connection closes). Its worker's
/// [`Sweeper`] closes it when it goes `server.idle_timeout` without a request being
/// answered; `activity` is what tells it.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    endpoint: Endpoint,
    watcher: Watcher,
    activity: Arc<Activity>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let both = Arc::new((endpoint, Peer::new(peer)));
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let answering = activity.request_started();
        let request = request.map(|body| Reading::new(body, Reader::of(&activity)));
        let both = both.clone();
        async move {
            let (endpoint, client) = &*both;
            let answer = endpoint.handle(client, request).await;
            Ok::<_, std::convert::Infallible>(answer.map(|body| Answer::new(body, answering)))
        }
    });
    // An answer's head and body go out in one buffer, with one `send`: measured, a
    // `writev` of the two cost more in the kernel than the copy it saves (BENCHMARKS.md).
    // `half_close` stays off: its read for EOF while a request is in flight costs hyper a
    // new read buffer per request (2.5% of a token request), but it is how a client that
    // hangs up mid-request is noticed and its request (a proxied one: its upstream call)
    // dropped.
    let connection = hyper::server::conn::http1::Builder::new()
        .writev(false)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// An accept error: a connection that died in the backlog is skipped; anything else (out
/// of file descriptors) is logged and retried a second later, when connections may have
/// closed.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A broker served by a background task, for the demo and the tests.
pub struct Running {
    /// The base URL it answers on, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops it as a signal would, and waits for it to finish.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Serves `state` on `listener` in a background task until [`Running::stop`].
pub fn spawn(listener: TcpListener, state: AppState, serving: Serving) -> std::io::Result<Running> {
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, state, serving, async {
        let _ = stopped.await;
    }));
    Ok(Running { url, stop, task })
}

/// The signal that asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Stop {
    /// The exit code a shell gives a program this signal killed (128 + its number).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => exit::INTERRUPTED,
            Self::Terminate => exit::TERMINATED,
        }
    }
}

/// Resolves on SIGINT or SIGTERM, saying which. On Unix it listens from the call on, not
/// from the first poll: a signal in between is not lost, nor does it end the process the
/// default way, without the caller's clean-up. (Elsewhere it waits for Ctrl-C from the
/// first poll.)
pub fn signal() -> impl Future<Output = Stop> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let received = |listener: std::io::Result<tokio::signal::unix::Signal>| async move {
                match listener {
                    Ok(mut listener) => drop(listener.recv().await),
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                () = received(interrupt) => Stop::Interrupt,
                () = received(terminate) => Stop::Terminate,
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        Stop::Interrupt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` connected streams, as a listener accepts them.
    async fn accepted(count: usize) -> Vec<(TcpStream, SocketAddr, std::net::TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut streams = Vec::new();
        for _ in 0..count {
            let client = std::net::TcpStream::connect(address).unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            streams.push((stream, peer, client));
        }
        streams
    }

    #[tokio::test]
    async fn new_connections_go_to_the_worker_serving_the_fewest() {
        let mut receivers = Vec::new();
        let lanes: Vec<Lane> = (0..2)
            .map(|_| {
                let (handoff, accepted) = mpsc::unbounded_channel();
                receivers.push(accepted);
                Lane {
                    handoff,
                    load: Arc::new(AtomicUsize::new(0)),
                }
            })
            .collect();
        // A worker already busy with three connections gets none of the next three.
        lanes[0].load.store(3, Ordering::Relaxed);
        let mut clients = Vec::new();
        for (stream, peer, client) in accepted(5).await {
            hand_over(&lanes, stream, peer);
            clients.push(client);
        }
        let loads: Vec<usize> = lanes
            .iter()
            .map(|l| l.load.load(Ordering::Relaxed))
            .collect();
        assert_eq!(loads, [4, 4], "three to the idle worker, then one each");
        let handed: Vec<usize> = receivers.iter_mut().map(|r| r.len()).collect();
        assert_eq!(handed, [1, 4]);

        // A connection that ends lowers its worker's load: the next goes there.
        let (_, _) = receivers[1].try_recv().unwrap();
        drop(Counted(lanes[1].load.clone()));
        let (stream, peer, _client) = accepted(1).await.pop().unwrap();
        hand_over(&lanes, stream, peer);
        assert_eq!(receivers[1].len(), 4);
    }
}
