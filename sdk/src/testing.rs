//! A native double of the host, so a plugin's logic runs under plain `cargo test`.
//!
//! Each test thread has its own host: time that only moves when told, seeded randomness,
//! shared state, metrics, endpoints and the ejections a plugin asked for. [`Harness`] drives a
//! plugin through its hooks the way the host does, calling only the hooks it declared.

use crate::filter::{Filter, build};
use crate::host::metrics::Sample;
use crate::{
    Attempt, AttemptAction, CallSummary, Destination, EndpointStatus, Hooks, Level, MetricKind,
    Request, RequestAction, Response, ResponseAction, StateError, Versioned,
};
use std::cell::RefCell;
use std::collections::HashMap;

const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct Metric {
    kind: Option<MetricKind>,
    name: String,
    labels: usize,
}

#[derive(Default)]
struct Series {
    metric: u32,
    values: Vec<String>,
    total: f64,
    count: u64,
}

struct Entry {
    value: Vec<u8>,
    version: u64,
    expires_at_ms: Option<u64>,
}

struct Endpoint {
    pool: String,
    address: String,
    ejected_until_ms: u64,
}

struct TestHost {
    names: Vec<String>,
    now_ms: u64,
    rng: u64,
    logs: Vec<(Level, String)>,
    metrics: Vec<Metric>,
    series: Vec<Series>,
    state: HashMap<String, Entry>,
    next_version: u64,
    endpoints: HashMap<u64, Endpoint>,
    ejections: Vec<(u64, u32)>,
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost {
            names: Vec::new(),
            now_ms: 1_700_000_000_000,
            rng: 0x9E37_79B9_7F4A_7C15,
            logs: Vec::new(),
            metrics: Vec::new(),
            series: Vec::new(),
            state: HashMap::new(),
            next_version: 1,
            endpoints: HashMap::new(),
            ejections: Vec::new(),
        }
    }
}

thread_local! {
    static HOST: RefCell<TestHost> = RefCell::new(TestHost::default());
}

fn with<R>(f: impl FnOnce(&mut TestHost) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

// === test controls ===

/// Resets this thread's host to a fresh one.
pub fn reset() {
    with(|h| *h = TestHost::default());
    crate::host::forget_names();
}

/// Interns a name as the host would, for building a [`crate::CallSummary`].
pub fn intern(name: &str) -> crate::Name {
    if name.is_empty() {
        return crate::Name::NONE;
    }
    with(|h| {
        let id = match h.names.iter().position(|n| n == name) {
            Some(i) => i + 1,
            None => {
                h.names.push(name.to_string());
                h.names.len()
            }
        };
        crate::Name(id as u32)
    })
}

/// Sets the wall clock.
pub fn set_now_ms(ms: u64) {
    with(|h| h.now_ms = ms);
}

/// Moves the wall clock forward.
pub fn advance_ms(ms: u64) {
    with(|h| h.now_ms += ms);
}

/// Seeds the random numbers the host hands out.
pub fn seed_random(seed: u64) {
    with(|h| h.rng = seed.max(1));
}

/// Adds an endpoint to a pool (a service).
pub fn add_endpoint(pool: &str, id: u64, address: &str) {
    with(|h| {
        h.endpoints.insert(
            id,
            Endpoint {
                pool: pool.to_string(),
                address: address.to_string(),
                ejected_until_ms: 0,
            },
        );
    });
}

/// Every ejection asked for so far, as `(endpoint, duration_ms)`.
pub fn ejections() -> Vec<(u64, u32)> {
    with(|h| h.ejections.clone())
}

/// Whether an endpoint is ejected at the current time.
pub fn is_ejected(endpoint: u64) -> bool {
    with(|h| {
        h.endpoints
            .get(&endpoint)
            .is_some_and(|e| e.ejected_until_ms > h.now_ms)
    })
}

/// Every log line written so far.
pub fn logs() -> Vec<(Level, String)> {
    with(|h| h.logs.clone())
}

/// A counter's total or a gauge's value for one label set, if that series exists.
pub fn metric_value(name: &str, label_values: &[&str]) -> Option<f64> {
    find_series(name, label_values).map(|(total, _)| total)
}

/// A histogram's observation count and sum for one label set, if that series exists.
pub fn histogram(name: &str, label_values: &[&str]) -> Option<(u64, f64)> {
    find_series(name, label_values).map(|(sum, count)| (count, sum))
}

fn find_series(name: &str, label_values: &[&str]) -> Option<(f64, u64)> {
    with(|h| {
        let metric = h.metrics.iter().position(|m| m.name == name)? as u32;
        h.series
            .iter()
            .find(|s| {
                s.metric == metric
                    && s.values
                        .iter()
                        .map(String::as_str)
                        .eq(label_values.iter().copied())
            })
            .map(|s| (s.total, s.count))
    })
}

/// The raw value of a shared-state key.
pub fn state_value(key: &str) -> Option<Vec<u8>> {
    host_imp::state_get(key).map(|v| v.value)
}

// === the host functions ===

pub(crate) mod host_imp {
    use super::*;

    pub fn name(id: u32) -> String {
        with(|h| {
            (id as usize)
                .checked_sub(1)
                .and_then(|i| h.names.get(i).cloned())
                .unwrap_or_default()
        })
    }

    pub fn log(level: Level, message: &str) {
        with(|h| h.logs.push((level, message.to_string())));
    }

    pub fn log_enabled(_level: Level) -> bool {
        true
    }

    pub fn now_ms() -> u64 {
        with(|h| h.now_ms)
    }

    pub fn random_u64() -> u64 {
        // xorshift64*: deterministic per seed, good enough to exercise weighted choices.
        with(|h| {
            let mut x = h.rng;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            h.rng = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        })
    }

    pub fn define_metric(
        kind: MetricKind,
        name: &str,
        _help: &str,
        labels: &[&str],
        _buckets: &[f64],
    ) -> Result<u32, String> {
        // The same rule as the host: a plugin cannot pass itself off as the proxy's own metrics.
        if name.is_empty()
            || name.starts_with(|c: char| c.is_ascii_digit())
            || name.starts_with("weft_")
        {
            return Err(format!(
                "invalid metric name {name:?}: use [a-zA-Z_:][a-zA-Z0-9_:]*, not starting with weft_"
            ));
        }
        with(|h| {
            if let Some(i) = h.metrics.iter().position(|m| m.name == name) {
                let m = &h.metrics[i];
                if m.kind != Some(kind) || m.labels != labels.len() {
                    return Err(format!("metric {name} already defined differently"));
                }
                return Ok(i as u32);
            }
            h.metrics.push(Metric {
                kind: Some(kind),
                name: name.to_string(),
                labels: labels.len(),
            });
            Ok((h.metrics.len() - 1) as u32)
        })
    }

    pub fn series(metric: u32, label_values: &[&str]) -> Result<u32, String> {
        with(|h| {
            let m = h
                .metrics
                .get(metric as usize)
                .ok_or_else(|| format!("unknown metric {metric}"))?;
            if m.labels != label_values.len() {
                return Err(format!(
                    "metric {} takes {} label values, got {}",
                    m.name,
                    m.labels,
                    label_values.len()
                ));
            }
            if let Some(i) = h.series.iter().position(|s| {
                s.metric == metric
                    && s.values
                        .iter()
                        .map(String::as_str)
                        .eq(label_values.iter().copied())
            }) {
                return Ok(i as u32);
            }
            h.series.push(Series {
                metric,
                values: label_values.iter().map(|s| s.to_string()).collect(),
                ..Series::default()
            });
            Ok((h.series.len() - 1) as u32)
        })
    }

    pub fn record_metrics(samples: &[Sample]) {
        with(|h| {
            for sample in samples {
                let Some(series) = h.series.get(sample.series.0 as usize) else {
                    continue;
                };
                let kind = h.metrics[series.metric as usize].kind;
                let series = &mut h.series[sample.series.0 as usize];
                match kind {
                    Some(MetricKind::Gauge) => series.total = sample.value,
                    _ => series.total += sample.value,
                }
                series.count += 1;
            }
        });
    }

    fn live<'a>(h: &'a mut TestHost, key: &str) -> Option<&'a mut Entry> {
        let now = h.now_ms;
        if h.state
            .get(key)
            .is_some_and(|e| e.expires_at_ms.is_some_and(|t| t <= now))
        {
            h.state.remove(key);
        }
        h.state.get_mut(key)
    }

    pub fn state_get(key: &str) -> Option<Versioned> {
        with(|h| {
            live(h, key).map(|e| Versioned {
                value: e.value.clone(),
                version: e.version,
            })
        })
    }

    pub fn state_set(
        key: &str,
        value: &[u8],
        if_version: Option<u64>,
        ttl_ms: u32,
    ) -> Result<u64, StateError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(StateError::TooLarge);
        }
        with(|h| {
            let current = live(h, key).map(|e| e.version).unwrap_or(0);
            if let Some(expected) = if_version
                && expected != current
            {
                return Err(StateError::Conflict(current));
            }
            let version = h.next_version;
            h.next_version += 1;
            let expires_at_ms = (ttl_ms > 0).then(|| h.now_ms + u64::from(ttl_ms));
            h.state.insert(
                key.to_string(),
                Entry {
                    value: value.to_vec(),
                    version,
                    expires_at_ms,
                },
            );
            Ok(version)
        })
    }

    pub fn state_add(key: &str, delta: i64, ttl_ms: u32) -> Result<i64, StateError> {
        with(|h| {
            let version = h.next_version;
            h.next_version += 1;
            let now = h.now_ms;
            if let Some(e) = live(h, key) {
                let next = crate::host::state::decode_counter(&e.value).wrapping_add(delta);
                e.value = next.to_le_bytes().to_vec();
                e.version = version;
                return Ok(next);
            }
            h.state.insert(
                key.to_string(),
                Entry {
                    value: delta.to_le_bytes().to_vec(),
                    version,
                    expires_at_ms: (ttl_ms > 0).then(|| now + u64::from(ttl_ms)),
                },
            );
            Ok(delta)
        })
    }

    pub fn counter_add(key: u64, delta: i64, ttl_ms: u32) -> i64 {
        // Numeric counters live beside string keys, under a prefix no plugin key can collide
        // with (the host keeps them apart the same way).
        state_add(&format!("\u{0}counter/{key}"), delta, ttl_ms).unwrap_or(delta)
    }

    pub fn counter_reset(key: u64) {
        state_delete(&format!("\u{0}counter/{key}"))
    }

    pub fn state_delete(key: &str) {
        with(|h| {
            h.state.remove(key);
        });
    }

    pub fn endpoint_pool(endpoint: u64) -> Vec<EndpointStatus> {
        with(|h| {
            let Some(pool) = h.endpoints.get(&endpoint).map(|e| e.pool.clone()) else {
                return Vec::new();
            };
            let mut out: Vec<EndpointStatus> = h
                .endpoints
                .iter()
                .filter(|(_, e)| e.pool == pool)
                .map(|(id, e)| EndpointStatus {
                    id: *id,
                    address: e.address.clone(),
                    ejected_ms: e
                        .ejected_until_ms
                        .saturating_sub(h.now_ms)
                        .min(u64::from(u32::MAX)) as u32,
                })
                .collect();
            out.sort_by_key(|e| e.id);
            out
        })
    }

    pub fn eject(endpoint: u64, duration_ms: u32) -> bool {
        with(|h| {
            let now = h.now_ms;
            match h.endpoints.get_mut(&endpoint) {
                Some(e) => {
                    e.ejected_until_ms = now + u64::from(duration_ms);
                    h.ejections.push((endpoint, duration_ms));
                    true
                }
                None => false,
            }
        })
    }
}

// === request and response doubles ===

/// A request head for tests.
#[derive(Debug, Clone, Default)]
pub struct TestRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Authority.
    pub authority: String,
    /// Headers, in order; names lower-case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Caller identity.
    pub source: String,
    /// Current destination.
    pub destination: Destination,
    /// Per-try timeout a plugin set.
    pub per_try_timeout_ms: Option<u32>,
    /// Overall timeout a plugin set.
    pub timeout_ms: Option<u32>,
    /// Delay before the first attempt a plugin set (fault injection).
    pub delay_ms: Option<u32>,
    /// The route a plugin named (`set_route`); an empty name clears it, as the host does.
    pub route: Option<String>,
    /// Where the plugins asked copies of the call to go (`add_mirror`).
    pub mirrors: Vec<Destination>,
}

impl TestRequest {
    /// A `GET` of `path` to `service`.
    pub fn get(service: &str, path: &str) -> Self {
        TestRequest {
            method: "GET".into(),
            path: path.into(),
            authority: service.into(),
            destination: Destination {
                service: service.into(),
                subset: None,
            },
            ..TestRequest::default()
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// The first value of a header, as text.
    pub fn header_text(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    pub(crate) fn method(&self) -> String {
        self.method.clone()
    }
    pub(crate) fn path(&self) -> String {
        self.path.clone()
    }
    pub(crate) fn authority(&self) -> String {
        self.authority.clone()
    }
    pub(crate) fn header(&self, name: &str) -> Option<Vec<u8>> {
        first(&self.headers, name)
    }
    pub(crate) fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        all(&self.headers, name)
    }
    pub(crate) fn headers(&self) -> Vec<(String, Vec<u8>)> {
        self.headers.clone()
    }
    pub(crate) fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        set(&mut self.headers, name, value)
    }
    pub(crate) fn append_header(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        append(&mut self.headers, name, value)
    }
    pub(crate) fn remove_header(&mut self, name: &str) {
        remove(&mut self.headers, name)
    }
    pub(crate) fn source(&self) -> String {
        self.source.clone()
    }
    pub(crate) fn destination(&self) -> Destination {
        self.destination.clone()
    }
    pub(crate) fn set_destination(&mut self, dest: Destination) {
        self.destination = dest;
    }
    pub(crate) fn set_subset(&mut self, subset: Option<&str>) {
        self.destination.subset = subset.map(str::to_string);
    }
    pub(crate) fn set_per_try_timeout_ms(&mut self, ms: u32) {
        self.per_try_timeout_ms = Some(ms);
    }
    pub(crate) fn set_timeout_ms(&mut self, ms: u32) {
        self.timeout_ms = Some(ms);
    }
    pub(crate) fn set_delay_ms(&mut self, ms: u32) {
        self.delay_ms = Some(ms);
    }
    pub(crate) fn set_route(&mut self, name: &str) {
        self.route = (!name.is_empty()).then(|| name.to_string());
    }
    pub(crate) fn add_mirror(&mut self, dest: Destination) {
        // The host's bound.
        if self.mirrors.len() < 4 {
            self.mirrors.push(dest);
        }
    }
    pub(crate) fn set_path(&mut self, path: &str) -> Result<(), String> {
        // The host's rule: an absolute path, with nothing a request line cannot carry.
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("invalid path {path:?}"));
        }
        self.path = path.to_string();
        Ok(())
    }
    pub(crate) fn set_authority(&mut self, authority: &str) -> Result<(), String> {
        if authority.is_empty() || authority.bytes().any(|b| b <= b' ' || b"/?#@".contains(&b)) {
            return Err(format!("invalid authority {authority:?}"));
        }
        self.authority = authority.to_string();
        Ok(())
    }
}

/// A response head for tests.
#[derive(Debug, Clone, Default)]
pub struct TestResponse {
    /// Status.
    pub status: u16,
    /// Headers, in order; names lower-case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Upstream attempts made for the call, this response's included.
    pub attempts: u32,
}

impl TestResponse {
    /// A response with this status.
    pub fn new(status: u16) -> Self {
        TestResponse {
            status,
            headers: Vec::new(),
            attempts: 1,
        }
    }

    /// The first value of a header, as text.
    pub fn header_text(&self, name: &str) -> Option<String> {
        first(&self.headers, name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    pub(crate) fn status(&self) -> u16 {
        self.status
    }
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }
    pub(crate) fn header(&self, name: &str) -> Option<Vec<u8>> {
        first(&self.headers, name)
    }
    pub(crate) fn headers(&self) -> Vec<(String, Vec<u8>)> {
        self.headers.clone()
    }
    pub(crate) fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        set(&mut self.headers, name, value)
    }
    pub(crate) fn append_header(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        append(&mut self.headers, name, value)
    }
    pub(crate) fn remove_header(&mut self, name: &str) {
        remove(&mut self.headers, name)
    }
}

// The test double validates names the way the host does, so a plugin that works in tests
// does not fail on a real proxy.
fn valid_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("invalid header name {name:?}"))
    }
}

fn valid_value(value: &[u8]) -> Result<(), String> {
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        Err("invalid header value: control characters are not allowed".into())
    } else {
        Ok(())
    }
}

fn first(headers: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

fn all(headers: &[(String, Vec<u8>)], name: &str) -> Vec<Vec<u8>> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

fn set(headers: &mut Vec<(String, Vec<u8>)>, name: &str, value: &[u8]) -> Result<(), String> {
    let name = valid_name(name)?;
    valid_value(value)?;
    headers.retain(|(n, _)| *n != name);
    headers.push((name, value.to_vec()));
    Ok(())
}

fn append(headers: &mut Vec<(String, Vec<u8>)>, name: &str, value: &[u8]) -> Result<(), String> {
    let name = valid_name(name)?;
    valid_value(value)?;
    headers.push((name, value.to_vec()));
    Ok(())
}

fn remove(headers: &mut Vec<(String, Vec<u8>)>, name: &str) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
}

// === harness ===

/// Drives a plugin as the host does: configure once, then only the declared hooks.
pub struct Harness<F: Filter> {
    filter: F,
    hooks: Hooks,
    next_call: u64,
}

impl<F: Filter> Harness<F> {
    /// Configures the plugin from JSON, as the host would.
    pub fn new(config: &str) -> Result<Self, String> {
        let filter: F = build(config)?;
        let hooks = filter.hooks();
        Ok(Harness {
            filter,
            hooks,
            next_call: 1,
        })
    }

    /// The hooks the plugin declared.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// The configured plugin itself.
    pub fn filter(&self) -> &F {
        &self.filter
    }

    /// Runs `on_request` (if declared) with a fresh call id; returns the call id and action.
    pub fn on_request(&mut self, req: &mut TestRequest) -> (u64, RequestAction) {
        let call = self.next_call;
        self.next_call += 1;
        if !self.hooks.contains(Hooks::ON_REQUEST) {
            return (call, RequestAction::Continue);
        }
        (call, self.filter.on_request(call, &mut Request::new(req)))
    }

    /// Runs `on_attempt_end` (if declared).
    pub fn on_attempt_end(&self, attempt: &Attempt) -> AttemptAction {
        if !self.hooks.contains(Hooks::ON_ATTEMPT_END) {
            return AttemptAction::Done;
        }
        self.filter.on_attempt_end(attempt)
    }

    /// Runs `on_response` (if declared).
    pub fn on_response(&self, call_id: u64, resp: &mut TestResponse) -> ResponseAction {
        if !self.hooks.contains(Hooks::ON_RESPONSE) {
            return ResponseAction::Continue;
        }
        self.filter.on_response(call_id, &mut Response::new(resp))
    }

    /// Runs `on_done` (if declared).
    pub fn on_done(&self, summary: &CallSummary) {
        if self.hooks.contains(Hooks::ON_DONE) {
            self.filter.on_done(summary)
        }
    }
}
