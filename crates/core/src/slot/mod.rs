//! The token slot: one per provider, the single owner of that provider's current token.
//!
//! A slot is split in two. The [`Slot`] handle is what request handlers call: [`Slot::get`]
//! and [`Slot::invalidate`] read the published [`View`] (a `watch` channel: no lock held
//! across an await, no store, no issuer on the cached-token path) and, only when no token
//! can be served, wake the driver and wait for its next outcome. The [`driver`] is one
//! background task per provider and the only code that calls the issuer, which makes
//! single-flight structural: at most one issuance per provider is in flight, and every
//! consumer waiting on it receives its result, error included.
//!
//! The driver replaces a token at its `refresh_at`, never before unless the issuer
//! rejected it (an honoured invalidation), and after a failure retries with backoff while
//! the cached token keeps being served until it expires (unless the failed attempt ended it:
//! a single-session login whose new token could not be kept).

mod backoff;
mod drain;
mod driver;
mod ledger;
mod refresh;
mod sync;

pub use refresh::store_given_refresh_token;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use subtle::ConstantTimeEq;
use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::config::ProviderConfig;
use crate::identity::Identity;
use crate::issuer::{IssueError, Issuer};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::seal::{Purpose, SealError, Sealer};
use crate::store::{Store, StoredToken};
use crate::token::{InUse, Token};

/// What a provider is doing, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Holding a token (or idle, waiting for the first request).
    Ready,
    /// An issuance is in flight.
    Issuing,
    /// The last issuance failed; the next attempt waits for the backoff.
    BackingOff,
    /// The refresh token is out of service until `tokenbroker reseed`.
    NeedsCredentials,
}

impl SlotState {
    /// The name operators see (`GET /v1/providers`, `status`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Issuing => "issuing",
            Self::BackingOff => "backing_off",
            Self::NeedsCredentials => "needs_credentials",
        }
    }
}

/// A snapshot of a slot, published by the driver after every change.
#[derive(Debug, Clone)]
pub struct View {
    /// The newest token, possibly expired or rejected: [`Slot::get`] decides what to serve.
    pub token: Option<Arc<Token>>,
    /// What the driver is doing.
    pub state: SlotState,
    /// The error of the last attempt if it failed.
    pub last_error: Option<IssueError>,
    /// The most recent failure and when it happened, kept after later successes so that
    /// operators can see it.
    pub last_failure: Option<(SystemTime, String)>,
    /// When the driver will try again, while backing off.
    pub retry_at: Option<SystemTime>,
    /// Finished issuance attempts: a waiter takes the first outcome after it began waiting.
    pub attempts: u64,
    /// Tokens obtained since start.
    pub issuances: u64,
}

/// What a consumer reports as rejected by the upstream API.
#[derive(Debug, Clone, Copy)]
pub enum Rejected<'a> {
    /// By generation, as consumers of the token API know it.
    Generation(u64),
    /// By value, for consumers that kept only the token.
    AccessToken(&'a str),
}

/// Why no token could be handed out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SlotError {
    /// The issuance failed and no valid token is cached.
    #[error("{error}")]
    Issuer {
        error: IssueError,
        /// When the next attempt may come, if one is planned.
        retry_after: Option<Duration>,
    },
    /// No token arrived within the provider's `timeout`, plus its `drain_timeout` where a
    /// rotation or another broker's logout first drains, and a margin for the store.
    #[error("{provider}: no token within {}", humantime::format_duration(*waited))]
    WaitTimeout { provider: String, waited: Duration },
}

/// How much longer than the issuer's `timeout` a consumer waits: the issuance is also
/// stored before it is handed out.
const STORE_MARGIN: Duration = Duration::from_secs(2);

/// Where a broker's slots keep their tokens: the store, the key that seals them, and this
/// broker's name as an issuance-lease holder.
pub struct Persistence {
    /// Where tokens, leases and the audit trail live.
    pub store: Arc<dyn Store>,
    /// Seals tokens before they reach the store.
    pub sealer: Arc<Sealer>,
    /// Unique per broker process, so that a lease outlives a crashed holder only until it
    /// expires.
    pub holder: String,
    /// How often to re-read the tokens other brokers stored, when the store is shared by
    /// several brokers; `None` for a store this broker has to itself. With a store that tells
    /// of changes ([`Store::changes`]) this is only the safety net for a missed notification.
    pub sync_every: Option<std::time::Duration>,
}

/// What every slot of one broker shares.
#[derive(Clone)]
pub struct Context {
    /// The store and the sealing key.
    pub persistence: Arc<Persistence>,
    /// Where issuances and invalidations are counted.
    pub metrics: Arc<Metrics>,
    /// The time every slot of the broker goes by.
    pub clock: Clock,
    /// Turns true when the broker stops.
    pub stop: watch::Receiver<bool>,
}

/// The slot handle request handlers use. Cheap to clone.
#[derive(Clone)]
pub struct Slot {
    shared: Arc<Shared>,
}

/// The state shared by a slot's handles and its driver.
struct Shared {
    config: Arc<ProviderConfig>,
    /// The identity its tokens are obtained for, as configured: a stored token of another
    /// is not used.
    identity: Identity,
    clock: Clock,
    metrics: Arc<Metrics>,
    persistence: Arc<Persistence>,
    /// The driver publishes, handles read.
    view: watch::Sender<View>,
    /// Wakes the driver: a consumer needs a token, or a rejected token must be replaced.
    wake: Notify,
    /// The highest generation reported rejected by the issuer's API (0: none). Such a token
    /// is never served again.
    rejected: AtomicU64,
    /// The highest generation superseded by an issuance this broker could not keep (the
    /// issuer answered with a new token, which was then refused or could not be stored: for a
    /// single-session provider the old token died with that answer), or obtained for another
    /// identity than the configured one. Such a token is never served again.
    superseded: AtomicU64,
    /// A consumer found no token to serve since the driver last started an attempt.
    demand: AtomicBool,
    /// The highest rejected generation already written to the audit trail.
    rejection_audited: AtomicU64,
    /// The runtime the slot was started on, which owns the store's connections: a handle
    /// used from another runtime (the server's workers) reads the store there.
    runtime: tokio::runtime::Handle,
    /// Whether a drain spans the other brokers' requests too (`drain`): a provider whose
    /// token another broker can kill (single-session, or logging out on shutdown) on a
    /// store that tells of changes.
    drains_across_brokers: bool,
    /// The highest generation another broker announced it is about to replace (0: none):
    /// not handed to new requests here, as a token past its `refresh_at`.
    draining: AtomicU64,
    /// The generation this broker serves without a record of being its user (0: none):
    /// recording it failed, and the answering task tries again (`drain::take_up`).
    unrecorded: AtomicU64,
    /// A refresh intent this broker left in the store although it knows the refresh token
    /// unspent (the intent's first write failed or lost its answer before the token was
    /// sent, or its clearing failed after an answer that rotated nothing): the token's
    /// generation and the lease grant it was under. Cleared by the next attempt under the
    /// same grant, when no other broker can have sent the token since.
    unsent_intent: std::sync::Mutex<Option<(u64, u64)>>,
}

impl Slot {
    /// Creates the slot of `config`, holding `restored` (a token reused from the store) if
    /// any, and spawns its driver, which stops when the context's `stop` turns true.
    pub fn start(
        config: Arc<ProviderConfig>,
        issuer: Box<dyn Issuer>,
        restored: Option<Restored>,
        context: Context,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        // A token out of service only keeps the numbering going: it is never handed out.
        let superseded = restored
            .as_ref()
            .filter(|r| r.out_of_service)
            .map_or(0, |r| r.token.generation);
        let drains_across_brokers = (config.single_session || issuer.logs_out_on_shutdown())
            && context.persistence.store.changes().is_some();
        // Across a cluster, a restored token is held back until the driver has recorded this
        // broker as its user, or the store failed to or took longer than `timeout`
        // (`drain::take_up_restored`): another broker may be draining it.
        let held_back = restored
            .as_ref()
            .filter(|r| drains_across_brokers && !r.out_of_service)
            .map_or(0, |r| r.token.generation);
        let (view, _) = watch::channel(View {
            token: restored.map(|r| Arc::new(r.token)),
            state: SlotState::Ready,
            last_error: None,
            last_failure: None,
            retry_at: None,
            attempts: 0,
            issuances: 0,
        });
        let shared = Arc::new(Shared {
            identity: Identity::of_tokens(&config),
            config,
            clock: context.clock,
            metrics: context.metrics,
            persistence: context.persistence,
            runtime: tokio::runtime::Handle::current(),
            view,
            wake: Notify::new(),
            rejected: AtomicU64::new(0),
            superseded: AtomicU64::new(superseded),
            demand: AtomicBool::new(false),
            rejection_audited: AtomicU64::new(0),
            drains_across_brokers,
            draining: AtomicU64::new(held_back),
            unrecorded: AtomicU64::new(0),
            unsent_intent: std::sync::Mutex::new(None),
        });
        let driver = tokio::spawn(driver::run(shared.clone(), issuer, context.stop));
        (Self { shared }, driver)
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The provider's settings.
    pub fn config(&self) -> &ProviderConfig {
        &self.shared.config
    }

    /// The current snapshot, for operators and metrics.
    pub fn view(&self) -> View {
        self.shared.view.borrow().clone()
    }

    /// A token that is valid for at least `min_validity`, from memory when there is one,
    /// else from the next issuance (waiting at most the provider's `timeout`).
    pub async fn get(&self) -> Result<Arc<Token>, SlotError> {
        self.acquire(false).await.map(|(token, _)| token)
    }

    /// A token as [`Slot::get`] gives it, already counted "in use" for a request sent with
    /// it (the proxy's), so that a single-session rotation waits for that request (SPEC
    /// guarantee 2). Counting and handing out are one step: the request is counted first
    /// and the token checked again after, so a drain that began in between either sees the
    /// request in flight or the request sees the drain and waits for the next token.
    pub async fn get_in_use(&self) -> Result<InUse, SlotError> {
        match self.acquire(true).await? {
            (_, Some(in_use)) => Ok(in_use),
            (token, None) => Ok(token.use_for_request()),
        }
    }

    async fn acquire(&self, for_request: bool) -> Result<(Arc<Token>, Option<InUse>), SlotError> {
        let shared = &*self.shared;
        let mut rx = shared.view.subscribe();
        // A single-session rotation may first drain the old token's requests, and so may
        // another broker's logout of a token this one serves.
        let drain = if shared.config.single_session || shared.drains_across_brokers {
            shared.config.proxy.drain_timeout
        } else {
            Duration::ZERO
        };
        let bound = shared.config.timeout + drain + STORE_MARGIN;
        let deadline = tokio::time::Instant::now() + bound;
        // The attempt count when this request started waiting: any later outcome is its.
        let mut waiting_since: Option<u64> = None;
        loop {
            {
                let view = rx.borrow_and_update();
                let now = shared.clock.now();
                let served = shared.servable(&view, now).and_then(|token| {
                    if !for_request {
                        return Some((token, None));
                    }
                    let in_use = token.use_for_request();
                    // Checked again now that it counts (see `get_in_use`); if it is no
                    // longer servable, the guard is dropped and the request waits.
                    shared
                        .may_serve(&token, view.state, shared.clock.now())
                        .then_some((token, Some(in_use)))
                });
                if let Some((token, in_use)) = served {
                    token.mark_handed_out();
                    if now >= token.refresh_at {
                        // Past refresh_at and in use: make sure the driver rotates it.
                        shared.wake.notify_one();
                    }
                    return Ok((token, in_use));
                }
                let failed_since_waiting = waiting_since.is_some_and(|seen| view.attempts > seen);
                // While the backoff runs, a new request gets the last error at once; once it
                // is over, the request waits for a fresh attempt instead.
                let backing_off =
                    view.state == SlotState::BackingOff && view.retry_at.is_some_and(|at| at > now);
                if view.state == SlotState::NeedsCredentials
                    && let Some(error) = &view.last_error
                {
                    // Answer at once, and let the driver look for a reseed.
                    shared.demand.store(true, Ordering::Release);
                    shared.wake.notify_one();
                    return Err(SlotError::Issuer {
                        error: error.clone(),
                        retry_after: None,
                    });
                }
                if (failed_since_waiting || (waiting_since.is_none() && backing_off))
                    && let Some(error) = &view.last_error
                {
                    let retry_after = view
                        .retry_at
                        .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO));
                    return Err(SlotError::Issuer {
                        error: error.clone(),
                        retry_after,
                    });
                }
                waiting_since.get_or_insert(view.attempts);
                // An attempt under way will answer this request; otherwise ask for one.
                if view.state != SlotState::Issuing {
                    shared.demand.store(true, Ordering::Release);
                    shared.wake.notify_one();
                }
            }
            // The sender lives in `shared`, which this handle keeps alive: `changed` ends
            // only with a new value or the deadline.
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return Err(SlotError::WaitTimeout {
                    provider: shared.config.name.clone(),
                    waited: bound,
                });
            }
        }
    }

    /// How many of the provider's tokens are live at the issuer (for operators): for a
    /// single-session provider its current one, if valid; else every unexpired token the
    /// ledger counts (a pool's, across restarts and brokers), or, if the store cannot say,
    /// the current one.
    pub async fn live_tokens(&self) -> u64 {
        let shared = &*self.shared;
        let current = shared.view.borrow().token.clone();
        let held =
            u64::from(current.as_ref().is_some_and(|t| {
                t.expires_at > shared.clock.now() && !shared.retired(t.generation)
            }));
        if shared.config.single_session {
            return held;
        }
        let on_runtime = self.shared.clone();
        let counted = shared
            .runtime
            .spawn(async move { ledger::live_tokens(&on_runtime, current.as_deref()).await });
        match counted.await {
            Ok(Ok(live)) => live.max(held),
            Ok(Err(e)) => {
                tracing::warn!(provider = %shared.config.name, error = %e, "cannot count the live tokens");
                held
            }
            Err(_) => held,
        }
    }

    /// "This token got a 401": replaces the token if it is still the current one, and
    /// answers the current token either way. Any number of reports of one generation cause
    /// one reissue. Returns whether this report was the one that caused it.
    pub async fn invalidate(
        &self,
        rejected: Rejected<'_>,
    ) -> Result<(Arc<Token>, bool), SlotError> {
        let honoured = self.reject(rejected).await;
        self.get().await.map(|token| (token, honoured))
    }

    /// The report of [`invalidate`](Self::invalidate) without the wait for the current
    /// token: the reissue it causes, if any, goes on in the background. Returns whether this
    /// report was the one that caused it.
    pub async fn reject(&self, rejected: Rejected<'_>) -> bool {
        let shared = &*self.shared;
        // A generation newer than ours was issued by another broker sharing the store: take
        // it now rather than at the next sync, so the report is judged against it.
        if let Rejected::Generation(g) = rejected {
            let ours = shared
                .view
                .borrow()
                .token
                .as_ref()
                .map_or(0, |t| t.generation);
            if g > ours && shared.persistence.sync_every.is_some() {
                let on_runtime = self.shared.clone();
                let read = shared
                    .runtime
                    .spawn(async move { sync::adopt_newer(&on_runtime).await });
                if let Err(e) = read.await {
                    tracing::warn!(provider = %shared.config.name, error = %e, "cannot read the stored token");
                }
            }
        }
        let generation = {
            let view = shared.view.borrow();
            view.token.as_ref().and_then(|current| match rejected {
                Rejected::Generation(g) => (g == current.generation).then_some(g),
                Rejected::AccessToken(t) => {
                    bool::from(t.as_bytes().ct_eq(current.expose().as_bytes()))
                        .then_some(current.generation)
                }
            })
        };
        // Honoured by the one report that raises the watermark while the generation is still
        // current; a report that arrives after the successor was published changes nothing.
        let honoured = generation.is_some_and(|g| {
            shared.rejected.fetch_max(g, Ordering::AcqRel) < g
                && shared
                    .view
                    .borrow()
                    .token
                    .as_ref()
                    .is_some_and(|t| t.generation == g)
        });
        let outcome = if honoured { "honoured" } else { "ignored" };
        shared
            .metrics
            .invalidations
            .get_or_create(&OutcomeLabels {
                provider: shared.config.name.clone(),
                outcome,
            })
            .inc();
        if honoured {
            tracing::info!(provider = %shared.config.name, generation = generation, "token reported rejected; reissuing");
            shared.wake.notify_one();
        }
        honoured
    }
}

/// A token read back from the store.
pub struct Restored {
    pub(crate) token: Token,
    /// Kept only for its place in the numbering, never handed out: obtained for another
    /// identity than the configured one (the provider's issuer or credentials changed in
    /// the config), or perhaps ended by a later login ([`Restored::checked_at_start`]).
    pub(crate) out_of_service: bool,
}

impl Restored {
    /// At start, for a single-session provider on a store that tells of no changes (one
    /// host): out of service if an issuance request after this token was issued was
    /// answered with a token that was never stored (the broker was killed in between),
    /// since that answer ended it. (A request whose outcome the ledger does not know is not
    /// taken for one: a timeout or a 5xx leaves it so too, and the running broker served
    /// the token on after those.) On a store that notifies, the drain announced before that
    /// request says so instead (`drain::take_up`).
    pub(crate) async fn checked_at_start(
        mut self,
        config: &ProviderConfig,
        store: &dyn Store,
    ) -> Result<Self, crate::store::StoreError> {
        if self.out_of_service || !config.single_session || store.changes().is_some() {
            return Ok(self);
        }
        let issued_at = self.token.issued_at;
        let answered_later = store
            .issuances(&config.name, issued_at)
            .await?
            .iter()
            .any(|r| {
                r.requested_at > issued_at && r.expires_at.is_some_and(|at| at > r.requested_at)
            });
        if answered_later {
            tracing::warn!(
                provider = %config.name,
                generation = self.token.generation,
                "a login after the stored token ended it (its token was never stored: the \
                 broker stopped mid-issuance); not handing it out"
            );
            self.out_of_service = true;
        }
        Ok(self)
    }
}

/// The token a stored row holds, if it opens with this broker's key, and whether it was
/// obtained for another identity than `identity` (the provider's as configured now). A
/// restored token is treated as handed out: consumers may hold it from before the restart,
/// so it is refreshed ahead of its expiry like any token in use.
pub(crate) fn restore(
    persistence: &Persistence,
    identity: &Identity,
    provider: &str,
    stored: StoredToken,
) -> Option<Restored> {
    let opened = persistence
        .sealer
        .open(provider, Purpose::AccessToken, &stored.sealed)
        .and_then(|bytes| {
            // Another identity's token is not kept, only its place in the numbering.
            let (secret, out_of_service) = match identity.claim(bytes) {
                Some(secret) => (secret, false),
                None => {
                    tracing::warn!(
                        provider,
                        generation = stored.generation,
                        "the stored token was obtained for another identity (the provider's \
                         issuer or credentials changed in the config); not handing it out"
                    );
                    (Vec::new(), true)
                }
            };
            String::from_utf8(secret)
                .map(|value| (SecretString::from(value), out_of_service))
                .map_err(|_| SealError::WrongKeyOrTampered)
        });
    match opened {
        Ok((value, out_of_service)) => {
            let token = Token::new(
                value,
                stored.generation,
                stored.issued_at,
                stored.expires_at,
                stored.refresh_at,
            );
            token.mark_handed_out();
            Some(Restored {
                token,
                out_of_service,
            })
        }
        Err(e) => {
            tracing::error!(provider, error = %e, "the stored token does not open; ignoring it");
            None
        }
    }
}

impl Shared {
    /// The token of a stored row read back while running; another identity's is marked
    /// out of service first.
    fn take_up(&self, restored: Restored) -> Token {
        if restored.out_of_service {
            self.superseded
                .fetch_max(restored.token.generation, Ordering::AcqRel);
        }
        restored.token
    }

    /// Whether the token of `generation` is out of service: reported rejected by the
    /// issuer's API, superseded by an issuance that could not be kept, or another
    /// identity's.
    fn retired(&self, generation: u64) -> bool {
        generation <= self.rejected.load(Ordering::Acquire)
            || generation <= self.superseded.load(Ordering::Acquire)
    }

    /// The token to hand out now, if there is one: not retired, valid for `min_validity`,
    /// not announced for replacement or logout by another broker (it is about to die), and,
    /// for a single-session provider, not due for rotation here (unless this broker's
    /// rotation failed and the driver is backing off: then the still-valid token is all
    /// there is).
    fn servable(&self, view: &View, now: SystemTime) -> Option<Arc<Token>> {
        let token = view.token.as_ref()?;
        self.may_serve(token, view.state, now)
            .then(|| token.clone())
    }

    /// Whether `token` may be handed out now, the slot being in `state` (see `servable`).
    fn may_serve(&self, token: &Token, state: SlotState, now: SystemTime) -> bool {
        let retired = self.retired(token.generation);
        let expiring = now + self.config.min_validity > token.expires_at;
        // Past refresh_at, unless this broker's own rotation failed: then the still-valid
        // token is all there is. Announced by the broker about to replace or log it out:
        // never.
        let due = now >= token.refresh_at
            && !matches!(state, SlotState::BackingOff | SlotState::NeedsCredentials);
        let rotating = self.config.single_session && due;
        let announced = token.generation <= self.draining.load(Ordering::SeqCst);
        !retired && !expiring && !rotating && !announced
    }
}

#[cfg(test)]
mod tests;
