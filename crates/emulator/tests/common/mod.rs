//! What the OAuth2 emulator suites share: token-endpoint requests with either client
//! authentication, the protected API call, and reading the answers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

/// How a request authenticates the client.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ClientAuth<'a> {
    /// `client_secret_basic`: `Authorization: Basic base64(id:secret)`, with the id and the
    /// secret given ALREADY form-encoded, so that a test spells out the encoding it expects.
    Basic(&'a str, &'a str),
    /// `client_secret_post`: `client_id` and `client_secret` form parameters (plain; reqwest
    /// encodes them).
    Post(&'a str, &'a str),
    /// No client authentication at all.
    Anonymous,
}

/// The default client of both emulators, which needs no encoding.
pub(crate) const DEFAULT_CLIENT: ClientAuth<'static> = ClientAuth::Basic("svc", "secret");

impl ClientAuth<'_> {
    /// `request` with this authentication and the form `params` as its body.
    pub(crate) fn apply(self, request: RequestBuilder, params: &[(&str, &str)]) -> RequestBuilder {
        let mut form: Vec<(&str, &str)> = params.to_vec();
        let request = match self {
            Self::Basic(id, secret) => {
                let credentials = STANDARD.encode(format!("{id}:{secret}"));
                request.header("Authorization", format!("Basic {credentials}"))
            }
            Self::Post(id, secret) => {
                form.extend([("client_id", id), ("client_secret", secret)]);
                request
            }
            Self::Anonymous => request,
        };
        request.form(&form)
    }
}

/// An answer: status, headers and JSON body (`Null` if there is none).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Reply {
    /// Reads an answer.
    pub(crate) async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
        }
    }

    /// A header's value as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// A string field of the body, which must be there.
    pub(crate) fn field(&self, name: &str) -> String {
        self.body[name]
            .as_str()
            .unwrap_or_else(|| panic!("no string {name} in {:?}: {}", self.status, self.body))
            .to_owned()
    }

    /// Asserts an RFC 6749 §5.2 error answer with this status and `error` code.
    pub(crate) fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            (self.status, self.body["error"].as_str()),
            (status, Some(code)),
            "{}",
            self.body
        );
        assert!(self.body["error_description"].is_string(), "{}", self.body);
    }
}

/// POSTs `params` with `auth` to `url`.
pub(crate) async fn post_form(
    http: &reqwest::Client,
    url: &str,
    auth: ClientAuth<'_>,
    params: &[(&str, &str)],
) -> Reply {
    let response = auth
        .apply(http.post(url), params)
        .send()
        .await
        .expect("the request reaches the emulator");
    Reply::read(response).await
}

/// `GET {base}/api/ping`, with `Authorization: Bearer token` if there is one.
pub(crate) async fn ping(http: &reqwest::Client, base: &str, token: Option<&str>) -> StatusCode {
    let mut request = http.get(format!("{base}/api/ping"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .expect("the ping reaches the emulator")
        .status()
}
