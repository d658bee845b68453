//! OAuth2 token endpoints (RFC 6749): the client-credentials grant (§4.4) and the
//! refresh-token grant (§6), with client authentication by HTTP Basic or in the body
//! (§2.3.1).
//!
//! Written here rather than with the `oauth2` crate: the broker needs the moment the request
//! was sent (an `expires_in` counts from it), the issuer's `Retry-After` on 429/503, the
//! typed §5.2 errors, and the rotated refresh token handed back to the slot so that it is
//! stored before the access token is used. Each is a few lines on top of reqwest; through
//! the crate's abstractions they would be more.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::ExposeSecret;

use super::answer::{TokenAnswer, send_json};
use super::{Answer, Issuance, IssueError, IssueInput, Issuer};
use crate::config::{AuthMethod, OAuthClient};

/// The lifetime assumed when an answer has neither `expires_in` nor a JWT `exp`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Which grant this issuer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    ClientCredentials,
    RefreshToken,
}

/// An OAuth2 provider's issuer.
pub struct OAuth2 {
    provider: String,
    client: OAuthClient,
    grant: Grant,
    http: reqwest::Client,
    timeout: Duration,
}

impl OAuth2 {
    /// An issuer for the client-credentials grant.
    pub fn client_credentials(
        provider: &str,
        client: OAuthClient,
        timeout: Duration,
    ) -> Result<Self, IssueError> {
        Self::new(provider, client, Grant::ClientCredentials, timeout)
    }

    /// An issuer for the refresh-token grant; the slot supplies the current refresh token.
    pub fn refresh_token(
        provider: &str,
        client: OAuthClient,
        timeout: Duration,
    ) -> Result<Self, IssueError> {
        Self::new(provider, client, Grant::RefreshToken, timeout)
    }

    fn new(
        provider: &str,
        client: OAuthClient,
        grant: Grant,
        timeout: Duration,
    ) -> Result<Self, IssueError> {
        let http = super::http_client(provider, timeout)?;
        Ok(Self {
            provider: provider.to_owned(),
            client,
            grant,
            http,
            timeout,
        })
    }

    /// The form body and the request for one exchange.
    fn request(&self, input: IssueInput<'_>) -> Result<reqwest::RequestBuilder, IssueError> {
        let mut form: Vec<(&str, &str)> = Vec::new();
        match self.grant {
            Grant::ClientCredentials => form.push(("grant_type", "client_credentials")),
            Grant::RefreshToken => {
                let token = input
                    .refresh_token
                    .ok_or_else(|| IssueError::NeedsCredentials {
                        provider: self.provider.clone(),
                        reason: "no refresh token is stored".to_owned(),
                    })?;
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", token.expose_secret()));
            }
        }
        if let Some(scope) = &self.client.scope {
            form.push(("scope", scope));
        }
        if let Some(audience) = &self.client.audience {
            form.push(("audience", audience));
        }
        for (name, value) in &self.client.extra_params {
            form.push((name, value.expose_secret()));
        }
        let mut request = self.http.post(self.client.token_url.clone());
        let secret = self
            .client
            .client_secret
            .as_ref()
            .map(|s| s.expose_secret());
        match (self.client.auth_method, secret) {
            (AuthMethod::Basic, Some(secret)) => {
                // RFC 6749 §2.3.1: the id and secret are form-encoded before Basic encoding.
                let pair = format!(
                    "{}:{}",
                    form_encode(&self.client.client_id),
                    form_encode(secret)
                );
                request = request.header(
                    reqwest::header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(pair)),
                );
            }
            (AuthMethod::Post, Some(secret)) => {
                form.push(("client_id", &self.client.client_id));
                form.push(("client_secret", secret));
            }
            (_, None) => form.push(("client_id", &self.client.client_id)),
        }
        Ok(request
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form))
    }
}

fn form_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[async_trait]
impl Issuer for OAuth2 {
    async fn issue(&self, input: IssueInput<'_>) -> Answer {
        let request = match self.request(input) {
            Ok(request) => request,
            Err(error) => return error.into(),
        };
        let issued_at = SystemTime::now();
        let sent = send_json(
            &self.provider,
            &self.client.token_url,
            self.timeout,
            request,
        );
        let answer = match sent.await {
            Ok(answer) => answer,
            Err(error) => return error.into(),
        };
        let how = match self.grant {
            Grant::ClientCredentials => Issuance::Login,
            Grant::RefreshToken => Issuance::Refresh,
        };
        let read = TokenAnswer {
            provider: &self.provider,
            pointer: "/access_token",
            default_lifetime: DEFAULT_LIFETIME,
            sent_refresh_token: matches!(self.grant, Grant::RefreshToken),
        };
        read.read(&answer, issued_at, how)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, IssuerConfig};

    fn issuer(extra: &str) -> OAuth2 {
        let text = format!(
            "[providers.p]\ntype = \"oauth2_client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\n\
             client_id = \"svc:1\"\nclient_secret = \"p@ss w+rd\"\n{extra}"
        );
        let config = Config::parse(&text).expect("valid");
        let IssuerConfig::ClientCredentials(cc) = &config.providers["p"].issuer else {
            panic!("client credentials");
        };
        OAuth2::client_credentials("p", cc.client.clone(), Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn basic_auth_form_encodes_id_and_secret() {
        let request = issuer("")
            .request(IssueInput::default())
            .unwrap()
            .build()
            .unwrap();
        let header = request.headers()["authorization"].to_str().unwrap();
        let decoded = STANDARD
            .decode(header.trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(decoded, b"svc%3A1:p%40ss+w%2Brd");
        let body = std::str::from_utf8(request.body().unwrap().as_bytes().unwrap()).unwrap();
        assert_eq!(body, "grant_type=client_credentials");
    }

    #[test]
    fn post_auth_and_optional_parameters_go_in_the_body() {
        let request = issuer("auth_method = \"post\"\nscope = \"read write\"\naudience = \"api\"\nextra_params = { resource = \"r1\" }")
            .request(IssueInput::default())
            .unwrap()
            .build()
            .unwrap();
        assert!(!request.headers().contains_key("authorization"));
        let body = std::str::from_utf8(request.body().unwrap().as_bytes().unwrap()).unwrap();
        assert_eq!(
            body,
            "grant_type=client_credentials&scope=read+write&audience=api&resource=r1&client_id=svc%3A1&client_secret=p%40ss+w%2Brd"
        );
    }
}
