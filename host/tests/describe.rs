//! "Why did this request fail?" on real processes: `weft describe` sends a call through the
//! caller's sidecar and shows what each plugin decided — a call retried after a 503, the
//! failing endpoint ejected and passed over — and only the sidecar's token asks for it.

mod support;

use http::Request;
use std::time::Duration;
use support::mesh::{NO_APP, TestMesh, converged, text, weft};
use support::{App, full, h1_client, read};

const POLICY: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  http:
  - name: primary
    route: [{ destination: { host: payments, subset: v1 } }]
    retries: { attempts: 3, retryOn: 5xx }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: payments }
spec:
  host: payments
  trafficPolicy:
    outlierDetection: { consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100 }
  subsets:
  - { name: v1, labels: { version: v1 } }
";

fn describe(m: &TestMesh) -> serde_json::Value {
    let out = weft(
        m.cp,
        &m.data,
        &[
            "describe",
            "http://payments/echo",
            "--from",
            "orders",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_explains_a_retried_call_and_an_ejected_endpoint() {
    let m = TestMesh::start();
    let bad = App::start_with("payments-bad", support::Behaviour::Always(503)).await;
    let good = App::start("payments-good").await;
    let bad_pod = m
        .pod("payments", &[("version", "v1"), ("pod", "bad")], bad.addr)
        .await;
    let _good_pod = m
        .pod("payments", &[("version", "v1"), ("pod", "good")], good.addr)
        .await;
    let orders = m.pod("orders", &[], NO_APP).await;
    m.apply("policy.yaml", POLICY).await;
    converged(m.cp, &m.op, 3, Duration::from_secs(30)).await;
    let bad_address = bad_pod.addr("inbound").to_string();

    // Until a call meets the failing endpoint first (the balancer picks either): then it is
    // retried, and the retry passes over the endpoint its 503 ejected.
    let mut retried = None;
    for _ in 0..30 {
        let v = describe(&m);
        assert_eq!(v["status"], 200, "{v:#}");
        let e = &v["explanation"];
        assert_eq!(e["service"], "payments");
        assert_eq!(e["destination"], "payments subset v1", "{e:#}");
        assert_eq!(e["route"], "primary", "{e:#}");
        if e["attempts"].as_array().is_some_and(|a| a.len() == 2) {
            retried = Some(e.clone());
            break;
        }
    }
    let e = retried.expect("a call met the failing endpoint within 30 tries");
    let first = &e["attempts"][0];
    assert_eq!(first["endpoint"], bad_address.as_str(), "{e:#}");
    assert_eq!(first["outcome"], "503", "{e:#}");
    let verdict = |a: &serde_json::Value, plugin: &str| {
        a["verdicts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p[0] == plugin)
            .and_then(|p| p[1].as_str())
            .unwrap_or("")
            .to_string()
    };
    assert!(verdict(first, "retry").starts_with("retry after"), "{e:#}");
    let second = &e["attempts"][1];
    assert_eq!(second["outcome"], "200", "{e:#}");
    assert_ne!(second["endpoint"], bad_address.as_str(), "{e:#}");
    assert_eq!(second["ejected"][0], bad_address.as_str(), "{e:#}");
    assert_eq!(verdict(second, "retry"), "done", "{e:#}");
    // The canary named the subset: its step says so.
    assert!(
        e["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p[0] == "canary" && p[1].as_str().is_some_and(|d| d.contains("subset v1"))),
        "{e:#}"
    );
    // The next call goes straight to the good endpoint, the ejected one passed over.
    let e = describe(&m)["explanation"].clone();
    assert_eq!(e["attempts"].as_array().map(Vec::len), Some(1), "{e:#}");
    assert_eq!(e["attempts"][0]["ejected"][0], bad_address.as_str());

    // An app's request with a wrong token gets nothing, and the header goes no further.
    let out = orders.addr("outbound");
    let req = Request::get(format!("http://{out}/echo"))
        .header("host", "payments")
        .header("x-weft-debug", "guess")
        .body(full(""))
        .expect("request");
    let (status, headers, _) = read(h1_client().request(req).await.expect("call")).await;
    assert_eq!(status, 200);
    assert!(headers.get("x-weft-debug-info").is_none());
    let seen = good.seen();
    assert!(
        seen.last()
            .expect("seen")
            .headers
            .get("x-weft-debug")
            .is_none()
    );
    // With the sidecar's token (from its admin endpoint), the app's own call is explained.
    let admin = orders.addr("admin");
    let req = Request::get(format!("http://{admin}/debug/token"))
        .body(full(""))
        .expect("request");
    let (_, _, token) = read(h1_client().request(req).await.expect("token")).await;
    let token = String::from_utf8_lossy(&token).trim().to_string();
    let req = Request::get(format!("http://{out}/echo"))
        .header("host", "payments")
        .header("x-weft-debug", token)
        .body(full(""))
        .expect("request");
    let (status, headers, _) = read(h1_client().request(req).await.expect("call")).await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_slice(
        headers
            .get("x-weft-debug-info")
            .expect("explained")
            .as_bytes(),
    )
    .expect("JSON");
    assert_eq!(info["status"], 200);
    assert_eq!(info["attempts"][0]["ejected"][0], bad_address.as_str());
}
