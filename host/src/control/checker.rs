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
    runtime: OnceLock<Result<PluginRuntime, String>>,
    one_at_a_time: Mutex<()>,
}

impl PluginChecker {
    /// A checker that compiles with `compiler`.
    pub(super) fn new(compiler: Compiler) -> Self {
        PluginChecker {
            compiler,
            runtime: OnceLock::new(),
            one_at_a_time: Mutex::new(()),
        }
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
