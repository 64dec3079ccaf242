//! Mirrors (Istio's `mirror`, Envoy's request shadowing): a copy of a call sent to another
//! destination, fire-and-forget. The copy leaves once the caller's request body is whole, on a
//! task of its own bounded in time; its answer is read and dropped, so it never reaches or
//! delays the caller. As Envoy's, it goes with `-shadow` appended to the authority, and a body
//! too large to keep for replay (past `replayLimit`) is not mirrored.

use super::Inputs;
use super::body;
use super::headers::FORWARDED_HOST;
use super::routes::Routes;
use crate::plugin::{Destination, RequestHead};
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Version};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

/// How long a copy may take, all of it, before it is dropped.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// What a copy carries.
pub(super) struct Copy<'a> {
    pub head: &'a RequestHead,
    pub path_and_query: &'a PathAndQuery,
    /// The authority the caller named (the copy gets `-shadow` appended).
    pub authority: &'a str,
    /// The whole body; none when it streamed and cannot be sent twice.
    pub body: Option<Bytes>,
}

/// Sends `copy` to each of `mirrors`, each on its own task.
pub(super) fn send(inputs: &Arc<Inputs>, routes: &Routes, mirrors: &[Destination], copy: Copy<'_>) {
    let counted = |service: &str, outcome: &str| {
        inputs
            .metrics
            .mirrors
            .with_label_values(&[service, outcome])
            .inc();
    };
    let Some(body) = copy.body else {
        tracing::debug!("not mirrored: the request body was too large to keep");
        for dest in mirrors {
            counted(&dest.service, "skipped");
        }
        return;
    };
    let shadow = HeaderValue::from_str(&format!("{}-shadow", copy.authority)).ok();
    for dest in mirrors {
        let Some(route) = routes.services.get(&dest.service) else {
            tracing::debug!(service = %dest.service, "not mirrored: unknown service");
            counted(&dest.service, "skipped");
            continue;
        };
        let endpoints = match &dest.subset {
            None => &route.endpoints,
            Some(s) => match route.subsets.get(s) {
                Some(subset) => &subset.endpoints,
                None => {
                    counted(&dest.service, "skipped");
                    continue;
                }
            },
        };
        // A live endpoint at random, counted then taken, with no list built per copy.
        let now = std::time::Instant::now();
        let live = || endpoints.iter().filter(|e| !e.is_ejected(now));
        let count = live().count() as u64;
        let picked = (count > 0)
            .then(|| live().nth((inputs.random() % count) as usize))
            .flatten()
            .and_then(|e| e.authority.clone());
        let Some(authority) = picked else {
            counted(&dest.service, "skipped");
            continue;
        };
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(copy.path_and_query.clone());
        let Ok(uri) = http::Uri::from_parts(uri) else {
            continue;
        };
        let mut request = Request::new(body::full(body.clone()));
        *request.method_mut() = copy.head.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = copy.head.headers.clone();
        type Sent = std::pin::Pin<
            Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, String>> + Send>,
        >;
        let sent: Sent = if route.external {
            // Outside the mesh the shadow host is the Host itself; no mesh header leaves.
            if let Some(v) = &shadow {
                request.headers_mut().insert(http::header::HOST, v.clone());
            }
            let (inputs, route) = (inputs.clone(), route.clone());
            Box::pin(async move {
                super::origination::send(&inputs, &route, request, None)
                    .await
                    .map_err(|e| e.to_string())
            })
        } else {
            if let Some(v) = &shadow {
                request.headers_mut().insert(FORWARDED_HOST, v.clone());
            }
            let sent = inputs.peers_for(route.plaintext).h2.request(request);
            Box::pin(async move { sent.await.map_err(|e| format!("{e:?}")) })
        };
        let service = dest.service.clone();
        let counter = inputs.metrics.mirrors.clone();
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(MIRROR_TIMEOUT, async {
                let resp = sent.await?;
                // Read to the end so the connection can serve the next call.
                let _ = resp.into_body().collect().await;
                Ok::<(), String>(())
            })
            .await;
            let word = match outcome {
                Ok(Ok(())) => "answered",
                Ok(Err(e)) => {
                    tracing::debug!(%service, "mirror failed: {e}");
                    "failed"
                }
                Err(_) => {
                    tracing::debug!(%service, "mirror timed out");
                    "timeout"
                }
            };
            counter.with_label_values(&[&service, word]).inc();
        });
    }
}
