//! Decoding `application/x-www-form-urlencoded` (RFC 6749 appendix B), as token requests
//! and the credentials of `client_secret_basic` need it.
//!
//! Strict where OAuth2 is: a parameter given twice is refused (§3.2) and an empty value
//! counts as absent (§3.1); malformed percent-escapes and non-UTF-8 are refused too.

use std::collections::HashMap;
use std::fmt;

/// A decoded form body: each parameter at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Form {
    /// Values by name, decoded.
    params: HashMap<String, String>,
}

/// Why a body is not an acceptable form; shown to the client as an `invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FormError {
    /// A name or a value is not valid percent-encoded UTF-8.
    Malformed,
    /// A parameter is given more than once.
    Repeated(String),
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("the body is not a valid form-urlencoded form"),
            Self::Repeated(name) => write!(f, "parameter {name} is given more than once"),
        }
    }
}

impl Form {
    /// Decodes a form body.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, FormError> {
        let body = std::str::from_utf8(body).map_err(|_| FormError::Malformed)?;
        let mut params = HashMap::new();
        for pair in body.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name).ok_or(FormError::Malformed)?;
            let value = decode(value).ok_or(FormError::Malformed)?;
            if params.contains_key(&name) {
                return Err(FormError::Repeated(name));
            }
            params.insert(name, value);
        }
        Ok(Self { params })
    }

    /// The value of `name`, if given and not empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }
}

/// Decodes one form component: `+` is a space and `%XY` the byte `0xXY`; the result must be
/// UTF-8.
pub(crate) fn decode(component: &str) -> Option<String> {
    let mut decoded = Vec::with_capacity(component.len());
    let mut bytes = component.bytes();
    while let Some(byte) = bytes.next() {
        decoded.push(match byte {
            b'+' => b' ',
            b'%' => {
                let high = hex_digit(bytes.next()?)?;
                let low = hex_digit(bytes.next()?)?;
                high << 4 | low
            }
            other => other,
        });
    }
    String::from_utf8(decoded).ok()
}

/// The value of one hexadecimal digit.
fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_and_percent_escapes() {
        assert_eq!(decode("p%40ss+w%2Brd").as_deref(), Some("p@ss w+rd"));
        assert_eq!(decode("svc%3a1").as_deref(), Some("svc:1"));
        assert_eq!(decode("%C3%A9t%C3%A9").as_deref(), Some("été"));
        assert_eq!(decode("").as_deref(), Some(""));
    }

    #[test]
    fn refuses_broken_escapes_and_non_utf8() {
        assert_eq!(decode("%"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%+1"), None);
        assert_eq!(decode("%FF"), None);
    }

    #[test]
    fn parses_pairs_and_treats_empty_values_as_absent() {
        let form = Form::parse(b"grant_type=client_credentials&scope=read+write&audience=&x")
            .expect("a valid form");
        assert_eq!(form.get("grant_type"), Some("client_credentials"));
        assert_eq!(form.get("scope"), Some("read write"));
        assert_eq!(form.get("audience"), None);
        assert_eq!(form.get("x"), None);
        assert_eq!(form.get("missing"), None);
        assert_eq!(Form::parse(b""), Ok(Form::default()));
    }

    #[test]
    fn refuses_repeated_parameters_and_malformed_bodies() {
        assert_eq!(
            Form::parse(b"scope=a&scope=b"),
            Err(FormError::Repeated("scope".to_owned()))
        );
        assert_eq!(Form::parse(b"a=%zz"), Err(FormError::Malformed));
        assert_eq!(Form::parse(b"a=\xff"), Err(FormError::Malformed));
    }
}
