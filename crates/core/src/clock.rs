//! Wall-clock time that follows tokio's clock.
//!
//! Token expiries are wall-clock instants (they come from JWT `exp` claims and go out as
//! RFC 3339), but the slot's timers run on tokio's monotonic clock. [`Clock`] anchors one to
//! the other once, so that `now()` advances exactly as tokio's timers do, including under
//! `tokio::time::pause()` in tests, and a system clock step does not fire or stall a refresh.

use std::time::{Duration, SystemTime};

/// A wall clock driven by tokio's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The wall time at `anchor`.
    wall: SystemTime,
    /// The tokio instant at which `wall` was read.
    anchor: tokio::time::Instant,
}

impl Clock {
    /// Anchors a new clock at the current wall time.
    pub fn new() -> Self {
        Self {
            wall: SystemTime::now(),
            anchor: tokio::time::Instant::now(),
        }
    }

    /// The current wall time, as tokio's clock sees it.
    pub fn now(&self) -> SystemTime {
        self.wall + self.anchor.elapsed()
    }

    /// The tokio instant at which this clock reads `at` (now, if `at` is in the past).
    pub fn instant_at(&self, at: SystemTime) -> tokio::time::Instant {
        let from_now = at.duration_since(self.now()).unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + from_now
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Rounds a wall time down to a whole second, as RFC 3339 with seconds shows it.
pub fn floor_to_second(at: SystemTime) -> SystemTime {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs()),
        Err(_) => at,
    }
}
