//! `retryOn`: Envoy's retry conditions (`x-envoy-retry-on`, `x-envoy-retry-grpc-on`), as Istio
//! passes them through, with Istio's bare status codes.
//!
//! Class membership follows Envoy's `RetryStateImpl` rather than the prose of its docs where
//! they differ: Envoy handles every failure without a response head (connect failure, refused
//! stream, reset, per-try timeout) as a stream reset, and `wouldRetryFromReset` retries any
//! reset under `5xx`, `gateway-error` and `reset` alike.

use weft_sdk::Outcome;

/// Envoy conditions this plugin cannot honour, with what they would need.
const UNSUPPORTED: [(&str, &str); 4] = [
    (
        "retriable-headers",
        "response headers are not visible when an attempt ends",
    ),
    (
        "envoy-ratelimited",
        "response headers are not visible when an attempt ends",
    ),
    (
        "reset-before-request",
        "the host does not report whether the request was sent before a reset",
    ),
    ("http3-post-connect-failure", "Weft does not speak HTTP/3"),
];

/// The parsed conditions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RetryOn {
    any_5xx: bool,
    gateway_error: bool,
    reset: bool,
    connect_failure: bool,
    refused_stream: bool,
    retriable_4xx: bool,
    codes: Vec<u16>,
    /// gRPC statuses retried (`x-envoy-retry-grpc-on`), by number.
    grpc: Vec<u8>,
}

/// Envoy's gRPC retry conditions and the statuses they name.
const GRPC: [(&str, u8); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

impl RetryOn {
    /// Parses a comma-separated list, naming the first condition it does not know.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut on = RetryOn::default();
        // Envoy trims each token and skips empty ones.
        for class in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match class {
                "5xx" => on.any_5xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                // Envoy reads the codes for this class from the route's list, which Istio fills
                // from the bare codes; the class alone adds nothing.
                "retriable-status-codes" => {}
                // gRPC conditions match the grpc-status of a trailers-only answer, as Envoy
                // reads it: a status in trailers comes after the body has been streamed.
                other if GRPC.iter().any(|(name, _)| *name == other) => {
                    let code = GRPC
                        .iter()
                        .find(|(name, _)| *name == other)
                        .map_or(0, |g| g.1);
                    if !on.grpc.contains(&code) {
                        on.grpc.push(code);
                    }
                }
                other => {
                    if let Some((_, why)) = UNSUPPORTED.iter().find(|(name, _)| *name == other) {
                        return Err(format!(
                            "retryOn: Envoy's {other:?} condition is not supported: {why}"
                        ));
                    }
                    let code = other
                        .parse::<u16>()
                        .map_err(|_| format!("retryOn: unknown retry condition {other:?}"))?;
                    if !(100..=599).contains(&code) {
                        return Err(format!("retryOn: status code {code} is outside 100..=599"));
                    }
                    if !on.codes.contains(&code) {
                        on.codes.push(code);
                    }
                }
            }
        }
        Ok(on)
    }

    /// Whether any outcome at all can match: if not, the plugin need not see attempts.
    pub(crate) fn can_match(&self) -> bool {
        self.any_5xx
            || self.gateway_error
            || self.reset
            || self.connect_failure
            || self.refused_stream
            || self.retriable_4xx
            || !self.codes.is_empty()
            || !self.grpc.is_empty()
    }

    /// Whether an attempt that ended this way should be retried: by its outcome, or by the
    /// `grpc-status` of its trailers-only gRPC answer.
    pub(crate) fn matches(&self, outcome: Outcome, grpc_status: Option<u8>) -> bool {
        if grpc_status.is_some_and(|g| self.grpc.contains(&g)) {
            return true;
        }
        // Every failure without a response head is a stream reset to Envoy.
        let any_reset = self.any_5xx || self.gateway_error || self.reset;
        match outcome {
            Outcome::Response(s) => {
                (self.any_5xx && (500..=599).contains(&s))
                    || (self.gateway_error && matches!(s, 502..=504))
                    || (self.retriable_4xx && s == 409)
                    || self.codes.contains(&s)
            }
            Outcome::ConnectFailure => any_reset || self.connect_failure,
            Outcome::RefusedStream => any_reset || self.refused_stream,
            // Envoy retries a per-try timeout as a local reset.
            Outcome::Reset | Outcome::Timeout => any_reset,
            // Nothing was tried: Envoy answers "no healthy upstream" without retrying.
            Outcome::NoEndpoint => false,
        }
    }
}
