//! The proxy-wasm host: core Wasm modules written against the proxy-wasm ABI (v0.2.1, what
//! Envoy and Istio run) loaded unchanged beside `weft:filter` components, in the same
//! sandbox (deadline, memory cap, trap isolation, fail strategy, back-off, metrics) and the
//! same chains.
//!
//! A proxy-wasm filter keeps each stream's state in its own memory between callbacks, so
//! unlike a component (any pooled instance per hook) every hook of one call runs in the same
//! VM. A plugin has a few VMs, as Envoy has one per worker; a call goes to `call_id % n`, its
//! hooks lock that VM, and each VM has its own root context (start, configure, ticks).
//!
//! The hooks map onto Weft's: `proxy_on_request_headers` in `on-request`,
//! `proxy_on_response_headers` in `on-response` (and on a local answer's way back), and
//! `proxy_on_log`, `proxy_on_done`, `proxy_on_delete` in `on-done`.

mod abi;
mod ctx;
mod guest;
mod properties;
mod queues;
mod vm;
mod wasi;

pub use ctx::NodeInfo;
pub(crate) use ctx::ProxyCtx;
pub(crate) use queues::Queues;
pub(crate) use vm::{Requested, Vm};

use super::types::HookSet;
use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Engine, InstancePre, Linker, Module};

/// The root context's id in every VM; stream contexts count up from the one after it.
const ROOT: i32 = 1;

/// The most stream contexts one VM holds: a call whose `on-done` never came (a route that
/// changed under a scoped plugin) is deleted, oldest first, past this bound.
const MAX_STREAMS: usize = 4096;

/// The ABI versions Weft speaks: 0.2.1 (Envoy, Istio) and 0.2.0, whose host functions are
/// the same ones.
const ABI_EXPORTS: [&str; 2] = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];

/// Host functions of the ABI that Weft does not provide, with what a filter author should
/// know. The SDKs import every one of them whether a filter uses it or not, so they are
/// linked; calling one fails the call (or, from `proxy_on_configure`, refuses the plugin)
/// naming it.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("proxy_grpc_call", "gRPC callouts are not supported yet"),
    ("proxy_grpc_stream", "gRPC streams are not supported yet"),
    ("proxy_grpc_send", "gRPC streams are not supported yet"),
    ("proxy_grpc_cancel", "gRPC callouts are not supported yet"),
    ("proxy_grpc_close", "gRPC callouts are not supported yet"),
    ("proxy_get_status", "gRPC callouts are not supported yet"),
    (
        "proxy_call_foreign_function",
        "foreign functions are Envoy's own and not provided",
    ),
];

/// A linker with every host function Weft gives proxy-wasm filters.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<ProxyCtx>> {
    let mut linker = Linker::new(engine);
    abi::add_to_linker(&mut linker)?;
    wasi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Checks a core module is a proxy-wasm filter Weft can run, and links it: the reason it is
/// not comes back naming the export or import at fault.
pub(crate) fn link(
    linker: &Linker<ProxyCtx>,
    module: &Module,
) -> Result<InstancePre<ProxyCtx>, String> {
    let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
    if !ABI_EXPORTS.iter().any(|abi| exports.contains(abi)) {
        return Err(if exports.contains(&"proxy_abi_version_0_1_0") {
            "a proxy-wasm filter of ABI 0.1.0; Weft runs 0.2.0 and 0.2.1: rebuild it with a current SDK".into()
        } else {
            "a core Wasm module that is neither a proxy-wasm filter (no proxy_abi_version_0_2_1 export) nor a component; build a weft:filter component (--target wasm32-wasip2) or a proxy-wasm filter".into()
        });
    }
    for needed in ["memory", "proxy_on_context_create"] {
        if !exports.contains(&needed) {
            return Err(format!("a proxy-wasm filter must export {needed}"));
        }
    }
    if !exports.contains(&"proxy_on_memory_allocate") && !exports.contains(&"malloc") {
        return Err("a proxy-wasm filter must export proxy_on_memory_allocate (or malloc)".into());
    }
    let mut linker = linker.clone();
    for import in module.imports() {
        let (Some((name, why)), wasmtime::ExternType::Func(ty)) = (
            UNSUPPORTED
                .iter()
                .find(|(name, _)| import.module() == "env" && *name == import.name()),
            import.ty(),
        ) else {
            continue;
        };
        linker
            .func_new("env", name, ty, move |mut c, _params, results| {
                let ctx = c.data_mut();
                tracing::warn!(plugin = %ctx.plugin, "{name}: {why}");
                ctx.violation.get_or_insert(format!("{name}: {why}"));
                if let Some(status) = results.first_mut() {
                    *status = wasmtime::Val::I32(guest::status::INTERNAL_FAILURE);
                }
                Ok(())
            })
            .map_err(|e| format!("{e:#}"))?;
    }
    linker
        .instantiate_pre(module)
        .map_err(|e| format!("imports what Weft does not provide: {e:#}"))
}

/// The hooks a proxy-wasm filter is called on: those whose callbacks it exports, and
/// `on-done` always (its stream contexts end there).
pub(crate) fn hooks(module: &Module) -> HookSet {
    let has = |name: &str| module.exports().any(|e| e.name() == name);
    HookSet {
        on_request: has("proxy_on_request_headers"),
        on_attempt_end: false,
        on_response: has("proxy_on_response_headers"),
        on_done: true,
        on_request_body: has("proxy_on_request_body"),
        on_response_body: has("proxy_on_response_body"),
        on_response_trailers: has("proxy_on_response_trailers"),
        on_request_trailers: has("proxy_on_request_trailers"),
    }
}

/// What a VM's start needs, kept to start another after one is lost.
pub(crate) struct Setup {
    pub(crate) plugin: Arc<str>,
    pub(crate) key: u32,
    pub(crate) services: Arc<super::host_impl::Services>,
    pub(crate) node: Arc<NodeInfo>,
    pub(crate) config: Arc<[u8]>,
    pub(crate) root_id: Arc<str>,
    pub(crate) memory_bytes: usize,
    /// Rings the plugin's tick thread when a queue a VM registered has items.
    pub(crate) waker: Arc<queues::Waker>,
    pub(crate) setup_ticks: u64,
}

/// Why a VM did not start.
pub(crate) enum VmStartError {
    /// `proxy_on_vm_start` or `proxy_on_configure` returned false: the filter refused its
    /// configuration.
    Refused(String),
    /// It trapped, ran out of time or memory, or lacked an export.
    Failed(wasmtime::Error, bool),
}

/// A plugin's VMs.
pub(crate) struct ProxyWasm {
    pre: InstancePre<ProxyCtx>,
    engine: Engine,
    setup: Setup,
    vms: Box<[Mutex<Option<Vm>>]>,
    /// The plugin these VMs belong to, for the tick thread (set once it is shared).
    pub(crate) owner: std::sync::OnceLock<std::sync::Weak<super::Plugin>>,
    pub(crate) ticking: std::sync::atomic::AtomicBool,
}

impl ProxyWasm {
    /// `count` VMs of `module`, each started now: a filter refusing its configuration, or
    /// failing to start, refuses the plugin.
    pub(crate) fn start(
        engine: &Engine,
        pre: InstancePre<ProxyCtx>,
        setup: Setup,
        count: usize,
    ) -> Result<Self, VmStartError> {
        let mut vms = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            vms.push(Mutex::new(Some(Vm::start(engine, &pre, &setup, index)?)));
        }
        Ok(ProxyWasm {
            pre,
            engine: engine.clone(),
            setup,
            vms: vms.into_boxed_slice(),
            owner: std::sync::OnceLock::new(),
            ticking: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// How many VMs there are.
    pub(crate) fn len(&self) -> usize {
        self.vms.len()
    }

    /// The VM a call's hooks run in.
    pub(crate) fn slot(&self, index: usize) -> MutexGuard<'_, Option<Vm>> {
        self.vms[index % self.vms.len()].lock()
    }

    /// A fresh VM, in place of the one at `index` that was lost.
    pub(crate) fn restart(&self, index: usize) -> Result<Vm, VmStartError> {
        Vm::start(&self.engine, &self.pre, &self.setup, index)
    }

    /// Whether any VM asked for ticks or registered a queue: the tick thread must run.
    pub(crate) fn wants_ticks(&self) -> bool {
        self.setup
            .waker
            .registered
            .load(std::sync::atomic::Ordering::Relaxed)
            || self
                .vms
                .iter()
                .any(|vm| vm.lock().as_ref().is_some_and(|vm| vm.tick().is_some()))
    }

    /// The plugin's queue waker.
    pub(crate) fn waker(&self) -> &Arc<queues::Waker> {
        &self.setup.waker
    }
}

/// Runs the VMs' due ticks and queue deliveries until the plugin is dropped: one thread per
/// plugin that asked for either.
pub(crate) fn spawn_ticker(
    owner: std::sync::Weak<super::Plugin>,
    waker: Arc<queues::Waker>,
    name: &str,
) {
    let spawned = std::thread::Builder::new()
        .name(format!(
            "weft-tick-{}",
            name.chars().take(4).collect::<String>()
        ))
        .spawn(move || {
            while let Some(plugin) = owner.upgrade() {
                let wait = plugin.run_due_ticks();
                drop(plugin);
                // Bounded, so a plugin that was swapped out is let go of soon; a queue's
                // items wake it at once.
                waker.wait(wait.min(Duration::from_millis(100)));
            }
        });
    if let Err(e) = spawned {
        tracing::error!(
            plugin = name,
            "cannot start the proxy-wasm tick thread: {e}"
        );
    }
}
