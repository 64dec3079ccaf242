//! Secrets at rest in a shared store: the CA's keys, the token secrets and pull-secret
//! passwords are sealed with AES-256-GCM under a key the operator gives every replica, so a
//! copy of the database (a backup, a replica of it, a curious DBA) holds none of them in clear.
//! Each value is bound to its name as associated data: a sealed value moved to another name
//! does not open.

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// The operator's store key: 32 bytes, given as 64 hex digits.
#[derive(Clone)]
pub struct SealKey(std::sync::Arc<LessSafeKey>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// Why a key or a sealed value was refused.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key text is not 64 hex digits.
    #[error(
        "a store key is 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32` or `head -c32 /dev/urandom | xxd -p -c64`"
    )]
    BadKey,
    /// A sealed value did not open: another key sealed it, or it was altered.
    #[error("{0}: does not open with this store key (sealed with another key, or altered)")]
    Open(String),
    /// The kernel gave no randomness.
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

const PREFIX: &str = "sealed1:";

impl SealKey {
    /// The key written as 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<SealKey, SealError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SealError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::BadKey)?;
        Ok(SealKey(std::sync::Arc::new(LessSafeKey::new(key))))
    }

    /// `value` sealed for `name`: a random nonce and the ciphertext, as text.
    pub fn seal(&self, name: &str, value: &[u8]) -> Result<String, SealError> {
        let random = crate::random::secure_bytes().map_err(|e| SealError::Random(e.to_string()))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&random[..NONCE_LEN]);
        let mut data = value.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Open(name.to_string()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// What [`SealKey::seal`] sealed for `name`.
    pub fn open(&self, name: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let refused = || SealError::Open(name.to_string());
        let body = sealed.strip_prefix(PREFIX).ok_or_else(refused)?;
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| refused())?;
        if bytes.len() < NONCE_LEN {
            return Err(refused());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let opened = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| refused())?;
        Ok(opened.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_under_its_name() {
        let key = SealKey::from_hex(KEY).expect("key");
        let sealed = key
            .seal("ca", b"-----BEGIN PRIVATE KEY-----")
            .expect("seal");
        assert!(!sealed.contains("PRIVATE"), "{sealed}");
        assert_ne!(
            sealed,
            key.seal("ca", b"-----BEGIN PRIVATE KEY-----")
                .expect("seal")
        );
        assert_eq!(
            key.open("ca", &sealed).expect("open"),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(key.open("secret", &sealed).is_err(), "bound to its name");
        let other = SealKey::from_hex(&KEY.replace("1f", "20")).expect("key");
        let err = other.open("ca", &sealed).expect_err("another key");
        assert!(err.to_string().contains("ca: does not open"), "{err}");
        let mut altered = sealed.clone();
        altered.pop();
        altered.push('A');
        assert!(key.open("ca", &altered).is_err());
        assert!(key.open("ca", "plain text").is_err());
    }

    #[test]
    fn keys_are_exactly_64_hex_digits() {
        assert!(SealKey::from_hex(&format!(" {KEY}\n")).is_ok());
        assert!(SealKey::from_hex(&KEY[2..]).is_err());
        assert!(SealKey::from_hex(&KEY.replace('0', "g")).is_err());
        assert!(SealKey::from_hex("").is_err());
    }
}
