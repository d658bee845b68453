//! The emulated OAuth2 servers, and what they share.
//!
//! - [`pool`]: [`CappedPool`](pool::CappedPool), a Reltio-style `client_credentials` server
//!   with a cap on each client's live tokens.
//! - [`refresh`]: [`RotatingRefresh`](refresh::RotatingRefresh), a `refresh_token` server
//!   that rotates the refresh token on every use and revokes the family on a replay.
//!
//! Shared by both, here and in private submodules: decoding form bodies (`form`), client
//! authentication by `client_secret_basic` or `client_secret_post` (`client_auth`), the
//! RFC 6749 §5.2 error answers (`error`), the §5.1 success answer (`TokenAnswer`), reading
//! a token request up to its grant (`read_token_request`), the token endpoint's handler
//! (`token_endpoint`, around each server's `TokenEndpoint::decide`), and the protected API
//! each server offers to check the tokens it issued (`ping`, around `ProtectedApi::admit`).
//!
//! Tokens are opaque random strings; the servers compare them whole and never read them.

mod client_auth;
mod error;
mod form;
pub mod pool;
pub mod refresh;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::in_flight::InFlight;
pub(crate) use client_auth::ClientCredentials;
pub(crate) use error::OAuthError;
pub(crate) use form::Form;

/// The headers RFC 6749 §5.1 requires on every answer of a token endpoint, so that no cache
/// keeps a token.
const NO_STORE: [(HeaderName, &str); 2] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::PRAGMA, "no-cache"),
];

/// A short, stable fingerprint of a token: the first 12 hex digits of its SHA-256.
///
/// The admin endpoints list tokens by this rather than by the token itself, and tests compute
/// it to find a token they hold in such a list.
pub fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A new opaque token: `prefix` then 32 random bytes in base64url.
pub(crate) fn random_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A duration in whole seconds, rounded up, so that a wait or a lifetime announced in seconds
/// is never shorter than the real one.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The credentials of an `Authorization: <scheme> <credentials>` header, if it uses `scheme`
/// (compared without case, as RFC 9110 wants) and carries something.
pub(crate) fn authorization<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (presented, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    (presented.eq_ignore_ascii_case(scheme) && !credentials.is_empty()).then_some(credentials)
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    authorization(headers, "bearer")
}

/// Reads a token request up to its grant: a well-formed form body, from the accepted client,
/// asking for `grant_type`. The `Err` is the answer to give.
///
/// The content type is not checked, so a client that forgets it is not refused for that.
pub(crate) fn read_token_request(
    headers: &HeaderMap,
    body: &[u8],
    client: &ClientCredentials,
    grant_type: &str,
) -> Result<Form, OAuthError> {
    let form = Form::parse(body).map_err(|error| OAuthError::invalid_request(error.to_string()))?;
    client.authenticate(headers, &form)?;
    match form.get("grant_type") {
        Some(asked) if asked == grant_type => Ok(form),
        Some(asked) => Err(OAuthError::unsupported_grant_type(asked)),
        None => Err(OAuthError::invalid_request("missing grant_type")),
    }
}

/// A successful token answer (RFC 6749 §5.1), sent with `Cache-Control: no-store`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TokenAnswer {
    /// The new access token.
    access_token: String,
    /// Always `bearer`.
    token_type: &'static str,
    /// The access token's lifetime in whole seconds.
    expires_in: u64,
    /// The refresh token to use next, from servers that issue them.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// The scope granted, echoed when the request named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

impl TokenAnswer {
    /// An answer carrying `access_token`, which lives `lifetime` (whole seconds already).
    pub(crate) fn bearer(access_token: String, lifetime: Duration) -> Self {
        Self {
            access_token,
            token_type: "bearer",
            expires_in: lifetime.as_secs(),
            refresh_token: None,
            scope: None,
        }
    }

    /// Adds the refresh token the client must use next.
    pub(crate) fn with_refresh_token(mut self, refresh_token: String) -> Self {
        self.refresh_token = Some(refresh_token);
        self
    }

    /// Adds the granted scope, if any.
    pub(crate) fn with_scope(mut self, scope: Option<&str>) -> Self {
        self.scope = scope.map(str::to_owned);
        self
    }
}

impl IntoResponse for TokenAnswer {
    fn into_response(self) -> Response {
        (NO_STORE, Json(self)).into_response()
    }
}

/// When a token endpoint's latency passes, relative to its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Latency {
    /// Wait, then decide: a client that gives up while waiting has changed nothing.
    BeforeDeciding(Duration),
    /// Decide and act on it, then wait: a client that gives up while waiting has lost an
    /// answer the server already acted on.
    AfterDeciding(Duration),
}

/// A server's token endpoint, served by [`token_endpoint`].
pub(crate) trait TokenEndpoint: Send + Sync + 'static {
    /// Counts a token request and marks it in flight until the guard drops.
    fn begin(&self) -> InFlight<'_>;

    /// The configured latency, and when it passes.
    fn latency(&self) -> Latency;

    /// Decides a token request, acting on it (issuing, rotating, revoking) as it goes.
    fn decide(&self, headers: &HeaderMap, body: &[u8]) -> Result<TokenAnswer, OAuthError>;

    /// Counts a refusal in the counters that track its kind.
    fn count_refusal(&self, refusal: &OAuthError);
}

/// A token request: counted and in flight from arrival to answer (also when the client goes
/// away and the handler is cancelled), decided by the server, with its latency where the
/// server wants it.
pub(crate) async fn token_endpoint<S: TokenEndpoint>(
    State(server): State<Arc<S>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = server.begin();
    let latency = server.latency();
    if let Latency::BeforeDeciding(latency) = latency {
        crate::pause(latency).await;
    }
    let answer = server.decide(&headers, &body);
    match &answer {
        Ok(_) => tracing::info!("token issued"),
        Err(refusal) => {
            tracing::info!(?refusal, "token request refused");
            server.count_refusal(refusal);
        }
    }
    if let Latency::AfterDeciding(latency) = latency {
        crate::pause(latency).await;
    }
    answer.into_response()
}

/// A server whose `GET /api/ping` admits the access tokens it issued.
pub(crate) trait ProtectedApi: Send + Sync + 'static {
    /// Whether `token` is one of its live access tokens; counts the call as served or as
    /// unauthorized.
    fn admit(&self, token: Option<&str>) -> bool;
}

/// `GET /api/ping`: 200 `{"ok": true}` for a live bearer token, else 401 `invalid_token`.
pub(crate) async fn ping<S: ProtectedApi>(
    State(server): State<Arc<S>>,
    headers: HeaderMap,
) -> Result<Json<Value>, OAuthError> {
    if server.admit(bearer_token(&headers)) {
        Ok(Json(json!({ "ok": true })))
    } else {
        tracing::debug!("api call refused: no live bearer token");
        Err(OAuthError::invalid_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_authorization(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn bearer_is_accepted_in_any_case_and_other_schemes_are_not() {
        assert_eq!(bearer_token(&with_authorization("bearer abc")), Some("abc"));
        assert_eq!(
            bearer_token(&with_authorization("Bearer  abc ")),
            Some("abc")
        );
        assert_eq!(bearer_token(&with_authorization("Basic abc")), None);
        assert_eq!(bearer_token(&with_authorization("Bearer ")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn fingerprints_are_short_stable_and_differ() {
        let first = fingerprint("at-one");
        assert_eq!(first.len(), 12);
        assert_eq!(first, fingerprint("at-one"));
        assert_ne!(first, fingerprint("at-two"));
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
    }

    #[test]
    fn random_tokens_carry_the_prefix_and_differ() {
        let (a, b) = (random_token("at-"), random_token("at-"));
        assert!(a.starts_with("at-"), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2_001)), 3);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }

    #[test]
    fn token_answers_leave_out_what_they_do_not_carry() {
        let plain = serde_json::to_value(TokenAnswer::bearer(
            "at".to_owned(),
            Duration::from_secs(60),
        ))
        .expect("serializes");
        assert_eq!(
            plain,
            json!({"access_token": "at", "token_type": "bearer", "expires_in": 60})
        );
        let full = TokenAnswer::bearer("at".to_owned(), Duration::from_secs(1))
            .with_refresh_token("rt".to_owned())
            .with_scope(Some("read"));
        let full = serde_json::to_value(full).expect("serializes");
        assert_eq!(full["refresh_token"], "rt");
        assert_eq!(full["scope"], "read");
    }
}
