//! The emulated rotating refresh-token server: its builder, the running handle and the
//! counters tests assert on.
//!
//! It models servers that rotate refresh tokens with a reuse interval (Okta, Auth0): the
//! refresh tokens of one grant form a family, and only the family's current one is exchanged
//! for an access token and a new refresh token. A used one presented again within the reuse
//! grace is taken for a client's retry and answered with a fresh access token and the
//! family's current refresh token; after the grace it is taken for theft, and the whole family
//! (its current refresh token and every access token issued from it) is revoked. A lockout
//! lasts until the handle's [`reseed`](RunningRotatingRefresh::reseed) starts a new family,
//! as a human re-authorizing the client would.
//!
//! The rotation takes effect before the latency, so a client that dies while waiting for
//! the answer has lost the new refresh token although the server rotated: the crash window a
//! broker must survive.
//!
//! The HTTP surface (client authentication by Basic header or form parameters):
//!
//! | method and path | answer |
//! | --- | --- |
//! | `POST /oauth2/token` | `grant_type=refresh_token&refresh_token=` → 200 `{"access_token", "token_type": "bearer", "expires_in", "refresh_token"}`; 400 `invalid_grant` for an unknown, revoked or replayed one |
//! | `GET /api/ping` | `Authorization: Bearer` → 200 `{"ok": true}` for a live access token, else 401 `invalid_token` |
//!
//! Families and counters live in `state`, the token endpoint in `endpoints`.

mod endpoints;
mod state;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use super::ClientCredentials;
use crate::Serving;
use state::{Config, Shared};

/// What the rotating refresh server has seen since it started, as a snapshot from
/// [`RunningRotatingRefresh::counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshCounters {
    /// Every `POST /oauth2/token`, whatever its outcome.
    pub token_requests: u64,
    /// Rotations: a family's current refresh token exchanged for a new one.
    pub refreshes: u64,
    /// Used refresh tokens presented again within the reuse grace, answered with the
    /// family's current refresh token.
    pub replays_within_grace: u64,
    /// Used refresh tokens presented again after the reuse grace, each of which revoked its
    /// family. A broker that survives crashes causes none.
    pub replays_outside_grace: u64,
    /// Families revoked; as every replay outside the grace revokes a live family, this
    /// equals `replays_outside_grace`.
    pub lockouts: u64,
    /// `invalid_grant` answers to unknown refresh tokens and to those of a revoked family
    /// (the replay that revokes a family counts in `replays_outside_grace` instead).
    pub invalid_grant: u64,
    /// Requests refused with `invalid_client` (unknown client, wrong secret, no or malformed
    /// client authentication).
    pub invalid_client: u64,
    /// `GET /api/ping` calls answered 401 for a missing, unknown, expired or revoked token.
    pub unauthorized: u64,
    /// `GET /api/ping` calls answered 200.
    pub api_calls_ok: u64,
    /// The most token requests ever handled at once (latency included): 1 proves that
    /// refreshes were never concurrent.
    pub max_requests_in_flight: u64,
}

/// The entry point: `RotatingRefresh::builder()....spawn().await`.
#[derive(Debug, Clone, Copy)]
pub struct RotatingRefresh;

impl RotatingRefresh {
    /// A builder with the defaults: client `svc` with secret `secret`, a random initial
    /// refresh token, 60-second access tokens, no reuse grace, no latency.
    pub fn builder() -> RotatingRefreshBuilder {
        RotatingRefreshBuilder {
            client: ClientCredentials::default_client(),
            initial_refresh_token: None,
            access_lifetime: Duration::from_secs(60),
            reuse_grace: Duration::ZERO,
            latency: Duration::ZERO,
        }
    }
}

/// Configures an emulated rotating refresh server before it starts serving.
#[derive(Clone)]
pub struct RotatingRefreshBuilder {
    /// The one accepted client.
    client: ClientCredentials,
    /// The first family's first refresh token; random when `None`.
    initial_refresh_token: Option<String>,
    /// How long an access token stays valid.
    access_lifetime: Duration,
    /// How long a used refresh token is still accepted as a retry.
    reuse_grace: Duration,
    /// How long each token request takes, after its rotation took effect.
    latency: Duration,
}

impl fmt::Debug for RotatingRefreshBuilder {
    // Hand-written so that the refresh token never reaches a log; the client hides its secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatingRefreshBuilder")
            .field("client", &self.client)
            .field("access_lifetime", &self.access_lifetime)
            .field("reuse_grace", &self.reuse_grace)
            .field("latency", &self.latency)
            .finish_non_exhaustive()
    }
}

impl RotatingRefreshBuilder {
    /// Accepts client `id` with `secret`, instead of the default `svc`/`secret`; there is one
    /// client, so a second call replaces the first.
    pub fn client(mut self, id: &str, secret: &str) -> Self {
        self.client = ClientCredentials::new(id, secret);
        self
    }

    /// The refresh token the first family starts with (default: a random `rt-0-...`), as
    /// the broker's config would hold it.
    pub fn initial_refresh_token(mut self, token: &str) -> Self {
        self.initial_refresh_token = Some(token.to_owned());
        self
    }

    /// How long an access token lives (default 60 s), rounded to the nearest whole second
    /// and at least one, so that `expires_in` tells it exactly.
    pub fn access_lifetime(mut self, d: Duration) -> Self {
        self.access_lifetime = d;
        self
    }

    /// How long after its use a refresh token is still accepted as a retry (default zero:
    /// any replay revokes the family).
    pub fn reuse_grace(mut self, d: Duration) -> Self {
        self.reuse_grace = d;
        self
    }

    /// How long each token request takes to answer (default none). The rotation takes effect
    /// before the wait, which counts as "in flight".
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving in a background task.
    pub async fn spawn(self) -> io::Result<RunningRotatingRefresh> {
        self.spawn_on(Serving::bind_loopback().await?)
    }

    /// Starts serving on a listener the caller bound.
    ///
    /// Must be called from within a tokio runtime.
    pub fn spawn_on(self, listener: TcpListener) -> io::Result<RunningRotatingRefresh> {
        let config = Config {
            client: self.client,
            access_lifetime: crate::whole_seconds(self.access_lifetime),
            reuse_grace: self.reuse_grace,
            latency: self.latency,
        };
        let shared = Arc::new(Shared::new(config, self.initial_refresh_token));
        let serving = Serving::start(listener, router(Arc::clone(&shared)))?;
        tracing::debug!(addr = %serving.addr(), "rotating refresh emulator started");
        Ok(RunningRotatingRefresh {
            shared,
            serving: Arc::new(serving),
        })
    }
}

/// The routes of the emulated rotating refresh server.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth2/token", post(super::token_endpoint::<Shared>))
        .route("/api/ping", get(super::ping::<Shared>))
        .with_state(shared)
}

/// A rotating refresh server serving on loopback: where it is, what it has seen, its
/// families' refresh tokens and the levers tests pull on it. Cloning is cheap and every clone
/// controls the same server. Its token endpoint is `{url}/oauth2/token`.
///
/// The server runs until [`shutdown`](Self::shutdown) or until the runtime ends; dropping
/// the handles does not stop it. Its `Debug` shows the address only.
#[derive(Clone)]
pub struct RunningRotatingRefresh {
    /// The state the handlers work on.
    shared: Arc<Shared>,
    /// The server task and its stop signal.
    serving: Arc<Serving>,
}

crate::serving_handle!(RunningRotatingRefresh);

impl RunningRotatingRefresh {
    /// A snapshot of the counters.
    pub fn counters(&self) -> RefreshCounters {
        self.shared.counters()
    }

    /// The refresh token the first family started with: the builder's, or the random one.
    pub fn initial_refresh_token(&self) -> String {
        self.shared.initial_refresh_token()
    }

    /// The newest family's current refresh token: the one the server will rotate next, or
    /// `None` while that family is revoked (after a lockout, until [`reseed`](Self::reseed)).
    pub fn current_refresh_token(&self) -> Option<String> {
        self.shared.current_refresh_token()
    }

    /// Starts a new family, as re-authorizing the client would, and returns its first refresh
    /// token: what a test hands to the broker's `reseed`. Older families keep their state
    /// (a revoked one stays revoked).
    pub fn reseed(&self) -> String {
        self.shared.reseed()
    }

    /// While `down` is true, the token endpoint answers 503 `temporarily_unavailable` without
    /// rotating anything; issued access tokens keep working at the API.
    pub fn set_outage(&self, down: bool) {
        tracing::info!(down, "rotating refresh outage");
        self.shared.set_outage(down);
    }

    /// While `broken` is true, the token endpoint rotates the refresh token as usual but
    /// answers it beside an empty `access_token`: an issuer whose answer is half unusable.
    pub fn set_empty_access_tokens(&self, broken: bool) {
        tracing::info!(broken, "rotating refresh answers empty access tokens");
        self.shared.set_empty_access_tokens(broken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_debug_hides_the_secret_and_the_refresh_token() {
        let builder = RotatingRefresh::builder()
            .client("svc", "s3cret")
            .initial_refresh_token("rt-0-hidden");
        let shown = format!("{builder:?}");
        assert!(shown.contains("svc"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("rt-0-hidden"), "{shown}");
    }
}
