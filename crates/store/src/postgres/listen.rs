//! Change notifications between the brokers of a cluster (LISTEN/NOTIFY).
//!
//! Every write that changes what brokers serve (a token committed or retired, a refresh
//! token rotated, reseeded or taken out of service) calls `pg_notify(channel, provider)` in
//! the same statement (`contract.rs`), so the notification goes out exactly when the write
//! commits, and never for a compare-and-set that lost. Here, one dedicated connection per
//! store (outside the pool: a pooled connection is shared and recycled, a listening one must
//! stay) LISTENs on the cluster's channel and hands each notification to the slots as a
//! [`Change`]. When that connection drops it reconnects with backoff and, once it listens
//! again, tells [`Change::Everything`]: notifications sent meanwhile are lost for good.
//! The first subscriber starts it, so commands that only read the store never listen.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokenbroker_core::store::Change;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Connection};

use super::error;

/// How many changes a slow slot may fall behind before it is told it lagged (and re-reads).
const CAPACITY: usize = 256;

/// The first and the longest wait before reconnecting a lost listening connection.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// TCP keepalive on the listening connection: it only reads, so without probes a silently
/// dead link (a NAT or firewall that forgot it) would go unnoticed for hours; the slots'
/// periodic re-read covers the minutes the probes take.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// PostgreSQL's longest identifier, in bytes; `pg_notify` refuses longer channel names.
const MAX_CHANNEL: usize = 63;

/// The channel of the cluster whose tables are in `schema`: one per schema, since one
/// database may hold several clusters. A schema name near the 63-byte limit is cut; two
/// clusters that then share a channel only re-read the store for each other's news.
pub(super) fn channel(schema: Option<&str>) -> String {
    let mut channel = match schema {
        Some(schema) => format!("tokenbroker_{schema}"),
        None => "tokenbroker".to_owned(),
    };
    // Schema names are ASCII (see `quote`), so any byte is a character boundary.
    channel.truncate(MAX_CHANNEL);
    channel
}

/// How to open the listening connection.
#[derive(Clone)]
pub(super) struct Target {
    /// The store's connection settings (keepalive added).
    pub(super) config: tokio_postgres::Config,
    /// The store's TLS connector, if it uses TLS.
    pub(super) tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The store's name for messages (no credentials).
    pub(super) name: Arc<str>,
    /// The cluster's channel.
    pub(super) channel: Arc<str>,
}

/// The listening connection's task, started by the first subscriber and stopped when the
/// store (every clone of it) is dropped.
pub(super) struct Listener {
    target: Target,
    sender: broadcast::Sender<Change>,
    task: OnceLock<JoinHandle<()>>,
}

impl Listener {
    pub(super) fn new(mut target: Target) -> Self {
        target.config.keepalives(true);
        target.config.keepalives_idle(KEEPALIVE_IDLE);
        Self {
            target,
            sender: broadcast::channel(CAPACITY).0,
            task: OnceLock::new(),
        }
    }

    /// Every change from now on; starts listening on the first call (inside a runtime).
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Change> {
        // Subscribed before the task starts, so the first `Everything` is not missed.
        let receiver = self.sender.subscribe();
        self.task
            .get_or_init(|| tokio::spawn(run(self.target.clone(), self.sender.clone())));
        receiver
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// Listens, and listens again after every loss, until aborted.
async fn run(target: Target, sender: broadcast::Sender<Change>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let (listened, ended) = match target.tls.clone() {
            Some(tls) => session(target.config.connect(tls).await, &target, &sender).await,
            None => {
                let connected = target.config.connect(tokio_postgres::NoTls).await;
                session(connected, &target, &sender).await
            }
        };
        if listened {
            backoff = BACKOFF_MIN;
        }
        let why = match ended {
            Ok(()) => "the server closed it".to_owned(),
            Err(e) => error::map(&target.name, &e).message,
        };
        tracing::warn!(
            store = %target.name,
            error = %why,
            retry_in_ms = backoff.as_millis() as u64,
            "lost the connection that listens for other brokers' changes; periodic re-reads continue"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: LISTEN, tell everyone to re-read (news before this moment may
/// have been missed), then forward notifications until it ends. Returns whether it got to
/// listen, and how it ended.
async fn session<S, T>(
    connected: Result<(tokio_postgres::Client, Connection<S, T>), tokio_postgres::Error>,
    target: &Target,
    sender: &broadcast::Sender<Change>,
) -> (bool, Result<(), tokio_postgres::Error>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (client, mut connection) = match connected {
        Ok(connected) => connected,
        Err(e) => return (false, Err(e)),
    };
    let mut forward = std::pin::pin!(forward(&mut connection, &target.channel, sender));
    // The channel is built from a checked schema name: no quote can be inside it.
    let statement = format!("LISTEN \"{}\"", target.channel);
    let listen = client.batch_execute(&statement);
    // The connection is driven by `forward`, so both run together until LISTEN is done.
    tokio::select! {
        listened = listen => if let Err(e) = listened {
            return (false, Err(e));
        },
        ended = &mut forward => return (false, ended),
    }
    tracing::debug!(store = %target.name, channel = %target.channel, "listening for other brokers' changes");
    let _ = sender.send(Change::Everything);
    (true, forward.await)
}

/// Drives the connection, passing on the notifications of `channel`, until it ends.
async fn forward<S, T>(
    connection: &mut Connection<S, T>,
    channel: &str,
    sender: &broadcast::Sender<Change>,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) if n.channel() == channel => {
                // No receiver (no slot yet, or none left) is not an error.
                let _ = sender.send(Change::Provider(n.payload().to_owned()));
            }
            // Notices, and nothing else is listened to.
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::channel;

    #[test]
    fn one_channel_per_schema_within_postgresql_limits() {
        assert_eq!(channel(None), "tokenbroker");
        assert_eq!(channel(Some("prod")), "tokenbroker_prod");
        let long = "s".repeat(63);
        assert_eq!(channel(Some(&long)).len(), 63);
    }
}
