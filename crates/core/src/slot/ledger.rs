//! The issuance ledger's two limits, checked before every issuance request:
//! `max_issuances` (at most N requests in any sliding window) and `max_active_tokens` (at
//! most N unexpired tokens out). Both count from the store, so they hold across restarts;
//! a request whose outcome is unknown (a crash mid-issuance) counts as a live token. Before
//! them, the issuer's own hold: a 429's `Retry-After`, kept in the store ([`hold`]) so that
//! no broker sharing it asks before the issuer said it may.

use std::time::{Duration, SystemTime};

use super::Shared;
use crate::issuer::IssueError;
use crate::store::IssuanceRecord;
use crate::token::Token;

/// After an answer of the issuer's: if it asked to be left alone for a while (a 429's
/// `Retry-After`), every broker sharing the store is told to.
pub(super) async fn hold(shared: &Shared, answer: &Result<crate::issuer::Issued, IssueError>) {
    let Err(IssueError::RateLimited {
        retry_after: Some(wait),
        ..
    }) = answer
    else {
        return;
    };
    let provider = shared.config.name.as_str();
    if let Err(e) = shared.persistence.store.hold_off(provider, *wait).await {
        tracing::warn!(provider, error = %e, "cannot tell the other brokers to hold off the issuer");
    }
}

/// How long a token whose issuance outcome is unknown is assumed to live, when there is no
/// token to take the provider's lifetime from.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);

/// How much later than recorded here an issuer may see a request arrive.
const ARRIVAL_MARGIN: Duration = Duration::from_millis(250);

/// Whether one more issuance request is allowed now; if not, the error says until when.
pub(super) async fn admit(shared: &Shared, current: Option<&Token>) -> Result<(), IssueError> {
    let config = &shared.config;
    let provider = config.name.as_str();
    // The issuer's own word first: it asked the whole cluster (one client to it) to wait.
    let held = shared.persistence.store.held_off_for(provider).await;
    if let Ok(Some(wait)) = held {
        return Err(IssueError::RateLimited {
            provider: provider.to_owned(),
            retry_after: Some(wait),
        });
    }
    if config.max_issuances.is_none() && config.max_active_tokens.is_none() {
        return Ok(());
    }
    let now = shared.clock.now();
    // The issuer counts requests when they arrive, a little after they were recorded here:
    // the window is held a little longer so that its count never exceeds the budget.
    let window = config
        .max_issuances
        .map_or(Duration::ZERO, |b| b.period + ARRIVAL_MARGIN);
    let since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let records = shared
        .persistence
        .store
        .issuances(provider, since)
        .await
        .map_err(|e| IssueError::Store {
            provider: provider.to_owned(),
            reason: e.to_string(),
        })?;

    if let Some(budget) = config.max_issuances {
        let in_window: Vec<SystemTime> = records
            .iter()
            .map(|r| r.requested_at)
            .filter(|at| *at > since)
            .collect();
        let allowed = budget.count as usize;
        if in_window.len() >= allowed {
            // The window frees a place when the request `allowed` places back leaves it.
            let frees_at = in_window[in_window.len() - allowed] + window;
            return Err(IssueError::BudgetExhausted {
                provider: provider.to_owned(),
                retry_after: wait_until(frees_at, now),
            });
        }
    }

    if let Some(cap) = config.max_active_tokens {
        let mut live = live_until(&records, current, now);
        live.sort();
        let cap = cap as usize;
        if live.len() >= cap {
            return Err(IssueError::TokenCapReached {
                provider: provider.to_owned(),
                retry_after: wait_until(live[live.len() - cap], now),
            });
        }
    }
    Ok(())
}

/// How many tokens the issuer has handed out for the provider that are still live, by the
/// ledger: so across restarts and brokers sharing the store (SPEC: "live tokens of a pool").
pub(super) async fn live_tokens(
    shared: &Shared,
    current: Option<&Token>,
) -> Result<u64, IssueError> {
    let now = shared.clock.now();
    let records = shared
        .persistence
        .store
        .issuances(&shared.config.name, now)
        .await
        .map_err(|e| IssueError::Store {
            provider: shared.config.name.clone(),
            reason: e.to_string(),
        })?;
    Ok(live_until(&records, current, now).len() as u64)
}

/// When each token the ledger counts as live at `now` runs out: a recorded expiry still
/// ahead, or, for a request whose outcome is unknown, the current token's lifetime after it.
fn live_until(
    records: &[IssuanceRecord],
    current: Option<&Token>,
    now: SystemTime,
) -> Vec<SystemTime> {
    let assumed = current
        .and_then(|t| t.expires_at.duration_since(t.issued_at).ok())
        .unwrap_or(ASSUMED_LIFETIME);
    records
        .iter()
        .map(|r| r.expires_at.unwrap_or(r.requested_at + assumed))
        .filter(|expires| *expires > now)
        .collect()
}

fn wait_until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now)
        .unwrap_or_default()
        .max(Duration::from_millis(1))
}
