//! The Gateway API's HTTPRoute for mesh traffic (GAMMA) on real sidecar processes: the seed's
//! 95/5 canary written as an HTTPRoute attached to the payments Service splits like the
//! VirtualService, and follows a weight change; matches take the Gateway API's precedence and
//! segment-wise prefixes; filters edit headers and rewrite prefixes; `retry` retries its codes;
//! what Weft cannot honour is refused by path.

mod support;

use http::Request;
use std::time::Duration;
use support::mesh::{NO_APP, TestMesh, converged, text, weft, write};
use support::{App, Behaviour, full, h1_client, read};

fn canary(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: payments }}
spec:
  parentRefs:
  - {{ group: \"\", kind: Service, name: payments, port: 80 }}
  rules:
  - matches:
    - path: {{ type: PathPrefix, value: /admin }}
      headers: [{{ name: X-Operator, value: yes }}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{ add: [{{ name: x-routed-by, value: gamma }}], remove: [x-secret] }}
    - type: URLRewrite
      urlRewrite: {{ path: {{ type: ReplacePrefixMatch, replacePrefixMatch: /internal }} }}
    backendRefs: [{{ name: payments-v1, port: 80 }}]
  - matches: [{{ path: {{ type: Exact, value: /flaky }} }}]
    backendRefs: [{{ name: payments-flaky, port: 80 }}]
    retry: {{ codes: [503], attempts: 2 }}
  - backendRefs:
    - {{ name: payments-v1, port: 80, weight: {v1} }}
    - {{ name: payments-v2, port: 80, weight: {v2} }}
"
    )
}

/// `n` calls through orders to `path`; how many were answered by v2, and the statuses.
async fn calls(
    out: std::net::SocketAddr,
    path: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> (usize, Vec<u16>) {
    let client = h1_client();
    let mut v2 = 0;
    let mut statuses = Vec::new();
    for _ in 0..n {
        let mut req = Request::get(format!("http://{out}{path}")).header("host", "payments");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (status, h, _) = read(
            client
                .request(req.body(full("")).expect("request"))
                .await
                .expect("call"),
        )
        .await;
        if h.get("x-app").is_some_and(|a| a == "v2") {
            v2 += 1;
        }
        statuses.push(status.as_u16());
    }
    (v2, statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_as_an_httproute_splits_matches_filters_and_retries() {
    let m = TestMesh::start();
    let v1 = App::start("v1").await;
    let v2 = App::start("v2").await;
    let flaky = App::start_with("flaky", Behaviour::Always(503)).await;
    let _p1 = m.pod("payments-v1", &[], v1.addr).await;
    let _p2 = m.pod("payments-v2", &[], v2.addr).await;
    let _p3 = m.pod("payments-flaky", &[], flaky.addr).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    let out = orders.addr("outbound");
    m.apply("route.yaml", &canary(95, 5)).await;
    converged(m.cp, &m.op, 4, Duration::from_secs(30)).await;

    // 95/5, as the VirtualService splits it.
    let (to_v2, statuses) = calls(out, "/charge", 400, &[]).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!((5..=40).contains(&to_v2), "{to_v2} of 400 went to v2");
    // weight: 5 → 50, and the sidecars follow.
    m.apply("route.yaml", &canary(50, 50)).await;
    converged(m.cp, &m.op, 4, Duration::from_secs(30)).await;
    let (to_v2, _) = calls(out, "/charge", 200, &[]).await;
    assert!((70..=130).contains(&to_v2), "{to_v2} of 200 went to v2");

    // The admin rule: its header must match; its prefix is whole segments; its filters edit
    // the request and rewrite the prefix.
    let seen = v1.seen.lock().len();
    let (_, s) = calls(
        out,
        "/admin/users?x=1",
        1,
        &[("x-operator", "yes"), ("x-secret", "s")],
    )
    .await;
    assert_eq!(s, [200]);
    let got = v1.seen.lock()[seen].clone();
    assert_eq!(got.path, "/internal/users");
    assert_eq!(
        got.headers.get("x-routed-by").map(|v| v.as_bytes()),
        Some(&b"gamma"[..])
    );
    assert!(got.headers.get("x-secret").is_none());
    for path in ["/adminx", "/admin/users"] {
        let before = v1.seen.lock().len() + v2.seen.lock().len();
        let headers: &[(&str, &str)] = if path == "/adminx" {
            &[("x-operator", "yes")]
        } else {
            &[]
        };
        calls(out, path, 1, headers).await;
        let all: Vec<String> = v1
            .seen
            .lock()
            .iter()
            .chain(v2.seen.lock().iter())
            .map(|s| s.path.clone())
            .collect();
        assert_eq!(all.len(), before + 1);
        assert!(
            all.contains(&path.to_string()),
            "{path} was not sent on as written: {all:?}"
        );
    }

    // retry: 503 retried twice more.
    let (_, s) = calls(out, "/flaky", 1, &[]).await;
    assert_eq!(s, [503]);
    assert_eq!(flaky.seen.lock().len(), 3);

    // What Weft cannot honour is refused by path; a VirtualService for the same host too.
    for (body, says) in [
        (
            canary(95, 5).replace("parentRefs:\n  - { group: \"\", kind: Service, name: payments, port: 80 }", "parentRefs:\n  - { name: edge }"),
            "spec.parentRefs[0]: Gateway \"edge\": Weft routes mesh traffic (GAMMA) only",
        ),
        (
            canary(95, 5).replace("spec:\n", "spec:\n  hostnames: [payments.example.com]\n"),
            "spec.hostnames: not supported by Weft yet",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: payments-vs }\nspec:\n  hosts: [payments]\n  http: [{ route: [{ destination: { host: payments-v1 } }] }]\n".to_string(),
            "payments is already routed by",
        ),
    ] {
        let file = write(m.dir.path(), "bad.yaml", &body);
        let out = weft(m.cp, &m.data, &["apply", "-f", file.to_str().expect("utf-8")]);
        let said = text(&out);
        assert!(!out.status.success(), "{said}");
        assert!(said.contains(says), "{says:?} not in: {said}");
    }
}
