//! The attempts of one outbound call: each picks an endpoint (by consistent hash, or the
//! route's balancer, passing over ejected ones), takes its place in the destination's circuit
//! breaker, sends over the peers' pool in the app's protocol within its per-try timeout, and
//! asks the chain whether to retry.

use super::*;

/// Where and what the attempts send.
pub(super) struct Upstream<'a> {
    pub(super) target: &'a Route,
    pub(super) endpoints: &'a [Arc<Endpoint>],
    pub(super) path_and_query: &'a PathAndQuery,
    pub(super) deadline: Option<Instant>,
    /// The destination's circuit breaker, if it has one.
    pub(super) breaker: Option<&'a Arc<crate::proxy::breaker::Breaker>>,
    /// The destination's ring and the request's hash on it, when it balances by
    /// consistent hash.
    pub(super) hashing: Option<(&'a crate::proxy::consistent_hash::Ring, Option<u64>)>,
    /// The destination's balancer.
    pub(super) balancer: &'a balance::Balancer,
}

/// Sends attempts until one stands; returns the last outcome and its response, if any.
pub(super) async fn attempts(
    inputs: &Arc<Inputs>,
    call: &mut Call,
    up: &Upstream<'_>,
    head: &mut RequestHead,
    request_body: &mut body::RequestBody,
) -> (Outcome, Option<Response<Incoming>>) {
    let Upstream {
        target,
        endpoints,
        path_and_query,
        deadline,
        breaker,
        hashing,
        balancer,
    } = *up;
    // A retry's place in the destination's `maxRetries`, held while it is in flight.
    let mut retrying: Option<crate::proxy::breaker::Slot> = None;
    // With no plugin to ask for a retry, the first attempt is the last: it takes the headers
    // rather than a copy.
    let may_retry = call.chain.may_retry(call.route_id);
    let mut last: Option<u64> = None;
    let mut number = 0u32;
    loop {
        number += 1;
        call.summary.attempts = number;
        let attempt_start = Instant::now();
        let remaining = deadline.map(|d| d.saturating_duration_since(attempt_start));
        let mut note = call
            .explain
            .as_ref()
            .map(|_| crate::proxy::explain::AttemptNote {
                number,
                ejected: endpoints
                    .iter()
                    .filter(|e| e.is_ejected(attempt_start))
                    .map(|e| e.address.to_string())
                    .collect(),
                ..Default::default()
            });
        let candidates = endpoints.iter().map(|e| Candidate {
            id: e.id,
            outstanding: e.outstanding.load(Ordering::Relaxed),
            ejected: e.is_ejected(attempt_start),
        });
        let random = |n: usize| (inputs.random() % n as u64) as usize;
        let picked = match hashing {
            // The key's owner on the ring, passing over ejected endpoints and, on a retry, the
            // one that just failed while another is left.
            Some((ring, Some(hash))) => {
                let usable = |i: usize, avoid: bool| {
                    endpoints.get(i).is_some_and(|e| {
                        let just_failed = avoid && Some(e.id) == last;
                        !(e.is_ejected(attempt_start) || just_failed)
                    })
                };
                ring.pick(hash, |i| usable(i, true))
                    .or_else(|| ring.pick(hash, |i| usable(i, false)))
                    .and_then(|i| endpoints.get(i))
                    .map(|e| e.id)
            }
            Some((_, None)) => balance::pick(candidates, last, balance::Policy::Random, random),
            None => balance::pick(candidates, last, balancer.next(), random),
        };
        let mut response = None;
        let outcome = match (picked, remaining) {
            (_, Some(r)) if r.is_zero() => Outcome::Timeout,
            (None, _) => Outcome::NoEndpoint,
            (Some(id), _) => {
                let Some(endpoint) = endpoints.iter().find(|e| e.id == id) else {
                    return (Outcome::NoEndpoint, None);
                };
                // Each attempt is a request in flight to the destination; refused past
                // `http2MaxRequests`, and never retried (as Envoy treats an overflow).
                if let Some(b) = breaker {
                    match b.request() {
                        Some(slot) => call.in_flight = Some(slot),
                        None => return overflowed(call),
                    }
                }
                let address = &endpoint.address;
                if let Some(n) = note.as_mut() {
                    n.endpoint = Some(address.to_string());
                }
                let outstanding = &endpoint.outstanding;
                call.summary.endpoint = id;
                call.summary.destination_workload = endpoint.workload.load(Ordering::Relaxed);
                let Some(body) = request_body.attempt() else {
                    // A streamed body went with an earlier attempt; nothing left to send.
                    return (Outcome::Reset, None);
                };
                let Some(authority) = endpoint.authority.clone() else {
                    return (Outcome::ConnectFailure, None);
                };
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(http::uri::Scheme::HTTP);
                uri.authority = Some(authority);
                uri.path_and_query = Some(path_and_query.clone());
                let Ok(uri) = http::Uri::from_parts(uri) else {
                    return (Outcome::Reset, None);
                };
                let mut upstream = Request::new(body);
                *upstream.method_mut() = head.method.clone();
                *upstream.uri_mut() = uri;
                *upstream.headers_mut() = if may_retry {
                    head.headers.clone()
                } else {
                    std::mem::take(&mut head.headers)
                };
                outstanding.fetch_add(1, Ordering::Relaxed);
                let per_try = match (head.per_try_timeout, remaining) {
                    (Some(p), Some(r)) => Some(p.min(r)),
                    (p, r) => p.or(r),
                };
                // The hop between sidecars speaks the app's protocol (see `PeerClients`).
                let upgrading = call.upgrade.is_some();
                let sent = async {
                    if upgrading {
                        // An upgrade may take its connection over: one of its own.
                        let uri = upstream.uri().clone();
                        match crate::proxy::tcp::connect_peer(inputs, uri, target.plaintext).await {
                            Ok(io) => crate::proxy::upgrade::send(io, upstream)
                                .await
                                .map_err(|e| Failed::Attempt(Outcome::Reset, e.to_string())),
                            Err(e) => Err(Failed::Attempt(Outcome::ConnectFailure, e)),
                        }
                    } else if target.external {
                        // Outside the mesh: HTTP/1.1 to the endpoint itself, plain or over
                        // the TLS its DestinationRule originates.
                        crate::proxy::origination::send(inputs, target, upstream, breaker)
                            .await
                            .map_err(|e| classify_h1(&e))
                    } else {
                        // The mesh's mTLS, or plaintext where the DestinationRule says so.
                        let peers = inputs.peers_for(target.plaintext);
                        if call.summary.protocol == Protocol::Http2 {
                            *upstream.version_mut() = Version::HTTP_2;
                            peers.h2.request(upstream).await.map_err(|e| classify(&e))
                        } else {
                            peers
                                .h1
                                .request_within(upstream, breaker)
                                .await
                                .map_err(|e| classify_h1(&e))
                        }
                    }
                };
                let result = match per_try {
                    Some(t) => tokio::time::timeout(t, sent).await.ok(),
                    None => Some(sent.await),
                };
                outstanding.fetch_sub(1, Ordering::Relaxed);
                match result {
                    None => Outcome::Timeout,
                    Some(Ok(resp)) => {
                        let status = resp.status().as_u16();
                        response = Some(resp);
                        Outcome::Response(status)
                    }
                    Some(Err(Failed::Overflow)) => return overflowed(call),
                    Some(Err(Failed::Attempt(outcome, why))) => {
                        tracing::debug!(service = %target.service, endpoint = %address, "attempt failed: {why}");
                        outcome
                    }
                }
            }
        };
        target.metrics.attempts[outcome_index(outcome)].inc();
        let attempt_end = Instant::now();
        let remaining = deadline.map(|d| d.saturating_duration_since(attempt_end));
        let attempt = Attempt {
            call_id: call.id,
            number,
            endpoint: picked.unwrap_or(0),
            outcome,
            elapsed_us: attempt_end.duration_since(attempt_start).as_micros() as u64,
            remaining_ms: remaining.map_or(u32::MAX, |r| {
                u32::try_from(r.as_millis()).unwrap_or(u32::MAX)
            }),
            replayable: request_body.replayable(),
            grpc_status: response
                .as_ref()
                .and_then(|r| crate::proxy::grpc::status(r.headers())),
        };
        let decided = match (note.as_mut(), &call.explain) {
            (Some(n), Some(e)) => {
                n.outcome = crate::proxy::explain::outcome_name(outcome);
                n.ms = attempt_end.duration_since(attempt_start).as_millis() as u64;
                let decided =
                    call.chain
                        .on_attempt_end_explained(&attempt, call.route_id, &mut n.verdicts);
                e.lock().attempts.push(n.clone());
                decided
            }
            _ => call.chain.on_attempt_end(&attempt, call.route_id),
        };
        if decided.plugin_failed {
            call.summary.response_flags |= ResponseFlags::PLUGIN_FAILURE;
        }
        match decided.action {
            AttemptVerdict::Retry(delay)
                if request_body.replayable()
                    && remaining.is_none_or(|r| r > delay)
                    && match breaker {
                        None => true,
                        // Past `maxRetries` the attempt's own answer stands.
                        Some(b) => {
                            drop(retrying.take());
                            retrying = b.retry();
                            retrying.is_some()
                        }
                    } =>
            {
                drop(response);
                call.in_flight = None;
                last = picked;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            _ => return (outcome, response),
        }
    }
}

/// The outcome's index in [`crate::proxy::metrics::OUTCOMES`].
fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Response(s) if s >= 500 => 1,
        Outcome::Response(_) => 0,
        Outcome::ConnectFailure => 2,
        Outcome::Reset => 3,
        Outcome::RefusedStream => 4,
        Outcome::Timeout => 5,
        Outcome::NoEndpoint => 6,
    }
}

/// Why an attempt got no response.
enum Failed {
    /// It ended this way (the text for the debug log).
    Attempt(Outcome, String),
    /// The destination's circuit breaker kept it waiting past its bound.
    Overflow,
}

/// A request the destination's circuit breaker refused: flagged `UO`, never retried.
fn overflowed(call: &mut Call) -> (Outcome, Option<Response<Incoming>>) {
    call.summary.response_flags |= ResponseFlags::UPSTREAM_OVERFLOW;
    (Outcome::ConnectFailure, None)
}

/// Classifies a failed attempt from the client's error.
fn classify(err: &hyper_util::client::legacy::Error) -> Failed {
    let text = format!("{err:?}");
    let outcome = if err.is_connect() {
        Outcome::ConnectFailure
    } else if text.contains("REFUSED_STREAM") {
        Outcome::RefusedStream
    } else {
        Outcome::Reset
    };
    Failed::Attempt(outcome, text)
}

/// [`classify`] for the HTTP/1.1 pools: no connection, a connection that failed, or no room.
fn classify_h1(err: &crate::proxy::h1_pool::PeerError) -> Failed {
    use crate::proxy::h1_pool::PeerError;
    let outcome = match err {
        PeerError::Connect(_) => Outcome::ConnectFailure,
        PeerError::Http(_) => Outcome::Reset,
        PeerError::Overflow => return Failed::Overflow,
    };
    Failed::Attempt(outcome, err.to_string())
}
