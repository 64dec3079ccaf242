//! A sidecar's plugins that run on baseline code (compiled quickly by the control plane so a
//! plugin fetched at apply takes effect in seconds) move to optimized code once the control
//! plane has compiled it: the watch asks for it with back-off, imports it, and rebuilds the
//! snapshot in force, which swaps the plugins as any snapshot does (calls under way finish on
//! the code they started with).

use super::client::{WatchConfig, call, fetch_artifact};
use crate::snapshot::SnapshotTarget;
use bytes::Bytes;
use http::Method;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a sidecar waits for optimized code before compiling the artifact itself: the
/// control plane's compile is bounded by the compiler's own time limit, well inside this.
const GIVE_UP_AFTER: Duration = Duration::from_secs(180);
/// First and longest wait between asks.
const FIRST_WAIT: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(2);

/// Artifacts running on baseline code, and when to ask for their optimized code next.
pub(super) struct TierUps {
    /// Digest and when it started on baseline code.
    pending: BTreeMap<String, Instant>,
    next: Instant,
    wait: Duration,
}

impl TierUps {
    /// None pending.
    pub(super) fn new() -> Self {
        TierUps {
            pending: BTreeMap::new(),
            next: Instant::now(),
            wait: FIRST_WAIT,
        }
    }

    /// Whether any artifact waits for optimized code.
    pub(super) fn any(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Notes that `digest` now runs on baseline code; asks soon.
    pub(super) fn add(&mut self, digest: String) {
        self.pending.entry(digest).or_insert_with(Instant::now);
        self.wait = FIRST_WAIT;
        self.next = Instant::now() + FIRST_WAIT;
    }

    /// Resolves when the next ask is due.
    pub(super) async fn due(&self) {
        tokio::time::sleep_until(self.next.into()).await;
    }

    /// Asks for the optimized code of every pending artifact; imports what came and rebuilds
    /// the snapshot in force if anything changed. An artifact whose optimized code has not
    /// come in `GIVE_UP_AFTER` is compiled here instead (by that same rebuild).
    pub(super) async fn ask(&mut self, cfg: &WatchConfig, sidecar: &impl SnapshotTarget) {
        let Some(fingerprint) = sidecar.engine_fingerprint() else {
            self.pending.clear();
            return;
        };
        let mut changed = false;
        let digests: Vec<(String, Instant)> =
            self.pending.iter().map(|(d, t)| (d.clone(), *t)).collect();
        for (digest, since) in digests {
            if !sidecar.runs_baseline(&digest) {
                // Replaced meanwhile (a later snapshot's fetch found optimized code).
                self.pending.remove(&digest);
                continue;
            }
            let path = format!("/v1/artifacts/{digest}/compiled/{fingerprint}");
            match call(&cfg.server, &cfg.token, Method::GET, &path, Bytes::new()).await {
                Ok(code) => {
                    if let Err(e) = sidecar.import_compiled(&digest, &fingerprint, &code) {
                        tracing::warn!(%digest, "optimized code from the control plane unusable ({e}); compiling here");
                        sidecar.forget_compiled(&digest);
                    }
                    self.pending.remove(&digest);
                    changed = true;
                }
                Err(e) if since.elapsed() > GIVE_UP_AFTER => {
                    // The component itself, to compile here: fetched first (the baseline
                    // code ran without it), and until it comes the baseline code stays.
                    if let Err(f) = fetch_artifact(cfg, sidecar, &digest).await {
                        tracing::warn!(%digest, "no optimized code from the control plane ({e}) and the component cannot be fetched to compile it here: {f}");
                        continue;
                    }
                    tracing::warn!(%digest, "no optimized code from the control plane after {GIVE_UP_AFTER:?} ({e}); compiling here");
                    sidecar.forget_compiled(&digest);
                    self.pending.remove(&digest);
                    changed = true;
                }
                Err(e) => tracing::debug!(%digest, "optimized code not ready: {e}"),
            }
        }
        if changed {
            match sidecar.reapply().await {
                Ok(()) => tracing::info!("plugins moved to optimized code"),
                Err(e) => tracing::warn!(
                    "rebuilding with optimized code failed, the plugins keep their baseline code: {e}"
                ),
            }
        }
        self.wait = (self.wait * 2).min(LONGEST_WAIT);
        self.next = Instant::now() + self.wait;
    }
}
