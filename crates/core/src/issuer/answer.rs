//! Turning an issuer's HTTP answer (or its absence) into a JSON body or a typed error.
//! Shared by every issuer type, so that a 429 or a timeout means the same everywhere.

use std::time::{Duration, SystemTime};

use reqwest::{RequestBuilder, StatusCode, Url};

use secrecy::SecretString;

use super::{Answer, Issuance, IssueError, Issued, OAuthError, Rotation, jwt};

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

/// Sends `request` and succeeds on any 2xx answer, whatever its body.
pub(crate) async fn send_status(
    provider: &str,
    endpoint: &Url,
    timeout: Duration,
    request: RequestBuilder,
) -> Result<(), IssueError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport(provider, endpoint, timeout, &e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = retry_after(response.headers());
    let body = response.bytes().await.unwrap_or_default();
    Err(status_error(provider, status, retry_after, &body))
}

fn transport(provider: &str, endpoint: &Url, timeout: Duration, e: &reqwest::Error) -> IssueError {
    // A connection that timed out is a timeout too, but it sent nothing: unreachable.
    if e.is_timeout() && !e.is_connect() {
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
        connect: e.is_connect(),
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
    if let Some((error, description)) = oauth_error(body) {
        return match error {
            OAuthError::SlowDown => IssueError::RateLimited {
                provider,
                retry_after,
            },
            OAuthError::TemporarilyUnavailable => IssueError::Unavailable {
                provider,
                status: code,
                retry_after,
            },
            error => IssueError::OAuth {
                provider,
                status: code,
                error,
                description,
            },
        };
    }
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

/// How to read a successful token answer.
pub(crate) struct TokenAnswer<'a> {
    pub(crate) provider: &'a str,
    /// RFC 6901 pointer to the access token.
    pub(crate) pointer: &'a str,
    /// When neither a JWT `exp` nor `expires_in` says.
    pub(crate) default_lifetime: Duration,
    /// Whether the request sent a refresh token, so the answer's `refresh_token` matters
    /// (other grants ignore one, readable or not).
    pub(crate) sent_refresh_token: bool,
}

impl TokenAnswer<'_> {
    /// The token in `answer`, its expiry (the JWT `exp`, else `expires_in` counted from
    /// `issued_at`, the moment the request was sent, else the default lifetime), and apart
    /// from it what became of the refresh token sent, if one was: rotated (even beside an
    /// unusable access token), unchanged, or not known.
    pub(crate) fn read(
        &self,
        answer: &serde_json::Value,
        issued_at: SystemTime,
        how: Issuance,
    ) -> Answer {
        let refresh_token = answer
            .get("refresh_token")
            .filter(|_| self.sent_refresh_token);
        let rotation = match refresh_token {
            // No new refresh token (or none sent) beside an access token: a refresh token
            // sent stays valid. With neither, what became of it is not known.
            None | Some(serde_json::Value::Null) if answer.pointer(self.pointer).is_some() => {
                Ok(Rotation::Unchanged)
            }
            None | Some(serde_json::Value::Null) => Ok(Rotation::Unknown),
            Some(value) => value
                .as_str()
                .filter(|t| !t.is_empty())
                .map(|t| Rotation::Rotated(SecretString::from(t.to_owned())))
                .ok_or_else(|| self.malformed("refresh_token is not a non-empty string")),
        };
        match rotation {
            Ok(rotation) => Answer {
                result: self.issued(answer, issued_at, how),
                rotation,
                token_answer: true,
            },
            Err(error) => Answer {
                result: Err(error),
                rotation: Rotation::Unreadable,
                token_answer: true,
            },
        }
    }

    fn issued(
        &self,
        answer: &serde_json::Value,
        issued_at: SystemTime,
        how: Issuance,
    ) -> Result<Issued, IssueError> {
        let token = answer
            .pointer(self.pointer)
            .ok_or_else(|| self.malformed(&format!("no value at {:?}", self.pointer)))?
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                self.malformed(&format!(
                    "the value at {:?} is not a non-empty string",
                    self.pointer
                ))
            })?;
        if token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(self.malformed("the token holds characters a header cannot carry"));
        }
        let expires_at = match jwt::expiry(token) {
            Some(at) => at,
            None => match expires_in(answer) {
                Ok(Some(lifetime)) => issued_at
                    .checked_add(lifetime)
                    .ok_or_else(|| self.malformed("expires_in is out of range"))?,
                Ok(None) => issued_at + self.default_lifetime,
                // A lifetime the issuer gave but that cannot be read is not replaced by a
                // guess: the token could be served after it has expired.
                Err(()) => {
                    return Err(self.malformed("expires_in is not a number of seconds above 0"));
                }
            },
        };
        Ok(Issued {
            access_token: SecretString::from(token.to_owned()),
            issued_at,
            expires_at,
            how,
        })
    }

    fn malformed(&self, reason: &str) -> IssueError {
        IssueError::Malformed {
            provider: self.provider.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// An `expires_in` (seconds, as a number or a numeric string) at the top of the answer, if
/// there is one (`0`, `null` and `""` say nothing); an error if it is not a number of seconds.
fn expires_in(answer: &serde_json::Value) -> Result<Option<Duration>, ()> {
    let Some(value) = answer
        .get("expires_in")
        .filter(|v| !v.is_null() && v.as_str().is_none_or(|s| !s.trim().is_empty()))
    else {
        return Ok(None);
    };
    let secs = value
        .as_f64()
        .or_else(|| value.as_str()?.trim().parse().ok())
        .ok_or(())?;
    let lifetime = Duration::try_from_secs_f64(secs).map_err(|_| ())?;
    Ok(Some(lifetime).filter(|d| !d.is_zero()))
}

/// An RFC 6749 §5.2 error answer: its registered code and its description.
fn oauth_error(body: &[u8]) -> Option<(OAuthError, Option<String>)> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = OAuthError::from_code(json.get("error")?.as_str()?)?;
    let description = json
        .get("error_description")
        .and_then(serde_json::Value::as_str)
        .map(sanitised);
    Some((error, description))
}

/// A `Retry-After` given in seconds (the HTTP-date form is rare from token endpoints and
/// is treated as absent).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    // RFC 9110 §10.2.3: a number of seconds, or a date.
    text.parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| {
            let at = httpdate::parse_http_date(text).ok()?;
            Some(at.duration_since(SystemTime::now()).unwrap_or_default())
        })
}

/// The issuer's own short explanation, if its error body has one in a usual field. Only
/// these fields are shown: an error body may echo the request, credentials included.
fn detail(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = ["error_description", "message", "error"]
        .iter()
        .find_map(|field| json.get(field)?.as_str())?;
    Some(sanitised(text)).filter(|t| !t.is_empty())
}

/// An issuer's explanation as it may be shown: no control characters, at most 200 of them.
fn sanitised(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_issuer_that_cannot_be_connected_to_in_time_certainly_got_nothing() {
        // A listener whose accept queue (of one) is full drops the SYN of the next
        // connection, so connecting to it times out, as to a host that drops packets.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let address = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        loop {
            let connect = tokio::net::TcpStream::connect(address);
            match tokio::time::timeout(Duration::from_millis(300), connect).await {
                Ok(stream) => queued.push(stream.unwrap()),
                Err(_) => break,
            }
            assert!(queued.len() < 8, "the accept queue never filled up");
        }
        let timeout = Duration::from_secs(2);
        let endpoint = Url::parse(&format!("http://{address}/token")).unwrap();
        let client = super::super::http_client("crm", timeout).unwrap();
        let request = client
            .post(endpoint.clone())
            .body("grant_type=refresh_token");
        let sent = tokio::time::timeout(timeout, send_json("crm", &endpoint, timeout, request));
        let e = sent
            .await
            .expect("the connection fails before the issuance's own bound")
            .unwrap_err();
        assert_eq!(e.reason(), "unreachable", "{e}");
        assert!(e.certainly_not_acted_on(), "{e}");
    }

    #[test]
    fn a_token_answer_says_what_became_of_the_refresh_token_sent() {
        use secrecy::ExposeSecret;
        use serde_json::json;
        let read = TokenAnswer {
            provider: "crm",
            pointer: "/access_token",
            default_lifetime: Duration::from_secs(60),
            sent_refresh_token: true,
        };
        let rotation = |answer: serde_json::Value| {
            let answer = read.read(&answer, SystemTime::now(), Issuance::Refresh);
            match answer.rotation {
                Rotation::Rotated(token) => format!("rotated {}", token.expose_secret()),
                Rotation::Unchanged => "unchanged".to_owned(),
                Rotation::Unreadable => "unreadable".to_owned(),
                Rotation::Unknown => "unknown".to_owned(),
            }
        };
        assert_eq!(
            rotation(json!({"access_token": "a", "refresh_token": "r2"})),
            "rotated r2"
        );
        assert_eq!(rotation(json!({"access_token": "a"})), "unchanged");
        assert_eq!(
            rotation(json!({"access_token": "", "refresh_token": null})),
            "unchanged"
        );
        assert_eq!(
            rotation(json!({"access_token": "a", "refresh_token": 7})),
            "unreadable"
        );
        assert_eq!(rotation(json!({"refresh_token": ""})), "unreadable");
        assert_eq!(rotation(json!({})), "unknown");
        // Whatever it says of the refresh token, a 2xx JSON answer is the issuer's: for a
        // single-session provider it ended the current session.
        let empty = read.read(&json!({}), SystemTime::now(), Issuance::Login);
        assert!(empty.result.is_err() && empty.handed_out_a_token());
        // A grant that sent no refresh token has no use for one in the answer.
        let login = TokenAnswer {
            sent_refresh_token: false,
            ..read
        };
        let answer = json!({"access_token": "a", "refresh_token": ""});
        let answer = login.read(&answer, SystemTime::now(), Issuance::Login);
        assert!(answer.result.is_ok(), "{:?}", answer.result);
        assert!(matches!(answer.rotation, Rotation::Unchanged));
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        let header = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers)
        };
        assert_eq!(header("120"), Some(Duration::from_secs(120)));
        let in_two_minutes = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let wait = header(&in_two_minutes).expect("a date");
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert_eq!(
            header("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO),
            "a date past"
        );
        assert_eq!(header("soon"), None);
    }

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

    #[test]
    fn each_rfc_6749_error_is_distinct_and_readable() {
        let mut reasons = std::collections::BTreeSet::new();
        for code in [
            "invalid_request",
            "invalid_client",
            "invalid_grant",
            "unauthorized_client",
            "unsupported_grant_type",
            "invalid_scope",
        ] {
            let body = format!(r#"{{"error":"{code}","error_description":"why {code}"}}"#);
            let e = status_error("crm", StatusCode::BAD_REQUEST, None, body.as_bytes());
            assert_eq!(e.reason(), code);
            assert!(e.to_string().contains(&format!("why {code}")), "{e}");
            assert!(e.to_string().starts_with("crm: "), "{e}");
            reasons.insert(e.reason());
        }
        assert_eq!(reasons.len(), 6);
        let slow = status_error(
            "crm",
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error":"slow_down"}"#,
        );
        assert_eq!(slow.reason(), "rate_limited");
        let busy = status_error(
            "crm",
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(3)),
            br#"{"error":"temporarily_unavailable"}"#,
        );
        assert_eq!(
            (busy.reason(), busy.retry_after()),
            ("unavailable", Some(Duration::from_secs(3)))
        );
    }
}
