//! The OAuth2 error answers: RFC 6749 §5.2's `{"error", "error_description"}` body with its
//! status, and the headers that go with it (`Retry-After`, `WWW-Authenticate`, no-store), so
//! that every endpoint of both servers fails in the same shape.

use std::borrow::Cow;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::NO_STORE;

/// One error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthError {
    /// The HTTP status.
    status: StatusCode,
    /// The `error` code, such as `invalid_client`.
    code: &'static str,
    /// The `error_description`, for the humans reading a client's log.
    description: Cow<'static, str>,
    /// Whole seconds for a `Retry-After` header, when the client should wait.
    retry_after: Option<u64>,
    /// The `WWW-Authenticate` challenge that RFC 6749 §5.2 and RFC 6750 §3 require with
    /// a 401.
    challenge: Option<&'static str>,
}

impl OAuthError {
    /// Any status with any code: the answers a test forces on the token endpoint.
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
            challenge: None,
        }
    }

    /// 400 `invalid_request`: a malformed request, said how.
    pub(crate) fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 401 `invalid_client`, with a Basic challenge: the client failed to authenticate.
    pub(crate) fn invalid_client(description: &'static str) -> Self {
        Self {
            challenge: Some(r#"Basic realm="tokenbroker-emulator""#),
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
        }
    }

    /// 400 `invalid_grant`: the refresh token is unknown, revoked or replayed.
    pub(crate) fn invalid_grant(description: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// 400 `unsupported_grant_type`, naming the grant asked for.
    pub(crate) fn unsupported_grant_type(asked: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant type {asked} is not supported here"),
        )
    }

    /// 503 `temporarily_unavailable`: the emulated outage.
    pub(crate) fn outage() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the token endpoint is down",
        )
    }

    /// 429 `temporarily_unavailable` with `Retry-After`: the client holds all the live tokens
    /// it may.
    pub(crate) fn too_many_tokens(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "the client holds the maximum number of active tokens",
            )
        }
    }

    /// 429 `slow_down` with `Retry-After`: the client asks too often.
    pub(crate) fn slow_down(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "slow_down",
                "too many token requests",
            )
        }
    }

    /// 401 `invalid_token`, with a Bearer challenge (RFC 6750 §3.1): a protected API call
    /// without a live access token.
    pub(crate) fn invalid_token() -> Self {
        Self {
            challenge: Some(r#"Bearer error="invalid_token""#),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the access token is missing, unknown, revoked or expired",
            )
        }
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The `error` code.
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "error_description": self.description });
        let mut response = (self.status, NO_STORE, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, seconds.into());
        }
        if let Some(challenge) = self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_their_headers() {
        let response = OAuthError::slow_down(2).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert!(!headers.contains_key(header::WWW_AUTHENTICATE));

        let response = OAuthError::invalid_client("no").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = &response.headers()[header::WWW_AUTHENTICATE];
        assert!(challenge.as_bytes().starts_with(b"Basic "), "{challenge:?}");
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
    }
}
