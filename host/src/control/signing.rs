//! Plugin signatures: who built an artifact. A publisher signs a component with an ed25519 key
//! (`weft plugin keygen`, `weft plugin sign`); the detached signature travels with the
//! artifact (pushed with it to the control plane's store, or as a signature image next to an
//! OCI one, or at `<url>.sig`); a control plane given trusted public keys and namespaces that
//! require signatures refuses, at apply, a WasmPlugin whose component no trusted key signed.
//!
//! What is signed is the component's digest, domain-separated: `weft-plugin-signature-v1\n`
//! then `sha256:<hex>`. A signature is 64 bytes, written as 128 hex digits. Keys are PEM:
//! PKCS#8 private keys (as `openssl genpkey -algorithm ed25519` writes them) and SPKI public
//! keys.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Prefixed to what is signed, so a signature means "this is a Weft plugin" and nothing else.
const DOMAIN: &[u8] = b"weft-plugin-signature-v1\n";

/// The SPKI DER prefix of an ed25519 public key (the 32 key bytes follow).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn message(digest_hex: &str) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(b"sha256:");
    m.extend_from_slice(digest_hex.as_bytes());
    m
}

/// A new key pair as PEM: (private, public).
pub fn generate() -> Result<(String, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "no randomness".to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let private = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    Ok((private, public_pem(pair.public_key().as_ref())))
}

fn public_pem(raw: &[u8]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(raw);
    pem::encode(&pem::Pem::new("PUBLIC KEY", der))
}

/// Signs the component `wasm` with the PEM private key `key`: the signature, in hex.
pub fn sign(key: &str, wasm: &[u8]) -> Result<String, String> {
    let block = pem::parse(key).map_err(|e| format!("not a PEM key: {e}"))?;
    if block.tag() != "PRIVATE KEY" {
        return Err(format!(
            "a {} block; expected an ed25519 PRIVATE KEY",
            block.tag()
        ));
    }
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(block.contents())
        .map_err(|e| format!("not an ed25519 PKCS#8 key: {e}"))?;
    let digest = crate::plugin::sha256_hex(wasm);
    Ok(hex::encode(pair.sign(&message(&digest)).as_ref()))
}

/// A trusted public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Its name in messages (the file it came from).
    pub name: String,
    raw: [u8; 32],
}

impl TrustedKey {
    /// Reads a PEM public key.
    pub fn from_pem(name: &str, text: &str) -> Result<TrustedKey, String> {
        let block = pem::parse(text).map_err(|e| format!("{name}: not a PEM key: {e}"))?;
        let der = block.contents();
        if block.tag() != "PUBLIC KEY" || der.len() != 44 || der[..12] != SPKI_PREFIX {
            return Err(format!("{name}: not an ed25519 PUBLIC KEY"));
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&der[12..]);
        Ok(TrustedKey {
            name: name.to_string(),
            raw,
        })
    }

    /// Whether `signature` (hex) is this key's over the component of sha256 `digest_hex`.
    pub fn verifies(&self, digest_hex: &str, signature: &str) -> bool {
        let Ok(sig) = hex::decode(signature.trim()) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(&message(digest_hex), &sig)
            .is_ok()
    }
}

/// Which plugins must be signed, and by whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningPolicy {
    /// The keys a signature may be made with.
    pub keys: Vec<TrustedKey>,
    /// The namespaces whose WasmPlugins must be signed; `*`: every one.
    pub namespaces: Vec<String>,
}

impl SigningPolicy {
    /// Whether WasmPlugins in `namespace` must be signed.
    pub fn requires(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == "*" || n == namespace)
    }

    /// Why the component of sha256 `digest` may not run in a namespace that requires
    /// signatures, given the `signatures` it came with; none when a trusted key signed it.
    pub fn refusal(&self, digest: &str, signatures: &[String]) -> Option<String> {
        if signatures.is_empty() {
            return Some(format!(
                "the component sha256:{digest} is not signed (push it with --signature, or publish its signature with it)"
            ));
        }
        if signatures
            .iter()
            .any(|s| self.keys.iter().any(|k| k.verifies(digest, s)))
        {
            return None;
        }
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        Some(format!(
            "no signature of the component sha256:{digest} verifies with a trusted key ({})",
            names.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_only_and_for_its_component_only() {
        let (private, public) = generate().expect("keys");
        let (_, stranger) = generate().expect("keys");
        let wasm = b"\0asm component bytes";
        let sig = sign(&private, wasm).expect("signs");
        let digest = crate::plugin::sha256_hex(wasm);
        let ours = TrustedKey::from_pem("ours.pub", &public).expect("reads");
        let theirs = TrustedKey::from_pem("theirs.pub", &stranger).expect("reads");
        assert!(ours.verifies(&digest, &sig));
        assert!(!theirs.verifies(&digest, &sig));
        assert!(!ours.verifies(&crate::plugin::sha256_hex(b"other"), &sig));
        assert!(!ours.verifies(&digest, "zz"));
        let policy = SigningPolicy {
            keys: vec![theirs],
            namespaces: vec!["shop".into()],
        };
        assert!(policy.requires("shop") && !policy.requires("default"));
        assert!(
            policy
                .refusal(&digest, &[sig])
                .is_some_and(|r| r.contains("verifies with a trusted key (theirs.pub)"))
        );
        assert!(
            policy
                .refusal(&digest, &[])
                .is_some_and(|r| r.contains("is not signed"))
        );
    }

    #[test]
    fn an_openssl_key_is_read() {
        // `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` output.
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBXUjMSfDkA0QR4dKKP8bu+QoA9HrDfoH2ya1JwbuUtF\n-----END PRIVATE KEY-----\n";
        let sig = sign(private, b"x").expect("signs with an openssl key");
        assert_eq!(sig.len(), 128);
        assert!(TrustedKey::from_pem("k", private).is_err());
    }
}
