//! The capped pool's state: the accepted client, its live tokens, the test knobs and the
//! counters, with the rules that decide whether a token may be issued and whether one is
//! live.
//!
//! A token is live from its issuance until its lifetime has passed on the monotonic clock,
//! unless revoked first; revoked tokens are forgotten at once, expired ones at the next
//! issuance. Everything lives behind std mutexes held only for short, await-free sections; a
//! poisoned lock is taken over rather than turned into a panic in every later request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::PoolCounters;
use crate::in_flight::{Gauge, InFlight};
use crate::oauth2::{self, ClientCredentials, OAuthError, ProtectedApi};

/// The settings fixed when the pool starts.
pub(super) struct Config {
    /// The one accepted client.
    pub(super) client: ClientCredentials,
    /// How many live tokens the client may hold.
    pub(super) max_active: usize,
    /// Token lifetime, already in whole seconds (at least one) so that `expires_in` tells it.
    pub(super) token_lifetime: Duration,
    /// The time each token request takes.
    pub(super) issue_latency: Duration,
}

/// Everything the handlers share.
pub(super) struct Shared {
    /// The fixed settings.
    config: Config,
    /// True while the token endpoint answers 503.
    outage: AtomicBool,
    /// The rate limit and the forced error, set by tests.
    knobs: Mutex<Knobs>,
    /// Tokens and counters, which change together.
    pool: Mutex<Pool>,
    /// Token requests being handled right now, and their peak.
    requests: Gauge,
}

/// The knobs that turn the token endpoint's answers into errors.
#[derive(Default)]
struct Knobs {
    /// While set, 429 `slow_down` with this `Retry-After`.
    rate_limit: Option<Duration>,
    /// While set, this answer to every token request.
    forced: Option<OAuthError>,
}

/// The mutable state.
#[derive(Default)]
struct Pool {
    /// When each token that may still be live was issued, by token.
    tokens: HashMap<String, Instant>,
    /// What has been seen so far, but for the peak of requests in flight, which
    /// `Shared::requests` keeps.
    counters: PoolCounters,
    /// Arrival time of each token request.
    request_times: Vec<Instant>,
}

impl Pool {
    /// The tokens live at `now` and when each was issued, oldest first.
    fn live(&self, lifetime: Duration, now: Instant) -> Vec<(&str, Instant)> {
        let mut live: Vec<(&str, Instant)> = self
            .tokens
            .iter()
            .filter(|(_, issued_at)| now.duration_since(**issued_at) < lifetime)
            .map(|(token, issued_at)| (token.as_str(), *issued_at))
            .collect();
        live.sort_by_key(|(_, issued_at)| *issued_at);
        live
    }
}

impl Shared {
    pub(super) fn new(config: Config) -> Self {
        Self {
            config,
            outage: AtomicBool::new(false),
            knobs: Mutex::new(Knobs::default()),
            pool: Mutex::new(Pool::default()),
            requests: Gauge::default(),
        }
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn knobs(&self) -> MutexGuard<'_, Knobs> {
        self.knobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn client(&self) -> &ClientCredentials {
        &self.config.client
    }

    pub(super) fn token_lifetime(&self) -> Duration {
        self.config.token_lifetime
    }

    pub(super) fn issue_latency(&self) -> Duration {
        self.config.issue_latency
    }

    /// Counts a `POST /oauth/token`, notes when it arrived, and marks it in flight until the
    /// returned guard drops.
    pub(super) fn begin_token_request(&self) -> InFlight<'_> {
        let mut pool = self.pool();
        pool.counters.token_requests += 1;
        pool.request_times.push(Instant::now());
        self.requests.enter()
    }

    /// The answer the knobs impose on a token request, if any: the outage, else the forced
    /// error, else the rate limit.
    pub(super) fn knob_refusal(&self) -> Option<OAuthError> {
        if self.outage.load(Ordering::SeqCst) {
            return Some(OAuthError::outage());
        }
        let knobs = self.knobs();
        knobs.forced.clone().or_else(|| {
            knobs
                .rate_limit
                .map(|retry_after| OAuthError::slow_down(oauth2::ceil_secs(retry_after)))
        })
    }

    /// Issues a new token to the client (already authenticated), unless it holds the maximum
    /// already; then the answer is a 429 whose `Retry-After` is the time until the oldest of
    /// its tokens expires.
    pub(super) fn issue(&self) -> Result<String, OAuthError> {
        let lifetime = self.config.token_lifetime;
        let now = Instant::now();
        let mut pool = self.pool();
        pool.tokens
            .retain(|_, issued_at| now.duration_since(*issued_at) < lifetime);
        if pool.tokens.len() >= self.config.max_active {
            let oldest = pool.tokens.values().min().copied().unwrap_or(now);
            let left = lifetime.saturating_sub(now.duration_since(oldest));
            return Err(OAuthError::too_many_tokens(oauth2::ceil_secs(left).max(1)));
        }
        let token = oauth2::random_token("at-");
        pool.tokens.insert(token.clone(), now);
        let held = u64::try_from(pool.tokens.len()).unwrap_or(u64::MAX);
        let counters = &mut pool.counters;
        counters.issued += 1;
        counters.max_active_seen = counters.max_active_seen.max(held);
        Ok(token)
    }

    /// Counts a refused request where its kind is counted: every 429 of the token endpoint,
    /// and every `invalid_client`.
    pub(super) fn record_refusal(&self, refusal: &OAuthError) {
        let mut pool = self.pool();
        if refusal.status() == axum::http::StatusCode::TOO_MANY_REQUESTS {
            pool.counters.rejected_429 += 1;
        }
        if refusal.code() == "invalid_client" {
            pool.counters.invalid_client += 1;
        }
    }

    /// The client's live tokens as `(fingerprint, whole seconds left, rounded up)`, oldest
    /// first.
    pub(super) fn live_tokens(&self) -> Vec<(String, u64)> {
        let lifetime = self.config.token_lifetime;
        let now = Instant::now();
        self.pool()
            .live(lifetime, now)
            .into_iter()
            .map(|(token, issued_at)| {
                let left = lifetime.saturating_sub(now.duration_since(issued_at));
                (oauth2::fingerprint(token), oauth2::ceil_secs(left))
            })
            .collect()
    }

    /// Revokes `token`, or every token of the client without one; returns how many live
    /// tokens that revoked.
    pub(super) fn revoke(&self, token: Option<&str>) -> usize {
        let lifetime = self.config.token_lifetime;
        let now = Instant::now();
        let mut pool = self.pool();
        let doomed: Vec<String> = pool
            .live(lifetime, now)
            .into_iter()
            .map(|(live, _)| live)
            .filter(|live| token.is_none_or(|token| token == *live))
            .map(str::to_owned)
            .collect();
        for revoked in &doomed {
            pool.tokens.remove(revoked);
        }
        doomed.len()
    }

    pub(super) fn counters(&self) -> PoolCounters {
        PoolCounters {
            max_requests_in_flight: self.requests.peak(),
            ..self.pool().counters.clone()
        }
    }

    pub(super) fn token_request_times(&self) -> Vec<Instant> {
        self.pool().request_times.clone()
    }

    pub(super) fn set_outage(&self, down: bool) {
        self.outage.store(down, Ordering::SeqCst);
    }

    pub(super) fn set_rate_limit(&self, retry_after: Option<Duration>) {
        self.knobs().rate_limit = retry_after;
    }

    pub(super) fn force_error(&self, forced: Option<OAuthError>) {
        self.knobs().forced = forced;
    }
}

impl ProtectedApi for Shared {
    fn admit(&self, token: Option<&str>) -> bool {
        let lifetime = self.config.token_lifetime;
        let now = Instant::now();
        let mut pool = self.pool();
        let live = token
            .and_then(|token| pool.tokens.get(token))
            .is_some_and(|issued_at| now.duration_since(*issued_at) < lifetime);
        if live {
            pool.counters.api_calls_ok += 1;
        } else {
            pool.counters.unauthorized += 1;
        }
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max_active: usize, lifetime: Duration) -> Shared {
        Shared::new(Config {
            client: ClientCredentials::default_client(),
            max_active,
            token_lifetime: lifetime,
            issue_latency: Duration::ZERO,
        })
    }

    #[test]
    fn the_cap_refuses_with_the_time_left_on_the_oldest_token() {
        let shared = shared(2, Duration::from_secs(60));
        let first = shared.issue().expect("below the cap");
        let second = shared.issue().expect("below the cap");
        assert_ne!(first, second);
        let refused = shared.issue().expect_err("at the cap");
        assert_eq!(refused.code(), "temporarily_unavailable");
        let response = axum::response::IntoResponse::into_response(refused);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "60");
        assert_eq!(shared.revoke(Some(&first)), 1);
        assert!(shared.issue().is_ok(), "a revocation frees a slot");
        assert_eq!(shared.counters().max_active_seen, 2);
    }

    #[test]
    fn a_zero_cap_refuses_everything() {
        let shared = shared(0, Duration::from_secs(5));
        let refused = shared.issue().expect_err("nothing may be held");
        assert_eq!(refused.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(shared.counters().issued, 0);
    }

    #[test]
    fn knobs_take_precedence_in_order() {
        let shared = shared(3, Duration::from_secs(60));
        assert_eq!(shared.knob_refusal(), None);
        shared.set_rate_limit(Some(Duration::from_millis(1_500)));
        assert_eq!(shared.knob_refusal(), Some(OAuthError::slow_down(2)));
        let forced = OAuthError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_scope",
            "no such scope",
        );
        shared.force_error(Some(forced.clone()));
        assert_eq!(shared.knob_refusal(), Some(forced));
        shared.set_outage(true);
        assert_eq!(shared.knob_refusal(), Some(OAuthError::outage()));
    }
}
