//! The outbound side (app → mesh): name the destination by authority, run the chain, pick an
//! endpoint, send attempts under per-try and overall timeouts, retry as the chain decides, and
//! stream the response back.

use super::balance::{self, Candidate};
use super::body::{self, BodyEnd, ProxyBody, ReportingBody};
use super::headers;
use super::routes::Route;
use super::tee;
use super::{Inputs, Peer, local_response};
use crate::endpoints::Endpoint;
use crate::plugin::{
    Attempt, AttemptVerdict, BodyStop, CallSummary, Destination, LocalReply, Outcome, Protocol,
    RequestHead, RequestVerdict, ResponseFlags, ResponseHead, ResponseVerdict, RouteId,
};
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use super::headers::FORWARDED_HOST;

mod attempts;
use attempts::{Upstream, attempts};

/// The key of the service an authority names, read in the caller's `namespace`: its host,
/// without port or brackets, in any of the forms Kubernetes DNS gives a service
/// (`payments.default.svc.cluster.local`, `payments.default.svc` and `payments.default` all
/// name `payments`; from namespace `shop`, `payments` names `payments.shop`). Any other host
/// is kept whole, so it names no service rather than the wrong one.
pub fn service_of<'a>(authority: &'a str, namespace: &str) -> Cow<'a, str> {
    if let Some(rest) = authority.strip_prefix('[') {
        return Cow::Borrowed(rest.split(']').next().unwrap_or(rest));
    }
    let host = authority.split(':').next().unwrap_or(authority);
    crate::names::service_key_of(host, namespace).unwrap_or(Cow::Borrowed(host))
}

/// What is known of a call for its summary.
struct Call {
    id: u64,
    start: Instant,
    route: Arc<Route>,
    /// The route's plugin chain; empty for a call a proxy-wasm filter made.
    chain: Arc<crate::plugin::Chain>,
    /// The route a plugin named in `on-request`, for the scoped plugins of the later hooks.
    route_id: RouteId,
    summary: CallSummary,
    request_bytes: Arc<AtomicU64>,
    inputs: Arc<Inputs>,
    done: bool,
    /// The caller's protocol upgrade (WebSocket), completed when the upstream agrees.
    upgrade: Option<super::upgrade::Pending>,
    /// The access-log entry and the port the call was sent to, when calls are logged.
    log: Option<Box<(crate::access_log::Entry, u16)>>,
    /// The call's client span, when it is sampled and spans are reported.
    span: Option<Box<super::call_spans::Pending>>,
    /// The call's explanation, when an operator asked for one.
    explain: Option<super::explain::Shared>,
    /// Its place in the destination's `http2MaxRequests`, held while its response lasts.
    in_flight: Option<super::breaker::Slot>,
    /// The affinity cookie a consistent hash made up for it, set on its answer.
    set_cookie: Option<HeaderValue>,
}

impl Call {
    fn finish(&mut self, status: u16, response_bytes: u64, extra: ResponseFlags) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mut s = self.summary;
        let elapsed = self.start.elapsed();
        s.status = status;
        s.duration_us = elapsed.as_micros() as u64;
        s.request_bytes = self.request_bytes.load(Ordering::Relaxed);
        s.response_bytes = response_bytes;
        s.response_flags |= extra;
        // A plugin failing in on-done is counted by the runtime; the call is over either way.
        self.chain.on_done(&s, self.route_id);
        if let Some(span) = self.span.take() {
            let settings = &self.inputs.settings;
            span.finish(super::call_spans::End {
                status,
                flags: &super::logging::envoy_codes(s.response_flags),
                request_bytes: s.request_bytes,
                response_bytes,
                workload: (&settings.service, &settings.namespace),
            });
        }
        let m = &self.route.metrics;
        m.request(status);
        m.duration.observe(elapsed.as_secs_f64());
        if let Some(log) = self.log.take() {
            let (mut entry, port) = *log;
            entry.response_code = status;
            entry.bytes_sent = response_bytes;
            entry.duration_ms = elapsed.as_millis() as u64;
            super::logging::finish_outbound(&self.inputs, &self.route, &s, entry, port);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped unfinished: the caller went away before a response was sent.
        self.finish(0, 0, ResponseFlags::DOWNSTREAM_DISCONNECT);
        self.inputs.metrics.in_flight.dec();
    }
}

/// The chain of a call a proxy-wasm filter made: none, built once.
static NO_CHAIN: std::sync::LazyLock<Arc<crate::plugin::Chain>> =
    std::sync::LazyLock::new(|| Arc::new(crate::plugin::Chain::empty()));

fn flags_for(outcome: Outcome) -> ResponseFlags {
    match outcome {
        Outcome::NoEndpoint => ResponseFlags::NO_HEALTHY_UPSTREAM,
        Outcome::ConnectFailure => ResponseFlags::UPSTREAM_CONNECT_FAILURE,
        Outcome::Timeout => ResponseFlags::UPSTREAM_TIMEOUT,
        Outcome::Reset | Outcome::RefusedStream => ResponseFlags::UPSTREAM_RESET,
        Outcome::Response(_) => ResponseFlags::empty(),
    }
}

fn local_for(outcome: Outcome, service: &str) -> Response<ProxyBody> {
    let (status, text) = match outcome {
        Outcome::NoEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
        Outcome::ConnectFailure => (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error"),
        Outcome::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
        // Envoy's answer to a reset before the response head (flag UC): 503, not 502.
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers",
        ),
    };
    local_response(status, format!("weft: {text} (service {service:?})\n"))
}

/// Handles one request from the local app.
pub async fn handle(
    inputs: Arc<Inputs>,
    mut req: Request<Incoming>,
    peer: Arc<Peer>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    if super::explain::asked(req.headers_mut(), &inputs.debug_token) {
        let shared = super::explain::Shared::default();
        let mut resp = route(inputs, req, &peer, Some(shared.clone())).await;
        let mut e = shared.lock().clone();
        e.status = resp.status().as_u16();
        if let Some(v) = super::explain::header(&e) {
            resp.headers_mut().insert(super::explain::DEBUG_INFO, v);
        }
        return Ok(resp);
    }
    Ok(route(inputs, req, &peer, None).await)
}

/// Puts the normalized path into the request's URI; a response when the request is refused.
fn normalize_uri(
    parts: &mut http::request::Parts,
    mode: super::path::Normalization,
) -> Option<Response<ProxyBody>> {
    if !super::path::method_is_upper(&parts.method) {
        return Some(local_response(
            StatusCode::BAD_REQUEST,
            "weft: the method is not upper case\n",
        ));
    }
    let original = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let owned = match super::path::normalize(original, mode) {
        Ok(std::borrow::Cow::Borrowed(_)) => return None,
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => {
            return Some(local_response(
                StatusCode::BAD_REQUEST,
                format!("weft: {e}\n"),
            ));
        }
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = PathAndQuery::from_maybe_shared(owned).ok();
    match http::Uri::from_parts(uri) {
        Ok(u) => {
            parts.uri = u;
            None
        }
        Err(_) => Some(local_response(
            StatusCode::BAD_REQUEST,
            "weft: invalid request path\n",
        )),
    }
}

async fn route(
    inputs: Arc<Inputs>,
    req: Request<Incoming>,
    peer: &Peer,
    explain: Option<super::explain::Shared>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    if req.method() == Method::CONNECT {
        return super::tcp::connect_request(inputs, req).await;
    }
    let (mut parts, incoming) = req.into_parts();
    let upgrade = super::upgrade::take(&mut parts);
    // Routes and plugins match the path the destination will authorize: normalized here as
    // its inbound side will normalize it.
    if let Some(refused) = normalize_uri(&mut parts, inputs.settings.path_normalization) {
        return refused;
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let Some(authority) = authority else {
        return local_response(
            StatusCode::BAD_REQUEST,
            "weft: the request names no destination: use an absolute URI or a Host header\n",
        );
    };
    let service = service_of(&authority, &inputs.settings.namespace);
    let routes = inputs.routes.load_full();
    let dst_ip = peer.original_addr.map(|a| a.ip());
    let Some(route) = routes.lookup(service.as_ref(), dst_ip).cloned() else {
        // Captured on its way somewhere the mesh does not know: carried there unchanged,
        // unless the workload's Sidecar allows its registry only.
        if let Some(dst) = &peer.original_dst
            && !routes.snapshot.registry_only
        {
            return super::passthrough::forward(&inputs, parts, incoming, dst, start, upgrade)
                .await;
        }
        inputs
            .metrics
            .requests
            .with_label_values(&["outbound", "unknown", "502"])
            .inc();
        let mut known: Vec<&str> = routes.services.keys().map(String::as_str).collect();
        known.sort_unstable();
        return local_response(
            StatusCode::BAD_GATEWAY,
            format!(
                "weft: no route to service {service:?}{} (known services: {})\n",
                if routes.snapshot.registry_only {
                    ": this workload's Sidecar allows its registry only (REGISTRY_ONLY)"
                } else {
                    ""
                },
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    };
    // Made now, so the authority itself can move into the head without a copy; the `Host`
    // header's own value when the authority came from it, shared rather than copied.
    let mut forwarded_host = match parts.headers.get(HOST) {
        Some(h) if h.as_bytes() == authority.as_bytes() => Some(h.clone()),
        _ => HeaderValue::from_str(&authority).ok(),
    };
    headers::strip_hop_by_hop(&mut parts.headers);
    // Room for the five headers this hop adds, so the map grows at most once.
    parts.headers.reserve(5);
    headers::append_forwarded_for(&mut parts.headers, &peer.forwarded);
    // Captured on its way to a port other than the service's default: the destination's
    // sidecar sends it to that port of its pod. Only capture says so, never the app.
    match &peer.target_port {
        Some(port) if !route.external => {
            parts.headers.insert(headers::TARGET_PORT, port.clone());
        }
        _ => {
            parts.headers.remove(headers::TARGET_PORT);
        }
    }
    // Traced: the app's `traceparent` (as it sent it) names this hop's parent, and this hop's
    // span becomes the next hop's.
    let arrived = routes
        .tracing
        .client
        .as_ref()
        .and_then(|_| parts.headers.get(crate::spans::TRACEPARENT).cloned());
    headers::ensure_ids(&mut parts.headers, || inputs.random());
    // The service port the app called: as its authority says, else where capture found it
    // going, else 80.
    let port = authority
        .rsplit_once(':')
        .filter(|(host, _)| !host.ends_with(']') || authority.starts_with('['))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .or(peer.original_addr.map(|d| d.port()))
        .unwrap_or(80);
    let span = routes.tracing.client.as_ref().and_then(|t| {
        let fqdn = crate::names::fqdn(&route.service);
        super::call_spans::begin(
            crate::spans::Side::Client,
            t,
            super::call_spans::Head {
                arrived: arrived.as_ref(),
                headers: &mut parts.headers,
                method: &parts.method,
                authority: &authority,
                path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                protocol: if parts.version == Version::HTTP_2 {
                    "HTTP/2"
                } else {
                    "HTTP/1.1"
                },
                peer: peer.addr.ip(),
            },
            || format!("{fqdn}:{port}/*"),
            || format!("outbound|{port}||{fqdn}"),
            || inputs.random(),
        )
    });
    // Who calls, for the destination's telemetry; never what the app claims.
    // Never to a service outside the mesh: the mesh's own headers stay inside it.
    match &inputs.settings.peer_metadata {
        Some(m) if !route.external => {
            parts
                .headers
                .insert(super::workload::PEER_METADATA, m.clone());
        }
        _ => {
            parts.headers.remove(super::workload::PEER_METADATA);
        }
    }
    let log = (!routes.access_log.client.is_empty() || inputs.tap.active()).then(|| {
        let entry = super::logging::start(&parts, Some(&authority), peer.addr);
        Box::new((entry, port))
    });
    let protocol = if parts.version == Version::HTTP_2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    // A call a proxy-wasm filter made (`dispatch_http_call`) goes to the service as Envoy's
    // async client sends one to a cluster: past the plugin chain, which would otherwise run
    // the filter again on its own call. Only this sidecar knows the token that marks one.
    let chain = if super::explain::carries(
        &mut parts.headers,
        &super::callouts::HEADER,
        &inputs.callout_token,
    ) {
        NO_CHAIN.clone()
    } else {
        route.chain.clone()
    };
    let id = inputs.next_call_id();
    inputs.metrics.in_flight.inc();
    let mut call = Call {
        id,
        start,
        route: route.clone(),
        chain,
        route_id: RouteId::on_port(port),
        summary: CallSummary {
            call_id: id,
            status: 0,
            attempts: 0,
            duration_us: 0,
            request_bytes: 0,
            response_bytes: 0,
            endpoint: 0,
            service: route.service_id,
            subset: 0,
            source: inputs.settings.identity_id,
            destination_identity: 0,
            source_workload: inputs.settings.workload_id,
            destination_workload: 0,
            protocol,
            response_flags: ResponseFlags::empty(),
            grpc_status: None,
        },
        request_bytes: Arc::new(AtomicU64::new(0)),
        inputs: inputs.clone(),
        done: false,
        upgrade,
        log,
        span,
        explain,
        in_flight: None,
        set_cookie: None,
    };
    // The path every attempt is sent with: the caller's, unless a plugin rewrote it.
    let mut path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut head = RequestHead {
        method: parts.method.clone(),
        path: path_and_query.as_str().to_string(),
        authority,
        headers: std::mem::take(&mut parts.headers),
        source: inputs.settings.identity.clone(),
        destination: Destination {
            service: route.service.clone(),
            subset: None,
        },
        per_try_timeout: None,
        timeout: None,
        delay: None,
        route: RouteId::on_port(port),
        mirrors: Vec::new(),
        keep_route_name: call.log.is_some() || call.explain.is_some(),
        route_name: None,
        headers_end_stream: Some(incoming.is_end_stream()),
    };
    let decided = match &call.explain {
        None => call.chain.on_request(id, &mut head),
        Some(e) => {
            let mut steps = Vec::new();
            let decided = (call.chain).on_request_explained(id, &mut head, &mut steps);
            let mut e = e.lock();
            e.service = route.service.clone();
            e.route = head.route_name.clone();
            e.plugins = steps;
            e.destination = match &head.destination.subset {
                Some(s) => format!("{} subset {s}", head.destination.service),
                None => head.destination.service.clone(),
            };
            decided
        }
    };
    // A proxy-wasm filter paused the request for HTTP calls of its own: make them, then go on.
    let decided = if matches!(decided.action, RequestVerdict::Paused(_)) {
        let chain = call.chain.clone();
        super::callouts::settle(&inputs, &chain, id, &mut head, usize::MAX, decided).await
    } else {
        decided
    };
    call.route_id = head.route;
    if let (Some(log), Some(name)) = (call.log.as_mut(), head.route_name.take()) {
        log.0.route_name = Some(name);
    }
    // A rewrite (`set-path`, `set-authority`) changes what goes upstream, not what was routed;
    // the host checked both when the plugin set them.
    if head.path != path_and_query.as_str()
        && let Ok(p) = PathAndQuery::from_maybe_shared(head.path.clone())
    {
        path_and_query = p;
    }
    if forwarded_host.as_ref().map(HeaderValue::as_bytes) != Some(head.authority.as_bytes())
        && let Ok(v) = HeaderValue::from_str(&head.authority)
    {
        forwarded_host = Some(v);
    }
    if decided.plugin_failed {
        call.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
    }
    // A gRPC caller's own deadline (`grpc-timeout`) bounds the call too, within the route's
    // timeout: Istio caps the header at the route's timeout (`grpc_timeout_header_max`).
    let route_timeout = head.timeout.or(route.timeout);
    let grpc_timeout = super::grpc::is_grpc(&head.headers)
        .then(|| super::grpc::timeout(&head.headers))
        .flatten();
    let timeout = match grpc_timeout {
        Some(g) => Some(route_timeout.map_or(g, |t| t.min(g))),
        None => route_timeout,
    };
    let deadline = timeout.map(|t| start + t);
    if let RequestVerdict::Respond(reply) = decided.action {
        // An injected delay holds a local answer too, as Envoy delays before it aborts.
        if let Some(delay) = head.delay
            && !hold(delay, deadline).await
        {
            return delay_timed_out(call, &route.service);
        }
        return answer_locally(call, reply, decided.answered_at);
    }
    // The chain may have sent the call to another service or subset.
    let target = if head.destination.service == route.service {
        route.clone()
    } else {
        match routes.services.get(&head.destination.service) {
            Some(r) => r.clone(),
            None => {
                call.finish(502, 0, ResponseFlags::NO_ROUTE);
                return local_response(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "weft: a plugin routed to unknown service {:?}\n",
                        head.destination.service
                    ),
                );
            }
        }
    };
    call.summary.service = target.service_id;
    call.summary.destination_identity = target.identity_id;
    let (endpoints, breaker, picking): (&[Arc<Endpoint>], _, _) = match &head.destination.subset {
        None => (&target.endpoints, target.breaker.as_ref(), &target.picking),
        Some(name) => match target.subsets.get(name) {
            Some(subset) => {
                call.summary.subset = subset.name_id;
                (&subset.endpoints, subset.breaker.as_ref(), &subset.picking)
            }
            None => {
                call.finish(503, 0, ResponseFlags::NO_ROUTE);
                return local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "weft: service {:?} has no subset {name:?}\n",
                        target.service
                    ),
                );
            }
        },
    };
    let (incoming, tripped) = inputs.bound_request(incoming, start, OUTBOUND);
    let content_length = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = inputs.settings.replay_limit;
    let body_follows = !incoming.is_end_stream();
    let pipe = body_follows
        .then(|| (call.chain).body_pipeline(id, call.route_id, false, limit))
        .flatten();
    // A body of unknown length goes on as it arrives (through the proxy-wasm filters' body
    // callbacks first, if any), a copy kept for retries, as Envoy's router does: a streaming
    // call may wait for an answer before it sends more. One whose length is known, or that a
    // mirror needs whole, is read first, up to the bound.
    let streams = body_follows && content_length.is_none() && head.mirrors.is_empty();
    let counter = call.request_bytes.clone();
    let read = match (streams, &pipe) {
        (true, Some(_)) => Ok(body::RequestBody::streaming(incoming, counter)),
        (true, None) => {
            let tee = tee::Tee::new(incoming.boxed_unsync(), limit, counter);
            Ok(body::RequestBody::Teed(tee))
        }
        (false, _) => body::read_for_replay(incoming, content_length, limit, counter).await,
    };
    let mut request_body = match read {
        Ok(b) => b,
        Err(_) if timed_out(&tripped) => return request_timed_out(call),
        Err(_) => {
            call.finish(0, 0, ResponseFlags::DOWNSTREAM_DISCONNECT);
            return local_response(
                StatusCode::BAD_REQUEST,
                "weft: the request body could not be read\n",
            );
        }
    };
    // proxy-wasm filters' request-body callbacks: on the whole body before anything goes
    // upstream when it was read whole, so one may rewrite it or answer in its place; a
    // streaming one passes them frame by frame, nothing going on before their first bytes.
    let no_body = matches!(&request_body, body::RequestBody::Replayable(b, None) if b.is_empty());
    if !no_body && let Some(mut pipe) = pipe {
        let whole = match &mut request_body {
            body::RequestBody::Replayable(b, t) => Some((b, t)),
            _ => None,
        };
        match whole {
            None => {
                // A filter may change the length as the body streams.
                head.headers.remove(CONTENT_LENGTH);
                match request_body.stream_through(pipe).await {
                    Ok(()) if content_length.is_none() => request_body.keep_for_retries(limit),
                    Ok(()) => {}
                    Err(body::StreamStop::Read(_)) if timed_out(&tripped) => {
                        return request_timed_out(call);
                    }
                    Err(body::StreamStop::Read(_)) => {
                        call.finish(0, 0, ResponseFlags::DOWNSTREAM_DISCONNECT);
                        return local_response(
                            StatusCode::BAD_REQUEST,
                            "weft: the request body could not be read\n",
                        );
                    }
                    Err(body::StreamStop::Stopped(stop)) => {
                        return body_stopped(call, stop, limit);
                    }
                }
            }
            Some((b, trailers)) => match pipe.whole(b.clone(), trailers.as_mut()) {
                Ok(out) => {
                    if out.len() != b.len() {
                        head.headers
                            .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
                    }
                    *b = out;
                    if pipe.plugin_failed {
                        call.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
                    }
                }
                Err(stop) => return body_stopped(call, stop, limit),
            },
        }
    }
    if !head.mirrors.is_empty() {
        let whole = match &request_body {
            body::RequestBody::Replayable(b, _) => Some(b.clone()),
            _ => None,
        };
        let authority = forwarded_host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(&target.service);
        super::mirror::send(
            &inputs,
            &routes,
            &head.mirrors,
            super::mirror::Copy {
                head: &head,
                path_and_query: &path_and_query,
                authority,
                body: whole,
            },
        );
    }
    if let Some(delay) = head.delay
        && !hold(delay, deadline).await
    {
        return delay_timed_out(call, &target.service);
    }
    if let Some(v) = forwarded_host
        && !target.external
    {
        head.headers.insert(FORWARDED_HOST, v);
    }
    if let Some(u) = &call.upgrade {
        u.ask_again(&mut head.headers);
    }
    // Consistent hashing: the request's key places it on the ring (no key: a random pick,
    // as Envoy makes one).
    let hashing = match (&picking.hash, &picking.ring) {
        (Some(policy), Some(ring)) => {
            let keyed = policy.key(
                &head.headers,
                path_and_query.query(),
                peer.addr.ip(),
                || inputs.random(),
            );
            let hash = keyed.map(|k| {
                call.set_cookie = k.set_cookie;
                k.hash
            });
            Some((ring, hash))
        }
        _ => None,
    };
    let upstream = Upstream {
        target: &target,
        endpoints,
        path_and_query: &path_and_query,
        deadline,
        breaker,
        hashing,
        balancer: &picking.balancer,
    };
    let (outcome, response) =
        attempts(&inputs, &mut call, &upstream, &mut head, &mut request_body).await;
    match response {
        Some(resp) => respond(call, resp),
        // A streamed body that stalled fails its attempt; the caller's lateness, not the
        // upstream's, is what the answer says.
        None if timed_out(&tripped) => request_timed_out(call),
        // Envoy's answer when a circuit breaker refuses: 503, UO, no retry.
        None if call
            .summary
            .response_flags
            .contains(ResponseFlags::UPSTREAM_OVERFLOW) =>
        {
            call.finish(503, 0, ResponseFlags::empty());
            local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "weft: upstream overflow: the circuit breaker of {:?} is open\n",
                    target.service
                ),
            )
        }
        None => {
            let resp = local_for(outcome, &target.service);
            let mut flags = flags_for(outcome);
            if call.summary.attempts > 1 {
                flags |= ResponseFlags::RETRY_LIMIT_EXCEEDED;
            }
            call.finish(resp.status().as_u16(), 0, flags);
            resp
        }
    }
}

/// The answer to a call whose request body a plugin stopped: its own answer, its fail-closed
/// failure, or 413 when it asked to hold more than the bound (`limit`), as Envoy answers.
fn body_stopped(mut call: Call, stop: BodyStop, limit: usize) -> Response<ProxyBody> {
    match stop {
        BodyStop::Respond(reply, at) => answer_locally(call, *reply, Some(at)),
        BodyStop::Failed(reply) => {
            call.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
            answer_locally(call, *reply, None)
        }
        BodyStop::TooLarge => {
            call.finish(413, 0, ResponseFlags::empty());
            local_response(StatusCode::PAYLOAD_TOO_LARGE, too_large(limit))
        }
    }
}

/// Why a request body was refused with 413.
pub(crate) fn too_large(limit: usize) -> String {
    format!(
        "weft: a proxy-wasm filter asked to hold more of the request body than the {limit} bytes one may hold\n"
    )
}

/// Answers the caller with a plugin's `reply`: back through the plugins placed before the
/// one that answered (at `answered_at`), which saw the request, as any response goes.
fn answer_locally(
    mut call: Call,
    reply: LocalReply,
    answered_at: Option<usize>,
) -> Response<ProxyBody> {
    let mut head = ResponseHead {
        status: reply.status,
        headers: reply.headers,
        attempts: 0,
    };
    let mut payload = reply.body;
    if let Some(at) = answered_at {
        let back = (call.chain).on_local_reply(call.id, &mut head, call.route_id, at);
        if back.plugin_failed {
            call.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
        }
        if let ResponseVerdict::Respond(r) = back.action {
            (head.status, head.headers, payload) = (r.status, r.headers, r.body);
        }
    }
    let status = head.status.as_u16();
    let mut resp = Response::new(body::full(payload));
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    call.finish(
        status,
        resp.body().size_hint().exact().unwrap_or(0),
        ResponseFlags::LOCAL_REPLY,
    );
    resp
}

/// Holds the call for a plugin's injected delay, but never past its deadline. False when the
/// deadline came first: the call has timed out. A caller hanging up drops this future, and so
/// cancels the delay.
async fn hold(delay: Duration, deadline: Option<Instant>) -> bool {
    let Some(deadline) = deadline else {
        tokio::time::sleep(delay).await;
        return true;
    };
    // Like a retry's back-off, a delay that ends at or past the deadline leaves no time to
    // call upstream: wait out only what the caller was promised.
    if deadline.saturating_duration_since(Instant::now()) > delay {
        tokio::time::sleep(delay).await;
        true
    } else {
        tokio::time::sleep_until(deadline.into()).await;
        false
    }
}

/// The answer to a call whose injected delay reached its deadline: a 504 with the UT flag,
/// as when the upstream is too slow, so callers and telemetry see one kind of timeout.
fn delay_timed_out(mut call: Call, service: &str) -> Response<ProxyBody> {
    let resp = local_for(Outcome::Timeout, service);
    call.finish(resp.status().as_u16(), 0, ResponseFlags::UPSTREAM_TIMEOUT);
    resp
}

/// The outbound listener's place in [`Inputs::stream_timeouts`].
pub(super) const OUTBOUND: usize = 0;

/// Whether the request body was ended by a bound.
fn timed_out(tripped: &Option<Arc<super::deadline::Tripped>>) -> bool {
    tripped.as_ref().is_some_and(|t| t.get().is_some())
}

/// The answer to a call whose request did not arrive in time: Envoy's 408.
fn request_timed_out(mut call: Call) -> Response<ProxyBody> {
    call.finish(408, 0, ResponseFlags::empty());
    local_response(StatusCode::REQUEST_TIMEOUT, "weft: request timeout\n")
}

fn respond(mut call: Call, mut resp: Response<Incoming>) -> Response<ProxyBody> {
    if let Some(u) = call.upgrade.take() {
        u.complete(&mut resp, call.inputs.settings.timeouts.connection.idle);
    }
    let (mut parts, incoming) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    super::upgrade::restore_response_headers(&mut parts);
    let mut head = ResponseHead {
        status: parts.status,
        headers: std::mem::take(&mut parts.headers),
        attempts: call.summary.attempts,
    };
    let decided = (call.chain).on_response(call.id, &mut head, call.route_id);
    if decided.plugin_failed {
        call.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
    }
    if let ResponseVerdict::Respond(reply) = decided.action {
        let mut out = Response::new(body::full(reply.body));
        *out.status_mut() = reply.status;
        *out.headers_mut() = reply.headers;
        call.finish(reply.status.as_u16(), 0, ResponseFlags::LOCAL_REPLY);
        return out;
    }
    parts.status = head.status;
    parts.headers = head.headers;
    if let Some(cookie) = call.set_cookie.take() {
        parts.headers.append(http::header::SET_COOKIE, cookie);
    }
    parts.version = Version::HTTP_11;
    let status = parts.status.as_u16();
    // Retried and still failing: the retries ran out (or the budget refused one), which
    // Envoy, and so Istio's telemetry, flag as URX.
    let exhausted = if call.summary.attempts > 1 && status >= 500 {
        ResponseFlags::RETRY_LIMIT_EXCEEDED
    } else {
        ResponseFlags::empty()
    };
    // A trailers-only gRPC answer carries its status in the headers.
    call.summary.grpc_status = super::grpc::status(&parts.headers);
    let upstream = call.inputs.bound_response(incoming, OUTBOUND);
    let upstream = body::filtered(upstream, parts.status, &mut parts.headers, || {
        let limit = call.inputs.settings.replay_limit;
        call.chain
            .body_pipeline(call.id, call.route_id, true, limit)
    });
    let reporting = ReportingBody::new(upstream, move |end: BodyEnd| {
        call.summary.grpc_status = end.grpc_status.or(call.summary.grpc_status);
        let flags = if end.complete {
            exhausted
        } else {
            exhausted | ResponseFlags::DOWNSTREAM_DISCONNECT
        };
        call.finish(status, end.bytes, flags);
        drop(call);
    });
    Response::from_parts(parts, reporting.boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::service_of;

    #[test]
    fn the_authority_names_the_service() {
        let of = |authority| service_of(authority, "default");
        assert_eq!(of("payments"), "payments");
        assert_eq!(of("payments:8080"), "payments");
        assert_eq!(of("[::1]:80"), "::1");
        assert_eq!(of("payments.default.svc.cluster.local:80"), "payments");
        assert_eq!(of("payments.default"), "payments");
        // Not the service `payments`: another namespace, another domain.
        assert_eq!(of("payments.shop.svc.cluster.local"), "payments.shop");
        assert_eq!(of("payments.example.com"), "payments.example.com");
        // A short host is read in the caller's namespace.
        assert_eq!(service_of("payments:80", "shop"), "payments.shop");
        assert_eq!(service_of("payments.default:80", "shop"), "payments");
    }
}
