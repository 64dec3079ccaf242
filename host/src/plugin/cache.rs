//! The on-disk compile cache. Its entries are native code the sidecar will run, so an entry is
//! trusted only if this host wrote it: each carries an HMAC-SHA256 under a per-host key kept
//! 0600 in the directory, over the entry's name and code. A directory others could write to
//! (group- or world-writable, or owned by another user) is refused at start, and entries and
//! the key are created 0600.

use crate::files::{Mode, write_atomic};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The key file's name inside the cache directory.
const KEY_FILE: &str = "key";
const MAC_LEN: usize = 32;

/// Why a cache directory was refused.
#[derive(Debug, thiserror::Error)]
#[error("compile cache {path}: {reason}")]
pub struct CacheError {
    /// The directory or file.
    pub path: String,
    /// Why.
    pub reason: String,
}

fn refuse(path: &Path, reason: impl Into<String>) -> CacheError {
    CacheError {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// A checked cache directory and its key.
pub(crate) struct DiskCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl DiskCache {
    /// Opens `dir` (created 0700 if missing), refusing one that others could write to, and
    /// reads its key (made if missing).
    pub fn open(dir: &Path) -> Result<DiskCache, CacheError> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| refuse(dir, e.to_string()))?;
        }
        let me =
            effective_uid().map_err(|e| refuse(dir, format!("cannot tell who we are: {e}")))?;
        let meta = std::fs::metadata(dir).map_err(|e| refuse(dir, e.to_string()))?;
        if !meta.is_dir() {
            return Err(refuse(dir, "not a directory"));
        }
        private_enough(dir, &meta, me, 0o022, "group- or world-writable")?;
        let key_path = dir.join(KEY_FILE);
        let key = match std::fs::symlink_metadata(&key_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = crate::random::secure_bytes()
                    .map_err(|e| refuse(&key_path, format!("cannot draw a key: {e}")))?;
                write_atomic(&key_path, &key, Mode::Private)
                    .map_err(|e| refuse(&key_path, e.source.to_string()))?;
                key
            }
            Err(e) => return Err(refuse(&key_path, e.to_string())),
            Ok(meta) => {
                if !meta.is_file() {
                    return Err(refuse(&key_path, "not a regular file"));
                }
                private_enough(
                    &key_path,
                    &meta,
                    me,
                    0o077,
                    "readable or writable by others",
                )?;
                let bytes =
                    std::fs::read(&key_path).map_err(|e| refuse(&key_path, e.to_string()))?;
                bytes
                    .try_into()
                    .map_err(|_| refuse(&key_path, "not a 32-byte key"))?
            }
        };
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            key,
        })
    }

    fn mac(&self, name: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac
    }

    /// The code stored as `name`, if present and written by this host; a forged, torn or
    /// foreign entry is removed and reported as absent.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.dir.join(name);
        let mut data = std::fs::read(&path).ok()?;
        let genuine = data.len() >= MAC_LEN && {
            let mut mac = self.mac(name);
            mac.update(&data[MAC_LEN..]);
            mac.verify_slice(&data[..MAC_LEN]).is_ok()
        };
        if !genuine {
            tracing::warn!(path = %path.display(), "compile cache entry fails its check; recompiling");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        data.drain(..MAC_LEN);
        Some(data)
    }

    /// Stores `code` as `name`, 0600; a failure costs a recompile later, nothing else.
    pub fn put(&self, name: &str, code: &[u8]) {
        let mut mac = self.mac(name);
        mac.update(code);
        let mut data = Vec::with_capacity(MAC_LEN + code.len());
        data.extend_from_slice(&mac.finalize().into_bytes());
        data.extend_from_slice(code);
        if let Err(e) = write_atomic(&self.dir.join(name), &data, Mode::Private) {
            tracing::warn!("cannot write compile cache entry: {e}");
        }
    }
}

/// Refuses a path owned by another user (root excepted: it can write anything anyway) or with
/// any of `forbidden` permission bits.
fn private_enough(
    path: &Path,
    meta: &std::fs::Metadata,
    me: u32,
    forbidden: u32,
    what: &str,
) -> Result<(), CacheError> {
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refuse(
            path,
            format!(
                "owned by uid {}, not by this process (uid {me})",
                meta.uid()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & forbidden != 0 {
        return Err(refuse(
            path,
            format!(
                "mode {mode:o} is {what}; anyone who can write here could run code in the sidecar"
            ),
        ));
    }
    Ok(())
}

/// This process's effective uid: Linux gives `/proc/self` to it.
fn effective_uid() -> std::io::Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_forgeries_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = DiskCache::open(dir.path()).expect("opens");
        cache.put("a.cwasm", b"native code");
        assert_eq!(cache.get("a.cwasm").as_deref(), Some(&b"native code"[..]));
        let entry = dir.path().join("a.cwasm");
        let mode = std::fs::metadata(&entry)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let key = std::fs::metadata(dir.path().join(KEY_FILE)).expect("key");
        assert_eq!(key.permissions().mode() & 0o777, 0o600);

        // An entry moved to another name is not that name's code.
        std::fs::copy(&entry, dir.path().join("b.cwasm")).expect("copy");
        assert_eq!(cache.get("b.cwasm"), None);
        assert!(!dir.path().join("b.cwasm").exists(), "removed");
        // Code with a checksum of its own, as an attacker without the key would write it.
        let mut forged =
            sha2::Digest::finalize(<Sha256 as sha2::Digest>::new_with_prefix(b"evil")).to_vec();
        forged.extend_from_slice(b"evil");
        std::fs::write(&entry, &forged).expect("forge");
        assert_eq!(cache.get("a.cwasm"), None);
        // A reopened cache keeps its key: what it wrote still reads.
        cache.put("c.cwasm", b"more");
        let again = DiskCache::open(dir.path()).expect("reopens");
        assert_eq!(again.get("c.cwasm").as_deref(), Some(&b"more"[..]));
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        for mode in [0o775, 0o777, 0o757] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            let err = DiskCache::open(dir.path()).err().expect("refused");
            assert!(err.reason.contains("writable"), "{mode:o}: {err}");
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let _ = DiskCache::open(dir.path()).expect("0755 is fine");
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = DiskCache::open(dir.path()).err().expect("refused");
        assert!(
            err.to_string().contains("readable or writable by others"),
            "{err}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&key, b"short").expect("write");
        let err = DiskCache::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("32-byte"), "{err}");
    }

    #[test]
    fn a_missing_directory_is_made_private() {
        let dir = tempfile::tempdir().expect("dir");
        let inner = dir.path().join("a/b");
        let _ = DiskCache::open(&inner).expect("made");
        let mode = std::fs::metadata(&inner)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }
}
