//! The server-side plugin chain: run on every call into this workload, before its app, with the
//! caller's verified identity. Its first plugins (Istio's `AUTHN` and `AUTHZ` phases) run
//! before the authorization policies, the rest after; a local answer from either part, or from
//! the authorization check, goes back through the plugins that saw the request and never
//! reaches the app. `on-done` runs for every call, answered by the app or not.

use super::body::{self, BodyEnd, ProxyBody, ReportingBody};
use super::routes::ServerChain;
use super::{Inputs, Peer};
use crate::plugin::{
    BodyPipeline, BodyStop, CallSummary, Chain, Destination, LocalReply, Protocol, RequestHead,
    RequestVerdict, ResponseFlags, ResponseHead, ResponseVerdict, RouteId,
};
use http::header::HOST;
use http::{HeaderValue, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// The most caller workloads a process interns from peers' metadata: past it, a caller is named
/// by its identity alone, so authenticated peers sending ever new labels cannot grow the
/// interner without bound.
const MAX_CALLER_WORKLOADS: usize = 4_096;

static CALLER_WORKLOADS: AtomicUsize = AtomicUsize::new(0);

/// A caller's ids as plugins see them, interned once per connection.
pub(super) struct Caller {
    metadata: Option<HeaderValue>,
    source: Arc<str>,
    identity: u32,
    workload: u32,
}

fn caller_of(inputs: &Inputs, peer: &Peer, metadata: Option<&HeaderValue>) -> Caller {
    let Some(id) = &peer.identity else {
        return Caller {
            metadata: None,
            source: Arc::from(""),
            identity: 0,
            workload: 0,
        };
    };
    let runtime = &inputs.runtime;
    let name = super::workload::of_caller(id, metadata);
    let mut workload = runtime.interned(&name);
    if workload == 0 {
        workload = if CALLER_WORKLOADS.fetch_add(1, Ordering::Relaxed) < MAX_CALLER_WORKLOADS {
            runtime.intern(&name)
        } else {
            runtime.intern(&super::workload::of_caller(id, None))
        };
    }
    let source = id.to_string();
    Caller {
        metadata: metadata.cloned(),
        identity: runtime.intern(&source),
        source: Arc::from(source),
        workload,
    }
}

/// The caller's (identity, workload, SPIFFE ID) for this call: the connection's, unless its
/// sidecar now says something else of it.
fn caller_ids(
    inputs: &Inputs,
    peer: &Peer,
    metadata: Option<&HeaderValue>,
) -> (u32, u32, Arc<str>) {
    let cached = peer
        .caller
        .get_or_init(|| caller_of(inputs, peer, metadata));
    if cached.metadata.as_ref() == metadata || peer.identity.is_none() {
        return (cached.identity, cached.workload, cached.source.clone());
    }
    let fresh = caller_of(inputs, peer, metadata);
    (fresh.identity, fresh.workload, fresh.source)
}

/// One call through the server-side chain.
pub(super) struct ServerCall {
    inputs: Arc<Inputs>,
    chain: Arc<Chain>,
    authorize_after: usize,
    /// The scope plugins are judged against: no route, the app's port.
    scope: RouteId,
    id: u64,
    start: Instant,
    source: Arc<str>,
    summary: CallSummary,
    request_bytes: Arc<AtomicU64>,
    headers_end_stream: bool,
    done: bool,
}

/// What is known of a call into the workload as it arrives.
pub(super) struct Arrival<'a> {
    /// What the caller's sidecar said of its workload (already taken out of the request: the
    /// app never sees it).
    pub metadata: Option<&'a HeaderValue>,
    /// The caller's HTTP version.
    pub version: http::Version,
    /// The app's port the call goes to.
    pub app_port: u16,
    /// When its head arrived.
    pub start: Instant,
    /// Where the request body's bytes are counted, if someone else reads them too.
    pub request_bytes: Option<Arc<AtomicU64>>,
    /// Whether the request's headers ended it (no body follows).
    pub headers_end_stream: bool,
}

impl ServerCall {
    /// Starts a call from `peer`.
    pub(super) fn new(
        inputs: &Arc<Inputs>,
        server: &ServerChain,
        peer: &Peer,
        arrival: Arrival<'_>,
    ) -> ServerCall {
        let Arrival {
            metadata,
            version,
            app_port,
            start,
            request_bytes,
            headers_end_stream,
        } = arrival;
        let (identity, workload, source) = caller_ids(inputs, peer, metadata);
        let id = inputs.next_call_id();
        ServerCall {
            inputs: inputs.clone(),
            chain: server.chain.clone(),
            authorize_after: server.authorize_after,
            scope: RouteId::on_port(app_port),
            id,
            start,
            source,
            summary: CallSummary {
                call_id: id,
                status: 0,
                attempts: 0,
                duration_us: 0,
                request_bytes: 0,
                response_bytes: 0,
                endpoint: 0,
                service: inputs.runtime.intern(&inputs.settings.service_key),
                subset: 0,
                source: identity,
                destination_identity: inputs.settings.identity_id,
                source_workload: workload,
                destination_workload: inputs.settings.workload_id,
                protocol: if version == http::Version::HTTP_2 {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                },
                response_flags: ResponseFlags::empty(),
                grpc_status: None,
            },
            request_bytes: request_bytes.unwrap_or_default(),
            headers_end_stream,
            done: false,
        }
    }

    /// Runs `on-request` through the plugins before the authorization check
    /// (`before_authz`), or after it, on the request as the app will get it; their edits are
    /// applied to `parts`. A local answer comes back as the response to send.
    pub(super) async fn request(
        &mut self,
        parts: &mut http::request::Parts,
        before_authz: bool,
    ) -> Option<Response<ProxyBody>> {
        let (from, to) = if before_authz {
            (0, self.authorize_after)
        } else {
            (self.authorize_after, usize::MAX)
        };
        if from >= to {
            return None;
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str)
            .to_string();
        let authority = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut head = RequestHead {
            method: parts.method.clone(),
            path,
            authority,
            headers: std::mem::take(&mut parts.headers),
            source: self.source.clone(),
            destination: Destination {
                service: self.inputs.settings.service_key.clone(),
                subset: None,
            },
            route: self.scope,
            headers_end_stream: Some(self.headers_end_stream),
            ..RequestHead::default()
        };
        let decided = self.chain.on_request_between(self.id, &mut head, from, to);
        // A proxy-wasm filter paused the request for HTTP calls of its own: make them, then
        // go on.
        let decided = if matches!(decided.action, RequestVerdict::Paused(_)) {
            super::callouts::settle(&self.inputs, &self.chain, self.id, &mut head, to, decided)
                .await
        } else {
            decided
        };
        if decided.plugin_failed {
            self.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
        }
        if let Some(delay) = head.delay {
            tokio::time::sleep(delay).await;
        }
        if let RequestVerdict::Respond(reply) = decided.action {
            let at = decided.answered_at.unwrap_or(from);
            return Some(self.answer(reply, at, ResponseFlags::LOCAL_REPLY));
        }
        parts.headers = head.headers;
        if parts.uri.path_and_query().map(|p| p.as_str()) != Some(head.path.as_str())
            && let Ok(p) = http::uri::PathAndQuery::from_maybe_shared(head.path)
        {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.path_and_query = Some(p);
            parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
        }
        if parts.headers.get(HOST).map(HeaderValue::as_bytes) != Some(head.authority.as_bytes())
            && let Ok(v) = HeaderValue::from_str(&head.authority)
        {
            parts.headers.insert(HOST, v);
        }
        None
    }

    /// Answers the caller with the host's own `reply` (a refused path, an authorization
    /// denial): back through the plugins placed before `at` that saw the request.
    pub(super) fn refuse(mut self, reply: LocalReply, before: usize) -> Response<ProxyBody> {
        let at = before.min(self.authorize_after);
        self.answer(reply, at, ResponseFlags::empty())
    }

    /// Where the authorization check sits in the chain.
    pub(super) fn authorize_after(&self) -> usize {
        self.authorize_after
    }

    fn answer(
        &mut self,
        reply: LocalReply,
        at: usize,
        flags: ResponseFlags,
    ) -> Response<ProxyBody> {
        let mut head = ResponseHead {
            status: reply.status,
            headers: reply.headers,
            attempts: 0,
        };
        let mut payload = reply.body;
        let back = self
            .chain
            .on_local_reply(self.id, &mut head, self.scope, at);
        if back.plugin_failed {
            self.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
        }
        if let ResponseVerdict::Respond(r) = back.action {
            (head.status, head.headers, payload) = (r.status, r.headers, r.body);
        }
        let mut resp = Response::new(body::full(payload));
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        let bytes = resp.body().size_hint().exact().unwrap_or(0);
        self.finish(head.status.as_u16(), bytes, flags);
        resp
    }

    /// The request-body callbacks of the plugins serving the call, if any asked.
    pub(super) fn request_body_pipeline(&self) -> Option<BodyPipeline> {
        (self.chain).body_pipeline(
            self.id,
            self.scope,
            false,
            self.inputs.settings.replay_limit,
        )
    }

    /// Runs the request-body callbacks on the whole `body`, then the trailers callbacks on its
    /// `trailers`: what to send the app, or the answer a plugin gave instead.
    pub(super) fn request_body(
        &mut self,
        mut pipe: BodyPipeline,
        body: bytes::Bytes,
        trailers: Option<&mut http::HeaderMap>,
    ) -> Result<bytes::Bytes, Box<Response<ProxyBody>>> {
        if body.is_empty() && trailers.is_none() {
            return Ok(body);
        }
        let pushed = pipe.whole(body, trailers);
        if pipe.plugin_failed {
            self.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
        }
        pushed.map_err(|stop| Box::new(self.stopped(stop)))
    }

    /// The answer a request-body callback gave, or its fail-closed failure, back through the
    /// plugins before it.
    pub(super) fn stopped(&mut self, stop: BodyStop) -> Response<ProxyBody> {
        match stop {
            BodyStop::Respond(reply, at) => self.answer(*reply, at, ResponseFlags::LOCAL_REPLY),
            BodyStop::Failed(reply) => {
                self.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
                self.answer(*reply, 0, ResponseFlags::empty())
            }
            BodyStop::TooLarge => {
                let limit = self.inputs.settings.replay_limit;
                let reply = LocalReply::text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    super::outbound::too_large(limit),
                );
                self.answer(reply, 0, ResponseFlags::empty())
            }
        }
    }

    /// Where the request body's bytes are counted as the app reads them.
    pub(super) fn request_counter(&self) -> Arc<AtomicU64> {
        self.request_bytes.clone()
    }

    /// The app's answer (or the host's, when the app could not give one) through `on-response`;
    /// `on-done` when its body ends.
    pub(super) fn respond(
        mut self,
        resp: Response<ProxyBody>,
        flags: ResponseFlags,
    ) -> Response<ProxyBody> {
        self.summary.attempts = 1;
        let (mut parts, body) = resp.into_parts();
        let mut head = ResponseHead {
            status: parts.status,
            headers: std::mem::take(&mut parts.headers),
            attempts: 1,
        };
        let decided = self.chain.on_response(self.id, &mut head, self.scope);
        if decided.plugin_failed {
            self.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
        }
        if let ResponseVerdict::Respond(reply) = decided.action {
            let mut out = Response::new(body::full(reply.body));
            *out.status_mut() = reply.status;
            *out.headers_mut() = reply.headers;
            let bytes = out.body().size_hint().exact().unwrap_or(0);
            self.finish(reply.status.as_u16(), bytes, ResponseFlags::LOCAL_REPLY);
            return out;
        }
        parts.status = head.status;
        parts.headers = head.headers;
        let status = parts.status.as_u16();
        // A trailers-only gRPC answer carries its status in the headers.
        self.summary.grpc_status = super::grpc::status(&parts.headers);
        let body = body::filtered(body, parts.status, &mut parts.headers, || {
            let limit = self.inputs.settings.replay_limit;
            (self.chain).body_pipeline(self.id, self.scope, true, limit)
        });
        let reporting = ReportingBody::new(body, move |end: BodyEnd| {
            self.summary.grpc_status = end.grpc_status.or(self.summary.grpc_status);
            let ended = if end.complete {
                flags
            } else {
                flags | ResponseFlags::DOWNSTREAM_DISCONNECT
            };
            self.finish(status, end.bytes, ended);
        });
        Response::from_parts(parts, reporting.boxed_unsync())
    }

    fn finish(&mut self, status: u16, response_bytes: u64, flags: ResponseFlags) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mut s = self.summary;
        s.status = status;
        s.duration_us = self.start.elapsed().as_micros() as u64;
        s.request_bytes = self.request_bytes.load(Ordering::Relaxed);
        s.response_bytes = response_bytes;
        s.response_flags |= flags;
        // A plugin failing in on-done is counted by the runtime; the call is over either way.
        self.chain.on_done(&s, self.scope);
    }
}

impl Drop for ServerCall {
    fn drop(&mut self) {
        // Dropped unfinished: the caller went away before a response was sent.
        self.finish(0, 0, ResponseFlags::DOWNSTREAM_DISCONNECT);
    }
}

/// A plain-text reply of the host's, for [`ServerCall::refuse`].
pub(super) fn host_reply(status: StatusCode, text: impl Into<String>) -> LocalReply {
    LocalReply::text(status, text)
}
