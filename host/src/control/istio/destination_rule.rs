//! DestinationRule (`networking.istio.io`): the spec as written, the Istio fields Weft refuses,
//! and the checks one document gets.

use super::*;

/// A DestinationRule's spec: a service's subsets and traffic policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRule {
    /// The service's host.
    pub host: String,
    /// Load balancing and outlier detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named label selectors.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// The namespaces whose sidecars see it (`.` its own, `*` all); absent: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// Istio's `TrafficPolicy`, the parts Weft implements.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// The load-balancing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Circuit breaking: bounds on connections, requests and retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// What TLS the sidecar sends (the DestinationRule's own; refused in subsets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<ClientTls>>,
}

/// Istio's `ConnectionPoolSettings`, the parts Weft implements.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    /// Connection bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpPool>,
    /// Request bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPool>,
}

/// Istio's `ConnectionPoolSettings.TCPSettings`: `maxConnections`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpPool {
    /// The most connections open to the destination at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
}

/// Istio's `ConnectionPoolSettings.HTTPSettings`, the parts Weft implements.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPool {
    /// The most requests waiting for a connection.
    #[serde(
        default,
        rename = "http1MaxPendingRequests",
        skip_serializing_if = "Option::is_none"
    )]
    pub http1_max_pending_requests: Option<i64>,
    /// The most requests in flight to the destination.
    #[serde(
        default,
        rename = "http2MaxRequests",
        skip_serializing_if = "Option::is_none"
    )]
    pub http2_max_requests: Option<i64>,
    /// Requests per connection before it is closed (1: no keep-alive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i64>,
    /// The most retries in flight to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
}

/// Istio's `LoadBalancerSettings`: `simple` or `consistentHash`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    /// `LEAST_REQUEST`, `ROUND_ROBIN`, `RANDOM` or `UNSPECIFIED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<String>,
    /// Affinity: requests with the same key go to the same endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

/// Istio's `LoadBalancerSettings.ConsistentHashLB`, the parts Weft implements.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHash {
    /// Hash this request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// Hash this cookie's value (generated when absent and a `ttl` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    /// Hash the caller's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// Hash this query parameter's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    /// Envoy's ring hash, with its minimum ring size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    /// Deprecated in Istio for `ringHash.minimumRingSize`, still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Istio's `ConsistentHashLB.HTTPCookie`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCookie {
    /// The cookie's name.
    pub name: String,
    /// The path a generated cookie is set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A generated cookie's lifetime (`0s`: a session cookie); absent: none is generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Istio's `ConsistentHashLB.RingHash`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHash {
    /// The fewest entries on the ring (Envoy's default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// The largest ring Weft builds (Envoy's default maximum is 8M entries; a sidecar holds a
/// ring per destination, so Weft stops lower).
pub const MAX_RING: u64 = 1 << 20;

/// Istio's `OutlierDetection`, passed to the outlier plugin as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// 5xx errors in a row that eject an endpoint.
    #[serde(
        default,
        rename = "consecutive5xxErrors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    /// Gateway errors in a row that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// How often an ejection multiplier falls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long the first ejection lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// The most endpoints out at once, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// No ejection below this share of serving endpoints, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<u32>,
}

/// A named subset: the endpoints whose labels include these.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    /// Its name (`v1`).
    pub name: String,
    /// The labels an endpoint must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its own policy: each field given replaces the DestinationRule's for calls to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

impl TrafficPolicy {
    /// The snapshot's `consistentHash`, when the load balancer is one.
    pub fn consistent_hash(&self) -> Option<crate::snapshot::ConsistentHash> {
        let c = self.load_balancer.as_ref()?.consistent_hash.as_ref()?;
        Some(crate::snapshot::ConsistentHash {
            header: c.http_header_name.clone(),
            cookie: c.http_cookie.as_ref().map(|k| crate::snapshot::HashCookie {
                name: k.name.clone(),
                path: k.path.clone(),
                ttl_s: k
                    .ttl
                    .as_deref()
                    .and_then(|t| parse_duration(t).ok())
                    .map(|d| d.as_secs()),
            }),
            source_ip: c.use_source_ip.unwrap_or(false),
            query_parameter: c.http_query_parameter_name.clone(),
            minimum_ring_size: c
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(c.minimum_ring_size)
                .filter(|n| *n > 0)
                .unwrap_or(1024) as u32,
        })
    }

    /// The snapshot's `connectionPool`: Istio's fields, each 0 or absent meaning unbounded.
    pub fn connection_pool(&self) -> Option<crate::snapshot::ConnectionPool> {
        let pool = self.connection_pool.as_ref()?;
        let bound = |v: Option<i64>| v.filter(|n| *n > 0).and_then(|n| u32::try_from(n).ok());
        let tcp = pool.tcp.clone().unwrap_or_default();
        let http = pool.http.clone().unwrap_or_default();
        let out = crate::snapshot::ConnectionPool {
            max_connections: bound(tcp.max_connections),
            max_pending_requests: bound(http.http1_max_pending_requests),
            max_requests: bound(http.http2_max_requests),
            max_requests_per_connection: bound(http.max_requests_per_connection),
            max_retries: bound(http.max_retries),
        };
        (out != crate::snapshot::ConnectionPool::default()).then_some(out)
    }

    /// The snapshot's `loadBalancer` value, when `simple` is given and known.
    pub fn load_balancer(&self) -> Option<&'static str> {
        let simple = self.load_balancer.as_ref()?.simple.as_deref()?;
        load_balancer_of(simple).ok()
    }
}

impl DestinationRule {
    /// The snapshot's `consistentHash`, when the load balancer is one.
    pub fn consistent_hash(&self) -> Option<crate::snapshot::ConsistentHash> {
        self.traffic_policy.as_ref()?.consistent_hash()
    }

    /// The snapshot's `connectionPool`: Istio's fields, each 0 or absent meaning unbounded.
    pub fn connection_pool(&self) -> Option<crate::snapshot::ConnectionPool> {
        self.traffic_policy.as_ref()?.connection_pool()
    }

    /// The snapshot's `loadBalancer` value, when `simple` is given and known.
    pub fn load_balancer(&self) -> Option<&'static str> {
        self.traffic_policy.as_ref()?.load_balancer()
    }

    /// The snapshot's `plaintext`: `tls.mode: DISABLE`.
    pub fn plaintext(&self) -> bool {
        self.traffic_policy
            .as_ref()
            .and_then(|t| t.tls.as_ref())
            .is_some_and(|t| t.disabled())
    }

    /// The snapshot's `tls`: TLS to originate to a host outside the mesh.
    pub fn origination(&self) -> Option<crate::snapshot::OriginTls> {
        self.traffic_policy.as_ref()?.tls.as_ref()?.origination()
    }

    /// The snapshot's `subsetPolicies`: each subset's own policy, the fields it sets.
    pub fn subset_policies(&self) -> BTreeMap<String, crate::snapshot::SubsetPolicy> {
        self.subsets
            .iter()
            .filter_map(|s| {
                let p = s.traffic_policy.as_ref()?;
                Some((
                    s.name.clone(),
                    crate::snapshot::SubsetPolicy {
                        load_balancer: p.load_balancer().map(str::to_string),
                        consistent_hash: p.consistent_hash(),
                        connection_pool: p.connection_pool(),
                    },
                ))
            })
            .filter(|(_, p)| *p != crate::snapshot::SubsetPolicy::default())
            .collect()
    }
}

/// The snapshot's `loadBalancer` for Istio's `simple` policy.
pub fn load_balancer_of(simple: &str) -> Result<&'static str, String> {
    match simple {
        // LEAST_CONN is Istio's deprecated name for LEAST_REQUEST.
        "LEAST_REQUEST" | "UNSPECIFIED" | "LEAST_CONN" => Ok("leastRequest"),
        "ROUND_ROBIN" => Ok("roundRobin"),
        "RANDOM" => Ok("random"),
        "PASSTHROUGH" => Err("PASSTHROUGH is not supported by Weft yet".to_string()),
        other => Err(format!(
            "unknown policy {other:?} (known: LEAST_REQUEST, ROUND_ROBIN, RANDOM, UNSPECIFIED)"
        )),
    }
}

pub(in crate::control) const DR_UNSUPPORTED: Unsupported = &[
    ("", &["workloadSelector"]),
    (
        "trafficPolicy",
        &["portLevelSettings", "tunnel", "proxyProtocol"],
    ),
    (
        "trafficPolicy.tls",
        super::client_tls::CLIENT_TLS_UNSUPPORTED,
    ),
    ("trafficPolicy.loadBalancer.consistentHash", &["maglev"]),
    (
        "trafficPolicy.loadBalancer.consistentHash.httpCookie",
        &["attributes"],
    ),
    (
        "trafficPolicy.loadBalancer",
        &["localityLbSetting", "warmupDurationSecs", "warmup"],
    ),
    (
        "trafficPolicy.outlierDetection",
        &[
            "splitExternalLocalOriginErrors",
            "consecutiveLocalOriginFailures",
            "consecutiveErrors",
        ],
    ),
    (
        "trafficPolicy.connectionPool.tcp",
        &[
            "connectTimeout",
            "tcpKeepalive",
            "maxConnectionDuration",
            "idleTimeout",
        ],
    ),
    (
        "trafficPolicy.connectionPool.http",
        &[
            "idleTimeout",
            "h2UpgradePolicy",
            "useClientProtocol",
            "maxConcurrentStreams",
        ],
    ),
    (
        "subsets[].trafficPolicy",
        &[
            "tls",
            "portLevelSettings",
            "tunnel",
            "proxyProtocol",
            "outlierDetection",
        ],
    ),
    (
        "subsets[].trafficPolicy.loadBalancer.consistentHash",
        &["maglev"],
    ),
    (
        "subsets[].trafficPolicy.loadBalancer.consistentHash.httpCookie",
        &["attributes"],
    ),
    (
        "subsets[].trafficPolicy.loadBalancer",
        &["localityLbSetting", "warmupDurationSecs", "warmup"],
    ),
    (
        "subsets[].trafficPolicy.connectionPool.tcp",
        &[
            "connectTimeout",
            "tcpKeepalive",
            "maxConnectionDuration",
            "idleTimeout",
        ],
    ),
    (
        "subsets[].trafficPolicy.connectionPool.http",
        &[
            "idleTimeout",
            "h2UpgradePolicy",
            "useClientProtocol",
            "maxConcurrentStreams",
        ],
    ),
];

pub(super) fn check_destination_rule(
    dr: &DestinationRule,
    namespace: &str,
    problems: &mut Problems,
) {
    if let Err(e) = crate::names::host_ref(&dr.host, namespace) {
        problems.at("spec.host", e);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        if s.name.is_empty() {
            problems.at(format!("spec.subsets[{i}].name"), "must not be empty");
        } else if !names.insert(s.name.as_str()) {
            problems.at(
                format!("spec.subsets[{i}].name"),
                format!("subset {} is defined twice", s.name),
            );
        }
    }
    if let Some(policy) = &dr.traffic_policy {
        check_policy(policy, "spec.trafficPolicy", problems);
        if let Some(tls) = &policy.tls {
            super::client_tls::check_client_tls(
                tls,
                &dr.host,
                namespace,
                "spec.trafficPolicy.tls",
                problems,
            );
        }
    }
    for (i, s) in dr.subsets.iter().enumerate() {
        if let Some(policy) = &s.traffic_policy {
            check_policy(
                policy,
                &format!("spec.subsets[{i}].trafficPolicy"),
                problems,
            );
        }
    }
}

/// The checks of one traffic policy, the DestinationRule's or a subset's, at `at`.
fn check_policy(policy: &TrafficPolicy, at: &str, problems: &mut Problems) {
    let top = at;
    if let Some(lb) = &policy.load_balancer
        && let Some(c) = &lb.consistent_hash
    {
        let at = &format!("{top}.loadBalancer");
        if lb.simple.is_some() {
            problems.at(
                at,
                "give one of simple or consistentHash (Istio's oneof), not both",
            );
        }
        let keys = [
            c.http_header_name.is_some(),
            c.http_cookie.is_some(),
            c.use_source_ip == Some(true),
            c.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() != 1 {
            problems.at(
                format!("{at}.consistentHash"),
                "give exactly one of httpHeaderName, httpCookie, useSourceIp: true, httpQueryParameterName",
            );
        }
        for (field, name) in [
            ("httpHeaderName", &c.http_header_name),
            ("httpQueryParameterName", &c.http_query_parameter_name),
            (
                "httpCookie.name",
                &c.http_cookie.as_ref().map(|k| k.name.clone()),
            ),
        ] {
            if name.as_deref().is_some_and(str::is_empty) {
                problems.at(format!("{at}.consistentHash.{field}"), "must not be empty");
            }
        }
        if let Some(header) = &c.http_header_name
            && http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            problems.at(
                format!("{at}.consistentHash.httpHeaderName"),
                format!("{header:?} is not a valid header name"),
            );
        }
        if let Some(cookie) = &c.http_cookie {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
            };
            if !cookie.name.is_empty() && !token(&cookie.name) {
                problems.at(
                    format!("{at}.consistentHash.httpCookie.name"),
                    format!("{:?} is not a valid cookie name", cookie.name),
                );
            }
            if let Some(path) = &cookie.path
                && (!path.starts_with('/')
                    || path.bytes().any(|b| b == b';' || b.is_ascii_control()))
            {
                problems.at(
                    format!("{at}.consistentHash.httpCookie.path"),
                    format!("{path:?} must start with / and hold no ; or control characters"),
                );
            }
            if let Some(ttl) = &cookie.ttl {
                check_duration(
                    ttl,
                    &format!("{at}.consistentHash.httpCookie.ttl"),
                    false,
                    problems,
                );
            }
        }
        if c.ring_hash.is_some() && c.minimum_ring_size.is_some() {
            problems.at(
                format!("{at}.consistentHash"),
                "give ringHash.minimumRingSize or the deprecated minimumRingSize, not both",
            );
        }
        let size = c
            .ring_hash
            .as_ref()
            .and_then(|r| r.minimum_ring_size)
            .or(c.minimum_ring_size);
        if let Some(n) = size
            && n > MAX_RING
        {
            problems.at(
                format!("{at}.consistentHash.ringHash.minimumRingSize"),
                format!("{n} is past Weft's largest ring, {MAX_RING}"),
            );
        }
    }
    if let Some(simple) = policy
        .load_balancer
        .as_ref()
        .and_then(|l| l.simple.as_deref())
        && let Err(e) = load_balancer_of(simple)
    {
        problems.at(format!("{top}.loadBalancer.simple"), e);
    }
    if let Some(pool) = &policy.connection_pool {
        let at = format!("{top}.connectionPool");
        let tcp = pool.tcp.clone().unwrap_or_default();
        let http = pool.http.clone().unwrap_or_default();
        for (field, value) in [
            ("tcp.maxConnections", tcp.max_connections),
            (
                "http.http1MaxPendingRequests",
                http.http1_max_pending_requests,
            ),
            ("http.http2MaxRequests", http.http2_max_requests),
            (
                "http.maxRequestsPerConnection",
                http.max_requests_per_connection,
            ),
            ("http.maxRetries", http.max_retries),
        ] {
            if let Some(n) = value
                && !(0..=i64::from(i32::MAX)).contains(&n)
            {
                problems.at(
                    format!("{at}.{field}"),
                    format!(
                        "must be between 0 and {} (Istio's int32), got {n}",
                        i32::MAX
                    ),
                );
            }
        }
    }
    if let Some(o) = &policy.outlier_detection {
        let at = format!("{top}.outlierDetection");
        for (field, value) in [
            ("interval", &o.interval),
            ("baseEjectionTime", &o.base_ejection_time),
        ] {
            if let Some(t) = value {
                check_duration(t, &format!("{at}.{field}"), true, problems);
            }
        }
        for (field, value) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if let Some(p) = value {
                check_percentage(f64::from(p), &format!("{at}.{field}"), problems);
            }
        }
    }
}
