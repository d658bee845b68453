//! The headers of a proxied exchange (RFC 9110 §7.6): hop-by-hop headers stay on their hop,
//! the client's `Authorization` (its broker key) and any value of the provider's token
//! header never reach the upstream, and `X-Forwarded-For`, `X-Forwarded-Proto` and `Via`
//! say that a proxy was on the way.

use std::net::SocketAddr;

use axum::http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus
/// `Proxy-Connection`, which some clients still send.
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// How many names [`HOP_BY_HOP`] has.
const HOPS: usize = 9;

/// The `Via` entry this proxy adds.
const VIA: &str = "1.1 tokenbroker";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes the hop-by-hop headers, including those the `Connection` header names. Only the
/// ones present are removed: most messages have none, and an answer usually has only
/// `Connection: keep-alive`, so this costs a pass over the names (and no allocation) rather
/// than a lookup for every hop-by-hop name.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOPS];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| {
            // `close`, and names already removed as hop-by-hop, name nothing more.
            !name.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|hop| hop.as_str().eq_ignore_ascii_case(name))
        })
        .filter_map(|name| HeaderName::try_from(name).ok())
        .collect();
    for (hop, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(hop);
    }
    for name in named {
        headers.remove(name);
    }
}

/// The value of `X-Forwarded-For` for a client at `peer`: its IP address. Made once per
/// connection.
pub(crate) fn forwarded_for(peer: SocketAddr) -> HeaderValue {
    HeaderValue::try_from(peer.ip().to_string()).expect("an IP address is a valid header value")
}

/// Makes the client's headers the ones to send upstream: its end-to-end headers without
/// its credentials, `Host` or length (the proxy frames the body itself), nor any value of
/// the provider's token header (the token goes in once it is known), with the forwarding
/// headers added.
pub(super) fn to_upstream(
    headers: &mut HeaderMap,
    token_header: &HeaderName,
    client_ip: &HeaderValue,
    proto: &'static str,
) {
    remove_hop_by_hop(headers);
    for name in [header::AUTHORIZATION, header::HOST, header::CONTENT_LENGTH] {
        headers.remove(name);
    }
    headers.remove(token_header);
    append(headers, X_FORWARDED_FOR, client_ip.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    append(headers, header::VIA, HeaderValue::from_static(VIA));
}

/// Makes the upstream's headers the ones to send back: its end-to-end headers, without any
/// that would pass for the broker's own (`x-tokenbroker-*`), and our `Via`.
pub(super) fn to_client(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    let ours = |name: &HeaderName| name.as_str().starts_with("x-tokenbroker-");
    if headers.keys().any(ours) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| ours(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
    append(headers, header::VIA, HeaderValue::from_static(VIA));
}

/// Adds `value` to a list-valued header, after what is there: every line of it, as one
/// list (RFC 9110 §5.3), then `value`.
fn append(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    match headers.entry(name) {
        Entry::Vacant(entry) => {
            entry.insert(value);
        }
        Entry::Occupied(mut entry) => {
            let mut joined = Vec::new();
            for line in entry.iter().chain([&value]) {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(line.as_bytes());
            }
            match HeaderValue::from_bytes(&joined) {
                Ok(joined) => {
                    entry.insert(joined);
                }
                // Cannot happen (each line is a valid value), but never lose one.
                Err(_) => entry.append(value),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_lose_hop_by_hop_and_broker_headers_and_gain_via() {
        let mut answer = HeaderMap::new();
        answer.insert("connection", HeaderValue::from_static("keep-alive, X-Hop"));
        answer.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        answer.insert("x-hop", HeaderValue::from_static("1"));
        answer.insert("x-tokenbroker-error", HeaderValue::from_static("forged"));
        answer.insert("content-type", HeaderValue::from_static("application/json"));
        answer.insert("content-length", HeaderValue::from_static("2"));
        to_client(&mut answer);
        let mut names: Vec<&str> = answer.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-length", "content-type", "via"],
            "{answer:?}"
        );
        assert_eq!(answer["via"], VIA);
    }

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
        client.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let mut out = client.clone();
        to_upstream(
            &mut out,
            &HeaderName::from_static("x-authorization"),
            &forwarded_for(peer),
            "http",
        );
        assert!(
            out.get("x-authorization").is_none(),
            "the spoofed value is gone"
        );
        assert!(out.get("authorization").is_none());
        assert!(
            out.get("x-private").is_none()
                && out.get("te").is_none()
                && out.get("connection").is_none()
        );
        assert_eq!(out.get("accept").unwrap(), "application/json");
        let forwarded: Vec<_> = out.get_all("x-forwarded-for").iter().collect();
        assert_eq!(
            forwarded,
            ["10.0.0.1, 10.0.0.2, 127.0.0.1"],
            "every hop, one line"
        );
        assert_eq!(out.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(out.get("via").unwrap(), VIA);
    }
}
