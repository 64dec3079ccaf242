//! The control plane's judge of plugins: it loads components and configures them exactly as
//! a sidecar would, so a broken artifact or a configuration a plugin refuses is refused when it
//! reaches the control plane, not by every sidecar it is sent to.

use crate::plugin::{
    Artifact, Compiler, NoEndpoints, PluginError, PluginRuntime, PluginSpec, PoolSizes,
    RuntimeConfig,
};
use prometheus::Registry;
use std::sync::{Arc, Mutex, OnceLock};

/// Judges components and plugin configurations with a plugin runtime made on first use (a
/// control plane that is never asked never builds an engine), one judgement at a time so
/// concurrent requests cannot multiply the compiler's memory.
pub(crate) struct PluginChecker {
    compiler: Compiler,
    cache_dir: Option<std::path::PathBuf>,
    runtime: OnceLock<Result<PluginRuntime, String>>,
    one_at_a_time: Mutex<()>,
}

impl PluginChecker {
    /// A checker that compiles with `compiler`, keeping what it compiled in `cache_dir` (the
    /// code sidecars with the same engine are sent, so they need not compile it again).
    pub(super) fn new(compiler: Compiler, cache_dir: Option<std::path::PathBuf>) -> Self {
        PluginChecker {
            compiler,
            cache_dir,
            runtime: OnceLock::new(),
            one_at_a_time: Mutex::new(()),
        }
    }

    /// The code compiled for artifact `digest` by an engine of `fingerprint`, if this checker
    /// compiled it with such an engine.
    pub(super) fn compiled(&self, digest: &str, fingerprint: &str) -> Option<Vec<u8>> {
        let runtime = self.runtime().ok()?;
        if runtime.fingerprint() != fingerprint {
            return None;
        }
        runtime.compiled_code(digest)
    }

    /// `Ok` if a sidecar could load `bytes`; else the reason, in the runtime's words.
    pub(super) fn check(&self, bytes: &[u8]) -> Result<(), String> {
        let runtime = self.runtime()?;
        let _turn = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        runtime
            .check("artifact", bytes)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The runtime, made on first use.
    fn runtime(&self) -> Result<&PluginRuntime, String> {
        let runtime = self.runtime.get_or_init(|| {
            let config = RuntimeConfig {
                // No instance is ever made here: no pool, so no address space reserved.
                pool: PoolSizes {
                    instances: 0,
                    ..PoolSizes::default()
                },
                compiler: self.compiler.clone(),
                cache_dir: self.cache_dir.clone(),
                ..RuntimeConfig::default()
            };
            PluginRuntime::new(config, &Registry::new(), Arc::new(NoEndpoints))
                .map_err(|e| e.to_string())
        });
        runtime
            .as_ref()
            .map_err(|e| format!("no plugin runtime to check it with: {e}"))
    }

    /// `Ok` if `bytes`, configured with `config` (JSON), would start in a sidecar; else the
    /// plugin's own words (or the runtime's, if it never got to `configure`).
    pub(super) fn configure(&self, name: &str, bytes: &[u8], config: &str) -> Result<(), String> {
        let runtime = self.runtime()?;
        let _turn = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match runtime.plugin(Artifact::Bytes(bytes), None, PluginSpec::new(name, config)) {
            Ok(_) => Ok(()),
            Err(PluginError::ConfigRejected { reason, .. }) => Err(reason),
            Err(e) => Err(e.to_string()),
        }
    }
}
