//! Retry delays after a failed issuance: exponential, with jitter.
//!
//! The delay doubles per consecutive failure between `backoff_min` and `backoff_max`, and
//! each actual wait is drawn from the upper half of it ("equal jitter"). Full jitter would
//! draw from `0..=delay` and could retry at once; the upper half keeps brokers that failed
//! together from retrying together while still guaranteeing the issuer a minimum spacing.

use std::time::Duration;

use rand::Rng;

/// The wait before retry number `failures` (1 after the first failure).
pub(crate) fn delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let ceiling = min.saturating_mul(1 << exponent).min(max);
    let half = ceiling / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_bounds_and_caps() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(8));
        for failures in 1..=10u32 {
            let ceiling = (min * 2u32.pow((failures - 1).min(3))).min(max);
            for _ in 0..50 {
                let d = delay(failures, min, max);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{failures}: {d:?} vs {ceiling:?}"
                );
            }
        }
    }
}
