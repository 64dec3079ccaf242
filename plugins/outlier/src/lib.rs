//! Outlier ejection, as Istio's `outlierDetection`: an endpoint with `consecutive5xxErrors`
//! failures in a row is ejected for `baseEjectionTime`. Counters live in the host's shared
//! state, so every worker and instance counts toward one truth.

use serde::Deserialize;
use weft_sdk::config::IstioDuration;
use weft_sdk::host::{endpoints, state};
use weft_sdk::{Attempt, AttemptAction, Filter, Hooks, Outcome, export_filter};

/// Istio's `OutlierDetection` (the part this plugin enforces so far).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Consecutive 5xx (and connect failures, timeouts) that eject an endpoint.
    #[serde(default = "default_consecutive", rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: u32,
    /// How long an ejection lasts.
    #[serde(default = "default_base")]
    pub base_ejection_time: IstioDuration,
}

fn default_consecutive() -> u32 {
    5
}

fn default_base() -> IstioDuration {
    IstioDuration(std::time::Duration::from_secs(30))
}

/// The outlier detector.
pub struct Outlier {
    threshold: i64,
    ejection_ms: u32,
}

fn is_error(outcome: Outcome) -> bool {
    match outcome {
        Outcome::Response(s) => (500..=599).contains(&s),
        Outcome::ConnectFailure | Outcome::Timeout | Outcome::Reset | Outcome::RefusedStream => {
            true
        }
        Outcome::NoEndpoint => false,
    }
}

impl Filter for Outlier {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Outlier {
            threshold: i64::from(config.consecutive_5xx_errors),
            ejection_ms: config.base_ejection_time.as_millis_u32(),
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_ATTEMPT_END
    }

    fn on_attempt_end(&self, attempt: &Attempt) -> AttemptAction {
        if attempt.endpoint == 0 || self.threshold == 0 {
            return AttemptAction::Done;
        }
        // The run of errors per endpoint is a numeric-keyed counter: one scalar host call.
        if !is_error(attempt.outcome) {
            state::counter_reset(attempt.endpoint);
            return AttemptAction::Done;
        }
        if state::counter_add(attempt.endpoint, 1, 0) >= self.threshold {
            state::counter_reset(attempt.endpoint);
            endpoints::eject(attempt.endpoint, self.ejection_ms);
        }
        AttemptAction::Done
    }
}

export_filter!(Outlier);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::testing::{Harness, add_endpoint, ejections};

    #[test]
    fn five_in_a_row_ejects_for_the_base_time() {
        add_endpoint("payments", 7, "127.0.0.1:9001");
        let h = Harness::<Outlier>::new(r#"{"consecutive5xxErrors":5,"baseEjectionTime":"30s"}"#)
            .expect("valid");
        let fail = Attempt {
            endpoint: 7,
            outcome: Outcome::Response(503),
            ..Attempt::default()
        };
        let ok = Attempt {
            endpoint: 7,
            outcome: Outcome::Response(200),
            ..Attempt::default()
        };
        for _ in 0..4 {
            h.on_attempt_end(&fail);
        }
        h.on_attempt_end(&ok);
        for _ in 0..4 {
            h.on_attempt_end(&fail);
        }
        assert!(
            ejections().is_empty(),
            "a success in between resets the count"
        );
        h.on_attempt_end(&fail);
        assert_eq!(ejections(), vec![(7, 30_000)]);
    }
}
