//! `ANY /v1/proxy/{provider}/{path}`: the reverse proxy that injects the provider's token,
//! so a consumer with a static client key never touches a token (SPEC "HTTP API").
//!
//! The request goes to `upstream/{path}?{query}` ([`target`]) on one of the worker's
//! keep-alive connections to the provider's upstream ([`upstream`], [`pool`]), with the
//! client's key removed and the token in the provider's header ([`headers`]); bodies stream
//! both ways ([`upload`], [`relay`]). An upstream answer whose status is in `retry_statuses`
//! (401 by default) invalidates the generation used and is retried once with the new token,
//! if the request body was small enough to keep (`retry_body_limit`). Every request gets its
//! token already counted "in use" (`Slot::get_in_use`) and holds it until the response body
//! has been sent, so a single-session rotation can wait for it (the drain of SPEC
//! guarantee 2).

mod headers;
mod pool;
mod references;
mod relay;
mod target;
mod upload;
mod upstream;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, Version, header};
use axum::response::Response;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokenbroker_core::slot::Rejected;

use crate::api::{ApiError, AppState, Caller};
pub(crate) use headers::forwarded_for;
pub use target::UnsafePath;
pub use upstream::{UpstreamError, Upstreams};

/// The header of a pass-through answer that was not retried, saying why.
const NO_RETRY: &str = "x-tokenbroker-no-retry";

/// The provider a path under `/v1/proxy/{provider}` names, if it is one: such a request is
/// the proxy's ([`forward`]), whatever its method.
pub(crate) fn provider_of(path: &str) -> Option<&str> {
    target::split(path).map(|(provider, _)| provider)
}

/// Forwards a request whose path [`provider_of`] accepted, from the client whose address
/// is `forwarded_for` ([`forwarded_for`]).
pub(crate) async fn forward(
    state: &AppState,
    forwarded_for: &HeaderValue,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let caller = Caller::from_headers(&parts.headers, state)?;
    // An absolute-form request target ("GET http://host/...") is a forward-proxy request;
    // this is a reverse proxy.
    // (HTTP/2 requests always carry a scheme and an authority: that is not the same.)
    let http1 = matches!(parts.version, Version::HTTP_10 | Version::HTTP_11);
    if http1 && (parts.uri.scheme().is_some() || parts.uri.authority().is_some()) {
        return Err(ApiError::UnsafePath(UnsafePath::Absolute));
    }
    let (provider, rest) = target::split(parts.uri.path()).ok_or(ApiError::NoRoute)?;
    let slot = caller.slot(state, provider)?;
    let config = slot.config();
    let upstream = state
        .upstreams
        .get(provider)
        .ok_or_else(|| ApiError::NoUpstream(provider.to_owned()))?;
    let uri = target::upstream_uri(&upstream.base_path, rest, parts.uri.query())
        .map_err(ApiError::UnsafePath)?;

    // A body small enough to keep can be replayed after a rejection; a larger one streams.
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Known to be empty (no body at all), else of unknown length unless announced.
    let empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
    if length.is_some_and(|l| l > config.proxy.max_request_body) {
        return Err(ApiError::BodyTooLarge(config.proxy.max_request_body));
    }
    let keep = config
        .proxy
        .retry_body_limit
        .min(config.proxy.max_request_body);
    let (kept, mut streaming) = match length {
        Some(l) if l <= keep => (Some(read_body(body, l).await?), None),
        None if empty => (Some(Bytes::new()), None),
        None => match read_up_to(body, keep).await? {
            Ok(whole) => (Some(whole), None),
            Err(longer) => (
                None,
                Some(upload::streamed(longer, config.proxy.max_request_body)),
            ),
        },
        Some(_) => (
            None,
            Some(upload::streamed(body, config.proxy.max_request_body)),
        ),
    };

    let mut headers = parts.headers;
    headers::to_upstream(
        &mut headers,
        &upstream.token_header,
        forwarded_for,
        state.scheme,
    );
    headers.insert(header::HOST, upstream.host.clone());
    // hyper gives a body its length, but writes none for an empty one; some upstreams
    // refuse a POST without it (411), so an announced zero is passed on.
    if length == Some(0) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    // Counted "in use" as it is handed out, until the response body is sent (the drain).
    let mut in_use = slot.get_in_use().await?;
    for attempt in 0..2 {
        let token = in_use.token().clone();
        // The first attempt of a replayable request keeps what a retry needs.
        let replayable = attempt == 0 && kept.is_some();
        let (body, upload) = match (&kept, streaming.take()) {
            (Some(bytes), _) => (Body::from(bytes.clone()), None),
            (None, Some((stream, turn))) => (stream, Some(turn)),
            (None, None) => (Body::empty(), None),
        };
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = if replayable {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        let value = state
            .rendered
            .get(config, &token)
            .and_then(|rendered| rendered.header_value.clone())
            .ok_or_else(|| ApiError::NoUpstream(provider.to_owned()))?;
        request.headers_mut().insert(&upstream.token_header, value);
        let timeout = config.proxy.upstream_timeout;
        // A streamed upload goes at the client's pace: the timeout counts the upstream's turns.
        // (The call is made in each arm, so that the common one builds it in place: moving the
        // future of a call costs a request about 2,000 instructions of copying.)
        let answered = match upload {
            Some(turn) => Box::pin(turn.bound(timeout, upstream.pool.send(request))).await,
            None => tokio::time::timeout(timeout, upstream.pool.send(request))
                .await
                .ok(),
        };
        let (answer, lease) = match answered {
            None => return Err(ApiError::UpstreamTimeout(provider.to_owned())),
            Some(Err(e)) if relay::timed_out(&*e) => {
                return Err(ApiError::UpstreamTimeout(provider.to_owned()));
            }
            Some(Err(e)) if relay::body_too_large(&*e) => {
                return Err(ApiError::BodyTooLarge(config.proxy.max_request_body));
            }
            Some(Err(e)) if relay::client_body_failed(&*e) => return Err(unreadable_body()),
            Some(Err(e)) => {
                tracing::warn!(provider, error = %relay::describe(&*e), "upstream request failed");
                return Err(ApiError::UpstreamUnreachable(provider.to_owned()));
            }
            Some(Ok(sent)) => sent,
        };
        let rejected = config
            .proxy
            .retry_statuses
            .contains(&answer.status().as_u16());
        if rejected && attempt == 0 {
            drop(in_use);
            slot.reject(Rejected::Generation(token.generation)).await;
            if replayable {
                relay::discard(answer, lease);
                in_use = slot.get_in_use().await?;
                continue;
            }
            // The upstream's answer, at once: the token's successor is the next request's
            // business, and a failure to get one is not this request's answer.
            let mut response = relay::respond(
                answer,
                lease,
                None,
                config.proxy.upstream_timeout,
                &upstream.references,
            );
            response.headers_mut().insert(
                NO_RETRY,
                HeaderValue::from_static("request body too large to replay"),
            );
            return Ok(response);
        }
        // A rejection of the fresh token is the upstream's own answer: passed through and
        // not reported again, so one request causes at most one reissue.
        return Ok(relay::respond(
            answer,
            lease,
            Some(in_use),
            config.proxy.upstream_timeout,
            &upstream.references,
        ));
    }
    unreachable!("the loop returns on its second attempt")
}

/// Reads a body of unknown length (chunked) whole if it ends within `limit` bytes; else
/// gives it back as a body that streams what was read so far and then the rest.
async fn read_up_to(mut body: Body, limit: u64) -> Result<Result<Bytes, Body>, ApiError> {
    let mut parts = Vec::new();
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| unreadable_body())?;
        // Trailers are not forwarded (`headers`).
        let Ok(part) = frame.into_data() else {
            continue;
        };
        read += part.len() as u64;
        parts.push(part);
        if read > limit {
            let so_far = futures_util::stream::iter(parts.into_iter().map(Ok));
            return Ok(Err(Body::from_stream(
                so_far.chain(body.into_data_stream()),
            )));
        }
    }
    Ok(Ok(parts.concat().into()))
}

/// A client's body that broke off or was malformed.
fn unreadable_body() -> ApiError {
    ApiError::BadRequest("the request body could not be read to its end".to_owned())
}

/// Reads a body of announced `length` whole.
async fn read_body(body: Body, length: u64) -> Result<Bytes, ApiError> {
    let limit = usize::try_from(length).unwrap_or(usize::MAX);
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::BadRequest("the request body does not match its Content-Length".to_owned())
    })
}
