//! The capped pool's endpoints: the token endpoint's decision, and the Reltio-like
//! `multitokens` and `revoketokens` admin pair. The token endpoint's handler and the protected
//! API are the shared `oauth2::token_endpoint` and `oauth2::ping`.
//!
//! A token request waits its latency first, then asks in turn the knobs, the request itself
//! (form, client, grant) and the cap; the first refusal is the answer, and is counted by kind.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::state::Shared;
use crate::in_flight::InFlight;
use crate::oauth2::{Form, Latency, OAuthError, TokenAnswer, TokenEndpoint, read_token_request};

impl TokenEndpoint for Shared {
    fn begin(&self) -> InFlight<'_> {
        self.begin_token_request()
    }

    fn latency(&self) -> Latency {
        Latency::BeforeDeciding(self.issue_latency())
    }

    fn decide(&self, headers: &HeaderMap, body: &[u8]) -> Result<TokenAnswer, OAuthError> {
        if let Some(refusal) = self.knob_refusal() {
            return Err(refusal);
        }
        // `audience` and any other parameter are accepted and ignored, as a single-audience
        // server would.
        let form = read_token_request(headers, body, self.client(), "client_credentials")?;
        let token = self.issue()?;
        Ok(TokenAnswer::bearer(token, self.token_lifetime()).with_scope(form.get("scope")))
    }

    fn count_refusal(&self, refusal: &OAuthError) {
        self.record_refusal(refusal);
    }
}

/// `GET /oauth/multitokens`: the client's live tokens, by fingerprint, oldest first.
pub(super) async fn multitokens(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Value>, OAuthError> {
    authenticate(&shared, &headers, &Form::default())?;
    let listed: Vec<Value> = shared
        .live_tokens()
        .into_iter()
        .map(|(fingerprint, expires_in)| {
            json!({ "fingerprint": fingerprint, "expires_in": expires_in })
        })
        .collect();
    Ok(Json(Value::Array(listed)))
}

/// `POST /oauth/revoketokens`: revokes the token in the form's `token`, or every token of
/// the client without one. An unknown token revokes nothing and is no error (as RFC 7009
/// §2.2 has it).
pub(super) async fn revoke_tokens(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, OAuthError> {
    let form =
        Form::parse(&body).map_err(|error| OAuthError::invalid_request(error.to_string()))?;
    authenticate(&shared, &headers, &form)?;
    let revoked = shared.revoke(form.get("token"));
    tracing::info!(revoked, all = form.get("token").is_none(), "tokens revoked");
    Ok(Json(json!({ "revoked": revoked })))
}

/// Authenticates an admin call as the client, counting a refusal.
fn authenticate(shared: &Shared, headers: &HeaderMap, form: &Form) -> Result<(), OAuthError> {
    shared
        .client()
        .authenticate(headers, form)
        .inspect_err(|refusal| {
            tracing::info!(?refusal, "admin call refused");
            shared.record_refusal(refusal);
        })
}
