//! The host's table of upstream endpoints: each service's endpoints with their labels and
//! ejection state. Plugins eject through [`EndpointHealth`]; load balancing skips the ejected.

use crate::plugin::{EndpointHealth, EndpointState};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

/// One upstream endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Stable id for its address.
    pub id: u64,
    /// The service it serves.
    pub service: String,
    /// Its address.
    pub address: String,
    /// Its labels (`version: v1`).
    pub labels: BTreeMap<String, String>,
    /// Requests in flight to it, for least-outstanding load balancing.
    pub outstanding: Arc<AtomicU32>,
    ejected_until: Option<Instant>,
}

impl Endpoint {
    /// Whether it is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| t > now)
    }

    /// Whether its labels include every label of `selector`.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|mine| mine == v))
    }
}

/// Every known endpoint, by id.
#[derive(Default)]
pub struct EndpointTable {
    endpoints: RwLock<BTreeMap<u64, Endpoint>>,
}

impl EndpointTable {
    /// An empty table.
    pub fn new() -> Self {
        EndpointTable::default()
    }

    /// Adds or updates an endpoint; its id is derived from service and address so it stays the
    /// same across updates.
    pub fn upsert(&self, service: &str, address: &str, labels: BTreeMap<String, String>) -> u64 {
        let id = endpoint_id(service, address);
        let mut endpoints = self.endpoints.write();
        let (ejected_until, outstanding) = match endpoints.get(&id) {
            Some(e) => (e.ejected_until, e.outstanding.clone()),
            None => (None, Arc::new(AtomicU32::new(0))),
        };
        endpoints.insert(
            id,
            Endpoint {
                id,
                service: service.to_string(),
                address: address.to_string(),
                labels,
                outstanding,
                ejected_until,
            },
        );
        id
    }

    /// Drops every endpoint whose id is not in `keep`.
    pub fn retain(&self, keep: &HashSet<u64>) {
        self.endpoints.write().retain(|id, _| keep.contains(id));
    }

    /// The endpoints of `service` whose labels match `selector`, ejected ones included.
    pub fn select(&self, service: &str, selector: &BTreeMap<String, String>) -> Vec<Endpoint> {
        self.endpoints
            .read()
            .values()
            .filter(|e| e.service == service && e.matches(selector))
            .cloned()
            .collect()
    }

    /// One endpoint.
    pub fn get(&self, id: u64) -> Option<Endpoint> {
        self.endpoints.read().get(&id).cloned()
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
                address: e.address.clone(),
                ejected_for: e
                    .ejected_until
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or(Duration::ZERO),
            })
            .collect()
    }

    fn eject(&self, endpoint: u64, duration: Duration) -> bool {
        match self.endpoints.write().get_mut(&endpoint) {
            Some(e) => {
                e.ejected_until = Some(Instant::now() + duration);
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
    fn subsets_select_by_label_and_ejection_is_kept_across_updates() {
        let t = EndpointTable::new();
        let a = t.upsert("payments", "10.0.0.1:80", labels("v1"));
        t.upsert("payments", "10.0.0.2:80", labels("v2"));
        t.upsert("orders", "10.0.0.3:80", labels("v1"));
        assert_eq!(t.select("payments", &labels("v1")).len(), 1);
        assert_eq!(t.select("payments", &BTreeMap::new()).len(), 2);
        assert!(t.eject(a, Duration::from_secs(30)));
        assert_eq!(t.upsert("payments", "10.0.0.1:80", labels("v1")), a);
        assert!(t.select("payments", &labels("v1"))[0].is_ejected(Instant::now()));
        let pool = t.pool(a);
        assert_eq!(pool.len(), 2, "the pool is the endpoint's service");
        assert!(
            pool.iter()
                .any(|e| e.id == a && e.ejected_for > Duration::from_secs(29))
        );
        assert!(!t.eject(12345, Duration::from_secs(1)));
    }
}
