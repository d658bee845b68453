//! The drain before a single-session rotation (SPEC guarantee 2): the new login kills the
//! old token, so the requests proxied with it must have finished first, on every broker.
//! A logout on shutdown kills the token just as surely, whether the provider is
//! single-session or not, and is drained alike ([`before_logout`]).
//!
//! Locally that is the old token's in-use count ([`Token::drained`]). Across a cluster it
//! goes through the store, and only with a store that tells of changes (PostgreSQL): each
//! broker records the generation it takes up before serving it ([`take_up`]); the rotator,
//! holding the lease, announces the drain of the old generation and waits until every other
//! broker that recorded it has acknowledged, or `drain_timeout` passes ([`before_login`]);
//! each other broker, told by the announcement, stops handing the old token to new requests,
//! waits for its own requests on it (bounded by its own `drain_timeout`) and acknowledges
//! ([`answer`]). A broker that is dead or cut off costs the rotation `drain_timeout`, never
//! more; but if the store does not take the announcement itself within `drain_timeout`, the
//! login or logout is not made, since nobody was told. A rotation or logout that fails calls
//! its drain off ([`call_off`]), and the others serve the token on. Without change
//! notifications (SQLite) brokers drain their own requests only.
//!
//! Issuance stays the driver's business; this module only delays it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Shared;
use super::sync::Follower;
use crate::store::{StoreError, StoreErrorKind};
use crate::token::Token;

/// How often the rotator re-reads who has not acknowledged, should a notification be lost.
const ACK_POLL: Duration = Duration::from_millis(500);

/// How often a broker re-reads the drain requests, should a notification be lost.
const ANSWER_POLL: Duration = Duration::from_secs(1);

/// Records, before `token` is served, that this broker uses its generation. If the drain of
/// that generation was already announced, the token is never handed out here, and the
/// answering task acknowledges at once (it is told by the view's change); says whether so.
pub(super) async fn take_up(shared: &Shared, token: &Token) -> bool {
    if !shared.drains_across_brokers {
        return false;
    }
    let persistence = &shared.persistence;
    let provider = shared.config.name.as_str();
    match persistence
        .store
        .register_user(provider, &persistence.holder, token.generation)
        .await
    {
        Ok(draining) => {
            recorded(shared, token.generation);
            if draining {
                shared
                    .draining
                    .fetch_max(token.generation, Ordering::SeqCst);
                return true;
            }
        }
        Err(e) => {
            tracing::warn!(
                provider,
                error = %e,
                "cannot record the token's users yet; until then a rotation elsewhere will not \
                 wait for this broker"
            );
            shared.unrecorded.store(token.generation, Ordering::SeqCst);
        }
    }
    false
}

/// This broker is recorded as the user of `generation`: nothing is left to try again.
fn recorded(shared: &Shared, generation: u64) {
    let _ = shared
        .unrecorded
        .compare_exchange(generation, 0, Ordering::SeqCst, Ordering::SeqCst);
}

/// Tries again to record this broker as the user of the token it serves, if that failed.
async fn record_again(shared: &Shared) {
    let unrecorded = shared.unrecorded.load(Ordering::SeqCst);
    if unrecorded == 0 {
        return;
    }
    let token = shared.view.borrow().token.clone();
    match token {
        Some(token) if token.generation == unrecorded => {
            take_up(shared, &token).await;
        }
        // Replaced since: its successor was (or is being) recorded.
        _ => recorded(shared, unrecorded),
    }
}

/// At start: records the restored `token`, which the slot holds back from consumers until
/// then (`Slot::start`), and puts it in service, unless its drain was announced already.
/// A store that does not answer within the provider's `timeout` is taken for one that
/// failed: the token is served, as it was before the restart (guarantee 7), and recording
/// it is tried again.
pub(super) async fn take_up_restored(shared: &Shared, token: &Token) {
    let taken_up = tokio::time::timeout(shared.config.timeout, take_up(shared, token)).await;
    let draining = taken_up.unwrap_or_else(|_| {
        tracing::warn!(
            provider = shared.config.name.as_str(),
            "the store did not record this broker as the restored token's user in time; \
             serving it, and trying again"
        );
        shared.unrecorded.store(token.generation, Ordering::SeqCst);
        false
    });
    if !draining {
        served_again(shared, token.generation);
    }
}

/// Before a single-session provider logs in again, lets the requests under way on the
/// current token finish, here and on every other broker that serves it, bounded by
/// `drain_timeout`. New requests already wait here, since the token is past its
/// `refresh_at`; the other brokers stop handing it out when the announcement reaches them.
/// Fails if the other brokers could not be told ([`Untold`]): the login would end the token
/// under their requests.
pub(super) async fn before_login(
    shared: &Shared,
    current: Option<&Token>,
    fence: u64,
) -> Result<(), Untold> {
    let Some(token) = current.filter(|t| {
        shared.config.single_session
            && !shared.retired(t.generation)
            && !t.remaining(shared.clock.now()).is_zero()
    }) else {
        return Ok(());
    };
    everywhere(shared, token, fence, "rotating").await
}

/// Before a logout on shutdown ends `token`'s session: the logout kills the token on every
/// broker that serves it, so their requests on it finish first, as before a rotation. New
/// requests there wait for the token that replaces it (the driver's `drained` step). Fails
/// as [`before_login`] does.
pub(super) async fn before_logout(
    shared: &Shared,
    token: &Token,
    fence: u64,
) -> Result<(), Untold> {
    everywhere(shared, token, fence, "logging out").await
}

/// The other brokers could not be told of a drain: the store refused the announcement (the
/// lease passed on) or did not take it within `drain_timeout`.
#[derive(Debug)]
pub(super) struct Untold(pub(super) StoreError);

/// Lets the requests on `token` finish here and on every other broker that serves it,
/// bounded by `drain_timeout`; then what `then` does (for the log) goes ahead anyway, once
/// the others were told.
async fn everywhere(shared: &Shared, token: &Token, fence: u64, then: &str) -> Result<(), Untold> {
    let timeout = shared.config.proxy.drain_timeout;
    let announced = AtomicBool::new(!shared.drains_across_brokers);
    // A refused announcement ends the wait at once: the lease has passed on.
    let both = async {
        tokio::try_join!(
            async {
                token.drained().await;
                Ok(())
            },
            others(shared, token.generation, fence, &announced)
        )
    };
    match tokio::time::timeout(timeout, both).await {
        Ok(result) => return result.map(drop).map_err(Untold),
        Err(_) if !announced.load(Ordering::SeqCst) => {
            return Err(Untold(StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "the drain could not be announced to the other brokers within \
                     drain_timeout ({} ms)",
                    timeout.as_millis()
                ),
            )));
        }
        Err(_) => {}
    }
    let provider = shared.config.name.as_str();
    let waiting_for = if shared.drains_across_brokers {
        shared
            .persistence
            .store
            .undrained(provider, token.generation)
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    tracing::warn!(
        provider,
        drain_timeout_ms = timeout.as_millis() as u64,
        brokers = ?waiting_for,
        "requests may still use the old token after drain_timeout; {then} anyway"
    );
    Ok(())
}

/// Announces the drain of `generation` to the other brokers (again and again while the
/// store is unavailable; `announced` tells when it took it) and waits until none of them
/// has a request left on it. Unbounded: the caller bounds it. Fails if the store refuses
/// the announcement (the lease passed on) or fails otherwise than by being unavailable.
async fn others(
    shared: &Shared,
    generation: u64,
    fence: u64,
    announced: &AtomicBool,
) -> Result<(), StoreError> {
    if !shared.drains_across_brokers {
        return Ok(());
    }
    let persistence = &shared.persistence;
    let provider = shared.config.name.as_str();
    // Subscribed before announcing, so that no acknowledgement is missed.
    let mut follower = Follower::new(shared);
    loop {
        match persistence
            .store
            .announce_drain(provider, &persistence.holder, fence, generation)
            .await
        {
            Ok(()) => break,
            Err(e) if e.kind == StoreErrorKind::Unavailable => {
                tracing::warn!(
                    provider,
                    error = %e,
                    "cannot announce the drain to the other brokers; trying again"
                );
                tokio::time::sleep(ACK_POLL).await;
            }
            Err(e) => return Err(e),
        }
    }
    announced.store(true, Ordering::SeqCst);
    loop {
        match persistence.store.undrained(provider, generation).await {
            Ok(left) if left.is_empty() => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(provider, error = %e, "cannot read the drain's acknowledgements")
            }
        }
        tokio::select! {
            () = follower.changed(provider) => {}
            () = tokio::time::sleep(ACK_POLL) => {}
        }
    }
}

/// Answers other brokers' drain announcements for the slot until aborted:
/// marks the announced generation not servable, waits (bounded by `drain_timeout`) for this
/// broker's requests on it, and acknowledges; and puts it back in service if the drain is
/// called off. Looks when the store tells of a change of the provider, whenever the slot
/// publishes (a token taken up late may already be draining), and every [`ANSWER_POLL`]
/// (a notification lost with its connection is not noticed at once); and each time, tries
/// again to record this broker as the user of the token it serves, if that failed.
pub(super) async fn answer(shared: Arc<Shared>) {
    let mut follower = Follower::new(&shared);
    let mut view = shared.view.subscribe();
    loop {
        answer_once(&shared).await;
        tokio::select! {
            () = follower.changed(&shared.config.name) => {}
            // The sender lives in `shared`, held here: this ends only by the abort.
            _ = view.changed() => {}
            () = tokio::time::sleep(ANSWER_POLL) => {}
        }
    }
}

async fn answer_once(shared: &Shared) {
    record_again(shared).await;
    let persistence = &shared.persistence;
    let provider = shared.config.name.as_str();
    let generation = match persistence
        .store
        .drain_request(provider, &persistence.holder)
        .await
    {
        Ok(Some(generation)) => generation,
        Ok(None) => return follow_call_off(shared).await,
        Err(e) => {
            tracing::warn!(provider, error = %e, "cannot read the drain requests");
            return;
        }
    };
    // From now on no new request gets that token here (`Shared::servable`).
    shared.draining.fetch_max(generation, Ordering::SeqCst);
    let token = shared
        .view
        .borrow()
        .token
        .clone()
        .filter(|t| t.generation == generation);
    if let Some(token) = token {
        let timeout = shared.config.proxy.drain_timeout;
        if tokio::time::timeout(timeout, token.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                provider,
                generation,
                drain_timeout_ms = timeout.as_millis() as u64,
                "requests still use the token another broker is replacing; acknowledging anyway"
            );
        }
    }
    match persistence
        .store
        .ack_drain(provider, &persistence.holder, generation)
        .await
    {
        Ok(()) => tracing::debug!(
            provider,
            generation,
            "drained for another broker's rotation"
        ),
        Err(e) => tracing::warn!(provider, error = %e, "cannot acknowledge the drain"),
    }
}

/// Puts the current token back in service here if the drain that keeps it from consumers
/// was called off ([`call_off`]): it is still the stored token, in service, and this
/// broker's record of it is in use again. Looked at only while that drain lasts.
async fn follow_call_off(shared: &Shared) {
    let Some(generation) = shared.view.borrow().token.as_ref().map(|t| t.generation) else {
        return;
    };
    if shared.draining.load(Ordering::SeqCst) != generation {
        return;
    }
    let persistence = &shared.persistence;
    let provider = shared.config.name.as_str();
    // Replaced (the notification was of its successor) or retired: it stays out.
    let stored = persistence.store.load_token(provider).await;
    let current = matches!(&stored, Ok(Some(stored))
        if stored.generation == generation && stored.expires_at > shared.clock.now());
    if !current {
        return;
    }
    match persistence
        .store
        .register_user(provider, &persistence.holder, generation)
        .await
    {
        Ok(false) => served_again(shared, generation),
        Ok(true) => {}
        Err(e) => tracing::warn!(provider, error = %e, "cannot read the token's drain"),
    }
}

/// After an attempt to replace `generation`, or to log it out, failed under the lease of
/// `fence`: the token stays in service, so the drain announced for it (by this broker or an
/// earlier holder of the lease) is called off, here and on every broker (their answering
/// tasks see it), and the next drain of it asks them all again. Not when this attempt's own
/// answer superseded the token, or it was reported rejected: it is dead.
pub(super) async fn call_off(shared: &Shared, generation: u64, fence: u64) {
    if !shared.drains_across_brokers || shared.retired(generation) {
        return;
    }
    let provider = shared.config.name.as_str();
    match shared
        .persistence
        .store
        .withdraw_drain(provider, fence, generation)
        .await
    {
        Ok(()) => served_again(shared, generation),
        // Another broker holds the lease, and its drain of the token may be under way
        // without asking this one (whose record says drained): kept from consumers here
        // until that broker replaces the token or calls the drain off.
        Err(e) if e.kind == StoreErrorKind::Conflict => {
            shared.draining.fetch_max(generation, Ordering::SeqCst);
        }
        Err(e) => tracing::warn!(provider, error = %e, "cannot call off the drain of the token"),
    }
}

/// When the broker stops (after its logout, if any): it stops answering, and its records
/// of the token are forgotten, so that no later drain waits for a broker that is gone. Its
/// requests are over by then: the server finished them before stopping the drivers.
pub(super) async fn leave(shared: &Shared, answering: Option<Answering>) {
    // First, so that no answer it is giving records this broker again.
    let Some(answering) = answering else {
        return;
    };
    answering.stop().await;
    let persistence = &shared.persistence;
    let provider = shared.config.name.as_str();
    if let Err(e) = persistence
        .store
        .forget_user(provider, &persistence.holder)
        .await
    {
        tracing::warn!(provider, error = %e, "cannot forget this broker's use of the token; the next drain waits for it");
    }
}

/// The announcement of `generation`'s drain no longer keeps it from consumers here.
fn served_again(shared: &Shared, generation: u64) {
    let lowered = shared.draining.compare_exchange(
        generation,
        generation.saturating_sub(1),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    if lowered.is_ok() {
        // Consumers waiting for a token look again: this one is theirs.
        shared.view.send_modify(|_| {});
    }
}

/// The answering task of a slot, aborted with the driver.
pub(super) struct Answering(tokio::task::JoinHandle<()>);

impl Answering {
    /// Starts answering, if the slot's provider and store take part in cluster drains.
    pub(super) fn start(shared: &Arc<Shared>) -> Option<Self> {
        shared
            .drains_across_brokers
            .then(|| Self(tokio::spawn(answer(shared.clone()))))
    }

    /// Stops answering, and waits until the task is gone.
    async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.abort();
    }
}
