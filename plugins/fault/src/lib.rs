//! Fault injection with Istio's `fault` semantics: delay a share of calls by a fixed time
//! before they go upstream, and answer a share locally with an error status, the two drawn
//! independently; a call drawn for both is delayed, then aborted, as Envoy does.
//!
//! See `README.md` for the configuration reference.

pub mod config;

#[cfg(test)]
mod tests;

pub use config::{AbortConfig, Config, DelayConfig, PER_MILLION, Share};
use std::time::Duration;
use weft_sdk::host::{self, random_below};
use weft_sdk::{Filter, Hooks, Level, LocalResponse, Request, RequestAction, export_filter};

/// The body of an aborted call: Envoy's, so callers and tests that look for it find it.
pub const ABORT_BODY: &str = "fault filter abort";

/// The fault injection policy.
pub struct Fault {
    // Each None when not configured or when its share is 0%: nothing to draw for.
    delay: Option<(u32, Duration)>,
    abort: Option<(u32, u16, Option<u8>)>,
}

/// Draws whether this call falls in a share of `per_million`.
fn falls_in(per_million: u32) -> bool {
    // A whole share needs no draw, so 100% holds whatever the random numbers.
    per_million >= PER_MILLION || random_below(u64::from(PER_MILLION)) < u64::from(per_million)
}

/// Warns, at configure time, that a fault with no share given never fires: Istio's rule, but
/// easy to fall into, as Istio's own docs once said the opposite (istio/istio#36303).
fn warn_if_never(what: &str, share: Share) {
    if !share.given {
        host::log(
            Level::Warn,
            &format!(
                "{what}: no percentage given, so it never applies (as in Istio); \
                 set percentage.value to 100 to apply it to every call"
            ),
        );
    }
}

impl Filter for Fault {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let delay = config.delay.and_then(|d| {
            warn_if_never("delay", d.share);
            (d.share.per_million > 0).then_some((d.share.per_million, d.fixed_delay))
        });
        let abort = config.abort.and_then(|a| {
            warn_if_never("abort", a.share);
            (a.share.per_million > 0).then_some((a.share.per_million, a.http_status, a.grpc_status))
        });
        Ok(Fault { delay, abort })
    }

    fn hooks(&self) -> Hooks {
        // A fault that can never fire costs nothing per call.
        if self.delay.is_some() || self.abort.is_some() {
            Hooks::ON_REQUEST
        } else {
            Hooks::NONE
        }
    }

    fn on_request(&self, _call_id: u64, req: &mut Request<'_>) -> RequestAction {
        // Two independent draws, as Envoy makes them. The host holds a local answer for the
        // delay too, so a call drawn for both waits, then gets the abort.
        if let Some((share, delay)) = self.delay
            && falls_in(share)
        {
            req.set_delay(delay);
        }
        let Some((share, status, grpc)) = self.abort else {
            return RequestAction::Continue;
        };
        // One draw per call, whatever the caller speaks.
        if !falls_in(share) {
            return RequestAction::Continue;
        }
        match grpc {
            // A gRPC caller gets its status as gRPC sends one: HTTP 200, headers only.
            Some(grpc) if is_grpc(req) => RequestAction::Respond(LocalResponse {
                status: 200,
                headers: vec![
                    ("content-type".into(), b"application/grpc".to_vec()),
                    ("grpc-status".into(), grpc.to_string().into_bytes()),
                    ("grpc-message".into(), ABORT_BODY.trim().as_bytes().to_vec()),
                ],
                body: Vec::new(),
            }),
            _ => RequestAction::Respond(LocalResponse::text(status, ABORT_BODY)),
        }
    }
}

/// Whether the caller speaks gRPC (its `content-type` is `application/grpc…`).
fn is_grpc(req: &Request<'_>) -> bool {
    req.header("content-type").is_some_and(|v| {
        v == b"application/grpc"
            || v.starts_with(b"application/grpc+")
            || v.starts_with(b"application/grpc;")
    })
}

export_filter!(Fault);
