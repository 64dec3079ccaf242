//! TLS a sidecar originates to a service outside the mesh: a DestinationRule's `tls` with mode
//! `SIMPLE` or `MUTUAL`, as the snapshot carries it. Files are named, not inlined: they are the
//! sidecar's own (as Istio's are the proxy's), read when the snapshot is applied.

use serde::{Deserialize, Serialize};

/// TLS to the endpoints of a service outside the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OriginTls {
    /// The client certificate chain's PEM file (`MUTUAL`); none: no client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// The client certificate's private key's PEM file (`MUTUAL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The PEM file of the roots the server's certificate must chain to; none: the
    /// operating system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// The server name sent (SNI); none: the host the call names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Names one of which the server's certificate must carry; none: the server name sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Accept any server certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

impl OriginTls {
    /// Every problem with it, each at `at.<field>`.
    pub fn check(&self, at: &str, errors: &mut Vec<String>) {
        if self.client_certificate.is_some() != self.private_key.is_some() {
            errors.push(format!(
                "{at}: a client certificate needs its private key and a key its certificate"
            ));
        }
        let name_ok = |n: &str| rustls::pki_types::ServerName::try_from(n).is_ok();
        if let Some(sni) = &self.sni
            && !name_ok(sni)
        {
            errors.push(format!("{at}.sni: {sni:?} is not a DNS name or IP address"));
        }
        for (i, n) in self.subject_alt_names.iter().enumerate() {
            if !name_ok(n) {
                errors.push(format!(
                    "{at}.subjectAltNames[{i}]: {n:?} is not a DNS name or IP address"
                ));
            }
        }
        for (field, path) in [
            ("clientCertificate", &self.client_certificate),
            ("privateKey", &self.private_key),
            ("caCertificates", &self.ca_certificates),
        ] {
            if path.as_deref().is_some_and(str::is_empty) {
                errors.push(format!("{at}.{field}: an empty path"));
            }
        }
    }
}
