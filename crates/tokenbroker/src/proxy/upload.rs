//! A request body streamed to the upstream (one too large to keep for a retry, or of
//! unknown length): cut off past `max_request_body`, and timed so that `upstream_timeout`
//! bounds only the upstream's part of the exchange. While the proxy waits for the client's
//! next part, the clock is the client's (bounded by `server.idle_timeout` when the client
//! sends nothing); once the upstream has been handed a part, or the whole body, it runs
//! until the upstream takes the next part or answers. So a long upload at a client's pace
//! is not cut, and an upstream that stops reading or answering still is.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use axum::body::Body;
use tokio::sync::Notify;

use crate::observed::{Observed, Observer, Polled};

/// Whose turn it is in an upload, and a signal when that changes or a part moves on.
pub(super) struct Turn {
    /// The upstream's turn: it holds a part (or the whole body) and owes a read or an
    /// answer. Also before the body's first part is asked for (connecting, the head).
    upstream: AtomicBool,
    moved: Notify,
}

impl Turn {
    fn set(&self, upstreams: bool) {
        self.upstream.store(upstreams, Relaxed);
        self.moved.notify_one();
    }

    /// Runs `exchange` (the upstream call, up to its answer's head) until it ends, or until
    /// it has been the upstream's turn for `timeout` without a part moving: then `None`.
    pub(super) async fn bound<F: Future>(
        &self,
        timeout: Duration,
        exchange: F,
    ) -> Option<F::Output> {
        let mut exchange = pin!(exchange);
        loop {
            let moved = self.moved.notified();
            let upstreams = self.upstream.load(Relaxed);
            tokio::select! {
                done = &mut exchange => return Some(done),
                () = moved => {}
                () = tokio::time::sleep(timeout), if upstreams => return None,
            }
        }
    }
}

impl Observer for Turn {
    /// Pending: waiting for the client. Ready: the upstream has the part, or the end.
    fn polled(&self, polled: Polled) {
        self.set(polled != Polled::Pending);
    }
}

/// The client's `body` as it streams to the upstream, failing past `max` bytes, with the
/// [`Turn`] that times it.
pub(super) fn streamed(body: Body, max: u64) -> (Body, Arc<Turn>) {
    let turn = Arc::new(Turn {
        upstream: AtomicBool::new(true),
        moved: Notify::new(),
    });
    let limited = http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    let uploading = Observed::new(limited, turn.clone());
    (Body::new(uploading), turn)
}
