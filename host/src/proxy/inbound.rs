//! The inbound side (mesh → app): accept calls from peer sidecars and forward them to the local
//! app over pooled HTTP/1.1, streaming both ways.

use super::body::ProxyBody;
use super::headers;
use super::headers::FORWARDED_HOST;
use super::server_side::{self, ServerCall};
use super::workload::PEER_METADATA;
use super::{Inputs, Peer, authz, local_response, path};
use crate::plugin::ResponseFlags;
use http::header::{HOST, HeaderName};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;

/// The caller's identity for the app, as Istio's sidecars forward it (`By=<us>;URI=<caller>`).
pub const FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The inbound listener's place in [`Inputs::stream_timeouts`].
const INBOUND: usize = 1;

/// Handles one request from a peer sidecar, logged and traced when the snapshot says so.
pub async fn handle(
    inputs: Arc<Inputs>,
    mut req: Request<Incoming>,
    peer: Arc<Peer>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    if req.method() == http::Method::CONNECT {
        return answer(inputs, req, peer, None).await;
    }
    let routes = inputs.routes.load();
    let logged = !routes.access_log.server.is_empty() || inputs.tap.active();
    let port = req
        .headers()
        .get(headers::TARGET_PORT)
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
    let span = routes.tracing.server.as_ref().and_then(|t| {
        let arrived = req.headers().get(crate::spans::TRACEPARENT).cloned();
        let (method, uri, version) = (req.method().clone(), req.uri().clone(), req.version());
        let authority = req
            .headers()
            .get(FORWARDED_HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let fqdn = crate::names::fqdn(&inputs.settings.service_key);
        let app_port = inputs.settings.app_at(port).map_or(0, |a| a.port());
        super::call_spans::begin(
            crate::spans::Side::Server,
            t,
            super::call_spans::Head {
                arrived: arrived.as_ref(),
                headers: req.headers_mut(),
                method: &method,
                authority: &authority,
                path: uri.path_and_query().map_or("/", |p| p.as_str()),
                protocol: if version == Version::HTTP_2 {
                    "HTTP/2"
                } else {
                    "HTTP/1.1"
                },
                peer: peer.addr.ip(),
            },
            || format!("{fqdn}:{}/*", port.unwrap_or(80)),
            || format!("inbound|{app_port}||"),
            || inputs.random(),
        )
    });
    drop(routes);
    if !logged && span.is_none() {
        return answer(inputs, req, peer, None).await;
    }
    let (parts, body) = req.into_parts();
    let mut entry = logged.then(|| {
        let mut entry = super::logging::start(&parts, None, peer.addr);
        // What the caller's sidecar forwarded as the authority the app asked for.
        if let Some(host) = parts
            .headers
            .get(FORWARDED_HOST)
            .and_then(|v| v.to_str().ok())
        {
            entry.authority = Some(host.to_string());
        }
        let app = inputs.settings.app_at(port);
        entry.upstream_host = app.map(|a| a.to_string());
        entry.upstream_cluster = Some(format!("inbound|{}||", app.map_or(0, |a| a.port())));
        entry
    });
    // The request body's bytes as the app reads them.
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let source = peer
        .identity
        .as_ref()
        .map_or_else(|| "unknown".to_string(), |id| id.service().to_string());
    let request = Request::from_parts(parts, body);
    let Ok(resp) = answer(inputs.clone(), request, peer, Some(received.clone())).await;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let reporting = super::body::ReportingBody::new(body, move |end: super::body::BodyEnd| {
        let flags = if end.complete { "-" } else { "DC" };
        let request_bytes = received.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(span) = span {
            let settings = &inputs.settings;
            span.finish(super::call_spans::End {
                status,
                flags,
                request_bytes,
                response_bytes: end.bytes,
                workload: (&settings.service, &settings.namespace),
            });
        }
        let Some(entry) = entry.as_mut() else { return };
        entry.response_code = status;
        entry.bytes_received = request_bytes;
        entry.bytes_sent = end.bytes;
        entry.duration_ms = started.elapsed().as_millis() as u64;
        entry.response_flags = flags.to_string();
        if inputs.tap.active() {
            inputs.tap.publish(super::tap::Event {
                direction: "inbound",
                source,
                destination: inputs.settings.service_key.clone(),
                subset: None,
                attempts: 1,
                entry: entry.clone(),
            });
        }
        let routes = inputs.routes.load();
        super::logging::emit(&inputs.access_log, &routes.access_log.server, entry);
    });
    Ok(Response::from_parts(parts, reporting.boxed_unsync()))
}

/// Answers one request from a peer sidecar.
async fn answer(
    inputs: Arc<Inputs>,
    req: Request<Incoming>,
    peer: Arc<Peer>,
    received: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    if req.method() == http::Method::CONNECT {
        return Ok(super::tcp::accept_tunnel(inputs, req, peer).await);
    }
    let start = Instant::now();
    let m = &inputs.inbound_metrics;
    let (mut parts, incoming) = req.into_parts();
    // What the caller's sidecar says of its workload is for the plugins, never for the app.
    let metadata = parts.headers.remove(PEER_METADATA);
    let port = parts
        .headers
        .remove(headers::TARGET_PORT)
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
    let routes = inputs.routes.load_full();
    let mut call = routes.server.as_ref().map(|server| {
        let app_port = inputs.settings.app_at(port).map_or(0, |a| a.port());
        let arrival = server_side::Arrival {
            metadata: metadata.as_ref(),
            version: parts.version,
            app_port,
            start,
            request_bytes: received.clone(),
            headers_end_stream: incoming.is_end_stream(),
        };
        ServerCall::new(&inputs, server, &peer, arrival)
    });
    // Refused by the host: back through the plugins that saw the request, if any did.
    let refuse = |call: Option<ServerCall>, status: StatusCode, text: String, before: usize| {
        m.request(status.as_u16());
        m.duration.observe(start.elapsed().as_secs_f64());
        match call {
            Some(c) => c.refuse(server_side::host_reply(status, text), before),
            None => local_response(status, text),
        }
    };
    // What is authorized is what the app is sent: the path is normalized first, and a path
    // (or method) Istio would refuse is refused here too, before any policy reads it.
    let original = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let normalized = match path::normalize(original, inputs.settings.path_normalization) {
        Ok(p) if path::method_is_upper(&parts.method) => p,
        refused => {
            let why = match refused {
                Err(e) => e.to_string(),
                Ok(_) => "the method is not upper case".to_string(),
            };
            tracing::debug!(path = original, "inbound call refused: {why}");
            peer.count_inbound(&inputs.metrics, false);
            return Ok(refuse(
                call,
                StatusCode::BAD_REQUEST,
                format!("weft: {why}\n"),
                0,
            ));
        }
    };
    if let std::borrow::Cow::Owned(p) = normalized {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = http::uri::PathAndQuery::from_maybe_shared(p).ok();
        parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
    }
    let upgrade = super::upgrade::take(&mut parts);
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = &upgrade {
        u.ask_again(&mut parts.headers);
    }
    headers::append_forwarded_for(&mut parts.headers, &peer.forwarded);
    // Only mTLS vouches for a caller: whatever arrived in the header is dropped (a caller must
    // not forge it), and it is set only from the connection's authenticated identity.
    parts.headers.remove(FORWARDED_CLIENT_CERT);
    if let Some(xfcc) = &peer.xfcc {
        parts.headers.insert(FORWARDED_CLIENT_CERT, xfcc.clone());
    }
    if let Some(host) = parts.headers.remove(FORWARDED_HOST) {
        parts.headers.insert(HOST, host);
    }
    // The plugins of Istio's AUTHN and AUTHZ phases see the request before its authorization.
    if let Some(c) = &mut call
        && let Some(answered) = c.request(&mut parts, true).await
    {
        peer.count_inbound(&inputs.metrics, false);
        m.request(answered.status().as_u16());
        m.duration.observe(start.elapsed().as_secs_f64());
        return Ok(answered);
    }
    // Judged against the routes in force, before anything reaches the app; no policy costs one
    // branch.
    if !routes.authz.is_empty() {
        let path_only = parts.uri.path();
        let call_of = authz::Call {
            principal: peer.principal.as_deref(),
            method: parts.method.as_str(),
            path: path_only,
            tcp: false,
        };
        if let authz::Verdict::Deny(policy) = routes.authz.check(&call_of) {
            tracing::debug!(
                caller = peer.principal.as_deref().unwrap_or("(unauthenticated)"),
                method = %parts.method,
                path = path_only,
                policy = policy.as_deref().unwrap_or("(no ALLOW policy matched)"),
                "inbound call denied"
            );
            inputs.metrics.inbound_denied.inc();
            peer.count_inbound(&inputs.metrics, false);
            let at = call.as_ref().map_or(0, ServerCall::authorize_after);
            return Ok(refuse(
                call,
                StatusCode::FORBIDDEN,
                authz::DENIED_BODY.to_string(),
                at,
            ));
        }
    }
    drop(routes);
    if let Some(c) = &mut call
        && let Some(answered) = c.request(&mut parts, false).await
    {
        peer.count_inbound(&inputs.metrics, true);
        m.request(answered.status().as_u16());
        m.duration.observe(start.elapsed().as_secs_f64());
        return Ok(answered);
    }
    peer.count_inbound(&inputs.metrics, true);
    let Some(app) = inputs.settings.app_at(port) else {
        let at = usize::MAX;
        return Ok(refuse(
            call,
            StatusCode::FORBIDDEN,
            "weft: that port is the sidecar's own\n".to_string(),
            at,
        ));
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(if app == inputs.settings.app {
        inputs.settings.app_authority.clone()
    } else {
        super::authority_of(app)
    });
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    let Ok(uri) = http::Uri::from_parts(uri) else {
        return Ok(refuse(
            call,
            StatusCode::BAD_REQUEST,
            "weft: invalid request path\n".to_string(),
            usize::MAX,
        ));
    };
    parts.uri = uri;
    // gRPC goes to the app over HTTP/2, as it came (it needs trailers); everything else over
    // HTTP/1.1, which every app speaks.
    let grpc = parts.version == Version::HTTP_2 && super::grpc::is_grpc(&parts.headers);
    if !grpc {
        parts.version = Version::HTTP_11;
    }
    let (incoming, tripped) = inputs.bound_request(incoming, start, INBOUND);
    // Counted as the app reads it, when the server-side chain or the access log wants it.
    let counter = call.as_ref().map(ServerCall::request_counter).or(received);
    let pipe = call.as_ref().and_then(ServerCall::request_body_pipeline);
    let body = match (pipe, counter) {
        // proxy-wasm filters' request-body callbacks get a body of known length within the
        // bound whole before the app does, so one may rewrite it or answer in its place; any
        // other passes them frame by frame as it arrives.
        (Some(pipe), counter) => {
            let content_length = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let limit = inputs.settings.replay_limit;
            let counter = counter.unwrap_or_default();
            let read = if content_length.is_none() && !incoming.is_end_stream() {
                Ok(super::body::RequestBody::streaming(incoming, counter))
            } else {
                super::body::read_for_replay(incoming, content_length, limit, counter).await
            };
            let request = match read {
                Ok(r) => r,
                Err(_) if tripped.as_ref().is_some_and(|t| t.get().is_some()) => {
                    return Ok(refuse(
                        call,
                        StatusCode::REQUEST_TIMEOUT,
                        "weft: request timeout\n".to_string(),
                        usize::MAX,
                    ));
                }
                Err(_) => {
                    return Ok(refuse(
                        call,
                        StatusCode::BAD_REQUEST,
                        "weft: the request body could not be read\n".to_string(),
                        usize::MAX,
                    ));
                }
            };
            let Some(c) = call.as_mut() else {
                return Ok(local_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "weft: no call\n",
                ));
            };
            match request {
                super::body::RequestBody::Replayable(whole, mut trailers) => {
                    match c.request_body(pipe, whole.clone(), trailers.as_mut()) {
                        Ok(out) => {
                            if out.len() != whole.len() {
                                parts.headers.insert(
                                    http::header::CONTENT_LENGTH,
                                    http::HeaderValue::from(out.len()),
                                );
                            }
                            super::body::whole(out, trailers)
                        }
                        Err(answered) => return Ok(*answered),
                    }
                }
                // Streaming: through the filters as it comes (a filter may change the length
                // as it streams).
                mut streaming => {
                    parts.headers.remove(http::header::CONTENT_LENGTH);
                    match streaming.stream_through(pipe).await {
                        Ok(()) => streaming.attempt().unwrap_or_else(super::body::empty),
                        Err(super::body::StreamStop::Read(_)) => {
                            return Ok(refuse(
                                call,
                                StatusCode::BAD_REQUEST,
                                "weft: the request body could not be read\n".to_string(),
                                usize::MAX,
                            ));
                        }
                        Err(super::body::StreamStop::Stopped(stop)) => {
                            return Ok(c.stopped(stop));
                        }
                    }
                }
            }
        }
        (None, Some(bytes)) => {
            super::body::ReportingBody::new(incoming, move |end: super::body::BodyEnd| {
                bytes.store(end.bytes, std::sync::atomic::Ordering::Relaxed);
            })
            .boxed_unsync()
        }
        (None, None) => incoming.boxed_unsync(),
    };
    let upstream = Request::from_parts(parts, body);
    let answered = match upgrade {
        None if grpc => inputs
            .app_h2
            .request(upstream)
            .await
            .map_err(|e| format!("{e:?}")),
        None => inputs
            .app
            .request(upstream)
            .await
            .map_err(|e| format!("{e:?}")),
        Some(u) => super::upgrade::to_addr(&inputs, app, upstream, u).await,
    };
    let mut flags = ResponseFlags::empty();
    let response = match answered {
        Ok(resp) => {
            let (mut parts, incoming) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            super::upgrade::restore_response_headers(&mut parts);
            Response::from_parts(
                parts,
                inputs.bound_response(incoming, INBOUND).boxed_unsync(),
            )
        }
        // The caller's body stalled or came too late: its lateness, not the app, is the
        // answer, as Envoy's 408.
        Err(_) if tripped.as_ref().is_some_and(|t| t.get().is_some()) => {
            local_response(StatusCode::REQUEST_TIMEOUT, "weft: request timeout\n")
        }
        Err(e) => {
            tracing::warn!(app = %inputs.settings.app, "local app unreachable: {e}");
            flags = ResponseFlags::UPSTREAM_CONNECT_FAILURE;
            local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "weft: the local {} app at {} is unreachable\n",
                    inputs.settings.service, inputs.settings.app
                ),
            )
        }
    };
    let response = match call {
        Some(c) => c.respond(response, flags),
        None => response,
    };
    m.request(response.status().as_u16());
    m.duration.observe(start.elapsed().as_secs_f64());
    Ok(response)
}
