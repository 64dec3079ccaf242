//! Weighted canary split: each call goes to one of the route's destinations, picked at random
//! in proportion to its weight, as in Istio's `VirtualService` `http[].route[]`.

use serde::Deserialize;
use weft_sdk::host::random_below;
use weft_sdk::{Destination, Filter, Hooks, Request, RequestAction, export_filter};

/// A destination as Istio writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioDestination {
    /// The service.
    pub host: String,
    /// The subset, if any.
    #[serde(default)]
    pub subset: Option<String>,
}

/// One weighted destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedRoute {
    /// Where it goes.
    pub destination: IstioDestination,
    /// Its share out of 100; may be omitted for a single destination.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// The canary plugin's configuration: Istio's `route` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The service this split belongs to (the VirtualService's host). When every destination
    /// is this service, a pick changes only the subset, which is the cheaper host call.
    #[serde(default)]
    pub host: Option<String>,
    /// The weighted destinations.
    pub route: Vec<WeightedRoute>,
}

/// The canary split.
pub struct Canary {
    // Cumulative upper bounds out of 100, paired with their destinations.
    cumulative: Vec<(u64, Destination)>,
    // Every destination is the route's own service, so a pick only changes the subset.
    single_service: bool,
}

impl Filter for Canary {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let Config { host, route } = config;
        let config = Config { host: None, route };
        if config.route.is_empty() {
            return Err("route: at least one destination is required".into());
        }
        let single = config.route.len() == 1;
        let mut total = 0u64;
        let mut cumulative = Vec::with_capacity(config.route.len());
        for (i, r) in config.route.into_iter().enumerate() {
            let weight = match r.weight {
                Some(w) => u64::from(w),
                None if single => 100,
                None => {
                    return Err(format!(
                        "route[{i}].weight: required when there are several destinations"
                    ));
                }
            };
            if r.destination.host.is_empty() {
                return Err(format!("route[{i}].destination.host: must not be empty"));
            }
            total += weight;
            cumulative.push((
                total,
                Destination {
                    service: r.destination.host,
                    subset: r.destination.subset,
                },
            ));
        }
        if total != 100 {
            return Err(format!(
                "route: weights sum to {total}, they must sum to 100"
            ));
        }
        let single_service = host
            .as_deref()
            .is_some_and(|host| cumulative.iter().all(|(_, d)| d.service == host));
        Ok(Canary {
            cumulative,
            single_service,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, _call_id: u64, req: &mut Request<'_>) -> RequestAction {
        let roll = random_below(100);
        if let Some((_, dest)) = self.cumulative.iter().find(|(upper, _)| roll < *upper) {
            match &dest.subset {
                // The route's own service with a subset: the cheap call.
                Some(subset) if self.single_service => req.set_subset(subset),
                _ => req.set_destination(dest.clone()),
            }
        }
        RequestAction::Continue
    }
}

export_filter!(Canary);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::testing::{Harness, TestRequest, seed_random};

    const SEED: &str = r#"{"route":[
        {"destination":{"host":"payments","subset":"v1"},"weight":95},
        {"destination":{"host":"payments","subset":"v2"},"weight":5}]}"#;

    #[test]
    fn splits_by_weight() {
        seed_random(42);
        let mut h = Harness::<Canary>::new(SEED).expect("valid config");
        let mut v2 = 0;
        for _ in 0..10_000 {
            let mut req = TestRequest::get("payments", "/charge");
            h.on_request(&mut req);
            if req.destination.subset.as_deref() == Some("v2") {
                v2 += 1;
            }
        }
        // 5% of 10,000 is 500, standard deviation ~21.8; 5 sigma either side.
        assert!((391..=609).contains(&v2), "v2 got {v2} of 10000");
    }

    #[test]
    fn zero_weight_gets_nothing() {
        let cfg = r#"{"route":[
            {"destination":{"host":"payments","subset":"v1"},"weight":100},
            {"destination":{"host":"payments","subset":"v2"},"weight":0}]}"#;
        let mut h = Harness::<Canary>::new(cfg).expect("valid config");
        for _ in 0..1_000 {
            let mut req = TestRequest::get("payments", "/");
            h.on_request(&mut req);
            assert_eq!(req.destination.subset.as_deref(), Some("v1"));
        }
    }

    #[test]
    fn weights_must_sum_to_100() {
        let cfg = r#"{"route":[{"destination":{"host":"p","subset":"v1"},"weight":90},
                                {"destination":{"host":"p","subset":"v2"},"weight":5}]}"#;
        let err = Harness::<Canary>::new(cfg).err().expect("must be rejected");
        assert!(err.contains("weights sum to 95"), "{err}");
    }
}
