//! The slot's driver: one task per provider, the only caller of its issuer.
//!
//! It sleeps until the current token's `refresh_at` or until a handle wakes it, decides
//! whether an issuance is due ([`Shared::next_step`]), runs it, and publishes the outcome
//! to the slot's `watch` channel. Failures are followed by a backoff during which the
//! issuer is not called at all, however many consumers ask.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use super::{Shared, SlotState, backoff};
use crate::clock::floor_to_second;
use crate::issuer::{Issued, Issuer};
use crate::metrics::{KindLabels, ProviderLabel, ReasonLabels};
use crate::token::Token;

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Obtain a new token, for this reason (a log field).
    Issue(&'static str),
    /// Nothing to do until this time, or until woken if `None`.
    Sleep(Option<SystemTime>),
}

impl Shared {
    fn next_step(&self, now: SystemTime) -> Step {
        let view = self.view.borrow();
        let demand = self.demand.load(Ordering::Acquire);
        let Some(token) = &view.token else {
            return if demand {
                Step::Issue("first")
            } else {
                Step::Sleep(None)
            };
        };
        if token.generation <= self.rejected.load(Ordering::Acquire) {
            return Step::Issue("rejected");
        }
        if now + self.config.min_validity > token.expires_at {
            return if demand {
                Step::Issue("expired")
            } else {
                Step::Sleep(None)
            };
        }
        if now >= token.refresh_at {
            // An unused token is left to expire: nobody needs its successor yet.
            return if token.was_handed_out() || demand {
                Step::Issue("refresh_ahead")
            } else {
                Step::Sleep(None)
            };
        }
        Step::Sleep(Some(token.refresh_at))
    }
}

/// Runs the driver until `stop` turns true (or its sender is dropped).
pub(super) async fn run(
    shared: Arc<Shared>,
    issuer: Box<dyn Issuer>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut retry_at: Option<SystemTime> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let now = shared.clock.now();
        let wake_at = match shared.next_step(now) {
            Step::Issue(reason) if retry_at.is_none_or(|at| now >= at) => {
                let succeeded = tokio::select! {
                    ok = attempt(&shared, &*issuer, reason) => ok,
                    _ = stop.changed() => return,
                };
                if succeeded {
                    failures = 0;
                    retry_at = None;
                } else {
                    failures += 1;
                    let config = &shared.config;
                    let mut wait = backoff::delay(failures, config.backoff_min, config.backoff_max);
                    let asked = shared
                        .view
                        .borrow()
                        .last_error
                        .as_ref()
                        .and_then(|e| e.retry_after());
                    if let Some(asked) = asked {
                        wait = wait.max(asked);
                    }
                    let at = shared.clock.now() + wait;
                    retry_at = Some(at);
                    shared.view.send_modify(|v| v.retry_at = Some(at));
                }
                continue;
            }
            Step::Issue(_) => retry_at,
            Step::Sleep(at) => at,
        };
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(shared.clock.instant_at(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.wake.notified() => {}
            () = sleep => {}
            _ = stop.changed() => {}
        }
    }
}

/// One issuance attempt, published to the view. Returns whether it produced a token.
async fn attempt(shared: &Shared, issuer: &dyn Issuer, reason: &'static str) -> bool {
    let provider = shared.config.name.as_str();
    shared.demand.store(false, Ordering::Release);
    let current = {
        let view = shared.view.borrow();
        view.token.clone()
    };
    // Only a token the issuer has not rejected and that is still valid can be exchanged.
    let exchangeable = current.as_ref().filter(|t| {
        t.generation > shared.rejected.load(Ordering::Acquire)
            && t.remaining(shared.clock.now()) > shared.config.min_validity
    });
    shared.view.send_modify(|v| v.state = SlotState::Issuing);
    let started = Instant::now();
    let result = issuer.issue(exchangeable.map(|t| &**t)).await;
    let latency = started.elapsed();
    shared
        .metrics
        .issuer_latency
        .get_or_create(&ProviderLabel {
            provider: provider.to_owned(),
        })
        .observe(latency.as_secs_f64());
    let generation = current.map_or(0, |t| t.generation) + 1;
    match result {
        Ok(issued) => {
            let how = issued.how;
            let token = Arc::new(numbered(shared, issued, generation));
            tracing::info!(
                provider,
                generation,
                reason,
                how = how.as_str(),
                latency_ms = latency.as_millis() as u64,
                expires_in_s = token.remaining(shared.clock.now()).as_secs(),
                "token issued"
            );
            shared
                .metrics
                .issuances
                .get_or_create(&KindLabels {
                    provider: provider.to_owned(),
                    kind: how.as_str(),
                })
                .inc();
            shared.view.send_modify(|v| {
                v.token = Some(token);
                v.state = SlotState::Ready;
                v.last_error = None;
                v.retry_at = None;
                v.attempts += 1;
                v.issuances += 1;
            });
            true
        }
        Err(error) => {
            tracing::warn!(provider, reason, error = %error, latency_ms = latency.as_millis() as u64, "issuance failed");
            shared
                .metrics
                .issuance_failures
                .get_or_create(&ReasonLabels {
                    provider: provider.to_owned(),
                    reason: error.reason(),
                })
                .inc();
            shared.view.send_modify(|v| {
                v.state = SlotState::BackingOff;
                v.last_error = Some(error);
                v.attempts += 1;
            });
            false
        }
    }
}

/// Gives an issued token its generation and its `refresh_at`.
fn numbered(shared: &Shared, issued: Issued, generation: u64) -> Token {
    let lifetime = issued
        .expires_at
        .duration_since(issued.issued_at)
        .unwrap_or_default();
    let lead = shared.config.refresh_lead(lifetime);
    // Rounded down: refresh_at is a promise, and it is published with whole seconds.
    let refresh_at = floor_to_second(issued.expires_at - lead).max(issued.issued_at);
    Token::new(
        issued.access_token,
        generation,
        issued.issued_at,
        issued.expires_at,
        refresh_at,
    )
}
