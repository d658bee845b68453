//! `GET /v1/providers`: the operators' view of every provider, for admin clients.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tokenbroker_core::slot::Slot;

use super::auth::Caller;
use super::{ApiError, AppState};

/// One provider's state as operators see it. Holds no secret.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProviderStatus {
    /// `ready`, `issuing` or `backing_off`.
    pub state: String,
    /// The current token's generation (0 before the first issuance).
    pub generation: u64,
    /// The current token's expiry (RFC 3339).
    pub expires_at: Option<String>,
    /// When the current token will be replaced (RFC 3339).
    pub refresh_at: Option<String>,
    /// When the current token was issued.
    pub last_issued_at: Option<String>,
    /// The most recent failure, kept after later successes.
    pub last_error: Option<LastError>,
    /// Tokens obtained since this broker started.
    pub issuances: u64,
    /// The provider's tokens still live at the issuer: a single-session provider's current
    /// one, else every unexpired one in the issuance ledger (a pool's, across restarts).
    pub live_tokens: u64,
}

/// A failure and when it happened.
#[derive(Debug, Serialize, Deserialize)]
pub struct LastError {
    /// When (RFC 3339).
    pub at: String,
    /// What went wrong; names the provider and the step, never a secret.
    pub message: String,
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl ProviderStatus {
    async fn of(slot: &Slot) -> Self {
        let live_tokens = slot.live_tokens().await;
        let view = slot.view();
        let token = view.token.as_ref();
        Self {
            state: view.state.as_str().to_owned(),
            generation: token.map_or(0, |t| t.generation),
            expires_at: token.map(|t| rfc3339(t.expires_at)),
            refresh_at: token.map(|t| rfc3339(t.refresh_at)),
            last_issued_at: token.map(|t| rfc3339(t.issued_at)),
            last_error: view.last_failure.map(|(at, message)| LastError {
                at: rfc3339(at),
                message,
            }),
            issuances: view.issuances,
            live_tokens,
        }
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<BTreeMap<String, ProviderStatus>>, ApiError> {
    if !caller.0.admin {
        return Err(ApiError::NotAdmin);
    }
    let mut view = BTreeMap::new();
    for slot in state.broker.slots() {
        view.insert(slot.name().to_owned(), ProviderStatus::of(slot).await);
    }
    Ok(Json(view))
}
