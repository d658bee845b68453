//! `ANY /v1/proxy/{provider}/{path}`: the reverse proxy that injects the provider's token,
//! so a consumer with a static client key never touches a token (SPEC "HTTP API").
//!
//! The request goes to `upstream/{path}?{query}` ([`target`]) with the client's key removed
//! and the token in the provider's header ([`headers`]); bodies stream both ways. An
//! upstream answer whose status is in `retry_statuses` (401 by default) invalidates the
//! generation used and is retried once with the new token, if the request body was small
//! enough to keep (`retry_body_limit`). Every request holds its token "in use" until the
//! response body has been sent, so a single-session rotation can wait for it (the drain of
//! SPEC guarantee 2).

mod headers;
mod target;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::HttpBody;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Version, header};
use axum::response::Response;
use futures_util::{StreamExt, TryStreamExt};
use tokenbroker_core::config::ProviderConfig;
use tokenbroker_core::slot::Rejected;
use tokenbroker_core::token::Token;

use crate::api::{ApiError, AppState, Caller};
pub use target::UnsafePath;

/// The header of a pass-through answer that was not retried, saying why.
const NO_RETRY: &str = "x-tokenbroker-no-retry";

/// One pooled HTTP client per provider with an upstream.
#[derive(Debug, Default)]
pub struct Upstreams {
    clients: BTreeMap<String, reqwest::Client>,
}

impl Upstreams {
    /// Clients for every provider of `providers` that has an `upstream`: the system's
    /// trusted roots and the bundled Mozilla ones, plus the provider's `upstream_ca`.
    pub fn new<'a>(
        providers: impl Iterator<Item = &'a ProviderConfig>,
    ) -> Result<Self, UpstreamError> {
        let mut clients = BTreeMap::new();
        for provider in providers.filter(|p| p.upstream.is_some()) {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(provider.proxy.upstream_timeout)
                .read_timeout(provider.proxy.upstream_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(90));
            if let Some(path) = &provider.proxy.upstream_ca {
                let ca_error = |reason: String| UpstreamError::Ca {
                    provider: provider.name.clone(),
                    path: path.display().to_string(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| ca_error(e.kind().to_string()))?;
                let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| ca_error(e.to_string()))?;
                for certificate in certificates {
                    builder = builder.add_root_certificate(certificate);
                }
            }
            let client = builder.build().map_err(|e| UpstreamError::Client {
                provider: provider.name.clone(),
                reason: e.to_string(),
            })?;
            clients.insert(provider.name.clone(), client);
        }
        Ok(Self { clients })
    }
}

/// Why the proxy's client of an upstream could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{provider}: cannot read upstream_ca {path}: {reason}")]
    Ca {
        provider: String,
        path: String,
        reason: String,
    },
    #[error("{provider}: cannot set up the upstream client: {reason}")]
    Client { provider: String, reason: String },
}

/// The proxy handler.
pub(crate) async fn forward(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    // An absolute-form request target ("GET http://host/...") is a forward-proxy request;
    // this is a reverse proxy.
    // (HTTP/2 requests always carry a scheme and an authority: that is not the same.)
    let http1 = matches!(parts.version, Version::HTTP_10 | Version::HTTP_11);
    if http1 && (parts.uri.scheme().is_some() || parts.uri.authority().is_some()) {
        return Err(ApiError::UnsafePath(UnsafePath::Absolute));
    }
    let (provider, rest) = target::split(parts.uri.path()).ok_or(ApiError::NoRoute)?;
    let slot = caller.slot(&state, provider)?;
    let config = slot.config();
    let base = config
        .upstream
        .as_ref()
        .ok_or_else(|| ApiError::NoUpstream(provider.to_owned()))?;
    let client = state
        .upstreams
        .clients
        .get(provider)
        .ok_or_else(|| ApiError::NoUpstream(provider.to_owned()))?;
    let url = target::upstream_url(base, rest, parts.uri.query()).map_err(ApiError::UnsafePath)?;
    let token_header = HeaderName::from_bytes(config.header.as_bytes())
        .map_err(|_| ApiError::NoUpstream(provider.to_owned()))?;

    // A body small enough to keep can be replayed after a rejection; a larger one streams.
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Known to be empty (no body at all), else of unknown length unless announced.
    let empty = HttpBody::is_end_stream(&body) || HttpBody::size_hint(&body).exact() == Some(0);
    if length.is_some_and(|l| l > config.proxy.max_request_body) {
        return Err(ApiError::BodyTooLarge(config.proxy.max_request_body));
    }
    let (kept, mut streaming) = match length {
        Some(l) if l <= config.proxy.retry_body_limit => (Some(read_body(body, l).await?), None),
        None if empty => (Some(Bytes::new()), None),
        _ => (None, Some(limited(body, config.proxy.max_request_body))),
    };

    let mut token = slot.get().await?;
    for attempt in 0..2 {
        let in_use = token.use_for_request();
        let value = token_value(config, &token)?;
        let headers =
            headers::upstream_request(&parts.headers, &token_header, value, peer, state.scheme);
        let body = match (&kept, streaming.take()) {
            (Some(bytes), _) => reqwest::Body::from(bytes.clone()),
            (None, Some(stream)) => stream,
            (None, None) => reqwest::Body::from(Bytes::new()),
        };
        let sent = client
            .request(parts.method.clone(), url.clone())
            .headers(headers)
            .body(body)
            .send();
        let answer = match tokio::time::timeout(config.proxy.upstream_timeout, sent).await {
            Err(_) => return Err(ApiError::UpstreamTimeout(provider.to_owned())),
            Ok(Err(e)) if e.is_timeout() => {
                return Err(ApiError::UpstreamTimeout(provider.to_owned()));
            }
            Ok(Err(e)) => {
                tracing::warn!(provider, error = %e.without_url(), "upstream request failed");
                return Err(ApiError::UpstreamUnreachable(provider.to_owned()));
            }
            Ok(Ok(answer)) => answer,
        };
        let rejected = config
            .proxy
            .retry_statuses
            .contains(&answer.status().as_u16());
        if rejected && attempt == 0 {
            drop(in_use);
            let (fresh, _) = slot
                .invalidate(Rejected::Generation(token.generation))
                .await?;
            if kept.is_some() {
                token = fresh;
                continue;
            }
            let mut response = respond(answer, None);
            response.headers_mut().insert(
                NO_RETRY,
                HeaderValue::from_static("request body too large to replay"),
            );
            return Ok(response);
        }
        // A rejection of the fresh token is the upstream's own answer: passed through and
        // not reported again, so one request causes at most one reissue.
        return Ok(respond(answer, Some(in_use)));
    }
    unreachable!("the loop returns on its second attempt")
}

/// The provider's header value for `token`.
fn token_value(config: &ProviderConfig, token: &Token) -> Result<HeaderValue, ApiError> {
    let mut value = HeaderValue::from_str(&format!("{}{}", config.prefix, token.expose()))
        .map_err(|_| ApiError::NoUpstream(config.name.clone()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads a body of announced `length` whole.
async fn read_body(body: Body, length: u64) -> Result<Bytes, ApiError> {
    let limit = usize::try_from(length).unwrap_or(usize::MAX);
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::BadRequest("the request body does not match its Content-Length".to_owned())
    })
}

/// The client's body as a stream for the upstream, cut off past `max` bytes.
fn limited(body: Body, max: u64) -> reqwest::Body {
    let mut seen: u64 = 0;
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > max {
            return Err(std::io::Error::other("request body over max_request_body"));
        }
        Ok(chunk)
    });
    reqwest::Body::wrap_stream(stream)
}

/// The upstream's answer for the client, its body streamed; `in_use` keeps the token
/// counted until the last byte is sent.
fn respond(answer: reqwest::Response, in_use: Option<tokenbroker_core::token::InUse>) -> Response {
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = headers::downstream_response(answer.headers());
    let stream = answer
        .bytes_stream()
        .map_err(std::io::Error::other)
        .map(move |chunk| {
            let _held = &in_use;
            chunk
        });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
