//! Which identity a stored token belongs to. A provider's name in the config can be pointed
//! at another user or tenant (a new `username` in the login body, a new `token_url` or
//! `client_id`); the tokens stored under that name were obtained for the old one. Each token
//! and refresh token is therefore stored with a digest of the identity it was obtained for,
//! inside its sealed value, and one whose digest is not the configured identity's is never
//! handed out or sent to an issuer.
//!
//! A value stored before digests were (no stamp) is taken as the configured identity's: the
//! broker cannot tell, and refusing it would log every provider in again after an upgrade
//! and put every refresh token out of service. It is stamped when it is next replaced.

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::config::{IssuerConfig, OAuthClient, ProviderConfig, RefreshTokenConfig};
use crate::seal::{Purpose, Sealer};

/// What comes before the digest in a stamped value: no token starts with a NUL byte.
const STAMP: [u8; 2] = [0x00, 0x01];

/// A digest of an identity: what makes a provider's tokens its own.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Identity([u8; 32]);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(..)")
    }
}

impl Identity {
    /// The identity a provider's access tokens are obtained for: its issuer and what it
    /// presents there (the login URL and body; the token endpoint, the client and what it
    /// asks for).
    pub fn of_tokens(config: &ProviderConfig) -> Self {
        let mut digest = Fields::new();
        match &config.issuer {
            IssuerConfig::JsonLogin(login) => {
                digest.add(b"json_login");
                digest.add(login.login_url.as_str().as_bytes());
                digest.add(login.login_body.value().to_string().as_bytes());
            }
            IssuerConfig::ClientCredentials(cc) => {
                digest.add(b"oauth2_client_credentials");
                digest.client(&cc.client);
            }
            IssuerConfig::RefreshToken(rt) => {
                digest.add(b"oauth2_refresh_token");
                digest.client(&rt.client);
            }
        }
        digest.finish()
    }

    /// The identity a provider's refresh tokens belong to: its client at its token endpoint
    /// (not what it asks for, which a refresh token of the same client may narrow).
    pub fn of_refresh_tokens(config: &RefreshTokenConfig) -> Self {
        let mut digest = Fields::new();
        digest.add(b"refresh_token");
        digest.add(config.client.token_url.as_str().as_bytes());
        digest.add(config.client.client_id.as_bytes());
        digest.finish()
    }

    /// `secret` as it is sealed for this identity.
    fn stamp(&self, secret: &[u8]) -> Vec<u8> {
        [&STAMP[..], &self.0, secret].concat()
    }

    /// `secret` stamped as this identity's and sealed for `provider`'s row of `purpose`:
    /// what the store is given (opened again with [`Sealer::open`] and [`Identity::claim`]).
    pub fn seal(&self, sealer: &Sealer, provider: &str, purpose: Purpose, secret: &str) -> Vec<u8> {
        sealer.seal(provider, purpose, &self.stamp(secret.as_bytes()))
    }

    /// A digest of `secret` as this identity's (a configured refresh token): what the store
    /// keeps to know the token again once it was stored to be sent; never the token.
    pub fn digest_of(&self, secret: &str) -> [u8; 32] {
        let mut digest = Fields::new();
        digest.add(b"seed");
        digest.add(&self.0);
        digest.add(secret.as_bytes());
        digest.finish().0
    }

    /// The secret in an opened value, if the value is this identity's (or unstamped).
    pub fn claim(&self, opened: Vec<u8>) -> Option<Vec<u8>> {
        match opened.strip_prefix(&STAMP[..]) {
            None => Some(opened),
            Some(rest) => {
                let (digest, secret) = rest.split_at_checked(self.0.len())?;
                (digest == self.0).then(|| secret.to_vec())
            }
        }
    }
}

/// Length-prefixed fields into SHA-256, so that no two lists of fields hash alike.
struct Fields(Sha256);

impl Fields {
    fn new() -> Self {
        Self(Sha256::new())
    }

    fn add(&mut self, field: &[u8]) {
        self.0.update((field.len() as u64).to_be_bytes());
        self.0.update(field);
    }

    fn optional(&mut self, field: Option<&str>) {
        self.add(field.map_or(&b"\xff"[..], str::as_bytes));
    }

    fn client(&mut self, client: &OAuthClient) {
        self.add(client.token_url.as_str().as_bytes());
        self.add(client.client_id.as_bytes());
        self.optional(client.scope.as_deref());
        self.optional(client.audience.as_deref());
        for (name, value) in &client.extra_params {
            self.add(name.as_bytes());
            self.add(value.expose_secret().as_bytes());
        }
    }

    fn finish(self) -> Identity {
        Identity(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn tokens_of(provider: &str) -> Identity {
        let text = format!("[providers.p]\n{provider}");
        let mut config = Config::parse(&text).expect("valid");
        Identity::of_tokens(&config.providers.remove("p").unwrap())
    }

    fn login(username: &str) -> String {
        format!(
            "type = \"json_login\"\nlogin_url = \"http://cr/v1/authentication\"\n\
             login_body = {{ username = \"{username}\", apiKey = \"k\" }}\n"
        )
    }

    #[test]
    fn another_user_or_issuer_is_another_identity_and_timing_is_not() {
        let bot = tokens_of(&login("bot"));
        assert_eq!(
            bot,
            tokens_of(&format!("{}timeout = \"9s\"\n", login("bot")))
        );
        assert_ne!(bot, tokens_of(&login("other-bot")));
        let moved = login("bot").replace("http://cr/", "http://cr2/");
        assert_ne!(bot, tokens_of(&moved));
    }

    #[test]
    fn a_value_is_claimed_only_by_its_identity_or_unstamped() {
        let (bot, other) = (tokens_of(&login("bot")), tokens_of(&login("other-bot")));
        let stamped = bot.stamp(b"tok");
        assert_eq!(bot.claim(stamped.clone()).as_deref(), Some(&b"tok"[..]));
        assert_eq!(other.claim(stamped), None);
        assert_eq!(
            other.claim(b"legacy".to_vec()).as_deref(),
            Some(&b"legacy"[..])
        );
        assert_eq!(bot.claim(STAMP.to_vec()), None, "a stamp cut short");
    }
}
