//! Where a proxied request goes: `/v1/proxy/{provider}/{path}?{query}` becomes
//! `{upstream}/{path}?{query}`, and nothing a client writes can make it go anywhere else.
//!
//! The path is checked as it arrived (percent-encoded), segment by segment: dot segments,
//! encoded dots, slashes and backslashes, `@`, control characters (CR, LF, NUL) and
//! anything that would make the result an absolute URL are refused, never "fixed". The
//! result is then parsed and checked again to lie under the upstream base.

use reqwest::Url;

/// The route prefix of the proxy.
pub(super) const PREFIX: &str = "/v1/proxy/";

/// Why a proxied path was refused; the message names the rule, not the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafePath {
    #[error("dot segments (. and ..) are not allowed in a proxied path")]
    DotSegment,
    #[error("encoded slashes, backslashes and dots are not allowed in a proxied path")]
    EncodedSeparator,
    #[error("backslashes are not allowed in a proxied path")]
    Backslash,
    #[error("'@' is not allowed in a proxied path")]
    At,
    #[error("control characters are not allowed in a proxied path or query")]
    Control,
    #[error("a proxied path cannot be an absolute URL or start with //")]
    Absolute,
    #[error("the proxied path is not valid")]
    Invalid,
}

/// The provider named by a proxy request path, and the rest of the path (still encoded).
pub(super) fn split(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

/// The upstream URL for `path` (encoded, after the provider) and `query`.
pub(super) fn upstream_url(base: &Url, path: &str, query: Option<&str>) -> Result<Url, UnsafePath> {
    check_path(path)?;
    if let Some(query) = query {
        check_query(query)?;
    }
    let mut url = base.clone();
    let joined = format!("{}/{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url.set_query(query);
    // Parsing again must not have moved it: same origin, under the base path.
    let reparsed = Url::parse(url.as_str()).map_err(|_| UnsafePath::Invalid)?;
    let base_path = base.path().trim_end_matches('/');
    let under_base =
        reparsed.path() == base_path || reparsed.path().starts_with(&format!("{base_path}/"));
    if reparsed.origin() != base.origin() || !under_base {
        return Err(UnsafePath::Invalid);
    }
    Ok(reparsed)
}

fn check_path(path: &str) -> Result<(), UnsafePath> {
    if path.starts_with('/') || path.contains("://") {
        return Err(UnsafePath::Absolute);
    }
    if path.contains('\\') {
        return Err(UnsafePath::Backslash);
    }
    if path.contains('@') {
        return Err(UnsafePath::At);
    }
    for segment in path.split('/') {
        // Some servers (Tomcat, Spring) drop a `;parameter` before resolving dots.
        let bare = segment.split(';').next().unwrap_or(segment);
        if bare == "." || bare == ".." {
            return Err(UnsafePath::DotSegment);
        }
        let lower = segment.to_ascii_lowercase();
        // %25 is refused too: decoded once more downstream it could become any of these.
        if ["%2e", "%2f", "%5c", "%25"]
            .iter()
            .any(|escape| lower.contains(escape))
        {
            return Err(UnsafePath::EncodedSeparator);
        }
        let decoded = percent_decode(segment)?;
        if decoded.contains(&b'@') {
            return Err(UnsafePath::At);
        }
        if decoded.iter().any(|b| b.is_ascii_control()) {
            return Err(UnsafePath::Control);
        }
    }
    Ok(())
}

fn check_query(query: &str) -> Result<(), UnsafePath> {
    let decoded = percent_decode(query)?;
    if decoded
        .iter()
        .any(|b| *b == b'\r' || *b == b'\n' || *b == 0)
    {
        return Err(UnsafePath::Control);
    }
    Ok(())
}

/// Percent-decodes `text`; a malformed escape is refused.
fn percent_decode(text: &str) -> Result<Vec<u8>, UnsafePath> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(UnsafePath::Invalid)?;
            let hex = std::str::from_utf8(hex).map_err(|_| UnsafePath::Invalid)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UnsafePath::Invalid)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://api.example.com/base/").unwrap()
    }

    #[test]
    fn joins_path_and_query_under_the_base() {
        let url = upstream_url(&base(), "v3/items/7", Some("a=1&b=x%20y")).unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.example.com/base/v3/items/7?a=1&b=x%20y"
        );
        let root = upstream_url(&Url::parse("http://h:8080").unwrap(), "", None).unwrap();
        assert_eq!(root.as_str(), "http://h:8080/");
        let dotted = upstream_url(&base(), "files/report.v2.json", None).unwrap();
        assert_eq!(dotted.path(), "/base/files/report.v2.json");
    }

    #[test]
    fn refuses_every_way_out() {
        let cases: &[(&str, Option<&str>, UnsafePath)] = &[
            ("../etc/passwd", None, UnsafePath::DotSegment),
            ("a/../../b", None, UnsafePath::DotSegment),
            ("./a", None, UnsafePath::DotSegment),
            ("%2e%2e/secret", None, UnsafePath::EncodedSeparator),
            ("%2E%2E/secret", None, UnsafePath::EncodedSeparator),
            ("a%2f..%2fb", None, UnsafePath::EncodedSeparator),
            ("a%2Fb", None, UnsafePath::EncodedSeparator),
            ("a%5cb", None, UnsafePath::EncodedSeparator),
            ("a\\b", None, UnsafePath::Backslash),
            ("..\\..\\b", None, UnsafePath::Backslash),
            ("http://evil.example/x", None, UnsafePath::Absolute),
            ("/evil.example/x", None, UnsafePath::Absolute),
            ("user@evil.example/x", None, UnsafePath::At),
            ("a%40b", None, UnsafePath::At),
            ("a%0d%0aX-Injected:%201", None, UnsafePath::Control),
            ("a%00b", None, UnsafePath::Control),
            ("ok", Some("q=%0d%0aX-Injected:%201"), UnsafePath::Control),
            ("a%zz", None, UnsafePath::Invalid),
            ("..;/admin", None, UnsafePath::DotSegment),
            ("a/..;x=1/b", None, UnsafePath::DotSegment),
            ("%252e%252e/secret", None, UnsafePath::EncodedSeparator),
        ];
        for (path, query, expected) in cases {
            assert_eq!(
                upstream_url(&base(), path, *query)
                    .as_ref()
                    .map_err(Clone::clone),
                Err(expected.clone()),
                "{path} {query:?}"
            );
        }
    }

    #[test]
    fn splits_provider_from_path() {
        assert_eq!(split("/v1/proxy/cr/v3/items"), Some(("cr", "v3/items")));
        assert_eq!(split("/v1/proxy/cr"), Some(("cr", "")));
        assert_eq!(split("/v1/tokens/cr"), None);
    }
}
