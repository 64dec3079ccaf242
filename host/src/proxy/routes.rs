//! Routes: a snapshot compiled into what the data plane reads per request — per service its
//! timeout, subsets and a ready plugin chain — with the endpoints put in the endpoint table.
//! Built off the request path; applied whole or not at all.

use super::metrics::{ProxyMetrics, RouteMetrics};
use crate::endpoints::{Endpoint, EndpointTable, endpoint_id};
use crate::plugin::{Artifact, Chain, Limits, PluginRuntime, PluginSpec};
use crate::snapshot::{Rejected, Snapshot, builtin_bytes, parse_duration};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A subset: its interned name and its endpoints, selected once when the route is built.
#[derive(Debug)]
pub struct Subset {
    /// Interned name, as hooks see it.
    pub name_id: u32,
    /// Labels an endpoint must carry.
    pub selector: BTreeMap<String, String>,
    /// The endpoints that carry them.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Its circuit breaker, when it or the service has a `connectionPool`.
    pub breaker: Option<Arc<super::breaker::Breaker>>,
    /// How its endpoints are picked (its own policy, else the service's).
    pub picking: Picking,
}

/// How one destination's endpoints are picked: by its balancer, or by consistent hash on
/// its ring.
#[derive(Debug)]
pub struct Picking {
    /// The balancer (also used when a request has no hash key).
    pub balancer: super::balance::Balancer,
    /// How a request's key is found, when it balances by consistent hash.
    pub hash: Option<super::consistent_hash::HashPolicy>,
    /// Its endpoints' ring, with `hash`.
    pub ring: Option<super::consistent_hash::Ring>,
}

impl Picking {
    fn new(
        load_balancer: Option<&str>,
        hash: Option<&crate::snapshot::ConsistentHash>,
        endpoints: &[Arc<Endpoint>],
    ) -> Picking {
        let hash = hash.map(super::consistent_hash::HashPolicy::new);
        let ring = hash.as_ref().map(|h| {
            super::consistent_hash::Ring::new(
                endpoints.iter().map(|e| &*e.address),
                h.minimum_ring_size(),
            )
        });
        Picking {
            balancer: super::balance::Balancer::new(
                load_balancer
                    .and_then(super::balance::Kind::parse)
                    .unwrap_or(super::balance::Kind::LeastRequest),
            ),
            hash,
            ring,
        }
    }
}

/// One service's route.
pub struct Route {
    /// The service.
    pub service: String,
    /// Its interned name.
    pub service_id: u32,
    /// Overall timeout per call.
    pub timeout: Option<Duration>,
    /// Subsets by name.
    pub subsets: BTreeMap<String, Subset>,
    /// Every endpoint of the service (no subset chosen).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Metric handles resolved once for this route.
    pub metrics: RouteMetrics,
    /// How endpoints are picked for calls with no subset.
    pub picking: Picking,
    /// The plugin chain.
    pub chain: Arc<Chain>,
    /// The identity its endpoints serve with (a SPIFFE ID in this sidecar's trust domain),
    /// interned; 0 when this sidecar has none.
    pub identity_id: u32,
    /// The circuit breaker of calls with no subset, when the service has a `connectionPool`.
    pub breaker: Option<Arc<super::breaker::Breaker>>,
    /// A service outside the mesh (a ServiceEntry): called directly, over HTTP/1.1.
    pub external: bool,
    /// The TLS originated to it; none: plain HTTP.
    pub origin: Option<Arc<super::origination::Origin>>,
    /// Its sidecars are called in plaintext rather than mTLS (`tls.mode: DISABLE`).
    pub plaintext: bool,
}

/// The server-side chain: run on every call into this workload, before its app.
pub struct ServerChain {
    /// The plugins, in order.
    pub chain: Arc<Chain>,
    /// How many of them run before the authorization policies are checked.
    pub authorize_after: usize,
}

/// Every route of a snapshot.
pub struct Routes {
    /// The snapshot they came from.
    pub snapshot: Snapshot,
    /// Routes by service key, looked up on every call.
    pub services: HashMap<String, Arc<Route>, foldhash::fast::RandomState>,
    /// Routes by their service's virtual IP: where a captured connection to one goes.
    pub by_vip: HashMap<std::net::Ipv4Addr, Arc<Route>, foldhash::fast::RandomState>,
    /// The inbound side's authorization, compiled once from the snapshot's `inbound` section.
    pub authz: super::authz::Authorizer,
    /// Access logging, compiled once.
    pub access_log: super::logging::Sinks,
    /// The server-side plugin chain; none when the snapshot gives none.
    pub server: Option<ServerChain>,
    /// Each side's tracing (set by the sidecar, which owns the exporters).
    pub tracing: super::call_spans::Tracing,
}

impl Routes {
    /// The route of the service `key` names, else of the service whose virtual IP a call was
    /// sent to (an app that resolved the name itself and calls by address).
    pub fn lookup(&self, key: &str, dst: Option<std::net::IpAddr>) -> Option<&Arc<Route>> {
        self.services.get(key).or_else(|| match dst {
            Some(std::net::IpAddr::V4(ip)) => self.by_vip.get(&ip),
            _ => None,
        })
    }

    /// No routes: a sidecar before its first snapshot.
    pub fn empty() -> Self {
        Routes {
            snapshot: Snapshot::default(),
            services: HashMap::default(),
            by_vip: HashMap::default(),
            access_log: super::logging::Sinks::default(),
            authz: super::authz::Authorizer::default(),
            server: None,
            tracing: super::call_spans::Tracing::default(),
        }
    }
}

/// Where a snapshot's plugins come from and the limits they run under.
pub struct PluginSources<'a> {
    /// Relative `file` paths are resolved here.
    pub base_dir: &'a Path,
    /// Stored artifacts are `<sha256>.wasm` here.
    pub artifact_dir: &'a Path,
    /// Deadline and memory cap of every plugin.
    pub limits: Limits,
    /// The trust domain services' identities are in; none without mTLS.
    pub trust_domain: Option<&'a str>,
}

/// Loads one chain's plugins; a plugin that cannot be loaded is an error naming it (`at`:
/// where the chain is in the snapshot).
fn load_chain(
    plugins: &[crate::snapshot::PluginRef],
    at: &str,
    runtime: &PluginRuntime,
    sources: &PluginSources<'_>,
    errors: &mut Vec<String>,
) -> Arc<Chain> {
    let mut loaded = Vec::new();
    for (i, p) in plugins.iter().enumerate() {
        let config = if p.config.is_null() {
            "{}".to_string()
        } else {
            p.config.to_string()
        };
        let mut spec = PluginSpec::new(p.name.clone(), config);
        spec.fail_strategy = p.fail_strategy;
        spec.routes = p.routes.clone();
        spec.ports = p.ports.clone();
        spec.root_id = p.root_id.clone();
        spec.limits = p
            .limits
            .map_or(sources.limits, |own| own.over(sources.limits));
        // A stored artifact whose code is held (the control plane's, imported by the watch)
        // loads from it, whether or not its bytes were fetched.
        if let (None, None, Some(digest)) = (&p.builtin, &p.file, &p.artifact)
            && let Some(held) = runtime.held(digest)
        {
            match runtime.prepare(&held, spec) {
                Ok(plugin) => loaded.push(plugin),
                Err(e) => errors.push(format!("{at}.plugins[{i}]: {e}")),
            }
            continue;
        }
        let path;
        let mut expected = p.sha256.as_deref();
        let artifact = match (&p.builtin, &p.file, &p.artifact) {
            (Some(b), _, _) => match builtin_bytes(b) {
                Some(bytes) => Artifact::Bytes(bytes),
                None => continue,
            },
            (None, Some(f), _) => {
                path = sources.base_dir.join(f);
                Artifact::File(&path)
            }
            // Fetched from the control plane's store by the sidecar before applying; the
            // digest is the name, and is verified again on load.
            (None, None, Some(digest)) => {
                path = sources.artifact_dir.join(format!("{digest}.wasm"));
                expected = Some(digest.as_str());
                Artifact::File(&path)
            }
            (None, None, None) => continue,
        };
        match runtime.plugin(artifact, expected, spec) {
            Ok(plugin) => loaded.push(plugin),
            Err(e) => errors.push(format!("{at}.plugins[{i}]: {e}")),
        }
    }
    Arc::new(Chain::new(loaded))
}

/// Compiles a snapshot: validates it, loads every plugin (files relative to `base_dir`, stored
/// artifacts as `<sha256>.wasm` in `artifact_dir`), and only when all of that succeeded,
/// updates the endpoint table.
pub fn build(
    snapshot: Snapshot,
    runtime: &PluginRuntime,
    table: &EndpointTable,
    metrics: &ProxyMetrics,
    sources: &PluginSources<'_>,
    breakers: &super::breaker::Breakers,
    origins: &super::origination::Origins,
) -> Result<Routes, Rejected> {
    snapshot.validate()?;
    let mut errors = Vec::new();
    let mut chains = HashMap::new();
    let mut origin_of = HashMap::new();
    let mut keep_origins = HashSet::new();
    for (name, svc) in &snapshot.services {
        let at = format!("services.{name}");
        let chain = load_chain(&svc.plugins, &at, runtime, sources, &mut errors);
        chains.insert(name.clone(), chain);
        if let Some(tls) = &svc.tls {
            match origins.get(tls, sources.base_dir) {
                Ok((material, origin)) => {
                    keep_origins.insert(material);
                    origin_of.insert(name.clone(), origin);
                }
                Err(e) => errors.push(format!("{at}.tls.{e}")),
            }
        }
    }
    let server = (!snapshot.inbound.plugins.is_empty()).then(|| ServerChain {
        chain: load_chain(
            &snapshot.inbound.plugins,
            "inbound",
            runtime,
            sources,
            &mut errors,
        ),
        authorize_after: snapshot.inbound.authorize_after,
    });
    if !errors.is_empty() {
        return Err(Rejected(errors));
    }
    let mut keep = HashSet::new();
    let mut keep_breakers = HashSet::new();
    let mut breaker =
        |service: &str, subset: &str, pool: &Option<crate::snapshot::ConnectionPool>| {
            let pool = pool.as_ref()?;
            let b = breakers.get(service, subset, pool);
            keep_breakers.insert(b.id);
            Some(b)
        };
    let mut services = HashMap::default();
    let mut by_vip = HashMap::default();
    for (name, svc) in &snapshot.services {
        let endpoints: Vec<Arc<Endpoint>> = svc
            .endpoints
            .iter()
            .map(|ep| {
                keep.insert(endpoint_id(name, &ep.address));
                let slot = table.upsert(name, &ep.address, ep.labels.clone());
                let workload = super::workload::of_endpoint(name, &ep.labels);
                slot.workload.store(
                    runtime.intern(&workload),
                    std::sync::atomic::Ordering::Relaxed,
                );
                slot
            })
            .collect();
        let subsets = svc
            .subsets
            .iter()
            .map(|(s, labels)| {
                let members: Vec<Arc<Endpoint>> = endpoints
                    .iter()
                    .filter(|e| e.matches(labels))
                    .cloned()
                    .collect();
                // A subset's own policy replaces the service's, field by field, as Istio
                // merges them.
                let own = svc.subset_policies.get(s);
                let (lb, hash) = match own {
                    Some(p) if p.load_balancer.is_some() || p.consistent_hash.is_some() => {
                        (p.load_balancer.as_deref(), p.consistent_hash.as_ref())
                    }
                    _ => (svc.load_balancer.as_deref(), svc.consistent_hash.as_ref()),
                };
                let pool = own.and_then(|p| p.connection_pool).or(svc.connection_pool);
                let subset = Subset {
                    name_id: runtime.intern(s),
                    selector: labels.clone(),
                    picking: Picking::new(lb, hash, &members),
                    endpoints: members,
                    breaker: breaker(name, s, &pool),
                };
                (s.clone(), subset)
            })
            .collect();
        let picking = Picking::new(
            svc.load_balancer.as_deref(),
            svc.consistent_hash.as_ref(),
            &endpoints,
        );
        let route = Route {
            service: name.clone(),
            service_id: runtime.intern(name),
            timeout: svc.timeout.as_deref().and_then(|t| parse_duration(t).ok()),
            subsets,
            endpoints,
            metrics: metrics.for_route(name),
            picking,
            chain: chains
                .remove(name)
                .unwrap_or_else(|| Arc::new(Chain::empty())),
            identity_id: sources.trust_domain.map_or(0, |td| {
                let (svc, ns) = crate::names::key_parts(name);
                runtime.intern(&format!("spiffe://{td}/ns/{ns}/sa/{svc}"))
            }),
            breaker: breaker(name, "", &svc.connection_pool),
            external: svc.external,
            origin: origin_of.remove(name),
            plaintext: svc.plaintext,
        };
        let route = Arc::new(route);
        if let Some(vip) = svc.vip {
            by_vip.insert(vip, route.clone());
        }
        services.insert(name.clone(), route);
    }
    table.retain(&keep);
    breakers.retain(&keep_breakers);
    origins.retain(&keep_origins);
    let authz = super::authz::Authorizer::new(&snapshot.inbound.authorization);
    let access_log = super::logging::Sinks::new(&snapshot.access_log);
    Ok(Routes {
        snapshot,
        services,
        by_vip,
        authz,
        access_log,
        server,
        tracing: super::call_spans::Tracing::default(),
    })
}
