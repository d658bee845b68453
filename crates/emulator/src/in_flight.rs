//! Counting the requests an emulator is handling at once, and the most it ever handled at
//! once: the figure that proves a client never overlapped two issuances.
//!
//! Atomics rather than a mutex, so that the guard's `Drop` can neither block nor be lost to
//! a poisoned lock, and so that entering is safe from any handler whatever it holds.

use std::sync::atomic::{AtomicU64, Ordering};

/// The number of requests in flight and its peak.
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    /// Requests being handled right now.
    now: AtomicU64,
    /// The most ever handled at once.
    peak: AtomicU64,
}

impl Gauge {
    /// Marks one request as in flight until the returned guard drops, which happens also when
    /// the client goes away and the handler is cancelled mid-way.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        InFlight { gauge: self }
    }

    /// The most requests ever in flight at once.
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// The requests in flight right now.
    pub(crate) fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// One request being handled; dropping it ends it, whichever way the handler ends.
#[derive(Debug)]
pub(crate) struct InFlight<'a> {
    /// The gauge it counts in.
    gauge: &'a Gauge,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_peak_and_releases_on_drop() {
        let gauge = Gauge::default();
        let first = gauge.enter();
        let second = gauge.enter();
        assert_eq!(gauge.now(), 2);
        drop(second);
        drop(first);
        let third = gauge.enter();
        assert_eq!(gauge.peak(), 2);
        drop(third);
        assert_eq!(gauge.now(), 0);
        assert_eq!(gauge.peak(), 2);
    }
}
