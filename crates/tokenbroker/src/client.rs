//! A client of a running broker's API, for `tokenbroker token`, `exec` and `status` (and
//! the demo's jobs). Errors map to the documented exit codes.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use crate::api::{ProviderStatus, TokenBody};
use crate::exit;

/// Talks to one broker with one client key.
pub struct BrokerClient {
    http: reqwest::Client,
    base: Url,
    key: SecretString,
}

/// Why no token came back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad broker URL {0:?}: expected e.g. http://127.0.0.1:8420")]
    BadUrl(String),
    #[error("no client key: set TOKENBROKER_KEY to the key `tokenbroker keys new` printed")]
    NoKey,
    #[error("cannot reach the broker at {broker}: {reason}")]
    Unreachable { broker: String, reason: String },
    #[error("the broker refused (HTTP {status}, {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the broker has no token to give (HTTP {status}, {code}): {message}")]
    NoToken {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the broker: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The documented exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadUrl(_) | Self::NoKey => exit::USAGE,
            Self::Unreachable { .. } => exit::BROKER_UNREACHABLE,
            Self::Refused { .. } => exit::REFUSED,
            Self::NoToken { .. } | Self::Protocol(_) => exit::NO_TOKEN,
        }
    }
}

impl BrokerClient {
    /// A client of the broker at `base` with the key from `TOKENBROKER_KEY`.
    pub fn from_env(base: &str) -> Result<Self, ClientError> {
        let key = std::env::var("TOKENBROKER_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .ok_or(ClientError::NoKey)?;
        Self::new(base, SecretString::from(key))
    }

    /// A client of the broker at `base` with `key`.
    pub fn new(base: &str, key: SecretString) -> Result<Self, ClientError> {
        let base = Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| ClientError::BadUrl(base.to_owned()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Self { http, base, key })
    }

    /// `GET /v1/tokens/{provider}`.
    pub async fn token(&self, provider: &str) -> Result<TokenBody, ClientError> {
        let url = self.url(&["v1", "tokens", provider])?;
        self.send(self.http.get(url)).await
    }

    /// `POST /v1/tokens/{provider}/invalidate` with the generation that got a 401.
    pub async fn invalidate(
        &self,
        provider: &str,
        generation: u64,
    ) -> Result<TokenBody, ClientError> {
        let url = self.url(&["v1", "tokens", provider, "invalidate"])?;
        let body = serde_json::json!({ "generation": generation });
        self.send(self.http.post(url).json(&body)).await
    }

    /// `GET /v1/providers` (an admin key).
    pub async fn providers(&self) -> Result<BTreeMap<String, ProviderStatus>, ClientError> {
        let url = self.url(&["v1", "providers"])?;
        self.send(self.http.get(url)).await
    }

    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::BadUrl(self.base.to_string()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = request
            .bearer_auth(self.key.expose_secret())
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                broker: without_credentials(&self.base),
                reason: root_cause(&e),
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(root_cause(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Protocol(e.to_string()));
        }
        let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let code = error["error"].as_str().unwrap_or("unknown").to_owned();
        let message = error["message"].as_str().unwrap_or("no message").to_owned();
        let status_code = status.as_u16();
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                ClientError::Refused {
                    status: status_code,
                    code,
                    message,
                }
            }
            _ => ClientError::NoToken {
                status: status_code,
                code,
                message,
            },
        })
    }
}

/// The URL as it may be printed: without a user or password in it.
fn without_credentials(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut reason = if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    }
    .to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        reason = cause.to_string();
        source = cause.source();
    }
    reason
}
