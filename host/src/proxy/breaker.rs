//! Circuit breaking: Envoy's cluster circuit breakers, as Istio configures them from a
//! DestinationRule's `connectionPool`. One [`Breaker`] per destination (the service, and each
//! of its subsets on its own, as each is an Envoy cluster) counts its requests in flight, its
//! requests waiting for a connection, its retries in flight and its HTTP/1.1 connections
//! open; a request past a bound is not sent (503, `UO`), a retry past one is not made.
//!
//! Counts are atomics taken with compare-and-swap, so a bound holds exactly under any
//! concurrency. Breakers outlive snapshots: a new snapshot changes their bounds, never what is
//! in flight, so a DestinationRule edit neither forgets nor double-counts live requests.

use crate::snapshot::ConnectionPool;
use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::Notify;

/// Which bound refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `http2MaxRequests`.
    Requests,
    /// `http1MaxPendingRequests`.
    Pending,
    /// `maxRetries`.
    Retries,
}

/// One destination's bounds and counts.
pub struct Breaker {
    /// Distinguishes its connections from other destinations' in the HTTP/1.1 pool.
    pub id: u32,
    max_requests: AtomicU32,
    max_pending: AtomicU32,
    max_retries: AtomicU32,
    max_connections: AtomicU32,
    max_per_connection: AtomicU32,
    requests: AtomicU32,
    pending: AtomicU32,
    retries: AtomicU32,
    connections: AtomicU32,
    /// Woken when a connection is returned to the pool or closed.
    pub freed: Notify,
    overflow: [IntCounter; 3],
}

/// A unit of a count, given back on drop.
pub struct Slot {
    breaker: Arc<Breaker>,
    which: Which,
}

#[derive(Clone, Copy)]
enum Which {
    Request,
    Pending,
    Retry,
    Connection,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let b = &self.breaker;
        let count = match self.which {
            Which::Request => &b.requests,
            Which::Pending => &b.pending,
            Which::Retry => &b.retries,
            Which::Connection => &b.connections,
        };
        count.fetch_sub(1, Ordering::AcqRel);
        if matches!(self.which, Which::Connection) {
            b.freed.notify_one();
        }
    }
}

/// Takes one unit of `count` if it is below `max` (0: unbounded, never refused).
fn take(count: &AtomicU32, max: &AtomicU32) -> bool {
    let max = match max.load(Ordering::Acquire) {
        0 => u32::MAX,
        m => m,
    };
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then(|| n + 1)
        })
        .is_ok()
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("id", &self.id)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    fn set(&self, pool: &ConnectionPool) {
        let store = |a: &AtomicU32, v: Option<u32>| a.store(v.unwrap_or(0), Ordering::Release);
        store(&self.max_requests, pool.max_requests);
        store(&self.max_pending, pool.max_pending_requests);
        store(&self.max_retries, pool.max_retries);
        store(&self.max_connections, pool.max_connections);
        store(&self.max_per_connection, pool.max_requests_per_connection);
        // Waiters re-read the bounds: a raised one may let them through.
        self.freed.notify_waiters();
    }

    fn slot(self: &Arc<Self>, which: Which) -> Slot {
        Slot {
            breaker: self.clone(),
            which,
        }
    }

    fn refused(&self, limit: Limit) -> Option<Slot> {
        self.overflow[limit as usize].inc();
        None
    }

    /// A request in flight, if `http2MaxRequests` allows one more.
    pub fn request(self: &Arc<Self>) -> Option<Slot> {
        if take(&self.requests, &self.max_requests) {
            Some(self.slot(Which::Request))
        } else {
            self.refused(Limit::Requests)
        }
    }

    /// A retry in flight, if `maxRetries` allows one more.
    pub fn retry(self: &Arc<Self>) -> Option<Slot> {
        if take(&self.retries, &self.max_retries) {
            Some(self.slot(Which::Retry))
        } else {
            self.refused(Limit::Retries)
        }
    }

    /// A request waiting for a connection, if `http1MaxPendingRequests` allows one more.
    pub fn pending(self: &Arc<Self>) -> Option<Slot> {
        if take(&self.pending, &self.max_pending) {
            Some(self.slot(Which::Pending))
        } else {
            self.refused(Limit::Pending)
        }
    }

    /// A new HTTP/1.1 connection, if `maxConnections` allows one more.
    pub fn connection(self: &Arc<Self>) -> Option<Slot> {
        take(&self.connections, &self.max_connections).then(|| self.slot(Which::Connection))
    }

    /// Whether HTTP/1.1 connections to this destination are bounded (in number or in
    /// requests each), and so kept apart from other destinations' in the pool.
    pub fn bounds_connections(&self) -> bool {
        self.max_connections.load(Ordering::Acquire) != 0
            || self.max_pending.load(Ordering::Acquire) != 0
            || self.max_per_connection.load(Ordering::Acquire) != 0
    }

    /// Requests one connection may carry (0: unbounded).
    pub fn per_connection(&self) -> u32 {
        self.max_per_connection.load(Ordering::Acquire)
    }

    /// Counts now: requests, pending, retries, connections (for `/config` and tests).
    pub fn counts(&self) -> [u32; 4] {
        [
            self.requests.load(Ordering::Acquire),
            self.pending.load(Ordering::Acquire),
            self.retries.load(Ordering::Acquire),
            self.connections.load(Ordering::Acquire),
        ]
    }
}

/// Every destination's breaker, by Istio's cluster name for it.
pub struct Breakers {
    by_cluster: Mutex<HashMap<String, Arc<Breaker>>>,
    overflow: IntCounterVec,
    next_id: AtomicU32,
}

impl Breakers {
    /// None yet; refusals counted in `overflow` (`service`, `subset`, `limit`).
    pub fn new(overflow: IntCounterVec) -> Self {
        Breakers {
            by_cluster: Mutex::new(HashMap::new()),
            overflow,
            next_id: AtomicU32::new(1),
        }
    }

    /// The breaker of `service`'s `subset` (empty: the whole service) with `pool`'s bounds,
    /// the one already counting for it if there is one.
    pub fn get(&self, service: &str, subset: &str, pool: &ConnectionPool) -> Arc<Breaker> {
        let key = format!("{subset}|{service}");
        let mut all = self.by_cluster.lock();
        let breaker = all
            .entry(key)
            .or_insert_with(|| {
                let c = |limit: &str| self.overflow.with_label_values(&[service, subset, limit]);
                Arc::new(Breaker {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    max_requests: AtomicU32::new(0),
                    max_pending: AtomicU32::new(0),
                    max_retries: AtomicU32::new(0),
                    max_connections: AtomicU32::new(0),
                    max_per_connection: AtomicU32::new(0),
                    requests: AtomicU32::new(0),
                    pending: AtomicU32::new(0),
                    retries: AtomicU32::new(0),
                    connections: AtomicU32::new(0),
                    freed: Notify::new(),
                    overflow: [c("requests"), c("pending"), c("retries")],
                })
            })
            .clone();
        breaker.set(pool);
        breaker
    }

    /// Forgets the breakers of destinations no snapshot names any more (their slots in
    /// flight still give back to the breaker they hold).
    pub fn retain(&self, keep: &std::collections::HashSet<u32>) {
        self.by_cluster.lock().retain(|_, b| keep.contains(&b.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> Breakers {
        Breakers::new(
            IntCounterVec::new(
                prometheus::Opts::new("o", "o"),
                &["service", "subset", "limit"],
            )
            .expect("vec"),
        )
    }

    #[test]
    fn a_bound_holds_exactly_under_concurrency_and_slots_give_back() {
        let all = breakers();
        let pool = ConnectionPool {
            max_requests: Some(7),
            ..Default::default()
        };
        let b = all.get("payments.default", "", &pool);
        let taken: Vec<Option<Slot>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..32).map(|_| s.spawn(|| b.request())).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join"))
                .collect()
        });
        assert_eq!(taken.iter().filter(|t| t.is_some()).count(), 7);
        assert_eq!(b.counts()[0], 7);
        assert_eq!(
            all.overflow
                .with_label_values(&["payments.default", "", "requests"])
                .get(),
            25
        );
        drop(taken);
        assert_eq!(b.counts()[0], 0);
    }

    #[test]
    fn a_new_snapshot_changes_bounds_not_counts() {
        let all = breakers();
        let one = ConnectionPool {
            max_retries: Some(1),
            ..Default::default()
        };
        let b = all.get("payments.default", "v2", &one);
        let held = b.retry().expect("first retry");
        assert!(b.retry().is_none(), "one retry at a time");
        let two = ConnectionPool {
            max_retries: Some(2),
            ..Default::default()
        };
        let same = all.get("payments.default", "v2", &two);
        assert!(Arc::ptr_eq(&b, &same));
        let second = same.retry().expect("the raised bound");
        assert_eq!(same.counts()[2], 2);
        drop((held, second));
        // Unbounded: never refused.
        let free = all.get("payments.default", "v2", &ConnectionPool::default());
        let many: Vec<_> = (0..100).filter_map(|_| free.retry()).collect();
        assert_eq!(many.len(), 100);
        // Each subset is its own destination.
        let v1 = all.get("payments.default", "v1", &one);
        assert!(!Arc::ptr_eq(&v1, &free));
        assert!(v1.retry().is_some());
    }
}
