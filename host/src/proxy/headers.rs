//! Header hygiene at each hop: hop-by-hop headers stripped, the client address appended to
//! `x-forwarded-for`, and a request id and W3C trace context on every request.

use http::header::{
    CONNECTION, HeaderMap, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE,
};
use std::net::IpAddr;

/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-forwarded-for`.
pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "http2-settings",
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // `te: trailers` is the one TE value that may cross (gRPC needs it).
    let keep_trailers = headers
        .get(TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(TE);
    if keep_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Appends the client's address to `x-forwarded-for`.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let value = match headers.get(&FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {client}"),
        _ => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(FORWARDED_FOR, v);
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

/// Keeps a valid `traceparent`, or starts a trace; adds an `x-request-id` when absent.
/// Returns the request id.
pub fn ensure_ids(headers: &mut HeaderMap, mut random: impl FnMut() -> u64) -> String {
    let keep = headers
        .get(&TRACEPARENT)
        .is_some_and(|v| valid_traceparent(v.as_bytes()));
    if !keep {
        let value = format!(
            "00-{:016x}{:016x}-{:016x}-01",
            random() | 1,
            random(),
            random() | 1
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(TRACEPARENT, v);
        }
    }
    if let Some(id) = headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok()) {
        return id.to_string();
    }
    let (a, b) = (random(), random());
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, v);
    }
    id
}

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
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().expect("ip"));
        append_forwarded_for(&mut h, "::1".parse().expect("ip"));
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
        assert_eq!(ensure_ids(&mut h, &mut random), "abc");
        assert_eq!(
            h.get(&TRACEPARENT).map(|v| v.as_bytes()),
            Some(valid.as_bytes())
        );

        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("00-000-bad"));
        let id = ensure_ids(&mut h, &mut random);
        assert_eq!(id.len(), 36);
        let tp = h
            .get(&TRACEPARENT)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        assert!(valid_traceparent(&tp), "{}", String::from_utf8_lossy(&tp));
    }
}
