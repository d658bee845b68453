//! The caller of a request, from its `Authorization: Bearer <client key>`, and the check
//! that it may use a provider (SPEC guarantee 10).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use tokenbroker_core::access::Client;
use tokenbroker_core::slot::Slot;

use super::{ApiError, AppState};

/// An authenticated client.
pub(crate) struct Caller(pub(crate) Arc<Client>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Self::from_headers(&parts.headers, state)
    }
}

impl Caller {
    /// The client whose key is in `headers`' `Authorization: Bearer`.
    pub(crate) fn from_headers(headers: &HeaderMap, state: &AppState) -> Result<Self, ApiError> {
        let header = headers.get(AUTHORIZATION).ok_or(ApiError::MissingKey)?;
        let text = header.to_str().map_err(|_| ApiError::UnknownKey)?;
        let (scheme, key) = text.split_once(' ').ok_or(ApiError::MissingKey)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::MissingKey);
        }
        state
            .access
            .authenticate(key.trim())
            .cloned()
            .map(Caller)
            .ok_or(ApiError::UnknownKey)
    }

    /// The slot of `provider` if this caller may use it. A provider that does not exist
    /// answers like one the caller may not use, so a key learns nothing about providers
    /// outside its scope; only an all-providers client is told it does not exist.
    pub(crate) fn slot<'a>(
        &self,
        state: &'a AppState,
        provider: &str,
    ) -> Result<&'a Slot, ApiError> {
        if !self.0.may_use(provider) {
            return Err(ApiError::Forbidden(provider.to_owned()));
        }
        state
            .broker
            .slot(provider)
            .ok_or_else(|| ApiError::UnknownProvider(provider.to_owned()))
    }
}
