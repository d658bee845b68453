//! Turning an issuer's HTTP answer (or its absence) into a JSON body or a typed error.
//! Shared by every issuer type, so that a 429 or a timeout means the same everywhere.

use std::time::Duration;

use reqwest::{RequestBuilder, StatusCode, Url};

use super::IssueError;

/// Sends `request` and returns the JSON body of a 2xx answer, or the error it amounts to.
pub(crate) async fn send_json(
    provider: &str,
    endpoint: &Url,
    timeout: Duration,
    request: RequestBuilder,
) -> Result<serde_json::Value, IssueError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport(provider, endpoint, timeout, &e))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response
        .bytes()
        .await
        .map_err(|e| transport(provider, endpoint, timeout, &e))?;
    if !status.is_success() {
        return Err(status_error(provider, status, retry_after, &body));
    }
    serde_json::from_slice(&body).map_err(|e| IssueError::Malformed {
        provider: provider.to_owned(),
        reason: format!("HTTP {status} with a body that is not JSON ({e})"),
    })
}

fn transport(provider: &str, endpoint: &Url, timeout: Duration, e: &reqwest::Error) -> IssueError {
    if e.is_timeout() {
        return IssueError::Timeout {
            provider: provider.to_owned(),
            timeout,
        };
    }
    // The endpoint without its query or credentials; reqwest's own message would print the
    // whole URL, so only the error's sources are used.
    let mut shown = endpoint.clone();
    shown.set_query(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    let mut reason = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        reason = cause.to_string();
        source = cause.source();
    }
    if reason.is_empty() {
        reason = if e.is_connect() {
            "connection failed"
        } else {
            "request failed"
        }
        .to_owned();
    }
    IssueError::Unreachable {
        provider: provider.to_owned(),
        endpoint: shown.to_string(),
        reason,
    }
}

fn status_error(
    provider: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> IssueError {
    let provider = provider.to_owned();
    let code = status.as_u16();
    match status {
        StatusCode::TOO_MANY_REQUESTS => IssueError::RateLimited {
            provider,
            retry_after,
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => IssueError::BadCredentials {
            provider,
            status: code,
            detail: detail(body),
        },
        s if s.is_server_error() => IssueError::Unavailable {
            provider,
            status: code,
            retry_after,
        },
        _ => IssueError::Refused {
            provider,
            status: code,
            detail: detail(body),
        },
    }
}

/// A `Retry-After` given in seconds (the HTTP-date form is rare from token endpoints and
/// is treated as absent).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The issuer's own short explanation, if its error body has one in a usual field. Only
/// these fields are shown: an error body may echo the request, credentials included.
fn detail(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = ["error_description", "message", "error"]
        .iter()
        .find_map(|field| json.get(field)?.as_str())?;
    let mut text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    if text.is_empty() {
        return None;
    }
    text.shrink_to_fit();
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_typed_errors() {
        let e = status_error(
            "cr",
            StatusCode::UNAUTHORIZED,
            None,
            br#"{"message":"Invalid credentials"}"#,
        );
        assert_eq!(e.reason(), "bad_credentials");
        assert_eq!(
            e.to_string(),
            "cr: the issuer rejected the credentials (HTTP 401): Invalid credentials"
        );
        let e = status_error(
            "cr",
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(2)),
            b"",
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(
            status_error("cr", StatusCode::BAD_GATEWAY, None, b"").reason(),
            "unavailable"
        );
        assert_eq!(
            status_error("cr", StatusCode::BAD_REQUEST, None, b"<html>").reason(),
            "refused"
        );
    }
}
