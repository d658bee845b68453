//! The rotating refresh server's token endpoint decision. The handler around it and the
//! protected API are the shared `oauth2::token_endpoint` and `oauth2::ping`.
//!
//! The request is decided, and a rotation committed, before the latency: a client that goes
//! away during the wait has lost an answer the server has already acted on.

use axum::http::HeaderMap;

use super::state::Shared;
use crate::in_flight::InFlight;
use crate::oauth2::{Latency, OAuthError, TokenAnswer, TokenEndpoint, read_token_request};

impl TokenEndpoint for Shared {
    fn begin(&self) -> InFlight<'_> {
        self.begin_token_request()
    }

    fn latency(&self) -> Latency {
        Latency::AfterDeciding(self.answer_latency())
    }

    fn decide(&self, headers: &HeaderMap, body: &[u8]) -> Result<TokenAnswer, OAuthError> {
        if self.is_down() {
            return Err(OAuthError::outage());
        }
        let form = read_token_request(headers, body, self.client(), "refresh_token")?;
        let presented = form
            .get("refresh_token")
            .ok_or_else(|| OAuthError::invalid_request("missing refresh_token"))?;
        let exchange = self.exchange(presented)?;
        let access_token = if self.answers_empty_access_tokens() {
            String::new()
        } else {
            exchange.access_token
        };
        Ok(TokenAnswer::bearer(access_token, self.access_lifetime())
            .with_refresh_token(exchange.refresh_token))
    }

    fn count_refusal(&self, refusal: &OAuthError) {
        self.record_refusal(refusal);
    }
}
