//! Retries with Istio's `retries` semantics: `attempts` retries (so up to 1 + attempts tries),
//! each bounded by `perTryTimeout`, on the failure classes named in `retryOn`, with Envoy's
//! exponential back-off with full jitter, and never past the call's overall timeout.

use serde::Deserialize;
use weft_sdk::config::IstioDuration;
use weft_sdk::host::random_below;
use weft_sdk::{
    Attempt, AttemptAction, Filter, Hooks, Outcome, Request, RequestAction, export_filter,
};

/// Istio's `HTTPRetry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Retries allowed after the first try.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Bound on each try.
    #[serde(default)]
    pub per_try_timeout: Option<IstioDuration>,
    /// Comma-separated failure classes (`5xx,reset`) and bare status codes.
    #[serde(default = "default_retry_on")]
    pub retry_on: String,
}

fn default_attempts() -> u32 {
    2
}

fn default_retry_on() -> String {
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into()
}

/// Failure classes, as Envoy names them.
#[derive(Debug, Default, Clone)]
struct RetryOn {
    any_5xx: bool,
    gateway_error: bool,
    reset: bool,
    connect_failure: bool,
    refused_stream: bool,
    retriable_4xx: bool,
    codes: Vec<u16>,
}

impl RetryOn {
    fn parse(text: &str) -> Result<Self, String> {
        let mut on = RetryOn::default();
        for class in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match class {
                "5xx" => on.any_5xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                // gRPC classes and the status-code list are accepted; codes are given bare.
                "retriable-status-codes"
                | "unavailable"
                | "cancelled"
                | "deadline-exceeded"
                | "resource-exhausted"
                | "internal" => {}
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => on.codes.push(c),
                    _ => return Err(format!("retryOn: unknown retry condition {code:?}")),
                },
            }
        }
        Ok(on)
    }

    fn matches(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Response(s) => {
                (self.any_5xx && (500..=599).contains(&s))
                    || (self.gateway_error && matches!(s, 502..=504))
                    || (self.retriable_4xx && s == 409)
                    || self.codes.contains(&s)
            }
            // Envoy's 5xx class includes connect failures and refused streams.
            Outcome::ConnectFailure => self.connect_failure || self.any_5xx || self.gateway_error,
            Outcome::RefusedStream => self.refused_stream || self.any_5xx,
            Outcome::Reset => self.reset || self.any_5xx,
            Outcome::Timeout => self.any_5xx || self.gateway_error,
            Outcome::NoEndpoint => false,
        }
    }
}

const BASE_MS: u64 = 25;
const MAX_MS: u64 = 250;

/// The retry policy.
pub struct Retry {
    attempts: u32,
    per_try_timeout: Option<std::time::Duration>,
    retry_on: RetryOn,
}

impl Retry {
    /// Envoy's back-off: full jitter over an exponentially growing window, capped.
    fn backoff_ms(retry_number: u32) -> u32 {
        let window = (BASE_MS << retry_number.min(16).saturating_sub(1)).min(MAX_MS);
        random_below(window + 1) as u32
    }
}

impl Filter for Retry {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Retry {
            attempts: config.attempts,
            per_try_timeout: config.per_try_timeout.map(|d| d.0),
            retry_on: RetryOn::parse(&config.retry_on)?,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST | Hooks::ON_ATTEMPT_END
    }

    fn on_request(&self, _call_id: u64, req: &mut Request<'_>) -> RequestAction {
        if let Some(t) = self.per_try_timeout {
            req.set_per_try_timeout(t);
        }
        RequestAction::Continue
    }

    fn on_attempt_end(&self, attempt: &Attempt) -> AttemptAction {
        if attempt.number > self.attempts
            || !attempt.replayable
            || !self.retry_on.matches(attempt.outcome)
        {
            return AttemptAction::Done;
        }
        let delay = Retry::backoff_ms(attempt.number);
        if delay >= attempt.remaining_ms {
            return AttemptAction::Done;
        }
        AttemptAction::Retry(delay)
    }
}

export_filter!(Retry);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::testing::Harness;

    fn attempt(number: u32, outcome: Outcome) -> Attempt {
        Attempt {
            number,
            outcome,
            ..Attempt::default()
        }
    }

    #[test]
    fn seed_policy_retries_5xx_and_resets_three_times() {
        let h =
            Harness::<Retry>::new(r#"{"attempts":3,"perTryTimeout":"2s","retryOn":"5xx,reset"}"#)
                .expect("valid");
        for n in 1..=3 {
            assert!(
                matches!(h.on_attempt_end(&attempt(n, Outcome::Response(503))), AttemptAction::Retry(d) if d <= 250)
            );
            assert!(matches!(
                h.on_attempt_end(&attempt(n, Outcome::Reset)),
                AttemptAction::Retry(_)
            ));
        }
        assert_eq!(
            h.on_attempt_end(&attempt(4, Outcome::Response(503))),
            AttemptAction::Done
        );
        assert_eq!(
            h.on_attempt_end(&attempt(1, Outcome::Response(404))),
            AttemptAction::Done
        );
        assert_eq!(
            h.on_attempt_end(&attempt(1, Outcome::Response(200))),
            AttemptAction::Done
        );
    }

    #[test]
    fn never_retries_an_unreplayable_body_or_past_the_deadline() {
        let h = Harness::<Retry>::new(r#"{"attempts":3,"retryOn":"5xx"}"#).expect("valid");
        let mut a = attempt(1, Outcome::Response(500));
        a.replayable = false;
        assert_eq!(h.on_attempt_end(&a), AttemptAction::Done);
        let mut a = attempt(1, Outcome::Response(500));
        a.remaining_ms = 0;
        assert_eq!(h.on_attempt_end(&a), AttemptAction::Done);
    }

    #[test]
    fn unknown_condition_is_named() {
        let err = Harness::<Retry>::new(r#"{"retryOn":"5xx,sometimes"}"#)
            .err()
            .expect("rejected");
        assert!(err.contains("\"sometimes\""), "{err}");
    }
}
