//! The sandboxed plugin runtime: loads `weft:filter` components, checks and compiles them
//! (with an on-disk compile cache), prepares configured instances, and runs chains of them on
//! the proxy's hooks under a deadline and a memory cap per call.
//!
//! Staged as the best embedders do it: one [`PluginRuntime`] (engine, linker, host services)
//! per process; one [`Compiled`] per artifact; one [`Plugin`] per configured use, holding a
//! pool of instances; [`Chain`]s of plugins, swapped atomically through a [`ChainSlot`].

mod artifact;
mod bindings;
mod cache;
mod chain;
mod compiler;
mod engine;
mod error;
mod health;
mod host_impl;
mod instance;
mod metrics;
mod proxy_wasm;
mod state;
mod types;
mod wasi;

pub use artifact::{Artifact, Compiled, sha256_hex};
pub use cache::CacheError;
pub use chain::{BodyPipeline, BodyStop, Chain, ChainSlot};
pub use compiler::{Compiler, Priority, REFUSED as PRECOMPILE_REFUSED, lower_priority, precompile};
pub use engine::{PoolSizes, Tier};
pub use error::{Failure, PluginError};
pub use health::{EndpointHealth, EndpointState, NoEndpoints};
pub use instance::{Limits, Plugin, PluginSpec};
pub use metrics::RuntimeMetrics;
pub use proxy_wasm::NodeInfo;
pub use state::StateLimits;
pub use types::*;

use host_impl::{PluginCtx, Services};
use parking_lot::Mutex;
use prometheus::Registry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

/// Settings of the runtime as a whole.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; none to compile every time.
    pub cache_dir: Option<PathBuf>,
    /// Instance pool sizes.
    pub pool: PoolSizes,
    /// Shared-state bounds per plugin.
    pub state: StateLimits,
    /// Label sets per plugin metric before the overflow series (0: 1,000).
    pub max_series_per_metric: usize,
    /// How components are compiled (a sidecar compiles in a child process).
    pub compiler: Compiler,
    /// The workload the runtime's plugins run beside (proxy-wasm's `node.*` properties).
    pub node: NodeInfo,
}

/// An engine with its linker: what compiles and instantiates code of one tier.
struct TierEngine {
    engine: Engine,
    fingerprint: String,
    linker: Linker<PluginCtx>,
    /// The proxy-wasm ABI, for core modules.
    core: wasmtime::Linker<proxy_wasm::ProxyCtx>,
}

impl TierEngine {
    /// An engine of `tier` with the contract and the sandbox's WASI linked; the pool sizes in
    /// force come back with it.
    fn new(pool: PoolSizes, tier: Tier) -> Result<(Self, PoolSizes), PluginError> {
        let (engine, pool) = engine::build(pool, tier)?;
        let mut linker = Linker::new(&engine);
        let link = |e: wasmtime::Error| PluginError::Engine(format!("linking the host: {e:#}"));
        bindings::Plugin::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |c| c)
            .map_err(link)?;
        wasi::add_to_linker(&mut linker).map_err(link)?;
        let core = proxy_wasm::linker(&engine).map_err(link)?;
        let fingerprint = engine::fingerprint(&engine);
        Ok((
            TierEngine {
                engine,
                fingerprint,
                linker,
                core,
            },
            pool,
        ))
    }
}

/// The plugin runtime of a process.
pub struct PluginRuntime {
    engine: Engine,
    fingerprint: String,
    linker: Linker<PluginCtx>,
    core: wasmtime::Linker<proxy_wasm::ProxyCtx>,
    /// The baseline tier, built the first time code of that tier is compiled or imported
    /// (most processes never need it); none when it cannot be built here.
    baseline: std::sync::OnceLock<Option<TierEngine>>,
    services: Arc<Services>,
    metrics: RuntimeMetrics,
    disk: Option<cache::DiskCache>,
    compiler: Compiler,
    pool: PoolSizes,
    compiled: artifact::MemoryCache,
    keys: Mutex<HashMap<String, u32>>,
    node: Arc<NodeInfo>,
}

/// A compiled plugin linked against the host: a component against the contract, or a core
/// module against the proxy-wasm ABI.
enum Linked {
    Component(bindings::PluginPre<PluginCtx>),
    ProxyWasm(wasmtime::InstancePre<proxy_wasm::ProxyCtx>, HookSet),
}

impl PluginRuntime {
    /// Builds the engine and host services, registering metrics in `registry`.
    pub fn new(
        config: RuntimeConfig,
        registry: &Registry,
        endpoints: Arc<dyn EndpointHealth>,
    ) -> Result<Self, PluginError> {
        // Refused before anything else: a cache others can write to is code others can run.
        let disk = match &config.cache_dir {
            Some(dir) => Some(cache::DiskCache::open(dir)?),
            None => None,
        };
        let (
            TierEngine {
                engine,
                fingerprint,
                linker,
                core,
            },
            pool,
        ) = TierEngine::new(config.pool, Tier::Optimized)?;
        let metrics = RuntimeMetrics::register(registry)
            .map_err(|e| PluginError::Engine(format!("registering metrics: {e}")))?;
        let max_series = match config.max_series_per_metric {
            0 => 1_000,
            n => n,
        };
        let services = Arc::new(Services {
            state: state::SharedState::new(config.state),
            metrics: metrics::PluginMetrics::new(registry.clone(), metrics.clone(), max_series),
            endpoints,
            names: host_impl::Interner::default(),
            routes_scoped: std::sync::atomic::AtomicBool::new(false),
            queues: proxy_wasm::Queues::default(),
            callouts: std::sync::OnceLock::new(),
        });
        Ok(PluginRuntime {
            fingerprint,
            engine,
            linker,
            core,
            baseline: std::sync::OnceLock::new(),
            services,
            metrics,
            disk,
            compiler: config.compiler,
            pool,
            compiled: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            node: Arc::new(config.node),
        })
    }

    /// Reads an artifact, checks its sha256 when one is expected, and compiles it (or loads
    /// it from the compile cache).
    pub fn load(
        &self,
        name: &str,
        artifact: Artifact<'_>,
        expected_sha256: Option<&str>,
    ) -> Result<Compiled, PluginError> {
        let bytes = artifact::read(name, artifact)?;
        let how = artifact::Compilation {
            engine: &self.engine,
            fingerprint: &self.fingerprint,
            disk: self.disk.as_ref(),
            memory: &self.compiled,
            compiler: &self.compiler,
            pool: self.pool,
            tier: Tier::Optimized,
            priority: Priority::Now,
        };
        artifact::compile(&how, name, &bytes, expected_sha256)
    }

    /// Checks the component implements the contract, then configures a first instance; the
    /// plugin's own words come back if it rejects its configuration.
    pub fn prepare(
        &self,
        compiled: &Compiled,
        spec: PluginSpec,
    ) -> Result<Arc<Plugin>, PluginError> {
        if spec.limits.deadline.is_zero() || spec.limits.memory_bytes == 0 {
            return Err(PluginError::Settings {
                plugin: spec.name,
                reason: "deadline and memory cap must be above zero".into(),
            });
        }
        // An empty name would intern to 0, the id of "no route", and so run the plugin on
        // calls that named no route at all.
        if spec.routes.iter().any(String::is_empty) {
            return Err(PluginError::Settings {
                plugin: spec.name,
                reason: "route names must not be empty".into(),
            });
        }
        let linked = self.contract(&spec.name, compiled)?;
        let key = self.key(&spec.name);
        let stats = self.metrics.for_plugin(&spec.name);
        let engine = compiled.code.engine();
        let digest = compiled.digest.clone();
        let services = self.services.clone();
        let plugin = match linked {
            Linked::Component(pre) => {
                Plugin::prepare(engine, pre, services, stats, key, digest, spec)?
            }
            Linked::ProxyWasm(pre, hooks) => Plugin::prepare_proxy_wasm(
                engine,
                pre,
                hooks,
                services,
                stats,
                key,
                digest,
                spec,
                self.node.clone(),
            )?,
        };
        let plugin = Arc::new(plugin);
        plugin.adopt();
        Ok(plugin)
    }

    /// Whether `bytes` are a component this runtime would run: it validates and compiles
    /// (as `load` does, keeping nothing in memory, and the compiled code in the disk cache if
    /// the runtime has one) and implements the contract. No configuration is involved, so a
    /// plugin may still refuse its settings when it is prepared.
    pub fn check(&self, name: &str, bytes: &[u8]) -> Result<String, PluginError> {
        self.check_at(name, bytes, Priority::Now)
    }

    /// `check` at `priority`: `Priority::Low` for a compile nobody waits on.
    pub fn check_at(
        &self,
        name: &str,
        bytes: &[u8],
        priority: Priority,
    ) -> Result<String, PluginError> {
        let scratch = artifact::MemoryCache::default();
        let how = artifact::Compilation {
            engine: &self.engine,
            fingerprint: &self.fingerprint,
            disk: self.disk.as_ref(),
            memory: &scratch,
            compiler: &self.compiler,
            pool: self.pool,
            tier: Tier::Optimized,
            priority,
        };
        let compiled = artifact::compile(&how, name, bytes, None)?;
        self.contract(name, &compiled)?;
        Ok(compiled.digest)
    }

    /// `check`, but compiled with the baseline compiler unless optimized code is at hand: the
    /// code is kept in memory (so `load` and `plugin` use it) and in the disk cache (so
    /// `compiled_code_for` serves it), until optimized code replaces it. Falls back to `check`
    /// where there is no baseline compiler.
    pub fn check_baseline(&self, name: &str, bytes: &[u8]) -> Result<String, PluginError> {
        let digest = sha256_hex(bytes);
        let Some(base) = self
            .baseline()
            .filter(|_| self.compiled_code(&digest).is_none())
        else {
            return self.check(name, bytes);
        };
        let how = artifact::Compilation {
            engine: &base.engine,
            fingerprint: &base.fingerprint,
            disk: self.disk.as_ref(),
            memory: &self.compiled,
            compiler: &self.compiler,
            pool: Self::baseline_pool(self.pool),
            tier: Tier::Baseline,
            priority: Priority::Now,
        };
        let compiled = artifact::compile(&how, name, bytes, None)?;
        self.contract(name, &compiled)?;
        Ok(compiled.digest)
    }

    /// The baseline tier's pool: instances on demand, as it runs only until optimized code
    /// arrives and must not reserve a second pool's address space.
    fn baseline_pool(pool: PoolSizes) -> PoolSizes {
        PoolSizes {
            instances: 0,
            ..pool
        }
    }

    /// The baseline tier, built on first use.
    fn baseline(&self) -> Option<&TierEngine> {
        self.baseline
            .get_or_init(
                || match TierEngine::new(Self::baseline_pool(self.pool), Tier::Baseline) {
                    Ok((tier, _)) => Some(tier),
                    Err(e) => {
                        tracing::warn!("no baseline compiler here ({e}); compiling optimized only");
                        None
                    }
                },
            )
            .as_ref()
    }

    /// The baseline tier's engine fingerprint (building that tier), if it can be built here.
    pub fn baseline_fingerprint(&self) -> Option<&str> {
        self.baseline().map(|b| b.fingerprint.as_str())
    }

    /// This runtime's engine fingerprint: compiled code is shared only between engines that
    /// have the same one.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The optimized compiled code of artifact `digest` in this runtime's disk cache, if any.
    pub fn compiled_code(&self, digest: &str) -> Option<Vec<u8>> {
        self.compiled_code_for(digest, &self.fingerprint)
    }

    /// The compiled code of artifact `digest` in this runtime's disk cache for an engine of
    /// `fingerprint` (this runtime's optimized tier, or its baseline tier once built), if any.
    pub fn compiled_code_for(&self, digest: &str, fingerprint: &str) -> Option<Vec<u8>> {
        let ours = fingerprint == self.fingerprint
            || self
                .baseline
                .get()
                .and_then(Option::as_ref)
                .is_some_and(|b| b.fingerprint == fingerprint);
        if !ours || !crate::snapshot::is_digest(digest) {
            return None;
        }
        self.disk
            .as_ref()?
            .get(&format!("{digest}-{fingerprint}.cwasm"))
    }

    /// Whether artifact `digest` has optimized code here already (in memory or on disk).
    pub fn has_compiled(&self, digest: &str) -> bool {
        let in_memory = self
            .compiled
            .lock()
            .get(digest)
            .is_some_and(|c| Engine::same(c.engine(), &self.engine));
        in_memory || self.compiled_code(digest).is_some()
    }

    /// The code of artifact `digest` held in memory (of either tier), if any: loaded without
    /// the component's bytes.
    pub fn held(&self, digest: &str) -> Option<Compiled> {
        let code = self.compiled.lock().get(digest)?.clone();
        Some(Compiled {
            code,
            digest: digest.to_string(),
            from_cache: true,
            took: std::time::Duration::ZERO,
        })
    }

    /// Whether artifact `digest` runs on baseline code here (until optimized code replaces it).
    pub fn runs_baseline(&self, digest: &str) -> bool {
        self.compiled
            .lock()
            .get(digest)
            .is_some_and(|c| !Engine::same(c.engine(), &self.engine))
    }

    /// Drops the compiled code of `digest` held in memory, so the next load compiles it (or
    /// finds optimized code on disk).
    pub fn forget_compiled(&self, digest: &str) {
        self.compiled.lock().remove(digest);
    }

    /// Takes code compiled by Weft elsewhere (the control plane) for artifact `digest` and
    /// an engine of `fingerprint` (this runtime's optimized or baseline tier): loaded now and
    /// kept in memory, so loading the artifact compiles nothing; optimized code is also kept
    /// on disk. Answers the tier it was.
    pub fn import_compiled(
        &self,
        digest: &str,
        fingerprint: &str,
        code: &[u8],
    ) -> Result<Tier, PluginError> {
        if !crate::snapshot::is_digest(digest) {
            return Err(PluginError::Engine(format!("{digest:?} is not a sha256")));
        }
        let (engine, tier) = if fingerprint == self.fingerprint {
            (&self.engine, Tier::Optimized)
        } else {
            match self.baseline().filter(|b| b.fingerprint == fingerprint) {
                Some(b) => (&b.engine, Tier::Baseline),
                None => {
                    return Err(PluginError::Engine(format!(
                        "no engine here has fingerprint {fingerprint}"
                    )));
                }
            }
        };
        let compiled = artifact::deserialize_trusted(engine, code)
            .map_err(|e| PluginError::Engine(format!("compiled code for {digest}: {e:#}")))?;
        if tier == Tier::Optimized
            && let Some(disk) = &self.disk
        {
            disk.put(&format!("{digest}-{fingerprint}.cwasm"), code);
        }
        self.compiled.lock().insert(digest.to_string(), compiled);
        self.metrics
            .imported
            .with_label_values(&[tier.as_str()])
            .inc();
        Ok(tier)
    }

    /// Links a compiled component against the contract, or a core module against the
    /// proxy-wasm ABI.
    fn contract(&self, name: &str, compiled: &Compiled) -> Result<Linked, PluginError> {
        let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
            plugin: name.to_string(),
            reason: format!("{e:#}"),
        };
        let engine = compiled.code.engine();
        let (linker, core) = if Engine::same(engine, &self.engine) {
            (&self.linker, &self.core)
        } else {
            match self.baseline.get().and_then(Option::as_ref) {
                Some(b) if Engine::same(engine, &b.engine) => (&b.linker, &b.core),
                _ => {
                    return Err(PluginError::Engine(format!(
                        "plugin {name}: compiled for an engine this runtime does not have"
                    )));
                }
            }
        };
        let component = match &compiled.code {
            artifact::Code::Component(c) => c,
            artifact::Code::Module(module) => {
                // The same for a proxy-wasm filter and its ABI.
                let pre =
                    proxy_wasm::link(core, module).map_err(|reason| PluginError::NotProxyWasm {
                        plugin: name.to_string(),
                        reason,
                    })?;
                return Ok(Linked::ProxyWasm(pre, proxy_wasm::hooks(module)));
            }
        };
        // Only the contract and the sandbox's WASI are linked: a component that imports
        // anything else (a filesystem, sockets) is refused here, naming the import.
        let pre = linker.instantiate_pre(component).map_err(wrong_world)?;
        bindings::PluginPre::new(pre)
            .map(Linked::Component)
            .map_err(wrong_world)
    }

    /// Loads and prepares in one step.
    pub fn plugin(
        &self,
        artifact: Artifact<'_>,
        expected_sha256: Option<&str>,
        spec: PluginSpec,
    ) -> Result<Arc<Plugin>, PluginError> {
        let compiled = self.load(&spec.name, artifact, expected_sha256)?;
        self.prepare(&compiled, spec)
    }

    /// Gives the runtime what makes the HTTP calls proxy-wasm filters dispatch from a root
    /// context (once; later calls change nothing).
    pub fn set_callout_sender(&self, sender: Arc<dyn CalloutSender>) {
        let _ = self.services.callouts.set(sender);
    }

    /// Interns a name (service, subset, identity) to the id hooks carry; 0 for an empty name.
    /// Ids are stable for the life of the runtime: intern once, when a route is built.
    pub fn intern(&self, name: &str) -> u32 {
        self.services.names.intern(name)
    }

    /// The id of a name interned before, or 0: never adds one.
    pub fn interned(&self, name: &str) -> u32 {
        self.services.names.lookup(name)
    }

    /// The name behind an interned id.
    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        self.services.names.name(id)
    }

    /// Interns a plugin name: its shared state and metrics are keyed by it, so a new build
    /// under the same name keeps them.
    fn key(&self, name: &str) -> u32 {
        let mut keys = self.keys.lock();
        let next = keys.len() as u32 + 1;
        *keys.entry(name.to_string()).or_insert(next)
    }
}
