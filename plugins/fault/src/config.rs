//! The configuration as written: Istio's `HTTPFaultInjection` in camelCase JSON.
//!
//! Fields are read one by one from JSON values rather than straight into typed fields, because
//! serde's type errors ("invalid type: string, expected f64") do not say which field they are
//! about; every error here starts with the field's path. The checks are Istio's validation
//! (and Envoy's, where Envoy would refuse what Istio lets through), so a fault Istio accepts
//! is accepted here and means the same.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde_json::Value;
use std::time::Duration;
use weft_sdk::config::IstioDuration;

/// The denominator of a [`Share`]: Istio turns `percentage.value` into Envoy's
/// `FractionalPercent` over a million, so one request in a million is the finest share.
pub const PER_MILLION: u32 = 1_000_000;

/// The fault plugin's configuration: a delay, an abort, or both.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Holds some calls before they go upstream.
    pub delay: Option<DelayConfig>,
    /// Answers some calls locally with an error status instead.
    pub abort: Option<AbortConfig>,
}

/// Istio's `HTTPFaultInjection.Delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayConfig {
    /// The calls delayed.
    pub share: Share,
    /// How long each is held.
    pub fixed_delay: Duration,
}

/// Istio's `HTTPFaultInjection.Abort`.
#[derive(Debug, Clone, PartialEq)]
pub struct AbortConfig {
    /// The calls aborted.
    pub share: Share,
    /// The status they are answered with, 200..=599.
    pub http_status: u16,
    /// With `grpcStatus`: the gRPC status a gRPC caller is answered with (then `http_status`
    /// is the HTTP status the gRPC spec pairs with it, for other callers).
    pub grpc_status: Option<u8>,
}

/// gRPC's status names (`grpcStatus: UNAVAILABLE`), their numbers, and the HTTP status the
/// gRPC spec pairs with each (grpc-gateway's mapping), for a caller that is not gRPC.
const GRPC_STATUSES: [(&str, u8, u16); 16] = [
    ("CANCELLED", 1, 499),
    ("UNKNOWN", 2, 500),
    ("INVALID_ARGUMENT", 3, 400),
    ("DEADLINE_EXCEEDED", 4, 504),
    ("NOT_FOUND", 5, 404),
    ("ALREADY_EXISTS", 6, 409),
    ("PERMISSION_DENIED", 7, 403),
    ("RESOURCE_EXHAUSTED", 8, 429),
    ("FAILED_PRECONDITION", 9, 400),
    ("ABORTED", 10, 409),
    ("OUT_OF_RANGE", 11, 400),
    ("UNIMPLEMENTED", 12, 501),
    ("INTERNAL", 13, 500),
    ("UNAVAILABLE", 14, 503),
    ("DATA_LOSS", 15, 500),
    ("UNAUTHENTICATED", 16, 401),
];

/// The share of calls a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Calls per [`PER_MILLION`].
    pub per_million: u32,
    /// Whether `percentage` or `percent` was given; Istio injects nothing when neither is.
    pub given: bool,
}

// The shapes as written. Values stay untyped until `typed` reads them with their field's name;
// `deny_unknown_fields` names a misspelt field itself.

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a JSON object with delay and/or abort"
)]
struct RawConfig {
    #[serde(default)]
    delay: Option<Value>,
    #[serde(default)]
    abort: Option<Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with fixedDelay and percentage"
)]
struct RawDelay {
    #[serde(default)]
    percentage: Option<Value>,
    #[serde(default)]
    percent: Option<Value>,
    #[serde(default)]
    fixed_delay: Option<Value>,
    #[serde(default)]
    exponential_delay: Option<Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with httpStatus and percentage"
)]
struct RawAbort {
    #[serde(default)]
    percentage: Option<Value>,
    #[serde(default)]
    percent: Option<Value>,
    #[serde(default)]
    http_status: Option<Value>,
    #[serde(default)]
    grpc_status: Option<Value>,
    #[serde(default)]
    http2_error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with value, a percentage from 0 to 100"
)]
struct RawPercent {
    #[serde(default)]
    value: Option<Value>,
}

/// Reads one field's value as `T`, prefixing any error with the field's path.
fn typed<T: DeserializeOwned>(path: &str, value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("{path}: {e}"))
}

/// Reads an optional field, `None` when absent or null.
fn optional<T: DeserializeOwned>(path: &str, value: Option<Value>) -> Result<Option<T>, String> {
    value.map(|v| typed(path, v)).transpose()
}

/// The share from `percentage` (a double, 0 to 100) or the deprecated integer `percent`.
/// `percentage` wins when both are given, as Istio translates it.
fn share(at: &str, percentage: Option<Value>, percent: Option<Value>) -> Result<Share, String> {
    let percentage = optional::<RawPercent>(&format!("{at}.percentage"), percentage)?;
    let percent = optional::<i64>(&format!("{at}.percent"), percent)?;
    if let Some(p) = percentage {
        let path = format!("{at}.percentage.value");
        // Protobuf's default: `percentage: {}` is 0%.
        let value = optional::<f64>(&path, p.value)?.unwrap_or(0.0);
        if !value.is_finite() || !(0.0..=100.0).contains(&value) {
            return Err(format!("{path}: must be from 0 to 100 (got {value})"));
        }
        // Rounded, not truncated as Istio does, so 0.29 is 2,900 per million, not 2,899.
        let per_million = (value * f64::from(PER_MILLION / 100)).round() as u32;
        return Ok(Share {
            per_million,
            given: true,
        });
    }
    if let Some(p) = percent {
        if !(0..=100).contains(&p) {
            return Err(format!("{at}.percent: must be from 0 to 100 (got {p})"));
        }
        return Ok(Share {
            per_million: p as u32 * (PER_MILLION / 100),
            given: true,
        });
    }
    Ok(Share {
        per_million: 0,
        given: false,
    })
}

fn delay(value: Value) -> Result<DelayConfig, String> {
    let raw: RawDelay = typed("delay", value)?;
    if raw.exponential_delay.is_some() {
        return Err(
            "delay.exponentialDelay: not supported (Istio rejects it too); \
                    use fixedDelay"
                .into(),
        );
    }
    let share = share("delay", raw.percentage, raw.percent)?;
    let Some(fixed) = optional::<IstioDuration>("delay.fixedDelay", raw.fixed_delay)? else {
        return Err("delay.fixedDelay: required".into());
    };
    let fixed_delay = fixed.0;
    // Istio's rules for a duration: at least 1 ms, in whole milliseconds.
    if fixed_delay < Duration::from_millis(1) {
        return Err("delay.fixedDelay: must be at least 1ms".into());
    }
    if fixed_delay.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "delay.fixedDelay: only whole milliseconds are supported (got {fixed_delay:?})"
        ));
    }
    // The host takes the delay in u32 milliseconds: about 49 days.
    if u32::try_from(fixed_delay.as_millis()).is_err() {
        return Err(format!(
            "delay.fixedDelay: must be at most {}ms (got {}ms)",
            u32::MAX,
            fixed_delay.as_millis()
        ));
    }
    Ok(DelayConfig { share, fixed_delay })
}

fn abort(value: Value) -> Result<AbortConfig, String> {
    let raw: RawAbort = typed("abort", value)?;
    if let Some(name) = optional::<String>("abort.grpcStatus", raw.grpc_status)? {
        if raw.http_status.is_some() {
            return Err("abort: give httpStatus or grpcStatus, not both".into());
        }
        let Some((_, code, http)) = GRPC_STATUSES.iter().find(|(n, _, _)| *n == name) else {
            return Err(format!(
                "abort.grpcStatus: {name:?} is not a gRPC status name (Istio takes them in capitals: UNAVAILABLE, INTERNAL, …; OK cannot abort)"
            ));
        };
        let share = share("abort", raw.percentage, raw.percent)?;
        return Ok(AbortConfig {
            share,
            http_status: *http,
            grpc_status: Some(*code),
        });
    }
    if raw.http2_error.is_some() {
        return Err(
            "abort.http2Error: not supported (Istio rejects it too); use httpStatus".into(),
        );
    }
    let share = share("abort", raw.percentage, raw.percent)?;
    let Some(status) = optional::<i64>("abort.httpStatus", raw.http_status)? else {
        return Err("abort.httpStatus: required".into());
    };
    // Envoy's bound (Istio's validation says the same, though it lets 600 through, which
    // Envoy then refuses). A 1xx cannot be a final answer.
    let http_status = match u16::try_from(status) {
        Ok(s) if (200..=599).contains(&s) => s,
        _ => {
            return Err(format!(
                "abort.httpStatus: must be from 200 to 599 (got {status})"
            ));
        }
    };
    Ok(AbortConfig {
        share,
        http_status,
        grpc_status: None,
    })
}

impl Config {
    fn from_raw(raw: RawConfig) -> Result<Self, String> {
        let delay = raw.delay.filter(|v| !v.is_null()).map(delay).transpose()?;
        let abort = raw.abort.filter(|v| !v.is_null()).map(abort).transpose()?;
        if delay.is_none() && abort.is_none() {
            // Istio's rule: a fault with neither is a mistake, not a no-op.
            return Err("a fault needs a delay, an abort, or both".into());
        }
        Ok(Config { delay, abort })
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawConfig::deserialize(deserializer)?;
        Config::from_raw(raw).map_err(D::Error::custom)
    }
}
