//! The control plane's durable state: the resources in force with the revision each was last
//! changed at, the revision counter, a history of changes, the registered workloads with their
//! leases, the artifacts, the secrets and pull secrets, and (for a shared store) the CA.
//!
//! Two stores keep it with the same semantics: [`files::FileStore`], the data directory (the
//! default, for one control plane), and [`postgres::PgStore`], one PostgreSQL database shared by
//! any number of replicas. Both are called synchronously under the mesh lock, as a file write
//! always was: a change is durable before it is made current.

pub mod files;
mod metrics;
pub mod postgres;
pub mod seal;
pub mod tls;

use crate::files::WriteError;
use crate::identity::CaRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub use files::FileStore;
pub use metrics::StoreMetrics;
pub use postgres::PgStore;
pub use seal::SealKey;

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The PostgreSQL store failed or could not be reached.
    #[error("the PostgreSQL store: {0}")]
    Database(String),
    /// A sealed secret did not open.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// A state file exists but does not parse.
    #[error("{path}: corrupt state: {reason}")]
    Corrupt {
        /// Which file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A resource as applied, with the revision it was last changed at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// `VirtualService`, `DestinationRule`, `WasmPlugin`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The revision that last changed it.
    pub revision: u64,
    /// The whole document as applied.
    pub document: serde_json::Value,
}

/// One entry of the change history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The revision this change made.
    pub revision: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What changed (`apply VirtualService default/payments`).
    pub what: Vec<String>,
}

fn default_namespace() -> String {
    crate::names::DEFAULT_NAMESPACE.to_string()
}

/// A registered workload (a sidecar and its app).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The sidecar's id (unique per process).
    pub id: String,
    /// Its service's name.
    pub service: String,
    /// Its namespace; state saved before namespaces existed reads as `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its inbound address.
    pub address: String,
    /// When its lease ends unless it renews (ms since the Unix epoch); 0 while connected.
    pub lease_until_ms: u64,
    /// The control plane replica its stream is on (empty with the file store).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
}

/// Everything the control plane keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The newest revision.
    pub revision: u64,
    /// Resources by `kind/namespace/name`.
    pub resources: BTreeMap<String, Stored>,
    /// Registered workloads by id.
    pub workloads: BTreeMap<String, Registration>,
    /// WasmPlugin URLs downloaded into the artifact store, url → sha256.
    #[serde(default)]
    pub fetched: BTreeMap<String, String>,
}

/// The key a resource is stored under.
pub fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// Why a change was not kept.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another replica changed the mesh since this change was checked: check it again against
    /// the state at `revision`.
    #[error("the mesh changed at revision {revision} while this change was checked")]
    Stale {
        /// The revision in the store now.
        revision: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a replica compares to know whether another changed something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Versions {
    /// The mesh's revision.
    pub revision: u64,
    /// Bumped by every registration or lease written.
    pub workloads: u64,
    /// Bumped by every CA change.
    pub ca: u64,
}

/// Which store.
pub enum Backend {
    /// The data directory.
    Files(FileStore),
    /// A PostgreSQL database shared by replicas.
    Postgres(PgStore),
}

/// Where the control plane keeps its state, measured.
pub struct Store {
    backend: Backend,
    metrics: StoreMetrics,
}

/// A registry credential (see [`crate::control::pull_secrets`]).
pub type PullSecrets = BTreeMap<String, crate::control::pull_secrets::PullSecret>;

/// What a call's result says of the store: it answered or it failed.
trait Outcome {
    fn outcome(&self) -> &'static str;
}

impl<T> Outcome for Result<T, StoreError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(_) => "ok",
            Err(StoreError::Database(_)) => "error",
            Err(_) => "refused",
        }
    }
}

impl Outcome for Result<(), CommitError> {
    fn outcome(&self) -> &'static str {
        match self {
            Ok(()) => "ok",
            Err(CommitError::Stale { .. }) => "stale",
            Err(CommitError::Store(StoreError::Database(_))) => "error",
            Err(CommitError::Store(_)) => "refused",
        }
    }
}

impl Store {
    /// A store over `backend`, its metrics in `registry`.
    pub fn new(backend: Backend, registry: &prometheus::Registry) -> Result<Store, StoreError> {
        let metrics = StoreMetrics::register(registry)
            .map_err(|e| StoreError::Database(format!("registering the store's metrics: {e}")))?;
        Ok(Store { backend, metrics })
    }

    /// The file store in `dir`, unmeasured (tests).
    pub fn open_files(dir: &Path) -> Result<Store, StoreError> {
        Store::new(
            Backend::Files(FileStore::open(dir)?),
            &prometheus::Registry::new(),
        )
    }

    /// Its metrics.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    fn timed<R: Outcome>(&self, operation: &str, f: impl FnOnce(&Backend) -> R) -> R {
        let started = std::time::Instant::now();
        let r = f(&self.backend);
        self.metrics
            .observe(operation, r.outcome(), started.elapsed().as_secs_f64());
        r
    }

    /// Whether replicas may share it.
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The PostgreSQL store, if this is one.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Files(_) => None,
        }
    }

    /// `Ok` if a change could be kept now. What `/readyz` reports.
    pub fn check_ready(&self) -> Result<(), StoreError> {
        self.timed("ready", |b| match b {
            Backend::Files(f) => f.check_writable(),
            Backend::Postgres(pg) => pg.ping(),
        })
    }

    /// The whole state, or an empty one for a new store.
    pub fn load(&self) -> Result<State, StoreError> {
        self.timed("load", |b| match b {
            Backend::Files(f) => f.load(),
            Backend::Postgres(pg) => pg.load(),
        })
    }

    /// Keeps `next` (made from `prev`) and its history entry, or nothing: a shared store
    /// refuses it as stale when another replica moved past `prev`'s revision.
    pub fn commit(&self, prev: &State, next: &State, change: &Change) -> Result<(), CommitError> {
        let r = self.timed("commit", |b| match b {
            Backend::Files(f) => {
                f.save(next)?;
                // The state is saved, so the change stands; a history line is a record of
                // it, not it.
                if let Err(e) = f.record(change) {
                    tracing::warn!("cannot record history: {e}");
                }
                Ok(())
            }
            Backend::Postgres(pg) => pg.commit(prev, next, change),
        });
        if matches!(r, Err(CommitError::Stale { .. })) {
            self.metrics.stale.inc();
        }
        r
    }

    /// Keeps the registrations of `ids` as `state` has them (removed where it has none).
    pub fn save_workloads(&self, state: &State, ids: &[String]) -> Result<(), StoreError> {
        self.timed("save_workloads", |b| match b {
            Backend::Files(f) => f.save(state),
            Backend::Postgres(pg) => pg.save_workloads(state, ids),
        })
    }

    /// The history, oldest first.
    pub fn history(&self) -> Result<Vec<Change>, StoreError> {
        self.timed("history", |b| match b {
            Backend::Files(f) => f.history(),
            Backend::Postgres(pg) => pg.history(),
        })
    }

    /// Whether the store has an artifact.
    pub fn has_artifact(&self, digest: &str) -> bool {
        match &self.backend {
            Backend::Files(f) => f.has_artifact(digest),
            Backend::Postgres(pg) => pg.has_artifact(digest),
        }
    }

    /// Stores an artifact; returns its sha256.
    pub fn put_artifact(&self, bytes: &[u8]) -> Result<String, StoreError> {
        self.timed("put_artifact", |b| match b {
            Backend::Files(f) => f.put_artifact(bytes),
            Backend::Postgres(pg) => pg.put_artifact(bytes),
        })
    }

    /// An artifact's bytes.
    pub fn artifact(&self, digest: &str) -> Option<Vec<u8>> {
        match &self.backend {
            Backend::Files(f) => f.artifact(digest),
            Backend::Postgres(pg) => pg.artifact(digest),
        }
    }

    /// Keeps a signature (hex) of an artifact, once.
    pub fn add_signature(&self, digest: &str, signature: &str) -> Result<(), StoreError> {
        self.timed("add_signature", |b| match b {
            Backend::Files(f) => f.add_signature(digest, signature),
            Backend::Postgres(pg) => pg.add_signature(digest, signature),
        })
    }

    /// The signatures (hex) kept for an artifact.
    pub fn signatures(&self, digest: &str) -> Vec<String> {
        match &self.backend {
            Backend::Files(f) => f.signatures(digest),
            Backend::Postgres(pg) => pg.signatures(digest),
        }
    }

    /// A secret (`operator.token`, `secret`): made once, the same for every replica after.
    pub fn secret(&self, name: &str) -> Result<String, StoreError> {
        self.timed("secret", |b| match b {
            Backend::Files(f) => f.secret(name),
            Backend::Postgres(pg) => pg.secret(name),
        })
    }

    /// Every pull secret, by `namespace/name`.
    pub fn pull_secrets(&self) -> Result<PullSecrets, StoreError> {
        self.timed("pull_secrets", |b| match b {
            Backend::Files(f) => f.pull_secrets(),
            Backend::Postgres(pg) => pg.pull_secrets(),
        })
    }

    /// Keeps pull secret `key` (`namespace/name`).
    pub fn put_pull_secret(
        &self,
        key: &str,
        secret: &crate::control::pull_secrets::PullSecret,
    ) -> Result<(), StoreError> {
        self.timed("put_pull_secret", |b| match b {
            Backend::Files(f) => f.put_pull_secret(key, secret),
            Backend::Postgres(pg) => pg.put_pull_secret(key, secret),
        })
    }
}

/// The CA as a shared store keeps it, with the version it was written at.
#[derive(Debug, Clone)]
pub struct StoredCa {
    /// The roots and keys.
    pub record: CaRecord,
    /// Bumped by every change.
    pub version: u64,
}
