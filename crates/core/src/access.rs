//! Client keys: how a presented key becomes a client, and which providers that client may
//! reach (SPEC guarantee 10).
//!
//! Only SHA-256 hashes of keys are configured; a presented key is hashed and compared with
//! every client's hash in constant time, so neither the config nor the timing of a refusal
//! tells anything about a key.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, ProviderScope};

/// The prefix of every key `tokenbroker keys new` makes, so that a leaked key is
/// recognisable (secret scanners, logs).
pub const KEY_PREFIX: &str = "tbk_";

/// A configured consumer.
#[derive(Debug, Clone)]
pub struct Client {
    /// The name under `[clients]`, for logs.
    pub name: String,
    key_sha256: [u8; 32],
    /// The providers it may get tokens for.
    pub scope: ProviderScope,
    /// May read the operators' view.
    pub admin: bool,
}

impl Client {
    /// Whether this client may get tokens of `provider`.
    pub fn may_use(&self, provider: &str) -> bool {
        self.scope.allows(provider)
    }
}

/// Every configured client, for looking up presented keys.
#[derive(Debug, Clone, Default)]
pub struct Access {
    clients: Vec<Arc<Client>>,
}

impl Access {
    /// The clients of `config`.
    pub fn from_config(config: &Config) -> Self {
        let clients = config
            .clients
            .iter()
            .map(|(name, c)| {
                Arc::new(Client {
                    name: name.clone(),
                    key_sha256: c.key_sha256,
                    scope: c.providers.clone(),
                    admin: c.admin,
                })
            })
            .collect();
        Self { clients }
    }

    /// The client whose key this is, if any. Every client's hash is compared, whether or
    /// not an earlier one matched.
    /// Shared, so that a request holds its client without copying it.
    pub fn authenticate(&self, presented: &str) -> Option<&Arc<Client>> {
        let hash = key_sha256(presented);
        let mut found = None;
        for client in &self.clients {
            if bool::from(client.key_sha256.ct_eq(&hash)) {
                found = Some(client);
            }
        }
        found
    }
}

/// The SHA-256 of a client key, as configured in `key_sha256`.
pub fn key_sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random client key: the prefix and 32 random bytes, base64url.
pub fn new_client_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Lowercase hex, for printing a key hash into config lines.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_by_hash_and_scopes_providers() {
        let key = new_client_key();
        assert!(key.starts_with(KEY_PREFIX));
        let text = format!(
            "[providers.a]\ntype = \"json_login\"\nlogin_url = \"http://127.0.0.1:9/\"\nlogin_body = {{ u = \"x\" }}\n\
             [providers.b]\ntype = \"json_login\"\nlogin_url = \"http://127.0.0.1:9/\"\nlogin_body = {{ u = \"x\" }}\n\
             [clients.only-a]\nkey_sha256 = \"{}\"\nproviders = [\"a\"]\n",
            hex(&key_sha256(&key))
        );
        let access = Access::from_config(&Config::parse(&text).unwrap());
        let client = access.authenticate(&key).expect("the key authenticates");
        assert_eq!(client.name, "only-a");
        assert!(client.may_use("a"));
        assert!(!client.may_use("b"));
        assert!(access.authenticate("tbk_wrong").is_none());
    }
}
