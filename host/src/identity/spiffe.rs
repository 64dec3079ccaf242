//! SPIFFE IDs as the mesh uses them, `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`, and
//! reading one out of an X.509 certificate's URI SAN (an X509-SVID carries exactly one).
//!
//! Certificates are read with `x509-parser`: rustls-webpki validates chains but does not expose
//! URI SANs, and rcgen already needs x509-parser to read CSRs and existing roots.

use std::fmt;
use std::str::FromStr;

/// A workload's identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service: String,
}

/// Why a string is not a mesh SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    /// It does not start with `spiffe://`.
    #[error("{0:?}: a SPIFFE ID starts with spiffe://")]
    Scheme(String),
    /// Longer than the SPIFFE limit of 2048 bytes.
    #[error("SPIFFE ID is {0} bytes long, the limit is 2048")]
    TooLong(usize),
    /// The trust domain is empty, too long or has characters outside `a-z 0-9 . - _`.
    #[error("trust domain {0:?}: must be 1-255 characters of a-z, 0-9, '.', '-', '_'")]
    TrustDomain(String),
    /// The path is not `/ns/<namespace>/sa/<service>`.
    #[error("path {0:?}: a mesh SPIFFE ID's path is /ns/<namespace>/sa/<service>")]
    Path(String),
    /// A namespace or service is empty, `.`/`..`, or has characters outside `A-Z a-z 0-9 . - _`.
    #[error(
        "{what} {value:?}: must be characters of A-Z, a-z, 0-9, '.', '-', '_' (not '.' or '..')"
    )]
    Segment {
        /// `namespace` or `service`.
        what: &'static str,
        /// The offending value.
        value: String,
    },
}

/// Why a certificate's SPIFFE ID could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SanError {
    /// The DER is not an X.509 certificate.
    #[error("certificate does not parse: {0}")]
    Parse(String),
    /// No URI SAN at all.
    #[error("certificate carries no SPIFFE ID (no URI SAN)")]
    Missing,
    /// More than one URI SAN; an X509-SVID has exactly one.
    #[error("certificate carries {0} URI SANs, an X509-SVID has exactly one")]
    Several(usize),
    /// The URI SAN is not a mesh SPIFFE ID.
    #[error("certificate's URI SAN: {0}")]
    Invalid(#[from] SpiffeError),
}

impl SpiffeId {
    /// An identity from its parts, each validated.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        check_trust_domain(trust_domain)?;
        check_segment("namespace", namespace)?;
        check_segment("service", service)?;
        let id = SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service: service.to_owned(),
        };
        let len = id.to_string().len();
        if len > 2048 {
            return Err(SpiffeError::TooLong(len));
        }
        Ok(id)
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`.
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeError> {
        if s.len() > 2048 {
            return Err(SpiffeError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeError::Scheme(s.to_owned()))?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(trust_domain)?;
        let parts: Vec<&str> = path.split('/').collect();
        // "/ns/x/sa/y" splits into ["", "ns", "x", "sa", "y"].
        match parts.as_slice() {
            ["", "ns", namespace, "sa", service] => SpiffeId::new(trust_domain, namespace, service),
            _ => Err(SpiffeError::Path(path.to_owned())),
        }
    }

    /// The trust domain (`weft.local`).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service (the `sa` segment: in the mesh a service is its own account).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Reads the single SPIFFE ID out of a DER certificate's URI SANs.
    pub fn from_cert_der(der: &[u8]) -> Result<SpiffeId, SanError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| SanError::Parse(e.to_string()))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| SanError::Parse(e.to_string()))?;
        let uris: Vec<&str> = sans
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        match uris.as_slice() {
            [] => Err(SanError::Missing),
            [uri] => Ok(SpiffeId::parse(uri)?),
            more => Err(SanError::Several(more.len())),
        }
    }
}

/// The trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "weft.local";

/// The trust domain a CA certificate names with a path-less SPIFFE ID URI SAN
/// (`spiffe://weft.local`, as the SPIFFE X.509 spec allows a signing certificate to carry), if
/// it names one.
pub fn trust_domain_of_root(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = cert.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => {
            let td = uri.strip_prefix("spiffe://")?;
            check_trust_domain(td).ok()?;
            Some(td.to_owned())
        }
        _ => None,
    })
}

/// Checks a trust domain name against the SPIFFE grammar.
pub fn valid_trust_domain(td: &str) -> Result<(), SpiffeError> {
    check_trust_domain(td)
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<SpiffeId, SpiffeError> {
        SpiffeId::parse(s)
    }
}

// The SPIFFE spec's trust-domain grammar: lowercase only, so names compare byte for byte.
fn check_trust_domain(td: &str) -> Result<(), SpiffeError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::TrustDomain(td.to_owned()))
    }
}

// The SPIFFE spec's path-segment grammar; `.` and `..` would let two strings name one identity.
fn check_segment(what: &'static str, value: &str) -> Result<(), SpiffeError> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::Segment {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        let s = "spiffe://weft.local/ns/default/sa/payments";
        let id = SpiffeId::parse(s).expect("valid");
        assert_eq!(id.trust_domain(), "weft.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service(), "payments");
        assert_eq!(id.to_string(), s);
        assert_eq!(s.parse::<SpiffeId>(), Ok(id));
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("https://weft.local/ns/a/sa/b", "starts with spiffe://"),
            (
                "spiffe://Weft.local/ns/a/sa/b",
                "trust domain \"Weft.local\"",
            ),
            ("spiffe:///ns/a/sa/b", "trust domain \"\""),
            ("spiffe://weft.local:8080/ns/a/sa/b", "trust domain"),
            ("spiffe://weft.local", "path \"\""),
            ("spiffe://weft.local/ns/a/sa/b/c", "path \"/ns/a/sa/b/c\""),
            ("spiffe://weft.local/sa/b/ns/a", "path"),
            ("spiffe://weft.local/ns/a/sa/", "service \"\""),
            ("spiffe://weft.local/ns/../sa/b", "namespace \"..\""),
            ("spiffe://weft.local/ns/a/sa/b%20c", "service \"b%20c\""),
        ];
        for (input, expected) in cases {
            let err = SpiffeId::parse(input).expect_err(input).to_string();
            assert!(err.contains(expected), "{input}: {err}");
        }
        let long = format!("spiffe://weft.local/ns/a/sa/{}", "x".repeat(2048));
        assert!(matches!(
            SpiffeId::parse(&long),
            Err(SpiffeError::TooLong(_))
        ));
    }

    fn cert_with_sans(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().expect("ia5"))
    }

    #[test]
    fn reads_the_single_uri_san() {
        let der = cert_with_sans(vec![
            rcgen::SanType::DnsName("payments".try_into().expect("ia5")),
            uri("spiffe://weft.local/ns/default/sa/payments"),
        ]);
        let id = SpiffeId::from_cert_der(&der).expect("id");
        assert_eq!(id.service(), "payments");

        assert_eq!(
            SpiffeId::from_cert_der(&cert_with_sans(vec![])),
            Err(SanError::Missing)
        );
        let two = cert_with_sans(vec![
            uri("spiffe://weft.local/ns/default/sa/a"),
            uri("spiffe://weft.local/ns/default/sa/b"),
        ]);
        assert_eq!(SpiffeId::from_cert_der(&two), Err(SanError::Several(2)));
        let bad = cert_with_sans(vec![uri("https://example.com/")]);
        assert!(matches!(
            SpiffeId::from_cert_der(&bad),
            Err(SanError::Invalid(SpiffeError::Scheme(_)))
        ));
        assert!(matches!(
            SpiffeId::from_cert_der(b"not a certificate"),
            Err(SanError::Parse(_))
        ));
    }
}
