//! The headers of a proxied exchange (RFC 9110 §7.6): hop-by-hop headers stay on their hop,
//! the client's `Authorization` (its broker key) and any value of the provider's token
//! header never reach the upstream, and `X-Forwarded-For`, `X-Forwarded-Proto` and `Via`
//! say that a proxy was on the way.

use std::net::SocketAddr;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus
/// `Proxy-Connection`, which some clients still send.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The `Via` entry this proxy adds.
const VIA: &str = "1.1 tokenbroker";

/// `headers` without the hop-by-hop ones, including those the `Connection` header names.
pub(super) fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name_str = name.as_str();
        if HOP_BY_HOP.contains(&name_str) || named.iter().any(|n| n == name_str) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The headers to send upstream: the client's end-to-end headers without its credentials,
/// `Host` or length (the proxy frames the body itself), with the token in the provider's
/// header and the forwarding headers added.
pub(super) fn upstream_request(
    client: &HeaderMap,
    token_header: &HeaderName,
    token_value: HeaderValue,
    peer: SocketAddr,
    proto: &'static str,
) -> HeaderMap {
    let mut out = end_to_end(client);
    for name in [header::AUTHORIZATION, header::HOST, header::CONTENT_LENGTH] {
        out.remove(name);
    }
    out.remove(token_header);
    out.insert(token_header.clone(), token_value);
    append(&mut out, "x-forwarded-for", &peer.ip().to_string());
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    append(&mut out, "via", VIA);
    out
}

/// The headers to send back: the upstream's end-to-end headers, without any that would
/// pass for the broker's own (`x-tokenbroker-*`), and our `Via`.
pub(super) fn downstream_response(upstream: &HeaderMap) -> HeaderMap {
    let mut out = end_to_end(upstream);
    let ours: Vec<HeaderName> = out
        .keys()
        .filter(|name| name.as_str().starts_with("x-tokenbroker-"))
        .cloned()
        .collect();
    for name in ours {
        out.remove(name);
    }
    append(&mut out, "via", VIA);
    out
}

/// Adds `value` to a list-valued header, after what is there.
fn append(headers: &mut HeaderMap, name: &'static str, value: &str) {
    let name = HeaderName::from_static(name);
    let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {value}"),
        None => value.to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_credentials_and_hop_by_hop_and_adds_forwarding() {
        let mut client = HeaderMap::new();
        client.insert(
            "authorization",
            HeaderValue::from_static("Bearer tbk_client_key"),
        );
        client.insert("x-authorization", HeaderValue::from_static("spoofed"));
        client.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        client.insert("x-private", HeaderValue::from_static("hop"));
        client.insert("te", HeaderValue::from_static("trailers"));
        client.insert("accept", HeaderValue::from_static("application/json"));
        client.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let name = HeaderName::from_static("x-authorization");
        let out = upstream_request(
            &client,
            &name,
            HeaderValue::from_static("jwt"),
            peer,
            "http",
        );
        assert_eq!(out.get("x-authorization").unwrap(), "jwt");
        assert_eq!(out.get_all("x-authorization").iter().count(), 1);
        assert!(out.get("authorization").is_none());
        assert!(
            out.get("x-private").is_none()
                && out.get("te").is_none()
                && out.get("connection").is_none()
        );
        assert_eq!(out.get("accept").unwrap(), "application/json");
        assert_eq!(out.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(out.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(out.get("via").unwrap(), VIA);
    }
}
