//! Header hygiene at each hop: hop-by-hop headers stripped, the client address appended to
//! `x-forwarded-for`, and a request id and W3C trace context on every request.

use http::header::{
    CONNECTION, Entry, HeaderMap, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE,
};
use std::net::IpAddr;

/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-forwarded-for`.
pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

const HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("http2-settings"),
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == TE
        || HOP_BY_HOP.iter().any(|h| h == name)
}

/// The port a captured call was sent to, from the caller's sidecar to the destination's, so
/// the destination's app is reached on the port the caller dialled (Kubernetes'
/// `targetPort`). Never passed to an app.
pub const TARGET_PORT: http::header::HeaderName =
    http::header::HeaderName::from_static("x-weft-target-port");

/// Strips the hop-by-hop headers (RFC 9110 §7.6.1): the standard ones and those `Connection`
/// names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, comparing pre-built names (no parsing), finds what to remove;
    // only those are removed (an HTTP/1.1 `Connection: keep-alive` is on most responses).
    let mut found: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if is_hop_by_hop(name) {
            found.push(name.clone());
        }
    }
    if found.is_empty() {
        return;
    }
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            // Connection options, not header names: nothing more to remove for these.
            if token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                found.push(name);
            }
        }
    }
    // `te: trailers` is the one TE value that may cross (gRPC needs it).
    let keep_trailers = headers
        .get(TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in found {
        headers.remove(name);
    }
    if keep_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// A client address as an `x-forwarded-for` element, built once per connection.
pub fn forwarded_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Appends the client's address (from [`forwarded_value`]) to `x-forwarded-for`.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    // One lookup through the entry, not a get and an insert: the name hashes once.
    match headers.entry(FORWARDED_FOR) {
        Entry::Occupied(mut e) if !e.get().as_bytes().trim_ascii().is_empty() => {
            let prior = e.get().as_bytes();
            let mut v = Vec::with_capacity(prior.len() + 2 + client.len());
            v.extend_from_slice(prior);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.as_bytes());
            if let Ok(joined) = HeaderValue::from_bytes(&v) {
                e.insert(joined);
            }
        }
        Entry::Occupied(mut e) => {
            e.insert(client.clone());
        }
        Entry::Vacant(e) => {
            e.insert(client.clone());
        }
    }
}

/// Whether a `traceparent` value is well-formed (version 00, non-zero ids).
pub fn valid_traceparent(value: &[u8]) -> bool {
    let parts: Vec<&[u8]> = value.split(|&b| b == b'-').collect();
    let hex = |p: &[u8], len: usize| {
        p.len() == len
            && p.iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let nonzero = |p: &[u8]| p.iter().any(|&b| b != b'0');
    parts.len() == 4
        && parts[0] == b"00"
        && hex(parts[1], 32)
        && nonzero(parts[1])
        && hex(parts[2], 16)
        && nonzero(parts[2])
        && hex(parts[3], 2)
}

/// Writes the low `out.len()` hex digits of `value`, lower-case, into `out`.
fn hex_into(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut v = value;
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Marks a per-request value "never indexed" for HPACK: a value seen once would otherwise be
/// inserted into the peer connection's dynamic table and evict the reusable entries (`:path`,
/// `x-forwarded-host`, ...). Measured: table upkeep was the largest single cost of the h2 hop.
fn unique(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// Keeps a valid `traceparent`, or starts a trace; adds an `x-request-id` (a UUIDv4) when
/// absent. Built by hand into stack buffers: `format!` was a tenth of a sidecar's instructions.
pub fn ensure_ids(headers: &mut HeaderMap, mut random: impl FnMut() -> u64) {
    // Through entries: each name hashes once.
    match headers.entry(&TRACEPARENT) {
        Entry::Occupied(mut e) if valid_traceparent(e.get().as_bytes()) => {
            e.get_mut().set_sensitive(true);
        }
        entry => {
            // 00-<32 hex trace id>-<16 hex span id>-01
            let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-01";
            hex_into(&mut tp[3..19], random() | 1);
            hex_into(&mut tp[19..35], random());
            hex_into(&mut tp[36..52], random() | 1);
            if let Ok(v) = HeaderValue::from_bytes(&tp) {
                match entry {
                    Entry::Occupied(mut e) => {
                        e.insert(unique(v));
                    }
                    Entry::Vacant(e) => {
                        e.insert(unique(v));
                    }
                }
            }
        }
    }
    match headers.entry(&REQUEST_ID) {
        Entry::Occupied(mut e) => e.get_mut().set_sensitive(true),
        Entry::Vacant(e) => {
            let (a, b) = (random(), random());
            let mut id = *b"00000000-0000-4000-8000-000000000000";
            hex_into(&mut id[0..8], a >> 32);
            hex_into(&mut id[9..13], (a >> 16) & 0xffff);
            hex_into(&mut id[15..18], a & 0x0fff);
            hex_into(&mut id[19..23], ((b >> 48) & 0x3fff) | 0x8000);
            hex_into(&mut id[24..36], b & 0xffff_ffff_ffff);
            if let Ok(v) = HeaderValue::from_bytes(&id) {
                e.insert(unique(v));
            }
        }
    }
}

/// Carries the original authority to the inbound sidecar, which restores it as `Host`.
pub const FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-keep", "te"]);
        assert_eq!(h.get(TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]));
    }

    #[test]
    fn connection_options_are_not_taken_for_header_names() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, close"));
        h.insert("close", HeaderValue::from_static("an end-to-end header"));
        h.insert("content-length", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["close", "content-length"]);
    }

    #[test]
    fn per_request_ids_are_never_indexed_by_hpack() {
        let mut h = HeaderMap::new();
        ensure_ids(&mut h, || 7);
        assert!(h.get(&TRACEPARENT).is_some_and(HeaderValue::is_sensitive));
        assert!(h.get(&REQUEST_ID).is_some_and(HeaderValue::is_sensitive));
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("from-the-app"));
        ensure_ids(&mut h, || 7);
        assert!(h.get(&REQUEST_ID).is_some_and(HeaderValue::is_sensitive));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &forwarded_value("10.0.0.1".parse().expect("ip")));
        append_forwarded_for(&mut h, &forwarded_value("::1".parse().expect("ip")));
        assert_eq!(
            h.get(&FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"10.0.0.1, ::1"[..])
        );
    }

    #[test]
    fn trace_context_is_kept_when_valid_and_created_otherwise() {
        let mut n = 0u64;
        let mut random = || {
            n += 0x1111;
            n
        };
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(valid));
        h.insert(REQUEST_ID, HeaderValue::from_static("abc"));
        ensure_ids(&mut h, &mut random);
        assert_eq!(
            h.get(&REQUEST_ID).map(|v| v.as_bytes()),
            Some(&b"abc"[..]),
            "kept"
        );
        assert_eq!(
            h.get(&TRACEPARENT).map(|v| v.as_bytes()),
            Some(valid.as_bytes())
        );

        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("00-000-bad"));
        ensure_ids(&mut h, &mut random);
        let id = h
            .get(&REQUEST_ID)
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "a version 4 UUID: {id}");
        assert!(
            id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
            "{id}"
        );
        let tp = h
            .get(&TRACEPARENT)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        assert!(valid_traceparent(&tp), "{}", String::from_utf8_lossy(&tp));
    }
}
