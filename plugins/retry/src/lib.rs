//! Retries with Istio's `retries` semantics: `attempts` retries (so up to 1 + attempts tries),
//! each bounded by `perTryTimeout`, on the failure classes named in `retryOn` (Envoy's), with
//! Envoy's exponential back-off with full jitter, never past the call's overall timeout, and
//! within a Linkerd-style retry budget shared by every instance of the plugin.
//!
//! See `README.md` for the configuration reference.

mod budget;
pub mod config;
mod retry_on;

#[cfg(test)]
mod tests;

use budget::Budget;
pub use config::{BackoffConfig, BudgetConfig, Config};
use retry_on::RetryOn;
use std::time::Duration;
use weft_sdk::host::random_below;
use weft_sdk::{
    Attempt, AttemptAction, Filter, Hooks, Request, RequestAction, Response, ResponseAction,
    export_filter,
};

/// The retry policy.
pub struct Retry {
    attempts: u32,
    per_try_timeout: Option<Duration>,
    retry_on: RetryOn,
    base_ms: u64,
    max_ms: u64,
    // None when turned off, or when this configuration can never retry.
    budget: Option<Budget>,
    attempt_count_header: Option<String>,
    hooks: Hooks,
}

impl Retry {
    /// The upper bound of the back-off before retry `n` (1-based): Envoy doubles the bound
    /// from the base on each retry and caps it.
    fn backoff_window_ms(&self, n: u32) -> u64 {
        let doublings = n.saturating_sub(1).min(63);
        self.base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_ms)
    }

    /// A delay drawn uniformly from `[0, window]`: full jitter, so callers that failed
    /// together do not retry together.
    fn backoff_ms(&self, n: u32) -> u32 {
        let delay = random_below(self.backoff_window_ms(n) + 1);
        u32::try_from(delay).unwrap_or(u32::MAX)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A header name as the host accepts it (an RFC 9110 token), lower-cased.
fn header_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "attemptCountHeader: {text:?} is not a valid header name"
        ))
    }
}

impl Filter for Retry {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let retry_on = RetryOn::parse(&config.retry_on)?;

        let per_try_timeout = config.per_try_timeout.map(|d| d.0);
        // Istio rejects a per-try timeout under 1 ms; 0 would also mean "no bound" to the host.
        if per_try_timeout.is_some_and(|d| d < Duration::from_millis(1)) {
            return Err("perTryTimeout: must be at least 1ms".into());
        }

        let base_ms = millis(config.backoff.base_interval.0);
        if base_ms == 0 {
            return Err("backoff.baseInterval: must be at least 1ms".into());
        }
        let max_ms = match config.backoff.max_interval {
            Some(max) => millis(max.0),
            // Envoy's default cap.
            None => base_ms.saturating_mul(10),
        };
        if max_ms < base_ms {
            return Err(format!(
                "backoff.maxInterval: {max_ms}ms is less than backoff.baseInterval ({base_ms}ms)"
            ));
        }

        let attempt_count_header = config
            .attempt_count_header
            .as_deref()
            .map(header_name)
            .transpose()?;

        let can_retry = config.attempts > 0 && retry_on.can_match();
        let budget = match config.budget {
            Some(b) => {
                if !b.retry_ratio.is_finite() || b.retry_ratio < 0.0 {
                    return Err(format!(
                        "budget.retryRatio: must be a number, zero or more (got {})",
                        b.retry_ratio
                    ));
                }
                let ttl = b.ttl.0;
                // Linkerd's bounds; the upper one also bounds the buckets summed per retry.
                if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
                    return Err(format!(
                        "budget.ttl: must be between 1s and 60s (got {}ms)",
                        ttl.as_millis()
                    ));
                }
                if b.retry_ratio == 0.0 && b.min_retries_per_second == 0 {
                    return Err(
                        "budget: retryRatio and minRetriesPerSecond are both 0, so no \
                                retry would ever be allowed; set attempts to 0 instead"
                            .into(),
                    );
                }
                // Buckets are whole seconds: a fractional ttl counts as the next second up.
                let window_s = millis(ttl).div_ceil(1_000);
                can_retry.then(|| Budget::new(b.retry_ratio, b.min_retries_per_second, window_s))
            }
            None => None,
        };

        let mut hooks = Hooks::NONE;
        if can_retry {
            hooks |= Hooks::ON_ATTEMPT_END;
        }
        if per_try_timeout.is_some() || budget.is_some() {
            hooks |= Hooks::ON_REQUEST;
        }
        if attempt_count_header.is_some() {
            hooks |= Hooks::ON_RESPONSE;
        }

        Ok(Retry {
            attempts: config.attempts,
            per_try_timeout,
            retry_on,
            base_ms,
            max_ms,
            budget,
            attempt_count_header,
            hooks,
        })
    }

    fn hooks(&self) -> Hooks {
        self.hooks
    }

    fn on_request(&self, _call_id: u64, req: &mut Request<'_>) -> RequestAction {
        if let Some(t) = self.per_try_timeout {
            req.set_per_try_timeout(t);
        }
        if let Some(budget) = &self.budget {
            budget.record_request();
        }
        RequestAction::Continue
    }

    fn on_attempt_end(&self, attempt: &Attempt) -> AttemptAction {
        // Cheapest checks first: most attempts succeed, and only a wanted retry touches the
        // shared state.
        if !self.retry_on.matches(attempt.outcome, attempt.grpc_status)
            || attempt.number > self.attempts
            || !attempt.replayable
        {
            return AttemptAction::Done;
        }
        let delay = self.backoff_ms(attempt.number);
        // A retry that would start after the caller's deadline is only wasted work.
        if delay >= attempt.remaining_ms {
            return AttemptAction::Done;
        }
        // Last, so a retry refused for another reason does not spend the budget.
        if let Some(budget) = &self.budget
            && !budget.try_spend()
        {
            return AttemptAction::Done;
        }
        AttemptAction::Retry(delay)
    }

    fn on_response(&self, _call_id: u64, resp: &mut Response<'_>) -> ResponseAction {
        if let Some(name) = &self.attempt_count_header {
            let attempts = resp.attempts().to_string();
            // The name was checked in `new` and digits are a valid value, so this cannot fail;
            // were it to, a missing header is better than failing the call.
            let _ = resp.set_header(name, attempts);
        }
        ResponseAction::Continue
    }
}

export_filter!(Retry);
