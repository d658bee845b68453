//! The broker's HTTP API (SPEC "HTTP API"): routes, the state handlers share, and the
//! middleware that gives every request a span.
//!
//! Handlers stay thin: they authenticate the caller ([`auth`]), ask the core's slot for a
//! token and shape the answer ([`tokens`]); every failure is an [`ApiError`], which picks
//! the status and the JSON body in one place.

mod auth;
mod error;
mod ops;
mod providers;
mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokenbroker_core::Broker;
use tokenbroker_core::access::Access;
use tower_http::trace::TraceLayer;

use crate::proxy::Upstreams;
use crate::rendered::RenderCache;

pub(crate) use auth::Caller;
pub use error::{ApiError, BROKER_ERROR};
pub use providers::{LastError, ProviderStatus};
pub use tokens::TokenBody;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The providers' slots.
    pub broker: Arc<Broker>,
    /// The configured clients, to authenticate keys.
    pub access: Arc<Access>,
    /// The proxy's pooled clients, one per provider with an upstream.
    pub upstreams: Arc<Upstreams>,
    /// Each provider's current token as the broker sends it.
    pub rendered: Arc<RenderCache>,
    /// `http` or `https`: what this listener speaks, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

/// The API's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/tokens/{provider}", get(tokens::get_token))
        .route("/v1/tokens/{provider}/invalidate", post(tokens::invalidate))
        .route("/v1/providers", get(providers::list))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        // `/v1/proxy/{provider}/{path}`, and the 404 of every other unknown path.
        .fallback(crate::proxy::forward)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(TraceLayer::new_for_http().make_span_with(ops::request_span))
        .with_state(state)
}
