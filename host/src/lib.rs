//! Weft's host: runs beside every service instance, does the I/O and the mutual TLS, and runs
//! traffic policy as sandboxed Wasm plugins.
//!
//! Modules are the architecture's boxes (see `docs/architecture.md`):
//! - [`bootstrap`]: the sidecar's bootstrap file, read and checked whole.
//! - [`conn`]: downstream connections served with bounds (protocol detection, timeouts, drain).
//! - [`control`]: the control plane's core: Istio resources compiled into per-sidecar snapshots.
//! - [`plugin`]: the sandboxed plugin runtime (wasmtime component model).
//! - [`endpoints`]: upstream endpoints, their labels and ejection state.
//! - [`files`]: files written whole and atomically, private from the start.
//! - [`identity`]: mesh identity: SPIFFE IDs, the CA, workload certificates, mTLS configs.
//! - [`proxy`]: the sidecar data plane (listeners, routing, load balancing, retries).
//! - [`snapshot`]: the routing snapshot a sidecar applies.
//! - [`random`]: fast per-thread random numbers shared by the proxy and the plugin host.

#![deny(unsafe_code)]

pub mod access_log;
pub mod bootstrap;
pub mod capture;
pub mod conn;
pub mod control;
pub mod dns;
pub mod endpoints;
pub mod files;
pub mod identity;
pub mod names;
pub mod plugin;
pub mod pod;
pub mod proxy;
pub mod random;
pub mod snapshot;
pub mod spans;
