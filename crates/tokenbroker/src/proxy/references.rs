//! The upstream's references to itself in an answer, made the proxy's: a client reaches
//! the upstream only through `/v1/proxy/{provider}`, so a `Location` into the upstream's
//! base path is rewritten to go through the proxy, and every cookie's `Path` is scoped
//! under it (its `Domain` dropped), so that one provider's cookies never go to another
//! provider's upstream by way of the broker's one origin. Other references pass as they
//! are. (A `__Host-` cookie, which must have `Path=/`, is scoped all the same: a browser
//! then refuses it, rather than share it across providers.)

use axum::http::header::{self, HeaderMap, HeaderValue};
use reqwest::Url;

/// How one provider's upstream is reached directly, and through the proxy.
pub(super) struct References {
    /// The upstream's base URL.
    base: Url,
    /// The base URL's path without its trailing slash (`""` for the root).
    base_path: String,
    /// `/v1/proxy/{provider}`.
    prefix: String,
}

impl References {
    pub(super) fn new(base: Url, provider: &str) -> Self {
        Self {
            base_path: base.path().trim_end_matches('/').to_owned(),
            base,
            prefix: format!("/v1/proxy/{provider}"),
        }
    }

    /// Rewrites the answer's `Location` and `Set-Cookie` headers, if it has any.
    pub(super) fn localise(&self, headers: &mut HeaderMap) {
        let location = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| self.location(v))
            .and_then(|v| HeaderValue::try_from(v).ok());
        if let Some(location) = location {
            headers.insert(header::LOCATION, location);
        }
        if !headers.contains_key(header::SET_COOKIE) {
            return;
        }
        // A cookie that cannot be rewritten is dropped rather than passed on unscoped.
        let cookies: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| HeaderValue::from_bytes(&self.cookie(v.as_bytes())).ok())
            .collect();
        headers.remove(header::SET_COOKIE);
        for cookie in cookies {
            headers.append(header::SET_COOKIE, cookie);
        }
    }

    /// `location` through the proxy, if it points into the upstream's base path: as an
    /// absolute URL of the upstream's scheme, host and port, or as an absolute path without
    /// dot segments (which could lead out of the provider's prefix).
    fn location(&self, location: &str) -> Option<String> {
        let path = if location.starts_with('/') && !location.starts_with("//") {
            let path = location.split(['?', '#']).next().unwrap_or_default();
            let dotted = path.split('/').any(|segment| {
                segment == "." || segment == ".." || segment.to_ascii_lowercase().contains("%2e")
            });
            if dotted {
                return None;
            }
            location.to_owned()
        } else {
            // Parsing resolves any dot segments.
            let url = Url::parse(location).ok()?;
            let same = url.scheme() == self.base.scheme()
                && url.host_str() == self.base.host_str()
                && url.port_or_known_default() == self.base.port_or_known_default();
            if !same {
                return None;
            }
            let mut path = url.path().to_owned();
            for (mark, part) in [('?', url.query()), ('#', url.fragment())] {
                if let Some(part) = part {
                    path.push(mark);
                    path.push_str(part);
                }
            }
            path
        };
        let rest = self.under_base(&path)?;
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
    /// base path, or none, scopes it to the whole provider) and without its `Domain`.
    fn cookie(&self, cookie: &[u8]) -> Vec<u8> {
        let mut parts = cookie.split(|&b| b == b';');
        // The first part is the cookie's name and value, whatever they say.
        let mut out = parts.next().unwrap_or_default().to_vec();
        let mut path = None;
        for attribute in parts {
            let (name, value) = match attribute.iter().position(|&b| b == b'=') {
                Some(at) => (&attribute[..at], Some(&attribute[at + 1..])),
                None => (attribute, None),
            };
            let name = name.trim_ascii();
            if name.eq_ignore_ascii_case(b"domain") {
                continue;
            }
            if name.eq_ignore_ascii_case(b"path") {
                let value = std::str::from_utf8(value.unwrap_or_default()).unwrap_or_default();
                path = self
                    .under_base(value.trim())
                    .filter(|rest| rest.starts_with('/'));
                continue;
            }
            out.push(b';');
            out.extend_from_slice(attribute);
        }
        out.extend_from_slice(b"; Path=");
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(path.unwrap_or("/").as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn references() -> References {
        References::new(Url::parse("https://API.example.com/base/").unwrap(), "cr")
    }

    #[test]
    fn locations_into_the_base_path_go_through_the_proxy() {
        let r = references();
        let cases = [
            (
                "https://api.example.com/base/items/8",
                Some("/v1/proxy/cr/items/8"),
            ),
            (
                "HTTPS://api.example.com:443/base?x=1",
                Some("/v1/proxy/cr?x=1"),
            ),
            ("/base/items/8?a=b", Some("/v1/proxy/cr/items/8?a=b")),
            ("/base", Some("/v1/proxy/cr/")),
            ("/based/x", None),
            ("/other/x", None),
            ("/base/../other/x", None),
            ("/base/%2E%2E/other/x", None),
            ("https://api.example.com/base/../other/x", None),
            ("https://api.example.com:8443/base/x", None),
            ("http://api.example.com/base/x", None),
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
                "sid=1; HttpOnly; Path=/v1/proxy/cr/app",
            ),
            ("sid=1; path=/", "sid=1; Path=/v1/proxy/cr/"),
            (
                "sid=1; Path = /base/a ; Domain = example.com",
                "sid=1; Path=/v1/proxy/cr/a",
            ),
            ("path=/x; Secure", "path=/x; Secure; Path=/v1/proxy/cr/"),
            ("sid=1", "sid=1; Path=/v1/proxy/cr/"),
            (
                "sid=caf\u{e9}; Domain=example.com",
                "sid=caf\u{e9}; Path=/v1/proxy/cr/",
            ),
        ];
        for (cookie, expected) in cases {
            let rewritten = r.cookie(cookie.as_bytes());
            assert_eq!(String::from_utf8_lossy(&rewritten), expected, "{cookie}");
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
        assert_eq!(
            cookies,
            ["a=1; Path=/v1/proxy/cr/", "b=2; Path=/v1/proxy/cr/"]
        );
        assert_eq!(headers[header::LOCATION], "/v1/proxy/cr/n");
    }
}
