//! The embedded store: everything in the data directory, each file written whole (see
//! [`crate::files`]) so a crash leaves the old state or the new one, never a torn mix; state,
//! history and secrets are the owner's alone (0600). The zero-setup default.

use super::{Change, State, StoreError};
use crate::files::{Mode, write_atomic};
use crate::plugin::sha256_hex;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The data directory.
pub struct FileStore {
    dir: PathBuf,
}

const PULL_SECRETS: &str = "pull-secrets.json";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FileStore {
    /// Opens (creating) the data directory.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        // The directory holds the operator token and the CA's keys: the owner's alone.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("artifacts"))
            .map_err(io(dir))?;
        Ok(FileStore {
            dir: dir.to_path_buf(),
        })
    }

    /// `Ok` if a change could be kept now: a probe file is written, synced and removed in the
    /// data directory (never creating the directory, which may be a volume that went away).
    /// What `/readyz` reports.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        use std::io::Write;
        let probe = self.dir.join(".ready-probe");
        let mut file = std::fs::File::create(&probe).map_err(io(&probe))?;
        file.write_all(b"ready")
            .and_then(|()| file.sync_all())
            .map_err(io(&probe))?;
        std::fs::remove_file(&probe).map_err(io(&probe))
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The state on disk, or an empty one for a new directory.
    pub fn load(&self) -> Result<State, StoreError> {
        let path = self.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Saves the state whole.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Corrupt {
            path: self.state_path().display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(write_atomic(&self.state_path(), &bytes, Mode::Private)?)
    }

    /// Appends to the history (one JSON line per change).
    pub fn record(&self, change: &Change) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join("history.jsonl");
        let mut line = serde_json::to_vec(change).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(&line).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))
    }

    /// The history, oldest first.
    pub fn history(&self) -> Result<Vec<Change>, StoreError> {
        let path = self.dir.join("history.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        // A line torn by a crash mid-append is the last one; skip what does not parse.
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Where an artifact lives.
    pub fn artifact_path(&self, digest: &str) -> PathBuf {
        self.dir.join("artifacts").join(format!("{digest}.wasm"))
    }

    /// Whether the store has an artifact.
    pub fn has_artifact(&self, digest: &str) -> bool {
        crate::snapshot::is_digest(digest) && self.artifact_path(digest).is_file()
    }

    /// Stores an artifact; returns its sha256.
    pub fn put_artifact(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = sha256_hex(bytes);
        let path = self.artifact_path(&digest);
        if !path.is_file() {
            write_atomic(&path, bytes, Mode::Public)?;
        }
        Ok(digest)
    }

    /// Keeps a signature (hex) of an artifact beside it, once.
    pub fn add_signature(&self, digest: &str, signature: &str) -> Result<(), StoreError> {
        let mut all = self.signatures(digest);
        let signature = signature.trim().to_ascii_lowercase();
        if all.contains(&signature) {
            return Ok(());
        }
        all.push(signature);
        let path = self.dir.join("artifacts").join(format!("{digest}.sig"));
        write_atomic(&path, (all.join("\n") + "\n").as_bytes(), Mode::Public)?;
        Ok(())
    }

    /// The signatures (hex) kept beside an artifact.
    pub fn signatures(&self, digest: &str) -> Vec<String> {
        if !crate::snapshot::is_digest(digest) {
            return Vec::new();
        }
        let path = self.dir.join("artifacts").join(format!("{digest}.sig"));
        std::fs::read_to_string(path)
            .map(|t| {
                t.lines()
                    .map(str::to_string)
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An artifact's bytes.
    pub fn artifact(&self, digest: &str) -> Option<Vec<u8>> {
        if !crate::snapshot::is_digest(digest) {
            return None;
        }
        std::fs::read(self.artifact_path(digest)).ok()
    }

    /// Every pull secret (`pull-secrets.json`, owner-only), by `namespace/name`.
    pub fn pull_secrets(&self) -> Result<super::PullSecrets, StoreError> {
        let path = self.dir.join(PULL_SECRETS);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Keeps pull secret `key`; the caller orders writers (the mesh lock).
    pub fn put_pull_secret(
        &self,
        key: &str,
        secret: &crate::control::pull_secrets::PullSecret,
    ) -> Result<(), StoreError> {
        let mut all = self.pull_secrets()?;
        all.insert(key.to_string(), secret.clone());
        let path = self.dir.join(PULL_SECRETS);
        let bytes = serde_json::to_vec_pretty(&all).map_err(|e| StoreError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(write_atomic(&path, &bytes, Mode::Private)?)
    }

    /// Keeps a copy of a secret held elsewhere (a shared store) where the CLI looks for it,
    /// owner-only.
    pub fn keep_copy(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == value) {
            return Ok(());
        }
        Ok(write_atomic(&path, value.as_bytes(), Mode::Private)?)
    }

    /// A secret kept in the data directory (`operator.token`, `secret`): created, owner-only,
    /// when the file does not exist; any other problem (unreadable, not what this store
    /// writes) is an error naming the file, never a silent replacement that would void every
    /// token issued from it.
    pub fn secret(&self, name: &str) -> Result<String, StoreError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
                if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(text.to_string());
                }
                Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    reason: "not a secret this control plane wrote (64 hex digits); restore it \
                             from a backup, or remove it to make a new one, which voids every \
                             token issued so far"
                        .into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = crate::random::secure_bytes().map_err(io(&path))?;
                let value = hex::encode(bytes);
                write_atomic(&path, value.as_bytes(), Mode::Private)?;
                Ok(value)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::{Stored, key};

    #[test]
    fn state_history_artifacts_and_secrets_survive_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let store = FileStore::open(dir.path()).expect("open");
        let mut state = store.load().expect("empty");
        assert_eq!(state, State::default());
        state.revision = 3;
        state.resources.insert(
            key("VirtualService", "default", "payments"),
            Stored {
                kind: "VirtualService".into(),
                namespace: "default".into(),
                name: "payments".into(),
                revision: 3,
                document: serde_json::json!({"kind": "VirtualService"}),
            },
        );
        store.save(&state).expect("save");
        store
            .record(&Change {
                revision: 3,
                at_ms: 1,
                what: vec!["apply VirtualService default/payments".into()],
            })
            .expect("record");
        let digest = store.put_artifact(b"\0asm component").expect("put");
        let token = store.secret("operator.token").expect("token");

        let again = FileStore::open(dir.path()).expect("reopen");
        assert_eq!(again.load().expect("load"), state);
        assert_eq!(again.history().expect("history")[0].revision, 3);
        assert!(again.has_artifact(&digest));
        assert_eq!(
            again.artifact(&digest).as_deref(),
            Some(&b"\0asm component"[..])
        );
        assert_eq!(again.secret("operator.token").expect("token"), token);
        assert_eq!(token.len(), 64);
        assert!(
            !again.has_artifact("../state"),
            "only digests name artifacts"
        );
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_mesh() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("state.json"), b"{not json").expect("write");
        let err = FileStore::open(dir.path())
            .expect("open")
            .load()
            .expect_err("corrupt");
        assert!(err.to_string().contains("corrupt state"), "{err}");
    }

    #[test]
    fn a_damaged_secret_stops_the_start_and_is_never_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let store = FileStore::open(dir.path()).expect("open");
        let token = store.secret("secret").expect("created");
        let path = dir.path().join("secret");
        let mut damaged = std::fs::read(&path).expect("read");
        damaged.push(0xff);
        std::fs::write(&path, &damaged).expect("damage");
        let err = store.secret("secret").expect_err("damaged");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&path).expect("kept"),
            damaged,
            "left as found"
        );
        // A directory where the file should be cannot be read: an error too, not a new secret.
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("dir in the way");
        assert!(store.secret("secret").is_err());
        std::fs::remove_dir(&path).expect("rmdir");
        assert_ne!(store.secret("secret").expect("missing: made anew"), token);
    }

    #[test]
    fn state_history_and_secrets_are_private_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let data = dir.path().join("data");
        let store = FileStore::open(&data).expect("open");
        store.secret("operator.token").expect("token");
        store.save(&State::default()).expect("save");
        store
            .record(&Change {
                revision: 1,
                at_ms: 1,
                what: vec![],
            })
            .expect("record");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        for f in ["operator.token", "state.json", "history.jsonl"] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
    }
}
