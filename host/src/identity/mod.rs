//! Mesh identity: SPIFFE IDs, the mesh CA, the workload's key and rotating
//! certificate, and the rustls configs for mTLS between sidecars.
//!
//! `weft control` is the CA (`control/server.rs`); sidecars obtain and renew certificates
//! through `control/client.rs` and the proxy uses them for mTLS.
//!
//! - [`spiffe`]: `SpiffeId` parse/format, reading the SPIFFE ID out of a certificate.
//! - [`ca`]: `Ca`: root generation, persistence and rotation; signing CSRs for a proven identity.
//! - [`workload`]: the sidecar's key, CSR and current certificate (`ArcSwap`); renewal time.
//! - [`tls`]: server and client configs (TLS 1.3, ALPN h2, SPIFFE checks) for sidecars and for
//!   the control plane's API, `TrustBundle`.

pub mod ca;
pub mod spiffe;
pub mod system_roots;
pub mod tls;
pub mod workload;

#[cfg(test)]
mod tests;

pub use ca::{Ca, CaError, CaRecord, Clock, DEFAULT_LIFETIME, IssuedCert, system_clock};
pub use spiffe::{
    DEFAULT_TRUST_DOMAIN, SanError, SpiffeError, SpiffeId, trust_domain_of_root, valid_trust_domain,
};
pub use tls::{
    CONTROL_NAMESPACE, CONTROL_SERVICE, PeerAuthMode, TlsError, TrustBundle, caller_identity,
    client_config, control_client_config, control_server_config, looks_like_tls, peer_identity,
    server_config, server_name,
};
pub use workload::{PendingKey, Workload, WorkloadError, renew_at};
