//! Making and reading the emulators' JWTs.
//!
//! The tokens look like real HS256 JWTs so that the broker can read `exp` from them as it
//! would from a real issuer, but the signature is 32 random bytes: the emulators never verify
//! a token cryptographically or trust its payload. They compare the whole string against the
//! token they last issued, which is what makes a superseded token detectable. Keeping who is
//! current, and since when, is left to each emulator.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The payload of an emulator JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The user the token was issued to.
    pub(crate) sub: String,
    /// The session number, unique per emulator, so that two tokens of one user differ in
    /// content and not only in their random signature.
    pub(crate) sid: u64,
    /// Issued at, in whole seconds since the Unix epoch.
    pub(crate) iat: u64,
    /// Expiry, in whole seconds since the Unix epoch: what the broker reads to schedule a
    /// refresh.
    pub(crate) exp: u64,
}

/// The fixed JOSE header of every emulator JWT.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Builds a compact JWT carrying `claims`, with a random 32-byte signature.
pub(crate) fn mint(claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).expect("serializing plain JWT claims cannot fail");
    let signature: [u8; 32] = rand::random();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Reads the claims of a token made by [`mint`], or `None` if it is not shaped like one.
///
/// For inspection only (tests, logs): the answer says nothing about whether the token is
/// genuine or current.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn read(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Claims {
        Claims {
            sub: "api-bot".to_owned(),
            sid: 7,
            iat: 1_700_000_000,
            exp: 1_700_001_200,
        }
    }

    #[test]
    fn minted_token_reads_back_with_the_same_claims() {
        let token = mint(&sample());
        assert_eq!(read(&token), Some(sample()));
    }

    #[test]
    fn minted_token_has_the_hs256_header_and_a_32_byte_signature() {
        let token = mint(&sample());
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = URL_SAFE_NO_PAD
            .decode(parts[0])
            .expect("header is base64url");
        let header: serde_json::Value = serde_json::from_slice(&header).expect("header is JSON");
        assert_eq!(header, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
        let signature = URL_SAFE_NO_PAD
            .decode(parts[2])
            .expect("signature is base64url");
        assert_eq!(signature.len(), 32);
    }

    #[test]
    fn two_tokens_with_the_same_claims_differ() {
        assert_ne!(mint(&sample()), mint(&sample()));
    }

    #[test]
    fn garbage_is_not_read() {
        assert_eq!(read("not-a-jwt"), None);
        assert_eq!(read("a.b.c.d"), None);
        assert_eq!(read("e30.!!!.sig"), None);
    }
}
