//! Artifacts: bytes from a file or memory, checked against an expected sha256, compiled once,
//! and cached compiled on disk keyed by digest and engine so a restart does not recompile.

use super::cache::DiskCache;
use super::compiler::{self, ChildOutcome, Compiler, Priority};
use super::engine::{PoolSizes, Tier};
use super::error::PluginError;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};

/// Where a plugin's component comes from.
#[derive(Debug, Clone, Copy)]
pub enum Artifact<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A file.
    File(&'a Path),
}

/// Code compiled in this process, by digest: an artifact compiles once however many plugins
/// and chains use it.
pub(crate) type MemoryCache = parking_lot::Mutex<std::collections::HashMap<String, Code>>;

/// Compiled code of one of the two kinds of plugin Weft runs.
#[derive(Clone)]
pub(crate) enum Code {
    /// A `weft:filter` component.
    Component(Component),
    /// A core module: a proxy-wasm filter.
    Module(Module),
}

impl Code {
    /// The engine the code was compiled for.
    pub(crate) fn engine(&self) -> &Engine {
        match self {
            Code::Component(c) => c.engine(),
            Code::Module(m) => m.engine(),
        }
    }

    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Code::Component(c) => c.serialize(),
            Code::Module(m) => m.serialize(),
        }
    }
}

/// A compiled plugin (component or proxy-wasm module) and how it was obtained.
#[derive(Clone)]
pub struct Compiled {
    pub(crate) code: Code,
    /// Lower-case hex sha256 of the artifact's bytes.
    pub digest: String,
    /// Whether the compiled code came from a cache (this process's, or the disk's).
    pub from_cache: bool,
    /// Time to compile or to load from the cache.
    pub took: Duration,
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn normalize_digest(d: &str) -> String {
    d.trim().trim_start_matches("sha256:").to_ascii_lowercase()
}

/// Reads an artifact's bytes.
pub(crate) fn read(plugin: &str, artifact: Artifact<'_>) -> Result<Vec<u8>, PluginError> {
    match artifact {
        Artifact::Bytes(b) => Ok(b.to_vec()),
        Artifact::File(p) => std::fs::read(p).map_err(|source| PluginError::Read {
            plugin: plugin.to_string(),
            path: p.display().to_string(),
            source,
        }),
    }
}

/// How this runtime compiles and caches.
pub(crate) struct Compilation<'a> {
    pub engine: &'a Engine,
    pub fingerprint: &'a str,
    pub disk: Option<&'a DiskCache>,
    pub memory: &'a MemoryCache,
    pub compiler: &'a Compiler,
    pub pool: PoolSizes,
    pub tier: Tier,
    pub priority: Priority,
}

/// Checks the digest and compiles (or takes the component from `memory`, or loads it from
/// `cache_dir`).
pub(crate) fn compile(
    how: &Compilation<'_>,
    plugin: &str,
    bytes: &[u8],
    expected_sha256: Option<&str>,
) -> Result<Compiled, PluginError> {
    let Compilation {
        engine,
        fingerprint,
        disk,
        memory,
        compiler,
        pool,
        tier,
        priority,
    } = *how;
    let start = Instant::now();
    let digest = sha256_hex(bytes);
    if let Some(expected) = expected_sha256
        && normalize_digest(expected) != digest
    {
        return Err(PluginError::DigestMismatch {
            plugin: plugin.to_string(),
            expected: normalize_digest(expected),
            actual: digest,
        });
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(PluginError::NotAComponent {
            plugin: plugin.to_string(),
            reason: "the bytes do not start with the Wasm magic number".into(),
        });
    }
    if let Some(code) = memory.lock().get(&digest).cloned() {
        return Ok(Compiled {
            code,
            digest,
            from_cache: true,
            took: start.elapsed(),
        });
    }
    let cache_name = format!("{digest}-{fingerprint}.cwasm");
    if let Some(disk) = disk
        && let Some(code) = load_cached(engine, disk, &cache_name)
    {
        memory.lock().insert(digest.clone(), code.clone());
        return Ok(Compiled {
            code,
            digest,
            from_cache: true,
            took: start.elapsed(),
        });
    }
    let refused = |reason: String| PluginError::NotAComponent {
        plugin: plugin.to_string(),
        reason,
    };
    let from_child = match compiler {
        Compiler::InProcess => None,
        Compiler::Subprocess(exe) => {
            match compiler::compile_in_child(exe, pool, (tier, priority), bytes) {
                ChildOutcome::Compiled(code) => match deserialize_trusted(engine, &code) {
                    Ok(c) => Some((c, code)),
                    Err(e) => {
                        tracing::warn!(
                            plugin,
                            "code compiled by the child process is unusable ({e:#}); compiling in process"
                        );
                        None
                    }
                },
                ChildOutcome::Refused(reason) => return Err(refused(reason)),
                ChildOutcome::Unavailable(why) => {
                    tracing::warn!(plugin, "{why}; compiling in process");
                    None
                }
            }
        }
    };
    // The child's output is kept as it came: serializing the component again would copy
    // tens of megabytes for a scripting-language component.
    let (compiled, code) = match from_child {
        Some((c, code)) => (c, Some(code)),
        None if is_core_module(bytes) => (
            Code::Module(Module::new(engine, bytes).map_err(|e| refused(format!("{e:#}")))?),
            None,
        ),
        None => (
            Code::Component(Component::new(engine, bytes).map_err(|e| refused(format!("{e:#}")))?),
            None,
        ),
    };
    if let Some(disk) = disk {
        match code.map_or_else(|| compiled.serialize(), Ok) {
            Ok(code) => disk.put(&cache_name, &code),
            Err(e) => tracing::warn!(plugin, "cannot serialize compiled code: {e:#}"),
        }
    }
    memory.lock().insert(digest.clone(), compiled.clone());
    Ok(Compiled {
        code: compiled,
        digest,
        from_cache: false,
        took: start.elapsed(),
    })
}

/// A core module's preamble: magic, then version 1 and layer 0 (a component has layer 1).
pub(crate) fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes.starts_with(b"\0asm") && bytes[4..8] == [1, 0, 0, 0]
}

/// Compiled code from the disk cache, which hands out only entries this host wrote.
fn load_cached(engine: &Engine, disk: &DiskCache, name: &str) -> Option<Code> {
    let code = disk.get(name)?;
    match deserialize_trusted(engine, &code) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(
                entry = name,
                "compile cache entry unusable ({e:#}); recompiling"
            );
            None
        }
    }
}

/// Loads compiled code that Weft itself produced: a cache file this runtime wrote, or the
/// output of its own `weft plugin precompile` child.
pub(crate) fn deserialize_trusted(engine: &Engine, code: &[u8]) -> wasmtime::Result<Code> {
    // SAFETY: `deserialize` requires bytes produced by wasmtime's serialization for a
    // compatible engine. Callers pass only (a) a cache entry this host wrote, whose HMAC under
    // the host's private key checks out, in a directory only the proxy's user can write, named
    // with the engine fingerprint, (b) what our own executable's `plugin precompile` wrote to a
    // pipe only we read, or (c) code the control plane compiled with the same executable for
    // this engine fingerprint, fetched over the control channel (TLS verified against the
    // mesh's bundle, authenticated by the sidecar's token) from the control plane the sidecar
    // already takes its plugins and routes from. wasmtime also checks engine compatibility
    // itself and errors on mismatch.
    #[allow(unsafe_code)]
    unsafe {
        match Engine::detect_precompiled(code) {
            Some(Precompiled::Module) => Module::deserialize(engine, code).map(Code::Module),
            _ => Component::deserialize(engine, code).map(Code::Component),
        }
    }
}
