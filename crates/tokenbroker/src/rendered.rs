//! What the broker sends of a token, made once per token rather than once per request: the
//! value of the provider's header (the proxy injects it; the token API reports it) and the
//! token API's answers, JSON and plain text. Of the JSON answer only `expires_in` changes
//! from one request to the next, so it is kept as the bytes before and after that number.
//!
//! Rendering the JSON (escaping a long JWT twice, formatting two timestamps) cost about a
//! quarter of a token request's instructions (34k -> 25k); a cached answer costs one copy.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::HeaderValue;
use tokenbroker_core::config::ProviderConfig;
use tokenbroker_core::token::Token;

use crate::api::TokenBody;

/// A token as the broker sends it. Not `Debug`: its bytes hold the token in the clear.
pub struct Rendered {
    /// The token this was made from (the cache entry is good while the slot serves it).
    token: Arc<Token>,
    /// The provider's header value: prefix and token, marked sensitive; `None` if the token
    /// cannot be sent in a header (a control character in it).
    pub header_value: Option<HeaderValue>,
    /// The JSON answer up to the value of `expires_in`, and from after it.
    json_head: Bytes,
    json_tail: Bytes,
    /// The bare token, for `Accept: text/plain`.
    pub plain: Bytes,
}

/// What `expires_in` is rendered as in the template, to be cut out. JSON escapes every `"`
/// inside a string, so with its key this text can only occur once.
const PLACEHOLDER: &str = "\"expires_in\":18446744073709551615";

impl Rendered {
    /// Renders `token` of the provider `config` describes (`None` only if serde_json cannot
    /// render the answer, which a struct of strings and numbers rules out).
    fn new(config: &ProviderConfig, token: &Arc<Token>) -> Option<Self> {
        let header_value = HeaderValue::from_str(&format!("{}{}", config.prefix, token.expose()))
            .ok()
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        let mut body = TokenBody::new(config, token, SystemTime::now());
        body.expires_in = u64::MAX;
        let json = serde_json::to_string(&body).ok()?;
        let at = json.find(PLACEHOLDER)?;
        let key_end = at + PLACEHOLDER.len() - u64::MAX.to_string().len();
        Some(Self {
            token: token.clone(),
            header_value,
            json_head: Bytes::copy_from_slice(&json.as_bytes()[..key_end]),
            json_tail: Bytes::copy_from_slice(&json.as_bytes()[at + PLACEHOLDER.len()..]),
            plain: Bytes::copy_from_slice(token.expose().as_bytes()),
        })
    }

    /// The JSON answer at `now`.
    pub fn json(&self, now: SystemTime) -> Bytes {
        let mut digits = itoa::Buffer::new();
        let expires_in = digits
            .format(self.token.remaining(now).as_secs())
            .as_bytes();
        // Exactly as long as the answer: `Bytes` then takes the allocation over as it is.
        let mut out =
            Vec::with_capacity(self.json_head.len() + expires_in.len() + self.json_tail.len());
        out.extend_from_slice(&self.json_head);
        out.extend_from_slice(expires_in);
        out.extend_from_slice(&self.json_tail);
        out.into()
    }
}

/// The latest rendering of each provider's token (not `Debug`, as [`Rendered`]).
#[derive(Default)]
pub struct RenderCache {
    by_provider: BTreeMap<String, RwLock<Option<Arc<Rendered>>>>,
}

impl RenderCache {
    /// An empty cache for `providers`.
    pub fn new<'a>(providers: impl Iterator<Item = &'a str>) -> Self {
        Self {
            by_provider: providers
                .map(|name| (name.to_owned(), RwLock::new(None)))
                .collect(),
        }
    }

    /// `token` of the provider `config` describes, rendered; made now if the cached
    /// rendering is of another token.
    pub fn get(&self, config: &ProviderConfig, token: &Arc<Token>) -> Option<Arc<Rendered>> {
        let Some(entry) = self.by_provider.get(&config.name) else {
            return Rendered::new(config, token).map(Arc::new);
        };
        let cached = entry.read().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(rendered) = cached.filter(|r| Arc::ptr_eq(&r.token, token)) {
            return Some(rendered);
        }
        let rendered = Arc::new(Rendered::new(config, token)?);
        *entry.write().unwrap_or_else(PoisonError::into_inner) = Some(rendered.clone());
        Some(rendered)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::SecretString;

    use super::*;

    fn config() -> ProviderConfig {
        let text = r#"
            [providers.cr]
            type = "json_login"
            login_url = "http://127.0.0.1:9/v1/authentication"
            login_body = { username = "u", apiKey = "k" }
            header = "X-Authorization"
            prefix = "Bearer "
        "#;
        let mut config = tokenbroker_core::Config::parse(text).unwrap();
        config.providers.remove("cr").unwrap()
    }

    fn token(value: &str, generation: u64) -> Arc<Token> {
        let now = SystemTime::now();
        Arc::new(Token::new(
            SecretString::from(value.to_owned()),
            generation,
            now,
            now + Duration::from_secs(600),
            now + Duration::from_secs(480),
        ))
    }

    #[test]
    fn the_cached_answer_is_the_answer_rendered_afresh() {
        let config = config();
        // Quotes, backslashes and digits that look like the placeholder, escaped or not.
        let token = token(r#"ey"J\18446744073709551615"#, 7);
        let cache = RenderCache::new(["cr"].into_iter());
        let now = SystemTime::now();
        let cached = cache.get(&config, &token).unwrap().json(now);
        let fresh = serde_json::to_vec(&TokenBody::new(&config, &token, now)).unwrap();
        assert_eq!(cached, fresh);
        let parsed: TokenBody = serde_json::from_slice(&cached).unwrap();
        assert_eq!(parsed.access_token, token.expose());
        let debug = format!("{parsed:?}");
        assert!(debug.contains("generation: 7"), "{debug}");
        assert!(
            !debug.contains("18446744073709551615"),
            "no token in Debug: {debug}"
        );
        assert!(
            (599..=600).contains(&parsed.expires_in),
            "{}",
            parsed.expires_in
        );
    }

    #[test]
    fn a_new_token_is_rendered_anew() {
        let config = config();
        let cache = RenderCache::new(["cr"].into_iter());
        let first = cache.get(&config, &token("one", 1)).unwrap();
        let again = cache.get(&config, &first.token).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same token: the cached rendering"
        );
        let second = cache.get(&config, &token("two", 2)).unwrap();
        assert_eq!(second.plain, "two");
        let header = second.header_value.as_ref().unwrap();
        assert_eq!(header, "Bearer two");
        assert!(header.is_sensitive());
    }

    #[test]
    fn a_token_that_cannot_be_a_header_value_has_none_but_answers_json() {
        let cache = RenderCache::new(["cr"].into_iter());
        let rendered = cache.get(&config(), &token("bad\nvalue", 1)).unwrap();
        assert!(rendered.header_value.is_none());
        let body: TokenBody = serde_json::from_slice(&rendered.json(SystemTime::now())).unwrap();
        assert_eq!(body.access_token, "bad\nvalue");
    }
}
