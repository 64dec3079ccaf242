//! Plain Rust forms of the contract's records, the same on Wasm and on the native test double.

use std::ops::{BitOr, BitOrAssign};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very fine detail.
    Trace,
    /// Detail for debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

/// The set of hooks a plugin wants called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hooks(u8);

impl Hooks {
    /// No hooks.
    pub const NONE: Hooks = Hooks(0);
    /// `on_request`.
    pub const ON_REQUEST: Hooks = Hooks(1);
    /// `on_attempt_end`.
    pub const ON_ATTEMPT_END: Hooks = Hooks(2);
    /// `on_response`.
    pub const ON_RESPONSE: Hooks = Hooks(4);
    /// `on_done`.
    pub const ON_DONE: Hooks = Hooks(8);

    /// Whether every hook in `other` is in `self`.
    pub const fn contains(self, other: Hooks) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits (1: on-request, 2: on-attempt-end, 4: on-response, 8: on-done).
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl BitOr for Hooks {
    type Output = Hooks;
    fn bitor(self, rhs: Hooks) -> Hooks {
        Hooks(self.0 | rhs.0)
    }
}

impl BitOrAssign for Hooks {
    fn bitor_assign(&mut self, rhs: Hooks) {
        self.0 |= rhs.0;
    }
}

/// A reply given in place of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalResponse {
    /// HTTP status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// A reply with this status and a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        LocalResponse {
            status,
            headers: vec![("content-type".into(), b"text/plain; charset=utf-8".to_vec())],
            body: body.into().into_bytes(),
        }
    }
}

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Destination {
    /// The service.
    pub service: String,
    /// The subset, or none for the whole service.
    pub subset: Option<String>,
}

/// What `on_request` decides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RequestAction {
    /// Go on.
    #[default]
    Continue,
    /// Answer now.
    Respond(LocalResponse),
}

/// How an upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Response(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The connection or stream was reset before a response head.
    Reset,
    /// The upstream refused the HTTP/2 stream.
    RefusedStream,
    /// The per-try timeout passed.
    Timeout,
    /// No endpoint could be picked.
    NoEndpoint,
}

/// One upstream attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Identifies the call.
    pub call_id: u64,
    /// 1 for the first try.
    pub number: u32,
    /// The endpoint tried, or 0.
    pub endpoint: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took, in microseconds.
    pub elapsed_us: u64,
    /// Milliseconds left of the call's overall timeout (`u32::MAX`: unbounded).
    pub remaining_ms: u32,
    /// Whether the host can send the request again.
    pub replayable: bool,
    /// The `grpc-status` of a trailers-only gRPC answer, if any.
    pub grpc_status: Option<u8>,
}

impl Default for Attempt {
    fn default() -> Self {
        Attempt {
            call_id: 0,
            number: 1,
            endpoint: 0,
            outcome: Outcome::Response(200),
            elapsed_us: 0,
            remaining_ms: u32::MAX,
            replayable: true,
            grpc_status: None,
        }
    }
}

/// What `on_attempt_end` decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttemptAction {
    /// The outcome stands.
    #[default]
    Done,
    /// Try again after this many milliseconds.
    Retry(u32),
}

/// What `on_response` decides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResponseAction {
    /// Send the response on.
    #[default]
    Continue,
    /// Replace it.
    Respond(LocalResponse),
}

/// The caller's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.x.
    #[default]
    Http1,
    /// HTTP/2.
    Http2,
}

/// Why a call did not get a plain upstream response (Envoy's response flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// No healthy upstream (UH).
    pub const NO_HEALTHY_UPSTREAM: ResponseFlags = ResponseFlags(1);
    /// Upstream connection failure (UF).
    pub const UPSTREAM_CONNECT_FAILURE: ResponseFlags = ResponseFlags(1 << 1);
    /// Upstream request timeout (UT).
    pub const UPSTREAM_TIMEOUT: ResponseFlags = ResponseFlags(1 << 2);
    /// Upstream reset (UR).
    pub const UPSTREAM_RESET: ResponseFlags = ResponseFlags(1 << 3);
    /// Retries exhausted (URX).
    pub const RETRY_LIMIT_EXCEEDED: ResponseFlags = ResponseFlags(1 << 4);
    /// Caller went away (DC).
    pub const DOWNSTREAM_DISCONNECT: ResponseFlags = ResponseFlags(1 << 5);
    /// No route (NR).
    pub const NO_ROUTE: ResponseFlags = ResponseFlags(1 << 6);
    /// A plugin answered locally.
    pub const LOCAL_REPLY: ResponseFlags = ResponseFlags(1 << 7);
    /// A plugin failed.
    pub const PLUGIN_FAILURE: ResponseFlags = ResponseFlags(1 << 8);
    /// The destination's circuit breaker refused the request (UO).
    pub const UPSTREAM_OVERFLOW: ResponseFlags = ResponseFlags(1 << 9);

    const CODES: [(ResponseFlags, &'static str); 10] = [
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Self::UPSTREAM_TIMEOUT, "UT"),
        (Self::UPSTREAM_RESET, "UR"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::RETRY_LIMIT_EXCEEDED, "URX"),
        (Self::DOWNSTREAM_DISCONNECT, "DC"),
        (Self::NO_ROUTE, "NR"),
        (Self::LOCAL_REPLY, "LR"),
        (Self::PLUGIN_FAILURE, "PF"),
    ];

    /// Builds flags from raw bits (see the constants).
    pub const fn from_bits(bits: u16) -> Self {
        ResponseFlags(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Envoy's short form (`UF,URX`), or `-` when empty, as Istio's `response_flags` label.
    pub fn envoy_codes(self) -> String {
        if self.is_empty() {
            return "-".to_string();
        }
        let codes: Vec<&str> = Self::CODES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, code)| *code)
            .collect();
        codes.join(",")
    }
}

impl BitOr for ResponseFlags {
    type Output = ResponseFlags;
    fn bitor(self, rhs: ResponseFlags) -> ResponseFlags {
        ResponseFlags(self.0 | rhs.0)
    }
}

/// A name the host interned (a service, a subset, an identity). Hooks carry these ids rather
/// than strings; [`Name::resolve`] gives the text, cached in the plugin after the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Name(pub u32);

impl Name {
    /// No name.
    pub const NONE: Name = Name(0);

    /// Whether this is no name.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The text of the name (empty for none).
    pub fn resolve(self) -> std::rc::Rc<str> {
        crate::host::name(self)
    }
}

/// A finished call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallSummary {
    /// Identifies the call.
    pub call_id: u64,
    /// Status sent to the caller; 0 when none.
    pub status: u16,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// Endpoint of the last attempt, or 0.
    pub endpoint: u64,
    /// The service the call went to.
    pub service: Name,
    /// The subset it went to, or none.
    pub subset: Name,
    /// Caller identity (SPIFFE ID), or none.
    pub source: Name,
    /// Upstream identity, or none.
    pub destination_identity: Name,
    /// The calling workload (see [`Workload::parse`]), or none.
    pub source_workload: Name,
    /// The workload that served the call, or none.
    pub destination_workload: Name,
    /// Caller protocol.
    pub protocol: Protocol,
    /// Response flags.
    pub flags: ResponseFlags,
    /// The gRPC status the response ended with, if it was a gRPC response.
    pub grpc_status: Option<u8>,
}

/// Kinds of host-owned metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up; samples are increments.
    Counter,
    /// Goes up and down; samples set it.
    Gauge,
    /// Samples are observations bucketed by value.
    Histogram,
}

/// A value in the shared state and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The bytes stored.
    pub value: Vec<u8>,
    /// Its version; never 0.
    pub version: u64,
}

/// Why a shared-state write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// The version did not match; the current one is given (0: absent).
    Conflict(u64),
    /// The value is too large.
    TooLarge,
    /// The plugin holds as many keys as allowed.
    Full,
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Conflict(v) => write!(f, "version conflict (current version {v})"),
            StateError::TooLarge => f.write_str("value too large"),
            StateError::Full => f.write_str("state key limit reached"),
        }
    }
}

impl std::error::Error for StateError {}

/// An endpoint and its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// Stable id.
    pub id: u64,
    /// Address.
    pub address: String,
    /// Milliseconds left of its ejection; 0 when serving.
    pub ejected_ms: u32,
}

/// A workload at one end of a call, as a `source-workload` or `destination-workload` name reads
/// (`name=orders;namespace=shop;app=orders;version=v1`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    /// The workload's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its `app` label.
    pub app: String,
    /// Its `version` label, empty when it has none.
    pub version: String,
}

impl Workload {
    /// Reads a workload name; unknown keys are skipped, so the host may add some.
    pub fn parse(text: &str) -> Workload {
        let mut w = Workload::default();
        for (key, value) in text.split(';').filter_map(|kv| kv.split_once('=')) {
            let field = match key {
                "name" => &mut w.name,
                "namespace" => &mut w.namespace,
                "app" => &mut w.app,
                "version" => &mut w.version,
                _ => continue,
            };
            *field = value.to_string();
        }
        w
    }

    /// Its name form, as [`Workload::parse`] reads it.
    pub fn encode(&self) -> String {
        format!(
            "name={};namespace={};app={};version={}",
            self.name, self.namespace, self.app, self.version
        )
    }
}

#[cfg(test)]
mod workload_tests {
    use super::Workload;

    #[test]
    fn a_workload_reads_back_what_it_encodes() {
        let w = Workload {
            name: "orders".into(),
            namespace: "shop".into(),
            app: "orders".into(),
            version: "v1".into(),
        };
        assert_eq!(Workload::parse(&w.encode()), w);
        let later = Workload::parse("name=a;namespace=b;zone=z;app=c;version=");
        assert_eq!((later.name.as_str(), later.app.as_str()), ("a", "c"));
        assert_eq!(later.version, "");
    }
}
