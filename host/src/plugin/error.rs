//! Errors of the plugin runtime.

use std::fmt;

/// Why a plugin could not be loaded or prepared. Each names the plugin and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The artifact could not be read.
    #[error("plugin {plugin:?}: cannot read {path}: {source}")]
    Read {
        /// Plugin name.
        plugin: String,
        /// Path tried.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The artifact's sha256 is not the one expected.
    #[error("plugin {plugin:?}: sha256 mismatch: expected {expected}, artifact has {actual}")]
    DigestMismatch {
        /// Plugin name.
        plugin: String,
        /// Digest asked for.
        expected: String,
        /// Digest of the bytes.
        actual: String,
    },
    /// The bytes are not a Wasm component.
    #[error("plugin {plugin:?}: not a WebAssembly component: {reason}")]
    NotAComponent {
        /// Plugin name.
        plugin: String,
        /// Cause.
        reason: String,
    },
    /// A core module that cannot run as a proxy-wasm filter here.
    #[error("plugin {plugin:?}: cannot run as a proxy-wasm filter: {reason}")]
    NotProxyWasm {
        /// Plugin name.
        plugin: String,
        /// Cause, naming the export or import at fault.
        reason: String,
    },
    /// The component does not implement `weft:filter/plugin`.
    #[error("plugin {plugin:?}: does not implement the weft:filter@0.1.0 plugin world: {reason}")]
    WrongWorld {
        /// Plugin name.
        plugin: String,
        /// Cause.
        reason: String,
    },
    /// The plugin's `configure` rejected its configuration.
    #[error("plugin {plugin:?}: configuration rejected: {reason}")]
    ConfigRejected {
        /// Plugin name.
        plugin: String,
        /// The plugin's own words.
        reason: String,
    },
    /// The plugin failed while being instantiated or configured.
    #[error("plugin {plugin:?}: failed to start: {failure}")]
    Start {
        /// Plugin name.
        plugin: String,
        /// What happened.
        failure: Failure,
    },
    /// The settings given for the plugin are invalid.
    #[error("plugin {plugin:?}: invalid settings: {reason}")]
    Settings {
        /// Plugin name.
        plugin: String,
        /// Cause.
        reason: String,
    },
    /// The engine could not be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// The compile cache directory is unsafe or unusable.
    #[error(transparent)]
    Cache(#[from] super::cache::CacheError),
}

/// How a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It ran past its deadline and was interrupted.
    Deadline,
    /// It tried to grow its memory past its cap.
    Memory,
    /// It trapped (a panic, `unreachable`, an out-of-bounds access...).
    Trap(String),
    /// It is backing off after crashing repeatedly; not called.
    BackingOff,
    /// A new instance could not be created.
    Instantiate(String),
    /// It handed the host more than a host bound allows (headers), which the host refused.
    Limit(String),
    /// Every one of its instances (this many, its bound) was busy with another call.
    Busy(u32),
}

impl Failure {
    /// A short label for metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            Failure::Deadline => "deadline",
            Failure::Memory => "memory",
            Failure::Trap(_) => "trap",
            Failure::BackingOff => "backing_off",
            Failure::Instantiate(_) => "instantiate",
            Failure::Limit(_) => "limit",
            Failure::Busy(_) => "instances",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Deadline => f.write_str("ran past its deadline"),
            Failure::Memory => f.write_str("exceeded its memory cap"),
            Failure::Trap(msg) => write!(f, "trapped: {msg}"),
            Failure::BackingOff => f.write_str("backing off after repeated crashes"),
            Failure::Instantiate(msg) => write!(f, "could not be instantiated: {msg}"),
            Failure::Limit(msg) => write!(f, "passed a host limit: {msg}"),
            Failure::Busy(n) => write!(f, "all {n} of its instances were busy"),
        }
    }
}
