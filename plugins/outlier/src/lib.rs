//! Outlier ejection with Istio's `outlierDetection` semantics, as Envoy implements them: an
//! endpoint with `consecutive5xxErrors` errors (or `consecutiveGatewayErrors` gateway errors) in
//! a row is ejected for `baseEjectionTime` times the number of times in a row it was ejected,
//! capped at `maxEjectionTime`, unless `maxEjectionPercent` or `minHealthPercent` forbid it.
//!
//! Everything the detector remembers lives in the host's numeric counters, so every worker and
//! instance counts toward one truth. A plugin has no timers, so what Envoy does on its
//! `interval` sweep (letting the ejection multiplier fall back) is worked out lazily, at the
//! next ejection. See the README for the differences from Envoy that follow.

use serde::{Deserialize, Deserializer};
use weft_sdk::config::IstioDuration;
use weft_sdk::host::metrics::{self, Sample, SeriesId};
use weft_sdk::host::{self, endpoints, state};
use weft_sdk::{Attempt, AttemptAction, Filter, Hooks, Level, MetricKind, Outcome, export_filter};

/// Istio's `OutlierDetection` (plus Envoy's `max_ejection_time`). Every field is optional;
/// absent fields take Istio's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Errors in a row (any 5xx, connect failure, timeout, reset, refused stream) that eject an
    /// endpoint; 0 turns this detector off. Default 5.
    #[serde(default, rename = "consecutive5xxErrors", deserialize_with = "de_5xx")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Gateway errors in a row (502, 503, 504, connect failure, timeout, reset, refused stream)
    /// that eject an endpoint; 0 (the default) turns this detector off.
    #[serde(
        default,
        rename = "consecutiveGatewayErrors",
        deserialize_with = "de_gateway"
    )]
    pub consecutive_gateway_errors: Option<u32>,
    /// How long an endpoint must serve for its ejection multiplier to fall back by one.
    /// Default 10s.
    #[serde(default, rename = "interval", deserialize_with = "de_interval")]
    pub interval: Option<IstioDuration>,
    /// The first ejection's length; later ones in a row are multiples of it. Default 30s.
    #[serde(default, rename = "baseEjectionTime", deserialize_with = "de_base")]
    pub base_ejection_time: Option<IstioDuration>,
    /// The longest an ejection lasts (Envoy's `max_ejection_time`). Default 300s, or
    /// `baseEjectionTime` when that is longer.
    #[serde(default, rename = "maxEjectionTime", deserialize_with = "de_max")]
    pub max_ejection_time: Option<IstioDuration>,
    /// The most of a service's endpoints that may be ejected at once, in percent; one endpoint
    /// may always be. 0 means the default, 10, as in Istio.
    #[serde(
        default,
        rename = "maxEjectionPercent",
        deserialize_with = "de_max_percent"
    )]
    pub max_ejection_percent: Option<i64>,
    /// No ejection leaves fewer than this percent of a service's endpoints serving.
    /// Default 0 (off).
    #[serde(
        default,
        rename = "minHealthPercent",
        deserialize_with = "de_min_health"
    )]
    pub min_health_percent: Option<i64>,
}

/// Deserializes a field so that a malformed value's error names the field.
fn named<'de, D: Deserializer<'de>, T: Deserialize<'de>>(field: &str, d: D) -> Result<T, D::Error> {
    T::deserialize(d).map_err(|e| {
        // serde_json adds the position again to the error we build; keep only one.
        let text = e.to_string();
        let text = text.split(" at line ").next().unwrap_or(&text);
        serde::de::Error::custom(format_args!("{field}: {text}"))
    })
}

macro_rules! named_fields {
    ($($f:ident => $name:literal),* $(,)?) => {$(
        fn $f<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
            named($name, d)
        }
    )*};
}

named_fields! {
    de_5xx => "consecutive5xxErrors",
    de_gateway => "consecutiveGatewayErrors",
    de_interval => "interval",
    de_base => "baseEjectionTime",
    de_max => "maxEjectionTime",
    de_max_percent => "maxEjectionPercent",
    de_min_health => "minHealthPercent",
}

const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_INTERVAL_MS: u64 = 10_000;
const DEFAULT_BASE_EJECTION_MS: u64 = 30_000;
const DEFAULT_MAX_EJECTION_MS: u64 = 300_000;
const DEFAULT_MAX_EJECTION_PERCENT: u64 = 10;

/// A run of errors still unbroken an hour after it began starts over, so the runs of endpoints
/// that went away do not pile up in the host's state.
const RUN_TTL_MS: u32 = 3_600_000;

/// Reading a numeric counter creates it when absent; such a zero may expire at once.
const READ_TTL_MS: u32 = 1;

/// What the detector keeps per endpoint, each in a numeric counter keyed by the endpoint id
/// XOR the field's tag.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// The current run of errors. Tag 0: the same key as this plugin's first version used.
    Run5xx,
    /// The current run of gateway errors.
    RunGateway,
    /// Envoy's ejection-time multiplier (`eject_time_backoff`) as of the last ejection.
    Multiplier,
    /// When the last ejection ends, in wall-clock milliseconds.
    EjectionEnd,
}

impl Field {
    fn key(self, endpoint: u64) -> u64 {
        // Endpoint ids are 64-bit hashes: XOR with distinct wide tags collides only by chance.
        let tag = match self {
            Field::Run5xx => 0,
            Field::RunGateway => 0x6761_7465_7761_7901,
            Field::Multiplier => 0x6d75_6c74_6970_6c02,
            Field::EjectionEnd => 0x656a_6563_7465_6403,
        };
        endpoint ^ tag
    }
}

/// Which detector asked for an ejection; the `cause` label of the ejection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Errors5xx,
    Gateway,
}

/// Why an ejection was not made; the `reason` label of the skipped-ejection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    MaxEjectionPercent,
    MinHealthPercent,
}

/// How an attempt's outcome counts for each detector; `None` for outcomes that say nothing
/// about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    error: bool,
    gateway_error: bool,
}

/// Classifies an outcome as Envoy does without `split_external_local_origin_errors`: local
/// failures become 5xx codes (connect failures and resets 503, timeouts 504), so they count for
/// both detectors; a 5xx other than 502–504 counts only as an error and breaks a gateway run.
fn verdict(outcome: Outcome) -> Option<Verdict> {
    let (error, gateway_error) = match outcome {
        Outcome::Response(status) => ((500..=599).contains(&status), matches!(status, 502..=504)),
        // Envoy's router reports every upstream reset, a refused stream included, as a
        // connect failure (503).
        Outcome::ConnectFailure | Outcome::Timeout | Outcome::Reset | Outcome::RefusedStream => {
            (true, true)
        }
        Outcome::NoEndpoint => return None,
    };
    Some(Verdict {
        error,
        gateway_error,
    })
}

/// The outlier detector.
pub struct Outlier {
    /// Errors in a row that eject; `None` when the detector is off.
    consecutive_5xx: Option<i64>,
    /// Gateway errors in a row that eject; `None` when the detector is off.
    consecutive_gateway: Option<i64>,
    interval_ms: u64,
    base_ms: u64,
    max_ms: u64,
    max_ejection_percent: u64,
    min_health_percent: u64,
    ejected_5xx: SeriesId,
    ejected_gateway: SeriesId,
    skipped_max_percent: SeriesId,
    skipped_min_health: SeriesId,
}

/// A duration field in whole milliseconds, or its default; zero is refused where Envoy
/// requires a positive duration.
fn millis(value: Option<IstioDuration>, default_ms: u64, field: &str) -> Result<u64, String> {
    let Some(d) = value else {
        return Ok(default_ms);
    };
    match u64::from(d.as_millis_u32()) {
        0 => Err(format!("{field}: must be at least 1ms")),
        ms => Ok(ms),
    }
}

fn percent(value: Option<i64>, field: &str) -> Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(p @ 0..=100) => Ok(Some(p.unsigned_abs())),
        Some(p) => Err(format!("{field}: must be between 0 and 100, got {p}")),
    }
}

fn threshold(value: Option<u32>, default: u32) -> Option<i64> {
    match value.unwrap_or(default) {
        0 => None,
        n => Some(i64::from(n)),
    }
}

impl Outlier {
    /// Adds an error to a run and returns its new length. Only the caller that sees the run
    /// reach exactly the threshold acts on it (as Envoy's `==`), so two workers never both eject
    /// for one run; a run at or past the threshold starts over (Envoy resets it after an
    /// ejection attempt, whether or not it ejected; past it, the threshold was lowered or
    /// another worker is acting on it).
    fn extend_run(key: u64, threshold: i64) -> i64 {
        let run = state::counter_add(key, 1, RUN_TTL_MS);
        if run >= threshold {
            state::counter_reset(key);
        }
        run
    }

    /// Whether this plugin ejected the endpoint and the ejection has not ended.
    fn still_ejected(endpoint: u64) -> bool {
        let end = state::counter_add(Field::EjectionEnd.key(endpoint), 0, READ_TTL_MS);
        u64::try_from(end).is_ok_and(|end| end > host::now_ms())
    }

    fn reset_runs(endpoint: u64) {
        state::counter_reset(Field::Run5xx.key(endpoint));
        state::counter_reset(Field::RunGateway.key(endpoint));
    }

    fn record(series: SeriesId) {
        metrics::record(&[Sample { series, value: 1.0 }]);
    }

    fn skip(&self, endpoint: u64, why: Skip) {
        let (series, reason) = match why {
            Skip::MaxEjectionPercent => (self.skipped_max_percent, "maxEjectionPercent"),
            Skip::MinHealthPercent => (self.skipped_min_health, "minHealthPercent"),
        };
        Self::record(series);
        if host::log_enabled(Level::Debug) {
            host::log(
                Level::Debug,
                &format!("outlier: not ejecting endpoint {endpoint:#x}: {reason} reached"),
            );
        }
    }

    /// Whether the pool's caps allow one more ejection. `ejected` counts the endpoints out now.
    fn allowed(&self, total: u64, ejected: u64) -> Result<(), Skip> {
        // Envoy: (ejected + 1) / total <= maxEjectionPercent, except that one endpoint may
        // always be ejected (its `always_eject_one_host`).
        if ejected > 0 && (ejected + 1) * 100 > self.max_ejection_percent * total {
            return Err(Skip::MaxEjectionPercent);
        }
        // Istio/Envoy would let the pool fall below minHealthPercent and then balance across
        // every endpoint (panic mode); not ejecting has much the same effect on traffic.
        let serving_after = total.saturating_sub(ejected + 1);
        if serving_after * 100 < self.min_health_percent * total {
            return Err(Skip::MinHealthPercent);
        }
        Ok(())
    }

    /// How long to eject for, and the multiplier to remember: Envoy's back-off, with the
    /// fall-back its `interval` sweep would have applied worked out now.
    fn ejection(&self, endpoint: u64, now: u64) -> (u64, u64) {
        let multiplier = state::counter_add(Field::Multiplier.key(endpoint), 0, READ_TTL_MS);
        let last_end = state::counter_add(Field::EjectionEnd.key(endpoint), 0, READ_TTL_MS);
        let mut multiplier = u64::try_from(multiplier).unwrap_or(0);
        if let Ok(last_end) = u64::try_from(last_end)
            && last_end > 0
        {
            // One step back for every whole interval served since the last ejection ended.
            multiplier = multiplier.saturating_sub(now.saturating_sub(last_end) / self.interval_ms);
        }
        // Envoy stops growing the multiplier once base × multiplier reaches max + base, so it
        // falls back from the cap promptly.
        if multiplier.saturating_mul(self.base_ms) < self.max_ms + self.base_ms {
            multiplier += 1;
        }
        let duration = multiplier.saturating_mul(self.base_ms).min(self.max_ms);
        (duration, multiplier)
    }

    fn try_eject(&self, endpoint: u64, cause: Cause) {
        let pool = endpoints::pool(endpoint);
        let Some(me) = pool.iter().find(|e| e.id == endpoint) else {
            // The host does not know it (it went away): nothing to eject.
            return;
        };
        if me.ejected_ms > 0 {
            // Already out (by another plugin, or our record of it expired early): Envoy ignores
            // an ejected endpoint's errors.
            return;
        }
        let total = pool.len() as u64;
        let ejected = pool.iter().filter(|e| e.ejected_ms > 0).count() as u64;
        if let Err(why) = self.allowed(total, ejected) {
            self.skip(endpoint, why);
            return;
        }
        let now = host::now_ms();
        let (duration, multiplier) = self.ejection(endpoint, now);
        let duration_ms = u32::try_from(duration).unwrap_or(u32::MAX);
        if !endpoints::eject(endpoint, duration_ms) {
            return;
        }
        // Kept until the multiplier would have fallen back to 0, so the counters expire exactly
        // when they stop mattering.
        let ttl = duration.saturating_add(multiplier.saturating_mul(self.interval_ms));
        let ttl = u32::try_from(ttl).unwrap_or(u32::MAX);
        let end = now.saturating_add(duration);
        for (field, value) in [(Field::Multiplier, multiplier), (Field::EjectionEnd, end)] {
            let key = field.key(endpoint);
            state::counter_reset(key);
            state::counter_add(key, i64::try_from(value).unwrap_or(i64::MAX), ttl);
        }
        // Envoy resets every run when the endpoint returns, so a run half-way now must not
        // carry over to its next ejection.
        Self::reset_runs(endpoint);
        Self::record(match cause {
            Cause::Errors5xx => self.ejected_5xx,
            Cause::Gateway => self.ejected_gateway,
        });
        if host::log_enabled(Level::Debug) {
            host::log(
                Level::Debug,
                &format!(
                    "outlier: ejected endpoint {endpoint:#x} for {duration} ms ({cause:?}, x{multiplier})"
                ),
            );
        }
    }
}

impl Filter for Outlier {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let interval_ms = millis(config.interval, DEFAULT_INTERVAL_MS, "interval")?;
        let base_ms = millis(
            config.base_ejection_time,
            DEFAULT_BASE_EJECTION_MS,
            "baseEjectionTime",
        )?;
        // Envoy: an unset max_ejection_time is 300s or the base, whichever is longer; a set
        // one below the base is refused.
        let max_ms = match config.max_ejection_time {
            None => DEFAULT_MAX_EJECTION_MS.max(base_ms),
            Some(_) => {
                let max = millis(config.max_ejection_time, 0, "maxEjectionTime")?;
                if max < base_ms {
                    return Err(format!(
                        "maxEjectionTime: must be at least baseEjectionTime ({max} ms < {base_ms} ms)"
                    ));
                }
                max
            }
        };
        // Istio cannot tell 0 from unset and leaves Envoy's default of 10% in place.
        let max_ejection_percent = match percent(config.max_ejection_percent, "maxEjectionPercent")?
        {
            None | Some(0) => DEFAULT_MAX_EJECTION_PERCENT,
            Some(p) => p,
        };
        let min_health_percent =
            percent(config.min_health_percent, "minHealthPercent")?.unwrap_or(0);

        let ejections = metrics::define(
            MetricKind::Counter,
            "outlier_ejections_total",
            "Endpoints ejected by outlier detection, by the detector that asked.",
            &["cause"],
            &[],
        )?;
        let skipped = metrics::define(
            MetricKind::Counter,
            "outlier_ejections_skipped_total",
            "Ejections outlier detection asked for but did not make, by the limit that stopped them.",
            &["reason"],
            &[],
        )?;
        Ok(Outlier {
            consecutive_5xx: threshold(config.consecutive_5xx_errors, DEFAULT_CONSECUTIVE_5XX),
            consecutive_gateway: threshold(config.consecutive_gateway_errors, 0),
            interval_ms,
            base_ms,
            max_ms,
            max_ejection_percent,
            min_health_percent,
            ejected_5xx: metrics::series(ejections, &["5xx"])?,
            ejected_gateway: metrics::series(ejections, &["gateway"])?,
            skipped_max_percent: metrics::series(skipped, &["max_ejection_percent"])?,
            skipped_min_health: metrics::series(skipped, &["min_health_percent"])?,
        })
    }

    fn hooks(&self) -> Hooks {
        if self.consecutive_5xx.is_none() && self.consecutive_gateway.is_none() {
            // Both detectors off: nothing to watch, so cost the data plane nothing.
            return Hooks::NONE;
        }
        Hooks::ON_ATTEMPT_END
    }

    fn on_attempt_end(&self, attempt: &Attempt) -> AttemptAction {
        let endpoint = attempt.endpoint;
        let Some(verdict) = verdict(attempt.outcome).filter(|_| endpoint != 0) else {
            return AttemptAction::Done;
        };
        // Each enabled detector's run is one numeric counter: one scalar host call per attempt.
        let mut fired = None;
        let mut began = false;
        if let Some(threshold) = self.consecutive_5xx {
            let key = Field::Run5xx.key(endpoint);
            if verdict.error {
                let run = Self::extend_run(key, threshold);
                began |= run == 1;
                if run == threshold {
                    fired = Some(Cause::Errors5xx);
                }
            } else {
                state::counter_reset(key);
            }
        }
        if let Some(threshold) = self.consecutive_gateway {
            let key = Field::RunGateway.key(endpoint);
            if verdict.gateway_error {
                let run = Self::extend_run(key, threshold);
                began |= run == 1;
                if run == threshold {
                    // Envoy counts the gateway run first, so its ejection wins a tie.
                    fired = Some(Cause::Gateway);
                }
            } else {
                state::counter_reset(key);
            }
        }
        // Errors from an ejected endpoint were in flight when it was ejected; Envoy's runs start
        // over when it returns, so they must not count. Checked only when a run begins: the
        // load balancer sends an ejected endpoint nothing new, so this is rare and cheap.
        if began && Self::still_ejected(endpoint) {
            Self::reset_runs(endpoint);
            return AttemptAction::Done;
        }
        if let Some(cause) = fired {
            self.try_eject(endpoint, cause);
        }
        AttemptAction::Done
    }
}

export_filter!(Outlier);

#[cfg(test)]
mod tests;
