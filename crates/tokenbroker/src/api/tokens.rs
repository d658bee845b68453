//! `GET /v1/tokens/{provider}` and `POST /v1/tokens/{provider}/invalidate`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokenbroker_core::config::ProviderConfig;
use tokenbroker_core::metrics::{Metrics, OutcomeLabels};
use tokenbroker_core::slot::Rejected;
use tokenbroker_core::token::Token;

use super::auth::Caller;
use super::{ApiError, AppState};

/// The JSON answer of a token request (SPEC.md). Also what `tokenbroker token` reads.
/// Its `Debug` leaves the token out.
#[derive(Serialize, Deserialize)]
pub struct TokenBody {
    /// The provider asked for.
    pub provider: String,
    /// The token.
    pub access_token: String,
    /// The prefix's scheme (`Bearer`), or `raw` when the token is sent without one.
    pub token_type: String,
    /// RFC 3339, whole seconds.
    pub expires_at: String,
    /// Whole seconds left.
    pub expires_in: u64,
    /// RFC 3339, rounded down: the broker will not replace the token before then unless the
    /// issuer rejects it.
    pub refresh_at: String,
    /// Which issuance this token came from; report it to `invalidate` on a 401.
    pub generation: u64,
    /// The header the upstream API wants, and its full value.
    pub header_name: String,
    pub header_value: String,
}

impl std::fmt::Debug for TokenBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBody")
            .field("provider", &self.provider)
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .field("refresh_at", &self.refresh_at)
            .finish_non_exhaustive()
    }
}

impl TokenBody {
    /// The answer for `token` of the provider `config` describes, at `now`.
    pub(crate) fn new(config: &ProviderConfig, token: &Token, now: SystemTime) -> Self {
        let scheme = config.prefix.trim();
        Self {
            provider: config.name.clone(),
            access_token: token.expose().to_owned(),
            token_type: if scheme.is_empty() { "raw" } else { scheme }.to_owned(),
            expires_at: humantime::format_rfc3339_seconds(token.expires_at).to_string(),
            expires_in: token.remaining(now).as_secs(),
            refresh_at: humantime::format_rfc3339_seconds(token.refresh_at).to_string(),
            generation: token.generation,
            header_name: config.header.clone(),
            header_value: format!("{}{}", config.prefix, token.expose()),
        }
    }
}

/// The body of an invalidation: exactly one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateRequest {
    generation: Option<u64>,
    access_token: Option<String>,
}

/// The provider of a `GET /v1/tokens/{provider}` path that needs no decoding, for the
/// server to answer without the router ([`serve`]); any other path goes through it.
pub(crate) fn provider_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/tokens/")
        .filter(|provider| !provider.is_empty() && !provider.contains(['/', '%']))
}

/// `GET /v1/tokens/{provider}` as the router takes it, with a provider name it decoded.
pub(super) async fn get_token(
    State(state): State<AppState>,
    provider: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(provider) =
        provider.map_err(|_| ApiError::BadRequest("bad provider name in the path".to_owned()))?;
    serve(&state, &headers, &provider).await
}

/// The token of `provider` for the caller whose key is in `headers`.
pub(crate) async fn serve(
    state: &AppState,
    headers: &HeaderMap,
    provider: &str,
) -> Result<Response, ApiError> {
    let caller = Caller::from_headers(headers, state)?;
    let slot = caller.slot(state, provider)?;
    let result = slot.get().await;
    count(
        state,
        provider,
        result
            .as_ref()
            .map(|_| ())
            .map_err(|e| ApiError::from(e.clone())),
    );
    let token = result?;
    Ok(answer(
        state,
        slot.config(),
        &token,
        wants_plain_text(headers),
    ))
}

pub(super) async fn invalidate(
    State(state): State<AppState>,
    caller: Caller,
    provider: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(provider) =
        provider.map_err(|_| ApiError::BadRequest("bad provider name in the path".to_owned()))?;
    let slot = caller.slot(&state, &provider)?;
    let body = body?;
    // serde's own message would quote the offending value, which may be a token.
    let request: InvalidateRequest = serde_json::from_slice(&body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "unexpected fields or types",
            _ => "not valid JSON",
        };
        ApiError::BadRequest(format!(
            "expected {{\"generation\": N}} or {{\"access_token\": \"...\"}}: {what} \
             (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let rejected = match (&request.generation, &request.access_token) {
        (Some(g), None) => Rejected::Generation(*g),
        (None, Some(t)) => Rejected::AccessToken(t),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of \"generation\" and \"access_token\"".to_owned(),
            ));
        }
    };
    let (token, _honoured) = slot.invalidate(rejected).await?;
    Ok(answer(
        &state,
        slot.config(),
        &token,
        wants_plain_text(&headers),
    ))
}

const JSON: &str = "application/json";
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// The token as JSON, or bare with `Accept: text/plain`.
fn answer(state: &AppState, config: &ProviderConfig, token: &Arc<Token>, plain: bool) -> Response {
    let now = SystemTime::now();
    let mut response = match (state.rendered.get(config, token), plain) {
        (Some(rendered), true) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(PLAIN_TEXT))],
            rendered.plain.clone(),
        )
            .into_response(),
        (Some(rendered), false) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
            rendered.json(now),
        )
            .into_response(),
        (None, true) => token.expose().to_owned().into_response(),
        (None, false) => Json(TokenBody::new(config, token, now)).into_response(),
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whether the client prefers `text/plain` (its first listed media type): then it gets
/// the token bare.
fn wants_plain_text(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| {
            first
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("text/plain")
        })
}

fn count(state: &AppState, provider: &str, outcome: Result<(), ApiError>) {
    match outcome {
        Ok(()) => state.served.count(provider),
        Err(e) => {
            state
                .broker
                .metrics()
                .token_requests
                .get_or_create(&OutcomeLabels {
                    provider: provider.to_owned(),
                    outcome: e.code(),
                })
                .inc();
        }
    }
}

const SERVED: &str = "served";

/// Each provider's count of tokens served (`token_requests{outcome="served"}`), taken
/// from the metric family once: through the family, counting cost an allocated label and
/// a hash on every token request (about 600 instructions, 3% of one).
pub struct ServedCounters(BTreeMap<String, Counter>);

impl ServedCounters {
    /// The counters of `providers` in `metrics`.
    pub fn new<'a>(metrics: &Metrics, providers: impl Iterator<Item = &'a str>) -> Self {
        Self(
            providers
                .map(|provider| {
                    let labels = OutcomeLabels {
                        provider: provider.to_owned(),
                        outcome: SERVED,
                    };
                    let counter = metrics.token_requests.get_or_create(&labels).clone();
                    (provider.to_owned(), counter)
                })
                .collect(),
        )
    }

    /// One more token of `provider` served (a provider the broker serves, so one of these).
    fn count(&self, provider: &str) {
        if let Some(served) = self.0.get(provider) {
            served.inc();
        }
    }
}
