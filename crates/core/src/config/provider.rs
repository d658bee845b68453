//! `[providers.NAME]`: the settings every provider type shares, and each type's own.

use std::fmt;
use std::time::Duration;

use reqwest::Url;

use super::Problem;
use super::oauth2::{self, ClientCredentialsConfig, RefreshTokenConfig};
use super::secret_ref;
use super::table::{MAX_DURATION, Table};

/// One identity the broker owns tokens for.
#[derive(Debug)]
pub struct ProviderConfig {
    /// The name under `[providers]`: the API path, metric label and log field.
    pub name: String,
    /// How tokens are obtained.
    pub issuer: IssuerConfig,
    /// How long before expiry a token is replaced; `None` means a fifth of the token's
    /// lifetime, at most five minutes.
    pub refresh_before: Option<Duration>,
    /// A new issuance invalidates the previous token (Control Room, some OAuth2 servers).
    pub single_session: bool,
    /// The header the upstream API wants the token in.
    pub header: String,
    /// Put before the token in that header, e.g. `"Bearer "`.
    pub prefix: String,
    /// The upstream API's base URL (used by the proxy).
    pub upstream: Option<Url>,
    /// The limit on each issuer call, and on how long a consumer waits for an issuance.
    pub timeout: Duration,
    /// A token is handed out only while it has at least this long left.
    pub min_validity: Duration,
    /// The first retry delay after a failed issuance; it doubles per failure.
    pub backoff_min: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// Never ask the issuer more often than this, counted across restarts.
    pub max_issuances: Option<IssuanceBudget>,
    /// Never hold more unexpired tokens than this (issuers that cap a client's live tokens).
    pub max_active_tokens: Option<u32>,
    /// How the proxy reaches the upstream API.
    pub proxy: ProxyConfig,
}

/// The reverse proxy's settings for one provider.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long a single-session rotation waits for proxied requests on the old token.
    pub drain_timeout: Duration,
    /// How long the upstream may take to start answering (and between body chunks).
    pub upstream_timeout: Duration,
    /// Upstream statuses that mean "token rejected": invalidate and retry once.
    pub retry_statuses: Vec<u16>,
    /// Request bodies up to this size are buffered so a rejected request can be replayed.
    pub retry_body_limit: u64,
    /// Request bodies larger than this are refused (413).
    pub max_request_body: u64,
    /// Extra trusted roots (PEM) for the upstream's TLS, beside the system's.
    pub upstream_ca: Option<std::path::PathBuf>,
}

/// How a provider's tokens are obtained, per `type`.
#[derive(Debug)]
pub enum IssuerConfig {
    /// `type = "json_login"`: POST a JSON body, read the token from the JSON answer.
    JsonLogin(JsonLoginConfig),
    /// `type = "oauth2_client_credentials"`: RFC 6749 §4.4.
    ClientCredentials(ClientCredentialsConfig),
    /// `type = "oauth2_refresh_token"`: RFC 6749 §6, with rotating refresh tokens.
    RefreshToken(RefreshTokenConfig),
}

/// `max_issuances = "N/period"`: at most `count` issuance requests in any `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuanceBudget {
    pub count: u32,
    pub period: Duration,
}

/// `type = "json_login"` (Automation Anywhere Control Room and its kind).
#[derive(Debug, Clone)]
pub struct JsonLoginConfig {
    /// Where to POST the login body.
    pub login_url: Url,
    /// The login body, secret references resolved.
    pub login_body: JsonTemplate,
    /// RFC 6901 pointer to the token in the login (and refresh) answer.
    pub token_pointer: String,
    /// The token lifetime when neither a JWT `exp` nor `expires_in` says.
    pub lifetime: Duration,
    /// Where to exchange a still-valid token for a new one instead of logging in.
    pub refresh_url: Option<Url>,
    /// The refresh body; `${token}` in a string stands for the current token.
    pub refresh_body: Option<JsonTemplate>,
    /// Where to end a token's session (POST with the token in the provider's header).
    pub logout_url: Option<Url>,
    /// Log the current token out when the broker stops, so that a single-session user is
    /// not left logged in. Off by default: a restart then logs in again instead of reusing
    /// the stored token.
    pub logout_on_shutdown: bool,
}

/// A JSON body that may hold secrets: it never prints its content.
#[derive(Clone)]
pub struct JsonTemplate(serde_json::Value);

impl JsonTemplate {
    /// The body with every `${token}` replaced by `token`.
    pub fn render(&self, token: &str) -> serde_json::Value {
        fn fill(value: &serde_json::Value, token: &str) -> serde_json::Value {
            match value {
                serde_json::Value::String(s) => {
                    serde_json::Value::String(s.replace("${token}", token))
                }
                serde_json::Value::Array(items) => {
                    serde_json::Value::Array(items.iter().map(|v| fill(v, token)).collect())
                }
                serde_json::Value::Object(map) => serde_json::Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.clone(), fill(v, token)))
                        .collect(),
                ),
                other => other.clone(),
            }
        }
        fill(&self.0, token)
    }

    /// The body as it is (for a login body, which holds no placeholder).
    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }
}

impl fmt::Debug for JsonTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsonTemplate([redacted])")
    }
}

const KNOWN_TYPES: &str = "json_login, oauth2_client_credentials, oauth2_refresh_token";

impl ProviderConfig {
    pub(crate) fn from_table(
        name: &str,
        mut t: Table<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let before = problems.len();
        let kind = t.string("type", problems);
        let kind = t.require("type", kind, problems);
        let issuer = match kind {
            Some("json_login") => json_login(&mut t, problems).map(IssuerConfig::JsonLogin),
            Some("oauth2_client_credentials") => {
                oauth2::client_credentials(&mut t, problems).map(IssuerConfig::ClientCredentials)
            }
            Some("oauth2_refresh_token") => {
                oauth2::refresh_token(&mut t, problems).map(IssuerConfig::RefreshToken)
            }
            Some(other) => {
                problems.push(Problem::new(
                    t.key("type"),
                    format!("unknown provider type {other:?}; known: {KNOWN_TYPES}"),
                ));
                return None;
            }
            None => return None,
        };
        let refresh_before = t.duration("refresh_before", problems);
        let single_session = t
            .bool("single_session", problems)
            .unwrap_or(matches!(issuer, Some(IssuerConfig::JsonLogin(_))));
        let header = t.string("header", problems).unwrap_or("Authorization");
        if !is_header_name(header) {
            problems.push(Problem::new(
                t.key("header"),
                "not a valid HTTP header name",
            ));
        }
        let prefix = t.string("prefix", problems).unwrap_or("Bearer ");
        if prefix.chars().any(|c| c.is_control()) {
            problems.push(Problem::new(
                t.key("prefix"),
                "control characters are not allowed",
            ));
        }
        let upstream = t.url("upstream", problems);
        let timeout = t
            .duration("timeout", problems)
            .unwrap_or(Duration::from_secs(10));
        let min_validity = t
            .duration("min_validity", problems)
            .unwrap_or(Duration::from_secs(1));
        let backoff_min = t
            .duration("backoff_min", problems)
            .unwrap_or(Duration::from_secs(1));
        let backoff_max = t
            .duration("backoff_max", problems)
            .unwrap_or(Duration::from_secs(60));
        if timeout.is_zero() {
            problems.push(Problem::new(t.key("timeout"), "must be longer than zero"));
        }
        if backoff_min.is_zero() || backoff_max < backoff_min {
            problems.push(Problem::new(
                t.key("backoff_max"),
                "backoff_min must be above zero and backoff_max at least backoff_min",
            ));
        }
        let max_issuances =
            t.string("max_issuances", problems)
                .and_then(|text| match parse_budget(text) {
                    Some(budget) => Some(budget),
                    None => {
                        problems.push(Problem::new(
                            t.key("max_issuances"),
                            format!(
                                "expected \"N/period\" such as \"10/10m\", N at least 1 and \
                                 a period of at most a year, found {text:?}"
                            ),
                        ));
                        None
                    }
                });
        let proxy = proxy_config(&mut t, problems);
        let max_active_tokens = t.integer("max_active_tokens", problems).and_then(|n| {
            let n = u32::try_from(n).ok().filter(|n| *n >= 1);
            if n.is_none() {
                problems.push(Problem::new(
                    t.key("max_active_tokens"),
                    "must be at least 1",
                ));
            }
            n
        });
        t.finish(problems);
        if problems.len() > before {
            return None;
        }
        Some(Self {
            name: name.to_owned(),
            issuer: issuer?,
            refresh_before,
            single_session,
            header: header.to_owned(),
            prefix: prefix.to_owned(),
            upstream,
            timeout,
            min_validity,
            backoff_min,
            backoff_max,
            max_issuances,
            max_active_tokens,
            proxy,
        })
    }

    /// How long before `expires_at` a token of `lifetime` is replaced: the configured
    /// `refresh_before`, or a fifth of the lifetime capped at five minutes; never more than
    /// half the lifetime, so a short-lived token is not replaced the moment it arrives.
    pub fn refresh_lead(&self, lifetime: Duration) -> Duration {
        let lead = self
            .refresh_before
            .unwrap_or_else(|| (lifetime / 5).min(Duration::from_secs(300)));
        lead.min(lifetime / 2)
    }
}

fn json_login(t: &mut Table<'_>, problems: &mut Vec<Problem>) -> Option<JsonLoginConfig> {
    let login_url = t.url("login_url", problems);
    let login_url = t.require("login_url", login_url, problems);
    let login_body = json_body(t, "login_body", false, problems);
    let login_body = t.require("login_body", login_body, problems);
    let token_pointer = t.string("token_pointer", problems).unwrap_or("/token");
    if !token_pointer.is_empty() && !token_pointer.starts_with('/') {
        problems.push(Problem::new(
            t.key("token_pointer"),
            "an RFC 6901 pointer starts with \"/\", e.g. \"/token\"",
        ));
    }
    let lifetime = t
        .duration("lifetime", problems)
        .unwrap_or(Duration::from_secs(20 * 60));
    if lifetime < Duration::from_secs(2) {
        problems.push(Problem::new(t.key("lifetime"), "must be at least 2s"));
    }
    let refresh_url = t.url("refresh_url", problems);
    let refresh_body = json_body(t, "refresh_body", true, problems);
    if refresh_url.is_some() != refresh_body.is_some() {
        problems.push(Problem::new(
            t.key("refresh_url"),
            "refresh_url and refresh_body go together",
        ));
    }
    let logout_url = t.url("logout_url", problems);
    let logout_on_shutdown = t.bool("logout_on_shutdown", problems).unwrap_or(false);
    if logout_on_shutdown && logout_url.is_none() {
        problems.push(Problem::new(
            t.key("logout_on_shutdown"),
            "needs logout_url",
        ));
    }
    Some(JsonLoginConfig {
        login_url: login_url?,
        login_body: login_body?,
        token_pointer: token_pointer.to_owned(),
        lifetime,
        refresh_url,
        refresh_body,
        logout_url,
        logout_on_shutdown,
    })
}

/// A TOML table as a JSON body, with every secret reference in its strings resolved.
fn json_body(
    t: &mut Table<'_>,
    name: &'static str,
    allow_token: bool,
    problems: &mut Vec<Problem>,
) -> Option<JsonTemplate> {
    let key = t.key(name);
    let value = t.value(name)?;
    if !value.is_table() {
        problems.push(Problem::new(
            key,
            format!("expected a table, found {}", value.type_str()),
        ));
        return None;
    }
    let before = problems.len();
    let json = to_json(value, &key, allow_token, problems);
    (problems.len() == before).then_some(JsonTemplate(json))
}

fn to_json(
    value: &toml::Value,
    key: &str,
    allow_token: bool,
    problems: &mut Vec<Problem>,
) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => match secret_ref::resolve(s, allow_token) {
            Ok(resolved) => J::String(resolved),
            Err(e) => {
                problems.push(Problem::new(key, e.to_string()));
                J::Null
            }
        },
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => J::from(*f),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{key}[{i}]"), allow_token, problems))
                .collect(),
        ),
        toml::Value::Table(map) => J::Object(
            map.iter()
                .map(|(k, v)| {
                    let json = to_json(v, &format!("{key}.{k}"), allow_token, problems);
                    (k.clone(), json)
                })
                .collect(),
        ),
    }
}

fn proxy_config(t: &mut Table<'_>, problems: &mut Vec<Problem>) -> ProxyConfig {
    let drain_timeout = t
        .duration("drain_timeout", problems)
        .unwrap_or(Duration::from_secs(10));
    let upstream_timeout = t
        .duration("upstream_timeout", problems)
        .unwrap_or(Duration::from_secs(30));
    if upstream_timeout.is_zero() {
        problems.push(Problem::new(
            t.key("upstream_timeout"),
            "must be longer than zero",
        ));
    }
    let retry_statuses = match t.value("retry_statuses") {
        None => vec![401],
        Some(value) => {
            let statuses: Option<Vec<u16>> = value.as_array().and_then(|items| {
                items
                    .iter()
                    .map(|v| {
                        v.as_integer()
                            .and_then(|n| u16::try_from(n).ok())
                            .filter(|n| matches!(n, 401 | 403))
                    })
                    .collect()
            });
            statuses.unwrap_or_else(|| {
                problems.push(Problem::new(
                    t.key("retry_statuses"),
                    "expected a list of 401 and/or 403 (the statuses that mean a rejected token)",
                ));
                Vec::new()
            })
        }
    };
    let retry_body_limit = t.size("retry_body_limit", problems).unwrap_or(1 << 20);
    let max_request_body = t.size("max_request_body", problems).unwrap_or(100 << 20);
    let upstream_ca = t
        .string("upstream_ca", problems)
        .map(std::path::PathBuf::from);
    ProxyConfig {
        upstream_ca,
        drain_timeout,
        upstream_timeout,
        retry_statuses,
        retry_body_limit,
        max_request_body,
    }
}

/// `"N/period"`, e.g. `"10/10m"`.
fn parse_budget(text: &str) -> Option<IssuanceBudget> {
    let (count, period) = text.split_once('/')?;
    let count = count.trim().parse().ok().filter(|n| *n >= 1)?;
    let period = humantime::parse_duration(period.trim())
        .ok()
        .filter(|p| !p.is_zero() && *p <= MAX_DURATION)?;
    Some(IssuanceBudget { count, period })
}

/// An RFC 9110 token: the characters a header name may hold.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
