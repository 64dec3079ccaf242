//! The control plane's judge of plugins: it loads components and configures them exactly as
//! a sidecar would, so a broken artifact or a configuration a plugin refuses is refused when it
//! reaches the control plane, not by every sidecar it is sent to.

use crate::plugin::{
    Artifact, Compiler, NoEndpoints, PluginError, PluginRuntime, PluginSpec, PoolSizes,
    RuntimeConfig,
};
use prometheus::Registry;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// How thoroughly an artifact is compiled to check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// With the optimizing compiler: the code sidecars run (a push, which nobody waits on).
    Full,
    /// With the baseline compiler, several times quicker (a plugin fetched during an apply);
    /// optimized code is compiled afterwards.
    Quick,
}

/// Judges components and plugin configurations with a plugin runtime made on first use (a
/// control plane that is never asked never builds an engine), one judgement at a time so
/// concurrent requests cannot multiply the compiler's memory.
pub(crate) struct PluginChecker {
    compiler: Compiler,
    cache_dir: Option<std::path::PathBuf>,
    runtime: OnceLock<Result<PluginRuntime, String>>,
    one_at_a_time: Mutex<()>,
    /// Optimized compiles behind a baseline check run one at a time, apart from checks, so
    /// an apply never waits for one.
    behind: Mutex<()>,
    /// The code last served (artifact, fingerprint), for as long as a response still holds
    /// it: the sidecars that ask for a new plugin's code at once share one read and one check
    /// of tens of megabytes from the disk cache.
    serving: Mutex<Option<Served>>,
}

/// Code being served: its artifact, its engine fingerprint, and the code while held.
type Served = (String, String, Weak<Vec<u8>>);

/// Compiled code as a response body shares it.
pub(super) struct Code(pub Arc<Vec<u8>>);

impl AsRef<[u8]> for Code {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
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
            behind: Mutex::new(()),
            serving: Mutex::new(None),
        }
    }

    /// The code compiled for artifact `digest` by an engine of `fingerprint` (optimized or
    /// baseline), if this checker compiled it with such an engine.
    pub(super) fn compiled(&self, digest: &str, fingerprint: &str) -> Option<Code> {
        // Held while reading, so requests for the same code wait for this read, not another.
        let mut serving = self
            .serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((d, f, code)) = &*serving
            && d == digest
            && f == fingerprint
            && let Some(code) = code.upgrade()
        {
            return Some(Code(code));
        }
        let code = Arc::new(
            self.runtime()
                .ok()?
                .compiled_code_for(digest, fingerprint)?,
        );
        *serving = Some((digest.into(), fingerprint.into(), Arc::downgrade(&code)));
        Some(Code(code))
    }

    /// Whether optimized code for artifact `digest` is kept here.
    pub(super) fn has_optimized(&self, digest: &str) -> bool {
        self.runtime()
            .is_ok_and(|r| r.compiled_code(digest).is_some())
    }

    /// `Ok` if a sidecar could load `bytes`; else the reason, in the runtime's words. With
    /// `Check::Quick` it compiles with the baseline compiler, and [`Self::optimize`] is owed.
    pub(super) fn check(&self, bytes: &[u8], how: Check) -> Result<(), String> {
        let runtime = self.runtime()?;
        let _turn = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let started = std::time::Instant::now();
        let checked = match how {
            Check::Full => runtime.check("artifact", bytes),
            Check::Quick => runtime.check_baseline("artifact", bytes),
        };
        tracing::debug!(?how, took = ?started.elapsed(), ok = checked.is_ok(), "artifact checked");
        checked.map(drop).map_err(|e| e.to_string())
    }

    /// Compiles optimized code for `bytes` (checked before) into the disk cache, where
    /// sidecars running its baseline code ask for it.
    pub(super) fn optimize(&self, bytes: &[u8]) {
        let Ok(runtime) = self.runtime() else { return };
        let _turn = self
            .behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let started = std::time::Instant::now();
        match runtime.check_at("artifact", bytes, crate::plugin::Priority::Low) {
            Ok(digest) => tracing::info!(
                %digest,
                took = ?started.elapsed(),
                "optimized code compiled; sidecars running its baseline code move to it"
            ),
            Err(e) => tracing::warn!(
                "compiling optimized code failed, sidecars compile it themselves: {e}"
            ),
        }
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
    pub(super) fn configure(
        &self,
        name: &str,
        bytes: &[u8],
        config: &str,
        root_id: &str,
    ) -> Result<(), String> {
        let runtime = self.runtime()?;
        let _turn = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut spec = PluginSpec::new(name, config);
        spec.root_id = root_id.to_string();
        match runtime.plugin(Artifact::Bytes(bytes), None, spec) {
            Ok(_) => Ok(()),
            Err(PluginError::ConfigRejected { reason, .. }) => Err(reason),
            Err(e) => Err(e.to_string()),
        }
    }
}
