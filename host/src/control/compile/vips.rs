//! Virtual IPs for services, as Istio's DNS proxy hands them out for services that have none:
//! each service gets one address from [`SERVICE_RANGE`], derived from its key, so a service
//! keeps its address while others come and go (an app may hold a resolved address for as
//! long as it likes). Two keys landing on one address are settled in key order, the later
//! taking the next free one; only then can a new service move an existing one's address.

use crate::snapshot::Service;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

/// Where virtual IPs come from: `198.19.0.0/17`, in the benchmarking range, so it collides
/// with no private network a pod may also reach.
pub const SERVICE_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 17);

/// Gives every service its virtual IP.
pub fn assign(services: &mut BTreeMap<String, Service>) {
    let (base, prefix) = SERVICE_RANGE;
    // The network and broadcast addresses are never handed out.
    let hosts = (1u32 << (32 - u32::from(prefix))) - 2;
    let mut taken = HashSet::new();
    for (key, service) in services.iter_mut() {
        let digest = Sha256::digest(key.as_bytes());
        let mut slot = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % hosts;
        // A mesh holds far fewer services than the range has addresses, so this ends.
        while !taken.insert(slot) {
            slot = (slot + 1) % hosts;
        }
        service.vip = Some(Ipv4Addr::from(u32::from(base) + 1 + slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(keys: &[&str]) -> BTreeMap<String, Service> {
        keys.iter()
            .map(|k| (k.to_string(), Service::default()))
            .collect()
    }

    #[test]
    fn each_service_keeps_its_address_when_others_come_and_go() {
        let mut few = services(&["payments", "orders"]);
        assign(&mut few);
        let mut more = services(&["payments", "orders", "ratings", "reviews.shop"]);
        assign(&mut more);
        assert_eq!(few["payments"].vip, more["payments"].vip);
        assert_eq!(few["orders"].vip, more["orders"].vip);
        let all: HashSet<_> = more.values().map(|s| s.vip).collect();
        assert_eq!(all.len(), 4, "addresses are distinct");
        for s in more.values() {
            let ip = s.vip.expect("assigned");
            assert_eq!(ip.octets()[..2], [198, 19]);
            assert!(ip.octets()[2] < 128, "{ip} is outside 198.19.0.0/17");
        }
    }

    #[test]
    fn a_thousand_services_get_distinct_addresses() {
        let keys: Vec<String> = (0..1000).map(|i| format!("svc{i}")).collect();
        let mut all: BTreeMap<String, Service> = keys
            .iter()
            .map(|k| (k.clone(), Service::default()))
            .collect();
        assign(&mut all);
        let distinct: HashSet<_> = all.values().map(|s| s.vip).collect();
        assert_eq!(distinct.len(), 1000);
    }
}
