//! The `/v1/authentication` endpoints: login, refresh, validate and logout, and reading the
//! token a request presents.
//!
//! Login and refresh share the issuance path: each one is counted as in flight from entry
//! to exit, waits while issuances are held and then the configured latency, then answers
//! 503 during an outage. Deciding whether
//! a token is current is `state`'s job.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::state::Shared;

/// The login body. Every field is optional so that a missing one is a 401, as in Control
/// Room, rather than a 400.
#[derive(Deserialize)]
struct LoginRequest {
    username: Option<String>,
    #[serde(rename = "apiKey")]
    api_key: Option<String>,
    /// Accepted in place of `apiKey`, as Control Room does for password users.
    password: Option<String>,
}

/// The refresh body.
#[derive(Deserialize)]
struct RefreshRequest {
    token: String,
}

/// The validate query.
#[derive(Deserialize)]
pub(super) struct ValidateQuery {
    token: Option<String>,
}

/// `POST /v1/authentication`.
pub(super) async fn login(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    shared.record_login_attempt();
    let _in_flight = shared.issuance_in_flight();
    shared.released().await;
    crate::pause(shared.login_latency()).await;
    if shared.is_down() {
        tracing::info!("login refused: outage");
        return Err(ApiError::Unavailable);
    }
    // Parsed by hand rather than with `Json` so that a malformed login still counts as an
    // attempt and answers in the API's error shape.
    let request: LoginRequest = serde_json::from_slice(&body)
        .map_err(|_| ApiError::BadRequest("Request body is not a valid login request"))?;
    let api_key = request.api_key.or(request.password);
    let (Some(username), Some(api_key)) = (request.username, api_key) else {
        shared.count_bad_credentials();
        tracing::info!("login refused: missing credentials");
        return Err(ApiError::BadCredentials);
    };
    if !shared.accepts(&username, &api_key) {
        shared.count_bad_credentials();
        tracing::info!(username, "login refused: wrong credentials");
        return Err(ApiError::BadCredentials);
    }
    let token = shared.login(&username);
    tracing::info!(username, "login");
    Ok(Json(
        json!({ "token": token, "user": { "username": username } }),
    ))
}

/// `POST /v1/authentication/token`: a new token for a current one.
pub(super) async fn refresh(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let _in_flight = shared.issuance_in_flight();
    shared.released().await;
    crate::pause(shared.login_latency()).await;
    if shared.is_down() {
        tracing::info!("refresh refused: outage");
        return Err(ApiError::Unavailable);
    }
    let request: RefreshRequest = serde_json::from_slice(&body)
        .map_err(|_| ApiError::BadRequest("Request body is not a valid refresh request"))?;
    match shared.refresh(&request.token) {
        Ok((username, token)) => {
            tracing::info!(username, "refresh");
            Ok(Json(json!({ "token": token })))
        }
        Err(refusal) => {
            tracing::info!(?refusal, "refresh refused");
            Err(ApiError::Unauthorized)
        }
    }
}

/// `GET /v1/authentication/token?token=`: whether a token is current. Counts nothing.
pub(super) async fn validate(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ValidateQuery>,
) -> Json<Value> {
    let valid = query
        .token
        .as_deref()
        .is_some_and(|token| shared.is_valid(token));
    Json(json!({ "valid": valid }))
}

/// `POST /v1/authentication/logout`: ends the session of the presented token.
pub(super) async fn logout(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    match shared.logout(presented_token(&headers)) {
        Ok(username) => {
            tracing::info!(username, "logout");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(refusal) => {
            tracing::info!(?refusal, "logout refused");
            Err(ApiError::Unauthorized)
        }
    }
}

/// The token a request presents: `X-Authorization: <jwt>` as Control Room wants, or else
/// `Authorization: Bearer <jwt>`, since a broker may be configured either way.
pub(super) fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("x-authorization") {
        return value.to_str().ok().map(str::trim).filter(|t| !t.is_empty());
    }
    crate::oauth2::bearer_token(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn x_authorization_wins_over_bearer() {
        let h = headers(&[
            ("x-authorization", "a.b.c"),
            ("authorization", "Bearer d.e.f"),
        ]);
        assert_eq!(presented_token(&h), Some("a.b.c"));
    }

    #[test]
    fn bearer_is_accepted_in_any_case() {
        let h = headers(&[("authorization", "bearer d.e.f")]);
        assert_eq!(presented_token(&h), Some("d.e.f"));
    }

    #[test]
    fn other_schemes_and_empty_values_present_nothing() {
        assert_eq!(
            presented_token(&headers(&[("authorization", "Basic xyz")])),
            None
        );
        assert_eq!(
            presented_token(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(presented_token(&headers(&[("x-authorization", " ")])), None);
        assert_eq!(presented_token(&HeaderMap::new()), None);
    }
}
