//! A DestinationRule's `tls` (Istio's `ClientTLSSettings`): what TLS a sidecar sends. Mesh
//! services are reached over the mesh's own mTLS, which `ISTIO_MUTUAL` names, or in plaintext
//! (`DISABLE`), which their sidecars take only where PeerAuthentication allows; a host outside
//! the mesh (a ServiceEntry's) gets plain HTTP (`DISABLE`, the default) or TLS the sidecar
//! originates, `SIMPLE` or `MUTUAL` with a client certificate, from files on the sidecar's
//! machine as Istio reads them from the proxy's.

use super::*;

/// Istio's `ClientTLSSettings`, the parts Weft implements.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTls {
    /// `DISABLE` (default), `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The client certificate's PEM file (`MUTUAL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Its private key's PEM file (`MUTUAL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The roots the server's certificate must chain to; absent: the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Names the server's certificate must carry one of; absent: the server name sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// The server name sent; absent: the call's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Accept any server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// Fields of `ClientTLSSettings` Weft refuses, under `at`.
pub(super) const CLIENT_TLS_UNSUPPORTED: &[&str] = &["credentialName", "caCrl"];

impl ClientTls {
    /// Whether calls go in plaintext (`DISABLE`, given).
    pub fn disabled(&self) -> bool {
        self.mode.as_deref() == Some("DISABLE")
    }

    /// The snapshot's `tls` for a service outside the mesh: TLS to originate, if the mode
    /// originates any.
    pub fn origination(&self) -> Option<crate::snapshot::OriginTls> {
        if !matches!(self.mode.as_deref(), Some("SIMPLE" | "MUTUAL")) {
            return None;
        }
        Some(crate::snapshot::OriginTls {
            client_certificate: self.client_certificate.clone(),
            private_key: self.private_key.clone(),
            ca_certificates: self.ca_certificates.clone(),
            sni: self.sni.clone(),
            subject_alt_names: self.subject_alt_names.clone(),
            insecure_skip_verify: self.insecure_skip_verify.unwrap_or(false),
        })
    }
}

/// Checks `tls` at `at` of a DestinationRule for `host` (read in `namespace`).
pub(super) fn check_client_tls(
    tls: &ClientTls,
    host: &str,
    namespace: &str,
    at: &str,
    problems: &mut Problems,
) {
    let outside = crate::names::host_ref(host, namespace).is_ok_and(
        |r| matches!(r, crate::names::HostRef::Service(k) if crate::names::is_external_key(&k)),
    );
    let mode = tls.mode.as_deref().unwrap_or("DISABLE");
    let files = [
        ("clientCertificate", &tls.client_certificate),
        ("privateKey", &tls.private_key),
        ("caCertificates", &tls.ca_certificates),
    ];
    let named = |problems: &mut Problems, why: &str| {
        for (field, value) in files {
            if value.is_some() {
                problems.at(format!("{at}.{field}"), why);
            }
        }
        if tls.sni.is_some() {
            problems.at(format!("{at}.sni"), why);
        }
        if !tls.subject_alt_names.is_empty() {
            problems.at(format!("{at}.subjectAltNames"), why);
        }
        if tls.insecure_skip_verify.is_some() {
            problems.at(format!("{at}.insecureSkipVerify"), why);
        }
    };
    match (mode, outside) {
        ("ISTIO_MUTUAL", false) => named(
            problems,
            "not with ISTIO_MUTUAL: the mesh's mTLS takes its certificates and names from the mesh",
        ),
        ("ISTIO_MUTUAL", true) => problems.at(
            format!("{at}.mode"),
            format!("ISTIO_MUTUAL is the mesh's mTLS, which {host:?} (outside the mesh) does not speak; use SIMPLE or MUTUAL"),
        ),
        ("DISABLE", _) => named(problems, "not with mode DISABLE (plaintext)"),
        ("SIMPLE" | "MUTUAL", false) => problems.at(
            format!("{at}.mode"),
            format!("{mode} for a mesh service is not supported by Weft yet: Weft originates TLS only to hosts outside the mesh (a ServiceEntry's); mesh services are reached over the mesh's mTLS (ISTIO_MUTUAL)"),
        ),
        ("SIMPLE", true) => {
            for (field, value) in &files[..2] {
                if value.is_some() {
                    problems.at(format!("{at}.{field}"), "only with mode MUTUAL (SIMPLE sends no client certificate)");
                }
            }
        }
        ("MUTUAL", true) => {
            for (field, value) in &files[..2] {
                if value.is_none() {
                    problems.at(format!("{at}.{field}"), "required with mode MUTUAL");
                }
            }
        }
        (other, _) => problems.at(
            format!("{at}.mode"),
            format!("unknown mode {other:?} (known: DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL)"),
        ),
    }
    if matches!(mode, "SIMPLE" | "MUTUAL") {
        let mut errors = Vec::new();
        if let Some(o) = tls.origination() {
            o.check(at, &mut errors);
        }
        for e in errors {
            problems.0.push(e);
        }
        if tls.insecure_skip_verify == Some(true)
            && (tls.ca_certificates.is_some() || !tls.subject_alt_names.is_empty())
        {
            problems.at(
                format!("{at}.insecureSkipVerify"),
                "true skips the checks caCertificates and subjectAltNames ask for; give one or the other",
            );
        }
    }
}
