//! The wall clock the slots go by.
//!
//! Token expiries are wall-clock instants: they come from JWT `exp` claims and issuers'
//! `expires_in`, go out as RFC 3339 and are compared with the issuer's own clock, so in
//! production [`Clock::system`] is simply `SystemTime::now()`. The slot's timers run on
//! tokio's clock; [`Clock::instant_at`] converts. For tests under `tokio::time::pause()`,
//! [`Clock::following_tokio`] makes the wall clock advance exactly as tokio's does.

use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// For a clock that follows tokio: the wall time at a tokio instant.
    anchor: Option<(SystemTime, tokio::time::Instant)>,
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self { anchor: None }
    }

    /// A wall clock that advances with tokio's clock (paused or not) from the current
    /// wall time, for deterministic tests.
    pub fn following_tokio() -> Self {
        Self {
            anchor: Some((SystemTime::now(), tokio::time::Instant::now())),
        }
    }

    /// The current wall time.
    pub fn now(&self) -> SystemTime {
        match self.anchor {
            None => SystemTime::now(),
            Some((wall, at)) => wall + at.elapsed(),
        }
    }

    /// The tokio instant at which this clock will read `at` (now, if `at` is past).
    pub fn instant_at(&self, at: SystemTime) -> tokio::time::Instant {
        let from_now = at.duration_since(self.now()).unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + from_now
    }
}

/// Rounds a wall time down to a whole second, as RFC 3339 with seconds shows it.
pub fn floor_to_second(at: SystemTime) -> SystemTime {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs()),
        Err(_) => at,
    }
}
