//! Rotating refresh tokens (SPEC guarantee 6): the refresh token is read from the store,
//! an intent is committed before it is sent, and the rotated token is committed before the
//! access token it came with is handed to anyone (tried again for a while if the store is
//! unavailable: the broker holds its only copy).
//!
//! After a crash (an intent with no outcome) the same refresh token is retried only within
//! the issuer's reuse grace (`refresh_token_grace`); beyond it, replaying the token could make
//! the issuer revoke the whole token family, so the provider is marked `needs_credentials`
//! until a person runs `tokenbroker reseed`. An `invalid_grant` does the same. An intent
//! this broker left in the store although it knows its token is unspent (the intent's write
//! failed before the token was sent, or its clearing after an answer that rotated nothing)
//! is no crash's: its next attempt under the same lease grant clears it.

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use super::Shared;
use crate::config::{IssuerConfig, RefreshTokenConfig};
use crate::identity::Identity;
use crate::issuer::{Answer, IssueError, Issued, OAuthError, Rotation};
use crate::seal::{Purpose, Sealer};
use crate::store::{Store, StoreError, StoreErrorKind, StoredRefresh};

/// How long a retried refresh may take to reach the issuer.
const DELIVERY_MARGIN: Duration = Duration::from_millis(500);

/// How long a rotated refresh token's save is tried again while the store is unavailable.
const ROTATED_SAVE_WINDOW: Duration = Duration::from_secs(10);

/// The refresh token an issuance may use, which stored generation it is, and the lease
/// grant the issuance writes under.
pub(super) struct Ticket {
    generation: u64,
    fence: u64,
    /// Whether an earlier request with this token left its intent, with no known outcome:
    /// that request may have rotated it, whatever this one comes to.
    retry: bool,
    pub(super) token: SecretString,
    /// Whose it is: the rotated token that replaces it is stored as the same identity's.
    identity: Identity,
}

/// For a refresh-token provider, the token to send, with its intent committed under the
/// lease grant `fence`; `None` for other providers.
pub(super) async fn prepare(shared: &Shared, fence: u64) -> Result<Option<Ticket>, IssueError> {
    let IssuerConfig::RefreshToken(config) = &shared.config.issuer else {
        return Ok(None);
    };
    let provider = shared.config.name.as_str();
    let store = &shared.persistence.store;
    let identity = Identity::of_refresh_tokens(config);
    // First start: the configured refresh token becomes generation 1.
    let mut stored = match store
        .load_refresh(provider)
        .await
        .map_err(|e| failure(shared, &e))?
    {
        Some(stored) => stored,
        None => seed(shared, config, &identity, fence, 0).await?,
    };
    let mut token = open(shared, &identity, &stored)?;
    if token.is_none() {
        // Never sent to this token endpoint or client: it belongs to another.
        tracing::warn!(
            provider,
            "the stored refresh token belongs to another identity (the provider's token_url \
             or client_id changed in the config); starting over from the configured refresh_token"
        );
        stored = seed(shared, config, &identity, fence, stored.generation).await?;
        token = open(shared, &identity, &stored)?;
    }
    let token = token.ok_or_else(|| {
        needs(
            shared,
            "the configured refresh token could not be stored".to_owned(),
        )
    })?;
    if let Some(reason) = stored.needs_credentials {
        return Err(needs(shared, reason));
    }
    let now = shared.clock.now();
    // Forgotten whatever the answer: the intent this attempt writes will be sent.
    let left_unsent_here = unsent(shared, stored.generation, fence);
    if stored.intent_at.is_some() && left_unsent_here {
        // Left by this broker with its token unspent, under this same grant: no one sent
        // it since.
        store
            .clear_refresh_intent(provider, fence, stored.generation)
            .await
            .map_err(|e| failure(shared, &e))?;
        stored.intent_at = None;
    }
    if let Some(intent_at) = stored.intent_at {
        let since = now.duration_since(intent_at).unwrap_or_default();
        // The retry must reach the issuer within its grace, not merely leave before it ends.
        if since + DELIVERY_MARGIN > config.refresh_token_grace {
            // The epoch is how a store says it cannot vouch for the intent's age.
            let started = if intent_at == SystemTime::UNIX_EPOCH {
                "at a time the store cannot tell".to_owned()
            } else {
                let ago = Duration::from_secs(since.as_secs());
                format!("{} ago", humantime::format_duration(ago))
            };
            let reason = format!(
                "a refresh started {started} did not finish (a crash or a lost answer); the \
                 issuer may have rotated the refresh token, and replaying it beyond \
                 refresh_token_grace ({}) would revoke the whole token family",
                humantime::format_duration(config.refresh_token_grace)
            );
            mark(shared, fence, stored.generation, &reason).await;
            return Err(needs(shared, reason));
        }
        tracing::warn!(
            provider,
            since_ms = since.as_millis() as u64,
            "retrying an interrupted refresh within refresh_token_grace"
        );
    }
    // A retry: an earlier request with this token may have been sent (and rotated it).
    let retry = stored.intent_at.is_some();
    if let Err(e) = store
        .begin_refresh(provider, fence, stored.generation, now)
        .await
    {
        // The intent may have been written all the same, and the token is not sent; but
        // on a retry the stored intent is the earlier request's, and stays its evidence.
        if !retry {
            left_unsent(shared, stored.generation, fence, &e);
        }
        return Err(failure(shared, &e));
    }
    Ok(Some(Ticket {
        generation: stored.generation,
        fence,
        retry,
        token,
        identity,
    }))
}

/// While the provider waits for a reseed (its last attempt found the refresh token out of
/// service): the reason, if the stored token still is. Only the store is read, so looking
/// for a reseed takes no lease, no place in the ledger's budget and no drain; `None` (a
/// reseed, or a store that cannot say) lets a full attempt find out.
pub(super) async fn still_needs_credentials(shared: &Shared) -> Option<IssueError> {
    if !matches!(
        shared.view.borrow().last_error,
        Some(IssueError::NeedsCredentials { .. })
    ) {
        return None;
    }
    let store = &shared.persistence.store;
    let stored = store.load_refresh(&shared.config.name).await.ok()??;
    if let Some(reason) = stored.needs_credentials {
        return Some(needs(shared, reason));
    }
    // Or waiting because the stored token is another client's and the configured one spent
    // ([`seed`]); still so until either changes.
    let IssuerConfig::RefreshToken(config) = &shared.config.issuer else {
        return None;
    };
    let identity = Identity::of_refresh_tokens(config);
    let foreign = open(shared, &identity, &stored).ok()?.is_none();
    let digest = identity.digest_of(config.refresh_token.expose_secret());
    (foreign && store.was_seeded(&digest).await.ok()?).then(|| spent(shared))
}

/// The configured refresh token was stored (and sent) before, and the stored one is another
/// client's: sending it again could be a replay.
fn spent(shared: &Shared) -> IssueError {
    needs(
        shared,
        "the configured refresh_token was used before, and the stored refresh token belongs \
         to another client (token_url or client_id changed in the config, and back?); sending \
         it again could revoke the whole token family: give a new one with `tokenbroker reseed`"
            .to_owned(),
    )
}

/// Stores the configured refresh token as the successor of generation `expected` (0: none
/// yet), and reads back what is stored (another holder's, if it stored first). Not a token
/// stored (and so sent) before ([`store_given_refresh_token`]): the provider was re-pointed
/// at another client and back, or brokers with the old and the new config take turns
/// during a deploy.
async fn seed(
    shared: &Shared,
    config: &RefreshTokenConfig,
    identity: &Identity,
    fence: u64,
    expected: u64,
) -> Result<StoredRefresh, IssueError> {
    let provider = shared.config.name.as_str();
    let persistence = &shared.persistence;
    let store = &*persistence.store;
    match store_given_refresh_token(
        store,
        &persistence.sealer,
        identity,
        provider,
        fence,
        expected,
        &config.refresh_token,
    )
    .await
    {
        Ok(Some(_)) => {}
        // Not marked in the store: the stored token is another client's, still in service.
        Ok(None) => return Err(spent(shared)),
        Err(e) if e.kind == StoreErrorKind::Conflict => {}
        Err(e) => return Err(failure(shared, &e)),
    }
    store
        .load_refresh(provider)
        .await
        .map_err(|e| failure(shared, &e))?
        .ok_or_else(|| needs(shared, "the refresh token could not be stored".to_owned()))
}

/// Stores `token`, a refresh token given to the broker (the configured one, or a reseed),
/// as `identity`'s successor of stored generation `expected` under the lease grant `fence`,
/// and records its digest in the same transaction; returns the new generation. `None` if a
/// token of that digest was stored before: it was sent then, and sending it again could
/// revoke the whole token family (and storing it would lose the token stored now). A given
/// token is stored once.
pub async fn store_given_refresh_token(
    store: &dyn Store,
    sealer: &Sealer,
    identity: &Identity,
    provider: &str,
    fence: u64,
    expected: u64,
    token: &SecretString,
) -> Result<Option<u64>, StoreError> {
    let digest = identity.digest_of(token.expose_secret());
    let sealed = identity.seal(
        sealer,
        provider,
        Purpose::RefreshToken,
        token.expose_secret(),
    );
    store
        .save_given_refresh(provider, fence, expected, &sealed, &digest)
        .await
}

/// `token` sealed for the store, as `identity`'s (the counterpart of [`open`]).
fn sealed(shared: &Shared, identity: &Identity, token: &SecretString) -> Vec<u8> {
    identity.seal(
        &shared.persistence.sealer,
        &shared.config.name,
        Purpose::RefreshToken,
        token.expose_secret(),
    )
}

/// The refresh token a stored row holds, if it belongs to `identity`.
fn open(
    shared: &Shared,
    identity: &Identity,
    stored: &StoredRefresh,
) -> Result<Option<SecretString>, IssueError> {
    let unreadable = |reason: String| {
        needs(
            shared,
            format!("the stored refresh token does not open: {reason}"),
        )
    };
    let bytes = shared
        .persistence
        .sealer
        .open(&shared.config.name, Purpose::RefreshToken, &stored.sealed)
        .map_err(|e| unreadable(e.to_string()))?;
    identity
        .claim(bytes)
        .map(|secret| {
            String::from_utf8(secret)
                .map(SecretString::from)
                .map_err(|_| unreadable("not text".to_owned()))
        })
        .transpose()
}

/// Stores what a refresh's answer says about the refresh token, before anything else is
/// done with the access token: a rotated refresh token is stored even when the access token
/// beside it is unusable, since the one sent is spent either way.
pub(super) async fn settle(
    shared: &Shared,
    ticket: Ticket,
    answer: Answer,
) -> Result<Issued, IssueError> {
    let provider = shared.config.name.as_str();
    let Answer {
        result, rotation, ..
    } = answer;
    if let Rotation::Rotated(rotated) = rotation {
        if let Err(e) = store_rotated(shared, &ticket, &rotated).await {
            // The intent stays: within the grace the next attempt may retry.
            return Err(IssueError::Store {
                provider: provider.to_owned(),
                reason: format!(
                    "the rotated refresh token could not be stored, so its access token is not handed out: {e}"
                ),
            });
        }
        return result;
    }
    match &result {
        Ok(_) => clear(shared, &ticket).await,
        // A token answer that kept the refresh token, even beside an unusable access token:
        // nothing was rotated, and the next attempt may send the same one, at any time.
        Err(_) if matches!(rotation, Rotation::Unchanged) => clear(shared, &ticket).await,
        Err(IssueError::OAuth {
            error: OAuthError::InvalidGrant,
            description,
            ..
        }) => {
            let reason = format!(
                "the issuer refused the refresh token (invalid_grant{})",
                description
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
            mark(shared, ticket.fence, ticket.generation, &reason).await;
            return Err(needs(shared, reason));
        }
        // Never delivered, or refused outright: this request rotated nothing. On a retry
        // the earlier request's outcome is still unknown: its intent stays, for the grace
        // to judge.
        Err(e) if e.certainly_not_acted_on() && !ticket.retry => clear(shared, &ticket).await,
        // Anything else may have rotated the token: the intent stays, and the grace decides.
        Err(_) => {}
    }
    result
}

/// Stores `rotated` as the successor of the ticket's refresh token. This broker holds the
/// only copy, and the token sent is spent, so a store that is unavailable is tried again
/// for up to [`ROTATED_SAVE_WINDOW`] (the lease is renewed meanwhile, and the save is
/// fenced by it); a save whose answer was lost is recognised by reading the stored token.
async fn store_rotated(
    shared: &Shared,
    ticket: &Ticket,
    rotated: &SecretString,
) -> Result<(), StoreError> {
    let provider = shared.config.name.as_str();
    let store = &shared.persistence.store;
    let sealed = sealed(shared, &ticket.identity, rotated);
    let deadline = tokio::time::Instant::now() + ROTATED_SAVE_WINDOW;
    let mut wait = Duration::from_millis(100);
    let mut unsure = false;
    loop {
        let e = match store
            .save_refresh(provider, ticket.fence, ticket.generation, &sealed)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        match e.kind {
            StoreErrorKind::Conflict if unsure && is_stored(shared, ticket, rotated).await => {
                return Ok(());
            }
            StoreErrorKind::Unavailable if tokio::time::Instant::now() + wait < deadline => {
                tracing::warn!(
                    provider,
                    error = %e,
                    "cannot store the rotated refresh token yet; trying again"
                );
                unsure = true;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            _ => return Err(e),
        }
    }
}

/// Whether `rotated` is stored as the successor of the ticket's refresh token.
async fn is_stored(shared: &Shared, ticket: &Ticket, rotated: &SecretString) -> bool {
    let stored = shared
        .persistence
        .store
        .load_refresh(&shared.config.name)
        .await;
    match stored {
        Ok(Some(stored)) if stored.generation == ticket.generation + 1 => {
            matches!(open(shared, &ticket.identity, &stored),
                Ok(Some(token)) if token.expose_secret() == rotated.expose_secret())
        }
        _ => false,
    }
}

async fn clear(shared: &Shared, ticket: &Ticket) {
    let provider = shared.config.name.as_str();
    if let Err(e) = shared
        .persistence
        .store
        .clear_refresh_intent(provider, ticket.fence, ticket.generation)
        .await
    {
        tracing::warn!(provider, error = %e, "cannot clear the refresh intent");
        left_unsent(shared, ticket.generation, ticket.fence, &e);
    }
}

/// Remembers that the intent of refresh token `generation`, under the lease grant `fence`,
/// is (or may be) in the store although the token is known unspent (not sent, or sent and
/// rotated nothing): unless the write was refused (`Conflict`: the token or the lease moved
/// on).
fn left_unsent(shared: &Shared, generation: u64, fence: u64, e: &StoreError) {
    if e.kind != StoreErrorKind::Conflict {
        *shared.unsent_intent.lock().expect("unsent intent lock") = Some((generation, fence));
    }
}

/// Whether this broker left the stored intent of refresh token `generation` unsent, under
/// the lease grant `fence` (so no other broker held the lease, and sent it, since); forgets
/// it either way.
fn unsent(shared: &Shared, generation: u64, fence: u64) -> bool {
    shared
        .unsent_intent
        .lock()
        .expect("unsent intent lock")
        .take()
        == Some((generation, fence))
}

/// Takes refresh token `generation` out of service; a no-op (logged) if another holder has
/// rotated it since, or holds the lease now.
async fn mark(shared: &Shared, fence: u64, generation: u64, reason: &str) {
    let provider = shared.config.name.as_str();
    tracing::error!(
        provider,
        reason,
        "refresh token out of service until `tokenbroker reseed`"
    );
    if let Err(e) = shared
        .persistence
        .store
        .mark_needs_credentials(provider, fence, generation, reason)
        .await
    {
        if e.kind == StoreErrorKind::Conflict {
            tracing::warn!(
                provider,
                "another broker moved the refresh token on; not marking needs_credentials"
            );
        } else {
            tracing::error!(provider, error = %e, "cannot record needs_credentials in the store");
        }
    }
}

fn needs(shared: &Shared, reason: String) -> IssueError {
    IssueError::NeedsCredentials {
        provider: shared.config.name.clone(),
        reason,
    }
}

fn failure(shared: &Shared, e: &StoreError) -> IssueError {
    IssueError::Store {
        provider: shared.config.name.clone(),
        reason: e.to_string(),
    }
}
