//! "Why did this request fail?": for one call, the decisions the sidecar and each plugin made —
//! the service and subset it went to, what each plugin changed, every attempt (the endpoint,
//! the ejected endpoints passed over, the outcome, each plugin's retry verdict) — returned to the
//! caller as JSON in `x-weft-debug-info`.
//!
//! Only an operator may ask: the request carries `x-weft-debug: <token>`, the token being the
//! sidecar's own (random per process, served at the admin endpoint's `/debug/token`, which only
//! whoever can reach the admin endpoint reads). The header never leaves the sidecar. Admin's
//! `/describe` sends a request through the sidecar's outbound side this way and answers with
//! the explanation (`weft describe`).

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use std::sync::Arc;

/// The request header that asks for an explanation.
pub const DEBUG: HeaderName = HeaderName::from_static("x-weft-debug");

/// The response header that carries it.
pub const DEBUG_INFO: HeaderName = HeaderName::from_static("x-weft-debug-info");

/// The most a header value carries; an explanation past it is cut, and says so.
const MAX_INFO: usize = 16 << 10;

/// One call's explanation, filled in as it goes.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Explanation {
    /// The service the authority named.
    pub service: String,
    /// The route a plugin named (a VirtualService `http` entry's name), if one did.
    pub route: Option<String>,
    /// Where the plugins sent it (`service` or `service subset`).
    pub destination: String,
    /// What each plugin did in `on-request` (plugin, what).
    pub plugins: Vec<(String, String)>,
    /// Every attempt.
    pub attempts: Vec<AttemptNote>,
    /// The status the caller got.
    pub status: u16,
}

/// One attempt.
#[derive(Debug, Default, Serialize, Clone)]
pub struct AttemptNote {
    /// 1 for the first.
    pub number: u32,
    /// The endpoint picked, if one was.
    pub endpoint: Option<String>,
    /// Endpoints of the subset passed over because they were ejected.
    pub ejected: Vec<String>,
    /// What happened (`200`, `503`, `connect_failure`, `timeout`, …).
    pub outcome: String,
    /// How long it took, in milliseconds.
    pub ms: u64,
    /// Each plugin's verdict in `on-attempt-end` (plugin, verdict).
    pub verdicts: Vec<(String, String)>,
}

/// Shared by the handler, which writes it into the response, and the call, which fills it.
pub type Shared = Arc<parking_lot::Mutex<Explanation>>;

/// Whether `headers` ask for an explanation with `token`; the header is removed either way, so
/// no token travels further.
pub fn asked(headers: &mut HeaderMap, token: &str) -> bool {
    carries(headers, &DEBUG, token)
}

/// Whether `headers` carry `name` with the secret `token`; the header is removed either way,
/// so a caller's own value never goes further.
pub fn carries(headers: &mut HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    let Some(given) = headers.remove(name) else {
        return false;
    };
    let given = given.as_bytes();
    // Compared in constant time: the token is a secret.
    given.len() == token.len()
        && given
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The explanation as a header value.
pub fn header(e: &Explanation) -> Option<HeaderValue> {
    let mut text = serde_json::to_string(e).ok()?;
    if text.len() > MAX_INFO {
        let mut cut = e.clone();
        cut.attempts.truncate(3);
        cut.plugins.truncate(16);
        text = serde_json::to_string(&cut).ok()?;
        text.truncate(MAX_INFO);
    }
    // JSON strings escape control characters; anything else non-ASCII is escaped here so the
    // value is a valid header.
    let ascii: String = text
        .chars()
        .flat_map(|c| {
            if c.is_ascii() {
                vec![c]
            } else {
                format!("\\u{:04x}", c as u32).chars().collect()
            }
        })
        .collect();
    HeaderValue::from_str(&ascii).ok()
}

/// The outcome as the explanation names it.
pub fn outcome_name(o: crate::plugin::Outcome) -> String {
    use crate::plugin::Outcome;
    match o {
        Outcome::Response(s) => s.to_string(),
        Outcome::ConnectFailure => "connect_failure".into(),
        Outcome::Reset => "reset".into(),
        Outcome::RefusedStream => "refused_stream".into(),
        Outcome::Timeout => "timeout".into(),
        Outcome::NoEndpoint => "no_endpoint".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_asks_and_the_header_goes_no_further() {
        let mut h = HeaderMap::new();
        h.insert(DEBUG, HeaderValue::from_static("secret"));
        assert!(asked(&mut h, "secret"));
        assert!(h.get(DEBUG).is_none());
        h.insert(DEBUG, HeaderValue::from_static("guess"));
        assert!(!asked(&mut h, "secret"));
        assert!(h.get(DEBUG).is_none());
        assert!(!asked(&mut h, "secret"));
    }

    #[test]
    fn an_explanation_is_a_valid_header_even_when_long() {
        let e = Explanation {
            service: "payments".into(),
            plugins: vec![("canary".into(), "sent it to payments subset v2 ü".into())],
            attempts: vec![AttemptNote::default(); 2_000],
            ..Explanation::default()
        };
        let v = header(&e).expect("a header");
        assert!(v.len() <= MAX_INFO);
        assert!(v.to_str().is_ok());
    }
}
