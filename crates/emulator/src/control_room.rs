//! The emulated Automation Anywhere Control Room: its builder, the running handle and the
//! counters tests assert on.
//!
//! Control Room allows one session per user: a new login (or a token refresh) supersedes the
//! user's previous token, which answers 401 from then on. That is the behaviour the broker
//! exists to cope with, so the emulator reproduces it exactly and counts what it serves.
//!
//! The HTTP surface:
//!
//! | method and path | answer |
//! | --- | --- |
//! | `POST /v1/authentication` | `{"username", "apiKey"\|"password"}` → 200 `{"token", "user": {"username"}}` |
//! | `POST /v1/authentication/token` | `{"token"}` → 200 `{"token"}` superseding it, if current |
//! | `GET /v1/authentication/token?token=` | 200 `{"valid": bool}` |
//! | `POST /v1/authentication/logout` | `X-Authorization` → 204, ending the session |
//! | `POST /v3/wlm/queues/{queue_id}/workitems` | 200 `{"list": [{"id", "status": "NEW"}]}` |
//! | `GET /v3/wlm/queues/{queue_id}/workitems/{id}` | 200 `{"id", "status"}`, advancing per poll |
//!
//! Sessions and counters live in `state`, the login endpoints in `authentication`, the queue
//! API in `work_items`, and the error answers in `error`. Serving itself is the crate root's.

mod authentication;
mod error;
mod state;
mod work_items;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::Serving;
use state::{Config, Shared};

/// What the Control Room has seen since it started, as a snapshot from
/// [`RunningControlRoom::counters`].
///
/// These are the other side's figures: a test asserts on them rather than on what the broker
/// believes it did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every `POST /v1/authentication`, whatever its outcome (also malformed ones and those
    /// answered 503 during an outage): how often something tried to log in.
    pub login_attempts: u64,
    /// Successful logins, each of which issued a new token and superseded the previous one.
    pub logins: u64,
    /// Successful refreshes, each of which issued a new token and superseded the one given.
    pub refreshes: u64,
    /// The most logins and refreshes ever handled at once (latency included): 1 proves that
    /// issuances were never concurrent.
    pub max_issuances_in_flight: u64,
    /// The logins and refreshes being handled when the snapshot was taken (held or in their
    /// latency). A handler is dropped when its client goes away, so 0 after a broker was
    /// killed mid-login shows that its login will never be answered.
    pub issuances_in_flight: u64,
    /// 401s served by the work-item API and by the refresh and logout endpoints for a
    /// missing, malformed, superseded, kicked, logged-out or expired token: the failures a
    /// broker exists to prevent. Wrong credentials count in `bad_credentials` instead.
    pub unauthorized: u64,
    /// Logins refused for a wrong or missing username or API key.
    pub bad_credentials: u64,
    /// Sessions ended by `POST /v1/authentication/logout`.
    pub logouts: u64,
    /// Work-item calls answered 2xx: the useful work that got through.
    pub api_calls_ok: u64,
}

/// The entry point: `ControlRoom::builder()....spawn().await`.
#[derive(Debug, Clone, Copy)]
pub struct ControlRoom;

impl ControlRoom {
    /// A builder with Control Room's defaults: 20-minute tokens, no login latency, and the
    /// single user `api-bot` with API key `demo-key` unless [`ControlRoomBuilder::user`] is
    /// called.
    pub fn builder() -> ControlRoomBuilder {
        ControlRoomBuilder {
            token_lifetime: Duration::from_secs(20 * 60),
            login_latency: Duration::ZERO,
            users: Vec::new(),
        }
    }
}

/// Configures an emulated Control Room before it starts serving.
#[derive(Clone)]
pub struct ControlRoomBuilder {
    /// How long an issued token stays valid; short in tests that exercise expiry.
    token_lifetime: Duration,
    /// How long each login and refresh takes, so that tests can make issuances overlap.
    login_latency: Duration,
    /// The accepted `(username, api key)` pairs; empty means the default user.
    users: Vec<(String, String)>,
}

impl fmt::Debug for ControlRoomBuilder {
    // Hand-written so that the API keys never reach a log or an assertion message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlRoomBuilder")
            .field("token_lifetime", &self.token_lifetime)
            .field("login_latency", &self.login_latency)
            .field(
                "users",
                &self.users.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ControlRoomBuilder {
    /// How long a token lives (default 20 minutes).
    ///
    /// A JWT's `exp` is in whole seconds, so the lifetime is rounded to the nearest second,
    /// and is at least one second. The token's `exp` is its `iat` plus that lifetime; the
    /// emulator itself expires the token once that lifetime has passed since it was issued,
    /// measured with a monotonic clock, so `exp` never promises more than the emulator keeps.
    pub fn token_lifetime(mut self, d: Duration) -> Self {
        self.token_lifetime = d;
        self
    }

    /// How long each login and refresh takes to answer (default none). The wait happens
    /// inside the handler and counts as "in flight", also during an outage.
    pub fn login_latency(mut self, d: Duration) -> Self {
        self.login_latency = d;
        self
    }

    /// Accepts `username` with `api_key` (as `apiKey` or `password`). May be called several
    /// times; calling it again for the same username replaces its key. Without any call the
    /// only user is `api-bot` with key `demo-key`.
    pub fn user(mut self, username: &str, api_key: &str) -> Self {
        self.users.push((username.to_owned(), api_key.to_owned()));
        self
    }

    /// Binds `127.0.0.1:0` and starts serving in a background task.
    pub async fn spawn(self) -> io::Result<RunningControlRoom> {
        let listener = Serving::bind_loopback().await?;
        self.spawn_on(listener)
    }

    /// Starts serving on a listener the caller bound, for the binary's `--listen`.
    ///
    /// Must be called from within a tokio runtime.
    pub fn spawn_on(self, listener: TcpListener) -> io::Result<RunningControlRoom> {
        let mut users = self.users;
        if users.is_empty() {
            users.push(("api-bot".to_owned(), "demo-key".to_owned()));
        }
        let config = Config {
            token_lifetime: crate::whole_seconds(self.token_lifetime),
            login_latency: self.login_latency,
            users: users.into_iter().collect(),
        };
        let shared = Arc::new(Shared::new(config));
        let serving = Serving::start(listener, router(Arc::clone(&shared)))?;
        tracing::debug!(addr = %serving.addr(), "control room emulator started");
        Ok(RunningControlRoom {
            shared,
            serving: Arc::new(serving),
        })
    }
}

/// The routes of the emulated Control Room.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/authentication", post(authentication::login))
        .route(
            "/v1/authentication/token",
            post(authentication::refresh).get(authentication::validate),
        )
        .route("/v1/authentication/logout", post(authentication::logout))
        .route(
            "/v3/wlm/queues/{queue_id}/workitems",
            post(work_items::create),
        )
        .route(
            "/v3/wlm/queues/{queue_id}/workitems/{id}",
            get(work_items::poll),
        )
        .with_state(shared)
}

/// A Control Room serving on loopback: where it is, what it has seen, and the levers tests
/// pull on it (outage, hold, kick, shutdown). Cloning is cheap and every clone controls the same
/// server.
///
/// The server runs until [`shutdown`](Self::shutdown) or until the runtime ends; dropping
/// the handles does not stop it. Its `Debug` shows the address only.
#[derive(Clone)]
pub struct RunningControlRoom {
    /// The state the handlers work on.
    shared: Arc<Shared>,
    /// The server task and its stop signal.
    serving: Arc<Serving>,
}

crate::serving_handle!(RunningControlRoom);

impl RunningControlRoom {
    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    /// Waits until the counters satisfy `done` and returns them, or, once `within` has
    /// passed, the last snapshot as the error. Tests wait on what the emulator saw (a login
    /// arrived, a dropped request left) rather than for a guessed time. It looks every 10 ms:
    /// the counters change under a lock, not through a channel.
    pub async fn wait_for(
        &self,
        done: impl Fn(&Counters) -> bool,
        within: Duration,
    ) -> Result<Counters, Counters> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.counters();
            if done(&seen) {
                return Ok(seen);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(seen);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether `token` is a user's current, unexpired token, as `GET
    /// /v1/authentication/token` would answer, without a request.
    pub fn is_current(&self, token: &str) -> bool {
        self.shared.is_valid(token)
    }

    /// When each `POST /v1/authentication` arrived, in order, so that tests can check the
    /// spacing of retries (backoff) during an outage.
    pub fn login_attempt_times(&self) -> Vec<Instant> {
        self.shared.login_attempt_times()
    }

    /// While `down` is true, login and refresh answer 503 (after their latency) and are
    /// still counted as attempts; everything else keeps working.
    pub fn set_outage(&self, down: bool) {
        tracing::info!(down, "control room outage");
        self.shared.set_outage(down);
    }

    /// While `held` is true, logins and refreshes wait before answering (counted in flight,
    /// before their latency) until it is set false again or their client goes away. A test
    /// holds them to keep a broker mid-issuance, holding its lease, for as long as it needs,
    /// and learns that the broker got there from [`Counters::login_attempts`].
    pub fn hold_issuances(&self, held: bool) {
        tracing::info!(held, "control room issuances held");
        self.shared.set_hold(held);
    }

    /// Ends every user's session out of band, as an administrator would: every token issued
    /// so far answers 401 from now on.
    pub fn kick(&self) {
        self.shared.kick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_debug_hides_api_keys() {
        let builder = ControlRoom::builder().user("api-bot", "s3cret-key");
        let shown = format!("{builder:?}");
        assert!(shown.contains("api-bot"), "{shown}");
        assert!(!shown.contains("s3cret-key"), "{shown}");
    }
}
