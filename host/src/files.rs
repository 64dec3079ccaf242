//! Files written whole: to a temporary name, synced and renamed into place, so a crash leaves
//! the old content or the new, never a torn mix; and with their permissions from the moment
//! they exist, so a secret is never readable by others, not even for an instant.

use std::io::Write;
use std::path::Path;

/// Who may read a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The owner only (0600): state, secrets, keys, compiled code.
    Private,
    /// Everyone may read (0644): what is public anyway (the trust bundle, artifacts).
    Public,
}

impl Mode {
    /// The permission bits.
    pub fn bits(self) -> u32 {
        match self {
            Mode::Private => 0o600,
            Mode::Public => 0o644,
        }
    }
}

/// A file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    /// Which file.
    pub path: String,
    /// Why.
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` atomically, readable as `mode` says (the parent directory is
/// created if missing).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Mode) -> Result<(), WriteError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(at(dir))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    // A temporary file left by a crash would keep its old mode through `open`: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode.bits())
        .open(&tmp)
        .map_err(at(&tmp))?;
    f.write_all(bytes).map_err(at(&tmp))?;
    f.sync_all().map_err(at(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(at(path))?;
    // The rename lives in the directory: without this a power loss could bring back the old
    // file after the caller was told the new one was saved.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(at(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_have_their_mode_and_replace_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("sub/secret");
        write_atomic(&secret, b"one", Mode::Private).expect("write");
        write_atomic(&secret, b"two", Mode::Private).expect("rewrite");
        assert_eq!(std::fs::read(&secret).expect("read"), b"two");
        let mode = std::fs::metadata(&secret)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let public = dir.path().join("bundle.pem");
        write_atomic(&public, b"pem", Mode::Public).expect("write");
        let mode = std::fs::metadata(&public)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o022, 0, "no one else may write it");
        assert_eq!(mode & 0o400, 0o400);
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub"))
                .expect("ls")
                .count(),
            1
        );
    }
}
