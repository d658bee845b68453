//! The slot's driver: one task per provider, the only caller of its issuer and the only
//! writer of its token to the store.
//!
//! It sleeps until the current token's `refresh_at` or until a handle wakes it, decides
//! whether an issuance is due ([`Shared::next_step`]), runs it, and publishes the outcome
//! to the slot's `watch` channel. An issuance takes the store's lease first (so that two
//! brokers sharing a store never call the issuer together), and a new token is committed
//! to the store before it is published. Failures are followed by a backoff during which
//! the issuer is not called at all, however many consumers ask.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::Instrument;

use super::sync::{Follower, adopt_newer};
use super::{Shared, SlotState, backoff, drain, ledger, refresh};
use crate::clock::floor_to_second;
use crate::issuer::{Answer, Issuance, IssueError, IssueInput, Issued, Issuer};
use crate::metrics::{KindLabels, ProviderLabel, ReasonLabels};
use crate::seal::Purpose;
use crate::store::{AuditEvent, AuditKind, Lease, StoreErrorKind, StoredToken};
use crate::token::Token;

/// The longest token lifetime the broker believes.
const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// How often a provider that needs credentials looks for a reseed, while consumers ask.
const RESEED_POLL: Duration = Duration::from_secs(2);

/// How long an issuance lease lasts unless renewed: the longest a dead holder blocks the
/// next issuance. Well under any sensible `refresh_token_grace`, so that a refresh
/// interrupted by a crash can still be retried within it.
const LEASE_TTL: Duration = Duration::from_secs(3);

/// How often a running issuance renews its lease.
const LEASE_RENEW: Duration = Duration::from_secs(1);

/// How soon to look again when another broker holds the issuance lease.
const LEASE_POLL: Duration = Duration::from_millis(200);

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
        if token.generation <= self.superseded.load(Ordering::Acquire) {
            return Step::Issue("superseded");
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
        // Drained for another broker's logout or rotation, which may never come (that broker
        // died, or its logout may have landed): consumers here wait for a token, so one is
        // issued once the lease is free (should that fail too, the drain is called off:
        // `drain::call_off`).
        if demand && token.generation <= self.draining.load(Ordering::SeqCst) {
            return Step::Issue("drained");
        }
        Step::Sleep(Some(token.refresh_at))
    }
}

/// Runs the driver until `stop` turns true (or its sender is dropped). An attempt under
/// way when the stop comes is finished (it is bounded by the provider's timeout), so the
/// store never holds a lease or a half-recorded issuance for nothing.
pub(super) async fn run(
    shared: Arc<Shared>,
    issuer: Box<dyn Issuer>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut retry_at: Option<SystemTime> = None;
    let mut follower = Follower::new(&shared);
    let restored = shared.view.borrow().token.clone();
    if let Some(token) = restored {
        drain::take_up_restored(&shared, &token).await;
    }
    let mut answering = drain::Answering::start(&shared);
    loop {
        if *stop.borrow() {
            log_out(&shared, &*issuer).await;
            drain::leave(&shared, answering.take()).await;
            return;
        }
        let now = shared.clock.now();
        let wake_at = match shared.next_step(now) {
            Step::Issue(reason) if retry_at.is_none_or(|at| now >= at) => {
                let span = tracing::info_span!("issuance", provider = %shared.config.name, reason);
                match attempt(&shared, &*issuer, reason).instrument(span).await {
                    Outcome::Published => {
                        failures = 0;
                        retry_at = None;
                    }
                    Outcome::Busy => retry_at = Some(shared.clock.now() + LEASE_POLL),
                    Outcome::Failed(error) => {
                        let wait = match &error {
                            // Limits say exactly when the next request is allowed.
                            IssueError::BudgetExhausted { retry_after, .. }
                            | IssueError::TokenCapReached { retry_after, .. } => *retry_after,
                            // Nothing to retry: look for a reseed now and then.
                            IssueError::NeedsCredentials { .. } => RESEED_POLL,
                            _ => {
                                failures += 1;
                                let config = &shared.config;
                                let wait = backoff::delay(
                                    failures,
                                    config.backoff_min,
                                    config.backoff_max,
                                );
                                error.retry_after().map_or(wait, |asked| wait.max(asked))
                            }
                        };
                        let at = shared.clock.now() + wait;
                        retry_at = Some(at);
                        publish_failure(&shared, error, at);
                    }
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
        let sync = async {
            match shared.persistence.sync_every {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.wake.notified() => {}
            () = sleep => {}
            () = sync => adopt_newer(&shared).await,
            () = follower.changed(&shared.config.name) => {
                adopt_newer(&shared).await;
                // The change may be a reseed: look for it now rather than after RESEED_POLL.
                if shared.view.borrow().state == SlotState::NeedsCredentials {
                    retry_at = None;
                }
            }
            changed = stop.changed() => {
                if changed.is_err() {
                    return; // the broker is gone
                }
            }
        }
    }
}

/// When the broker stops: ends the current token's session if the provider asks for it,
/// and retires the stored token so that the next start does not reuse a dead one.
async fn log_out(shared: &Shared, issuer: &dyn Issuer) {
    let Some(token) = shared.view.borrow().token.clone() else {
        return;
    };
    if !issuer.logs_out_on_shutdown() || token.remaining(shared.clock.now()).is_zero() {
        return;
    }
    if !shared.drains_across_brokers {
        end_session(shared, issuer, &token).await;
        return;
    }
    // In a cluster the logout kills the token on every broker that serves it: like a
    // single-session rotation, it holds the issuance lease and drains the token first.
    let provider = shared.config.name.as_str();
    let persistence = &shared.persistence;
    let lease = persistence
        .store
        .acquire_lease(provider, &persistence.holder, LEASE_TTL);
    let fence = match tokio::time::timeout(shared.config.timeout, lease).await {
        Ok(Ok(Lease::Granted { fence })) => fence,
        Ok(Ok(Lease::HeldElsewhere { .. })) => {
            tracing::info!(
                provider,
                "not logging out on shutdown: another holder has the issuance lease"
            );
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(provider, error = %e, "not logging out on shutdown: cannot take the issuance lease");
            return;
        }
        Err(_) => {
            tracing::warn!(
                provider,
                "not logging out on shutdown: the issuance lease timed out"
            );
            return;
        }
    };
    let work = async {
        // A newer token than this broker's is the session now; logging out could end it.
        match persistence.store.load_token(provider).await {
            Ok(Some(stored)) if stored.generation == token.generation => {}
            _ => {
                tracing::info!(
                    provider,
                    "not logging out on shutdown: the stored token is not this broker's"
                );
                return;
            }
        }
        if let Err(drain::Untold(e)) = drain::before_logout(shared, &token, fence).await {
            tracing::warn!(
                provider,
                error = %e,
                "not logging out on shutdown: the other brokers serving the token were not told"
            );
            // An announcement that took after all is called off.
            drain::call_off(shared, token.generation, fence).await;
            return;
        }
        if !end_session(shared, issuer, &token).await {
            drain::call_off(shared, token.generation, fence).await;
        }
    };
    renewing(shared, fence, work).await;
    release(shared).await;
}

/// Logs `token` out at its issuer (bounded by the provider's `timeout`) and, once it is,
/// retires it in the store; returns whether the session may have ended (it was logged out,
/// or the logout may have arrived: it timed out, or failed after it was sent).
async fn end_session(shared: &Shared, issuer: &dyn Issuer, token: &Token) -> bool {
    let provider = shared.config.name.as_str();
    let logout = tokio::time::timeout(shared.config.timeout, issuer.log_out_on_shutdown(token));
    match logout.await {
        Ok(Ok(true)) => {
            tracing::info!(
                provider,
                generation = token.generation,
                "logged out on shutdown"
            );
            if let Err(e) = shared
                .persistence
                .store
                .retire_token(provider, token.generation)
                .await
            {
                tracing::warn!(provider, error = %e, "cannot retire the stored token");
            }
            true
        }
        Ok(Ok(false)) => false,
        Ok(Err(e)) => {
            tracing::warn!(provider, error = %e, "logout on shutdown failed");
            !e.certainly_not_acted_on()
        }
        Err(_) => {
            tracing::warn!(provider, "logout on shutdown timed out");
            true
        }
    }
}

/// How an attempt ended.
pub(super) enum Outcome {
    /// A new token (issued here, or stored by another broker) is published.
    Published,
    /// Another broker holds the issuance lease: look again shortly.
    Busy,
    /// The attempt failed; the driver publishes it with the time of the next attempt.
    Failed(IssueError),
}

/// One issuance attempt: lease, issue, store, publish.
async fn attempt(shared: &Shared, issuer: &dyn Issuer, reason: &'static str) -> Outcome {
    let provider = shared.config.name.as_str();
    let persistence = &shared.persistence;
    shared.demand.store(false, Ordering::Release);
    if let Some(error) = refresh::still_needs_credentials(shared).await {
        return Outcome::Failed(error);
    }
    let current = shared.view.borrow().token.clone();
    let expected = current.as_ref().map_or(0, |t| t.generation);
    shared.view.send_modify(|v| v.state = SlotState::Issuing);
    if reason == "rejected"
        && shared
            .rejection_audited
            .fetch_max(expected, Ordering::AcqRel)
            < expected
    {
        audit(
            shared,
            AuditKind::Invalidated,
            Some(expected),
            "reported rejected by a consumer",
        )
        .await;
    }

    let fence = match persistence
        .store
        .acquire_lease(provider, &persistence.holder, LEASE_TTL)
        .await
    {
        Ok(Lease::Granted { fence }) => {
            // Another broker may have issued while this one waited for the lease: its token
            // is the one to use, and issuing again would supersede it.
            if let Some(token) = adopt_stored(shared, expected).await {
                release(shared).await;
                return publish(shared, token).await;
            }
            fence
        }
        Ok(Lease::HeldElsewhere { .. }) => {
            return match adopt_stored(shared, expected).await {
                Some(token) => publish(shared, token).await,
                None => {
                    // Whoever wanted this issuance still does: look again after the poll.
                    shared.demand.store(true, Ordering::Release);
                    Outcome::Busy
                }
            };
        }
        Err(e) => return failed(shared, store_error(provider, &e), Duration::ZERO).await,
    };

    // Every write of the issuance carries the fence of this grant: if the lease passed to
    // another broker meanwhile (this one stalled past LEASE_TTL), the store refuses them.
    let work = issue_and_commit(shared, issuer, current.as_deref(), expected, fence);
    let (committed, latency) = renewing(shared, fence, work).await;
    if committed.is_err() {
        drain::call_off(shared, expected, fence).await;
    }
    // Released before anyone sees the outcome: a crash after a consumer received a token
    // never leaves the lease behind.
    release(shared).await;
    match committed {
        Ok((Committed::Ours(token), how)) => {
            tracing::info!(
                provider,
                generation = token.generation,
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
            let generation = token.generation;
            let outcome = publish(shared, token).await;
            let kind = match how {
                Issuance::Login => AuditKind::Issued,
                Issuance::Refresh => AuditKind::Refreshed,
            };
            audit(shared, kind, Some(generation), reason).await;
            outcome
        }
        Ok((Committed::Theirs(token), _)) => publish(shared, token).await,
        Err(error) => failed(shared, error, latency).await,
    }
}

/// `work`'s outcome, with the issuance lease of grant `fence` renewed while it runs. The
/// lease is short, so that a broker that dies holding it blocks the next issuance for at
/// most LEASE_TTL.
async fn renewing<T>(shared: &Shared, fence: u64, work: impl Future<Output = T>) -> T {
    let persistence = &shared.persistence;
    let provider = shared.config.name.as_str();
    let mut work = std::pin::pin!(work);
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + LEASE_RENEW, LEASE_RENEW);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = renew.tick() => {
                let renewed = persistence.store.acquire_lease(provider, &persistence.holder, LEASE_TTL).await;
                match renewed {
                    Ok(Lease::Granted { fence: now }) if now == fence => {}
                    Ok(Lease::Granted { .. }) => tracing::warn!(provider, "another broker held the issuance lease meanwhile; this issuance's writes will be refused"),
                    _ => tracing::warn!(provider, "cannot renew the issuance lease"),
                }
            }
        }
    }
}

/// Gives the issuance lease back early; if that fails it expires by itself.
async fn release(shared: &Shared) {
    let persistence = &shared.persistence;
    let provider = shared.config.name.as_str();
    if let Err(e) = persistence
        .store
        .release_lease(provider, &persistence.holder)
        .await
    {
        tracing::warn!(provider, error = %e, "cannot release the issuance lease; it will expire");
    }
}

/// Everything between taking the lease and releasing it: the budget and cap checks, the
/// drain, the issuer request (and the login after a refused token exchange, a request of
/// its own), and the commit of the new access token. Returns the time the issuer took.
async fn issue_and_commit(
    shared: &Shared,
    issuer: &dyn Issuer,
    current: Option<&Token>,
    expected: u64,
    fence: u64,
) -> (Result<(Committed, Issuance), IssueError>, Duration) {
    let provider = shared.config.name.as_str();
    if let Err(error) = ledger::admit(shared, current).await {
        return (Err(error), Duration::ZERO);
    }
    if let Err(drain::Untold(e)) = drain::before_login(shared, current, fence).await {
        return (Err(store_error(provider, &e)), Duration::ZERO);
    }
    // Only a token still in service and still valid can be exchanged.
    let exchangeable = current.filter(|t| {
        !shared.retired(t.generation)
            && t.remaining(shared.clock.now()) > shared.config.min_validity
    });
    let mut asked = ask(shared, issuer, exchangeable, fence).await;
    if let Err(e) = &asked.result
        && exchangeable.is_some()
        && issuer.exchanges_tokens()
        && e.is_refusal()
    {
        tracing::info!(provider, error = %e, "token exchange refused; logging in");
        // The login is another request to the issuer: the ledger counts it on its own, so
        // `max_issuances` may refuse it (SPEC guarantee 5), and it has a `timeout` of its
        // own (in what an exchange left, it could be cut off after landing at the issuer,
        // and the next attempt would spend the same time on the same exchange).
        let login = match ledger::admit(shared, current).await {
            Ok(()) => ask(shared, issuer, None, fence).await,
            Err(error) => Asked::not_sent(error),
        };
        asked = Asked {
            latency: asked.latency + login.latency,
            ..login
        };
    }
    let committed = match asked.result.and_then(|issued| {
        let how = issued.how;
        numbered(shared, issued, expected + 1).map(|token| (token, how))
    }) {
        Ok((token, how)) => commit(shared, fence, expected, token)
            .await
            .map(|c| (c, how)),
        Err(error) => Err(error),
    };
    if committed.is_err() && asked.answered_with_token {
        retire_superseded(shared, current).await;
    }
    (committed, asked.latency)
}

/// What one request to the issuer came to.
struct Asked {
    /// The token, its rotated refresh token already stored; or why there is none.
    result: Result<Issued, IssueError>,
    /// Whether a token answer came (a 2xx JSON answer, usable or not): for a single-session
    /// provider that ended the current token, whatever becomes of the new one here.
    answered_with_token: bool,
    /// How long the issuer took.
    latency: Duration,
}

impl Asked {
    /// A request that was never sent, and why.
    fn not_sent(error: IssueError) -> Self {
        Self {
            result: Err(error),
            answered_with_token: false,
            latency: Duration::ZERO,
        }
    }
}

/// One request to the issuer, exchanging `exchange` if given, bounded by the provider's
/// `timeout`: its place in the ledger (completed with the outcome), the lease check, the
/// refresh-token intent and the store of a rotated refresh token.
async fn ask(shared: &Shared, issuer: &dyn Issuer, exchange: Option<&Token>, fence: u64) -> Asked {
    let provider = shared.config.name.as_str();
    let entry = match shared
        .persistence
        .store
        .begin_issuance(provider, shared.clock.now())
        .await
    {
        Ok(entry) => entry,
        Err(e) => return Asked::not_sent(store_error(provider, &e)),
    };
    // The drain may have outlasted a lease whose renewals failed: a broker that lost it
    // must not call the issuer alongside the one that has it now.
    if !still_holds_lease(shared, fence).await {
        finish_ledger(shared, entry, Some(None)).await;
        return Asked::not_sent(IssueError::Store {
            provider: provider.to_owned(),
            reason: "the issuance lease passed to another broker; not calling the issuer".into(),
        });
    }
    // The refresh intent is the last step before sending, so that the grace it is checked
    // against is not spent on the drain or the ledger. (Writing it is fenced by the lease.)
    let ticket = match refresh::prepare(shared, fence).await {
        Ok(ticket) => ticket,
        Err(error) => {
            finish_ledger(shared, entry, Some(None)).await;
            return Asked::not_sent(error);
        }
    };
    let input = IssueInput {
        current: exchange,
        refresh_token: ticket.as_ref().map(|t| &t.token),
    };
    let started = Instant::now();
    let answer = tokio::time::timeout(shared.config.timeout, issuer.issue(input))
        .await
        .unwrap_or_else(|_| {
            Answer::from(IssueError::Timeout {
                provider: provider.to_owned(),
                timeout: shared.config.timeout,
            })
        });
    let latency = started.elapsed();
    shared
        .metrics
        .issuer_latency
        .get_or_create(&ProviderLabel {
            provider: provider.to_owned(),
        })
        .observe(latency.as_secs_f64());
    ledger::hold(shared, &answer.result).await;
    // A token answer means the issuer issued, even when its access token is unusable here.
    let answered_with_token = answer.handed_out_a_token();
    // For the ledger, a token the issuer handed out counts until it expires, whatever
    // becomes of it here; so does an unknown outcome; only a certain refusal frees its place.
    let outcome = match &answer.result {
        Ok(issued) => Some(Some(issued.expires_at)),
        Err(e) if e.certainly_not_acted_on() => Some(None),
        Err(_) => None,
    };
    // The rotated refresh token is stored first, whatever becomes of the access token.
    let result = match ticket {
        Some(ticket) => refresh::settle(shared, ticket, answer).await,
        None => answer.result,
    };
    finish_ledger(shared, entry, outcome).await;
    Asked {
        result,
        answered_with_token,
        latency,
    }
}

/// After a token answer (a 2xx JSON answer) this broker could not keep (unusable, or not
/// stored): for a single-session provider that answer ended `current`, so it is not handed
/// out again (SPEC guarantee 2) while the driver backs off; consumers get the failure
/// instead of a token that would answer 401. (A timeout is not such an answer: the login
/// may never have arrived, and the cached token is served on, guarantee 8.) It is retired
/// in the store too: other brokers sharing it serve that token, and would serve it on.
async fn retire_superseded(shared: &Shared, current: Option<&Token>) {
    let Some(current) = current.filter(|_| shared.config.single_session) else {
        return;
    };
    let provider = shared.config.name.as_str();
    if shared
        .superseded
        .fetch_max(current.generation, Ordering::AcqRel)
        < current.generation
    {
        tracing::warn!(
            provider,
            generation = current.generation,
            "the issuer answered with a new token that could not be kept; the token it \
             superseded is no longer handed out"
        );
        let store = &shared.persistence.store;
        if let Err(e) = store.retire_token(provider, current.generation).await {
            tracing::warn!(provider, error = %e, "cannot retire the superseded token in the store");
        }
    }
}

/// Whether this broker still holds the issuance lease it was granted as `fence` (renewing
/// it); a store that cannot say counts as no.
async fn still_holds_lease(shared: &Shared, fence: u64) -> bool {
    let persistence = &shared.persistence;
    let renewed = persistence
        .store
        .acquire_lease(&shared.config.name, &persistence.holder, LEASE_TTL)
        .await;
    matches!(renewed, Ok(Lease::Granted { fence: now }) if now == fence)
}

/// Records an issuance's outcome in the ledger; `None` leaves it unknown (counted live).
async fn finish_ledger(shared: &Shared, entry: u64, outcome: Option<Option<SystemTime>>) {
    let Some(expires_at) = outcome else {
        return;
    };
    if let Err(e) = shared
        .persistence
        .store
        .finish_issuance(entry, expires_at)
        .await
    {
        tracing::warn!(provider = %shared.config.name, error = %e, "cannot complete the issuance ledger entry");
    }
}

/// The token to publish after a commit.
enum Committed {
    /// The token this broker obtained, now stored.
    Ours(Token),
    /// A newer token another broker stored first.
    Theirs(Token),
}

/// Stores a new token as the successor of `expected`; if another broker stored a newer one
/// meanwhile, that one is used instead. A refusal because the lease passed to another
/// broker (`fence`) is a `Conflict` too: that broker's token, if it stored one, is used.
async fn commit(
    shared: &Shared,
    fence: u64,
    expected: u64,
    token: Token,
) -> Result<Committed, IssueError> {
    let provider = shared.config.name.as_str();
    match store_token(shared, fence, expected, &token).await {
        Ok(()) => Ok(Committed::Ours(token)),
        Err(e) if e.kind == StoreErrorKind::Conflict => {
            tracing::warn!(provider, "another broker stored a newer token; using it");
            adopt_stored(shared, expected)
                .await
                .map(Committed::Theirs)
                .ok_or_else(|| store_error(provider, &e))
        }
        Err(e) => Err(store_error(provider, &e)),
    }
}

/// Seals and stores `token` as the successor of generation `expected`, under the lease
/// grant `fence`.
async fn store_token(
    shared: &Shared,
    fence: u64,
    expected: u64,
    token: &Token,
) -> Result<(), crate::store::StoreError> {
    let provider = shared.config.name.as_str();
    let stored = StoredToken {
        generation: token.generation,
        issued_at: token.issued_at,
        expires_at: token.expires_at,
        refresh_at: token.refresh_at,
        sealed: shared.identity.seal(
            &shared.persistence.sealer,
            provider,
            Purpose::AccessToken,
            token.expose(),
        ),
    };
    shared
        .persistence
        .store
        .save_token(provider, fence, expected, &stored)
        .await
}

/// The token another broker stored, if it is newer than `expected` and opens.
async fn adopt_stored(shared: &Shared, expected: u64) -> Option<Token> {
    let provider = shared.config.name.as_str();
    let stored = match shared.persistence.store.load_token(provider).await {
        Ok(Some(stored)) if stored.generation > expected => stored,
        Ok(_) => return None,
        Err(e) => {
            tracing::warn!(provider, error = %e, "cannot read the stored token");
            return None;
        }
    };
    super::restore(&shared.persistence, &shared.identity, provider, stored)
        .map(|restored| shared.take_up(restored))
}

/// Publishes a token this broker issued or adopted, once recorded as used here.
pub(super) async fn publish(shared: &Shared, token: Token) -> Outcome {
    drain::take_up(shared, &token).await;
    let token = Arc::new(token);
    shared.view.send_modify(|v| {
        // A newer token another broker stored may have been adopted meanwhile (an
        // invalidation reads the store while the driver issues): the view never goes back.
        if v.token
            .as_ref()
            .is_none_or(|t| t.generation <= token.generation)
        {
            v.token = Some(token);
        }
        v.state = SlotState::Ready;
        v.last_error = None;
        v.retry_at = None;
        v.attempts += 1;
        v.issuances += 1;
    });
    Outcome::Published
}

/// Logs, counts and audits a failed attempt; the driver publishes it.
async fn failed(shared: &Shared, error: IssueError, latency: Duration) -> Outcome {
    let provider = shared.config.name.as_str();
    // The state reads `Issuing` during the attempt; the last error says what it was before.
    let still_needs_credentials = matches!(error, IssueError::NeedsCredentials { .. })
        && matches!(
            shared.view.borrow().last_error,
            Some(IssueError::NeedsCredentials { .. })
        );
    if still_needs_credentials {
        return Outcome::Failed(error); // said and audited when it happened
    }
    tracing::warn!(provider, error = %error, latency_ms = latency.as_millis() as u64, "issuance failed");
    shared
        .metrics
        .issuance_failures
        .get_or_create(&ReasonLabels {
            provider: provider.to_owned(),
            reason: error.reason(),
        })
        .inc();
    audit(shared, AuditKind::Failed, None, &error.to_string()).await;
    Outcome::Failed(error)
}

/// Publishes a failure together with the time of the next attempt, in one update, so that
/// no consumer sees one without the other.
fn publish_failure(shared: &Shared, error: IssueError, retry_at: SystemTime) {
    let at = shared.clock.now();
    let state = match error {
        IssueError::NeedsCredentials { .. } => SlotState::NeedsCredentials,
        _ => SlotState::BackingOff,
    };
    shared.view.send_modify(|v| {
        v.state = state;
        v.last_failure = Some((at, error.to_string()));
        v.last_error = Some(error);
        v.retry_at = Some(retry_at);
        v.attempts += 1;
    });
}

fn store_error(provider: &str, e: &crate::store::StoreError) -> IssueError {
    IssueError::Store {
        provider: provider.to_owned(),
        reason: e.to_string(),
    }
}

/// Appends to the audit trail; a failure to do so is logged, never fatal.
async fn audit(shared: &Shared, kind: AuditKind, generation: Option<u64>, detail: &str) {
    let event = AuditEvent {
        at: shared.clock.now(),
        provider: shared.config.name.clone(),
        kind,
        generation,
        detail: detail.to_owned(),
    };
    if let Err(e) = shared.persistence.store.record(&event).await {
        tracing::warn!(provider = %shared.config.name, error = %e, "cannot append to the audit trail");
    }
}

/// Gives an issued token its generation and its `refresh_at`, or refuses a token the
/// broker could not keep its promises with: one that expires before it could be handed out
/// and replaced in time (a skewed clock, an issuer minting very short tokens), which would
/// otherwise be reissued in a tight loop, or one whose expiry is absurdly far ahead (an
/// `exp` in milliseconds).
fn numbered(shared: &Shared, issued: Issued, generation: u64) -> Result<Token, IssueError> {
    let config = &shared.config;
    let now = shared.clock.now();
    let left = || {
        let left = issued.expires_at.duration_since(now).unwrap_or_default();
        humantime::format_duration(Duration::from_secs(left.as_secs()))
    };
    let malformed = |reason: String| IssueError::Malformed {
        provider: config.name.clone(),
        reason,
    };
    if issued.expires_at > now + MAX_LIFETIME {
        return Err(malformed(format!(
            "the token claims to live {} (an exp in milliseconds?)",
            left()
        )));
    }
    let lifetime = issued
        .expires_at
        .duration_since(issued.issued_at)
        .unwrap_or_default();
    // Never later than the last moment the token can be handed out.
    let lead = config.refresh_lead(lifetime).max(config.min_validity);
    // Rounded down: refresh_at is a promise, and it is published with whole seconds.
    let refresh_at = issued
        .expires_at
        .checked_sub(lead)
        .map(floor_to_second)
        .filter(|at| *at > now)
        .ok_or_else(|| {
            malformed(format!(
                "the token expires in {}, too soon to hand out for min_validity ({}) and replace \
                 in time (clock skew, or min_validity longer than the token lives?)",
                left(),
                humantime::format_duration(config.min_validity)
            ))
        })?;
    Ok(Token::new(
        issued.access_token,
        generation,
        issued.issued_at,
        issued.expires_at,
        refresh_at,
    ))
}
