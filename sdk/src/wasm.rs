//! The Wasm side: bindings generated from `wit/`, the adapter that exports a [`Filter`], and
//! the host calls behind [`crate::host`]. Hidden: plugins use the SDK's own types.

use crate::filter::{Filter, build};
use crate::{
    Attempt, AttemptAction, CallSummary, Destination, Hooks, Level, LocalResponse, Name, Outcome,
    Protocol, Request, RequestAction, Response, ResponseAction, ResponseFlags,
};
use std::cell::RefCell;
use std::marker::PhantomData;

#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "::weft_sdk::wasm::bindings",
        runtime_path: "::weft_sdk::wasm::__wit_bindgen_rt",
    });
}

#[doc(hidden)]
pub use bindings::__export_plugin;
#[doc(hidden)]
pub use wit_bindgen::rt as __wit_bindgen_rt;

use bindings::exports::weft::filter::filter as exports;
use bindings::weft::filter::{
    host as wit_host, request as wit_request, response as wit_response, types as wit,
};

thread_local! {
    // The configured filter of this instance. Wasm instances are single-threaded, so a
    // thread-local is simply the instance's global.
    static FILTER: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
}

fn with_filter<F: Filter, R>(default: R, f: impl FnOnce(&F) -> R) -> R {
    FILTER.with(|cell| {
        let slot = cell.borrow();
        match slot.as_ref().and_then(|b| b.downcast_ref::<F>()) {
            Some(filter) => f(filter),
            // The host never calls a hook before a successful `configure`.
            None => default,
        }
    })
}

/// Exports `F` through the generated `Guest` trait.
pub struct Adapter<F>(PhantomData<F>);

impl<F: Filter> exports::Guest for Adapter<F> {
    fn configure(config: String) -> Result<wit::Hooks, String> {
        let filter: F = build(&config)?;
        let hooks = hooks_into(filter.hooks());
        FILTER.with(|cell| *cell.borrow_mut() = Some(Box::new(filter)));
        Ok(hooks)
    }

    fn on_request(call_id: u64) {
        let action = with_filter::<F, _>(RequestAction::Continue, |f| {
            f.on_request(call_id, &mut Request::new(&mut RequestInner))
        });
        if let RequestAction::Respond(r) = action {
            wit_request::respond(&local_into(r));
        }
    }

    fn on_attempt_end(attempt: wit::Attempt) -> wit::AttemptAction {
        let attempt = attempt_from(attempt);
        match with_filter::<F, _>(AttemptAction::Done, |f| f.on_attempt_end(&attempt)) {
            AttemptAction::Done => wit::AttemptAction::Done,
            AttemptAction::Retry(ms) => wit::AttemptAction::Retry(ms),
        }
    }

    fn on_response(call_id: u64) {
        let action = with_filter::<F, _>(ResponseAction::Continue, |f| {
            f.on_response(call_id, &mut Response::new(&mut ResponseInner))
        });
        if let ResponseAction::Respond(r) = action {
            wit_response::respond(&local_into(r));
        }
    }

    fn on_done(summary: wit::CallSummary) {
        let summary = summary_from(summary);
        with_filter::<F, _>((), |f| f.on_done(&summary))
    }
}

// === conversions ===

fn hooks_into(h: Hooks) -> wit::Hooks {
    let mut out = wit::Hooks::empty();
    if h.contains(Hooks::ON_REQUEST) {
        out |= wit::Hooks::ON_REQUEST;
    }
    if h.contains(Hooks::ON_ATTEMPT_END) {
        out |= wit::Hooks::ON_ATTEMPT_END;
    }
    if h.contains(Hooks::ON_RESPONSE) {
        out |= wit::Hooks::ON_RESPONSE;
    }
    if h.contains(Hooks::ON_DONE) {
        out |= wit::Hooks::ON_DONE;
    }
    out
}

fn local_into(r: LocalResponse) -> wit::LocalResponse {
    wit::LocalResponse {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

fn destination_from(d: wit::Target) -> Destination {
    Destination {
        service: d.service,
        subset: d.subset,
    }
}

fn destination_into(d: Destination) -> wit::Target {
    wit::Target {
        service: d.service,
        subset: d.subset,
    }
}

fn attempt_from(a: wit::Attempt) -> Attempt {
    Attempt {
        call_id: a.call_id,
        number: a.number,
        endpoint: a.endpoint,
        outcome: match a.outcome {
            wit::Outcome::Response(s) => Outcome::Response(s),
            wit::Outcome::ConnectFailure => Outcome::ConnectFailure,
            wit::Outcome::Reset => Outcome::Reset,
            wit::Outcome::RefusedStream => Outcome::RefusedStream,
            wit::Outcome::Timeout => Outcome::Timeout,
            wit::Outcome::NoEndpoint => Outcome::NoEndpoint,
        },
        elapsed_us: a.elapsed_us,
        remaining_ms: a.remaining_ms,
        replayable: a.replayable,
        grpc_status: a.grpc_status,
    }
}

fn summary_from(s: wit::CallSummary) -> CallSummary {
    CallSummary {
        call_id: s.call_id,
        status: s.status,
        attempts: s.attempts,
        duration_us: s.duration_us,
        request_bytes: s.request_bytes,
        response_bytes: s.response_bytes,
        endpoint: s.endpoint,
        service: Name(s.service),
        subset: Name(s.subset),
        source: Name(s.source),
        destination_identity: Name(s.destination_identity),
        source_workload: Name(s.source_workload),
        destination_workload: Name(s.destination_workload),
        protocol: match s.protocol {
            wit::Protocol::Http1 => Protocol::Http1,
            wit::Protocol::Http2 => Protocol::Http2,
        },
        flags: ResponseFlags::from_bits(s.response_flags.bits()),
        grpc_status: s.grpc_status,
    }
}

fn level_into(l: Level) -> wit::Level {
    match l {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    }
}

/// The request head during `on-request`: every read and edit is a host call.
pub struct RequestInner;

impl RequestInner {
    pub(crate) fn method(&self) -> String {
        wit_request::method()
    }
    pub(crate) fn path(&self) -> String {
        wit_request::path()
    }
    pub(crate) fn authority(&self) -> String {
        wit_request::authority()
    }
    pub(crate) fn header(&self, name: &str) -> Option<Vec<u8>> {
        wit_request::header(name)
    }
    pub(crate) fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        wit_request::header_all(name)
    }
    pub(crate) fn headers(&self) -> Vec<(String, Vec<u8>)> {
        wit_request::headers()
    }
    pub(crate) fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        wit_request::set_header(name, value)
    }
    pub(crate) fn append_header(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        wit_request::append_header(name, value)
    }
    pub(crate) fn remove_header(&mut self, name: &str) {
        wit_request::remove_header(name)
    }
    pub(crate) fn source(&self) -> String {
        wit_request::source()
    }
    pub(crate) fn destination(&self) -> Destination {
        destination_from(wit_request::destination())
    }
    pub(crate) fn set_destination(&mut self, dest: Destination) {
        wit_request::set_destination(&destination_into(dest))
    }
    pub(crate) fn set_subset(&mut self, subset: Option<&str>) {
        wit_request::set_subset(subset)
    }
    pub(crate) fn set_per_try_timeout_ms(&mut self, ms: u32) {
        wit_request::set_per_try_timeout_ms(ms)
    }
    pub(crate) fn set_timeout_ms(&mut self, ms: u32) {
        wit_request::set_timeout_ms(ms)
    }
    pub(crate) fn set_delay_ms(&mut self, ms: u32) {
        wit_request::set_delay_ms(ms)
    }
    pub(crate) fn set_route(&mut self, name: &str) {
        wit_request::set_route(name)
    }
    pub(crate) fn add_mirror(&mut self, dest: Destination) {
        wit_request::add_mirror(&destination_into(dest))
    }
    pub(crate) fn set_path(&mut self, path: &str) -> Result<(), String> {
        wit_request::set_path(path)
    }
    pub(crate) fn set_authority(&mut self, authority: &str) -> Result<(), String> {
        wit_request::set_authority(authority)
    }
}

/// The response head during `on-response`.
pub struct ResponseInner;

impl ResponseInner {
    pub(crate) fn status(&self) -> u16 {
        wit_response::status()
    }
    pub(crate) fn attempts(&self) -> u32 {
        wit_response::attempts()
    }
    pub(crate) fn header(&self, name: &str) -> Option<Vec<u8>> {
        wit_response::header(name)
    }
    pub(crate) fn headers(&self) -> Vec<(String, Vec<u8>)> {
        wit_response::headers()
    }
    pub(crate) fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        wit_response::set_header(name, value)
    }
    pub(crate) fn append_header(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        wit_response::append_header(name, value)
    }
    pub(crate) fn remove_header(&mut self, name: &str) {
        wit_response::remove_header(name)
    }
}

/// The host calls behind [`crate::host`].
pub(crate) mod host_imp {
    use super::{level_into, wit_host};
    use crate::host::metrics::Sample;
    use crate::{EndpointStatus, Level, MetricKind, StateError, Versioned};

    pub fn name(id: u32) -> String {
        wit_host::name(id)
    }

    pub fn log(level: Level, message: &str) {
        wit_host::log(level_into(level), message)
    }

    pub fn log_enabled(level: Level) -> bool {
        wit_host::log_enabled(level_into(level))
    }

    pub fn now_ms() -> u64 {
        wit_host::now_ms()
    }

    pub fn random_u64() -> u64 {
        wit_host::random_u64()
    }

    pub fn define_metric(
        kind: MetricKind,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<u32, String> {
        let def = wit_host::MetricDef {
            kind: match kind {
                MetricKind::Counter => wit_host::MetricKind::Counter,
                MetricKind::Gauge => wit_host::MetricKind::Gauge,
                MetricKind::Histogram => wit_host::MetricKind::Histogram,
            },
            name: name.to_string(),
            help: help.to_string(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            buckets: buckets.to_vec(),
        };
        wit_host::define_metric(&def)
    }

    pub fn series(metric: u32, label_values: &[&str]) -> Result<u32, String> {
        let values: Vec<String> = label_values.iter().map(|s| s.to_string()).collect();
        wit_host::series(metric, &values)
    }

    pub fn record_metrics(samples: &[Sample]) {
        let batch: Vec<wit_host::Sample> = samples
            .iter()
            .map(|s| wit_host::Sample {
                series: s.series.0,
                value: s.value,
            })
            .collect();
        wit_host::record_metrics(&batch)
    }

    fn state_error(e: wit_host::StateError) -> StateError {
        match e {
            wit_host::StateError::Conflict(v) => StateError::Conflict(v),
            wit_host::StateError::TooLarge => StateError::TooLarge,
            wit_host::StateError::Full => StateError::Full,
        }
    }

    pub fn state_get(key: &str) -> Option<Versioned> {
        wit_host::state_get(key).map(|v| Versioned {
            value: v.value,
            version: v.version,
        })
    }

    pub fn state_set(
        key: &str,
        value: &[u8],
        if_version: Option<u64>,
        ttl_ms: u32,
    ) -> Result<u64, StateError> {
        wit_host::state_set(key, value, if_version, ttl_ms).map_err(state_error)
    }

    pub fn state_add(key: &str, delta: i64, ttl_ms: u32) -> Result<i64, StateError> {
        wit_host::state_add(key, delta, ttl_ms).map_err(state_error)
    }

    pub fn state_delete(key: &str) {
        wit_host::state_delete(key)
    }

    pub fn counter_add(key: u64, delta: i64, ttl_ms: u32) -> i64 {
        wit_host::counter_add(key, delta, ttl_ms)
    }

    pub fn counter_reset(key: u64) {
        wit_host::counter_reset(key)
    }

    pub fn endpoint_pool(endpoint: u64) -> Vec<EndpointStatus> {
        wit_host::endpoint_pool(endpoint)
            .into_iter()
            .map(|e| EndpointStatus {
                id: e.id,
                address: e.address,
                ejected_ms: e.ejected_ms,
            })
            .collect()
    }

    pub fn eject(endpoint: u64, duration_ms: u32) -> bool {
        wit_host::eject(endpoint, duration_ms)
    }
}
