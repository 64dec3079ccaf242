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
mod state;
mod types;
mod wasi;

pub use artifact::{Artifact, Compiled, sha256_hex};
pub use cache::CacheError;
pub use chain::{Chain, ChainSlot};
pub use compiler::{Compiler, REFUSED as PRECOMPILE_REFUSED, precompile};
pub use engine::PoolSizes;
pub use error::{Failure, PluginError};
pub use health::{EndpointHealth, EndpointState, NoEndpoints};
pub use instance::{Limits, Plugin, PluginSpec};
pub use metrics::RuntimeMetrics;
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
}

/// The plugin runtime of a process.
pub struct PluginRuntime {
    engine: Engine,
    fingerprint: String,
    linker: Linker<PluginCtx>,
    services: Arc<Services>,
    metrics: RuntimeMetrics,
    disk: Option<cache::DiskCache>,
    compiler: Compiler,
    pool: PoolSizes,
    compiled: artifact::MemoryCache,
    keys: Mutex<HashMap<String, u32>>,
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
        let (engine, pool) = engine::build(config.pool)?;
        let mut linker = Linker::new(&engine);
        let link = |e: wasmtime::Error| PluginError::Engine(format!("linking the host: {e:#}"));
        bindings::Plugin::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |c| c)
            .map_err(link)?;
        wasi::add_to_linker(&mut linker).map_err(link)?;
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
        });
        Ok(PluginRuntime {
            fingerprint: engine::fingerprint(&engine),
            engine,
            linker,
            services,
            metrics,
            disk,
            compiler: config.compiler,
            pool,
            compiled: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
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
        let pre = self.contract(&spec.name, compiled)?;
        let key = self.key(&spec.name);
        let stats = self.metrics.for_plugin(&spec.name);
        let plugin = Plugin::prepare(
            &self.engine,
            pre,
            self.services.clone(),
            stats,
            key,
            compiled.digest.clone(),
            spec,
        )?;
        Ok(Arc::new(plugin))
    }

    /// Whether `bytes` are a component this runtime would run: it validates and compiles
    /// (as `load` does, keeping nothing in memory, and the compiled code in the disk cache if
    /// the runtime has one) and implements the contract. No configuration is involved, so a
    /// plugin may still refuse its settings when it is prepared.
    pub fn check(&self, name: &str, bytes: &[u8]) -> Result<String, PluginError> {
        let scratch = artifact::MemoryCache::default();
        let how = artifact::Compilation {
            engine: &self.engine,
            fingerprint: &self.fingerprint,
            disk: self.disk.as_ref(),
            memory: &scratch,
            compiler: &self.compiler,
            pool: self.pool,
        };
        let compiled = artifact::compile(&how, name, bytes, None)?;
        self.contract(name, &compiled)?;
        Ok(compiled.digest)
    }

    /// This runtime's engine fingerprint: compiled code is shared only between engines that
    /// have the same one.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The compiled code of artifact `digest` in this runtime's disk cache, if any.
    pub fn compiled_code(&self, digest: &str) -> Option<Vec<u8>> {
        if !crate::snapshot::is_digest(digest) {
            return None;
        }
        self.disk
            .as_ref()?
            .get(&format!("{digest}-{}.cwasm", self.fingerprint))
    }

    /// Whether artifact `digest` is compiled here already (in memory or on disk).
    pub fn has_compiled(&self, digest: &str) -> bool {
        self.compiled.lock().contains_key(digest) || self.compiled_code(digest).is_some()
    }

    /// Takes code compiled for this engine by Weft elsewhere (the control plane) for artifact
    /// `digest`: loaded now and kept in the caches, so loading the artifact compiles nothing.
    pub fn import_compiled(&self, digest: &str, code: &[u8]) -> Result<(), PluginError> {
        if !crate::snapshot::is_digest(digest) {
            return Err(PluginError::Engine(format!("{digest:?} is not a sha256")));
        }
        let component = artifact::deserialize_trusted(&self.engine, code)
            .map_err(|e| PluginError::Engine(format!("compiled code for {digest}: {e:#}")))?;
        if let Some(disk) = &self.disk {
            disk.put(&format!("{digest}-{}.cwasm", self.fingerprint), code);
        }
        self.compiled.lock().insert(digest.to_string(), component);
        self.metrics.imported.inc();
        Ok(())
    }

    /// Links a compiled component against the contract.
    fn contract(
        &self,
        name: &str,
        compiled: &Compiled,
    ) -> Result<bindings::PluginPre<PluginCtx>, PluginError> {
        let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
            plugin: name.to_string(),
            reason: format!("{e:#}"),
        };
        // Only the contract and the sandbox's WASI are linked: a component that imports
        // anything else (a filesystem, sockets) is refused here, naming the import.
        let pre = self
            .linker
            .instantiate_pre(&compiled.component)
            .map_err(wrong_world)?;
        bindings::PluginPre::new(pre).map_err(wrong_world)
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
