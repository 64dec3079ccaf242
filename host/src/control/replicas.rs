//! Replicas of `weft control` sharing one PostgreSQL store: each follows what the others
//! write (woken by `NOTIFY`, polling the versions every second as well), says it is alive,
//! and the one holding the singleton lock sweeps the leases of sidecars whose replica went
//! silent or whose lease ended. Every replica signs with the CA kept in the store.

use super::changes;
use super::istio;
use super::registry::push;
use super::server::{ControlError, Shared, now_ms};
use super::store::{PgStore, Registration, StoreError};
use crate::identity::{Ca, system_clock};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// How often a replica looks at the store's versions when no notification came.
const POLL: Duration = Duration::from_secs(1);

/// A replica's name in the store: its host, listening port and process, so a restarted
/// replica is a new one (its predecessor's sidecars are swept once it falls silent).
pub(super) fn replica_name(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}:{}:{}", listen.port(), std::process::id())
}

/// The CA the store keeps, made by the first replica to start.
pub(super) fn shared_ca(pg: &PgStore, trust_domain: &str) -> Result<Ca, ControlError> {
    let stored = match pg.ca()? {
        Some(stored) => stored,
        None => pg.init_ca(&Ca::generate_record(trust_domain, system_clock())?)?,
    };
    Ok(Ca::from_record(
        &stored.record,
        trust_domain,
        system_clock(),
    )?)
}

/// Follows the store until `shutdown`.
pub(super) async fn follow(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Some(changed) = shared.store.postgres().map(PgStore::changed) else {
        return;
    };
    let mut failing = false;
    loop {
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
        let syncing = shared.clone();
        let started = std::time::Instant::now();
        let synced = tokio::task::spawn_blocking(move || sync(&syncing)).await;
        let outcome = if matches!(synced, Ok(Ok(_))) {
            "ok"
        } else {
            "error"
        };
        shared
            .store
            .metrics()
            .observe("follow", outcome, started.elapsed().as_secs_f64());
        match synced {
            Ok(Ok(moved)) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("the store answers again; following it");
                }
                if moved {
                    warm(&shared);
                }
            }
            Ok(Err(e)) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        "cannot read the store; serving the state held in memory meanwhile: {e}"
                    );
                }
            }
            Err(e) => tracing::error!("following the store failed: {e}"),
        }
    }
}

/// Compiles, behind everything else, the optimized code of every stored plugin in force that
/// this replica has none of (another replica took the push or the fetch), so its sidecars get
/// code rather than compiling for themselves.
pub(super) fn warm(shared: &Arc<Shared>) {
    let digests: Vec<String> = shared
        .mesh
        .lock()
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            istio::Spec::WasmPlugin(wp) => match wp.source() {
                Ok(istio::WasmSource::Stored(digest)) => Some(digest),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let compiling = shared.clone();
    tokio::task::spawn_blocking(move || {
        for digest in digests {
            if compiling.checker.has_optimized(&digest) {
                continue;
            }
            if let Some(bytes) = compiling.store.artifact(&digest) {
                compiling.checker.optimize(&bytes);
            }
        }
    });
}

/// Brings this replica up to the store's versions: resources and registrations (pushing what
/// they change), and the CA. Says whether the resources moved.
pub(super) fn sync(shared: &Shared) -> Result<bool, StoreError> {
    let Some(pg) = shared.store.postgres() else {
        return Ok(false);
    };
    let mut moved = false;
    let now = pg.versions()?;
    let seen = *shared.seen.lock();
    let unsaved = shared.unsaved.swap(false, Ordering::SeqCst);
    if unsaved || now.revision != seen.revision || now.workloads != seen.workloads {
        let mut state = match pg.load() {
            Ok(state) => state,
            Err(e) => {
                shared.unsaved.fetch_or(unsaved, Ordering::SeqCst);
                return Err(e);
            }
        };
        let mut mesh = shared.mesh.lock();
        // This replica's streams are the truth about its sidecars: one the store does not
        // have as connected anywhere (a write lost while the store was away) is written again.
        let mut reassert = Vec::new();
        for (id, conn) in &mesh.sidecars {
            if conn.stream.is_none() {
                continue;
            }
            let Some(mine) = mesh.state.workloads.get(id) else {
                continue;
            };
            match state.workloads.get(id) {
                Some(w) if w == mine => {}
                // It reconnected through another replica; this stream is ending.
                Some(w) if w.lease_until_ms == 0 && w.replica != mine.replica => {}
                _ => {
                    let connected = Registration {
                        lease_until_ms: 0,
                        ..mine.clone()
                    };
                    state.workloads.insert(id.clone(), connected);
                    reassert.push(id.clone());
                }
            }
        }
        if state.revision < mesh.state.revision {
            // Read before a change this replica committed since: its resources are older than
            // those in force, which stay (a sidecar never steps back to them).
            state.revision = mesh.state.revision;
            state.resources = mesh.state.resources.clone();
            state.fetched = mesh.state.fetched.clone();
        }
        if state.revision != mesh.state.revision {
            match changes::parse_stored(&state) {
                Ok(resources) => mesh.resources = resources,
                Err(errors) => {
                    // Another replica (another version of weft?) wrote what this one cannot
                    // read: it keeps serving what it has.
                    tracing::error!(
                        ?errors,
                        revision = state.revision,
                        "stored resources do not load; keeping the state in force"
                    );
                    return Ok(false);
                }
            }
            moved = true;
            tracing::info!(
                from = mesh.state.revision,
                to = state.revision,
                "following a change made through another replica"
            );
        }
        // Sidecars gone from the store (their lease ended) are forgotten here too.
        mesh.sidecars
            .retain(|id, c| c.stream.is_some() || state.workloads.contains_key(id));
        mesh.state = state;
        if !reassert.is_empty()
            && let Err(e) = shared.store.save_workloads(&mesh.state, &reassert)
        {
            tracing::warn!("cannot write this replica's registrations back: {e}");
            shared.unsaved.store(true, Ordering::SeqCst);
        }
        let _ = push(&mut mesh);
    }
    if now.ca != seen.ca
        && let Some(stored) = pg.ca()?
    {
        match Ca::from_record(&stored.record, &shared.trust_domain, system_clock()) {
            Ok(ca) => follow_ca(shared, ca, stored.version),
            Err(e) => tracing::error!("the stored CA does not load; keeping the one in force: {e}"),
        }
    }
    let mut seen = shared.seen.lock();
    seen.revision = seen.revision.max(now.revision);
    seen.workloads = now.workloads;
    seen.ca = seen.ca.max(now.ca);
    Ok(moved)
}

/// Makes `ca`, kept in the store at `version`, the one this replica signs with and
/// publishes. Judged under the CA's lock, as a rotation step here records its version: a CA
/// read before this replica's own step is older than the one in force, and not taken.
fn follow_ca(shared: &Shared, ca: Ca, version: u64) {
    let mut held = shared.ca.lock();
    if version <= shared.seen.lock().ca {
        return;
    }
    shared.seen.lock().ca = version;
    let moved = held.signer_pem() != ca.signer_pem();
    *held = ca;
    if let Err(e) = super::serving::write_bundle(&shared.data_dir, &held.bundle()) {
        tracing::warn!("cannot write the trust bundle: {e}");
    }
    if moved && let Err(e) = shared.serving.reissue(&held) {
        tracing::warn!("cannot reissue the API's certificate from the new root: {e}");
    }
    tracing::info!(version, "following a CA change");
}

/// Says this replica is alive and, on the singleton, sweeps the leases.
pub(super) fn keep_alive(shared: &Shared) {
    let Some(pg) = shared.store.postgres() else {
        return;
    };
    if let Err(e) = pg.heartbeat(&shared.replica) {
        tracing::debug!("heartbeat to the store failed: {e}");
        return;
    }
    let leader = pg.is_leader();
    shared.store.metrics().singleton.set(i64::from(leader));
    if leader {
        // Three missed heartbeats: that replica is gone.
        match pg.sweep(shared.lease, shared.heartbeat * 3) {
            Ok(0) => {}
            Ok(n) => tracing::info!(registrations = n, at_ms = now_ms(), "swept leases"),
            Err(e) => tracing::warn!("sweeping leases failed: {e}"),
        }
    }
}
