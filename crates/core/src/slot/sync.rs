//! How a slot learns what other brokers sharing its store committed: the store's change
//! notifications where it has them (PostgreSQL's LISTEN/NOTIFY), and a periodic re-read
//! (`Persistence::sync_every`) as the safety net for news that never arrives.
//!
//! Either way the slot re-reads its provider's stored token and publishes it if it is newer
//! than the one it holds, or if it is the same generation retired by another broker (its
//! session was ended at that broker's shutdown): a token superseded elsewhere stops being
//! served here as soon as the news arrives. Issuance stays the driver's business.

use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use super::{Shared, SlotState};
use crate::store::Change;

/// The store's change notifications, as far as they concern one provider.
pub(super) struct Follower {
    /// `None` when the store tells nothing (or stopped telling).
    changes: Option<broadcast::Receiver<Change>>,
}

impl Follower {
    /// Subscribes to the store's changes, if it tells of any.
    pub(super) fn new(shared: &Shared) -> Self {
        Self {
            changes: shared.persistence.store.changes(),
        }
    }

    /// Resolves when the store says the provider's rows may have changed: a change of this
    /// provider, a change of anything, or news missed by lagging behind. Never resolves for
    /// a store without notifications. Cancel-safe, as `broadcast::Receiver::recv`.
    pub(super) async fn changed(&mut self, provider: &str) {
        loop {
            let Some(changes) = &mut self.changes else {
                return std::future::pending().await;
            };
            match changes.recv().await {
                Ok(Change::Provider(name)) if name != provider => {}
                Ok(Change::Provider(_) | Change::Everything) | Err(RecvError::Lagged(_)) => {
                    return;
                }
                Err(RecvError::Closed) => self.changes = None,
            }
        }
    }
}

/// With a store shared by several brokers: takes the token another broker stored, so that
/// this one stops serving the token it superseded, or the retired state of the current
/// generation, so that this one stops serving a token whose session was ended.
pub(super) async fn adopt_newer(shared: &Shared) {
    let provider = shared.config.name.as_str();
    let current = shared.view.borrow().token.clone();
    let generation = current.as_ref().map_or(0, |t| t.generation);
    let stored = match shared.persistence.store.load_token(provider).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(provider, error = %e, "cannot read the stored token");
            return;
        }
    };
    // A retired token is stored expired (`Store::retire_token`). The store keeps coarser
    // times than these (milliseconds), so an earlier expiry alone does not say it.
    let now = shared.clock.now();
    let retired = current.as_ref().is_some_and(|t| {
        stored.generation == t.generation && stored.expires_at <= now && t.expires_at > now
    });
    if stored.generation <= generation && !retired {
        return;
    }
    let Some(token) = super::restore(&shared.persistence, &shared.identity, provider, stored)
        .map(|restored| shared.take_up(restored))
    else {
        return;
    };
    if retired {
        tracing::info!(
            provider,
            generation,
            "another broker retired the current token"
        );
    } else {
        tracing::info!(
            provider,
            generation = token.generation,
            "using the token another broker stored"
        );
    }
    if !retired {
        super::drain::take_up(shared, &token).await;
    }
    let token = Arc::new(token);
    shared.view.send_modify(|v| {
        // A concurrent issuance of this broker may have published a newer one meanwhile.
        if v.token
            .as_ref()
            .is_some_and(|t| t.generation > token.generation)
        {
            return;
        }
        v.token = Some(token);
        v.state = SlotState::Ready;
        v.last_error = None;
        v.retry_at = None;
    });
}
