//! Slot behaviour under tokio's paused clock, against an in-memory issuer and store: the
//! timing rules (refresh-ahead, backoff, expiry) checked deterministically. The real SQLite
//! store has its own tests in `tokenbroker-store`, and the end-to-end tests over HTTP with
//! both live in the `tokenbroker` crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::sync::watch;

use super::*;
use crate::config::{Config, IssuerConfig};
use crate::identity::Identity;
use crate::issuer::{Answer, Issuance, IssueInput, Issued, Rotation};
use crate::seal::Purpose;
use crate::seal::new_master_key;
use crate::store::{
    AuditEvent, Change, IssuanceRecord, Lease, Reseal, StoreError, StoreErrorKind, StoredRefresh,
};

/// An issuer that mints `tok-N` tokens of a fixed lifetime, after a latency, and can be
/// told to fail, or to answer otherwise ([`Answers`]).
struct FakeIssuer {
    clock: Clock,
    lifetime: Duration,
    latency: Duration,
    calls: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    answers: Arc<std::sync::Mutex<Answers>>,
    /// Whether the provider is configured to log out on shutdown.
    logs_out: bool,
    /// How a logout on shutdown fails, if it does.
    logout_error: Arc<std::sync::Mutex<Option<IssueError>>>,
}

#[async_trait]
impl Issuer for FakeIssuer {
    fn logs_out_on_shutdown(&self) -> bool {
        self.logs_out
    }

    /// Fails as `logout_error` says, else done.
    async fn log_out_on_shutdown(&self, _token: &Token) -> Result<bool, IssueError> {
        match self.logout_error.lock().unwrap().clone() {
            Some(error) => Err(error),
            None => Ok(true),
        }
    }

    async fn issue(&self, _input: IssueInput<'_>) -> Answer {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let now_in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight
            .fetch_max(now_in_flight, Ordering::SeqCst);
        let issued_at = self.clock.now();
        tokio::time::sleep(self.latency).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return IssueError::Unavailable {
                provider: "fake".into(),
                status: 503,
                retry_after: None,
            }
            .into();
        }
        let answers = *self.answers.lock().unwrap();
        if let Answers::RateLimited = answers {
            return IssueError::RateLimited {
                provider: "fake".into(),
                retry_after: None,
            }
            .into();
        }
        let rotated = || Rotation::Rotated(SecretString::from(format!("rt-{n}")));
        let (usable, rotation) = match answers {
            Answers::Plain => (true, Rotation::Unknown),
            Answers::Rotating => (true, rotated()),
            Answers::UnusableBesideARotation => (false, rotated()),
            Answers::Unusable => (false, Rotation::Unchanged),
            Answers::RateLimited => unreachable!("answered above"),
        };
        if !usable {
            return Answer {
                result: Err(IssueError::Malformed {
                    provider: "fake".into(),
                    reason: "no access token".into(),
                }),
                rotation,
                token_answer: true,
            };
        }
        Answer {
            result: Ok(Issued {
                access_token: SecretString::from(format!("tok-{n}")),
                issued_at,
                expires_at: issued_at + self.lifetime,
                how: Issuance::Login,
            }),
            rotation,
            token_answer: true,
        }
    }
}

/// Takes one from `count` if it is above zero; whether it was.
fn take_one(count: &AtomicU64) -> bool {
    count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// How the fake answers when it is up: what its token answers carry, or a 429.
#[derive(Clone, Copy)]
enum Answers {
    /// A usable access token, and nothing said of a refresh token.
    Plain,
    /// A usable access token beside a rotated refresh token `rt-N`.
    Rotating,
    /// An unusable access token beside a rotated refresh token `rt-N`.
    UnusableBesideARotation,
    /// An unusable access token, and no refresh token (whatever was sent stays valid).
    Unusable,
    /// No token answer: a 429, which rotates nothing.
    RateLimited,
}

/// A store that keeps the token, the refresh token and the ledger in memory and grants
/// every lease: the slot's timing rules do not depend on durability. It can be told to
/// fail every token save.
#[derive(Default)]
struct MemoryStore {
    token: std::sync::Mutex<Option<StoredToken>>,
    refresh: std::sync::Mutex<Option<StoredRefresh>>,
    ledger: std::sync::Mutex<Vec<IssuanceRecord>>,
    failing_saves: AtomicBool,
    /// How many more drain announcements fail as if the store were unreachable.
    failing_announcements: AtomicU64,
    /// How many more refresh intents are written but answered as unreachable (the answer
    /// was lost).
    lost_intents: AtomicU64,
    /// How many more clearings of a refresh intent fail as if the store were unreachable.
    failing_clears: AtomicU64,
    /// How many more refresh token saves fail as if the store were unreachable.
    failing_refresh_saves: AtomicU64,
    /// How many more refresh token saves are made but answered as unreachable (the answer
    /// was lost).
    lost_refresh_saves: AtomicU64,
    /// Set for a store shared by a cluster: it tells of changes.
    changes: Option<tokio::sync::broadcast::Sender<Change>>,
    /// The generation another broker announced it is about to replace.
    drain_request: std::sync::Mutex<Option<u64>>,
    /// The generation this broker's record says is drained (it acknowledged or announced the
    /// drain), until the drain is called off.
    drained: std::sync::Mutex<Option<u64>>,
    /// The generations whose drain was called off.
    withdrawn: std::sync::Mutex<Vec<u64>>,
    /// Set: calling a drain off is refused, the lease having passed to another broker.
    lease_passed_on: AtomicBool,
    /// Whether this broker's records of the token were forgotten (it stopped).
    forgotten: AtomicBool,
    /// Set: the lease is granted once more, then held by another broker.
    lease_lost_next: AtomicBool,
    lease_granted_once: AtomicBool,
    seeds: std::sync::Mutex<Vec<Vec<u8>>>,
    /// How many more registrations of this broker as a token's user fail as if the store
    /// were unreachable.
    failing_registrations: AtomicU64,
    /// How many registrations of this broker as a token's user were asked for.
    registrations: AtomicU64,
    /// Set: a registration of this broker as a token's user waits until the gate has a
    /// permit.
    registration_gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl MemoryStore {
    /// Stores `sealed` as the successor of refresh token generation `expected`.
    fn put_refresh(&self, expected: u64, sealed: &[u8]) -> Result<u64, StoreError> {
        let mut stored = self.refresh.lock().unwrap();
        if stored.as_ref().map_or(0, |r| r.generation) != expected {
            return Err(StoreError::new(StoreErrorKind::Conflict, "moved on"));
        }
        *stored = Some(StoredRefresh {
            generation: expected + 1,
            sealed: sealed.to_vec(),
            intent_at: None,
            needs_credentials: None,
        });
        Ok(expected + 1)
    }

    /// Applies `change` to the stored refresh token of `generation`; `Conflict` if it moved on.
    fn refresh_of(
        &self,
        generation: u64,
        change: impl FnOnce(&mut StoredRefresh),
    ) -> Result<(), StoreError> {
        match self.refresh.lock().unwrap().as_mut() {
            Some(stored) if stored.generation == generation => {
                change(stored);
                Ok(())
            }
            _ => Err(StoreError::new(StoreErrorKind::Conflict, "moved on")),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn register_user(&self, _: &str, _: &str, generation: u64) -> Result<bool, StoreError> {
        self.registrations.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.registration_gate {
            drop(gate.acquire().await);
        }
        if take_one(&self.failing_registrations) {
            return Err(StoreError::new(StoreErrorKind::Unavailable, "unreachable"));
        }
        Ok(*self.drained.lock().unwrap() == Some(generation))
    }
    async fn forget_user(&self, _: &str, _: &str) -> Result<(), StoreError> {
        self.forgotten.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn announce_drain(
        &self,
        _: &str,
        _: &str,
        _: u64,
        generation: u64,
    ) -> Result<(), StoreError> {
        if take_one(&self.failing_announcements) {
            return Err(StoreError::new(StoreErrorKind::Unavailable, "unreachable"));
        }
        // The announcer's own record is drained.
        *self.drained.lock().unwrap() = Some(generation);
        Ok(())
    }
    async fn drain_request(&self, _: &str, _: &str) -> Result<Option<u64>, StoreError> {
        Ok(*self.drain_request.lock().unwrap())
    }
    async fn withdraw_drain(&self, _: &str, _: u64, generation: u64) -> Result<(), StoreError> {
        if self.lease_passed_on.load(Ordering::SeqCst) {
            return Err(StoreError::new(StoreErrorKind::Conflict, "lease passed on"));
        }
        self.withdrawn.lock().unwrap().push(generation);
        for marked in [&self.drain_request, &self.drained] {
            let mut marked = marked.lock().unwrap();
            if *marked == Some(generation) {
                *marked = None;
            }
        }
        Ok(())
    }
    async fn ack_drain(&self, _: &str, _: &str, generation: u64) -> Result<(), StoreError> {
        let mut request = self.drain_request.lock().unwrap();
        if *request == Some(generation) {
            *request = None;
            *self.drained.lock().unwrap() = Some(generation);
        }
        Ok(())
    }
    async fn undrained(&self, _: &str, _: u64) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    async fn hold_off(&self, _: &str, _: Duration) -> Result<(), StoreError> {
        Ok(())
    }
    async fn held_off_for(&self, _: &str) -> Result<Option<Duration>, StoreError> {
        Ok(None)
    }
    async fn was_seeded(&self, digest: &[u8]) -> Result<bool, StoreError> {
        Ok(self.seeds.lock().unwrap().iter().any(|d| d == digest))
    }
    async fn load_token(&self, _: &str) -> Result<Option<StoredToken>, StoreError> {
        Ok(self.token.lock().unwrap().clone())
    }
    async fn save_token(
        &self,
        _: &str,
        _: u64,
        expected: u64,
        token: &StoredToken,
    ) -> Result<(), StoreError> {
        if self.failing_saves.load(Ordering::SeqCst) {
            return Err(StoreError::new(StoreErrorKind::Unavailable, "disk full"));
        }
        let mut stored = self.token.lock().unwrap();
        if stored.as_ref().map_or(0, |t| t.generation) != expected {
            return Err(StoreError::new(
                StoreErrorKind::Conflict,
                "newer token stored",
            ));
        }
        // Kept to the millisecond, as the real stores keep times.
        let millis = |at: SystemTime| {
            let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            SystemTime::UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
        };
        *stored = Some(StoredToken {
            issued_at: millis(token.issued_at),
            expires_at: millis(token.expires_at),
            refresh_at: millis(token.refresh_at),
            ..token.clone()
        });
        Ok(())
    }
    async fn retire_token(&self, _: &str, generation: u64) -> Result<(), StoreError> {
        if let Some(stored) = self
            .token
            .lock()
            .unwrap()
            .as_mut()
            .filter(|t| t.generation == generation)
        {
            stored.expires_at = SystemTime::UNIX_EPOCH;
            stored.refresh_at = SystemTime::UNIX_EPOCH;
        }
        Ok(())
    }
    async fn acquire_lease(&self, _: &str, _: &str, _: Duration) -> Result<Lease, StoreError> {
        if self.lease_lost_next.load(Ordering::SeqCst)
            && self.lease_granted_once.swap(true, Ordering::SeqCst)
        {
            return Ok(Lease::HeldElsewhere {
                until: SystemTime::now() + Duration::from_secs(3),
            });
        }
        Ok(Lease::Granted { fence: 1 })
    }
    async fn release_lease(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn record(&self, _: &AuditEvent) -> Result<(), StoreError> {
        Ok(())
    }
    async fn audit(&self, _: Option<&str>, _: SystemTime) -> Result<Vec<AuditEvent>, StoreError> {
        Ok(Vec::new())
    }
    async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    async fn set_key_check(&self, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    async fn load_refresh(&self, _: &str) -> Result<Option<StoredRefresh>, StoreError> {
        Ok(self.refresh.lock().unwrap().clone())
    }
    async fn save_refresh(
        &self,
        _: &str,
        _: u64,
        expected: u64,
        sealed: &[u8],
    ) -> Result<u64, StoreError> {
        let unreachable = || StoreError::new(StoreErrorKind::Unavailable, "unreachable");
        if take_one(&self.failing_refresh_saves) {
            return Err(unreachable());
        }
        let saved = self.put_refresh(expected, sealed)?;
        if take_one(&self.lost_refresh_saves) {
            return Err(unreachable());
        }
        Ok(saved)
    }
    async fn save_given_refresh(
        &self,
        _: &str,
        _: u64,
        expected: u64,
        sealed: &[u8],
        digest: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        if self.was_seeded(digest).await? {
            return Ok(None);
        }
        let generation = self.put_refresh(expected, sealed)?;
        self.seeds.lock().unwrap().push(digest.to_vec());
        Ok(Some(generation))
    }
    async fn begin_refresh(
        &self,
        _: &str,
        _: u64,
        generation: u64,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.refresh_of(generation, |r| {
            r.intent_at.get_or_insert(at);
        })?;
        if take_one(&self.lost_intents) {
            return Err(StoreError::new(StoreErrorKind::Unavailable, "unreachable"));
        }
        Ok(())
    }
    async fn clear_refresh_intent(
        &self,
        _: &str,
        _: u64,
        generation: u64,
    ) -> Result<(), StoreError> {
        if take_one(&self.failing_clears) {
            return Err(StoreError::new(StoreErrorKind::Unavailable, "unreachable"));
        }
        self.refresh_of(generation, |r| r.intent_at = None)
    }
    async fn mark_needs_credentials(
        &self,
        _: &str,
        _: u64,
        generation: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.refresh_of(generation, |r| {
            r.needs_credentials = Some(reason.to_owned());
        })
    }
    async fn begin_issuance(&self, _: &str, at: SystemTime) -> Result<u64, StoreError> {
        let mut ledger = self.ledger.lock().unwrap();
        ledger.push(IssuanceRecord {
            requested_at: at,
            expires_at: None,
        });
        Ok(ledger.len() as u64 - 1)
    }
    async fn finish_issuance(
        &self,
        id: u64,
        expires_at: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let mut ledger = self.ledger.lock().unwrap();
        let entry = &mut ledger[id as usize];
        entry.expires_at = Some(expires_at.unwrap_or(entry.requested_at));
        Ok(())
    }
    async fn issuances(&self, _: &str, _: SystemTime) -> Result<Vec<IssuanceRecord>, StoreError> {
        Ok(self.ledger.lock().unwrap().clone())
    }
    async fn rekey(&self, _: Reseal) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        self.changes
            .as_ref()
            .map(tokio::sync::broadcast::Sender::subscribe)
    }
}

struct Harness {
    slot: Slot,
    clock: Clock,
    calls: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    answers: Arc<std::sync::Mutex<Answers>>,
    store: Arc<MemoryStore>,
    stop: watch::Sender<bool>,
    logout_error: Arc<std::sync::Mutex<Option<IssueError>>>,
}

/// A Control Room-like provider (`json_login`, single-session unless `extra` says not).
fn harness(extra: &str, lifetime: Duration) -> Harness {
    harness_of(&json_login(extra), lifetime, MemoryStore::default(), None)
}

/// The same, on a store shared with other brokers (one that tells of changes).
fn cluster_harness(extra: &str, lifetime: Duration) -> Harness {
    let store = MemoryStore {
        changes: Some(tokio::sync::broadcast::channel(16).0),
        ..MemoryStore::default()
    };
    harness_of(&json_login(extra), lifetime, store, None)
}

fn json_login(extra: &str) -> String {
    format!(
        "type = \"json_login\"\nlogin_url = \"http://127.0.0.1:9/\"\n\
         login_body = {{ u = \"x\" }}\n{extra}"
    )
}

/// An OAuth2 provider with a rotating refresh token.
fn refresh_harness(extra: &str, lifetime: Duration) -> Harness {
    harness_of(
        &format!(
            "type = \"oauth2_refresh_token\"\ntoken_url = \"http://127.0.0.1:9/token\"\n\
             client_id = \"c\"\nrefresh_token = \"r-1\"\n{extra}"
        ),
        lifetime,
        MemoryStore::default(),
        None,
    )
}

/// The provider `fake`, of type and settings `provider`, over the fake issuer and `store`,
/// holding `restored` as read back from the store at start.
fn harness_of(
    provider: &str,
    lifetime: Duration,
    store: MemoryStore,
    restored: Option<Restored>,
) -> Harness {
    let text = format!("[providers.fake]\nbackoff_min = \"1s\"\nbackoff_max = \"8s\"\n{provider}");
    let mut config = Config::parse(&text).expect("valid test config");
    let provider = config.providers.remove("fake").expect("provider present");
    let clock = Clock::following_tokio();
    let calls = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(std::sync::Mutex::new(Answers::Plain));
    let logs_out = matches!(&provider.issuer,
        crate::config::IssuerConfig::JsonLogin(login) if login.logout_on_shutdown);
    let logout_error = Arc::new(std::sync::Mutex::new(None));
    let issuer = FakeIssuer {
        logs_out,
        logout_error: logout_error.clone(),
        clock,
        lifetime,
        latency: Duration::from_millis(200),
        calls: calls.clone(),
        in_flight: Arc::new(AtomicU64::new(0)),
        max_in_flight: max_in_flight.clone(),
        down: down.clone(),
        answers: answers.clone(),
    };
    let (stop, stop_rx) = watch::channel(false);
    let store = Arc::new(store);
    let persistence = Persistence {
        store: store.clone(),
        sealer: Arc::new(
            Sealer::from_base64(&SecretString::from(new_master_key()), "test").unwrap(),
        ),
        holder: "test".to_owned(),
        sync_every: None,
    };
    let context = Context {
        persistence: Arc::new(persistence),
        metrics: Arc::new(Metrics::new()),
        clock,
        stop: stop_rx,
    };
    let (slot, _driver) = Slot::start(Arc::new(provider), Box::new(issuer), restored, context);
    Harness {
        slot,
        clock,
        calls,
        max_in_flight,
        down,
        answers,
        store,
        stop,
        logout_error,
    }
}

fn calls(h: &Harness) -> u64 {
    h.calls.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_one_issuance() {
    let h = harness("", Duration::from_secs(60));
    let gets: Vec<_> = (0..100)
        .map(|_| {
            let s = h.slot.clone();
            tokio::spawn(async move { s.get().await })
        })
        .collect();
    for get in gets {
        let token = get.await.unwrap().unwrap();
        assert_eq!(token.expose(), "tok-1");
        assert_eq!(token.generation, 1);
    }
    assert_eq!(calls(&h), 1);
    assert_eq!(h.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_refresh_at_and_not_before() {
    let h = harness(
        "single_session = false\nrefresh_before = \"10s\"",
        Duration::from_secs(60),
    );
    let first = h.slot.get().await.unwrap();
    let lead = first.expires_at.duration_since(first.refresh_at).unwrap();
    assert!(
        lead >= Duration::from_secs(10) && lead < Duration::from_secs(11),
        "{lead:?}"
    );
    // Just before refresh_at nothing is replaced.
    let until = first.refresh_at.duration_since(h.clock.now()).unwrap();
    tokio::time::sleep(until - Duration::from_millis(1)).await;
    assert_eq!(calls(&h), 1);
    assert_eq!(h.slot.get().await.unwrap().generation, 1);
    // Past it, the driver rotates by itself; consumers get the old token until the new one lands.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls(&h), 2);
    assert_eq!(h.slot.get().await.unwrap().generation, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.slot.get().await.unwrap().generation, 2);
}

#[tokio::test(start_paused = true)]
async fn single_session_request_at_refresh_at_waits_for_the_rotation() {
    let h = harness("refresh_before = \"10s\"", Duration::from_secs(60));
    let first = h.slot.get().await.unwrap();
    let until = first.refresh_at.duration_since(h.clock.now()).unwrap();
    tokio::time::sleep(until).await;
    let next = h.slot.get().await.unwrap();
    assert_eq!(next.generation, 2, "never the token about to be superseded");
    assert_eq!(calls(&h), 2);
}

#[tokio::test(start_paused = true)]
async fn a_single_session_rotation_waits_for_the_requests_counted_in_use() {
    let h = harness(
        "refresh_before = \"10s\"\ndrain_timeout = \"20s\"",
        Duration::from_secs(60),
    );
    let in_use = h.slot.get_in_use().await.unwrap();
    assert_eq!(in_use.token().generation, 1);
    let until = in_use
        .token()
        .refresh_at
        .duration_since(h.clock.now())
        .unwrap();
    tokio::time::sleep(until + Duration::from_secs(5)).await;
    assert_eq!(
        calls(&h),
        1,
        "no login while a request is under way on the old token"
    );
    let next = {
        let slot = h.slot.clone();
        tokio::spawn(async move { slot.get_in_use().await.map(|u| u.token().generation) })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !next.is_finished(),
        "a new request does not get the draining token"
    );
    drop(in_use);
    assert_eq!(next.await.unwrap().unwrap(), 2, "it gets the next one");
    assert_eq!(calls(&h), 2);
}

#[tokio::test(start_paused = true)]
async fn unused_token_is_not_refreshed_ahead() {
    let h = harness("refresh_before = \"10s\"", Duration::from_secs(60));
    h.slot.get().await.unwrap();
    tokio::time::sleep(Duration::from_secs(55)).await;
    assert_eq!(calls(&h), 2, "the handed-out token was rotated");
    // Nobody asked for generation 2: it is left to expire, then issued again on demand.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(calls(&h), 2);
    assert_eq!(h.slot.get().await.unwrap().generation, 3);
}

/// Told of a change, a broker re-reads its own token, kept to the millisecond by the
/// store: that is the token it holds, not another broker's retirement of it.
#[tokio::test(start_paused = true)]
async fn a_broker_told_of_its_own_token_does_not_take_it_for_a_new_one() {
    let h = cluster_harness(
        "single_session = false\nrefresh_before = \"10s\"",
        Duration::from_secs(60),
    );
    h.slot.get().await.unwrap();
    tokio::time::sleep(Duration::from_secs(55)).await;
    assert_eq!(calls(&h), 2, "the handed-out token was rotated");
    tell_of_a_change(&h);
    // Nobody asked for generation 2: it is left to expire.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(calls(&h), 2);
}

/// The stored single-session token of generation 1, issued at `issued_at`, checked at start
/// against a ledger of `later` requests (each: how long after `issued_at`, its outcome).
async fn out_of_service_at_start(extra: &str, later: &[(Duration, Option<Duration>)]) -> bool {
    let issued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let at = |after: Duration| issued_at + after;
    let store = MemoryStore::default();
    // The token's own request, sent just before it was issued.
    let mut ledger = vec![IssuanceRecord {
        requested_at: issued_at - Duration::from_millis(1),
        expires_at: Some(at(Duration::from_secs(600))),
    }];
    ledger.extend(later.iter().map(|&(after, expires)| IssuanceRecord {
        requested_at: at(after),
        expires_at: expires.map(at),
    }));
    *store.ledger.lock().unwrap() = ledger;
    let text = format!("[providers.fake]\n{}", json_login(extra));
    let config = Config::parse(&text).expect("valid test config");
    let token = Token::new(
        SecretString::from("tok-1"),
        1,
        issued_at,
        at(Duration::from_secs(600)),
        at(Duration::from_secs(480)),
    );
    let restored = Restored {
        token,
        out_of_service: false,
    };
    restored
        .checked_at_start(&config.providers["fake"], &store)
        .await
        .unwrap()
        .out_of_service
}

#[tokio::test]
async fn a_stored_token_a_later_login_ended_is_not_reused_at_start() {
    let later = Duration::from_secs(5);
    let token_lives = Some(Duration::from_secs(605));
    // Killed between the issuer's answer and the commit: a token never stored.
    assert!(out_of_service_at_start("", &[(later, token_lives)]).await);
    // A request known to have produced nothing ended nothing, nor is an unknown outcome
    // (a timeout, a 5xx) taken for an answer; the token's own request is no later.
    assert!(!out_of_service_at_start("", &[(later, Some(later))]).await);
    assert!(!out_of_service_at_start("", &[(later, None)]).await);
    assert!(!out_of_service_at_start("", &[]).await);
    // A login does not end the token of a provider that is not single-session.
    assert!(!out_of_service_at_start("single_session = false", &[(later, token_lives)]).await);
}

#[tokio::test(start_paused = true)]
async fn invalidation_storm_of_one_generation_reissues_once() {
    let h = harness("", Duration::from_secs(60));
    let first = h.slot.get().await.unwrap();
    let reports: Vec<_> = (0..200)
        .map(|_| {
            let s = h.slot.clone();
            tokio::spawn(async move { s.invalidate(Rejected::Generation(1)).await })
        })
        .collect();
    let mut honoured = 0;
    for report in reports {
        let (token, was_honoured) = report.await.unwrap().unwrap();
        assert_eq!(token.generation, 2);
        honoured += u32::from(was_honoured);
    }
    assert_eq!(honoured, 1);
    assert_eq!(calls(&h), 2);
    // A late report of the old generation, by value, changes nothing.
    let (token, was_honoured) = h
        .slot
        .invalidate(Rejected::AccessToken(first.expose()))
        .await
        .unwrap();
    assert!(!was_honoured);
    assert_eq!(token.generation, 2);
    assert_eq!(calls(&h), 2);
}

#[tokio::test(start_paused = true)]
async fn issuer_down_serves_cache_until_expiry_then_errors_with_backoff() {
    let h = harness(
        "single_session = false\nrefresh_before = \"20s\"",
        Duration::from_secs(60),
    );
    let first = h.slot.get().await.unwrap();
    h.down.store(true, Ordering::SeqCst);
    // Refreshes fail from refresh_at on; the cached token is still served.
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert_eq!(h.slot.get().await.unwrap().generation, 1);
    let during_validity = calls(&h) - 1;
    assert!(
        (2..=6).contains(&during_validity),
        "retries spaced by backoff: {during_validity}"
    );
    // Past expiry: an error that says when to come back, and still no tight loop.
    tokio::time::sleep(first.remaining(h.clock.now()) + Duration::from_secs(1)).await;
    let before = calls(&h);
    for _ in 0..50 {
        match h.slot.get().await {
            Err(SlotError::Issuer { error, .. }) => assert_eq!(error.reason(), "unavailable"),
            other => panic!("expected an issuer error, got {other:?}"),
        }
    }
    assert!(
        calls(&h) - before <= 1,
        "50 requests cause at most one attempt"
    );
    // Back up: the next attempt after the backoff serves everyone again.
    h.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        h.slot.get().await.unwrap().expose(),
        format!("tok-{}", calls(&h))
    );
}

#[tokio::test(start_paused = true)]
async fn waiters_all_receive_the_failure_of_the_attempt_they_waited_for() {
    let h = harness("", Duration::from_secs(60));
    h.down.store(true, Ordering::SeqCst);
    let gets: Vec<_> = (0..20)
        .map(|_| {
            let s = h.slot.clone();
            tokio::spawn(async move { s.get().await })
        })
        .collect();
    for get in gets {
        assert!(matches!(get.await.unwrap(), Err(SlotError::Issuer { .. })));
    }
    assert_eq!(calls(&h), 1);
}

#[tokio::test(start_paused = true)]
async fn single_session_issuer_down_still_serves_the_valid_token_past_refresh_at() {
    let h = harness("refresh_before = \"20s\"", Duration::from_secs(60));
    let first = h.slot.get().await.unwrap();
    h.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(
        first.refresh_at.duration_since(h.clock.now()).unwrap() + Duration::from_secs(5),
    )
    .await;
    // The rotation failed, so the token is not about to be superseded: it is served.
    assert_eq!(h.slot.get().await.unwrap().generation, 1);
    assert!(calls(&h) >= 2, "the rotation was attempted");
}

#[tokio::test(start_paused = true)]
async fn single_session_token_superseded_by_a_login_that_could_not_be_kept_is_not_served() {
    let h = harness("refresh_before = \"10s\"", Duration::from_secs(60));
    let first = h.slot.get().await.unwrap();
    h.store.failing_saves.store(true, Ordering::SeqCst);
    // The rotation logs in (ending generation 1 at the issuer), then cannot store tok-2;
    // the retry comes half a backoff_min later at the earliest.
    tokio::time::sleep(
        first.refresh_at.duration_since(h.clock.now()).unwrap() + Duration::from_millis(300),
    )
    .await;
    assert_eq!(calls(&h), 2, "the rotation logged in");
    assert_eq!(h.slot.view().state, SlotState::BackingOff);
    let stored = h.store.token.lock().unwrap().clone().unwrap();
    assert_eq!(
        (stored.generation, stored.expires_at),
        (1, SystemTime::UNIX_EPOCH),
        "retired in the store, for the brokers sharing it"
    );
    match h.slot.get().await {
        Err(SlotError::Issuer { error, retry_after }) => {
            assert_eq!(error.reason(), "store");
            assert!(retry_after.is_some(), "says when to come back");
        }
        Ok(token) => panic!(
            "served generation {} after it was superseded",
            token.generation
        ),
        Err(other) => panic!("expected the store failure, got {other}"),
    }
    // Once saves work again, the retry after the backoff serves a new token.
    h.store.failing_saves.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let next = h.slot.get().await.unwrap();
    assert_eq!(next.generation, 2);
    assert_eq!(next.expose(), format!("tok-{}", calls(&h)));
}

/// Lets the driver's attempt at `first`'s `refresh_at` be answered as `answers` says: the
/// second request to the issuer.
async fn refresh_answered(h: &Harness, first: &Token, answers: Answers) {
    *h.answers.lock().unwrap() = answers;
    tokio::time::sleep(
        first.refresh_at.duration_since(h.clock.now()).unwrap() + Duration::from_millis(300),
    )
    .await;
    assert_eq!(calls(h), 2, "the request at refresh_at was sent");
}

/// The slot answers the issuer's unusable answer, not the token that answer replaced.
async fn serves_the_unusable_answer(h: &Harness) {
    match h.slot.get().await {
        Err(SlotError::Issuer { error, .. }) => assert_eq!(error.reason(), "malformed"),
        Ok(token) => panic!(
            "served generation {} after the issuer replaced it",
            token.generation
        ),
        Err(other) => panic!("expected the malformed answer, got {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_rotation_beside_an_unusable_access_token_retires_a_single_session_token() {
    let h = refresh_harness(
        "single_session = true\nrefresh_before = \"10s\"",
        Duration::from_secs(60),
    );
    let first = h.slot.get().await.unwrap();
    // The refresh rotates (so the issuer issued, ending generation 1 of a single session)
    // but answers no usable access token.
    refresh_answered(&h, &first, Answers::UnusableBesideARotation).await;
    let stored = h.store.refresh.lock().unwrap().clone().unwrap();
    assert_eq!(
        (stored.generation, stored.intent_at),
        (2, None),
        "the rotated refresh token is stored, as the configured one's successor"
    );
    serves_the_unusable_answer(&h).await;
}

#[tokio::test(start_paused = true)]
async fn an_unusable_login_answer_retires_a_single_session_token() {
    let h = harness("refresh_before = \"10s\"", Duration::from_secs(60));
    let first = h.slot.get().await.unwrap();
    // The login at refresh_at answers, so the issuer opened a session and ended generation
    // 1, but with no usable token.
    refresh_answered(&h, &first, Answers::Unusable).await;
    serves_the_unusable_answer(&h).await;
}

#[tokio::test(start_paused = true)]
async fn a_refresh_answered_without_a_new_refresh_token_leaves_no_intent_behind() {
    // No grace: an intent left behind would put the provider out of service at the next
    // attempt, though the refresh token was never spent.
    let h = refresh_harness(
        "refresh_before = \"10s\"\nrefresh_token_grace = \"0s\"",
        Duration::from_secs(60),
    );
    let first = h.slot.get().await.unwrap();
    refresh_answered(&h, &first, Answers::Unusable).await;
    let stored = h.store.refresh.lock().unwrap().clone().unwrap();
    assert_eq!(
        (
            stored.generation,
            stored.intent_at,
            stored.needs_credentials
        ),
        (1, None, None),
        "the refresh token sent is still the one to send"
    );
    *h.answers.lock().unwrap() = Answers::Plain;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let next = h.slot.get().await.unwrap();
    assert_eq!(next.expose(), format!("tok-{}", calls(&h)), "a new token");
    assert_ne!(h.slot.view().state, SlotState::NeedsCredentials);
}

/// A refresh-token provider without a reuse grace, whose refresh at `refresh_at` the store
/// (`fault`) and the issuer (`answers`) make leave an intent in the store though its token
/// was not sent, or rotated nothing; the next attempt must send the same token, not take the
/// intent for a crash's and put the provider out of service.
async fn after_an_intent_left_unsent(fault: impl FnOnce(&MemoryStore), answers: Answers) {
    let h = refresh_harness(
        "refresh_before = \"10s\"\nrefresh_token_grace = \"0s\"",
        Duration::from_secs(60),
    );
    let first = h.slot.get().await.unwrap();
    fault(&h.store);
    *h.answers.lock().unwrap() = answers;
    tokio::time::sleep(
        first.refresh_at.duration_since(h.clock.now()).unwrap() + Duration::from_millis(300),
    )
    .await;
    assert!(
        h.store
            .refresh
            .lock()
            .unwrap()
            .clone()
            .unwrap()
            .intent_at
            .is_some(),
        "the intent is left in the store"
    );
    *h.answers.lock().unwrap() = Answers::Plain;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let next = h.slot.get().await.unwrap();
    assert_eq!(next.expose(), format!("tok-{}", calls(&h)), "a new token");
    assert_eq!(
        h.store.refresh.lock().unwrap().clone().unwrap().intent_at,
        None
    );
}

#[tokio::test(start_paused = true)]
async fn an_intent_whose_write_lost_its_answer_does_not_put_the_provider_out_of_service() {
    let lost = |store: &MemoryStore| store.lost_intents.store(1, Ordering::SeqCst);
    after_an_intent_left_unsent(lost, Answers::Plain).await;
}

#[tokio::test(start_paused = true)]
async fn an_intent_that_could_not_be_cleared_does_not_put_the_provider_out_of_service() {
    let failing = |store: &MemoryStore| store.failing_clears.store(1, Ordering::SeqCst);
    after_an_intent_left_unsent(failing, Answers::Unusable).await;
}

/// A refresh-token provider with a 2 s reuse grace whose refresh at `refresh_at` gets no
/// answer (a 503: the issuer may have rotated the token), and whose retry within the grace
/// `second` makes fail too; returns the harness well past the grace, and the issuer's
/// calls after the retry. The grace is the earlier request's, so the token must not be
/// sent again: the provider waits for a reseed.
async fn after_a_retry_within_the_grace(second: impl FnOnce(&Harness)) -> (Harness, u64) {
    let h = refresh_harness(
        "refresh_before = \"10s\"\nrefresh_token_grace = \"2s\"",
        Duration::from_secs(60),
    );
    let first = h.slot.get().await.unwrap();
    h.down.store(true, Ordering::SeqCst);
    refresh_answered(&h, &first, Answers::Plain).await;
    h.down.store(false, Ordering::SeqCst);
    second(&h);
    // The retry comes after the 1 s backoff, within the grace.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_retry = calls(&h);
    *h.answers.lock().unwrap() = Answers::Plain;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(h.slot.view().state, SlotState::NeedsCredentials);
    (h, after_retry)
}

#[tokio::test(start_paused = true)]
async fn a_retry_refused_outright_leaves_the_first_requests_intent_for_the_grace() {
    let (h, after_retry) =
        after_a_retry_within_the_grace(|h| *h.answers.lock().unwrap() = Answers::RateLimited).await;
    assert_eq!(after_retry, 3, "the retry was sent");
    assert_eq!(calls(&h), after_retry, "not sent again past the grace");
}

#[tokio::test(start_paused = true)]
async fn a_retry_whose_intent_lost_its_answer_leaves_the_first_requests_intent() {
    let (h, after_retry) =
        after_a_retry_within_the_grace(|h| h.store.lost_intents.store(1, Ordering::SeqCst)).await;
    assert_eq!(after_retry, 2, "the retry failed before it was sent");
    assert_eq!(calls(&h), after_retry, "not sent again past the grace");
}

/// A refresh-token provider whose rotation at `refresh_at` rotates the refresh token while
/// the store is told to `fault` its first save of it; returns the harness once the rotation
/// is over (the retries included).
async fn rotation_stored_through(fault: impl FnOnce(&MemoryStore)) -> Harness {
    let h = refresh_harness("refresh_before = \"10s\"", Duration::from_secs(60));
    let first = h.slot.get().await.unwrap();
    fault(&h.store);
    refresh_answered(&h, &first, Answers::Rotating).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    h
}

/// The rotated refresh token `rt-2` is stored as generation 2, and its access token served.
async fn rotated_token_kept(h: &Harness) {
    let stored = h.store.refresh.lock().unwrap().clone().unwrap();
    assert_eq!((stored.generation, stored.intent_at), (2, None));
    let token = h.slot.get().await.unwrap();
    assert_eq!((token.generation, token.expose()), (2, "tok-2"));
}

#[tokio::test(start_paused = true)]
async fn a_rotated_refresh_token_is_stored_once_the_store_is_back() {
    let h = rotation_stored_through(|store| {
        store.failing_refresh_saves.store(3, Ordering::SeqCst);
    })
    .await;
    rotated_token_kept(&h).await;
}

#[tokio::test(start_paused = true)]
async fn a_rotated_refresh_token_whose_save_answer_was_lost_is_found_stored() {
    let h = rotation_stored_through(|store| {
        store.lost_refresh_saves.store(1, Ordering::SeqCst);
    })
    .await;
    rotated_token_kept(&h).await;
}

/// What the provider's `needs_credentials` says after its rotation at `refresh_at` found an
/// unfinished refresh stamped `intent_at`, beyond the issuer's grace.
async fn reason_for_an_unfinished_refresh(intent_at: SystemTime) -> String {
    let h = refresh_harness(
        "refresh_before = \"10s\"\nrefresh_token_grace = \"0s\"",
        Duration::from_secs(60),
    );
    let first = h.slot.get().await.unwrap();
    h.store
        .refresh_of(1, |r| r.intent_at = Some(intent_at))
        .unwrap();
    tokio::time::sleep(first.refresh_at.duration_since(h.clock.now()).unwrap()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.slot.view().state, SlotState::NeedsCredentials);
    assert_eq!(calls(&h), 1, "the spent refresh token was not replayed");
    let stored = h.store.refresh.lock().unwrap().clone().unwrap();
    stored.needs_credentials.expect("a reason for the operator")
}

#[tokio::test(start_paused = true)]
async fn an_unfinished_refresh_says_how_long_ago_it_started_or_that_nobody_can_tell() {
    let wall = Clock::following_tokio().now();
    let reason = reason_for_an_unfinished_refresh(wall - Duration::from_secs(120)).await;
    assert!(
        reason.starts_with("a refresh started 2m ") && reason.contains(" ago did not finish"),
        "{reason}"
    );
    // The epoch: a store that cannot tell the intent's age.
    let reason = reason_for_an_unfinished_refresh(SystemTime::UNIX_EPOCH).await;
    assert!(
        reason.starts_with("a refresh started at a time the store cannot tell did not finish"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_reseed_takes_no_place_in_the_budget_and_serves_the_cached_token() {
    let h = refresh_harness(
        "refresh_before = \"60s\"\nmax_issuances = \"3/10m\"",
        Duration::from_secs(120),
    );
    let first = h.slot.get().await.unwrap();
    // The issuer refused the refresh token (invalid_grant): out of service until a reseed.
    let out_of_service = |r: &mut StoredRefresh| r.needs_credentials = Some("refused".into());
    h.store.refresh_of(1, out_of_service).unwrap();
    // The rotation at refresh_at finds out (one place in the budget), then polls for 20 s.
    tokio::time::sleep(first.refresh_at.duration_since(h.clock.now()).unwrap()).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            h.slot.get().await.unwrap().generation,
            1,
            "the cached token"
        );
    }
    assert_eq!(h.slot.view().state, SlotState::NeedsCredentials);
    assert_eq!(
        h.store.ledger.lock().unwrap().len(),
        2,
        "polls are not issuances"
    );
    assert_eq!(calls(&h), 1);
    // A reseed (here: the mark cleared) is found at the next poll, and the token used.
    let reseeded = |r: &mut StoredRefresh| r.needs_credentials = None;
    h.store.refresh_of(1, reseeded).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.slot.get().await.unwrap().generation, 2);
    assert_eq!(calls(&h), 2);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_reseed_of_a_spent_configured_token_takes_no_place_in_the_budget() {
    let h = refresh_harness("max_issuances = \"3/10m\"", Duration::from_secs(120));
    // The stored refresh token is another client's, and the configured one (r-1) was
    // stored, and so sent, before: the provider was pointed elsewhere and back.
    let other = Config::parse(
        "[providers.fake]\ntype = \"oauth2_refresh_token\"\n\
         token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"other\"\nrefresh_token = \"x\"\n",
    )
    .unwrap();
    let IssuerConfig::RefreshToken(other) = &other.providers["fake"].issuer else {
        panic!("a refresh-token provider");
    };
    let sealer = &h.slot.shared.persistence.sealer;
    let sealed =
        Identity::of_refresh_tokens(other).seal(sealer, "fake", Purpose::RefreshToken, "rt-9");
    *h.store.refresh.lock().unwrap() = Some(StoredRefresh {
        generation: 4,
        sealed,
        intent_at: None,
        needs_credentials: None,
    });
    let IssuerConfig::RefreshToken(ours) = &h.slot.shared.config.issuer else {
        panic!("a refresh-token provider");
    };
    let spent = Identity::of_refresh_tokens(ours).digest_of("r-1");
    h.store.seeds.lock().unwrap().push(spent.to_vec());

    for _ in 0..20 {
        match h.slot.get().await {
            Err(SlotError::Issuer { error, .. }) => assert_eq!(error.reason(), "needs_credentials"),
            other => panic!("expected needs_credentials, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(calls(&h), 0, "nothing sent");
    assert_eq!(
        h.store.ledger.lock().unwrap().len(),
        1,
        "polls are not issuances"
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_published_after_a_newer_one_was_adopted_does_not_replace_it() {
    let h = harness("", Duration::from_secs(60));
    let first = h.slot.get().await.unwrap();
    let at = |generation| {
        Token::new(
            SecretString::from(format!("tok-{generation}")),
            generation,
            first.issued_at,
            first.expires_at,
            first.refresh_at,
        )
    };
    // Generation 3 adopted from the store; then the driver publishes its own generation 2.
    let adopted = Arc::new(at(3));
    h.slot.shared.view.send_modify(|v| v.token = Some(adopted));
    driver::publish(&h.slot.shared, at(2)).await;
    assert_eq!(h.slot.get().await.unwrap().generation, 3);
    assert_eq!(h.slot.view().state, SlotState::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_token_another_broker_announced_it_replaces_is_not_served_while_backing_off() {
    let h = cluster_harness("refresh_before = \"20s\"", Duration::from_secs(60));
    let first = h.slot.get().await.unwrap();
    // This broker's own rotation fails: it backs off and serves the still-valid token.
    h.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(
        first.refresh_at.duration_since(h.clock.now()).unwrap() + Duration::from_millis(300),
    )
    .await;
    assert_eq!(h.slot.view().state, SlotState::BackingOff);
    assert_eq!(h.slot.get().await.unwrap().generation, 1);
    // Another broker announces it is about to replace generation 1.
    announce_drain_of_1(&h).await;
    match h.slot.get().await {
        Ok(token) => panic!("served generation {} after its drain", token.generation),
        Err(SlotError::Issuer { error, .. }) => assert_eq!(error.reason(), "unavailable"),
        Err(other) => panic!("expected this broker's last failure, got {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_whose_announced_replacement_failed_is_served_while_the_issuer_is_down() {
    let h = cluster_harness("", Duration::from_secs(600));
    h.slot.get().await.unwrap();
    // Another broker announces the drain of generation 1, and its attempt then fails with
    // the issuer down: generation 1 stays the stored token, valid for minutes.
    announce_drain_of_1(&h).await;
    h.down.store(true, Ordering::SeqCst);
    // A consumer's request makes this broker try, once the lease is free; that fails too,
    // and the consumer gets the cached token.
    let served = h
        .slot
        .get()
        .await
        .expect("the cached token (SPEC guarantee 8)");
    assert_eq!(served.generation, 1);
    assert_eq!(calls(&h), 2, "this broker tried to replace it itself");
    assert_eq!(h.slot.view().state, SlotState::BackingOff);
    assert_eq!(
        *h.store.withdrawn.lock().unwrap(),
        [1],
        "and called the drain off for every broker"
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_another_broker_called_off_puts_the_token_back_in_service_here() {
    let h = cluster_harness("", Duration::from_secs(600));
    h.slot.get().await.unwrap();
    announce_drain_of_1(&h).await;
    until("the acknowledgement", || {
        *h.store.drained.lock().unwrap() == Some(1)
    })
    .await;
    // The announcer's rotation failed: it calls the drain off, and the brokers are told.
    h.store.withdraw_drain("fake", 1, 1).await.unwrap();
    tell_of_a_change(&h);
    let draining = || h.slot.shared.draining.load(Ordering::SeqCst);
    until("the call-off taken up", || draining() == 0).await;
    assert_eq!(
        h.slot.get().await.unwrap().generation,
        1,
        "in service again"
    );
    assert_eq!(calls(&h), 1, "nothing issued here");
}

/// A cluster broker restarted with its stored token (generation 1, `tok-restored`), whose
/// registration as the token's user waits for a permit of `gate`; `drained` is what its
/// store record says is drained.
fn restored_harness(gate: Arc<tokio::sync::Semaphore>, drained: Option<u64>) -> Harness {
    let now = Clock::following_tokio().now();
    let store = MemoryStore {
        changes: Some(tokio::sync::broadcast::channel(16).0),
        registration_gate: Some(gate),
        // As stored before the restart (only its generation is read here).
        token: std::sync::Mutex::new(Some(StoredToken {
            generation: 1,
            issued_at: now,
            expires_at: now + Duration::from_secs(600),
            refresh_at: now + Duration::from_secs(480),
            sealed: Vec::new(),
        })),
        drained: std::sync::Mutex::new(drained),
        ..MemoryStore::default()
    };
    let token = Token::new(
        SecretString::from("tok-restored"),
        1,
        now,
        now + Duration::from_secs(600),
        now + Duration::from_secs(480),
    );
    let restored = Restored {
        token,
        out_of_service: false,
    };
    harness_of(
        &json_login(""),
        Duration::from_secs(600),
        store,
        Some(restored),
    )
}

#[tokio::test(start_paused = true)]
async fn a_restored_token_is_served_only_once_this_broker_is_recorded_as_its_user() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    // Another broker announced the drain of generation 1, this broker's record says.
    let h = restored_harness(gate.clone(), Some(1));
    let slot = h.slot.clone();
    let waiting = tokio::spawn(async move { slot.get().await });
    settle().await;
    assert!(!waiting.is_finished(), "not served before it is recorded");
    gate.add_permits(1);
    let served = waiting.await.unwrap().unwrap();
    assert_eq!(
        (served.generation, served.expose()),
        (2, "tok-1"),
        "its drain is under way: a new token, not the restored one"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restored_token_is_served_if_the_store_does_not_record_its_user_in_time() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let h = restored_harness(gate, None);
    let served = h.slot.get().await.unwrap();
    assert_eq!(
        (served.generation, served.expose()),
        (1, "tok-restored"),
        "the cached token, as before the restart"
    );
    assert_eq!(calls(&h), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_record_of_this_broker_as_the_tokens_user_is_made_again() {
    let h = cluster_harness("", Duration::from_secs(600));
    h.store.failing_registrations.store(1, Ordering::SeqCst);
    h.slot.get().await.unwrap();
    // The first one failed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let registrations = || h.store.registrations.load(Ordering::SeqCst);
    assert_eq!(registrations(), 2, "made again, once");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(registrations(), 2, "and not again once made");
}

#[tokio::test(start_paused = true)]
async fn a_consumer_waiting_through_a_drain_that_is_called_off_gets_the_token() {
    let h = cluster_harness("", Duration::from_secs(600));
    h.slot.get().await.unwrap();
    // The announcer holds the lease: this broker cannot replace the drained token.
    h.store.lease_lost_next.store(true, Ordering::SeqCst);
    h.store.lease_granted_once.store(true, Ordering::SeqCst);
    announce_drain_of_1(&h).await;
    let slot = h.slot.clone();
    let waiting = tokio::spawn(async move { slot.get().await });
    settle().await;
    assert!(
        !waiting.is_finished(),
        "the drained token is not handed out"
    );
    h.store.withdraw_drain("fake", 1, 1).await.unwrap();
    tell_of_a_change(&h);
    // With the clock standing still: not woken by the driver's next look at the lease.
    settle().await;
    assert!(waiting.is_finished(), "served once the drain is called off");
    let served = waiting.await.unwrap().unwrap();
    assert_eq!(served.generation, 1);
    assert_eq!(calls(&h), 1, "nothing issued here");
}

#[tokio::test(start_paused = true)]
async fn a_drain_whose_token_was_replaced_stays_on_though_this_brokers_record_is_gone() {
    let h = cluster_harness("", Duration::from_secs(600));
    let first = h.slot.get().await.unwrap();
    announce_drain_of_1(&h).await;
    until("the acknowledgement", || {
        *h.store.drained.lock().unwrap() == Some(1)
    })
    .await;
    // Another broker stored generation 2 (sealed so that it does not open here: not
    // adopted), and announcing its drain forgot this broker's record of generation 1.
    *h.store.token.lock().unwrap() = Some(StoredToken {
        generation: 2,
        issued_at: first.issued_at,
        expires_at: first.expires_at,
        refresh_at: first.refresh_at,
        sealed: b"not for this broker".to_vec(),
    });
    *h.store.drained.lock().unwrap() = None;
    tell_of_a_change(&h);
    settle().await;
    assert_eq!(
        h.slot.shared.draining.load(Ordering::SeqCst),
        1,
        "generation 1 stays out of service"
    );
}

#[tokio::test(start_paused = true)]
async fn a_broker_whose_call_off_is_refused_stops_serving_the_token() {
    let h = cluster_harness("refresh_before = \"20s\"", Duration::from_secs(60));
    let first = h.slot.get().await.unwrap();
    // Its rotation fails, and another broker has the lease by the time it calls off.
    h.down.store(true, Ordering::SeqCst);
    h.store.lease_passed_on.store(true, Ordering::SeqCst);
    tokio::time::sleep(
        first.refresh_at.duration_since(h.clock.now()).unwrap() + Duration::from_millis(300),
    )
    .await;
    assert_eq!(h.slot.view().state, SlotState::BackingOff);
    assert_eq!(h.slot.shared.draining.load(Ordering::SeqCst), 1);
    assert!(
        h.slot.get().await.is_err(),
        "not served while the other broker's drain may be under way"
    );
}

#[tokio::test(start_paused = true)]
async fn a_logout_on_shutdown_that_surely_did_not_arrive_calls_its_drain_off() {
    let logs_out = "logout_url = \"http://127.0.0.1:9/logout\"\nlogout_on_shutdown = true";
    let refused = IssueError::Refused {
        provider: "fake".into(),
        status: 403,
        detail: None,
    };
    let unavailable = IssueError::Unavailable {
        provider: "fake".into(),
        status: 502,
        retry_after: None,
    };
    // Refused: the session lives on. A 502: the logout may have arrived. Done: retired.
    for (error, called_off) in [
        (Some(refused), vec![1]),
        (Some(unavailable), vec![]),
        (None, vec![]),
    ] {
        let h = cluster_harness(logs_out, Duration::from_secs(600));
        h.slot.get().await.unwrap();
        let done = error.is_none();
        *h.logout_error.lock().unwrap() = error;
        h.stop.send(true).unwrap();
        settle().await;
        assert_eq!(
            *h.store.withdrawn.lock().unwrap(),
            called_off,
            "done: {done}"
        );
        let stored = h.store.token.lock().unwrap().clone().unwrap();
        assert_eq!(
            stored.expires_at == SystemTime::UNIX_EPOCH,
            done,
            "retired once logged out"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_stopping_broker_is_forgotten_as_a_user_of_the_token() {
    for (h, in_a_cluster) in [
        (cluster_harness("", Duration::from_secs(600)), true),
        (harness("", Duration::from_secs(600)), false),
    ] {
        h.slot.get().await.unwrap();
        h.stop.send(true).unwrap();
        settle().await;
        assert_eq!(h.store.forgotten.load(Ordering::SeqCst), in_a_cluster);
    }
}

/// Another broker announces the drain of generation 1; returns once the slot's answering
/// task has taken it up.
async fn announce_drain_of_1(h: &Harness) {
    *h.store.drain_request.lock().unwrap() = Some(1);
    tell_of_a_change(h);
    let draining = || h.slot.shared.draining.load(Ordering::SeqCst);
    until("the announced drain taken up", || draining() >= 1).await;
}

/// A cluster broker's rotation at `refresh_at` (drain_timeout 2 s) while the store refuses
/// its first `failures` drain announcements as unreachable; returns the harness half a
/// second after the drain's time is up.
async fn rotation_with_announcements_failing(failures: u64) -> Harness {
    let h = cluster_harness(
        "refresh_before = \"10s\"\ndrain_timeout = \"2s\"",
        Duration::from_secs(60),
    );
    let first = h.slot.get().await.unwrap();
    h.store
        .failing_announcements
        .store(failures, Ordering::SeqCst);
    tokio::time::sleep(
        first.refresh_at.duration_since(h.clock.now()).unwrap() + Duration::from_millis(2500),
    )
    .await;
    h
}

#[tokio::test(start_paused = true)]
async fn a_drain_announced_after_the_store_came_back_lets_the_rotation_go_ahead() {
    let h = rotation_with_announcements_failing(2).await;
    assert_eq!(*h.store.drained.lock().unwrap(), Some(1), "announced");
    assert_eq!(calls(&h), 2, "the login was sent");
}

#[tokio::test(start_paused = true)]
async fn a_rotation_whose_drain_cannot_be_announced_does_not_log_in() {
    let h = rotation_with_announcements_failing(u64::MAX).await;
    assert_eq!(
        calls(&h),
        1,
        "the login would end the token under the other brokers' requests"
    );
    assert_eq!(h.slot.get().await.unwrap().generation, 1, "served on");
}

#[tokio::test(start_paused = true)]
async fn a_drain_announced_without_a_notification_is_answered_within_a_second_or_so() {
    let h = cluster_harness("", Duration::from_secs(60));
    h.slot.get().await.unwrap();
    // Another broker's announcement whose notification was lost with its connection.
    *h.store.drain_request.lock().unwrap() = Some(1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        h.slot.shared.draining.load(Ordering::SeqCst) >= 1,
        "the drain was read from the store again"
    );
}

/// The store tells the slot of a change of its provider, as another broker's write would.
fn tell_of_a_change(h: &Harness) {
    let changes = h.store.changes.as_ref().expect("a cluster harness");
    changes.send(Change::Provider("fake".into())).unwrap();
}

/// Yields until `done` (tokio's clock stands still meanwhile), a thousand times at most.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what} did not happen");
}

/// Lets every task run that can (a thousand yields): before asserting that something did
/// not happen.
async fn settle() {
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_drained_for_a_logout_that_never_comes_is_replaced_on_demand() {
    drained_for_a_logout_that_never_comes("").await;
}

/// A logout kills a token whether or not a new login would have: a provider that is not
/// single-session drains for it too.
#[tokio::test(start_paused = true)]
async fn a_provider_that_is_not_single_session_drains_for_another_brokers_logout() {
    drained_for_a_logout_that_never_comes(
        "single_session = false\nlogout_url = \"http://127.0.0.1:9/logout\"\n\
         logout_on_shutdown = true",
    )
    .await;
}

async fn drained_for_a_logout_that_never_comes(extra: &str) {
    let h = cluster_harness(extra, Duration::from_secs(600));
    let first = h.slot.get().await.unwrap();
    // Another broker, stopping, announces the drain of generation 1 for its logout, and
    // then its logout fails (or it dies): nothing replaces the token.
    announce_drain_of_1(&h).await;
    let next = h.slot.get().await.expect("a token, long before refresh_at");
    assert_eq!(next.generation, 2);
    assert!(h.clock.now() < first.refresh_at);
    assert_eq!(calls(&h), 2);
}

#[tokio::test(start_paused = true)]
async fn a_broker_that_lost_the_lease_before_calling_the_issuer_does_not_call_it() {
    let h = harness("", Duration::from_secs(60));
    // Granted for the attempt, then (a stall later) held by another broker.
    h.store.lease_lost_next.store(true, Ordering::SeqCst);
    let asked = tokio::time::timeout(Duration::from_secs(5), h.slot.get()).await;
    assert!(!matches!(asked, Ok(Ok(_))), "no token without the lease");
    assert_eq!(calls(&h), 0, "the issuer was not called");
    let entry = h.store.ledger.lock().unwrap()[0];
    assert_eq!(
        entry.expires_at,
        Some(entry.requested_at),
        "the ledger entry is closed as no token"
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_too_short_to_keep_promises_with_are_refused_with_backoff() {
    let h = harness("", Duration::from_millis(500));
    for _ in 0..20 {
        match h.slot.get().await {
            Err(SlotError::Issuer { error, .. }) => {
                assert_eq!(error.reason(), "malformed");
                assert!(error.to_string().contains("too soon"), "{error}");
                assert!(error.to_string().contains("min_validity (1s)"), "{error}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(calls(&h) <= 3, "no tight loop of logins: {}", calls(&h));
}

#[tokio::test(start_paused = true)]
async fn after_an_idle_backoff_a_request_gets_a_fresh_attempt_not_the_old_error() {
    let h = harness("", Duration::from_secs(60));
    h.down.store(true, Ordering::SeqCst);
    assert!(h.slot.get().await.is_err());
    let after_failure = calls(&h);
    h.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(calls(&h), after_failure, "nobody asked: no retries");
    assert_eq!(h.slot.get().await.unwrap().generation, 1);
}
