//! The data plane's side of access logging: the snapshot's sinks compiled once per snapshot,
//! an entry started from a request head, and lines sent to the writer when the call is over.

use super::headers::{FORWARDED_FOR, REQUEST_ID};
use crate::access_log::{Encoding, Entry, Filter, Sides, Writer, filter};
use http::header::{HOST, HeaderName, USER_AGENT};
use std::net::SocketAddr;

/// One sink, its filter parsed.
pub struct Sink {
    encoding: Encoding,
    filter: Option<Filter>,
    /// Its file; none: stdout.
    path: Option<std::sync::Arc<str>>,
}

/// Both sides' sinks.
#[derive(Default)]
pub struct Sinks {
    /// Outbound calls.
    pub client: Vec<Sink>,
    /// Inbound calls.
    pub server: Vec<Sink>,
}

impl Sinks {
    /// Compiles a snapshot's access logging (its filters were validated with it).
    pub fn new(sides: &Sides) -> Sinks {
        let compile = |list: &[crate::access_log::Sink]| {
            list.iter()
                .map(|s| Sink {
                    encoding: s.encoding,
                    filter: s.filter.as_deref().and_then(|f| Filter::parse(f).ok()),
                    path: s.path.as_deref().map(std::sync::Arc::from),
                })
                .collect()
        };
        Sinks {
            client: compile(&sides.client),
            server: compile(&sides.server),
        }
    }
}

/// An entry with what the request head says; the rest is filled in when the call is over.
pub fn start(head: &http::request::Parts, authority: Option<&str>, from: SocketAddr) -> Entry {
    let header = |name: HeaderName| {
        head.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Entry {
        start: Some(std::time::SystemTime::now()),
        method: head.method.as_str().to_string(),
        path: head
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str)
            .to_string(),
        protocol: if head.version == http::Version::HTTP_2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        },
        x_forwarded_for: header(FORWARDED_FOR),
        user_agent: header(USER_AGENT),
        request_id: header(REQUEST_ID),
        authority: authority.map(str::to_string).or_else(|| header(HOST)),
        downstream_remote_address: Some(from.to_string()),
        ..Entry::default()
    }
}

/// Envoy's short form of a call's flags (`UF,URX`), or `-`, as Istio's `response_flags`.
pub fn envoy_codes(flags: crate::plugin::ResponseFlags) -> String {
    use crate::plugin::ResponseFlags as F;
    let codes = [
        (F::NO_HEALTHY_UPSTREAM, "UH"),
        (F::UPSTREAM_CONNECT_FAILURE, "UF"),
        (F::UPSTREAM_TIMEOUT, "UT"),
        (F::UPSTREAM_RESET, "UR"),
        (F::UPSTREAM_OVERFLOW, "UO"),
        (F::RETRY_LIMIT_EXCEEDED, "URX"),
        (F::DOWNSTREAM_DISCONNECT, "DC"),
        (F::NO_ROUTE, "NR"),
        (F::LOCAL_REPLY, "LR"),
        (F::PLUGIN_FAILURE, "PF"),
    ];
    let set: Vec<&str> = codes
        .iter()
        .filter(|(f, _)| flags.contains(*f))
        .map(|(_, c)| *c)
        .collect();
    if set.is_empty() {
        "-".to_string()
    } else {
        set.join(",")
    }
}

/// Completes an outbound call's entry from its summary (flags, bytes received, the endpoint
/// that answered, Istio's cluster name for `port`), publishes it to tap watchers and writes
/// it to the client-side sinks.
pub fn finish_outbound(
    inputs: &super::Inputs,
    route: &super::routes::Route,
    s: &crate::plugin::CallSummary,
    mut entry: Entry,
    port: u16,
) {
    entry.response_flags = envoy_codes(s.response_flags);
    entry.bytes_received = s.request_bytes;
    if s.attempts > 0 {
        entry.upstream_host = inputs.table.get(s.endpoint).map(|e| e.address.to_string());
    }
    let subset = route
        .subsets
        .iter()
        .find(|(_, sub)| s.subset != 0 && sub.name_id == s.subset)
        .map_or("", |(name, _)| name.as_str());
    entry.upstream_cluster = Some(format!(
        "outbound|{port}|{subset}|{}",
        crate::names::fqdn(&route.service)
    ));
    if inputs.tap.active() {
        inputs.tap.publish(super::tap::Event {
            direction: "outbound",
            source: inputs.settings.service.clone(),
            destination: route.service.clone(),
            subset: (!subset.is_empty()).then(|| subset.to_string()),
            attempts: s.attempts,
            entry: entry.clone(),
        });
    }
    let routes = inputs.routes.load();
    emit(&inputs.access_log, &routes.access_log.client, &entry);
}

/// Writes the entry to every sink whose filter admits it.
pub fn emit(writer: &Writer, sinks: &[Sink], entry: &Entry) {
    let call = filter::Call {
        code: entry.response_code,
        method: &entry.method,
        path: &entry.path,
    };
    for sink in sinks {
        if sink.filter.as_ref().is_none_or(|f| f.admits(&call)) {
            writer.write(sink.path.clone(), entry.format(sink.encoding));
        }
    }
}
