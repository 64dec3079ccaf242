//! The HTTP calls proxy-wasm filters make (`dispatch_http_call`). They go out through the
//! sidecar's own outbound listener, so they are routed, balanced, retried and secured as the
//! app's own calls are; a request paused for them waits for their answers, which the filter
//! is given, and then the chain goes on from the plugin after it.

use super::Inputs;
use crate::plugin::{
    Callout, CalloutAnswer, CalloutAnswers, CalloutSender, Chain, Decided, RequestHead,
    RequestVerdict,
};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// The header that marks a filter's call to the outbound listener, with the sidecar's secret
/// `callout_token`: the call skips the plugin chain.
pub(super) static HEADER: HeaderName = HeaderName::from_static("x-weft-callout");

/// The most bytes of a callout's answer body a filter is given; a larger answer is a failed
/// callout.
const MAX_ANSWER: usize = 1 << 20;

/// Runs the chain on from a `decided` verdict until no plugin is paused: each pause's calls
/// are made and answered, and the chain resumes after the plugin (up to `to`).
pub(super) async fn settle(
    inputs: &Inputs,
    chain: &Chain,
    id: u64,
    head: &mut RequestHead,
    to: usize,
    mut decided: Decided<RequestVerdict>,
) -> Decided<RequestVerdict> {
    let mut failed = decided.plugin_failed;
    loop {
        let RequestVerdict::Paused(paused) = decided.action else {
            decided.plugin_failed = failed;
            return decided;
        };
        let answers = answers(
            inputs.outbound_addr,
            &inputs.callout_token,
            &paused.callouts,
        )
        .await;
        let resumed = chain.resume(id, head, &paused, answers);
        failed |= resumed.plugin_failed;
        decided = match resumed.action {
            RequestVerdict::Continue => chain.on_request_between(id, head, paused.at + 1, to),
            _ => resumed,
        };
        failed |= decided.plugin_failed;
    }
}

/// Makes root contexts' HTTP calls (a tick's, a queue's) on the sidecar's runtime, as a
/// paused request's are made.
pub(super) struct Sender {
    /// Where the sidecar's outbound listener is.
    pub(super) outbound: SocketAddr,
    /// The secret that marks a filter's call.
    pub(super) token: String,
    /// The sidecar's runtime.
    pub(super) handle: tokio::runtime::Handle,
}

impl CalloutSender for Sender {
    fn send(&self, callouts: Vec<Callout>, deliver: Box<dyn FnOnce(CalloutAnswers) + Send>) {
        let (outbound, token) = (self.outbound, self.token.clone());
        self.handle.spawn(async move {
            deliver(answers(outbound, &token, &callouts).await);
        });
    }
}

fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(HttpConnector::new())
    })
}

/// Every callout made at once; each answer (none for a failed one) with its token.
async fn answers(outbound: SocketAddr, token: &str, callouts: &[Callout]) -> CalloutAnswers {
    let tasks: Vec<_> = callouts
        .iter()
        .map(|c| {
            let request = build(outbound, token, c);
            let timeout = c.timeout;
            let upstream = c.upstream.clone();
            (
                c.token,
                tokio::spawn(async move {
                    let request = request?;
                    match tokio::time::timeout(timeout, send(request)).await {
                        Ok(Some(answer)) => Some(answer),
                        Ok(None) => {
                            tracing::debug!(%upstream, "a filter's HTTP call failed");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(%upstream, "a filter's HTTP call timed out");
                            None
                        }
                    }
                }),
            )
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for (token, task) in tasks {
        out.push((token, task.await.ok().flatten()));
    }
    out
}

/// The authority a callout's upstream names: a host as it is, or the host and port of an
/// Envoy cluster name (`outbound|<port>|<subset>|<host>`).
fn authority_of(upstream: &str) -> String {
    let parts: Vec<&str> = upstream.split('|').collect();
    match parts.as_slice() {
        [_, port, _, host] if !host.is_empty() => match *port {
            "" | "80" => (*host).to_string(),
            port => format!("{host}:{port}"),
        },
        _ => upstream.to_string(),
    }
}

/// The request a callout makes, to the sidecar's outbound listener.
fn build(outbound: SocketAddr, token: &str, c: &Callout) -> Option<Request<Full<Bytes>>> {
    let pseudo = |name: &str| {
        c.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let method = pseudo(":method")
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(Method::GET);
    let path = pseudo(":path").unwrap_or_else(|| "/".into());
    let authority = pseudo(":authority").unwrap_or_else(|| authority_of(&c.upstream));
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{outbound}{path}"))
        .body(Full::new(c.body.clone()))
        .ok()?;
    let headers = req.headers_mut();
    headers.insert(http::header::HOST, HeaderValue::from_str(&authority).ok()?);
    headers.insert(HEADER.clone(), HeaderValue::from_str(token).ok()?);
    for (k, v) in &c.headers {
        if k.starts_with(':') || k == "host" || k == HEADER.as_str() {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(n, v);
        }
    }
    Some(req)
}

async fn send(req: Request<Full<Bytes>>) -> Option<CalloutAnswer> {
    let resp = client().request(req).await.ok()?;
    let (parts, body) = resp.into_parts();
    let mut headers = vec![(
        ":status".to_string(),
        parts.status.as_str().as_bytes().to_vec(),
    )];
    headers.extend(
        parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())),
    );
    let collected = Limited::new(body, MAX_ANSWER).collect().await.ok()?;
    let trailers = collected
        .trailers()
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    Some(CalloutAnswer {
        headers,
        body: collected.to_bytes(),
        trailers,
    })
}

#[cfg(test)]
mod tests {
    use super::authority_of;

    #[test]
    fn envoy_cluster_names_name_a_host_and_port() {
        assert_eq!(
            authority_of("outbound|80||auth.shop.svc.cluster.local"),
            "auth.shop.svc.cluster.local"
        );
        assert_eq!(authority_of("outbound|8080|v1|auth"), "auth:8080");
        assert_eq!(authority_of("auth"), "auth");
        assert_eq!(authority_of("auth.shop:9000"), "auth.shop:9000");
    }
}
