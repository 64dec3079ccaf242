//! The mesh CA: a root (ECDSA P-256) made at first start and kept in a directory, or an
//! operator's root; it signs workload certificates from CSRs for exactly the identity the caller
//! proved, and rotates its root with an overlap during which the trust bundle holds both.
//!
//! A rotation has three steps, each given a renewal period to reach every workload, so no
//! handshake ever meets a root its peer does not trust yet: [`Ca::stage_root`] adds a new root
//! to the bundle (the old one still signs); [`Ca::activate_root`] signs with the new root (both
//! trusted); [`Ca::retire_old_roots`] drops the old one.
//!
//! Files in the CA directory (mode 0700): `root.pem`, the signing root's certificate and key in
//! one file (0600) so a crash can never pair a key with another root's certificate;
//! `next.pem`, a staged root (certificate and key, 0600); `previous.pem`, roots still trusted
//! after a rotation (certificates only: they sign nothing).

use super::spiffe::{SpiffeError, SpiffeId};
use crate::files::{Mode, WriteError, write_atomic};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where "now" comes from; tests inject fixed times to issue expired or future certificates.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// The default workload certificate lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How long a generated root is valid: rotation is an operator's decision, not an expiry.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far certificates are backdated, so a peer whose clock is a little behind accepts them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why the CA could not do something.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Writing a CA file failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Reading a CA file or setting its permissions failed.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A root certificate or key is unusable.
    #[error("CA root: {0}")]
    Root(String),
    /// Generating or signing a certificate failed.
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
    /// The CSR does not parse, its signature is wrong, or it asks for unsupported extensions.
    #[error("CSR refused: {0}")]
    Csr(String),
    /// The CSR names no SPIFFE ID.
    #[error("CSR refused: it names no SPIFFE ID (one URI SAN expected)")]
    NoIdentity,
    /// The CSR carries a SAN other than the one SPIFFE ID.
    #[error("CSR refused: only the SPIFFE ID may be named, it also asks for {0}")]
    OtherSans(String),
    /// The CSR's SPIFFE ID is malformed.
    #[error("CSR refused: {0}")]
    BadIdentity(#[from] SpiffeError),
    /// The identity asked for is in another trust domain than this CA's.
    #[error("this CA signs for trust domain {ours}, not {asked}")]
    ForeignTrustDomain {
        /// This CA's.
        ours: String,
        /// The identity's.
        asked: String,
    },
    /// The CSR asks for an identity other than the one the caller proved.
    #[error("CSR refused: it asks for {requested} but the caller is {expected}")]
    WrongIdentity {
        /// What the caller proved (its bootstrap token's service).
        expected: String,
        /// What the CSR asks for.
        requested: String,
    },
    /// A zero lifetime, or a time outside what certificates can encode.
    #[error("validity: {0}")]
    Validity(String),
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The chain, leaf first, PEM (the root is not included: peers have it in their bundle).
    pub chain_pem: String,
    /// Start of validity (backdated a few minutes for clock skew).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// A CA's roots as a shared store keeps them (sealed there: the keys are in it).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaRecord {
    /// The signing root, PEM certificate then PEM key.
    pub signer: String,
    /// A staged root, the same way.
    pub next: Option<String>,
    /// Roots still trusted but no longer signing (PEM certificates).
    pub previous: Vec<String>,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("CaRecord")
            .field("staged", &self.next.is_some())
            .field("previous", &self.previous.len())
            .finish_non_exhaustive()
    }
}

struct Root {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

/// The mesh certificate authority.
pub struct Ca {
    dir: Option<PathBuf>,
    /// The trust domain it signs for, named in the roots it makes.
    trust_domain: String,
    signer: Root,
    /// A staged root: trusted, not signing yet.
    next: Option<Root>,
    /// Roots still in the bundle but no longer signing (PEM certificates).
    previous: Vec<String>,
    clock: Clock,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("previous_roots", &self.previous.len())
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Ca {
    /// Opens the CA kept in `dir` for `trust_domain`, generating and persisting a root (which
    /// names the trust domain) on first use.
    pub fn open(dir: &Path, trust_domain: &str, clock: Clock) -> Result<Ca, CaError> {
        super::spiffe::valid_trust_domain(trust_domain)?;
        private_dir(dir)?;
        let root_path = dir.join("root.pem");
        let signer = match std::fs::read_to_string(&root_path) {
            Ok(pem) => load_root(&pem, &pem)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let root = generate_root(clock(), trust_domain)?;
                write_private(&root_path, &root)?;
                tracing::info!(dir = %dir.display(), "generated a new mesh CA root");
                root
            }
            Err(e) => return Err(io(&root_path)(e)),
        };
        let previous_path = dir.join("previous.pem");
        let previous = match std::fs::read(&previous_path) {
            Ok(bytes) => split_certs(&bytes)
                .map_err(|e| CaError::Root(format!("{}: {e}", previous_path.display())))?
                .into_iter()
                // A crash between the two writes of a rotation leaves the signer in both.
                .filter(|pem| *pem != signer.cert_pem)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&previous_path)(e)),
        };
        let next_path = dir.join("next.pem");
        let next = match std::fs::read_to_string(&next_path) {
            // A crash after activation wrote root.pem but before next.pem went leaves both equal.
            Ok(pem) => Some(load_root(&pem, &pem)?).filter(|n| n.cert_pem != signer.cert_pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&next_path)(e)),
        };
        check_root_domain(&signer, trust_domain)?;
        Ok(Ca {
            dir: Some(dir.to_path_buf()),
            trust_domain: trust_domain.to_owned(),
            signer,
            next,
            previous,
            clock,
        })
    }

    /// A new root for `trust_domain`, as a record (for a shared store to keep if it has none).
    pub fn generate_record(trust_domain: &str, clock: Clock) -> Result<CaRecord, CaError> {
        super::spiffe::valid_trust_domain(trust_domain)?;
        let root = generate_root(clock(), trust_domain)?;
        Ok(CaRecord {
            signer: format!("{}{}", root.cert_pem, root.key_pem),
            next: None,
            previous: Vec::new(),
        })
    }

    /// The CA a record holds, for `trust_domain`, held in memory (its steps are kept by the
    /// caller, through [`Ca::record`]).
    pub fn from_record(record: &CaRecord, trust_domain: &str, clock: Clock) -> Result<Ca, CaError> {
        super::spiffe::valid_trust_domain(trust_domain)?;
        let signer = load_root(&record.signer, &record.signer)?;
        check_root_domain(&signer, trust_domain)?;
        let next = match &record.next {
            Some(pem) => Some(load_root(pem, pem)?).filter(|n| n.cert_pem != signer.cert_pem),
            None => None,
        };
        let previous = record
            .previous
            .iter()
            .filter(|pem| **pem != signer.cert_pem)
            .cloned()
            .collect();
        Ok(Ca {
            dir: None,
            trust_domain: trust_domain.to_owned(),
            signer,
            next,
            previous,
            clock,
        })
    }

    /// Its roots as a record.
    pub fn record(&self) -> CaRecord {
        CaRecord {
            signer: format!("{}{}", self.signer.cert_pem, self.signer.key_pem),
            next: self
                .next
                .as_ref()
                .map(|n| format!("{}{}", n.cert_pem, n.key_pem)),
            previous: self.previous.clone(),
        }
    }

    /// The signing root's certificate (PEM).
    pub fn signer_pem(&self) -> &str {
        &self.signer.cert_pem
    }

    /// A CA for `trust_domain` from an operator's root (PEM certificate and PEM key), held in
    /// memory only.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        trust_domain: &str,
        clock: Clock,
    ) -> Result<Ca, CaError> {
        super::spiffe::valid_trust_domain(trust_domain)?;
        let signer = load_root(cert_pem, key_pem)?;
        check_root_domain(&signer, trust_domain)?;
        Ok(Ca {
            dir: None,
            trust_domain: trust_domain.to_owned(),
            signer,
            next: None,
            previous: Vec::new(),
            clock,
        })
    }

    /// The trust domain it signs for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs a workload CSR for `expected`, the identity the caller proved; refuses a CSR
    /// naming any other identity or any other SAN.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        expected: &SpiffeId,
        lifetime: Duration,
    ) -> Result<IssuedCert, CaError> {
        if lifetime.is_zero() {
            return Err(CaError::Validity("lifetime is zero".into()));
        }
        // Parses and checks the CSR's signature: the requester holds the key it names.
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let mut requested = None;
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::URI(uri) if requested.is_none() => {
                    requested = Some(SpiffeId::parse(uri.as_str())?);
                }
                other => return Err(CaError::OtherSans(describe_san(other))),
            }
        }
        let requested = requested.ok_or(CaError::NoIdentity)?;
        if expected.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                ours: self.trust_domain.clone(),
                asked: expected.trust_domain().to_owned(),
            });
        }
        if requested != *expected {
            return Err(CaError::WrongIdentity {
                expected: expected.to_string(),
                requested: requested.to_string(),
            });
        }

        // Everything but the public key comes from the CA, never from the CSR (which could ask
        // for a CA certificate or odd key usages).
        let now = (self.clock)();
        let not_before = now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH);
        let not_after = now
            .checked_add(lifetime)
            .ok_or_else(|| CaError::Validity("lifetime overflows".into()))?
            // A leaf never outlives its issuer.
            .min(self.signer.not_after);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "weft");
        dn.push(DnType::CommonName, expected.service());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(expected.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Sidecars are both servers (inbound) and clients (outbound) with one certificate.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let cert = csr.signed_by(&self.signer.issuer)?;
        Ok(IssuedCert {
            chain_pem: cert.pem(),
            not_before: truncate_to_secs(not_before),
            not_after: truncate_to_secs(not_after),
        })
    }

    /// The trust bundle: every root currently trusted (the signer and, during a rotation, the
    /// staged or previous ones), PEM.
    pub fn bundle(&self) -> String {
        let mut out = String::new();
        let next = self.next.as_ref().map(|n| &n.cert_pem);
        for pem in self
            .previous
            .iter()
            .chain([&self.signer.cert_pem])
            .chain(next)
        {
            out.push_str(pem);
        }
        out
    }

    /// Step one of a rotation: a new root joins the bundle; the current one keeps signing.
    /// Staging again replaces a staged root that was never activated.
    pub fn stage_root(&mut self) -> Result<(), CaError> {
        let root = generate_root((self.clock)(), &self.trust_domain)?;
        if let Some(dir) = &self.dir {
            write_private(&dir.join("next.pem"), &root)?;
        }
        self.next = Some(root);
        Ok(())
    }

    /// Step two: the staged root signs from now on; the old one stays in the bundle until
    /// [`Ca::retire_old_roots`], so certificates it signed keep working meanwhile. Refused
    /// without a staged root.
    pub fn activate_root(&mut self) -> Result<(), CaError> {
        let Some(next) = &self.next else {
            return Err(CaError::Root(
                "no staged root to activate: stage one first (weft ca rotate)".into(),
            ));
        };
        let mut previous = self.previous.clone();
        previous.push(self.signer.cert_pem.clone());
        // Previous first: a crash before the new root is written leaves the old signer and a
        // bundle that merely lists it twice (deduplicated on open); a crash before next.pem is
        // removed leaves it equal to root.pem (dropped on open).
        if let Some(dir) = &self.dir {
            write_atomic(
                &dir.join("previous.pem"),
                previous.concat().as_bytes(),
                Mode::Public,
            )?;
            write_private(&dir.join("root.pem"), next)?;
            let path = dir.join("next.pem");
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        self.previous = previous;
        if let Some(next) = self.next.take() {
            self.signer = next;
        }
        Ok(())
    }

    /// Stages and activates a new root at once: for a mesh whose workloads need no warning
    /// (none hold certificates yet), and for tests of the renewal path.
    pub fn rotate_root(&mut self) -> Result<(), CaError> {
        self.stage_root()?;
        self.activate_root()
    }

    /// Whether a rotation is in progress: a root is staged or old roots are still trusted.
    pub fn rotating(&self) -> bool {
        self.next.is_some() || !self.previous.is_empty()
    }

    /// Drops the roots kept from rotations: certificates they signed are no longer trusted.
    pub fn retire_old_roots(&mut self) -> Result<(), CaError> {
        if let Some(dir) = &self.dir {
            write_atomic(&dir.join("previous.pem"), b"", Mode::Public)?;
        }
        self.previous.clear();
        Ok(())
    }
}

fn describe_san(san: &SanType) -> String {
    match san {
        SanType::DnsName(n) => format!("DNS name {:?}", n.as_str()),
        SanType::URI(u) => format!("a second URI {:?}", u.as_str()),
        SanType::IpAddress(ip) => format!("IP address {ip}"),
        SanType::Rfc822Name(n) => format!("email {:?}", n.as_str()),
        _ => "another kind of name".to_owned(),
    }
}

/// A root that names a trust domain must name this CA's: a CA opened for `weft.local` never
/// signs with a root made for another mesh. A root naming none (made before roots named
/// theirs, or an operator's) is taken with a warning: peers then assume the default domain.
fn check_root_domain(root: &Root, trust_domain: &str) -> Result<(), CaError> {
    let der = CertificateDer::from_pem_slice(root.cert_pem.as_bytes())
        .map_err(|e| CaError::Root(format!("certificate: {e}")))?;
    match super::spiffe::trust_domain_of_root(&der) {
        Some(named) if named == trust_domain => Ok(()),
        Some(named) => Err(CaError::Root(format!(
            "the root is for trust domain {named}, not {trust_domain}"
        ))),
        None => {
            if trust_domain != super::spiffe::DEFAULT_TRUST_DOMAIN {
                tracing::warn!(
                    trust_domain,
                    "the CA root names no trust domain, so clients of the control plane assume {}: rotate the root (weft ca rotate, activate, retire) to name {trust_domain}",
                    super::spiffe::DEFAULT_TRUST_DOMAIN
                );
            }
            Ok(())
        }
    }
}

fn generate_root(now: SystemTime, trust_domain: &str) -> Result<Root, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "weft");
    // Distinct names per root, so the old and new roots of a rotation never look alike.
    let suffix = hex::encode(&random_serial()?.to_bytes()[..4]);
    dn.push(DnType::CommonName, format!("weft mesh root {suffix}"));
    params.distinguished_name = dn;
    // The SPIFFE X.509 spec lets a signing certificate name its trust domain: the bundle then
    // says which domain its roots vouch for, and clients check identities against it.
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
    // Signs workload leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let not_after = now
        .checked_add(ROOT_LIFETIME)
        .ok_or_else(|| CaError::Validity("root lifetime overflows".into()))?;
    params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH))?;
    params.not_after = to_offset(not_after)?;
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key)?;
    let key_pem = key.serialize_pem();
    Ok(Root {
        cert_pem: pem_of(cert.der()),
        key_pem,
        issuer: Issuer::new(params, key),
        not_after: truncate_to_secs(not_after),
    })
}

/// Loads a root from PEM; `cert_pem` and `key_pem` may be the same text (`root.pem`).
fn load_root(cert_pem: &str, key_pem: &str) -> Result<Root, CaError> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| CaError::Root(format!("certificate: {e}")))?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| CaError::Root(format!("key: {e}")))?;
    let key = KeyPair::try_from(&key_der).map_err(|e| CaError::Root(format!("key: {e}")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| CaError::Root(format!("certificate: {e}")))?;
    if !parsed.is_ca() {
        return Err(CaError::Root("the certificate is not a CA".into()));
    }
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CaError::Root(
            "the key does not belong to the certificate".into(),
        ));
    }
    let not_after = UNIX_EPOCH
        + Duration::from_secs(u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0));
    let issuer = Issuer::from_ca_cert_der(&cert, key)?;
    Ok(Root {
        cert_pem: pem_of(&cert),
        key_pem: issuer.key().serialize_pem(),
        issuer,
        not_after,
    })
}

fn pem_of(cert: &CertificateDer<'_>) -> String {
    // One encoding (LF line ends) for every root, so bundles compare and deduplicate as text.
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", cert.as_ref()), config)
}

fn split_certs(bytes: &[u8]) -> Result<Vec<String>, String> {
    CertificateDer::pem_slice_iter(bytes)
        .map(|c| c.map(|c| pem_of(&c)).map_err(|e| e.to_string()))
        .collect()
}

/// Creates `dir` (or tightens it) readable by its owner only: the keys are 0600 themselves,
/// and a private directory also hides which keys exist and when they change.
fn private_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

fn write_private(path: &Path, root: &Root) -> Result<(), CaError> {
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let text = format!("{}{}", root.cert_pem, root.key_pem);
    write_atomic(path, text.as_bytes(), Mode::Private)?;
    Ok(())
}

/// 128 random bits from the kernel, positive as DER INTEGERs must be for serials.
fn random_serial() -> Result<SerialNumber, CaError> {
    let bytes = crate::random::secure_bytes().map_err(io(Path::new("/dev/urandom")))?;
    let mut serial = [0u8; 16];
    serial.copy_from_slice(&bytes[..16]);
    // Top bit clear (positive) and next set (no leading zero byte to strip).
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&serial))
}

fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime, CaError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CaError::Validity("time before 1970".into()))?
        .as_secs();
    let secs = i64::try_from(secs).map_err(|_| CaError::Validity("time too far".into()))?;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| CaError::Validity(e.to_string()))
}

/// Certificates carry whole seconds.
fn truncate_to_secs(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}
