//! The control plane. Its core is pure and without I/O: [`yaml`] reads YAML text within
//! bounds, [`istio`] reads the Istio resources people apply (`VirtualService`,
//! `DestinationRule`, `WasmPlugin`, `AuthorizationPolicy`, `PeerAuthentication`) and checks
//! each on its own; [`compile`] checks them together and turns them into the snapshot each
//! sidecar applies. Around it: [`store`] keeps state durable, [`auth`] checks credentials,
//! [`server`] is `weft control` — its API's plumbing in `api`, changes in `changes`, sidecars
//! and their watch streams in `registry`, the CA's side in `issuer` — with [`serving`] its own
//! TLS certificate; [`wire`] holds what travels between it and its clients, [`client`] is the
//! sidecar's side and [`channel`] the verified TLS connection every client uses; [`stats`]
//! turns the sidecars' Istio metrics into `weft stat`'s rows.

mod api;
mod artifacts;
pub mod auth;
mod changes;
pub mod channel;
mod checker;
pub mod client;
pub mod compile;
mod configs;
#[cfg(test)]
mod conformance;
pub mod fetch;
mod issuer;
pub mod istio;
pub mod mesh_config;
pub mod pull_secrets;
mod registry;
mod replicas;
pub mod server;
pub mod serving;
pub mod signing;
pub mod stats;
pub mod store;
mod tier_up;
pub mod wire;
pub mod yaml;
