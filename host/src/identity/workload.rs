//! The sidecar's side of identity: it makes its own key and CSR (the key never leaves the
//! process), installs the certificate the CA returns, and holds the current certificate and
//! key in an `ArcSwap` so a rotation is one atomic swap: handshakes that start afterwards use
//! the new certificate, established connections keep the keys they negotiated.

use super::spiffe::{SanError, SpiffeId};
use arc_swap::ArcSwapOption;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a key, CSR or certificate could not be made or installed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Key or CSR generation failed.
    #[error("key or CSR: {0}")]
    Generate(#[from] rcgen::Error),
    /// The chain is not PEM certificates, or is empty.
    #[error("certificate chain: {0}")]
    Chain(String),
    /// The leaf's SPIFFE ID is missing or malformed.
    #[error("certificate chain: {0}")]
    Identity(#[from] SanError),
    /// The leaf names another workload.
    #[error("certificate is for {found}, this workload is {expected}")]
    WrongIdentity {
        /// This workload.
        expected: String,
        /// What the leaf names.
        found: String,
    },
    /// The leaf does not match the key (rustls checks the public keys).
    #[error("certificate does not match the key: {0}")]
    KeyMismatch(rustls::Error),
}

/// A freshly generated key pair (ECDSA P-256) and its CSR, waiting for the CA's answer.
pub struct PendingKey {
    id: SpiffeId,
    key: KeyPair,
    csr_pem: String,
}

impl std::fmt::Debug for PendingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("PendingKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PendingKey {
    /// A new key pair and a CSR naming `id` as its only SAN.
    pub fn generate(id: &SpiffeId) -> Result<PendingKey, WorkloadError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        // The CA decides the subject; the CSR carries only the identity.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        let csr_pem = params.serialize_request(&key)?.pem()?;
        Ok(PendingKey {
            id: id.clone(),
            key,
            csr_pem,
        })
    }

    /// The CSR to send to the CA (PEM).
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }
}

/// The certificate in use, with its validity.
#[derive(Debug)]
pub struct Current {
    /// Chain and signing key as rustls presents them.
    pub key: Arc<CertifiedKey>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// One workload's identity and its current certificate, swapped atomically on rotation.
#[derive(Debug)]
pub struct Workload {
    id: SpiffeId,
    current: ArcSwapOption<Current>,
}

impl Workload {
    /// A workload with no certificate yet (it presents none until [`Workload::install`]).
    pub fn new(id: SpiffeId) -> Workload {
        Workload {
            id,
            current: ArcSwapOption::empty(),
        }
    }

    /// Its identity.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// Installs the CA's answer to `key`'s CSR: checks the leaf names this workload and matches
    /// the key, then swaps it in for new handshakes.
    pub fn install(&self, key: PendingKey, chain_pem: &str) -> Result<(), WorkloadError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WorkloadError::Chain(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| WorkloadError::Chain("no certificate in the PEM".into()))?;
        let found = SpiffeId::from_cert_der(leaf)?;
        if found != self.id || key.id != self.id {
            return Err(WorkloadError::WrongIdentity {
                expected: self.id.to_string(),
                found: found.to_string(),
            });
        }
        let (not_before, not_after) = validity(leaf)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key.serialize_der()));
        let certified = CertifiedKey::from_der(chain, der, &super::tls::provider())
            .map_err(WorkloadError::KeyMismatch)?;
        self.current.store(Some(Arc::new(Current {
            key: Arc::new(certified),
            not_before,
            not_after,
        })));
        Ok(())
    }

    /// The certificate in use, if any.
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current.load_full()
    }

    /// When to renew the current certificate (see [`renew_at`]); `None` without one.
    pub fn renew_at(&self) -> Option<SystemTime> {
        self.current
            .load()
            .as_ref()
            .map(|c| renew_at(c.not_before, c.not_after))
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: at 50–70% of its life,
/// uniformly, so a fleet issued together does not come back to the CA together.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let fraction = 0.5 + 0.2 * (crate::random::fast_u64() as f64 / u64::MAX as f64);
    not_before + life.mul_f64(fraction)
}

fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), WorkloadError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| SanError::Parse(e.to_string()))?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_half_and_seventy_percent_of_life() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(1000);
        let draws: Vec<SystemTime> = (0..200).map(|_| renew_at(start, end)).collect();
        for at in &draws {
            let into = at.duration_since(start).expect("after start");
            assert!(
                (Duration::from_secs(500)..=Duration::from_secs(700)).contains(&into),
                "{into:?}"
            );
        }
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "jitter spreads renewals");
    }

    #[test]
    fn csr_names_only_the_identity() {
        let id = SpiffeId::parse("spiffe://weft.local/ns/default/sa/orders").expect("id");
        let pending = PendingKey::generate(&id).expect("key");
        let csr = rcgen::CertificateSigningRequestParams::from_pem(pending.csr_pem()).expect("csr");
        assert_eq!(csr.params.subject_alt_names.len(), 1);
        assert!(!format!("{pending:?}").contains("PRIVATE"));
    }
}
