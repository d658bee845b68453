//! `type = "json_login"`: POST a JSON body, read the token from the JSON answer.
//!
//! This is Automation Anywhere Control Room's `POST /v1/authentication` (and its
//! `POST /v1/authentication/token` exchange of a still-valid token for a new one), and
//! any API of the same shape. The expiry comes from the JWT `exp` if the token is a JWT,
//! else from an `expires_in` in the answer, else from the configured `lifetime`.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::answer::{TokenAnswer, send_json, send_status};
use super::{Answer, Issuance, IssueError, IssueInput, Issuer};
use crate::config::{JsonLoginConfig, ProviderConfig};
use crate::token::Token;

/// A `json_login` provider's issuer.
pub struct JsonLogin {
    provider: String,
    config: JsonLoginConfig,
    http: reqwest::Client,
    timeout: Duration,
    /// How the API wants the token, for the logout call.
    header: String,
    prefix: String,
}

impl JsonLogin {
    /// An issuer whose every call is bounded by `timeout`.
    pub fn new(provider: &ProviderConfig, config: JsonLoginConfig) -> Result<Self, IssueError> {
        let http = super::http_client(&provider.name, provider.timeout)?;
        Ok(Self {
            provider: provider.name.clone(),
            config,
            http,
            timeout: provider.timeout,
            header: provider.header.clone(),
            prefix: provider.prefix.clone(),
        })
    }

    async fn call(&self, url: &reqwest::Url, body: &serde_json::Value, how: Issuance) -> Answer {
        let issued_at = SystemTime::now();
        let request = self.http.post(url.clone()).json(body);
        match send_json(&self.provider, url, self.timeout, request).await {
            Ok(answer) => self.read_answer(&answer, issued_at, how),
            Err(error) => error.into(),
        }
    }

    fn read_answer(
        &self,
        answer: &serde_json::Value,
        issued_at: SystemTime,
        how: Issuance,
    ) -> Answer {
        let read = TokenAnswer {
            provider: &self.provider,
            pointer: &self.config.token_pointer,
            default_lifetime: self.config.lifetime,
            sent_refresh_token: false,
        };
        read.read(answer, issued_at, how)
    }
}

#[async_trait]
impl Issuer for JsonLogin {
    async fn issue(&self, input: IssueInput<'_>) -> Answer {
        if let (Some(url), Some(body), Some(current)) = (
            &self.config.refresh_url,
            &self.config.refresh_body,
            input.current,
        ) {
            return self
                .call(url, &body.render(current.expose()), Issuance::Refresh)
                .await;
        }
        self.call(
            &self.config.login_url,
            self.config.login_body.value(),
            Issuance::Login,
        )
        .await
    }

    fn exchanges_tokens(&self) -> bool {
        self.config.refresh_url.is_some()
    }

    fn logs_out_on_shutdown(&self) -> bool {
        self.config.logout_on_shutdown && self.config.logout_url.is_some()
    }

    async fn log_out_on_shutdown(&self, token: &Token) -> Result<bool, IssueError> {
        let Some(url) = self
            .config
            .logout_url
            .as_ref()
            .filter(|_| self.config.logout_on_shutdown)
        else {
            return Ok(false);
        };
        let request = self.http.post(url.clone()).header(
            self.header.as_str(),
            format!("{}{}", self.prefix, token.expose()),
        );
        send_status(&self.provider, url, self.timeout, request).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn issuer(extra: &str) -> JsonLogin {
        let text = format!(
            "[providers.cr]\ntype = \"json_login\"\nlogin_url = \"http://127.0.0.1:9/login\"\n\
             login_body = {{ username = \"bot\" }}\nlifetime = \"10m\"\n{extra}"
        );
        let config = Config::parse(&text).expect("valid test config");
        let provider = &config.providers["cr"];
        let crate::config::IssuerConfig::JsonLogin(login) = &provider.issuer else {
            panic!("json_login");
        };
        JsonLogin::new(provider, login.clone()).expect("client builds")
    }

    #[test]
    fn expiry_from_expires_in_counts_from_the_request() {
        let sent = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let answer = serde_json::json!({"token": "abc", "expires_in": "60"});
        let issued = issuer("")
            .read_answer(&answer, sent, Issuance::Login)
            .result
            .unwrap();
        assert_eq!(issued.expires_at, sent + Duration::from_secs(60));
    }

    #[test]
    fn an_expires_in_that_cannot_be_read_is_malformed_not_guessed() {
        for expires_in in [
            serde_json::json!(-5),
            serde_json::json!("300s"),
            serde_json::json!(1e300),
        ] {
            let answer = serde_json::json!({"token": "abc", "expires_in": expires_in});
            let err = issuer("")
                .read_answer(&answer, SystemTime::UNIX_EPOCH, Issuance::Login)
                .result
                .unwrap_err();
            assert_eq!(err.reason(), "malformed", "{expires_in}");
            assert!(err.to_string().contains("expires_in"), "{err}");
        }
    }

    #[test]
    fn expiry_falls_back_to_lifetime_and_pointer_is_followed() {
        let sent = SystemTime::UNIX_EPOCH;
        for answer in [
            serde_json::json!({"data": {"jwt": "abc"}}),
            serde_json::json!({"data": {"jwt": "abc"}, "expires_in": ""}),
            serde_json::json!({"data": {"jwt": "abc"}, "expires_in": null}),
        ] {
            let issued = issuer("token_pointer = \"/data/jwt\"")
                .read_answer(&answer, sent, Issuance::Login)
                .result
                .unwrap();
            assert_eq!(issued.expires_at, sent + Duration::from_secs(600));
        }
    }

    #[test]
    fn missing_token_is_malformed_and_names_the_pointer() {
        let err = issuer("")
            .read_answer(
                &serde_json::json!({"tok": "x"}),
                SystemTime::UNIX_EPOCH,
                Issuance::Login,
            )
            .result
            .unwrap_err();
        assert_eq!(err.reason(), "malformed");
        assert!(err.to_string().contains("\"/token\""), "{err}");
    }
}
