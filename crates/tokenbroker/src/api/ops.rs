//! Operational endpoints that need no key (`/healthz`, `/readyz`, `/metrics`), the JSON
//! 404 and 405 for unknown routes and methods, and the per-request tracing span.

use axum::Json;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;
use tokenbroker_core::slot::SlotState;

use super::{ApiError, AppState};

pub(super) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready when the config is loaded (it is, or this server would not run) and the store
/// answers.
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let providers: Vec<_> = state.broker.slots().map(|s| s.name().to_owned()).collect();
    // A provider that needs credentials is reported, but does not take the broker out of
    // service: the other providers still work.
    let needs_credentials: Vec<_> = state
        .broker
        .slots()
        .filter(|s| s.view().state == SlotState::NeedsCredentials)
        .map(|s| s.name().to_owned())
        .collect();
    match state.broker.store_reachable().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({
                "status": "ready",
                "providers": providers,
                "needs_credentials": needs_credentials,
            })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": e.to_string() })),
        ),
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.broker.render_metrics(),
    )
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NoRoute
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// One span per request, with the method and the path only: a query string could carry
/// anything, and headers carry keys. At debug level (`RUST_LOG=tokenbroker=debug`): an
/// enabled span costs about a microsecond per request, whether anything logs in it or not.
pub(super) fn request_span<B>(request: &Request<B>) -> tracing::Span {
    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
}
