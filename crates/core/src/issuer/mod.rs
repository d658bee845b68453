//! Issuers: the calls that obtain a token from a provider, and what can go wrong with them.
//!
//! An [`Issuer`] knows one provider type's wire protocol and nothing of caching, waiting
//! consumers or retries: those belong to the [`slot`](crate::slot), which calls `issue` at
//! most once at a time per provider. Every failure becomes an [`IssueError`] that names the
//! provider and the step, never a secret and never a URL's query.

mod answer;
mod json_login;
mod jwt;
mod oauth2;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::SecretString;

use crate::config::{IssuerConfig, ProviderConfig};
use crate::token::Token;
pub use json_login::JsonLogin;
pub use oauth2::OAuth2;

/// A freshly issued token, before the slot numbers it.
#[derive(Debug)]
pub struct Issued {
    /// The token itself.
    pub access_token: SecretString,
    /// When the request that produced it was sent: an `expires_in` counts from here.
    pub issued_at: SystemTime,
    /// When the issuer stops accepting it.
    pub expires_at: SystemTime,
    /// Whether it came from a login or from exchanging the previous token.
    pub how: Issuance,
}

/// What one request to the issuer came to.
#[derive(Debug)]
pub struct Answer {
    /// The new token, or why there is none.
    pub result: Result<Issued, IssueError>,
    /// What the answer says of the refresh token that was sent. It is kept apart from
    /// `result` because it holds whatever became of the access token: a rotated refresh
    /// token must be stored even when the access token beside it is unusable, since the one
    /// sent is spent.
    pub rotation: Rotation,
    /// Whether a token answer came (a 2xx JSON answer), usable here or not: the issuer
    /// acted, and for a single-session provider ended the current session.
    pub token_answer: bool,
}

/// What a token answer says of the refresh token the request sent, if any.
#[derive(Debug)]
pub enum Rotation {
    /// A token answer with a new refresh token: this one, and the one sent is spent.
    Rotated(SecretString),
    /// A token answer without one, or to a request that sent none: a refresh token sent
    /// stays valid.
    Unchanged,
    /// A token answer whose `refresh_token` cannot be read: the one sent may be spent.
    Unreadable,
    /// It is not known: no token answer came (an error, no answer at all), or one with
    /// neither an access token nor (if one was sent) a refresh token, which still counts
    /// as a token answer (`Answer::token_answer`).
    Unknown,
}

impl Answer {
    /// Whether the issuer handed out a token, usable here or not: a token answer came. For a
    /// single-session provider that ended the current session.
    pub fn handed_out_a_token(&self) -> bool {
        self.result.is_ok() || self.token_answer
    }
}

impl From<Result<Issued, IssueError>> for Answer {
    /// An answer that says nothing of a refresh token.
    fn from(result: Result<Issued, IssueError>) -> Self {
        Self {
            result,
            rotation: Rotation::Unknown,
            token_answer: false,
        }
    }
}

impl From<IssueError> for Answer {
    fn from(error: IssueError) -> Self {
        Err(error).into()
    }
}

/// What an issuance may use besides the issuer's own settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct IssueInput<'a> {
    /// The token being replaced, to exchange for a new one: given only while it is in
    /// service and valid, and used only by an issuer that
    /// [exchanges tokens](Issuer::exchanges_tokens).
    pub current: Option<&'a Token>,
    /// The current refresh token (for refresh-token grants).
    pub refresh_token: Option<&'a SecretString>,
}

/// How a token was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuance {
    Login,
    Refresh,
}

impl Issuance {
    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Refresh => "refresh",
        }
    }
}

/// Obtains tokens for one provider.
#[async_trait]
pub trait Issuer: Send + Sync + 'static {
    /// Obtains a new token with one request: by exchanging `input.current` if it is given
    /// and the issuer [exchanges tokens](Self::exchanges_tokens), else by logging in.
    async fn issue(&self, input: IssueInput<'_>) -> Answer;

    /// Whether a still-valid token can be exchanged for a new one. The driver then asks for
    /// an exchange first, and logs in with a request of its own if the exchange is refused,
    /// so that the issuance ledger counts every request the issuer sees.
    fn exchanges_tokens(&self) -> bool {
        false
    }

    /// Whether it ends the current token's session when the broker stops
    /// ([`log_out_on_shutdown`](Self::log_out_on_shutdown)).
    fn logs_out_on_shutdown(&self) -> bool {
        false
    }

    /// Ends the session of a token the broker is about to discard when the broker stops;
    /// returns whether it did (issuers without a logout do nothing).
    async fn log_out_on_shutdown(&self, _token: &Token) -> Result<bool, IssueError> {
        Ok(false)
    }
}

/// The HTTP client of one provider's issuer: every call bounded by `timeout`, and making
/// its connection by half of that. So an issuer that cannot be reached (a dropped SYN)
/// fails as "unreachable" before the driver's own bound of `timeout` ends the attempt as a
/// timeout: a request that never left, which a refresh token's intent must not outlive.
fn http_client(provider: &str, timeout: Duration) -> Result<reqwest::Client, IssueError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout / 2)
        .user_agent(concat!("tokenbroker/", env!("CARGO_PKG_VERSION")))
        // A redirect would re-send credentials (a refresh token, a client secret) to
        // wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| IssueError::Setup {
            provider: provider.to_owned(),
            reason: e.to_string(),
        })
}

/// Builds the issuer a provider's config describes.
pub fn for_provider(config: &ProviderConfig) -> Result<Box<dyn Issuer>, IssueError> {
    match &config.issuer {
        IssuerConfig::JsonLogin(login) => Ok(Box::new(JsonLogin::new(config, login.clone())?)),
        IssuerConfig::ClientCredentials(cc) => Ok(Box::new(OAuth2::client_credentials(
            &config.name,
            cc.client.clone(),
            config.timeout,
        )?)),
        IssuerConfig::RefreshToken(rt) => Ok(Box::new(OAuth2::refresh_token(
            &config.name,
            rt.client.clone(),
            config.timeout,
        )?)),
    }
}

/// Why an issuance failed. Messages name the provider and the step; they never carry a
/// token, a credential, or a URL's query.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssueError {
    #[error(
        "{provider}: the issuer rejected the credentials (HTTP {status}){}",
        detail_suffix(detail)
    )]
    BadCredentials {
        provider: String,
        status: u16,
        detail: Option<String>,
    },
    #[error("{provider}: the issuer is rate limiting (HTTP 429){}", retry_suffix(*retry_after))]
    RateLimited {
        provider: String,
        retry_after: Option<Duration>,
    },
    #[error("{provider}: the issuer at {endpoint} is unreachable: {reason}")]
    Unreachable {
        provider: String,
        endpoint: String,
        reason: String,
        /// The connection itself failed, so the issuer cannot have seen the request.
        connect: bool,
    },
    #[error("{provider}: the issuer is unavailable (HTTP {status}){}", retry_suffix(*retry_after))]
    Unavailable {
        provider: String,
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("{provider}: the issuer did not answer within {}", humantime::format_duration(*timeout))]
    Timeout { provider: String, timeout: Duration },
    #[error("{provider}: the issuer's answer is unusable: {reason}")]
    Malformed { provider: String, reason: String },
    #[error(
        "{provider}: the issuer refused the request (HTTP {status}){}",
        detail_suffix(detail)
    )]
    Refused {
        provider: String,
        status: u16,
        detail: Option<String>,
    },
    /// An RFC 6749 §5.2 error answer.
    #[error("{provider}: the issuer answered {} (HTTP {status}){}", error.code(), detail_suffix(description))]
    OAuth {
        provider: String,
        status: u16,
        error: OAuthError,
        description: Option<String>,
    },
    /// `max_issuances` allows no issuance request now.
    #[error("{provider}: the issuance budget (max_issuances) is used up{}", retry_suffix(Some(*retry_after)))]
    BudgetExhausted {
        provider: String,
        retry_after: Duration,
    },
    /// `max_active_tokens` unexpired tokens are out already.
    #[error("{provider}: max_active_tokens live tokens are out{}", retry_suffix(Some(*retry_after)))]
    TokenCapReached {
        provider: String,
        retry_after: Duration,
    },
    /// The refresh token is no longer usable: a person must provide a new one with
    /// `tokenbroker reseed`.
    #[error(
        "{provider}: needs credentials: {reason}; run `tokenbroker reseed {provider}` with a new refresh token"
    )]
    NeedsCredentials { provider: String, reason: String },
    #[error("{provider}: cannot set up the issuer client: {reason}")]
    Setup { provider: String, reason: String },
    /// The token was obtained but could not be stored, so it is not handed out: a token is
    /// committed to the store before anyone receives it.
    #[error("{provider}: cannot store the new token: {reason}")]
    Store { provider: String, reason: String },
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

fn retry_suffix(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {}", humantime::format_duration(d)))
        .unwrap_or_default()
}

impl IssueError {
    /// A short, stable name for metrics labels and the API's error codes.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadCredentials { .. } => "bad_credentials",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unreachable { .. } => "unreachable",
            Self::Unavailable { .. } => "unavailable",
            Self::Timeout { .. } => "timeout",
            Self::Malformed { .. } => "malformed",
            Self::Refused { .. } => "refused",
            Self::Setup { .. } => "setup",
            Self::Store { .. } => "store",
            Self::OAuth { error, .. } => error.code(),
            Self::BudgetExhausted { .. } => "budget_exhausted",
            Self::TokenCapReached { .. } => "token_cap_reached",
            Self::NeedsCredentials { .. } => "needs_credentials",
        }
    }

    /// The wait the issuer asked for, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Unavailable { retry_after, .. } => {
                *retry_after
            }
            Self::BudgetExhausted { retry_after, .. }
            | Self::TokenCapReached { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether the issuer certainly did not act on the request: it was never delivered, or
    /// the issuer answered with a client error or a rate limit. Anything else (a timeout,
    /// a connection lost after sending, a 5xx from a gateway, an unreadable answer) may
    /// have rotated a refresh token or issued a token.
    pub fn certainly_not_acted_on(&self) -> bool {
        match self {
            Self::Unreachable { connect, .. } => *connect,
            Self::BadCredentials { .. }
            | Self::Refused { .. }
            | Self::OAuth { .. }
            | Self::RateLimited { .. }
            | Self::Setup { .. }
            | Self::BudgetExhausted { .. }
            | Self::TokenCapReached { .. }
            | Self::NeedsCredentials { .. } => true,
            Self::Unavailable { .. }
            | Self::Timeout { .. }
            | Self::Malformed { .. }
            | Self::Store { .. } => false,
        }
    }

    /// Whether the issuer said no to this request (as opposed to not answering): a refused
    /// token exchange is followed by a fresh login.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::BadCredentials { .. } | Self::Refused { .. } | Self::OAuth { .. }
        )
    }
}

/// The error codes of RFC 6749 §5.2 (and RFC 8628's `slow_down`, which token endpoints
/// use for rate limiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest,
    InvalidClient,
    /// The refresh token (or grant) is invalid, expired, revoked or reused.
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    SlowDown,
    TemporarilyUnavailable,
}

impl OAuthError {
    const ALL: [Self; 8] = [
        Self::InvalidRequest,
        Self::InvalidClient,
        Self::InvalidGrant,
        Self::UnauthorizedClient,
        Self::UnsupportedGrantType,
        Self::InvalidScope,
        Self::SlowDown,
        Self::TemporarilyUnavailable,
    ];

    /// The code as registered.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::SlowDown => "slow_down",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    /// The error a registered code names.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }
}
