//! The configuration as written: Istio's `HTTPRetry` in camelCase JSON, plus `backoff`,
//! `budget` and `attemptCountHeader`.
//!
//! Fields are read one by one from JSON values rather than straight into typed fields, because
//! serde's type errors ("invalid type: string, expected u32") do not say which field they are
//! about; every error here starts with the field's path. Semantic checks (ranges, classes) are
//! in [`crate::Retry`]'s constructor.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde_json::Value;
use std::time::Duration;
use weft_sdk::config::IstioDuration;

/// Istio's default `attempts` when the field is absent.
pub const DEFAULT_ATTEMPTS: u32 = 2;

/// Istio's default `retryOn` when the field is absent or empty.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503";

/// Envoy's default back-off base interval.
pub const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// Linkerd's default share of recent requests that may be retried.
pub const DEFAULT_RETRY_RATIO: f64 = 0.2;

/// Linkerd's default floor of retries per second, whatever the request rate.
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;

/// Linkerd's default window over which requests and retries are counted.
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);

/// The retry plugin's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Retries allowed after the first try (so up to 1 + attempts tries).
    pub attempts: u32,
    /// Bound on each try, set on the request; none leaves the route's.
    pub per_try_timeout: Option<IstioDuration>,
    /// Comma-separated Envoy retry conditions and bare status codes.
    pub retry_on: String,
    /// Exponential back-off between tries.
    pub backoff: BackoffConfig,
    /// The retry budget; none when turned off with `"budget": false`.
    pub budget: Option<BudgetConfig>,
    /// Response header that carries the number of tries the call took; none by default.
    pub attempt_count_header: Option<String>,
}

/// Envoy's `retry_back_off`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// The first retry waits up to this long; each later one up to twice the previous bound.
    pub base_interval: IstioDuration,
    /// Cap on the bound; none means 10 × `base_interval`, as Envoy.
    pub max_interval: Option<IstioDuration>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_interval: IstioDuration(DEFAULT_BASE_INTERVAL),
            max_interval: None,
        }
    }
}

/// Linkerd's retry budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per request seen in the window.
    pub retry_ratio: f64,
    /// Retries allowed per second on top of the ratio, so quiet services can still retry.
    pub min_retries_per_second: u32,
    /// The sliding window requests and retries are counted over.
    pub ttl: IstioDuration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            retry_ratio: DEFAULT_RETRY_RATIO,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
            ttl: IstioDuration(DEFAULT_BUDGET_TTL),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            attempts: DEFAULT_ATTEMPTS,
            per_try_timeout: None,
            retry_on: DEFAULT_RETRY_ON.to_string(),
            backoff: BackoffConfig::default(),
            budget: Some(BudgetConfig::default()),
            attempt_count_header: None,
        }
    }
}

// The shapes as written. Values stay untyped until `typed` reads them with their field's name;
// `deny_unknown_fields` names a misspelt field itself.

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a JSON object of retry settings"
)]
struct RawConfig {
    #[serde(default)]
    attempts: Option<Value>,
    #[serde(default)]
    per_try_timeout: Option<Value>,
    #[serde(default)]
    retry_on: Option<Value>,
    #[serde(default)]
    backoff: Option<Value>,
    #[serde(default)]
    budget: Option<Value>,
    #[serde(default)]
    attempt_count_header: Option<Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with baseInterval and maxInterval"
)]
struct RawBackoff {
    #[serde(default)]
    base_interval: Option<Value>,
    #[serde(default)]
    max_interval: Option<Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "false, or an object with retryRatio, minRetriesPerSecond and ttl"
)]
struct RawBudget {
    #[serde(default)]
    retry_ratio: Option<Value>,
    #[serde(default)]
    min_retries_per_second: Option<Value>,
    #[serde(default)]
    ttl: Option<Value>,
}

/// Reads one field's value as `T`, prefixing any error with the field's path.
fn typed<T: DeserializeOwned>(path: &str, value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("{path}: {e}"))
}

/// Reads an optional field, `None` when absent or null.
fn optional<T: DeserializeOwned>(path: &str, value: Option<Value>) -> Result<Option<T>, String> {
    value.map(|v| typed(path, v)).transpose()
}

impl Config {
    fn from_raw(raw: RawConfig) -> Result<Self, String> {
        let defaults = Config::default();
        let retry_on = optional::<String>("retryOn", raw.retry_on)?
            // Istio treats an empty retryOn as unset.
            .filter(|s| !s.trim().is_empty())
            .unwrap_or(defaults.retry_on);
        Ok(Config {
            attempts: optional("attempts", raw.attempts)?.unwrap_or(defaults.attempts),
            per_try_timeout: optional("perTryTimeout", raw.per_try_timeout)?,
            retry_on,
            backoff: match raw.backoff {
                None => defaults.backoff,
                Some(v) => {
                    let b: RawBackoff = typed("backoff", v)?;
                    BackoffConfig {
                        base_interval: optional("backoff.baseInterval", b.base_interval)?
                            .unwrap_or(IstioDuration(DEFAULT_BASE_INTERVAL)),
                        max_interval: optional("backoff.maxInterval", b.max_interval)?,
                    }
                }
            },
            budget: match raw.budget {
                None | Some(Value::Bool(true)) => defaults.budget,
                Some(Value::Bool(false)) => None,
                Some(v) => {
                    let b: RawBudget = typed("budget", v)?;
                    let d = BudgetConfig::default();
                    Some(BudgetConfig {
                        retry_ratio: optional("budget.retryRatio", b.retry_ratio)?
                            .unwrap_or(d.retry_ratio),
                        min_retries_per_second: optional(
                            "budget.minRetriesPerSecond",
                            b.min_retries_per_second,
                        )?
                        .unwrap_or(d.min_retries_per_second),
                        ttl: optional("budget.ttl", b.ttl)?.unwrap_or(d.ttl),
                    })
                }
            },
            attempt_count_header: optional("attemptCountHeader", raw.attempt_count_header)?,
        })
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawConfig::deserialize(deserializer)?;
        Config::from_raw(raw).map_err(D::Error::custom)
    }
}
