//! The rotating refresh server's state: the token families, every refresh token ever issued
//! (used ones are remembered with the moment of their use, to tell a retry from a replay),
//! the access tokens and the counters, with the rotation rules.
//!
//! Everything lives behind one std mutex held only for short, await-free sections, so that a
//! rotation is atomic: two requests presenting the same current token cannot both rotate it.
//! A poisoned lock is taken over rather than turned into a panic in every later request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::RefreshCounters;
use crate::in_flight::{Gauge, InFlight};
use crate::oauth2::{self, ClientCredentials, OAuthError, ProtectedApi};

/// The settings fixed when the server starts.
pub(super) struct Config {
    /// The one accepted client.
    pub(super) client: ClientCredentials,
    /// Access token lifetime, already in whole seconds (at least one).
    pub(super) access_lifetime: Duration,
    /// How long a used refresh token is still accepted as a retry.
    pub(super) reuse_grace: Duration,
    /// The time each token request takes, after its rotation.
    pub(super) latency: Duration,
}

/// Everything the handlers share.
pub(super) struct Shared {
    /// The fixed settings.
    config: Config,
    /// The first family's first refresh token, for the handle.
    initial_refresh_token: String,
    /// True while the token endpoint answers 503.
    outage: AtomicBool,
    /// True while a successful answer carries an empty access token beside its rotated
    /// refresh token: a broken issuer.
    empty_access_tokens: AtomicBool,
    /// Families, tokens and counters, which change together.
    tokens: Mutex<Tokens>,
    /// Token requests being handled right now, and their peak.
    requests: Gauge,
}

/// The mutable state.
#[derive(Default)]
struct Tokens {
    /// Every family, by number; the last one is the newest.
    families: Vec<Family>,
    /// Every refresh token issued, current or used.
    refresh_tokens: HashMap<String, RefreshToken>,
    /// Access tokens that may still be live.
    access_tokens: HashMap<String, AccessToken>,
    /// What has been seen so far, but for the peak of requests in flight, which
    /// `Shared::requests` keeps.
    counters: RefreshCounters,
}

/// The refresh tokens descending from one grant.
struct Family {
    /// The one refresh token of the family that may be rotated.
    current: String,
    /// Set by a replay outside the grace: nothing of the family works any more.
    revoked: bool,
}

/// What is known of an issued refresh token.
#[derive(Clone, Copy)]
struct RefreshToken {
    /// Its family's number.
    family: usize,
    /// When it was rotated; `None` while it is its family's current token.
    used_at: Option<Instant>,
}

/// What is known of an issued access token.
struct AccessToken {
    /// The family it was issued from, which revokes it by being revoked.
    family: usize,
    /// When it was issued, on the monotonic clock.
    issued_at: Instant,
}

/// A successful exchange: what the client gets.
#[derive(Debug)]
pub(super) struct Exchange {
    /// A new access token.
    pub(super) access_token: String,
    /// The refresh token to use next: a new one after a rotation, the family's current one
    /// after a retry within the grace.
    pub(super) refresh_token: String,
}

impl Tokens {
    /// Starts a new family with `first` as its current refresh token.
    fn start_family(&mut self, first: String) {
        let family = self.families.len();
        self.refresh_tokens.insert(
            first.clone(),
            RefreshToken {
                family,
                used_at: None,
            },
        );
        self.families.push(Family {
            current: first,
            revoked: false,
        });
    }

    /// Whether `family` is unknown or revoked.
    fn is_revoked(&self, family: usize) -> bool {
        self.families
            .get(family)
            .is_none_or(|family| family.revoked)
    }

    /// Issues an access token from `family`, forgetting the expired ones.
    fn issue_access(&mut self, family: usize, lifetime: Duration, now: Instant) -> String {
        self.access_tokens
            .retain(|_, access| now.duration_since(access.issued_at) < lifetime);
        let token = oauth2::random_token("at-");
        let issued = AccessToken {
            family,
            issued_at: now,
        };
        self.access_tokens.insert(token.clone(), issued);
        token
    }

    /// Rotates `family`: `presented` becomes used at `now` and a new refresh token current.
    fn rotate(&mut self, family: usize, presented: &str, now: Instant) -> Option<String> {
        let next = oauth2::random_token(&format!("rt-{family}-"));
        let current = &mut self.families.get_mut(family)?.current;
        *current = next.clone();
        self.refresh_tokens.get_mut(presented)?.used_at = Some(now);
        self.refresh_tokens.insert(
            next.clone(),
            RefreshToken {
                family,
                used_at: None,
            },
        );
        Some(next)
    }
}

impl Shared {
    /// The state with its first family, started from `initial_refresh_token` or a random
    /// one.
    pub(super) fn new(config: Config, initial_refresh_token: Option<String>) -> Self {
        let first = initial_refresh_token.unwrap_or_else(|| oauth2::random_token("rt-0-"));
        let mut tokens = Tokens::default();
        tokens.start_family(first.clone());
        Self {
            config,
            initial_refresh_token: first,
            outage: AtomicBool::new(false),
            empty_access_tokens: AtomicBool::new(false),
            tokens: Mutex::new(tokens),
            requests: Gauge::default(),
        }
    }

    fn tokens(&self) -> MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn client(&self) -> &ClientCredentials {
        &self.config.client
    }

    pub(super) fn access_lifetime(&self) -> Duration {
        self.config.access_lifetime
    }

    pub(super) fn answer_latency(&self) -> Duration {
        self.config.latency
    }

    pub(super) fn is_down(&self) -> bool {
        self.outage.load(Ordering::SeqCst)
    }

    pub(super) fn set_outage(&self, down: bool) {
        self.outage.store(down, Ordering::SeqCst);
    }

    pub(super) fn answers_empty_access_tokens(&self) -> bool {
        self.empty_access_tokens.load(Ordering::SeqCst)
    }

    pub(super) fn set_empty_access_tokens(&self, broken: bool) {
        self.empty_access_tokens.store(broken, Ordering::SeqCst);
    }

    /// Counts a `POST /oauth2/token` and marks it in flight until the returned guard drops.
    pub(super) fn begin_token_request(&self) -> InFlight<'_> {
        self.tokens().counters.token_requests += 1;
        self.requests.enter()
    }

    /// Counts an `invalid_client` answer; the grant's refusals are counted by
    /// [`exchange`](Self::exchange).
    pub(super) fn record_refusal(&self, refusal: &OAuthError) {
        if refusal.code() == "invalid_client" {
            self.tokens().counters.invalid_client += 1;
        }
    }

    /// Exchanges a presented refresh token (the client already authenticated), by the
    /// rotation rules, and counts the outcome.
    pub(super) fn exchange(&self, presented: &str) -> Result<Exchange, OAuthError> {
        let now = Instant::now();
        let lifetime = self.config.access_lifetime;
        let mut tokens = self.tokens();
        let Some(RefreshToken { family, used_at }) = tokens.refresh_tokens.get(presented).copied()
        else {
            tokens.counters.invalid_grant += 1;
            return Err(OAuthError::invalid_grant("unknown refresh token"));
        };
        if tokens.is_revoked(family) {
            tokens.counters.invalid_grant += 1;
            return Err(OAuthError::invalid_grant(
                "refresh token of a revoked token family",
            ));
        }
        let refresh_token = match used_at {
            None => {
                let Some(next) = tokens.rotate(family, presented, now) else {
                    // Unreachable while the maps agree; refused rather than panicking.
                    tokens.counters.invalid_grant += 1;
                    return Err(OAuthError::invalid_grant("unknown refresh token"));
                };
                tokens.counters.refreshes += 1;
                tracing::info!(family, "refresh token rotated");
                next
            }
            Some(used_at) if now.duration_since(used_at) < self.config.reuse_grace => {
                tokens.counters.replays_within_grace += 1;
                tracing::info!(family, "used refresh token replayed within the grace");
                tokens
                    .families
                    .get(family)
                    .map(|family| family.current.clone())
                    .unwrap_or_default()
            }
            Some(used_at) => {
                if let Some(revoked) = tokens.families.get_mut(family) {
                    revoked.revoked = true;
                }
                tokens.counters.replays_outside_grace += 1;
                tokens.counters.lockouts += 1;
                let since = now.duration_since(used_at);
                tracing::warn!(
                    family,
                    ?since,
                    "used refresh token replayed: family revoked"
                );
                return Err(OAuthError::invalid_grant(
                    "refresh token reused; token family revoked",
                ));
            }
        };
        let access_token = tokens.issue_access(family, lifetime, now);
        Ok(Exchange {
            access_token,
            refresh_token,
        })
    }

    pub(super) fn initial_refresh_token(&self) -> String {
        self.initial_refresh_token.clone()
    }

    /// The newest family's current refresh token, unless it is revoked.
    pub(super) fn current_refresh_token(&self) -> Option<String> {
        let tokens = self.tokens();
        let newest = tokens.families.last()?;
        (!newest.revoked).then(|| newest.current.clone())
    }

    /// Starts a new family and returns its first refresh token.
    pub(super) fn reseed(&self) -> String {
        let mut tokens = self.tokens();
        let first = oauth2::random_token(&format!("rt-{}-", tokens.families.len()));
        tokens.start_family(first.clone());
        tracing::info!(
            family = tokens.families.len() - 1,
            "reseeded: new token family"
        );
        first
    }

    pub(super) fn counters(&self) -> RefreshCounters {
        RefreshCounters {
            max_requests_in_flight: self.requests.peak(),
            ..self.tokens().counters.clone()
        }
    }
}

impl ProtectedApi for Shared {
    fn admit(&self, token: Option<&str>) -> bool {
        let lifetime = self.config.access_lifetime;
        let now = Instant::now();
        let mut tokens = self.tokens();
        let live = token
            .and_then(|token| tokens.access_tokens.get(token))
            .is_some_and(|access| {
                now.duration_since(access.issued_at) < lifetime && !tokens.is_revoked(access.family)
            });
        if live {
            tokens.counters.api_calls_ok += 1;
        } else {
            tokens.counters.unauthorized += 1;
        }
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(reuse_grace: Duration) -> Shared {
        let config = Config {
            client: ClientCredentials::default_client(),
            access_lifetime: Duration::from_secs(60),
            reuse_grace,
            latency: Duration::ZERO,
        };
        Shared::new(config, Some("rt-0-first".to_owned()))
    }

    #[test]
    fn rotation_makes_the_new_token_current_and_the_old_one_used() {
        let shared = shared(Duration::ZERO);
        let exchange = shared
            .exchange("rt-0-first")
            .expect("the current token rotates");
        assert!(exchange.refresh_token.starts_with("rt-0-"), "{exchange:?}");
        assert_ne!(exchange.refresh_token, "rt-0-first");
        assert_eq!(
            shared.current_refresh_token(),
            Some(exchange.refresh_token.clone())
        );
        assert!(shared.admit(Some(&exchange.access_token)));
        assert_eq!(shared.counters().refreshes, 1);
    }

    #[test]
    fn a_replay_without_grace_revokes_the_family_once() {
        let shared = shared(Duration::ZERO);
        let exchange = shared.exchange("rt-0-first").expect("rotates");
        let refused = shared.exchange("rt-0-first").expect_err("a replay");
        assert_eq!(refused.code(), "invalid_grant");
        assert!(!shared.admit(Some(&exchange.access_token)));
        assert_eq!(shared.current_refresh_token(), None);
        let again = shared
            .exchange("rt-0-first")
            .expect_err("the family is revoked");
        assert_eq!(again.code(), "invalid_grant");
        let counters = shared.counters();
        assert_eq!(
            (
                counters.replays_outside_grace,
                counters.lockouts,
                counters.invalid_grant
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn reseed_starts_a_numbered_family() {
        let shared = shared(Duration::ZERO);
        let first = shared.reseed();
        assert!(first.starts_with("rt-1-"), "{first}");
        assert_eq!(shared.current_refresh_token(), Some(first));
    }
}
