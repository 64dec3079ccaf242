//! The API's HTTP plumbing: JSON answers and errors, bounded request bodies, query strings.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use std::collections::BTreeMap;

/// Every answer's body.
pub(super) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The most errors one answer lists: a text with thousands of problems gets the first ones
/// and a count, not an answer as large as itself.
const MAX_ERRORS: usize = 100;

/// The most one listed error may say.
const MAX_ERROR_BYTES: usize = 2048;

pub(super) fn errors(status: StatusCode, list: Vec<String>) -> Response<Body> {
    let more = list.len().saturating_sub(MAX_ERRORS);
    let mut list: Vec<String> = list
        .iter()
        .take(MAX_ERRORS)
        .map(|e| super::yaml::clip(e, MAX_ERROR_BYTES).into_owned())
        .collect();
    if more > 0 {
        list.push(format!("… and {more} more errors"));
    }
    json(status, &serde_json::json!({ "errors": list }))
}

pub(super) fn error(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    errors(status, vec![text.into()])
}

pub(super) fn line<T: Serialize>(msg: &T) -> Bytes {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The largest artifact the API takes.
pub(super) const MAX_ARTIFACT: usize = 32 << 20;

/// The largest resource text `apply` takes: far more than any set of Istio resources, and what
/// the YAML reader may expand it to is bounded too (see [`super::yaml`]).
pub(super) const MAX_APPLY: usize = 8 << 20;

/// The request body, or a 413 when it is longer than `limit` bytes.
pub(super) async fn body_bytes(
    req: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body unreadable or over {limit} bytes: {e}"),
        )),
    }
}

pub(super) fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
