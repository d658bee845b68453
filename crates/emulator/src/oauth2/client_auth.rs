//! Client authentication at an OAuth2 endpoint (RFC 6749 §2.3.1), by either method:
//!
//! - `client_secret_basic`: `Authorization: Basic base64(id ":" secret)`, where the id and the
//!   secret are each form-urlencoded before joining, so that a colon in the id survives;
//! - `client_secret_post`: `client_id` and `client_secret` as form parameters.
//!
//! A request using both methods is refused, as §2.3 requires; one using neither, or naming an
//! unknown client or a wrong secret, is an `invalid_client`.

use std::fmt;

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::error::OAuthError;
use super::form::{self, Form};

/// The one client an emulated server accepts.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ClientCredentials {
    /// The `client_id`.
    id: String,
    /// The `client_secret`.
    secret: String,
}

impl fmt::Debug for ClientCredentials {
    // Hand-written so that the secret never reaches a log or an assertion message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ClientCredentials {
    /// The client `id` with `secret`.
    pub(crate) fn new(id: &str, secret: &str) -> Self {
        Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        }
    }

    /// The client the emulated servers accept unless told otherwise: `svc` with `secret`.
    pub(crate) fn default_client() -> Self {
        Self::new("svc", "secret")
    }

    /// Checks that a request authenticates as this client, by the header or by the `form`
    /// parameters; the `Err` is the answer to give.
    pub(crate) fn authenticate(&self, headers: &HeaderMap, form: &Form) -> Result<(), OAuthError> {
        let presented = presented(headers, form)?;
        if presented == *self {
            Ok(())
        } else {
            Err(OAuthError::invalid_client("unknown client or wrong secret"))
        }
    }
}

/// The credentials a request presents, by whichever single method it uses.
fn presented(headers: &HeaderMap, form: &Form) -> Result<ClientCredentials, OAuthError> {
    let in_form = form.get("client_secret");
    match (super::authorization(headers, "basic"), in_form) {
        (Some(_), Some(_)) => Err(OAuthError::invalid_request(
            "more than one client authentication method",
        )),
        (Some(basic), None) => decode_basic(basic)
            .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials")),
        (None, Some(secret)) => {
            let id = form
                .get("client_id")
                .ok_or_else(|| OAuthError::invalid_client("client_secret without client_id"))?;
            Ok(ClientCredentials::new(id, secret))
        }
        (None, None) => Err(OAuthError::invalid_client("no client authentication")),
    }
}

/// Reads `base64(urlencode(id) ":" urlencode(secret))`.
fn decode_basic(credentials: &str) -> Option<ClientCredentials> {
    let joined = String::from_utf8(STANDARD.decode(credentials).ok()?).ok()?;
    let (id, secret) = joined.split_once(':')?;
    Some(ClientCredentials {
        id: form::decode(id)?,
        secret: form::decode(secret)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, header};

    fn basic(joined: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(joined));
        let value = HeaderValue::from_str(&value).expect("base64 is a valid header value");
        headers.insert(header::AUTHORIZATION, value);
        headers
    }

    fn form(body: &str) -> Form {
        Form::parse(body.as_bytes()).expect("a valid form")
    }

    #[test]
    fn basic_credentials_are_form_decoded_after_base64() {
        let client = ClientCredentials::new("svc:1", "p@ss w+rd");
        let headers = basic("svc%3A1:p%40ss+w%2Brd");
        assert_eq!(client.authenticate(&headers, &Form::default()), Ok(()));
        // Not encoded, the id ends at the first colon and the secret is wrong.
        let raw = basic("svc:1:p@ss w+rd");
        let refused = client.authenticate(&raw, &Form::default());
        assert_eq!(refused.map_err(|e| e.code()), Err("invalid_client"));
    }

    #[test]
    fn post_credentials_are_read_from_the_form() {
        let client = ClientCredentials::new("svc:1", "p@ss w+rd");
        let body = form("client_id=svc%3A1&client_secret=p%40ss+w%2Brd");
        assert_eq!(client.authenticate(&HeaderMap::new(), &body), Ok(()));
        let wrong = form("client_id=svc%3A1&client_secret=nope");
        let refused = client.authenticate(&HeaderMap::new(), &wrong);
        assert_eq!(refused.map_err(|e| e.code()), Err("invalid_client"));
    }

    #[test]
    fn both_methods_at_once_are_an_invalid_request() {
        let client = ClientCredentials::default_client();
        let refused = client.authenticate(
            &basic("svc:secret"),
            &form("client_id=svc&client_secret=secret"),
        );
        assert_eq!(refused.map_err(|e| e.code()), Err("invalid_request"));
    }

    #[test]
    fn missing_or_malformed_credentials_are_an_invalid_client() {
        let client = ClientCredentials::default_client();
        for (headers, body) in [
            (HeaderMap::new(), Form::default()),
            (HeaderMap::new(), form("client_secret=secret")),
            (basic("no-colon"), Form::default()),
            (basic("svc:%zz"), Form::default()),
        ] {
            let refused = client.authenticate(&headers, &body);
            assert_eq!(refused.map_err(|e| e.code()), Err("invalid_client"));
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", ClientCredentials::new("svc", "s3cret"));
        assert!(shown.contains("svc"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
