//! What travels between the control plane and its clients: the answers of the API and the
//! messages of the watch stream, shared by the server and by the sidecar's and CLI's clients.

use serde::{Deserialize, Serialize};

/// The answer to `POST /v1/certificates`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAnswer {
    /// The certificate chain, leaf first (PEM).
    pub chain: String,
    /// The trust bundle: every root a peer's certificate may chain to (PEM).
    pub bundle: String,
    /// End of the certificate's validity (ms since the Unix epoch).
    pub not_after: u64,
    /// The identity the certificate names.
    pub spiffe_id: String,
    /// The trust domain, so a sidecar learns it from the control plane.
    pub trust_domain: String,
}

/// The answer to `GET /v1/identity`: who the caller's token makes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityAnswer {
    /// The SPIFFE ID the control plane signs for this token, and no other.
    pub spiffe_id: String,
    /// The trust domain.
    pub trust_domain: String,
}

/// What the control plane knows of one sidecar.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarStatus {
    /// Its id.
    pub id: String,
    /// Its service's key (`payments`, or `payments.shop` in namespace `shop`).
    pub service: String,
    /// Its inbound address.
    pub address: String,
    /// Its labels (`app` included), as it registered them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its admin endpoint (`/metrics`), when it told us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// The snapshot version last sent.
    pub sent: String,
    /// The version it last ACKed (the one it runs).
    pub acked: String,
    /// The reason of its last NACK, if the last answer was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<String>,
    /// The version that NACK refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nacked: String,
    /// Whether its stream is open.
    pub connected: bool,
    /// When it was last heard from (ms since the Unix epoch).
    pub last_seen_ms: u64,
}

/// A sidecar a change was sent to: `weft apply --wait` waits for its answer to `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pushed {
    /// The sidecar's id.
    pub id: String,
    /// Its service's key.
    pub service: String,
    /// The snapshot version it was sent.
    pub version: String,
}

/// One message on the watch stream (a JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum StreamMessage {
    /// A snapshot to apply.
    Snapshot {
        /// Its version.
        version: String,
        /// The control plane's revision it was compiled from.
        revision: u64,
        /// The snapshot (boxed: a heartbeat need not be as large).
        snapshot: Box<crate::snapshot::Snapshot>,
    },
    /// Nothing changed; the stream is alive.
    Heartbeat,
}

/// A sidecar's answer to a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    /// The sidecar's id.
    pub id: String,
    /// The version answered.
    pub version: String,
    /// Applied, or not.
    pub ok: bool,
    /// Why not.
    #[serde(default)]
    pub reason: Option<String>,
}
