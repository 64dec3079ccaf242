//! The host's table of upstream endpoints: each endpoint a shared slot holding its labels,
//! requests in flight and ejection state, all atomics, so the data plane reads them per
//! request without locks or copies. Plugins eject through [`EndpointHealth`]; load balancing
//! skips the ejected.

use crate::plugin::{EndpointHealth, EndpointState};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One upstream endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Stable id for its service and address.
    pub id: u64,
    /// The service it serves.
    pub service: Arc<str>,
    /// Its address.
    pub address: Arc<str>,
    /// Its address as a URI authority, parsed once (none if it is not one).
    pub authority: Option<http::uri::Authority>,
    /// Its labels (`version: v1`).
    pub labels: BTreeMap<String, String>,
    /// Requests in flight to it, for least-outstanding load balancing.
    pub outstanding: AtomicU32,
    /// Its workload's interned name, as plugins see it in `destination-workload`; 0 until the
    /// routes naming it are built.
    pub workload: AtomicU32,
    // Milliseconds since the table's epoch until which it is ejected; 0 when never.
    ejected_until_ms: AtomicU64,
    epoch: Instant,
}

impl Endpoint {
    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether it is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms(now)
    }

    /// Time left of its ejection at `now`.
    pub fn ejected_for(&self, now: Instant) -> Duration {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(self.now_ms(now)))
    }

    /// Whether its labels include every label of `selector`.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|mine| mine == v))
    }
}

/// Every known endpoint, by id.
pub struct EndpointTable {
    epoch: Instant,
    endpoints: RwLock<BTreeMap<u64, Arc<Endpoint>>>,
}

impl Default for EndpointTable {
    fn default() -> Self {
        EndpointTable {
            epoch: Instant::now(),
            endpoints: RwLock::new(BTreeMap::new()),
        }
    }
}

impl EndpointTable {
    /// An empty table.
    pub fn new() -> Self {
        EndpointTable::default()
    }

    /// Adds an endpoint, or returns the existing slot. A slot whose labels changed is replaced,
    /// keeping its ejection; its id, derived from service and address, stays the same.
    pub fn upsert(
        &self,
        service: &str,
        address: &str,
        labels: BTreeMap<String, String>,
    ) -> Arc<Endpoint> {
        let id = endpoint_id(service, address);
        let mut endpoints = self.endpoints.write();
        if let Some(e) = endpoints.get(&id)
            && e.labels == labels
        {
            return e.clone();
        }
        let ejected = endpoints
            .get(&id)
            .map_or(0, |e| e.ejected_until_ms.load(Ordering::Relaxed));
        let slot = Arc::new(Endpoint {
            id,
            service: Arc::from(service),
            address: Arc::from(address),
            authority: address.parse().ok(),
            labels,
            outstanding: AtomicU32::new(0),
            workload: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(ejected),
            epoch: self.epoch,
        });
        endpoints.insert(id, slot.clone());
        slot
    }

    /// Drops every endpoint whose id is not in `keep`.
    pub fn retain(&self, keep: &HashSet<u64>) {
        self.endpoints.write().retain(|id, _| keep.contains(id));
    }

    /// The service of the endpoint at `address`; the first by id if several share it.
    pub fn service_at(&self, address: &str) -> Option<Arc<str>> {
        // A scan, but only per new upstream connection (pooled), never per request.
        self.endpoints
            .read()
            .values()
            .find(|e| &*e.address == address)
            .map(|e| e.service.clone())
    }

    /// One endpoint.
    pub fn get(&self, id: u64) -> Option<Arc<Endpoint>> {
        self.endpoints.read().get(&id).cloned()
    }

    /// Every endpoint, by id.
    pub fn all(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints.read().values().cloned().collect()
    }
}

/// The table's ejections as Prometheus sees them, computed when scraped (an ejection ends by
/// time, not by an event): `weft_endpoint_ejected_seconds{service, endpoint}`, the seconds of
/// ejection an endpoint has left, present only while it is ejected.
pub struct EjectionCollector {
    table: Arc<EndpointTable>,
    template: prometheus::GaugeVec,
}

const EJECTED: &str = "weft_endpoint_ejected_seconds";
const EJECTED_HELP: &str = "Seconds of ejection an endpoint has left, by service and address.";

impl EjectionCollector {
    /// A collector over `table`.
    pub fn new(table: Arc<EndpointTable>) -> prometheus::Result<Self> {
        let template = prometheus::GaugeVec::new(
            prometheus::Opts::new(EJECTED, EJECTED_HELP),
            &["service", "endpoint"],
        )?;
        Ok(EjectionCollector { table, template })
    }
}

impl prometheus::core::Collector for EjectionCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.template.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let now = Instant::now();
        self.template.reset();
        for e in self.table.all() {
            if e.is_ejected(now) {
                self.template
                    .with_label_values(&[&*e.service, &*e.address])
                    .set(e.ejected_for(now).as_secs_f64());
            }
        }
        self.template.collect()
    }
}

/// A stable id for an endpoint: FNV-1a over service and address, never 0 (0 means "none").
pub fn endpoint_id(service: &str, address: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in service.bytes().chain([0u8]).chain(address.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

impl EndpointHealth for EndpointTable {
    fn pool(&self, endpoint: u64) -> Vec<EndpointState> {
        let now = Instant::now();
        let endpoints = self.endpoints.read();
        let Some(service) = endpoints.get(&endpoint).map(|e| e.service.clone()) else {
            return Vec::new();
        };
        endpoints
            .values()
            .filter(|e| e.service == service)
            .map(|e| EndpointState {
                id: e.id,
                address: e.address.to_string(),
                ejected_for: e.ejected_for(now),
            })
            .collect()
    }

    fn eject(&self, endpoint: u64, duration: Duration) -> bool {
        match self.endpoints.read().get(&endpoint) {
            Some(e) => {
                let until = e.now_ms(Instant::now()) + duration.as_millis() as u64;
                e.ejected_until_ms.store(until, Ordering::Relaxed);
                tracing::info!(endpoint = %e.address, service = %e.service, ?duration, "endpoint ejected");
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(version: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("version".to_string(), version.to_string())])
    }

    #[test]
    fn labels_select_and_ejection_is_kept_across_updates() {
        let t = EndpointTable::new();
        let a = t.upsert("payments", "10.0.0.1:80", labels("v1"));
        let b = t.upsert("payments", "10.0.0.2:80", labels("v2"));
        t.upsert("orders", "10.0.0.3:80", labels("v1"));
        assert!(a.matches(&labels("v1")) && !b.matches(&labels("v1")));
        assert!(
            b.matches(&BTreeMap::new()),
            "no selector matches every endpoint"
        );
        let a = a.id;
        assert!(t.eject(a, Duration::from_secs(30)));
        let mut relabelled = labels("v1");
        relabelled.insert("zone".into(), "a".into());
        let slot = t.upsert("payments", "10.0.0.1:80", relabelled);
        assert_eq!(slot.id, a, "the id follows service and address");
        assert!(
            slot.is_ejected(Instant::now()),
            "a relabelled endpoint stays ejected"
        );
        let pool = t.pool(a);
        assert_eq!(pool.len(), 2, "the pool is the endpoint's service");
        assert!(
            pool.iter()
                .any(|e| e.id == a && e.ejected_for > Duration::from_secs(29))
        );
        assert!(!t.eject(12345, Duration::from_secs(1)));
    }
}
