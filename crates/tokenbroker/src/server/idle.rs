//! The idle timeout of client connections (`server.idle_timeout`). A connection is idle
//! while none of its requests is being answered: between requests, and while a request's
//! head is still coming in (a client trickling one in to hold the connection counts as
//! idle). It is idle too while a request being answered waits on the client and the client
//! moves no bytes: for more of the request's body ([`Reading`]), or to take the answer's
//! bytes hyper holds for it ([`Answer`]); nginx's `client_body_timeout` and `send_timeout`.
//! One that stays idle for the timeout is closed; a request being answered, however long it
//! takes and however long its answer's body streams, is not bound by it while the client
//! keeps up. A TLS handshake counts as idle time (it is bounded by its own 10 s as well).
//!
//! On the request path this costs a few plain loads and stores to a connection's
//! [`Activity`] (when a request's head is complete, as its body is read, as its answer's
//! body is taken and when that is done) and a reference count or two. The worker's
//! [`Sweeper`] spawns the connections' tasks, looks at each connection every quarter of the
//! timeout and closes (aborts the task of) one found idle at four looks in a row, and so
//! between one and one and a quarter timeouts after it went idle; a connection whose task
//! ends is forgotten at once. hyper's own header-read timeout would arm and free a timer for
//! every request head instead: about 1,300 instructions, 8% of a token request
//! (BENCHMARKS.md).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::observed::{Observed, Observer, Polled};

/// How many looks in a row must find a connection idle before it is closed.
const LOOKS: u8 = 4;

/// What one connection has been doing since the sweeper last looked. Only its worker's
/// thread touches it, so the atomics are for `Send` alone and cost plain loads and stores.
#[derive(Debug)]
pub(super) struct Activity {
    /// How many of its requests are being answered: head complete, answer not yet done.
    /// (A count, not a flag, so that no order of hyper's between one answer's end and the
    /// next request's start can leave a request being answered counted as none.)
    answering: AtomicU32,
    /// Something happened since the last look: an answer ended, or the connection is new.
    recent: AtomicBool,
    /// The request being answered waits on the client: for more of its body, or to take
    /// the bytes of the answer that hyper holds for it.
    on_client: AtomicBool,
    /// Bytes of a request being answered moved since the last look.
    moved: AtomicBool,
}

impl Activity {
    /// A new connection's: its first look counts as active, so that it too gets a whole
    /// timeout before it is closed.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            answering: AtomicU32::new(0),
            recent: AtomicBool::new(true),
            on_client: AtomicBool::new(false),
            moved: AtomicBool::new(false),
        })
    }

    /// A request's head is complete: the connection is busy until the returned guard,
    /// which goes into the answer's body ([`Answer`]), is dropped.
    pub(super) fn request_started(self: &Arc<Self>) -> Answering {
        let answering = self.answering.load(Relaxed);
        self.answering.store(answering.saturating_add(1), Relaxed);
        self.on_client.store(false, Relaxed);
        Answering(self.clone())
    }

    /// Whether the connection did anything since the last look (and forgets it): a request
    /// being answered keeps it busy unless that request waits on a client that moved no
    /// bytes since.
    fn looked_at(&self) -> bool {
        let recent = self.recent.swap(false, Relaxed);
        let moved = self.moved.swap(false, Relaxed);
        let answering = self.answering.load(Relaxed) > 0;
        recent || (answering && (moved || !self.on_client.load(Relaxed)))
    }

    /// Records how a poll of a request's or an answer's body went: whether it now waits on
    /// the client, and whether bytes moved.
    fn polled(&self, on_client: bool, moved: bool) {
        self.on_client.store(on_client, Relaxed);
        if moved {
            self.moved.store(true, Relaxed);
        }
    }
}

/// A request's body, which tells its connection's [`Activity`] whether the request waits
/// on the client for more of it.
pub(super) type Reading<B> = Observed<B, Reader>;

/// What [`Reading`] tells the connection through.
pub(super) struct Reader(Arc<Activity>);

impl Reader {
    pub(super) fn of(activity: &Arc<Activity>) -> Self {
        Self(activity.clone())
    }
}

impl Observer for Reader {
    fn polled(&self, polled: Polled) {
        let waiting = polled == Polled::Pending;
        self.0.polled(waiting, !waiting);
    }
}

impl Drop for Reader {
    /// A body dropped while waiting on the client waits no more.
    fn drop(&mut self) {
        self.0.on_client.store(false, Relaxed);
    }
}

/// One request being answered, until dropped: with its answer's body, or with the request
/// if that ends without an answer.
pub(super) struct Answering(Arc<Activity>);

impl Drop for Answering {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.recent.store(true, Relaxed);
        let answering = activity.answering.load(Relaxed);
        activity
            .answering
            .store(answering.saturating_sub(1), Relaxed);
    }
}

/// An answer's body, which ends its request's [`Answering`] when dropped: once hyper has
/// taken its last byte (into its write buffer; a client slow to read those bytes is idle
/// from then on, as it was under hyper's own timeout), or the connection ended first.
/// Until then, hyper holding bytes of it for the client and not coming back for more (the
/// client reads nothing) is waiting on the client; waiting for the body's next bytes (an
/// upstream's) is not.
pub(super) type Answer = Observed<Body, Answering>;

impl Observer for Answering {
    fn polled(&self, polled: Polled) {
        self.0.polled(polled == Polled::Part, true);
    }
}

/// One worker's watch over its connections.
pub(super) struct Sweeper {
    looks: Interval,
    watched: Arc<Mutex<HashMap<u64, Watched>>>,
    next_id: u64,
}

struct Watched {
    activity: Arc<Activity>,
    /// The task serving the connection; aborting it closes the connection.
    task: AbortHandle,
    /// How many looks in a row found it idle.
    idle_looks: u8,
}

/// Held by a connection's task: when the task ends (or is aborted), its connection is
/// forgotten at once, so the sweeper holds nothing of connections that are gone.
struct Forget {
    watched: Arc<Mutex<HashMap<u64, Watched>>>,
    id: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        lock(&self.watched).remove(&self.id);
    }
}

fn lock(watched: &Mutex<HashMap<u64, Watched>>) -> MutexGuard<'_, HashMap<u64, Watched>> {
    // A panic while holding it cannot leave the map half-changed.
    watched.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sweeper {
    pub(super) fn new(idle_timeout: Duration) -> Self {
        // (`Serving` can be built by hand; a zero period would panic.)
        let every = (idle_timeout / u32::from(LOOKS)).max(Duration::from_millis(1));
        let mut looks = tokio::time::interval_at(Instant::now() + every, every);
        looks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            looks,
            watched: Arc::default(),
            next_id: 0,
        }
    }

    /// Spawns the task that serves a new connection, `serve(activity)`, and watches it.
    pub(super) fn spawn<F>(&mut self, serve: impl FnOnce(Arc<Activity>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self.next_id;
        self.next_id += 1;
        let activity = Activity::new();
        let forget = Forget {
            watched: self.watched.clone(),
            id,
        };
        let serving = serve(activity.clone());
        let task = tokio::spawn(async move {
            serving.await;
            drop(forget);
        });
        let watched = Watched {
            activity,
            task: task.abort_handle(),
            idle_looks: 0,
        };
        // A task that ended already (on another runtime flavour) is dropped at the next look.
        lock(&self.watched).insert(id, watched);
    }

    /// Waits for the next look, then closes the connections idle for long enough.
    /// Cancel-safe: a look not yet due is not lost.
    pub(super) async fn sweep(&mut self) {
        self.looks.tick().await;
        let mut idle = Vec::new();
        lock(&self.watched).retain(|_, connection| {
            if connection.task.is_finished() {
                return false;
            }
            if connection.activity.looked_at() {
                connection.idle_looks = 0;
                return true;
            }
            connection.idle_looks += 1;
            if connection.idle_looks < LOOKS {
                return true;
            }
            idle.push(connection.task.clone());
            false
        });
        for task in idle {
            tracing::debug!("closing a connection idle for server.idle_timeout");
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    #[test]
    fn a_connection_is_active_while_answering_and_at_the_first_look_after_an_answer() {
        let activity = Activity::new();
        assert!(activity.looked_at(), "a new connection's first look");
        assert!(!activity.looked_at(), "nothing since");
        let first = activity.request_started();
        assert!(activity.looked_at());
        assert!(activity.looked_at(), "still answering");
        drop(Answer::new(Body::empty(), first));
        assert!(activity.looked_at(), "the answer ended since the last look");
        assert!(!activity.looked_at(), "idle again");

        // The next request starting before the last answer's end is counted: still busy.
        let last = activity.request_started();
        let next = activity.request_started();
        drop(Answer::new(Body::empty(), last));
        assert!(activity.looked_at());
        assert!(
            activity.looked_at(),
            "the next request is still being answered"
        );
        // A request that ends without an answer (its connection closed) ends too.
        drop(next);
        assert!(activity.looked_at());
        assert!(!activity.looked_at(), "idle");
    }

    /// Polls `body` once, as hyper would.
    fn poll_once<B: http_body::Body + Unpin>(body: &mut B) -> bool {
        let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
        std::pin::Pin::new(body).poll_frame(&mut cx).is_ready()
    }

    fn silent() -> Body {
        Body::from_stream(futures_util::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >())
    }

    #[test]
    fn a_request_waiting_on_a_client_that_moves_nothing_is_idle() {
        let activity = Activity::new();
        activity.looked_at();
        let answering = activity.request_started();
        assert!(activity.looked_at(), "being answered");
        // Its body: the client sends nothing, then a part.
        let mut reading = Reading::new(silent(), Reader::of(&activity));
        assert!(!poll_once(&mut reading));
        assert!(!activity.looked_at(), "waits on a client that sent nothing");
        let mut reading = Reading::new(Body::from("part"), Reader::of(&activity));
        assert!(poll_once(&mut reading));
        assert!(activity.looked_at(), "the client sent a part");
        assert!(activity.looked_at(), "and the request is not waiting on it");
        drop(reading);
        // Its answer: hyper takes a part for the client, and does not come back for more.
        let mut answer = Answer::new(Body::from("part"), answering);
        assert!(poll_once(&mut answer));
        assert!(activity.looked_at(), "a part went to the client");
        assert!(!activity.looked_at(), "the client took nothing since");
        drop(answer);
        assert!(activity.looked_at(), "the answer ended");
        // An answer waiting for its body's next bytes (an upstream's) is busy.
        let mut answer = Answer::new(silent(), activity.request_started());
        assert!(!poll_once(&mut answer));
        activity.looked_at();
        assert!(
            activity.looked_at(),
            "waits on the upstream, not the client"
        );
    }

    /// Spawns a connection's task that runs until it is aborted; answers its activity and
    /// what tells that the task has ended.
    fn serve_until_aborted(sweeper: &mut Sweeper) -> (Arc<Activity>, oneshot::Receiver<()>) {
        let (alive, ended) = oneshot::channel::<()>();
        let mut given = None;
        sweeper.spawn(|activity| {
            given = Some(activity);
            async move {
                let _alive = alive;
                std::future::pending::<()>().await;
            }
        });
        (given.expect("spawn gives the activity"), ended)
    }

    fn ended(receivers: &mut [oneshot::Receiver<()>]) -> Vec<bool> {
        receivers
            .iter_mut()
            .map(|r| matches!(r.try_recv(), Err(oneshot::error::TryRecvError::Closed)))
            .collect()
    }

    /// Four connections: one idle, one answering all along, one answering until the third
    /// look, and one whose task ends by itself.
    #[tokio::test(start_paused = true)]
    async fn the_sweeper_closes_a_connection_at_its_fourth_idle_look_in_a_row() {
        let timeout = Duration::from_secs(60);
        let mut sweeper = Sweeper::new(timeout);
        let (_, idle) = serve_until_aborted(&mut sweeper);
        let (busy, busy_ended) = serve_until_aborted(&mut sweeper);
        let (answered, answered_ended) = serve_until_aborted(&mut sweeper);
        let mut receivers = [idle, busy_ended, answered_ended];
        sweeper.spawn(|_| async {});
        tokio::task::yield_now().await;
        assert_eq!(
            lock(&sweeper.watched).len(),
            3,
            "a connection whose task ended is forgotten at once"
        );
        let _busy = busy.request_started();
        let answering = answered.request_started();
        let mut answering = Some(answering);

        let started = Instant::now();
        for look in 1..=8 {
            sweeper.sweep().await;
            if look == 3 {
                drop(Answer::new(Body::empty(), answering.take().unwrap()));
            }
            tokio::task::yield_now().await;
            // The idle one: active at look 1 (new), closed at 5. The answered one: active
            // until look 4 (its answer ended after look 3), closed at 8.
            assert_eq!(
                ended(&mut receivers),
                [look >= 5, false, look >= 8],
                "after look {look}, at {:?}",
                started.elapsed()
            );
        }
        assert_eq!(
            lock(&sweeper.watched).len(),
            1,
            "only the busy one is still watched"
        );
        assert_eq!(
            started.elapsed(),
            timeout * 2,
            "a look every quarter timeout"
        );
    }
}
