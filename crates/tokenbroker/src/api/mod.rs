//! The broker's HTTP API (SPEC "HTTP API"): which handler answers a request, the state
//! handlers share, and the span every request gets.
//!
//! [`Endpoint::handle`] answers the two paths every consumer request takes, a token
//! (`GET /v1/tokens/{provider}`) and the proxy (`/v1/proxy/…`), itself, and hands every other
//! request to the axum [`router`]: a route lookup, its extractors and the body conversion
//! cost more than all our own work on a cached token answer (profiled: BENCHMARKS.md).
//!
//! Handlers stay thin: they authenticate the caller ([`auth`]), ask the core's slot for a
//! token and shape the answer ([`tokens`]); every failure is an [`ApiError`], which picks
//! the status and the JSON body in one place.

mod auth;
mod error;
mod ops;
mod providers;
mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokenbroker_core::Broker;
use tokenbroker_core::access::Access;
use tower::ServiceExt;
use tracing::Instrument;

use crate::proxy::Upstreams;
use crate::rendered::RenderCache;

pub(crate) use auth::Caller;
pub use error::{ApiError, BROKER_ERROR};
pub use providers::{LastError, ProviderStatus};
pub use tokens::{ServedCounters, TokenBody};

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
    /// Each provider's count of tokens served.
    pub served: Arc<ServedCounters>,
    /// `http` or `https`: what this listener speaks, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

impl AppState {
    /// The same state for another of the server's workers: the proxy's upstream pools are
    /// its own, everything else is shared.
    pub fn for_worker(&self) -> Self {
        Self {
            upstreams: Arc::new(self.upstreams.for_worker()),
            ..self.clone()
        }
    }
}

/// The client at the other end of a connection, as much of it as requests need.
pub struct Peer {
    /// Its IP address as `X-Forwarded-For` names it.
    forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            forwarded_for: crate::proxy::forwarded_for(address),
        }
    }
}

/// What answers the requests of one server worker's connections.
#[derive(Clone)]
pub struct Endpoint {
    state: AppState,
    router: Router,
}

impl Endpoint {
    pub fn new(state: AppState) -> Self {
        let router = router(state.clone());
        Self { state, router }
    }

    /// The answer to `request` from `client`.
    pub async fn handle<B>(&self, client: &Peer, request: Request<B>) -> Response
    where
        B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let span = ops::request_span(&request);
        let path = request.uri().path();
        if crate::proxy::provider_of(path).is_some() {
            crate::proxy::forward(&self.state, &client.forwarded_for, request.map(Body::new))
                .instrument(span)
                .await
                .into_response()
        } else if request.method() == Method::GET
            && let Some(provider) = tokens::provider_of(path)
        {
            tokens::serve(&self.state, request.headers(), provider)
                .instrument(span)
                .await
                .into_response()
        } else {
            let router = self.router.clone();
            match router
                .oneshot(request.map(Body::new))
                .instrument(span)
                .await
            {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    }
}

/// The routes of every request that [`Endpoint::handle`] does not answer itself.
fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/tokens/{provider}", get(tokens::get_token))
        .route("/v1/tokens/{provider}/invalidate", post(tokens::invalidate))
        .route("/v1/providers", get(providers::list))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .with_state(state)
}
