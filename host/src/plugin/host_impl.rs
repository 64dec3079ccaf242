//! What a plugin instance's store holds, and the `weft:filter` host interface implemented
//! over it: the request and response heads lent for a hook, logging, time, randomness,
//! metrics, shared state and endpoint health.

use super::bindings::weft::filter::{host, request, response, types};
use super::health::EndpointHealth;
use super::metrics::{Kind, MetricDef, PluginMetrics};
use super::state::{SharedState, StateWriteError};
use super::types::{RequestHead, ResponseHead, RouteId};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// What every instance of every plugin shares: the host's services.
pub(crate) struct Services {
    pub(crate) state: SharedState,
    pub(crate) metrics: PluginMetrics,
    pub(crate) endpoints: Arc<dyn EndpointHealth>,
    pub(crate) names: Interner,
    /// Whether any plugin has been prepared with a route scope: until one is, `set-route`
    /// has nothing to match and skips the name lookup (and its shared lock) altogether.
    pub(crate) routes_scoped: std::sync::atomic::AtomicBool,
    /// proxy-wasm filters' shared queues.
    pub(crate) queues: super::proxy_wasm::Queues,
    /// Who makes root contexts' HTTP calls (the sidecar).
    pub(crate) callouts: std::sync::OnceLock<Arc<dyn super::types::CalloutSender>>,
}

/// Names (services, subsets, identities) interned to stable ids, so hooks carry integers.
#[derive(Default)]
pub(crate) struct Interner {
    inner: parking_lot::RwLock<Names>,
}

/// Ids by name, and names by id (id = index + 1).
type Names = (std::collections::HashMap<Arc<str>, u32>, Vec<Arc<str>>);

impl Interner {
    pub(crate) fn intern(&self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        if let Some(&id) = self.inner.read().0.get(name) {
            return id;
        }
        let mut inner = self.inner.write();
        if let Some(&id) = inner.0.get(name) {
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        inner.1.push(name.clone());
        let id = inner.1.len() as u32;
        inner.0.insert(name, id);
        id
    }

    /// The id of a name interned before, or 0: never adds one, so names a plugin makes up
    /// (`set-route`) cannot grow the table.
    pub(crate) fn lookup(&self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        self.inner.read().0.get(name).copied().unwrap_or(0)
    }

    pub(crate) fn name(&self, id: u32) -> Option<Arc<str>> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.inner.read().1.get(index).cloned()
    }
}

/// Caps a plugin instance's memory and remembers that it tried to pass the cap.
pub(crate) struct MemoryCap {
    pub(crate) max_bytes: usize,
    pub(crate) exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            // Trap rather than return failure: a guest allocator that sees failure may loop
            // or abort with a vaguer message; this names the cause.
            self.exceeded = true;
            wasmtime::bail!("plugin memory cap of {} bytes exceeded", self.max_bytes);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A plugin instance's store data.
pub(crate) struct PluginCtx {
    pub(crate) plugin: Arc<str>,
    pub(crate) key: u32,
    pub(crate) services: Arc<Services>,
    pub(crate) request: RequestHead,
    pub(crate) response: ResponseHead,
    pub(crate) reply: Option<types::LocalResponse>,
    /// A host bound the plugin passed during this call: the call fails with it.
    pub(crate) violation: Option<String>,
    pub(crate) memory: MemoryCap,
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

// === request and response heads ===

/// The most headers a plugin may leave in a head or put in a local reply: HeaderMap cannot
/// hold more than 32,768 and panics past that, and a proxy's heads hold a few dozen (Envoy
/// refuses a request with more than 100).
pub(crate) const MAX_HEADERS: usize = 1024;

/// The most bytes of header names and values a plugin's local reply may carry (Envoy's
/// default bound on a request's headers is 60 KiB).
pub(crate) const MAX_REPLY_HEADER_BYTES: usize = 96 << 10;

pub(crate) fn set_header(
    headers: &mut HeaderMap,
    name: &str,
    value: &[u8],
    append: bool,
    violation: &mut Option<String>,
) -> Result<(), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {:?}", clip(name)))?;
    let value = HeaderValue::from_bytes(value).map_err(|_| {
        format!("invalid value for header {name}: control characters are not allowed")
    })?;
    let grows = append || !headers.contains_key(&name);
    if grows && headers.len() >= MAX_HEADERS {
        let why = format!("more than {MAX_HEADERS} headers");
        *violation = Some(why.clone());
        return Err(why);
    }
    if append {
        headers.append(name, value);
    } else {
        headers.insert(name, value);
    }
    Ok(())
}

/// Checks a local reply against the host's bounds on headers.
pub(crate) fn check_reply(reply: &types::LocalResponse) -> Result<(), String> {
    if reply.headers.len() > MAX_HEADERS {
        return Err(format!(
            "a local reply with {} headers (at most {MAX_HEADERS})",
            reply.headers.len()
        ));
    }
    let bytes: usize = reply.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if bytes > MAX_REPLY_HEADER_BYTES {
        return Err(format!(
            "a local reply with {bytes} bytes of headers (at most {MAX_REPLY_HEADER_BYTES})"
        ));
    }
    Ok(())
}

/// Rewrites a request's path: exactly what the URI of the upstream request can hold, checked
/// now so the proxy never has to refuse it later.
pub(crate) fn set_path(head: &mut RequestHead, path: String) -> Result<(), String> {
    match http::uri::PathAndQuery::from_maybe_shared(path.clone()) {
        Ok(p) if p.as_str().starts_with('/') => {
            head.path = path;
            Ok(())
        }
        _ => Err(format!("invalid path {:?}", clip(&path))),
    }
}

/// Rewrites a request's authority (no user info).
pub(crate) fn set_authority(head: &mut RequestHead, authority: String) -> Result<(), String> {
    match http::uri::Authority::from_maybe_shared(authority.clone()) {
        Ok(a) if !a.as_str().contains('@') => {
            head.authority = authority;
            Ok(())
        }
        _ => Err(format!("invalid authority {:?}", clip(&authority))),
    }
}

/// A name echoed in an error, cut short.
pub(crate) fn clip(text: &str) -> &str {
    let mut cut = text.len().min(64);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

fn first(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|v| v.as_bytes().to_vec())
}

fn all_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

impl types::Host for PluginCtx {}

impl request::Host for PluginCtx {
    fn method(&mut self) -> String {
        self.request.method.as_str().to_string()
    }

    fn path(&mut self) -> String {
        self.request.path.clone()
    }

    fn authority(&mut self) -> String {
        self.request.authority.clone()
    }

    fn header(&mut self, name: String) -> Option<Vec<u8>> {
        first(&self.request.headers, &name)
    }

    fn header_all(&mut self, name: String) -> Vec<Vec<u8>> {
        self.request
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    fn headers(&mut self) -> Vec<(String, Vec<u8>)> {
        all_headers(&self.request.headers)
    }

    fn set_header(&mut self, name: String, value: Vec<u8>) -> Result<(), String> {
        set_header(
            &mut self.request.headers,
            &name,
            &value,
            false,
            &mut self.violation,
        )
    }

    fn append_header(&mut self, name: String, value: Vec<u8>) -> Result<(), String> {
        set_header(
            &mut self.request.headers,
            &name,
            &value,
            true,
            &mut self.violation,
        )
    }

    fn remove_header(&mut self, name: String) {
        self.request.headers.remove(name.as_str());
    }

    fn set_path(&mut self, path: String) -> Result<(), String> {
        set_path(&mut self.request, path)
    }

    fn set_authority(&mut self, authority: String) -> Result<(), String> {
        set_authority(&mut self.request, authority)
    }

    fn source(&mut self) -> String {
        self.request.source.to_string()
    }

    fn destination(&mut self) -> types::Target {
        self.request.destination.clone()
    }

    fn set_destination(&mut self, dest: types::Target) {
        self.request.destination = dest;
    }

    fn set_subset(&mut self, subset: Option<String>) {
        self.request.destination.subset = subset;
    }

    fn set_per_try_timeout_ms(&mut self, ms: u32) {
        self.request.per_try_timeout = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
    }

    fn set_timeout_ms(&mut self, ms: u32) {
        self.request.timeout = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
    }

    fn set_delay_ms(&mut self, ms: u32) {
        self.request.delay = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
    }

    fn add_mirror(&mut self, dest: types::Target) {
        if self.request.mirrors.len() < super::types::MAX_MIRRORS {
            self.request.mirrors.push(dest);
        }
    }

    fn set_route(&mut self, name: String) {
        if self.request.keep_route_name {
            self.request.route_name = Some(name.clone());
        }
        // Scopes are interned when their plugins are prepared, so a name not interned yet is
        // no plugin's scope: NONE serves it the same, without storing what the plugin sent.
        self.request.route = if self.services.routes_scoped.load(Ordering::Relaxed) {
            RouteId {
                name: self.services.names.lookup(&name),
                port: self.request.route.port,
            }
        } else {
            RouteId::on_port(self.request.route.port)
        };
    }

    fn respond(&mut self, reply: types::LocalResponse) {
        match check_reply(&reply) {
            Ok(()) => self.reply = Some(reply),
            Err(why) => self.violation = Some(why),
        }
    }
}

impl response::Host for PluginCtx {
    fn status(&mut self) -> u16 {
        self.response.status.as_u16()
    }

    fn attempts(&mut self) -> u32 {
        self.response.attempts
    }

    fn header(&mut self, name: String) -> Option<Vec<u8>> {
        first(&self.response.headers, &name)
    }

    fn headers(&mut self) -> Vec<(String, Vec<u8>)> {
        all_headers(&self.response.headers)
    }

    fn set_header(&mut self, name: String, value: Vec<u8>) -> Result<(), String> {
        set_header(
            &mut self.response.headers,
            &name,
            &value,
            false,
            &mut self.violation,
        )
    }

    fn append_header(&mut self, name: String, value: Vec<u8>) -> Result<(), String> {
        set_header(
            &mut self.response.headers,
            &name,
            &value,
            true,
            &mut self.violation,
        )
    }

    fn remove_header(&mut self, name: String) {
        self.response.headers.remove(name.as_str());
    }

    fn respond(&mut self, reply: types::LocalResponse) {
        match check_reply(&reply) {
            Ok(()) => self.reply = Some(reply),
            Err(why) => self.violation = Some(why),
        }
    }
}

// === host services ===

/// Longest log line a plugin may write; longer ones are cut.
const MAX_LOG_BYTES: usize = 4096;

/// A plugin's log line, cut to the bound at a character boundary.
pub(crate) fn log_line(mut message: String) -> String {
    if message.len() > MAX_LOG_BYTES {
        let mut cut = MAX_LOG_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    message
}

fn state_error(e: StateWriteError) -> host::StateError {
    match e {
        StateWriteError::Conflict(v) => host::StateError::Conflict(v),
        StateWriteError::TooLarge => host::StateError::TooLarge,
        StateWriteError::Full => host::StateError::Full,
    }
}

impl host::Host for PluginCtx {
    fn name(&mut self, id: u32) -> String {
        self.services
            .names
            .name(id)
            .map(|n| n.to_string())
            .unwrap_or_default()
    }

    fn log(&mut self, level: types::Level, message: String) {
        let message = log_line(message);
        let plugin = &*self.plugin;
        match level {
            types::Level::Trace => tracing::trace!(plugin, "{message}"),
            types::Level::Debug => tracing::debug!(plugin, "{message}"),
            types::Level::Info => tracing::info!(plugin, "{message}"),
            types::Level::Warn => tracing::warn!(plugin, "{message}"),
            types::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn log_enabled(&mut self, level: types::Level) -> bool {
        match level {
            types::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            types::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            types::Level::Info => tracing::enabled!(tracing::Level::INFO),
            types::Level::Warn => tracing::enabled!(tracing::Level::WARN),
            types::Level::Error => tracing::enabled!(tracing::Level::ERROR),
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn random_u64(&mut self) -> u64 {
        crate::random::fast_u64()
    }

    fn define_metric(&mut self, def: host::MetricDef) -> Result<u32, String> {
        let kind = match def.kind {
            host::MetricKind::Counter => Kind::Counter,
            host::MetricKind::Gauge => Kind::Gauge,
            host::MetricKind::Histogram => Kind::Histogram,
        };
        let def = MetricDef {
            kind,
            name: &def.name,
            help: &def.help,
            labels: &def.labels,
            buckets: &def.buckets,
        };
        self.services.metrics.define(self.key, &self.plugin, def)
    }

    fn series(&mut self, metric: u32, label_values: Vec<String>) -> Result<u32, String> {
        self.services.metrics.series(self.key, metric, label_values)
    }

    fn record_metrics(&mut self, samples: Vec<host::Sample>) {
        self.services
            .metrics
            .record(self.key, samples.iter().map(|s| (s.series, s.value)));
    }

    fn state_get(&mut self, key: String) -> Option<host::Versioned> {
        self.services
            .state
            .get(self.key, &key)
            .map(|(value, version)| host::Versioned { value, version })
    }

    fn state_set(
        &mut self,
        key: String,
        value: Vec<u8>,
        if_version: Option<u64>,
        ttl_ms: u32,
    ) -> Result<u64, host::StateError> {
        self.services
            .state
            .set(self.key, &key, &value, if_version, ttl_ms)
            .map_err(state_error)
    }

    fn state_add(&mut self, key: String, delta: i64, ttl_ms: u32) -> Result<i64, host::StateError> {
        self.services
            .state
            .add(self.key, &key, delta, ttl_ms)
            .map_err(state_error)
    }

    fn state_delete(&mut self, key: String) {
        self.services.state.delete(self.key, &key)
    }

    fn counter_add(&mut self, key: u64, delta: i64, ttl_ms: u32) -> i64 {
        self.services
            .state
            .counter_add(self.key, key, delta, ttl_ms)
    }

    fn counter_reset(&mut self, key: u64) {
        self.services.state.counter_reset(self.key, key)
    }

    fn endpoint_pool(&mut self, endpoint: u64) -> Vec<host::EndpointStatus> {
        self.services
            .endpoints
            .pool(endpoint)
            .into_iter()
            .map(|e| host::EndpointStatus {
                id: e.id,
                address: e.address,
                ejected_ms: u32::try_from(e.ejected_for.as_millis()).unwrap_or(u32::MAX),
            })
            .collect()
    }

    fn eject(&mut self, endpoint: u64, duration_ms: u32) -> bool {
        self.services
            .endpoints
            .eject(endpoint, Duration::from_millis(u64::from(duration_ms)))
    }
}
