//! The Control Room's error answers: one type that picks the status and the
//! `{"message": "..."}` body, so every handler fails in the same shape.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Every way a Control Room request can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ApiError {
    /// The body is not the JSON the endpoint expects; says what was wrong.
    BadRequest(&'static str),
    /// A login with a wrong or missing username or API key.
    BadCredentials,
    /// A missing, superseded, kicked, logged-out or expired token.
    Unauthorized,
    /// No such work item.
    NotFound,
    /// The emulated outage is on.
    Unavailable,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            Self::BadCredentials => (StatusCode::UNAUTHORIZED, "Invalid credentials"),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Authentication token is missing, invalid or expired",
            ),
            Self::NotFound => (StatusCode::NOT_FOUND, "Work item not found"),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Control Room is temporarily unavailable",
            ),
        };
        (status, Json(json!({ "message": message }))).into_response()
    }
}
