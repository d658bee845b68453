//! The upstream's references to itself in an answer, made the proxy's: a client reaches
//! the upstream only through `/v1/proxy/{provider}`, so a `Location` into the upstream's
//! base path is rewritten to go through the proxy, and a cookie's `Path` is scoped under it
//! (its `Domain` dropped), so that one provider's cookies never go to another provider's
//! upstream by way of the broker's one origin. Other references pass as they are.

use axum::http::header::{self, HeaderMap, HeaderValue};

/// How one provider's upstream is reached directly, and through the proxy.
pub(super) struct References {
    /// `scheme://host[:port]` of the upstream's base URL, lower case.
    origin: String,
    /// The base URL's path without its trailing slash (`""` for the root).
    base_path: String,
    /// `/v1/proxy/{provider}`.
    prefix: String,
}

impl References {
    pub(super) fn new(origin: String, base_path: String, provider: &str) -> Self {
        Self {
            origin: origin.to_ascii_lowercase(),
            base_path,
            prefix: format!("/v1/proxy/{provider}"),
        }
    }

    /// Rewrites the answer's `Location` and `Set-Cookie` headers, if it has any.
    pub(super) fn localise(&self, headers: &mut HeaderMap) {
        let location = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| self.location(v));
        if let Some(location) = location.and_then(|l| HeaderValue::try_from(l).ok()) {
            headers.insert(header::LOCATION, location);
        }
        if !headers.contains_key(header::SET_COOKIE) {
            return;
        }
        let cookies: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| match v.to_str() {
                Ok(text) => HeaderValue::try_from(self.cookie(text)).unwrap_or_else(|_| v.clone()),
                Err(_) => v.clone(),
            })
            .collect();
        headers.remove(header::SET_COOKIE);
        for cookie in cookies {
            headers.append(header::SET_COOKIE, cookie);
        }
    }

    /// `location` through the proxy, if it points into the upstream's base path (as an
    /// absolute URL of the upstream's origin, or as an absolute path).
    fn location(&self, location: &str) -> Option<String> {
        let path = match location.get(..self.origin.len()) {
            Some(origin) if origin.eq_ignore_ascii_case(&self.origin) => {
                &location[self.origin.len()..]
            }
            _ if location.starts_with('/') && !location.starts_with("//") => location,
            _ => return None,
        };
        let rest = self.under_base(path)?;
        Some(format!("{}{}", self.prefix, rest))
    }

    /// The part of `path` after the base path, starting with `/` (or `?`, `#`), if `path`
    /// is the base path or under it.
    fn under_base<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix(self.base_path.as_str())?;
        match rest.bytes().next() {
            None => Some("/"),
            Some(b'/' | b'?' | b'#') => Some(rest),
            Some(_) => None,
        }
    }

    /// A `Set-Cookie` value with its `Path` under the proxy's prefix (a path outside the
    /// base path is scoped to the whole provider) and without its `Domain`.
    fn cookie(&self, cookie: &str) -> String {
        let mut parts = cookie.split(';');
        // The first part is the cookie's name and value, whatever they say.
        let mut out = parts.next().unwrap_or_default().to_owned();
        for attribute in parts {
            let trimmed = attribute.trim_start();
            let named = |name: &str| {
                trimmed
                    .get(..name.len())
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            };
            if named("domain=") {
                continue;
            }
            out.push(';');
            if named("path=") {
                let path = trimmed["path=".len()..].trim();
                let rest = self.under_base(path).unwrap_or("/");
                out.push_str(&format!(" Path={}{}", self.prefix, rest));
            } else {
                out.push_str(attribute);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn references() -> References {
        References::new("https://API.example.com".into(), "/base".into(), "cr")
    }

    #[test]
    fn locations_into_the_base_path_go_through_the_proxy() {
        let r = references();
        let cases = [
            (
                "https://api.example.com/base/items/8",
                Some("/v1/proxy/cr/items/8"),
            ),
            ("HTTPS://api.example.com/base?x=1", Some("/v1/proxy/cr?x=1")),
            ("/base/items/8?a=b", Some("/v1/proxy/cr/items/8?a=b")),
            ("/base", Some("/v1/proxy/cr/")),
            ("/based/x", None),
            ("/other/x", None),
            ("https://elsewhere.example.com/base/x", None),
            ("//api.example.com/base/x", None),
            ("items/8", None),
        ];
        for (location, expected) in cases {
            assert_eq!(r.location(location).as_deref(), expected, "{location}");
        }
    }

    #[test]
    fn cookies_are_scoped_to_the_provider_and_lose_their_domain() {
        let r = references();
        let cases = [
            (
                "sid=1; Path=/base/app; Domain=example.com; HttpOnly",
                "sid=1; Path=/v1/proxy/cr/app; HttpOnly",
            ),
            ("sid=1; path=/", "sid=1; Path=/v1/proxy/cr/"),
            ("path=/x; Secure", "path=/x; Secure"),
            ("sid=1", "sid=1"),
        ];
        for (cookie, expected) in cases {
            assert_eq!(r.cookie(cookie), expected, "{cookie}");
        }
        let mut headers = HeaderMap::new();
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_static("a=1; Path=/base"),
        );
        headers.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        headers.insert(header::LOCATION, HeaderValue::from_static("/base/n"));
        r.localise(&mut headers);
        let cookies: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; Path=/v1/proxy/cr/", "b=2"]);
        assert_eq!(headers[header::LOCATION], "/v1/proxy/cr/n");
    }
}
