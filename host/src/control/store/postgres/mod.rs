//! The shared store: one PostgreSQL database that any number of `weft control` replicas keep
//! their state in.
//!
//! - Changes are optimistic: a replica checks a change against the revision it holds and the
//!   commit (one transaction holding the revision row) is refused as stale when another replica
//!   moved past it, so the replica checks again against the new state. Nothing is lost and
//!   nothing is checked against a state it does not land on.
//! - Every write ends with `NOTIFY weft`; a listener per replica wakes its follower, which also
//!   polls the versions every second (a notification is lost while a connection is down).
//! - Singleton work (expiring leases) is done by the replica holding a session advisory lock,
//!   which PostgreSQL releases when that replica's connection dies.
//! - Secrets, pull secrets and the CA's keys are sealed with the operator's store key
//!   ([`super::seal`]); the database never holds them in clear.
//!
//! Calls are blocking, on the store's own threads (the `postgres` client), so the mesh lock
//! never spans an await; a database that does not answer fails a call within seconds rather
//! than holding it.

mod artifacts;
mod sealed;
mod threads;

use super::tls::StoreTls;
use super::{
    Change, CommitError, FileStore, Registration, SealKey, State, StoreError, Stored, Versions,
};
use postgres::{Client, Config};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use threads::{spawn_listener, spawn_singleton};

/// The schema, one migration per entry, applied in order at start under an advisory lock.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE weft_meta (
    id integer PRIMARY KEY CHECK (id = 1),
    revision bigint NOT NULL,
    workloads_version bigint NOT NULL
);
INSERT INTO weft_meta VALUES (1, 0, 0);
CREATE TABLE weft_resources (
    key text PRIMARY KEY,
    kind text NOT NULL,
    namespace text NOT NULL,
    name text NOT NULL,
    revision bigint NOT NULL,
    document text NOT NULL
);
CREATE TABLE weft_fetched (url text PRIMARY KEY, digest text NOT NULL);
CREATE TABLE weft_history (revision bigint PRIMARY KEY, at_ms bigint NOT NULL, what text NOT NULL);
CREATE TABLE weft_workloads (
    id text PRIMARY KEY,
    service text NOT NULL,
    namespace text NOT NULL,
    labels text NOT NULL,
    address text NOT NULL,
    lease_until_ms bigint NOT NULL,
    replica text NOT NULL
);
CREATE TABLE weft_replicas (id text PRIMARY KEY, seen_ms bigint NOT NULL);
CREATE TABLE weft_artifacts (digest text PRIMARY KEY, bytes bytea NOT NULL);
CREATE TABLE weft_signatures (
    digest text NOT NULL,
    signature text NOT NULL,
    PRIMARY KEY (digest, signature)
);
CREATE TABLE weft_secrets (name text PRIMARY KEY, sealed text NOT NULL);
CREATE TABLE weft_pull_secrets (key text PRIMARY KEY, sealed text NOT NULL);
CREATE TABLE weft_ca (
    id integer PRIMARY KEY CHECK (id = 1),
    sealed text NOT NULL,
    version bigint NOT NULL
);
"];

/// The advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x7765_6674_0001;
/// The advisory lock the singleton replica holds.
const SINGLETON_LOCK: i64 = 0x7765_6674_0002;
/// How long a call may wait for its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A database that refused a connection is not dialled again sooner: callers hold the mesh
/// lock, and each would otherwise wait out a connect timeout.
const REDIAL_AFTER: Duration = Duration::from_millis(500);

type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// The worker thread's connection, made on demand and again after it breaks.
struct Session {
    config: Config,
    tls: StoreTls,
    client: Option<Client>,
    refused: Option<(Instant, String)>,
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

impl Session {
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            if let Some((at, why)) = &self.refused
                && at.elapsed() < REDIAL_AFTER
            {
                return Err(StoreError::Database(format!("unreachable: {why}")));
            }
            match self.config.connect(self.tls.clone()) {
                Ok(c) => {
                    self.client = Some(c);
                    self.refused = None;
                }
                Err(e) => {
                    let why = describe(&e);
                    self.refused = Some((Instant::now(), why.clone()));
                    return Err(StoreError::Database(format!("unreachable: {why}")));
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Err(StoreError::Database("no connection".into()));
        };
        match f(client) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_closed() || client.is_closed() {
                    self.client = None;
                }
                Err(StoreError::Database(describe(&e)))
            }
        }
    }
}

/// A replica's handle on the shared store.
pub struct PgStore {
    jobs: mpsc::Sender<Job>,
    key: SealKey,
    /// Read-through copies of artifacts (content-addressed, so never stale).
    cache: FileStore,
    changed: Arc<tokio::sync::Notify>,
    leader: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    shown: String,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn as_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: format!("the PostgreSQL store's {what}"),
        reason: e.to_string(),
    }
}

impl PgStore {
    /// Connects to `url`, applies the schema's migrations, and starts the listener and the
    /// singleton lease; `cache_dir` keeps local copies of artifacts.
    pub fn open(
        url: &str,
        key: SealKey,
        tls: StoreTls,
        cache_dir: &Path,
    ) -> Result<PgStore, StoreError> {
        let shown = redact(url);
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("{shown}: {e}")))?;
        config
            .connect_timeout(Duration::from_secs(2))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("weft-control")
            .options("-c statement_timeout=5000");
        let (jobs, queue) = mpsc::channel::<Job>();
        let mut session = Session {
            config: config.clone(),
            tls: tls.clone(),
            client: None,
            refused: None,
        };
        std::thread::Builder::new()
            .name("weft-store".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job(&mut session);
                }
            })
            .map_err(|e| StoreError::Database(format!("starting the store's thread: {e}")))?;
        let store = PgStore {
            jobs,
            key,
            cache: FileStore::open(cache_dir)?,
            changed: Arc::new(tokio::sync::Notify::new()),
            leader: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            shown: shown.clone(),
        };
        store.migrate()?;
        spawn_listener(
            config.clone(),
            tls.clone(),
            store.changed.clone(),
            store.stop.clone(),
        )?;
        spawn_singleton(config, tls, store.leader.clone(), store.stop.clone())?;
        tracing::info!(store = %shown, "PostgreSQL store open");
        Ok(store)
    }

    /// The database, without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Woken when another replica (or this one) wrote something.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Whether this replica does the singleton work now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |s: &mut Session| {
                let _ = tx.send(s.run(f));
            }))
            .map_err(|_| StoreError::Database("the store's thread stopped".into()))?;
        rx.recv_timeout(CALL_TIMEOUT).map_err(|_| {
            StoreError::Database(format!("no answer within {}s", CALL_TIMEOUT.as_secs()))
        })?
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i32;
        let found = self.call(move |c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS weft_schema (version integer NOT NULL)")?;
            let at: Option<i32> = tx
                .query_one("SELECT max(version) FROM weft_schema", &[])?
                .get(0);
            let at = at.unwrap_or(0);
            if at > known {
                return Ok(at);
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(at as usize) {
                tx.batch_execute(sql)?;
                tx.execute("INSERT INTO weft_schema VALUES ($1)", &[&(i as i32 + 1)])?;
            }
            tx.commit()?;
            Ok(at)
        })?;
        if found > known {
            return Err(StoreError::Database(format!(
                "the store's schema is version {found}, newer than this weft knows ({known}): upgrade weft"
            )));
        }
        if found < known {
            tracing::info!(from = found, to = known, "store schema migrated");
        }
        Ok(())
    }

    /// `Ok` when the database answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.call(|c| c.simple_query("SELECT 1").map(drop))
    }

    /// The versions another replica's write moves.
    pub fn versions(&self) -> Result<Versions, StoreError> {
        self.call(|c| {
            let row = c.query_one(
                "SELECT m.revision, m.workloads_version, \
                 coalesce((SELECT version FROM weft_ca WHERE id = 1), 0) FROM weft_meta m",
                &[],
            )?;
            Ok(Versions {
                revision: as_u64(row.get(0)),
                workloads: as_u64(row.get(1)),
                ca: as_u64(row.get(2)),
            })
        })
    }

    /// The whole state, read in one snapshot of the database.
    pub fn load(&self) -> Result<State, StoreError> {
        type Rows = (
            i64,
            Vec<(String, String, String, String, i64, String)>,
            Vec<(String, String, String, String, String, i64, String)>,
            Vec<(String, String)>,
        );
        let (revision, resources, workloads, fetched): Rows = self.call(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let revision: i64 = tx
                .query_one("SELECT revision FROM weft_meta WHERE id = 1", &[])?
                .get(0);
            let resources = tx
                .query(
                    "SELECT key, kind, namespace, name, revision, document FROM weft_resources",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
                .collect();
            let workloads = tx
                .query(
                    "SELECT id, service, namespace, labels, address, lease_until_ms, replica \
                     FROM weft_workloads",
                    &[],
                )?
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get(1),
                        r.get(2),
                        r.get(3),
                        r.get(4),
                        r.get(5),
                        r.get(6),
                    )
                })
                .collect();
            let fetched = tx
                .query("SELECT url, digest FROM weft_fetched", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            tx.commit()?;
            Ok((revision, resources, workloads, fetched))
        })?;
        let mut state = State {
            revision: as_u64(revision),
            fetched: fetched.into_iter().collect(),
            ..State::default()
        };
        for (key, kind, namespace, name, revision, document) in resources {
            let document = serde_json::from_str(&document)
                .map_err(|e| corrupt(&format!("resource {key}"), e))?;
            state.resources.insert(
                key,
                Stored {
                    kind,
                    namespace,
                    name,
                    revision: as_u64(revision),
                    document,
                },
            );
        }
        for (id, service, namespace, labels, address, lease, replica) in workloads {
            let labels: BTreeMap<String, String> =
                serde_json::from_str(&labels).map_err(|e| corrupt(&format!("workload {id}"), e))?;
            state.workloads.insert(
                id.clone(),
                Registration {
                    id,
                    service,
                    namespace,
                    labels,
                    address,
                    lease_until_ms: as_u64(lease),
                    replica,
                },
            );
        }
        Ok(state)
    }

    /// Keeps `next`'s resources, fetched URLs and revision, and `change` in the history, if
    /// the store is still at `prev`'s revision.
    pub fn commit(&self, prev: &State, next: &State, change: &Change) -> Result<(), CommitError> {
        let base = as_i64(prev.revision);
        let revision = as_i64(next.revision);
        let upserts: Vec<(String, Stored)> = next
            .resources
            .iter()
            .filter(|(k, s)| prev.resources.get(*k) != Some(*s))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let deletes: Vec<String> = prev
            .resources
            .keys()
            .filter(|k| !next.resources.contains_key(*k))
            .cloned()
            .collect();
        let fetched: Vec<(String, String)> = next
            .fetched
            .iter()
            .filter(|(u, d)| prev.fetched.get(*u) != Some(*d))
            .map(|(u, d)| (u.clone(), d.clone()))
            .collect();
        let what = serde_json::to_string(&change.what).map_err(|e| corrupt("history", e))?;
        let at = as_i64(change.at_ms);
        let stale = self.call(move |c| {
            let mut tx = c.transaction()?;
            let now: i64 = tx
                .query_one(
                    "SELECT revision FROM weft_meta WHERE id = 1 FOR UPDATE",
                    &[],
                )?
                .get(0);
            if now != base {
                return Ok(Some(now));
            }
            for (key, s) in &upserts {
                let document = s.document.to_string();
                tx.execute(
                    "INSERT INTO weft_resources VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (key) DO UPDATE SET kind = EXCLUDED.kind, \
                     namespace = EXCLUDED.namespace, name = EXCLUDED.name, \
                     revision = EXCLUDED.revision, document = EXCLUDED.document",
                    &[
                        key,
                        &s.kind,
                        &s.namespace,
                        &s.name,
                        &as_i64(s.revision),
                        &document,
                    ],
                )?;
            }
            for key in &deletes {
                tx.execute("DELETE FROM weft_resources WHERE key = $1", &[key])?;
            }
            for (url, digest) in &fetched {
                tx.execute(
                    "INSERT INTO weft_fetched VALUES ($1, $2) \
                     ON CONFLICT (url) DO UPDATE SET digest = EXCLUDED.digest",
                    &[url, digest],
                )?;
            }
            tx.execute(
                "INSERT INTO weft_history VALUES ($1, $2, $3)",
                &[&revision, &at, &what],
            )?;
            tx.execute(
                "UPDATE weft_meta SET revision = $1 WHERE id = 1",
                &[&revision],
            )?;
            tx.batch_execute("NOTIFY weft")?;
            tx.commit()?;
            Ok(None)
        })?;
        match stale {
            Some(now) => Err(CommitError::Stale {
                revision: as_u64(now),
            }),
            None => Ok(()),
        }
    }

    /// Keeps the registrations of `ids` as `state` has them. A connected registration (lease
    /// 0) always wins; a lease starting is kept only by the replica the registration is on, so
    /// a replica noticing a stream's end late never starts the lease of a sidecar that has
    /// reconnected elsewhere. A registration `state` lacks is removed only once its lease is
    /// over.
    pub fn save_workloads(&self, state: &State, ids: &[String]) -> Result<(), StoreError> {
        let mut rows = Vec::new();
        let mut gone = Vec::new();
        for id in ids {
            match state.workloads.get(id) {
                Some(w) => rows.push((
                    w.clone(),
                    serde_json::to_string(&w.labels).map_err(|e| corrupt("labels", e))?,
                )),
                None => gone.push(id.clone()),
            }
        }
        let now = as_i64(crate::control::server::now_ms());
        self.call(move |c| {
            let mut tx = c.transaction()?;
            for (w, labels) in &rows {
                tx.execute(
                    "INSERT INTO weft_workloads VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (id) DO UPDATE SET service = EXCLUDED.service, \
                     namespace = EXCLUDED.namespace, labels = EXCLUDED.labels, \
                     address = EXCLUDED.address, lease_until_ms = EXCLUDED.lease_until_ms, \
                     replica = EXCLUDED.replica \
                     WHERE EXCLUDED.lease_until_ms = 0 OR weft_workloads.replica = EXCLUDED.replica",
                    &[
                        &w.id,
                        &w.service,
                        &w.namespace,
                        labels,
                        &w.address,
                        &as_i64(w.lease_until_ms),
                        &w.replica,
                    ],
                )?;
            }
            for id in &gone {
                tx.execute(
                    "DELETE FROM weft_workloads WHERE id = $1 AND lease_until_ms <> 0 \
                     AND lease_until_ms < $2",
                    &[id, &now],
                )?;
            }
            tx.execute(
                "UPDATE weft_meta SET workloads_version = workloads_version + 1 WHERE id = 1",
                &[],
            )?;
            tx.batch_execute("NOTIFY weft")?;
            tx.commit()
        })
    }

    /// Says this replica is alive (its sidecars' registrations stay connected).
    pub fn heartbeat(&self, replica: &str) -> Result<(), StoreError> {
        let replica = replica.to_string();
        let now = as_i64(crate::control::server::now_ms());
        self.call(move |c| {
            c.execute(
                "INSERT INTO weft_replicas VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET seen_ms = EXCLUDED.seen_ms",
                &[&replica, &now],
            )
            .map(drop)
        })
    }

    /// The singleton's sweep: registrations held by a replica silent for `silent` start their
    /// lease (their sidecars reconnect elsewhere, or their endpoints go when it ends), and
    /// leases that ended are removed. Returns how many registrations changed.
    pub fn sweep(&self, lease: Duration, silent: Duration) -> Result<u64, StoreError> {
        let now = as_i64(crate::control::server::now_ms());
        let until = now + as_i64(lease.as_millis() as u64);
        let alive_since = now - as_i64(silent.as_millis() as u64);
        self.call(move |c| {
            let mut tx = c.transaction()?;
            let orphaned = tx.execute(
                "UPDATE weft_workloads SET lease_until_ms = $1 WHERE lease_until_ms = 0 \
                 AND replica NOT IN (SELECT id FROM weft_replicas WHERE seen_ms > $2)",
                &[&until, &alive_since],
            )?;
            let expired = tx.execute(
                "DELETE FROM weft_workloads WHERE lease_until_ms <> 0 AND lease_until_ms < $1",
                &[&now],
            )?;
            // Replicas gone for an hour are forgotten.
            tx.execute(
                "DELETE FROM weft_replicas WHERE seen_ms < $1",
                &[&(now - 3_600_000)],
            )?;
            if orphaned + expired > 0 {
                tx.execute(
                    "UPDATE weft_meta SET workloads_version = workloads_version + 1 WHERE id = 1",
                    &[],
                )?;
                tx.batch_execute("NOTIFY weft")?;
            }
            tx.commit()?;
            Ok(orphaned + expired)
        })
    }

    /// The history, oldest first.
    pub fn history(&self) -> Result<Vec<Change>, StoreError> {
        let rows: Vec<(i64, i64, String)> = self.call(|c| {
            Ok(c.query(
                "SELECT revision, at_ms, what FROM weft_history ORDER BY revision",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
        })?;
        rows.into_iter()
            .map(|(revision, at, what)| {
                Ok(Change {
                    revision: as_u64(revision),
                    at_ms: as_u64(at),
                    what: serde_json::from_str(&what).map_err(|e| corrupt("history", e))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact("postgres://weft:hunter2@db.example:5432/weft"),
            "postgres://weft@db.example:5432/weft"
        );
        assert_eq!(
            redact("postgres://weft@127.0.0.1/weft"),
            "postgres://weft@127.0.0.1/weft"
        );
        assert_eq!(redact("host=/tmp user=weft"), "host=/tmp user=weft");
    }
}
