//! Artifacts in the shared store: `bytea` rows, read through a local copy (content-addressed,
//! so a copy is never stale), with their signatures.

use super::PgStore;
use crate::control::store::StoreError;

impl PgStore {
    /// Whether the store has an artifact.
    pub fn has_artifact(&self, digest: &str) -> bool {
        if !crate::snapshot::is_digest(digest) {
            return false;
        }
        if self.cache.has_artifact(digest) {
            return true;
        }
        let digest = digest.to_string();
        self.call(move |c| {
            Ok(
                c.query_opt("SELECT 1 FROM weft_artifacts WHERE digest = $1", &[&digest])?
                    .is_some(),
            )
        })
        .unwrap_or(false)
    }

    /// Stores an artifact; returns its sha256.
    pub fn put_artifact(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = self.cache.put_artifact(bytes)?;
        let (d, body) = (digest.clone(), bytes.to_vec());
        self.call(move |c| {
            c.execute(
                "INSERT INTO weft_artifacts VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
                &[&d, &body],
            )
            .map(drop)
        })?;
        Ok(digest)
    }

    /// An artifact's bytes (kept in the local cache once read).
    pub fn artifact(&self, digest: &str) -> Option<Vec<u8>> {
        if !crate::snapshot::is_digest(digest) {
            return None;
        }
        if let Some(bytes) = self.cache.artifact(digest) {
            return Some(bytes);
        }
        let d = digest.to_string();
        let bytes: Vec<u8> = self
            .call(move |c| {
                Ok(
                    c.query_opt("SELECT bytes FROM weft_artifacts WHERE digest = $1", &[&d])?
                        .map(|r| r.get(0)),
                )
            })
            .ok()
            .flatten()?;
        // Content-addressed: what does not hash to its name is not served.
        if crate::plugin::sha256_hex(&bytes) != digest {
            tracing::error!(%digest, "an artifact in the store does not match its digest");
            return None;
        }
        if let Err(e) = self.cache.put_artifact(&bytes) {
            tracing::warn!(%digest, "cannot cache an artifact locally: {e}");
        }
        Some(bytes)
    }

    /// Keeps a signature (hex) of an artifact, once.
    pub fn add_signature(&self, digest: &str, signature: &str) -> Result<(), StoreError> {
        let (d, s) = (digest.to_string(), signature.trim().to_ascii_lowercase());
        self.call(move |c| {
            c.execute(
                "INSERT INTO weft_signatures VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&d, &s],
            )
            .map(drop)
        })
    }

    /// The signatures (hex) kept for an artifact.
    pub fn signatures(&self, digest: &str) -> Vec<String> {
        let d = digest.to_string();
        self.call(move |c| {
            Ok(c.query(
                "SELECT signature FROM weft_signatures WHERE digest = $1 ORDER BY signature",
                &[&d],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
        .unwrap_or_default()
    }
}
