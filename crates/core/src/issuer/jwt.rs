//! Reading a JWT's `exp` claim, unverified: the broker only needs to know when the issuer
//! will stop accepting the token; verifying it is the upstream API's business.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The `exp` of `token` if it is a JWT that has one.
pub(crate) fn expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    let since_epoch = Duration::try_from_secs_f64(exp).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_exp() {
        assert_eq!(
            expiry(&jwt(r#"{"sub":"bot","exp":1700000000}"#)),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn ignores_what_is_not_a_jwt_with_exp() {
        assert_eq!(expiry("opaque-token"), None);
        assert_eq!(expiry(&jwt(r#"{"sub":"bot"}"#)), None);
        assert_eq!(expiry("a.!!!.c"), None);
        assert_eq!(expiry(&jwt(r#"{"exp":1e300}"#)), None, "no overflow");
        assert_eq!(expiry(&jwt(r#"{"exp":-5}"#)), None);
        assert_eq!(expiry(&format!("{}.x", jwt(r#"{"exp":1}"#))), None);
    }
}
