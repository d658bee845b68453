//! Sealing secrets for storage: XChaCha20-Poly1305 under the master key, with the provider
//! and the row's purpose as associated data, so that a sealed value moved to another row or
//! another provider no longer opens.
//!
//! The store never sees a plaintext secret: the core seals before it writes and opens after
//! it reads. A sealed value is `version (1 byte) || nonce (24 bytes) || ciphertext+tag`.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretSlice, SecretString};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// The environment variable that holds the master key.
pub const MASTER_KEY_ENV: &str = "TOKENBROKER_MASTER_KEY";

/// What a sealed value is for; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A provider's access token.
    AccessToken,
    /// A provider's refresh token.
    RefreshToken,
    /// The store's own check that it is opened with the key it was sealed with.
    KeyCheck,
}

impl Purpose {
    /// The name bound into the associated data.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
            Self::KeyCheck => "key_check",
        }
    }
}

/// Why a master key could not be had or a value not opened. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "no master key: set {MASTER_KEY_ENV} or store.key_file to a key made by `tokenbroker keys master`"
    )]
    MissingKey,
    #[error(
        "the master key from {origin} is not 32 bytes of base64 (make one with `tokenbroker keys master`)"
    )]
    BadKey { origin: String },
    #[error("cannot read the master key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error(
        "a sealed value does not open with this master key (wrong key, or the row was altered or moved)"
    )]
    WrongKeyOrTampered,
}

/// The master key, loaded once. Holds the key bytes behind `secrecy`.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// The key from `TOKENBROKER_MASTER_KEY`, else from `key_file`.
    pub fn from_env_or_file(key_file: Option<&Path>) -> Result<Self, SealError> {
        if let Ok(text) = std::env::var(MASTER_KEY_ENV)
            && !text.trim().is_empty()
        {
            return Self::from_base64(&SecretString::from(text), MASTER_KEY_ENV);
        }
        let Some(path) = key_file else {
            return Err(SealError::MissingKey);
        };
        let text = std::fs::read_to_string(path).map_err(|e| SealError::KeyFile {
            path: path.display().to_string(),
            reason: e.kind().to_string(),
        })?;
        Self::from_base64(&SecretString::from(text), &path.display().to_string())
    }

    /// A key given as base64 text; `origin` names where it came from, for the error.
    pub fn from_base64(text: &SecretString, origin: &str) -> Result<Self, SealError> {
        let bad = || SealError::BadKey {
            origin: origin.to_owned(),
        };
        let bytes = SecretSlice::from(
            STANDARD
                .decode(text.expose_secret().trim())
                .map_err(|_| bad())?,
        );
        let cipher = XChaCha20Poly1305::new_from_slice(bytes.expose_secret()).map_err(|_| bad())?;
        Ok(Self { cipher })
    }

    /// Seals `plaintext` for `provider` and `purpose`.
    pub fn seal(&self, provider: &str, purpose: Purpose, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(provider, purpose);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens a value sealed for `provider` and `purpose`.
    pub fn open(
        &self,
        provider: &str,
        purpose: Purpose,
        sealed: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(SealError::WrongKeyOrTampered);
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let aad = associated_data(provider, purpose);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::WrongKeyOrTampered)
    }

    /// Opens a sealed string secret.
    pub fn open_string(
        &self,
        provider: &str,
        purpose: Purpose,
        sealed: &[u8],
    ) -> Result<SecretString, SealError> {
        let bytes = self.open(provider, purpose, sealed)?;
        String::from_utf8(bytes)
            .map(SecretString::from)
            .map_err(|_| SealError::WrongKeyOrTampered)
    }
}

fn associated_data(provider: &str, purpose: Purpose) -> Vec<u8> {
    format!("tokenbroker/v{VERSION}\0{provider}\0{}", purpose.as_str()).into_bytes()
}

/// A new random master key, base64.
pub fn new_master_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_base64(&SecretString::from(new_master_key()), "test").unwrap()
    }

    #[test]
    fn round_trips_and_binds_provider_and_purpose() {
        let s = sealer();
        let sealed = s.seal("cr", Purpose::AccessToken, b"tok");
        assert!(!sealed.windows(3).any(|w| w == b"tok"));
        assert_eq!(s.open("cr", Purpose::AccessToken, &sealed).unwrap(), b"tok");
        assert!(s.open("other", Purpose::AccessToken, &sealed).is_err());
        assert!(s.open("cr", Purpose::KeyCheck, &sealed).is_err());
        assert!(
            sealer().open("cr", Purpose::AccessToken, &sealed).is_err(),
            "another key"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(s.open("cr", Purpose::AccessToken, &tampered).is_err());
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let e =
            Sealer::from_base64(&SecretString::from("c2hvcnQ=".to_owned()), "TEST").unwrap_err();
        assert!(e.to_string().contains("TEST") && !e.to_string().contains("c2hvcnQ"));
        assert!(Sealer::from_base64(&SecretString::from("not base64!".to_owned()), "x").is_err());
    }
}
