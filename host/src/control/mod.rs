//! The control plane. Its core is pure and without I/O: [`istio`] reads the Istio resources
//! people apply (`VirtualService`, `DestinationRule`, `WasmPlugin`, `AuthorizationPolicy`,
//! `PeerAuthentication` YAML) and checks each on its own; [`compile`] checks them together and
//! turns them into the snapshot each sidecar applies. Around it: [`store`] keeps state durable, [`auth`] checks
//! credentials, [`server`] is `weft control` (the API and the watch stream) with [`serving`] its
//! own TLS certificate, [`client`] is the sidecar's side and [`channel`] the verified TLS
//! connection every client uses; [`stats`] turns the sidecars' Istio metrics into `weft stat`'s
//! rows.

pub mod auth;
pub mod channel;
pub mod client;
pub mod compile;
pub mod istio;
pub mod server;
pub mod serving;
pub mod stats;
pub mod store;
