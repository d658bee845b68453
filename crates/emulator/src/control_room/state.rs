//! The Control Room's state: accepted users, each user's single session, the counters and
//! the work items, with the rules that decide whether a token is current.
//!
//! A token is current when it is, string for string, the last token issued to its user and
//! its lifetime has not passed; the payload is never trusted. Everything lives behind std
//! mutexes held only for short, await-free sections (see `mini-redis`'s `db.rs` for why a
//! std mutex suits this); the handlers in the sibling modules do the waiting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::Counters;
use super::work_items::WorkItems;
use crate::in_flight::{Gauge, InFlight};
use crate::jwt::{self, Claims};

/// The settings fixed when the Control Room starts.
pub(super) struct Config {
    /// Token lifetime, already in whole seconds (at least one) so that `exp` can carry it.
    pub(super) token_lifetime: Duration,
    /// The time each login and refresh takes.
    pub(super) login_latency: Duration,
    /// Accepted API key per username.
    pub(super) users: HashMap<String, String>,
}

/// Everything the handlers share.
pub(super) struct Shared {
    /// The fixed settings.
    config: Config,
    /// True while the emulated Control Room refuses logins and refreshes with 503.
    outage: AtomicBool,
    /// True while logins and refreshes wait before answering; a `watch` so that the waiting
    /// handlers learn of the release without polling.
    hold: watch::Sender<bool>,
    /// Sessions and counters, which change together.
    sessions: Mutex<Sessions>,
    /// The queue API's items, apart from the sessions since they never change together.
    work_items: Mutex<WorkItems>,
    /// Logins and refreshes being handled right now, and their peak.
    issuances: Gauge,
}

/// The mutable session state.
#[derive(Default)]
struct Sessions {
    /// The current session of each user that has one; a new issuance replaces the entry.
    by_user: HashMap<String, Session>,
    /// The last session number handed out, for the JWT `sid`.
    last_sid: u64,
    /// What has been seen so far, but for the issuances in flight and their peak, which
    /// `Shared::issuances` keeps.
    counters: Counters,
    /// Arrival time of each login attempt.
    login_attempt_times: Vec<Instant>,
}

/// A user's one live token.
struct Session {
    /// The token exactly as issued: the only thing a presented token is compared with.
    token: String,
    /// When it was issued, on the monotonic clock, to expire it at millisecond precision.
    issued_at: Instant,
    /// How long it lives from `issued_at`.
    lifetime: Duration,
}

impl Session {
    fn is_expired(&self, now: Instant) -> bool {
        now.duration_since(self.issued_at) >= self.lifetime
    }
}

/// Why a presented token was refused, for the logs; the client only ever sees a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No token, or not one that is any user's current token (superseded, kicked, logged out
    /// or made up).
    NotCurrent,
    /// The user's current token, but its lifetime has passed.
    Expired,
}

impl Sessions {
    /// The user whose current, unexpired token `token` is.
    fn holder(&self, token: &str, now: Instant) -> Result<String, Refusal> {
        let (username, session) = self
            .by_user
            .iter()
            .find(|(_, session)| session.token == token)
            .ok_or(Refusal::NotCurrent)?;
        if session.is_expired(now) {
            return Err(Refusal::Expired);
        }
        Ok(username.clone())
    }

    /// Issues a new token to `username`, superseding any previous one.
    fn issue(&mut self, username: &str, lifetime: Duration) -> String {
        self.last_sid += 1;
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let token = jwt::mint(&Claims {
            sub: username.to_owned(),
            sid: self.last_sid,
            iat,
            exp: iat + lifetime.as_secs(),
        });
        // Taken after `iat`, so that `exp` (from a rounded-down `iat`) is never later than
        // the moment this session really expires.
        let issued_at = Instant::now();
        self.by_user.insert(
            username.to_owned(),
            Session {
                token: token.clone(),
                issued_at,
                lifetime,
            },
        );
        token
    }
}

impl Shared {
    pub(super) fn new(config: Config) -> Self {
        Self {
            config,
            outage: AtomicBool::new(false),
            hold: watch::Sender::new(false),
            sessions: Mutex::new(Sessions::default()),
            work_items: Mutex::new(WorkItems::default()),
            issuances: Gauge::default(),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions
            .lock()
            .expect("control room sessions lock poisoned")
    }

    /// The queue API's items, locked; hold the guard only for await-free work.
    pub(super) fn work_items(&self) -> std::sync::MutexGuard<'_, WorkItems> {
        self.work_items
            .lock()
            .expect("control room work items lock poisoned")
    }

    pub(super) fn login_latency(&self) -> Duration {
        self.config.login_latency
    }

    pub(super) fn is_down(&self) -> bool {
        self.outage.load(Ordering::SeqCst)
    }

    pub(super) fn set_outage(&self, down: bool) {
        self.outage.store(down, Ordering::SeqCst);
    }

    pub(super) fn set_hold(&self, held: bool) {
        self.hold.send_replace(held);
    }

    /// Returns once logins and refreshes are not held (at once if they are not).
    pub(super) async fn released(&self) {
        let mut hold = self.hold.subscribe();
        // The sender lives as long as `self`, so only a release ends the wait.
        let _ = hold.wait_for(|held| !held).await;
    }

    /// Whether `api_key` is `username`'s key.
    pub(super) fn accepts(&self, username: &str, api_key: &str) -> bool {
        self.config
            .users
            .get(username)
            .is_some_and(|expected| expected == api_key)
    }

    /// Counts a `POST /v1/authentication` and notes when it arrived.
    pub(super) fn record_login_attempt(&self) {
        let mut sessions = self.sessions();
        sessions.counters.login_attempts += 1;
        sessions.login_attempt_times.push(Instant::now());
    }

    /// Marks a login or refresh as in flight until the returned guard drops, which happens
    /// also when the client goes away and the handler is cancelled mid-latency.
    pub(super) fn issuance_in_flight(&self) -> InFlight<'_> {
        self.issuances.enter()
    }

    pub(super) fn count_bad_credentials(&self) {
        self.sessions().counters.bad_credentials += 1;
    }

    pub(super) fn count_api_call_ok(&self) {
        self.sessions().counters.api_calls_ok += 1;
    }

    /// Logs `username` in (credentials already checked): a new token, superseding the old.
    pub(super) fn login(&self, username: &str) -> String {
        let mut sessions = self.sessions();
        sessions.counters.logins += 1;
        sessions.issue(username, self.config.token_lifetime)
    }

    /// Exchanges a current token for a new one that supersedes it; counts a 401 otherwise.
    pub(super) fn refresh(&self, token: &str) -> Result<(String, String), Refusal> {
        let mut sessions = self.sessions();
        match sessions.holder(token, Instant::now()) {
            Ok(username) => {
                sessions.counters.refreshes += 1;
                let token = sessions.issue(&username, self.config.token_lifetime);
                Ok((username, token))
            }
            Err(refusal) => {
                sessions.counters.unauthorized += 1;
                Err(refusal)
            }
        }
    }

    /// Whether `token` is current, without counting anything.
    pub(super) fn is_valid(&self, token: &str) -> bool {
        self.sessions().holder(token, Instant::now()).is_ok()
    }

    /// Ends the session of a current token; counts a 401 otherwise.
    pub(super) fn logout(&self, token: Option<&str>) -> Result<String, Refusal> {
        let mut sessions = self.sessions();
        let holder = token
            .ok_or(Refusal::NotCurrent)
            .and_then(|token| sessions.holder(token, Instant::now()));
        match holder {
            Ok(username) => {
                sessions.by_user.remove(&username);
                sessions.counters.logouts += 1;
                Ok(username)
            }
            Err(refusal) => {
                sessions.counters.unauthorized += 1;
                Err(refusal)
            }
        }
    }

    /// The user a work-item call acts for, if its token is current; counts a 401 otherwise.
    pub(super) fn authorize(&self, token: Option<&str>) -> Result<String, Refusal> {
        let mut sessions = self.sessions();
        let holder = token
            .ok_or(Refusal::NotCurrent)
            .and_then(|token| sessions.holder(token, Instant::now()));
        if holder.is_err() {
            sessions.counters.unauthorized += 1;
        }
        holder
    }

    /// Ends every session.
    pub(super) fn kick(&self) {
        let mut sessions = self.sessions();
        let ended = sessions.by_user.len();
        sessions.by_user.clear();
        tracing::info!(ended, "control room kicked every session");
    }

    pub(super) fn counters(&self) -> Counters {
        Counters {
            max_issuances_in_flight: self.issuances.peak(),
            issuances_in_flight: self.issuances.now(),
            ..self.sessions().counters.clone()
        }
    }

    pub(super) fn login_attempt_times(&self) -> Vec<Instant> {
        self.sessions().login_attempt_times.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(lifetime: Duration) -> Shared {
        Shared::new(Config {
            token_lifetime: lifetime,
            login_latency: Duration::ZERO,
            users: [("api-bot".to_owned(), "demo-key".to_owned())].into(),
        })
    }

    #[test]
    fn issued_token_carries_user_and_exp_of_iat_plus_lifetime() {
        let shared = shared(Duration::from_secs(1_200));
        let token = shared.login("api-bot");
        let claims = jwt::read(&token).expect("the emulator mints readable JWTs");
        assert_eq!(claims.sub, "api-bot");
        assert_eq!(claims.sid, 1);
        assert_eq!(claims.exp, claims.iat + 1_200);
    }

    #[test]
    fn a_forged_token_with_the_right_claims_is_refused() {
        let shared = shared(Duration::from_secs(60));
        let token = shared.login("api-bot");
        let forged = jwt::mint(&jwt::read(&token).expect("readable"));
        assert!(shared.is_valid(&token));
        assert_eq!(shared.authorize(Some(&forged)), Err(Refusal::NotCurrent));
        assert_eq!(shared.counters().unauthorized, 1);
    }

    #[test]
    fn counters_carry_the_peak_of_issuances_in_flight() {
        let shared = shared(Duration::from_secs(60));
        let first = shared.issuance_in_flight();
        let second = shared.issuance_in_flight();
        drop((first, second));
        let _third = shared.issuance_in_flight();
        assert_eq!(shared.counters().max_issuances_in_flight, 2);
    }
}
