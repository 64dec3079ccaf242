//! A prepared plugin: its component pre-instantiated against the host, its configuration
//! validated, and a pool of configured instances that hook calls check out one at a time.
//!
//! Every call runs under a deadline (epoch interruption) and a memory cap. A call that traps,
//! runs out of time or memory loses its instance — a trapped instance cannot be entered again
//! — and the next call gets a fresh one; a plugin that keeps failing is re-instantiated with
//! back-off rather than in a hot loop.

use super::bindings::Plugin as Bindings;
use super::bindings::PluginPre;
use super::bindings::weft::filter::types as wit;
use super::engine::deadline_ticks;
use super::error::{Failure, PluginError};
use super::host_impl::{MemoryCap, PluginCtx, Services};
use super::metrics::PluginStats;
use super::proxy_wasm::{self, ProxyWasm, Requested, Vm, VmStartError};
use super::types::{
    Attempt, CallSummary, FailStrategy, Hook, HookSet, RequestHead, ResponseHead, RouteId,
};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, Trap};

/// Sandbox bounds for one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest a single hook call may run.
    pub deadline: Duration,
    /// Longest instantiation plus `configure` may run: once per instance, compiling what the
    /// config says (a canary's regexes), so it gets more room than a hook; still bounded so
    /// a `configure` that loops cannot hang a snapshot.
    pub setup_deadline: Duration,
    /// Most linear memory an instance may hold.
    pub memory_bytes: usize,
    /// Most instances alive at once (0: as many as calls run at once); a call that finds
    /// every one busy fails with [`Failure::Busy`].
    pub instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(10),
            setup_deadline: Duration::from_secs(1),
            memory_bytes: 16 << 20,
            instances: 0,
        }
    }
}

/// What a plugin is and how it runs.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Its name: labels its metrics and logs, and keys its shared state.
    pub name: String,
    /// Its JSON configuration (`{}` when none).
    pub config: String,
    /// What happens when it fails.
    pub fail_strategy: FailStrategy,
    /// Its sandbox bounds.
    pub limits: Limits,
    /// The routes it runs for (VirtualService `http` entry names, as an earlier plugin names
    /// them with `set-route`); empty: every call.
    pub routes: Vec<String>,
    /// The ports it runs for (a WasmPlugin's `match[].ports`); empty: every port.
    pub ports: Vec<u16>,
    /// A proxy-wasm filter's root id (a WasmPlugin's `pluginName`); empty: none.
    pub root_id: String,
}

impl PluginSpec {
    /// A fail-open plugin with default limits.
    pub fn new(name: impl Into<String>, config: impl Into<String>) -> Self {
        PluginSpec {
            name: name.into(),
            config: config.into(),
            fail_strategy: FailStrategy::FailOpen,
            limits: Limits::default(),
            routes: Vec::new(),
            ports: Vec::new(),
            root_id: String::new(),
        }
    }
}

struct Instance {
    store: Store<PluginCtx>,
    bindings: Bindings,
    _alive: Alive,
}

/// One unit of a plugin's count of live instances, given back when its instance is dropped.
struct Alive(Arc<AtomicU32>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct CrashState {
    consecutive: u32,
    not_before: Option<Instant>,
}

/// Back-off before re-instantiating after the n-th consecutive failure: none for the first
/// (one bad request should not cost the next), then 10 ms doubling to 5 s.
fn backoff(consecutive: u32) -> Duration {
    if consecutive < 2 {
        return Duration::ZERO;
    }
    let ms = 10u64.saturating_mul(1 << (consecutive - 2).min(20));
    Duration::from_millis(ms.min(5_000))
}

/// A plugin ready to be called.
pub struct Plugin {
    name: Arc<str>,
    key: u32,
    digest: String,
    spec: PluginSpec,
    // `spec.routes` interned, so the per-hook check compares integers; empty: every call.
    scope: Box<[u32]>,
    hooks: HookSet,
    engine: Engine,
    abi: Abi,
    services: Arc<Services>,
    stats: PluginStats,
    deadline_ticks: u64,
    setup_ticks: u64,
    pool: Mutex<Vec<Instance>>,
    alive: Arc<AtomicU32>,
    failures_hint: AtomicU32,
    crash: Mutex<CrashState>,
}

/// What kind of plugin it is, and what runs it.
enum Abi {
    /// A `weft:filter` component: pooled instances, any one per hook.
    Component(PluginPre<PluginCtx>),
    /// A proxy-wasm filter: a few VMs, one per call for all its hooks.
    ProxyWasm(ProxyWasm),
}

fn hooks_from(h: wit::Hooks) -> HookSet {
    HookSet {
        on_request: h.contains(wit::Hooks::ON_REQUEST),
        on_attempt_end: h.contains(wit::Hooks::ON_ATTEMPT_END),
        on_response: h.contains(wit::Hooks::ON_RESPONSE),
        on_done: h.contains(wit::Hooks::ON_DONE),
        on_request_body: false,
        on_response_body: false,
        on_response_trailers: false,
        on_request_trailers: false,
    }
}

impl Plugin {
    /// Builds the plugin and its first instance, running `configure` once to validate.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare(
        engine: &Engine,
        pre: PluginPre<PluginCtx>,
        services: Arc<Services>,
        stats: PluginStats,
        key: u32,
        digest: String,
        spec: PluginSpec,
    ) -> Result<Plugin, PluginError> {
        if !spec.routes.is_empty() {
            // Before any chain holding this plugin is in force, so no call misses its route.
            services.routes_scoped.store(true, Ordering::Relaxed);
        }
        let mut plugin = Plugin {
            name: Arc::from(spec.name.as_str()),
            key,
            digest,
            deadline_ticks: deadline_ticks(spec.limits.deadline),
            setup_ticks: deadline_ticks(spec.limits.setup_deadline.max(spec.limits.deadline)),
            scope: spec
                .routes
                .iter()
                .map(|r| services.names.intern(r))
                .collect(),
            spec,
            hooks: HookSet::default(),
            engine: engine.clone(),
            abi: Abi::Component(pre),
            services,
            stats,
            pool: Mutex::new(Vec::new()),
            alive: Arc::new(AtomicU32::new(0)),
            failures_hint: AtomicU32::new(0),
            crash: Mutex::new(CrashState::default()),
        };
        // The first instance is always allowed (a bound is at least 1).
        plugin.alive.fetch_add(1, Ordering::AcqRel);
        let first = Alive(plugin.alive.clone());
        let (instance, hooks) = plugin.instantiate(first).map_err(|e| match e {
            StartError::Rejected(reason) => PluginError::ConfigRejected {
                plugin: plugin.spec.name.clone(),
                reason,
            },
            StartError::Failed(failure) => PluginError::Start {
                plugin: plugin.spec.name.clone(),
                failure,
            },
        })?;
        plugin.hooks = hooks;
        plugin.pool.get_mut().push(instance);
        Ok(plugin)
    }

    /// Builds a proxy-wasm plugin and starts its VMs (each runs `proxy_on_vm_start` and
    /// `proxy_on_configure` with the plugin's configuration; a false from either refuses it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare_proxy_wasm(
        engine: &Engine,
        pre: wasmtime::InstancePre<proxy_wasm::ProxyCtx>,
        hooks: HookSet,
        services: Arc<Services>,
        stats: PluginStats,
        key: u32,
        digest: String,
        spec: PluginSpec,
        node: Arc<proxy_wasm::NodeInfo>,
    ) -> Result<Plugin, PluginError> {
        if !spec.routes.is_empty() {
            services.routes_scoped.store(true, Ordering::Relaxed);
        }
        let setup_ticks = deadline_ticks(spec.limits.setup_deadline.max(spec.limits.deadline));
        let name: Arc<str> = Arc::from(spec.name.as_str());
        let setup = proxy_wasm::Setup {
            plugin: name.clone(),
            key,
            services: services.clone(),
            node,
            config: Arc::from(spec.config.as_bytes()),
            root_id: Arc::from(spec.root_id.as_str()),
            memory_bytes: spec.limits.memory_bytes,
            setup_ticks,
            waker: Default::default(),
        };
        // As Envoy runs a VM per worker: a call's hooks lock one VM, so calls on other
        // workers go to others. A bound on instances bounds the VMs.
        let count = match spec.limits.instances {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            n => n as usize,
        };
        let start = Instant::now();
        let vms = ProxyWasm::start(engine, pre, setup, count).map_err(|e| match e {
            VmStartError::Refused(reason) => PluginError::ConfigRejected {
                plugin: spec.name.clone(),
                reason,
            },
            VmStartError::Failed(e, exceeded) => PluginError::Start {
                plugin: spec.name.clone(),
                failure: classify(&e, exceeded, "instantiate"),
            },
        })?;
        stats.call(Hook::Configure, Some(start.elapsed()));
        stats.instances.inc_by(vms.len() as u64);
        Ok(Plugin {
            name,
            key,
            digest,
            deadline_ticks: deadline_ticks(spec.limits.deadline),
            setup_ticks,
            scope: spec
                .routes
                .iter()
                .map(|r| services.names.intern(r))
                .collect(),
            spec,
            hooks,
            engine: engine.clone(),
            abi: Abi::ProxyWasm(vms),
            services,
            stats,
            pool: Mutex::new(Vec::new()),
            alive: Arc::new(AtomicU32::new(0)),
            failures_hint: AtomicU32::new(0),
            crash: Mutex::new(CrashState::default()),
        })
    }

    /// Called once the plugin is shared: a proxy-wasm plugin whose VMs asked for ticks gets
    /// its tick thread.
    pub(crate) fn adopt(self: &Arc<Self>) {
        if let Abi::ProxyWasm(vms) = &self.abi {
            let _ = vms.owner.set(Arc::downgrade(self));
            self.start_ticks(vms, false);
            // HTTP calls the root contexts dispatched while they were configured.
            for index in 0..vms.len() {
                let callouts = vms.slot(index).as_mut().map(Vm::take_callouts);
                self.send_root_callouts(vms, index, callouts.unwrap_or_default());
            }
        }
    }

    /// Has the sidecar make a root context's HTTP calls; their answers come back to the VM on
    /// the tick thread. Without a sidecar (the control plane's check), every call fails.
    fn send_root_callouts(
        &self,
        vms: &ProxyWasm,
        index: usize,
        callouts: Vec<super::types::Callout>,
    ) {
        if callouts.is_empty() {
            return;
        }
        self.start_ticks(vms, true);
        let waker = vms.waker().clone();
        match self.services.callouts.get() {
            Some(sender) => sender.send(
                callouts,
                Box::new(move |answers| waker.answered(index, answers)),
            ),
            None => waker.answered(index, callouts.iter().map(|c| (c.token, None)).collect()),
        }
    }

    fn start_ticks(&self, vms: &ProxyWasm, needed: bool) {
        if (needed || vms.wants_ticks())
            && let Some(owner) = vms.owner.get()
            && !vms.ticking.swap(true, Ordering::AcqRel)
        {
            proxy_wasm::spawn_ticker(owner.clone(), vms.waker().clone(), &self.name);
        }
    }

    /// Whether it is a proxy-wasm filter (else a `weft:filter` component).
    pub fn is_proxy_wasm(&self) -> bool {
        matches!(self.abi, Abi::ProxyWasm(_))
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sha256 of its artifact.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The hooks it asked for.
    pub fn hooks(&self) -> HookSet {
        self.hooks
    }

    /// Its spec.
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// Its fail strategy.
    pub fn fail_strategy(&self) -> FailStrategy {
        self.spec.fail_strategy
    }

    /// Whether it runs for a call on `route`: always when unscoped, else only on its routes.
    #[inline]
    pub fn serves(&self, route: RouteId) -> bool {
        (self.scope.is_empty() || self.scope.contains(&route.name))
            && (self.spec.ports.is_empty() || self.spec.ports.contains(&route.port))
    }

    /// Instances idle in its pool.
    pub fn idle_instances(&self) -> usize {
        self.pool.lock().len()
    }

    /// A place for one more live instance: always unbounded, else only below the bound. Taken
    /// atomically, so calls racing for the last place cannot both pass the bound.
    fn reserve(&self) -> Option<Alive> {
        let most = self.spec.limits.instances;
        self.alive
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (most == 0 || n < most).then_some(n + 1)
            })
            .ok()
            .map(|_| Alive(self.alive.clone()))
    }

    fn instantiate(&self, alive: Alive) -> Result<(Instance, HookSet), StartError> {
        let Abi::Component(pre) = &self.abi else {
            return Err(StartError::Failed(Failure::Instantiate(
                "a proxy-wasm filter has no pooled instances".into(),
            )));
        };
        let ctx = PluginCtx {
            plugin: self.name.clone(),
            key: self.key,
            services: self.services.clone(),
            request: RequestHead::default(),
            response: ResponseHead::default(),
            reply: None,
            violation: None,
            memory: MemoryCap {
                max_bytes: self.spec.limits.memory_bytes,
                exceeded: false,
            },
            wasi: super::wasi::context(&self.name),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|ctx| &mut ctx.memory);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.setup_ticks);
        let start = Instant::now();
        let bindings = pre
            .instantiate(&mut store)
            .map_err(|e| StartError::Failed(classify_in(&e, &store, "instantiate")))?;
        store.set_epoch_deadline(self.setup_ticks);
        let configured = bindings
            .weft_filter_filter()
            .call_configure(&mut store, &self.spec.config);
        self.stats.call(Hook::Configure, Some(start.elapsed()));
        self.stats.instances.inc();
        match configured {
            Ok(Ok(hooks)) => Ok((
                Instance {
                    store,
                    bindings,
                    _alive: alive,
                },
                hooks_from(hooks),
            )),
            Ok(Err(reason)) => Err(StartError::Rejected(reason)),
            Err(e) => Err(StartError::Failed(classify_in(&e, &store, "configure"))),
        }
    }

    fn checkout(&self, hook: Hook) -> Result<Instance, Failure> {
        if let Some(instance) = self.pool.lock().pop() {
            return Ok(instance);
        }
        let Some(alive) = self.reserve() else {
            // Load, not a crash: counted, but no back-off.
            let busy = Failure::Busy(self.spec.limits.instances);
            self.stats.failure(hook, busy.cause());
            return Err(busy);
        };
        if let Some(not_before) = self.crash.lock().not_before
            && Instant::now() < not_before
        {
            self.stats.failure(hook, Failure::BackingOff.cause());
            return Err(Failure::BackingOff);
        }
        match self.instantiate(alive) {
            Ok((instance, _)) => Ok(instance),
            Err(e) => {
                let failure = match e {
                    StartError::Rejected(reason) => Failure::Instantiate(format!(
                        "configure rejected its configuration: {reason}"
                    )),
                    StartError::Failed(f) => f,
                };
                self.note_failure(hook, &failure);
                Err(failure)
            }
        }
    }

    fn note_failure(&self, hook: Hook, failure: &Failure) {
        self.stats.failure(hook, failure.cause());
        let mut crash = self.crash.lock();
        crash.consecutive = crash.consecutive.saturating_add(1);
        let wait = backoff(crash.consecutive);
        crash.not_before = (!wait.is_zero()).then(|| Instant::now() + wait);
        self.failures_hint
            .store(crash.consecutive, Ordering::Relaxed);
        tracing::warn!(
            plugin = %self.name,
            hook = hook.name(),
            consecutive = crash.consecutive,
            backoff_ms = wait.as_millis() as u64,
            "plugin call failed: {failure}"
        );
    }

    fn note_success(&self) {
        if self.failures_hint.load(Ordering::Relaxed) != 0 {
            *self.crash.lock() = CrashState::default();
            self.failures_hint.store(0, Ordering::Relaxed);
        }
    }

    /// Runs one hook call on a pooled instance under the plugin's deadline.
    fn call<R>(
        &self,
        hook: Hook,
        f: impl FnOnce(&mut Store<PluginCtx>, &Bindings) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let mut instance = self.checkout(hook)?;
        instance.store.set_epoch_deadline(self.deadline_ticks);
        // Timing every call costs two clock reads and a histogram update, a fifth of a scalar
        // hook; one call in eight is timed, every call is counted.
        let start = self.stats.sample().then(Instant::now);
        let result = f(&mut instance.store, &instance.bindings);
        self.stats.call(hook, start.map(|s| s.elapsed()));
        // A bound the plugin passed fails the call; the instance itself is sound and stays.
        let violation = instance.store.data_mut().violation.take();
        match (result, violation) {
            (Ok(_), Some(why)) => {
                instance.store.data_mut().reply = None;
                self.pool.lock().push(instance);
                let failure = Failure::Limit(why);
                self.note_failure(hook, &failure);
                Err(failure)
            }
            (Ok(r), None) => {
                self.pool.lock().push(instance);
                self.note_success();
                Ok(r)
            }
            (Err(e), _) => {
                // A trapped instance cannot be entered again: drop it.
                let failure = classify_in(&e, &instance.store, hook.name());
                drop(instance);
                self.note_failure(hook, &failure);
                Err(failure)
            }
        }
    }

    /// Runs one hook of a proxy-wasm filter in the VM of `index` (a call's id: every hook of
    /// a call runs in the same VM), starting a VM in place of a lost one first.
    fn vm_call<R>(
        &self,
        vms: &ProxyWasm,
        hook: Hook,
        index: u64,
        f: impl FnOnce(&mut Vm) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let mut slot = vms.slot((index % vms.len() as u64) as usize);
        let vm = match &mut *slot {
            Some(vm) => vm,
            empty => {
                if let Some(not_before) = self.crash.lock().not_before
                    && Instant::now() < not_before
                {
                    self.stats.failure(hook, Failure::BackingOff.cause());
                    return Err(Failure::BackingOff);
                }
                match vms.restart((index % vms.len() as u64) as usize) {
                    Ok(vm) => {
                        self.stats.instances.inc();
                        empty.insert(vm)
                    }
                    Err(e) => {
                        let failure = match e {
                            VmStartError::Refused(reason) => Failure::Instantiate(reason),
                            VmStartError::Failed(e, exceeded) => {
                                classify(&e, exceeded, "instantiate")
                            }
                        };
                        self.note_failure(hook, &failure);
                        return Err(failure);
                    }
                }
            }
        };
        vm.store.set_epoch_deadline(self.deadline_ticks);
        let start = self.stats.sample().then(Instant::now);
        let result = f(vm);
        self.stats.call(hook, start.map(|s| s.elapsed()));
        let violation = vm.store.data_mut().violation.take();
        let asked_ticks = vm.tick().is_some();
        match (result, violation) {
            (Ok(_), Some(why)) => {
                drop(slot);
                let failure = Failure::Limit(why);
                self.note_failure(hook, &failure);
                Err(failure)
            }
            (Ok(r), None) => {
                drop(slot);
                self.note_success();
                if asked_ticks && !vms.ticking.load(Ordering::Relaxed) {
                    self.start_ticks(vms, false);
                }
                Ok(r)
            }
            (Err(e), _) => {
                // A trapped VM cannot be entered again, and its streams are lost with it.
                let failure = classify(&e, vm.store.data().memory.exceeded, hook.name());
                *slot = None;
                drop(slot);
                self.note_failure(hook, &failure);
                Err(failure)
            }
        }
    }

    /// Runs the ticks that are due in each VM; answers how long until the next one.
    pub(crate) fn run_due_ticks(&self) -> Duration {
        let Abi::ProxyWasm(vms) = &self.abi else {
            return Duration::from_secs(1);
        };
        for (index, answers) in vms.waker().take_answers() {
            let sent = self.vm_call(vms, Hook::OnTick, index as u64, |vm| {
                vm.on_root_answers(answers)?;
                Ok(vm.take_callouts())
            });
            self.send_root_callouts(vms, index, sent.unwrap_or_default());
        }
        for (index, queue) in vms.waker().take() {
            let sent = self.vm_call(vms, Hook::OnTick, index as u64, |vm| {
                vm.on_queue_ready(queue)?;
                Ok(vm.take_callouts())
            });
            self.send_root_callouts(vms, index, sent.unwrap_or_default());
        }
        let mut next = Duration::from_secs(1);
        for index in 0..vms.len() {
            let now = Instant::now();
            // Scheduled from the period the root context asks for now: one it sets (or
            // changes, or drops) in any callback takes effect here.
            let due = {
                let mut slot = vms.slot(index);
                let Some(vm) = slot.as_mut() else { continue };
                match (vm.tick(), vm.next_tick) {
                    (None, _) => {
                        vm.next_tick = None;
                        false
                    }
                    (Some(period), None) => {
                        vm.next_tick = Some(now + period);
                        next = next.min(period);
                        false
                    }
                    (Some(_), Some(at)) if at <= now => true,
                    (Some(_), Some(at)) => {
                        next = next.min(at - now);
                        false
                    }
                }
            };
            if !due {
                continue;
            }
            let sent = self.vm_call(vms, Hook::OnTick, index as u64, |vm| {
                let r = vm.on_tick();
                vm.next_tick = vm.tick().map(|p| Instant::now() + p);
                r.map(|()| vm.take_callouts())
            });
            self.send_root_callouts(vms, index, sent.unwrap_or_default());
            if let Some(p) = vms.slot(index).as_ref().and_then(Vm::tick) {
                next = next.min(p);
            }
        }
        next
    }

    /// Runs `on-request`; a local reply comes back if the plugin answered.
    pub(crate) fn on_request(
        &self,
        call_id: u64,
        head: &mut RequestHead,
    ) -> Result<Requested, Failure> {
        if let Abi::ProxyWasm(vms) = &self.abi {
            return self.vm_call(vms, Hook::OnRequest, call_id, |vm| {
                vm.on_request(call_id, head)
            });
        }
        self.component_on_request(call_id, head).map(|r| match r {
            Some(reply) => Requested::Reply(reply),
            None => Requested::Continue,
        })
    }

    /// Delivers the answers to the HTTP calls a proxy-wasm filter paused a request for.
    pub(crate) fn on_callout_answers(
        &self,
        call_id: u64,
        head: &mut RequestHead,
        answers: Vec<(u32, Option<super::types::CalloutAnswer>)>,
        goes_on: bool,
    ) -> Result<Requested, Failure> {
        let Abi::ProxyWasm(vms) = &self.abi else {
            return Ok(Requested::Continue);
        };
        self.vm_call(vms, Hook::OnRequest, call_id, |vm| {
            vm.on_callout_answers(call_id, head, answers, goes_on)
        })
    }

    fn component_on_request(
        &self,
        call_id: u64,
        head: &mut RequestHead,
    ) -> Result<Option<wit::LocalResponse>, Failure> {
        self.call(Hook::OnRequest, |store, b| {
            // The head is lent by moving it into the store for the call and back after,
            // trap or not.
            let ctx = store.data_mut();
            std::mem::swap(&mut ctx.request, head);
            ctx.reply = None;
            let r = b.weft_filter_filter().call_on_request(&mut *store, call_id);
            let ctx = store.data_mut();
            std::mem::swap(&mut ctx.request, head);
            r.map(|()| ctx.reply.take())
        })
    }

    /// Runs a proxy-wasm filter's body callback on `body` (the data so far that it has not
    /// passed on; it may rewrite it). Components have no body callbacks: `Continue`.
    pub(crate) fn on_body(
        &self,
        call_id: u64,
        response: bool,
        body: &mut Vec<u8>,
        end: bool,
    ) -> Result<super::types::BodyVerdict, Failure> {
        let Abi::ProxyWasm(vms) = &self.abi else {
            return Ok(super::types::BodyVerdict::Continue);
        };
        let hook = if response {
            Hook::OnResponseBody
        } else {
            Hook::OnRequestBody
        };
        self.vm_call(vms, hook, call_id, |vm| {
            vm.on_body(call_id, response, body, end)
        })
    }

    /// Runs a proxy-wasm filter's request or response trailers callback on `trailers`
    /// (editable); a request's may answer in the call's place.
    pub(crate) fn on_trailers(
        &self,
        call_id: u64,
        response: bool,
        trailers: &mut http::HeaderMap,
    ) -> Result<super::types::BodyVerdict, Failure> {
        let Abi::ProxyWasm(vms) = &self.abi else {
            return Ok(super::types::BodyVerdict::Continue);
        };
        let hook = if response {
            Hook::OnResponseTrailers
        } else {
            Hook::OnRequestTrailers
        };
        self.vm_call(vms, hook, call_id, |vm| {
            vm.on_trailers(call_id, response, trailers)
        })
    }

    pub(crate) fn on_attempt_end(&self, attempt: &Attempt) -> Result<wit::AttemptAction, Failure> {
        if self.is_proxy_wasm() {
            return Ok(wit::AttemptAction::Done);
        }
        self.call(Hook::OnAttemptEnd, |store, b| {
            b.weft_filter_filter().call_on_attempt_end(store, *attempt)
        })
    }

    /// Runs `on-response`; a replacement comes back if the plugin gave one.
    pub(crate) fn on_response(
        &self,
        call_id: u64,
        head: &mut ResponseHead,
    ) -> Result<Option<wit::LocalResponse>, Failure> {
        if let Abi::ProxyWasm(vms) = &self.abi {
            return self.vm_call(vms, Hook::OnResponse, call_id, |vm| {
                vm.on_response(call_id, head)
            });
        }
        self.call(Hook::OnResponse, |store, b| {
            let ctx = store.data_mut();
            std::mem::swap(&mut ctx.response, head);
            ctx.reply = None;
            let r = b
                .weft_filter_filter()
                .call_on_response(&mut *store, call_id);
            let ctx = store.data_mut();
            std::mem::swap(&mut ctx.response, head);
            r.map(|()| ctx.reply.take())
        })
    }

    pub(crate) fn on_done(&self, summary: &CallSummary) -> Result<(), Failure> {
        if let Abi::ProxyWasm(vms) = &self.abi {
            let id = summary.call_id;
            return self.vm_call(vms, Hook::OnDone, id, |vm| vm.on_done(id, summary));
        }
        self.call(Hook::OnDone, |store, b| {
            b.weft_filter_filter().call_on_done(store, *summary)
        })
    }
}

enum StartError {
    Rejected(String),
    Failed(Failure),
}

/// [`classify`] for a component instance's store.
fn classify_in(err: &wasmtime::Error, store: &Store<PluginCtx>, during: &str) -> Failure {
    classify(err, store.data().memory.exceeded, during)
}

/// Names why a call failed: the memory cap (`exceeded`: the store's limiter saw the cap
/// passed), the deadline, or another trap.
fn classify(err: &wasmtime::Error, exceeded: bool, during: &str) -> Failure {
    if exceeded {
        return Failure::Memory;
    }
    if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
        return Failure::Deadline;
    }
    let mut text = format!("{err:#}");
    if text.len() > 4096 {
        let mut cut = 4096;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    if during == "instantiate" {
        Failure::Instantiate(text)
    } else {
        Failure::Trap(text)
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_spares_the_first_failure_then_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(3), Duration::from_millis(20));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
