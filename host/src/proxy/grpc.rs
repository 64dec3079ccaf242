//! gRPC over the mesh: a call is gRPC when its `content-type` is `application/grpc` (or a
//! `+`/`;` variant). The host reads what Envoy reads of it: the `grpc-status` of a response
//! (its headers for a trailers-only answer, else its trailers) for telemetry and retry
//! conditions, and the caller's `grpc-timeout` as the call's deadline (capped by the route's
//! timeout, as Istio caps it).

use http::{HeaderMap, HeaderName};
use std::time::Duration;

/// Names built once, so a lookup parses nothing.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether the headers are a gRPC message's.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .is_some_and(|v| {
            v == b"application/grpc"
                || v.starts_with(b"application/grpc+")
                || v.starts_with(b"application/grpc;")
        })
}

/// The `grpc-status` the headers carry (0..=255), if any.
pub fn status(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get(GRPC_STATUS)?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// The caller's `grpc-timeout` (gRPC's `TimeoutValue TimeoutUnit`: at most 8 digits and one
/// of `H M S m u n`), if it carries a valid one.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// gRPC's status for a proxy's HTTP answer (the gRPC spec's mapping, as Envoy applies it to
/// its local replies).
pub fn from_http(status: u16) -> u8 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn reads_content_type_status_and_timeout_as_grpc_writes_them() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(!is_grpc(&headers(&[("content-type", "application/grpcx")])));
        assert!(!is_grpc(&headers(&[("content-type", "text/plain")])));
        assert_eq!(status(&headers(&[("grpc-status", "14")])), Some(14));
        assert_eq!(status(&headers(&[("grpc-status", "x")])), None);
        assert_eq!(status(&HeaderMap::new()), None);
        for (v, want) in [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("5u", Some(Duration::from_micros(5))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
            ("-1S", None),
        ] {
            assert_eq!(timeout(&headers(&[("grpc-timeout", v)])), want, "{v}");
        }
        assert_eq!(from_http(503), 14);
        assert_eq!(from_http(500), 2);
    }
}
