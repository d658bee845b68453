//! [`ApiError`]: every way a request can fail, mapped to the status and JSON body of
//! SPEC.md (`{"error": code, "message": text}`). Messages come from typed errors that carry
//! no secrets; nothing here prints a token or a key.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokenbroker_core::issuer::IssueError;
use tokenbroker_core::slot::SlotError;

use crate::proxy::UnsafePath;

/// The header on every error the broker itself answers (its value is the error code), so
/// that a proxied client can tell it from the upstream's own answers.
pub const BROKER_ERROR: &str = "x-tokenbroker-error";

/// A failed API request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing client key: send Authorization: Bearer <client key>")]
    MissingKey,
    #[error("unknown client key")]
    UnknownKey,
    #[error("this client key may not use provider {0:?}")]
    Forbidden(String),
    #[error("this client key may not read the operators' view")]
    NotAdmin,
    #[error("no provider named {0:?}")]
    UnknownProvider(String),
    #[error("no such route")]
    NoRoute,
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("provider {0:?} has no upstream to proxy to")]
    NoUpstream(String),
    #[error(transparent)]
    UnsafePath(#[from] UnsafePath),
    #[error("the request body is over max_request_body ({0} bytes)")]
    BodyTooLarge(u64),
    /// A body an API route reads whole (`invalidate`'s) could not be read: too large, or cut off.
    #[error("cannot read the request body: {}", .0.body_text())]
    Body(#[from] BytesRejection),
    #[error("{0}: the upstream API did not answer in time")]
    UpstreamTimeout(String),
    #[error("{0}: the upstream API cannot be reached")]
    UpstreamUnreachable(String),
}

impl ApiError {
    /// The status and the stable error code.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MissingKey | Self::UnknownKey => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) | Self::NotAdmin => (StatusCode::FORBIDDEN, "forbidden"),
            Self::UnknownProvider(_) => (StatusCode::NOT_FOUND, "unknown_provider"),
            Self::NoRoute => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::UnsafePath(_) => (StatusCode::BAD_REQUEST, "unsafe_path"),
            Self::NoUpstream(_) => (StatusCode::NOT_FOUND, "no_upstream"),
            Self::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::Body(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
            }
            Self::Body(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Self::UpstreamUnreachable(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            Self::Slot(SlotError::WaitTimeout { .. }) => {
                (StatusCode::GATEWAY_TIMEOUT, "issuer_timeout")
            }
            Self::Slot(SlotError::Issuer { error, .. }) => match error {
                IssueError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "issuer_timeout"),
                IssueError::Store { .. } => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
                IssueError::NeedsCredentials { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "needs_credentials")
                }
                IssueError::BudgetExhausted { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "issuance_budget_exhausted")
                }
                IssueError::TokenCapReached { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "token_cap_reached")
                }
                IssueError::Unreachable { .. }
                | IssueError::Unavailable { .. }
                | IssueError::RateLimited { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "issuer_unavailable")
                }
                IssueError::BadCredentials { .. }
                | IssueError::Refused { .. }
                | IssueError::Malformed { .. }
                | IssueError::OAuth { .. }
                | IssueError::Setup { .. } => (StatusCode::BAD_GATEWAY, "issuer_error"),
            },
        }
    }

    /// The stable error code, also the `outcome` label of the request metrics.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    /// How long a client should wait before asking again, when the broker knows.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Slot(SlotError::Issuer { retry_after, .. }) => {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            Self::Slot(SlotError::WaitTimeout { .. }) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        let mut response = (status, Json(body)).into_response();
        // Tells a broker's own error from an answer the proxy passed through.
        response
            .headers_mut()
            .insert(BROKER_ERROR, HeaderValue::from_static(code));
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up, at least one: never "come back now".
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
