//! The operating system's trust store, for TLS to servers outside the mesh (a sidecar
//! originating TLS, the control plane fetching an `https://` or OCI artifact): the PEM bundle
//! `SSL_CERT_FILE` names, else Debian's.

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Debian's bundle (the `ca-certificates` package).
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where the system's roots are read from.
pub fn bundle_path() -> String {
    std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| SYSTEM_BUNDLE.to_string())
}

/// The roots in PEM `bytes`; an error names what is wrong with them.
pub fn roots_from_pem(bytes: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bytes) {
        let c = c.map_err(|e| format!("not PEM certificates: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("a certificate rustls refuses: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".to_string());
    }
    Ok(roots)
}

/// The system's roots.
pub fn system_roots() -> Result<RootCertStore, String> {
    let path = bundle_path();
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("the system's trust store {path} cannot be read: {e}"))?;
    roots_from_pem(&bytes).map_err(|e| format!("the system's trust store {path}: {e}"))
}
