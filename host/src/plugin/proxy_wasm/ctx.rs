//! What a proxy-wasm VM's store holds: the host services, the plugin's configuration, and
//! the call a hook is serving (its heads lent for the hook, what was kept of it for later
//! hooks, its summary at the end).

use crate::plugin::bindings::weft::filter::types::LocalResponse;
use crate::plugin::host_impl::{MemoryCap, Services};
use crate::plugin::types::{CallSummary, Callout, CalloutAnswer, RequestHead, ResponseHead};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Memory, TypedFunc};

/// Where in a call (or outside one) the VM is being run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Phase {
    /// The root context: start, configure, ticks.
    #[default]
    Root,
    /// `proxy_on_request_headers`: the request head is lent and editable.
    RequestHeaders,
    /// `proxy_on_response_headers`: the response head is lent and editable.
    ResponseHeaders,
    /// `proxy_on_request_body`: the body so far is the request-body buffer.
    RequestBody,
    /// `proxy_on_response_body`: the body so far is the response-body buffer.
    ResponseBody,
    /// `proxy_on_response_trailers`: the response's trailers are lent and editable.
    ResponseTrailers,
    /// `proxy_on_request_trailers`: the request's trailers are lent and editable.
    RequestTrailers,
    /// `proxy_on_log` (and done, delete): what was kept of the call is readable.
    Log,
}

/// What a stream context keeps of its call for its later hooks (Envoy lets a filter read the
/// request headers while the response passes, and both in `on_log`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Kept {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) authority: String,
    pub(crate) source: Arc<str>,
    pub(crate) request_headers: KeptHeaders,
    pub(crate) status: Option<http::StatusCode>,
    pub(crate) response_headers: KeptHeaders,
    /// Properties the filter set on the stream (`set_property`), read back by later hooks.
    pub(crate) properties: Vec<(String, Vec<u8>)>,
}

/// A head's headers as they were when a callback returned: a flat list, as a copy of a
/// `HeaderMap` costs several allocations per call (half the cost of a minimal filter's call)
/// and these are only read, rarely, by later callbacks.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeptHeaders(Vec<(HeaderName, HeaderValue)>);

impl KeptHeaders {
    /// A copy of `headers`.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut kept = Vec::with_capacity(headers.len());
        kept.extend(headers.iter().map(|(n, v)| (n.clone(), v.clone())));
        KeptHeaders(kept)
    }
}

/// Headers a callback reads: the live head's map or a kept copy.
pub(crate) trait Headers {
    /// The first value of `name` (lower-case).
    fn first(&self, name: &str) -> Option<&[u8]>;
    /// Every header, in order.
    fn each(&self) -> Vec<(&str, &[u8])>;
}

impl Headers for HeaderMap {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }

    fn each(&self) -> Vec<(&str, &[u8])> {
        self.iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect()
    }
}

impl Headers for KeptHeaders {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.as_bytes())
    }

    fn each(&self) -> Vec<(&str, &[u8])> {
        self.0
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect()
    }
}

/// The workload a sidecar runs beside, for the `node.*` properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id (`sidecar~<namespace>~<name>`).
    pub id: String,
    /// The workload's service name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its SPIFFE identity: a call whose source is this one was made by the workload itself.
    pub identity: String,
}

/// A proxy-wasm VM's store data.
pub(crate) struct ProxyCtx {
    pub(crate) plugin: Arc<str>,
    pub(crate) key: u32,
    pub(crate) services: Arc<Services>,
    pub(crate) node: Arc<NodeInfo>,
    /// The WasmPlugin's `pluginName`: the `plugin_root_id` property.
    pub(crate) root_id: Arc<str>,
    /// The WasmPlugin's `pluginConfig`, as the plugin-configuration buffer.
    pub(crate) config: Arc<[u8]>,
    pub(crate) memory: MemoryCap,
    /// The guest's linear memory and allocator, found once it is instantiated.
    pub(crate) guest_memory: Option<Memory>,
    pub(crate) malloc: Option<TypedFunc<i32, i32>>,
    pub(crate) phase: Phase,
    /// The request head, during `RequestHeaders`.
    pub(crate) request: RequestHead,
    /// The response head, during `ResponseHeaders`.
    pub(crate) response: ResponseHead,
    /// What the stream kept of its call, during its later hooks.
    pub(crate) kept: Kept,
    /// The body data of a body callback.
    pub(crate) body: Vec<u8>,
    /// The trailers being filtered, during `RequestTrailers` or `ResponseTrailers`.
    pub(crate) trailers: HeaderMap,
    /// HTTP calls the filter dispatched during this callback.
    pub(crate) callouts: Vec<Callout>,
    /// The next callout token (unique in the VM, as the SDKs key their callbacks by it).
    pub(crate) next_token: u32,
    /// The answer being delivered (`proxy_on_http_call_response`).
    pub(crate) answer: Option<CalloutAnswer>,
    /// The call's summary, during `Log`.
    pub(crate) summary: Option<CallSummary>,
    /// A local answer the filter sent during this hook.
    pub(crate) reply: Option<LocalResponse>,
    /// Whether the filter resumed the stream during this hook (`proxy_continue_stream`).
    pub(crate) resumed: bool,
    /// A host bound the filter passed during this hook: the call fails with it.
    pub(crate) violation: Option<String>,
    /// The tick period the root context asked for; none when it asked for none.
    pub(crate) tick: Option<Duration>,
    /// The last warning or error the filter logged: a refused configuration is explained
    /// with it.
    pub(crate) last_complaint: Option<String>,
    /// Who a queue this VM registers belongs to.
    pub(crate) queue_owner: super::queues::Owner,
    /// Properties asked for that Weft does not provide, each logged once per VM.
    pub(crate) absent_logged: HashSet<String>,
}

impl ProxyCtx {
    /// The data of a fresh VM, the `vm`-th of its plugin.
    pub(crate) fn new(setup: &super::Setup, vm: usize) -> Self {
        ProxyCtx {
            plugin: setup.plugin.clone(),
            key: setup.key,
            services: setup.services.clone(),
            node: setup.node.clone(),
            root_id: setup.root_id.clone(),
            config: setup.config.clone(),
            memory: MemoryCap {
                max_bytes: setup.memory_bytes,
                exceeded: false,
            },
            guest_memory: None,
            malloc: None,
            phase: Phase::Root,
            request: RequestHead::default(),
            response: ResponseHead::default(),
            kept: Kept::default(),
            body: Vec::new(),
            trailers: HeaderMap::new(),
            callouts: Vec::new(),
            next_token: 1,
            answer: None,
            summary: None,
            reply: None,
            resumed: false,
            violation: None,
            tick: None,
            last_complaint: None,
            queue_owner: super::queues::Owner {
                waker: Arc::downgrade(&setup.waker),
                vm,
            },
            absent_logged: HashSet::new(),
        }
    }
}
