//! The emulated capped token pool: a Reltio-style OAuth2 `client_credentials` server, its
//! builder, the running handle and the counters tests assert on.
//!
//! Each token request issues a distinct token, but a client may hold only `max_active`
//! unexpired, unrevoked tokens at once; past that the token endpoint answers 429 with
//! `Retry-After` until the oldest expires or is revoked. A fleet of workers that each fetch
//! their own token exhausts the cap; that is what the broker's pooling exists to prevent.
//!
//! The HTTP surface (client authentication by Basic header or form parameters, see
//! `client_auth`):
//!
//! | method and path | answer |
//! | --- | --- |
//! | `POST /oauth/token` | `grant_type=client_credentials` [`scope`, `audience`] → 200 `{"access_token", "token_type": "bearer", "expires_in"[, "scope"]}`; 429 `temporarily_unavailable` + `Retry-After` past the cap |
//! | `GET /oauth/multitokens` | 200 `[{"fingerprint", "expires_in"}]`: the client's live tokens, oldest first |
//! | `POST /oauth/revoketokens` | form `token=` revokes that token, no `token` revokes them all → 200 `{"revoked": n}` |
//! | `GET /api/ping` | `Authorization: Bearer` → 200 `{"ok": true}` for a live token, else 401 `invalid_token` |
//!
//! Errors follow RFC 6749 §5.2. The handle's knobs add an outage (503), a rate limit (429
//! `slow_down`) and forced error answers. Tokens and counters live in `state`, the endpoints
//! in `endpoints`; the OAuth2 plumbing and serving are shared with the other emulators.

mod endpoints;
mod state;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use super::{ClientCredentials, OAuthError};
use crate::Serving;
use state::{Config, Shared};

/// What the capped pool has seen since it started, as a snapshot from
/// [`RunningCappedPool::counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCounters {
    /// Every `POST /oauth/token`, whatever its outcome.
    pub token_requests: u64,
    /// Tokens issued.
    pub issued: u64,
    /// Token requests answered 429, for whatever reason: the cap (`temporarily_unavailable`),
    /// the rate limit (`slow_down`) or a forced 429. A broker that pools well causes none.
    pub rejected_429: u64,
    /// The most unexpired, unrevoked tokens the client ever held at once, checked at each
    /// issuance: never more than `max_active`, by construction, so a test reads it to see how
    /// close to the cap a broker ran.
    pub max_active_seen: u64,
    /// Requests refused with `invalid_client` (unknown client, wrong secret, no or malformed
    /// client authentication), at any endpoint.
    pub invalid_client: u64,
    /// `GET /api/ping` calls answered 401 for a missing, unknown, revoked or expired token.
    pub unauthorized: u64,
    /// `GET /api/ping` calls answered 200.
    pub api_calls_ok: u64,
    /// The most token requests ever handled at once (latency included).
    pub max_requests_in_flight: u64,
}

/// The entry point: `CappedPool::builder()....spawn().await`.
#[derive(Debug, Clone, Copy)]
pub struct CappedPool;

impl CappedPool {
    /// A builder with the defaults: client `svc` with secret `secret`, at most 3 active tokens,
    /// 60-second tokens, no issuance latency.
    pub fn builder() -> CappedPoolBuilder {
        CappedPoolBuilder {
            client: ClientCredentials::default_client(),
            max_active: 3,
            token_lifetime: Duration::from_secs(60),
            issue_latency: Duration::ZERO,
        }
    }
}

/// Configures an emulated capped pool before it starts serving.
///
/// Its `Debug` shows the client id but never the secret.
#[derive(Debug, Clone)]
pub struct CappedPoolBuilder {
    /// The one accepted client.
    client: ClientCredentials,
    /// How many live tokens the client may hold (`maxActiveTokensAllowed`).
    max_active: usize,
    /// How long an issued token stays valid.
    token_lifetime: Duration,
    /// How long each token request takes.
    issue_latency: Duration,
}

impl CappedPoolBuilder {
    /// Accepts client `id` with `secret`, instead of the default `svc`/`secret`; there is one
    /// client, so a second call replaces the first.
    pub fn client(mut self, id: &str, secret: &str) -> Self {
        self.client = ClientCredentials::new(id, secret);
        self
    }

    /// How many unexpired, unrevoked tokens the client may hold at once (default 3); 0
    /// refuses every token request with 429.
    pub fn max_active(mut self, n: usize) -> Self {
        self.max_active = n;
        self
    }

    /// How long a token lives (default 60 s), rounded to the nearest whole second and at least
    /// one, so that `expires_in` tells it exactly.
    pub fn token_lifetime(mut self, d: Duration) -> Self {
        self.token_lifetime = d;
        self
    }

    /// How long each token request takes to answer (default none). The wait comes first and
    /// counts as "in flight", whatever the answer turns out to be.
    pub fn issue_latency(mut self, d: Duration) -> Self {
        self.issue_latency = d;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving in a background task.
    pub async fn spawn(self) -> io::Result<RunningCappedPool> {
        self.spawn_on(Serving::bind_loopback().await?)
    }

    /// Starts serving on a listener the caller bound.
    ///
    /// Must be called from within a tokio runtime.
    pub fn spawn_on(self, listener: TcpListener) -> io::Result<RunningCappedPool> {
        let shared = Arc::new(Shared::new(Config {
            client: self.client,
            max_active: self.max_active,
            token_lifetime: crate::whole_seconds(self.token_lifetime),
            issue_latency: self.issue_latency,
        }));
        let serving = Serving::start(listener, router(Arc::clone(&shared)))?;
        tracing::debug!(addr = %serving.addr(), "capped pool emulator started");
        Ok(RunningCappedPool {
            shared,
            serving: Arc::new(serving),
        })
    }
}

/// The routes of the emulated capped pool.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth/token", post(super::token_endpoint::<Shared>))
        .route("/oauth/multitokens", get(endpoints::multitokens))
        .route("/oauth/revoketokens", post(endpoints::revoke_tokens))
        .route("/api/ping", get(super::ping::<Shared>))
        .with_state(shared)
}

/// A capped pool serving on loopback: where it is, what it has seen, and the knobs tests turn
/// on it. Cloning is cheap and every clone controls the same server. Its token endpoint is
/// `{url}/oauth/token`.
///
/// The server runs until [`shutdown`](Self::shutdown) or until the runtime ends; dropping
/// the handles does not stop it. Its `Debug` shows the address only.
#[derive(Clone)]
pub struct RunningCappedPool {
    /// The state the handlers work on.
    shared: Arc<Shared>,
    /// The server task and its stop signal.
    serving: Arc<Serving>,
}

crate::serving_handle!(RunningCappedPool);

impl RunningCappedPool {
    /// A snapshot of the counters.
    pub fn counters(&self) -> PoolCounters {
        self.shared.counters()
    }

    /// When each `POST /oauth/token` arrived, in order, so that tests can check that a client
    /// honoured a `Retry-After`.
    pub fn token_request_times(&self) -> Vec<Instant> {
        self.shared.token_request_times()
    }

    /// While `down` is true, the token endpoint answers 503 `temporarily_unavailable`;
    /// issued tokens keep working at the API.
    pub fn set_outage(&self, down: bool) {
        tracing::info!(down, "capped pool outage");
        self.shared.set_outage(down);
    }

    /// While `Some(d)`, the token endpoint answers 429 `slow_down` with `Retry-After` of `d`
    /// in whole seconds (rounded up). An outage takes precedence.
    pub fn set_rate_limit(&self, retry_after: Option<Duration>) {
        tracing::info!(?retry_after, "capped pool rate limit");
        self.shared.set_rate_limit(retry_after);
    }

    /// While `Some((status, error, description))`, the token endpoint answers every request
    /// with that status and `{"error": error, "error_description": description}`, to test a
    /// client's handling of RFC 6749 §5.2 answers (`invalid_client`, `invalid_scope`, ...).
    /// An outage takes precedence; this takes precedence over the rate limit.
    ///
    /// # Panics
    ///
    /// If `status` is not an HTTP status code (100 to 999): a mistake in the test.
    pub fn force_error(&self, error: Option<(u16, &'static str, &'static str)>) {
        let forced = error.map(|(status, code, description)| {
            let status = StatusCode::from_u16(status)
                .unwrap_or_else(|_| panic!("force_error: {status} is not an HTTP status"));
            OAuthError::new(status, code, description)
        });
        tracing::info!(?forced, "capped pool forced error");
        self.shared.force_error(forced);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_debug_hides_the_secret() {
        let shown = format!("{:?}", CappedPool::builder().client("svc", "s3cret"));
        assert!(shown.contains("svc"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
