//! Where a proxied request goes: `/v1/proxy/{provider}/{path}?{query}` becomes
//! `{upstream}/{path}?{query}`, and nothing a client writes can make it go anywhere else.
//!
//! The path is checked as it arrived (percent-encoded), segment by segment: dot segments,
//! encoded dots, slashes and backslashes, `@`, control characters (CR, LF, NUL) and
//! anything that would make the result an absolute URL are refused, never "fixed". What
//! remains is appended to the upstream's base path and sent in origin form (path and query
//! only); the connection and the `Host` header are the upstream's, set apart from the path,
//! so no path can change them.

use axum::http::Uri;
use axum::http::uri::PathAndQuery;

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

/// The provider named by a proxy request path, and the rest of the path (still encoded);
/// `None` for a path that is not under `/v1/proxy/{provider}`.
pub(super) fn split(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?;
    Some(rest.split_once('/').unwrap_or((rest, ""))).filter(|(provider, _)| !provider.is_empty())
}

/// The upstream request target (origin form: path and query; the host goes in `Host`) for
/// `path` (encoded, after the provider) and `query`, under the upstream's `base_path`.
pub(super) fn upstream_uri(
    base_path: &str,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, UnsafePath> {
    check_path(path)?;
    let mut path_and_query =
        String::with_capacity(base_path.len() + path.len() + 2 + query.map_or(0, str::len));
    path_and_query.push_str(base_path);
    path_and_query.push('/');
    path_and_query.push_str(path);
    if let Some(query) = query {
        check_query(query)?;
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    PathAndQuery::try_from(path_and_query)
        .map(Uri::from)
        .map_err(|_| UnsafePath::Invalid)
}

fn check_path(path: &str) -> Result<(), UnsafePath> {
    // Byte slices throughout: a path is a handful of short segments, and `str`'s pattern
    // searchers cost more to set up than these scans (callgrind: about a thousand
    // instructions per proxied request).
    let path = path.as_bytes();
    if path.first() == Some(&b'/') || path.windows(3).any(|w| w == b"://") {
        return Err(UnsafePath::Absolute);
    }
    if path.contains(&b'\\') {
        return Err(UnsafePath::Backslash);
    }
    if path.contains(&b'@') {
        return Err(UnsafePath::At);
    }
    for segment in path.split(|&b| b == b'/') {
        // Some servers (Tomcat, Spring) drop a `;parameter` before resolving dots.
        let bare = segment.split(|&b| b == b';').next().unwrap_or(segment);
        if bare == b"." || bare == b".." {
            return Err(UnsafePath::DotSegment);
        }
        if has_encoded_separator(segment) {
            return Err(UnsafePath::EncodedSeparator);
        }
        for byte in percent_decoded(segment) {
            match byte? {
                b'@' => return Err(UnsafePath::At),
                b if b.is_ascii_control() => return Err(UnsafePath::Control),
                _ => {}
            }
        }
        // Rarely needed, so looked at only then: what some servers still make a dot segment
        // or a separator of.
        if segment.contains(&b'%') || bare.first() == Some(&b'.') {
            check_decoded(bare)?;
        }
    }
    Ok(())
}

/// Refuses a segment (without its `;parameter`) that decodes to a dot segment once
/// trailing spaces and dots are dropped (as Windows does: `..%20`, `...`), to an overlong
/// UTF-8 form (such as `%c0%ae`, which some decoders take for `.`), or to a character that
/// Unicode folds into a dot, a slash or a backslash (full-width forms). Other bytes that are
/// not UTF-8 (an older upstream's Latin-1) pass.
fn check_decoded(bare: &[u8]) -> Result<(), UnsafePath> {
    let decoded = percent_decoded(bare).collect::<Result<Vec<u8>, _>>()?;
    let overlong = decoded.windows(2).any(|w| {
        matches!(
            w,
            [0xc0 | 0xc1, _] | [0xe0, 0x80..=0x9f] | [0xf0, 0x80..=0x8f]
        )
    });
    if overlong {
        return Err(UnsafePath::Invalid);
    }
    let text = String::from_utf8_lossy(&decoded);
    if text.contains("..") && text.trim_end_matches([' ', '.']).is_empty() {
        return Err(UnsafePath::DotSegment);
    }
    const LOOKALIKES: [char; 5] = ['\u{ff0e}', '\u{ff0f}', '\u{ff3c}', '\u{2215}', '\u{2216}'];
    if text.contains(LOOKALIKES) {
        return Err(UnsafePath::EncodedSeparator);
    }
    Ok(())
}

/// Whether `segment` holds `%2e` (dot), `%2f` (slash), `%5c` (backslash) or `%25` (a
/// percent sign, which decoded once more downstream could become any of those), in any case.
fn has_encoded_separator(segment: &[u8]) -> bool {
    segment.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e' | b'f' | b'5') | (b'5', b'c')
            )
    })
}

fn check_query(query: &str) -> Result<(), UnsafePath> {
    for byte in percent_decoded(query.as_bytes()) {
        if matches!(byte?, b'\r' | b'\n' | 0) {
            return Err(UnsafePath::Control);
        }
    }
    Ok(())
}

/// The bytes `text` percent-decodes to; a malformed escape is refused.
fn percent_decoded(text: &[u8]) -> impl Iterator<Item = Result<u8, UnsafePath>> + '_ {
    let mut bytes = text.iter().copied();
    std::iter::from_fn(move || {
        let byte = bytes.next()?;
        if byte != b'%' {
            return Some(Ok(byte));
        }
        let digit = |b: Option<u8>| b.and_then(|b| char::from(b).to_digit(16));
        Some(match (digit(bytes.next()), digit(bytes.next())) {
            (Some(high), Some(low)) => Ok((high * 16 + low) as u8),
            _ => Err(UnsafePath::Invalid),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(path: &str, query: Option<&str>) -> Result<Uri, UnsafePath> {
        upstream_uri("/base", path, query)
    }

    #[test]
    fn joins_path_and_query_under_the_base() {
        let url = uri("v3/items/7", Some("a=1&b=x%20y")).unwrap();
        assert_eq!(url.to_string(), "/base/v3/items/7?a=1&b=x%20y");
        assert_eq!((url.scheme(), url.authority()), (None, None));
        let root = upstream_uri("", "", None).unwrap();
        assert_eq!(root.to_string(), "/");
        let dotted = uri("files/report.v2.json", None).unwrap();
        assert_eq!(dotted.path(), "/base/files/report.v2.json");
        let hidden = uri(".well-known/x", None).unwrap();
        assert_eq!(hidden.path(), "/base/.well-known/x");
        let encoded = uri("caf%c3%a9/caf%e9/a%20b", None).unwrap();
        assert_eq!(encoded.path(), "/base/caf%c3%a9/caf%e9/a%20b");
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
            ("..%20/secret", None, UnsafePath::DotSegment),
            ("...", None, UnsafePath::DotSegment),
            ("%c0%ae%c0%ae/secret", None, UnsafePath::Invalid),
            ("%e0%80%ae%e0%80%ae/secret", None, UnsafePath::Invalid),
            (
                "%ef%bc%8e%ef%bc%8e/secret",
                None,
                UnsafePath::EncodedSeparator,
            ),
            ("a%ef%bc%8fb", None, UnsafePath::EncodedSeparator),
        ];
        for (path, query, expected) in cases {
            assert_eq!(uri(path, *query), Err(expected.clone()), "{path} {query:?}");
        }
    }

    #[test]
    fn splits_provider_from_path() {
        assert_eq!(split("/v1/proxy/cr/v3/items"), Some(("cr", "v3/items")));
        assert_eq!(split("/v1/proxy/cr"), Some(("cr", "")));
        assert_eq!(split("/v1/tokens/cr"), None);
        assert_eq!(split("/v1/proxy/"), None);
        assert_eq!(split("/v1/proxy//x"), None);
    }
}
