//! The control plane's own TLS identity, `spiffe://<td>/ns/weft-system/sa/weft-control`, issued
//! by its CA, and the public trust bundle file clients start from.
//!
//! Root rotation: the certificate is reissued when a staged root is activated, by which time
//! clients have had a renewal period to pick the staged root up (sidecars do at each renewal).

use crate::identity::{
    CONTROL_NAMESPACE, CONTROL_SERVICE, Ca, PendingKey, SpiffeId, TlsError, Workload,
    control_server_config,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;

/// The shortest life of the serving certificate: renewing it every few seconds, as workload
/// certificates may be in tests, would only churn keys.
const MIN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The file in the data directory holding the trust bundle (public roots, PEM): what sidecars
/// (`controlPlane.caFile`) and the CLI (`--ca-file`) trust the control plane with.
pub const BUNDLE_FILE: &str = "bundle.pem";

/// Why the serving identity could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// Signing or installing the certificate failed.
    #[error("the control plane's own certificate: {0}")]
    Issue(String),
    /// The TLS config was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Writing the bundle file failed.
    #[error(transparent)]
    Write(#[from] crate::files::WriteError),
}

/// The control plane's certificate, swapped in place on renewal.
#[derive(Debug)]
pub struct ServingIdentity {
    workload: Arc<Workload>,
    lifetime: Duration,
}

impl ServingIdentity {
    /// Issues the first certificate for the control identity in `trust_domain`.
    pub fn issue(
        ca: &Ca,
        trust_domain: &str,
        lifetime: Duration,
    ) -> Result<ServingIdentity, ServingError> {
        let id = SpiffeId::new(trust_domain, CONTROL_NAMESPACE, CONTROL_SERVICE)
            .map_err(|e| ServingError::Issue(e.to_string()))?;
        let serving = ServingIdentity {
            workload: Arc::new(Workload::new(id)),
            lifetime: lifetime.max(MIN_LIFETIME),
        };
        serving.reissue(ca)?;
        Ok(serving)
    }

    /// A new key and certificate from the CA's current signer.
    pub fn reissue(&self, ca: &Ca) -> Result<(), ServingError> {
        let issue = |e: &dyn std::fmt::Display| ServingError::Issue(e.to_string());
        let key = PendingKey::generate(self.workload.id()).map_err(|e| issue(&e))?;
        let cert = ca
            .sign_csr(key.csr_pem(), self.workload.id(), self.lifetime)
            .map_err(|e| issue(&e))?;
        self.workload
            .install(key, &cert.chain_pem)
            .map_err(|e| issue(&e))?;
        tracing::info!(identity = %self.workload.id(), "issued the control plane's certificate");
        Ok(())
    }

    /// Whether to renew now (past 50–70% of its life).
    pub fn due(&self, now: SystemTime) -> bool {
        self.workload.renew_at().is_none_or(|at| now >= at)
    }

    /// The acceptor for the API listener; it presents whichever certificate is current.
    pub fn acceptor(&self) -> Result<TlsAcceptor, ServingError> {
        Ok(TlsAcceptor::from(control_server_config(
            self.workload.clone(),
        )?))
    }
}

/// Writes the public bundle into the data directory, atomically.
pub fn write_bundle(data_dir: &Path, pem: &str) -> Result<(), ServingError> {
    crate::files::write_atomic(
        &data_dir.join(BUNDLE_FILE),
        pem.as_bytes(),
        crate::files::Mode::Public,
    )?;
    Ok(())
}
