//! The settings of the OAuth2 provider types: `oauth2_client_credentials` and
//! `oauth2_refresh_token`.

use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;

use super::Problem;
use super::table::Table;

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret.
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post,
}

/// An OAuth2 client at one token endpoint.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub token_url: Url,
    pub client_id: String,
    /// Absent for public clients (refresh-token grants only).
    pub client_secret: Option<SecretString>,
    pub auth_method: AuthMethod,
    /// Sent as `scope` when set.
    pub scope: Option<String>,
    /// Sent as `audience` when set (Auth0 and others).
    pub audience: Option<String>,
    /// More form parameters the issuer wants (`extra_params = { resource = "..." }`).
    pub extra_params: Vec<(String, SecretString)>,
}

/// `type = "oauth2_client_credentials"`.
#[derive(Debug, Clone)]
pub struct ClientCredentialsConfig {
    pub client: OAuthClient,
}

/// `type = "oauth2_refresh_token"`.
#[derive(Debug, Clone)]
pub struct RefreshTokenConfig {
    pub client: OAuthClient,
    /// The first refresh token; rotated ones live in the store.
    pub refresh_token: SecretString,
    /// How long the issuer still accepts a refresh token after its first use: within it, an
    /// interrupted refresh may be retried with the same token.
    pub refresh_token_grace: Duration,
}

pub(super) fn client_credentials(
    t: &mut Table<'_>,
    problems: &mut Vec<Problem>,
) -> Option<ClientCredentialsConfig> {
    let client = client(t, true, problems)?;
    Some(ClientCredentialsConfig { client })
}

pub(super) fn refresh_token(
    t: &mut Table<'_>,
    problems: &mut Vec<Problem>,
) -> Option<RefreshTokenConfig> {
    let client = client(t, false, problems);
    let refresh_token = t.secret("refresh_token", problems);
    let refresh_token = t.require("refresh_token", refresh_token, problems);
    let refresh_token_grace = t
        .duration("refresh_token_grace", problems)
        .unwrap_or(Duration::ZERO);
    Some(RefreshTokenConfig {
        client: client?,
        refresh_token: refresh_token?,
        refresh_token_grace,
    })
}

fn client(
    t: &mut Table<'_>,
    secret_required: bool,
    problems: &mut Vec<Problem>,
) -> Option<OAuthClient> {
    let token_url = t.url("token_url", problems);
    let token_url = t.require("token_url", token_url, problems);
    let client_id = t.string("client_id", problems);
    let client_id = t.require("client_id", client_id, problems);
    let client_secret = t.secret("client_secret", problems);
    let client_secret = if secret_required {
        t.require("client_secret", client_secret, problems)
            .map(Some)
    } else {
        Some(client_secret)
    };
    let auth_method = match t.string("auth_method", problems) {
        None | Some("basic") => Some(AuthMethod::Basic),
        Some("post") => Some(AuthMethod::Post),
        Some(other) => {
            problems.push(Problem::new(
                t.key("auth_method"),
                format!("expected \"basic\" or \"post\", found {other:?}"),
            ));
            None
        }
    };
    let scope = t.string("scope", problems).map(str::to_owned);
    let audience = t.string("audience", problems).map(str::to_owned);
    let extra_params = match t.table("extra_params", problems) {
        Some(mut extra) => {
            let mut params = Vec::new();
            for name in extra.keys() {
                if let Some(value) = extra.secret(name, problems) {
                    params.push((name.to_owned(), value));
                }
            }
            extra.finish(problems);
            params
        }
        None => Vec::new(),
    };
    Some(OAuthClient {
        token_url: token_url?,
        client_id: client_id?.to_owned(),
        client_secret: client_secret?,
        auth_method: auth_method?,
        scope,
        audience,
        extra_params,
    })
}
