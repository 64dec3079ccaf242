//! Istio's YAML with Istio's meaning, on real processes: what Weft accepts behaves as Istio
//! documents it, and what a sidecar would refuse is refused at apply, naming the field, while
//! the mesh keeps serving and accepting other changes.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use std::time::Duration;
use support::mesh::*;
use support::{App, h1_client, read};
use weft::control::client::{ClientError, call};

/// Each test runs a control plane and sidecars: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `GET /` to the sidecar whose outbound listener is `to`, naming `host`.
fn get_host(to: std::net::SocketAddr, host: &str) -> http::Request<support::Body> {
    let mut req = support::get(to, "/", &[]);
    let value = http::HeaderValue::from_str(host).expect("host");
    req.headers_mut().insert("host", value);
    req
}

/// `SEED` with one line replaced.
fn seed_with(from: &str, to: &str) -> String {
    let out = SEED.replacen(from, to, 1);
    assert_ne!(out, SEED, "the seed has no {from:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_plugin_would_refuse_is_refused_at_apply_and_the_mesh_carries_on() {
    let _serial = SERIAL.lock().await;
    let mesh = TestMesh::start();
    let (dir, data, cp, op) = (&mesh.dir, mesh.data.as_path(), mesh.cp, mesh.op.clone());
    let (v1, v2) = (
        App::start("payments-v1").await,
        App::start("payments-v2").await,
    );
    let _p1 = mesh.pod("payments", &[("version", "v1")], v1.addr).await;
    let _p2 = mesh.pod("payments", &[("version", "v2")], v2.addr).await;
    let orders = mesh.pod("orders", &[("version", "v1")], NO_APP).await;
    call(
        &endpoint(cp),
        &op,
        Method::POST,
        "/v1/apply?source=seed.yaml",
        Bytes::from(SEED),
    )
    .await
    .expect("the seed applies");
    let before = converged(cp, &op, 3, Duration::from_secs(10)).await;
    let revision = api(cp, &op, Method::GET, "/v1/status").await["revision"].clone();

    let bad = [
        (
            seed_with("retryOn: 5xx,reset", "retryOn: 5xx,gateway-eror"),
            "spec.http[0].retries.retryOn",
            "gateway-eror",
        ),
        (
            seed_with(
                "  - route:\n",
                "  - match:\n    - uri: { regex: \"/pay(\" }\n    route:\n",
            ),
            "spec.http[0].match[0].uri.regex",
            "",
        ),
        (
            seed_with("weight: 95", "weight: 0").replacen("weight: 5", "weight: 0", 1),
            "spec.http[0].route",
            "weights sum to 0",
        ),
        // Retries and faults are judged by the retry and fault plugins, as sidecars run them.
        (
            seed_with("perTryTimeout: 2s", "perTryTimeout: 0s"),
            "spec.http[0].retries.perTryTimeout",
            "at least 1ms",
        ),
        (
            seed_with("perTryTimeout: 2s", "perTryTimeout: 2s\n      backoff: 0s"),
            "spec.http[0].retries.backoff",
            "at least 1ms",
        ),
        (
            seed_with(
                "    timeout: 6s",
                "    timeout: 6s\n    fault: { delay: { fixedDelay: 1s, percentage: { value: 150 } } }",
            ),
            "spec.http[0].fault.delay.percentage.value",
            "from 0 to 100",
        ),
        (
            seed_with(
                "    timeout: 6s",
                "    timeout: 6s\n    fault: { abort: { httpStatus: 99, percent: 10 } }",
            ),
            "spec.http[0].fault.abort.httpStatus",
            "from 200 to 599",
        ),
        (
            seed_with("    timeout: 6s", "    timeout: 6s\n    fault: {}"),
            "spec.http[0].fault",
            "a delay, an abort, or both",
        ),
        // Per-destination headers on two destinations a call cannot tell apart.
        (
            seed_with(
                "{ host: payments, subset: v2 } # the canary",
                "{ host: payments, subset: v1 }\n      headers: { request: { set: { x-a: '1' } } }",
            ),
            "spec.http[0].route[1].headers",
            "names the same destination",
        ),
    ];
    for (yaml, field, words) in bad {
        match call(
            &endpoint(cp),
            &op,
            Method::POST,
            "/v1/apply?source=bad.yaml",
            Bytes::from(yaml),
        )
        .await
        {
            Err(ClientError::Refused { status, body }) => {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
                assert!(
                    body.contains(&format!(
                        "bad.yaml: document 1 (VirtualService payments): {field}"
                    )) && body.contains(words),
                    "{body}"
                );
            }
            other => panic!("{field}: not refused: {other:?}"),
        }
    }
    // Nothing reached a sidecar: no NACK, the same revision and versions.
    assert_eq!(
        api(cp, &op, Method::GET, "/v1/status").await["revision"],
        revision
    );
    assert_eq!(converged(cp, &op, 3, Duration::from_secs(5)).await, before);
    let (status, _, _) = read(
        h1_client()
            .request(charge(orders.addr("outbound")))
            .await
            .expect("answered"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // And the next good change goes through.
    call(
        &endpoint(cp),
        &op,
        Method::POST,
        "/v1/apply?source=weight-50",
        Bytes::from(reweighted(50, 50)),
    )
    .await
    .expect("a good change applies");
    let after = converged(cp, &op, 3, Duration::from_secs(10)).await;
    assert_ne!(after, before);

    // Weights are relative, as in Istio since 1.15: 1 and 3 send three quarters to v2, and
    // 100 and 0 send everything to v1.
    for (v1_weight, v2_weight, lo, hi) in [(1, 3, 240, 360), (100, 0, 0, 0)] {
        let yaml = seed_with("weight: 95", &format!("weight: {v1_weight}")).replacen(
            "weight: 5",
            &format!("weight: {v2_weight}"),
            1,
        );
        call(
            &endpoint(cp),
            &op,
            Method::POST,
            "/v1/apply?source=relative",
            Bytes::from(yaml),
        )
        .await
        .expect("relative weights apply");
        converged(cp, &op, 3, Duration::from_secs(10)).await;
        let (to_v2, failed) = split(orders.addr("outbound"), &v2, 400).await;
        assert_eq!(failed, 0);
        assert!(
            (lo..=hi).contains(&to_v2),
            "{v1_weight}/{v2_weight}: {to_v2} of 400 to v2"
        );
    }
    // Istio's Bookinfo request routing: jason goes to v2, everyone else to v1.
    let by_user = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments.default.svc.cluster.local]
  http:
  - match: [{ headers: { end-user: { exact: jason } } }]
    route: [{ destination: { host: payments, subset: v2 } }]
  - route: [{ destination: { host: payments, subset: v1 } }]
";
    call(
        &endpoint(cp),
        &op,
        Method::POST,
        "/v1/apply?source=by-user",
        Bytes::from(by_user),
    )
    .await
    .expect("applies");
    converged(cp, &op, 3, Duration::from_secs(10)).await;
    for (user, app) in [
        ("jason", "payments-v2"),
        ("mary", "payments-v1"),
        ("", "payments-v1"),
    ] {
        for _ in 0..20 {
            let mut req = charge(orders.addr("outbound"));
            if !user.is_empty() {
                req.headers_mut()
                    .insert("end-user", http::HeaderValue::from_static(user));
            }
            let resp = h1_client().request(req).await.expect("answered");
            assert_eq!(
                resp.headers().get("x-app").map(|v| v.as_bytes()),
                Some(app.as_bytes()),
                "end-user {user:?}"
            );
        }
    }

    // Istio's mirroring task: every call to v1 is copied to v2, and the caller sees only v1.
    let mirrored = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  http:
  - route: [{ destination: { host: payments, subset: v1 } }]
    mirror: { host: payments, subset: v2 }
    mirrorPercentage: { value: 100.0 }
";
    call(
        &endpoint(cp),
        &op,
        Method::POST,
        "/v1/apply?source=mirror",
        Bytes::from(mirrored),
    )
    .await
    .expect("applies");
    converged(cp, &op, 3, Duration::from_secs(10)).await;
    let before = v2.seen().len();
    for _ in 0..20 {
        let resp = h1_client()
            .request(charge(orders.addr("outbound")))
            .await
            .expect("answered");
        assert_eq!(
            resp.headers().get("x-app").map(|v| v.as_bytes()),
            Some(&b"payments-v1"[..]),
            "the caller sees only the primary"
        );
        let _ = read(resp).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while v2.seen().len() < before + 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} copies reached v2",
            v2.seen().len() - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copy = v2.seen().last().cloned().expect("a copy");
    assert_eq!(
        copy.headers.get("host").map(|v| v.as_bytes()),
        Some(&b"payments-shadow"[..])
    );
    // Every copy is counted by the sidecar that sent it.
    let answered = "weft_mirror_requests_total{outcome=\"answered\",service=\"payments\"} 20";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = h1_client()
            .request(support::get(orders.addr("admin"), "/metrics", &[]))
            .await
            .expect("admin answers");
        let (_, _, body) = read(metrics).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        if text.contains(answered) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {answered:?} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // `weft apply --wait` tells the truth: each sidecar sent the change, and its answer.
    let good = write(dir.path(), "weight-20.yaml", &reweighted(80, 20));
    let out = weft(
        cp,
        data,
        &["apply", "--wait", "-f", good.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches(" ACK").count(), 3, "{}", text(&out));
    // A plugin read from the sidecars' own disk, which the control plane cannot judge, that
    // refuses its configuration: the control plane takes it, every sidecar NACKs, and the
    // waiting apply says so and fails.
    let trap = write(
        dir.path(),
        "trap.yaml",
        &format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{ name: trap }}\n\
             spec:\n  url: file://{}\n  pluginConfig: {{ configure: trap }}\n",
            weft_artifacts::CHAOS_PATH
        ),
    );
    let trap = trap.to_str().expect("utf-8");
    let out = weft(
        cp,
        data,
        &["apply", "--wait", "--timeout", "20s", "-f", trap],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("NACK: "), "{}", text(&out));
    assert!(
        text(&out).contains("did not take the change"),
        "{}",
        text(&out)
    );
    // Without --wait (and not on a terminal) the same apply returns at once, successfully.
    let out = weft(cp, data, &["delete", "WasmPlugin", "trap"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = weft(cp, data, &["apply", "-f", trap]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("NACK"), "{}", text(&out));
    // `weft status -o json` lists every sidecar with its labels.
    let out = weft(cp, data, &["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let labels: Vec<&str> = status["sidecars"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["labels"]["version"].as_str())
        .collect();
    assert_eq!(labels.len(), 3, "{status:#}");
}

/// A VirtualService for `payments` whose entries each carry their own policy.
const PER_ROUTE: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  http:
  - name: jason-reviews
    match: [{ headers: { end-user: { exact: jason } }, uri: { prefix: /reviews } }]
    fault: { delay: { fixedDelay: 1s, percentage: { value: 100 } } }
    route: [{ destination: { host: payments } }]
  - name: jason
    match: [{ headers: { end-user: { exact: jason } } }]
    fault: { abort: { httpStatus: 418, percentage: { value: 100 } } }
    route: [{ destination: { host: payments } }]
  - name: writes
    match: [{ method: { exact: POST } }]
    retries: { attempts: 0 }
    route: [{ destination: { host: payments } }]
  - name: slow
    match: [{ uri: { prefix: /slow } }]
    timeout: 300ms
    retries: { attempts: 0 }
    route: [{ destination: { host: payments } }]
  - name: v1-api
    match: [{ uri: { prefix: /v1/ } }]
    rewrite: { uri: /api/, authority: billing.internal }
    route: [{ destination: { host: payments } }]
  - name: maintenance
    match: [{ uri: { prefix: /maintenance } }]
    directResponse: { status: 503, body: { string: down for maintenance } }
  - name: moved
    match: [{ uri: { prefix: /old } }]
    redirect: { uri: /new, redirectCode: 302 }
  - route:
    - destination: { host: payments }
      headers:
        request: { set: { x-destination: payments, x-env: dev } }
        response: { set: { x-destination: payments } }
    retries: { attempts: 3, retryOn: 5xx }
    headers:
      request: { set: { x-env: prod }, remove: [x-debug] }
      response: { add: { x-served-by: weft } }
    corsPolicy:
      allowOrigins: [{ exact: 'https://shop.example' }]
      allowMethods: [GET, POST]
      maxAge: 1h
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_http_entrys_fault_retries_and_timeout_hold_for_its_calls_alone() {
    let _serial = SERIAL.lock().await;
    let mesh = TestMesh::start();
    let (cp, op) = (mesh.cp, mesh.op.clone());
    let app = App::start("payments").await;
    let _p = mesh.pod("payments", &[("version", "v1")], app.addr).await;
    let orders = mesh.pod("orders", &[("version", "v1")], NO_APP).await;
    mesh.apply("routes.yaml", PER_ROUTE).await;
    converged(cp, &op, 2, Duration::from_secs(10)).await;
    let to = orders.addr("outbound");
    let client = h1_client();
    let send = |method: Method, path: &str, headers: &[(&str, &str)]| {
        let mut req = support::get(to, path, headers);
        *req.method_mut() = method;
        client.request(req)
    };
    let status = |r: Result<http::Response<hyper::body::Incoming>, _>| async move {
        let (status, _, _) = read(r.expect("answered")).await;
        status
    };

    // Fault injection for jason only (Istio's Bookinfo task): everyone else goes through.
    let jason = status(send(Method::GET, "/", &[("end-user", "jason")]).await).await;
    assert_eq!(jason, StatusCode::IM_A_TEAPOT);
    let others = status(send(Method::GET, "/", &[("end-user", "mary")]).await).await;
    assert_eq!(others, StatusCode::OK);
    assert_eq!(app.seen().len(), 1, "jason's call never reached the app");

    // The Bookinfo delay, for jason only: mary's call to the same path is answered while
    // jason's is still held, and jason's takes at least the delay.
    let started = std::time::Instant::now();
    let jason = tokio::spawn(send(Method::GET, "/reviews", &[("end-user", "jason")]));
    let mary = status(send(Method::GET, "/reviews", &[("end-user", "mary")]).await).await;
    assert_eq!(mary, StatusCode::OK);
    assert!(
        !jason.is_finished(),
        "jason's delayed call finished before mary's undelayed one"
    );
    let jason = status(jason.await.expect("jason's call")).await;
    assert_eq!(jason, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(1), "no delay");

    // Retries per route: the default route retries a 503 three times; POSTs never do.
    let seen = app.seen().len();
    let got = status(send(Method::GET, "/status/503", &[]).await).await;
    assert_eq!(got, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.seen().len() - seen, 4, "1 try and 3 retries");
    let seen = app.seen().len();
    let got = status(send(Method::POST, "/status/503", &[]).await).await;
    assert_eq!(got, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.seen().len() - seen, 1, "attempts: 0 on the POST route");

    // Header operations, a direct response and a redirect, each on its own route only.
    let seen = app.seen().len();
    let resp = send(Method::GET, "/", &[("x-debug", "1")])
        .await
        .expect("answered");
    assert_eq!(
        resp.headers().get("x-served-by").map(|v| v.as_bytes()),
        Some(&b"weft"[..])
    );
    assert_eq!(
        resp.headers().get("x-destination").map(|v| v.as_bytes()),
        Some(&b"payments"[..])
    );
    let (got, _, _) = read(resp).await;
    assert_eq!(got, StatusCode::OK);
    let upstream = &app.seen()[seen];
    // The entry's operations run after its destination's, so its `set` of x-env wins.
    assert_eq!(
        upstream.headers.get("x-env").map(|v| v.as_bytes()),
        Some(&b"prod"[..])
    );
    assert!(upstream.headers.get("x-debug").is_none());
    assert_eq!(
        upstream.headers.get("x-destination").map(|v| v.as_bytes()),
        Some(&b"payments"[..])
    );
    let seen = app.seen().len();
    let (got, headers, body) = read(
        send(Method::GET, "/maintenance", &[])
            .await
            .expect("answered"),
    )
    .await;
    assert_eq!(
        (got, &body[..]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &b"down for maintenance"[..]
        )
    );
    assert!(
        headers.get("x-served-by").is_none(),
        "the default route's headers stay on it"
    );
    let (got, headers, _) = read(
        send(Method::GET, "/old/charge?id=7", &[])
            .await
            .expect("answered"),
    )
    .await;
    assert_eq!(got, StatusCode::FOUND);
    assert_eq!(
        headers.get("location").map(|v| v.as_bytes()),
        Some(&b"http://payments/new?id=7"[..])
    );
    assert_eq!(
        app.seen().len(),
        seen,
        "answered locally, never sent to the app"
    );

    // CORS on the default route: a browser's preflight is answered by the sidecar, and the
    // actual call's response says which origin may read it.
    let seen = app.seen().len();
    let (got, headers, _) = read(
        send(
            Method::OPTIONS,
            "/charge",
            &[
                ("origin", "https://shop.example"),
                ("access-control-request-method", "POST"),
            ],
        )
        .await
        .expect("answered"),
    )
    .await;
    assert_eq!(got, StatusCode::OK);
    assert_eq!(
        headers
            .get("access-control-allow-methods")
            .map(|v| v.as_bytes()),
        Some(&b"GET,POST"[..])
    );
    assert_eq!(
        app.seen().len(),
        seen,
        "the preflight never reached the app"
    );
    let resp = send(
        Method::GET,
        "/charge",
        &[("origin", "https://shop.example")],
    )
    .await
    .expect("answered");
    assert_eq!(
        resp.headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://shop.example"[..])
    );
    let _ = read(resp).await;

    // A rewrite: the app gets the rewritten path (query kept) and authority; routing and the
    // other routes saw the caller's.
    let seen = app.seen().len();
    let (got, _, _) = read(
        send(Method::GET, "/v1/charge?id=3", &[])
            .await
            .expect("answered"),
    )
    .await;
    assert_eq!(got, StatusCode::OK);
    let upstream = &app.seen()[seen];
    assert_eq!(upstream.path, "/api/charge");
    assert_eq!(
        upstream.headers.get("host").map(|v| v.as_bytes()),
        Some(&b"billing.internal"[..])
    );

    // A caller may name the service fully qualified: the same service, the same routes.
    for host in ["payments.default.svc.cluster.local", "payments.default:80"] {
        let mut req = support::get(to, "/", &[("end-user", "jason")]);
        req.headers_mut()
            .insert("host", http::HeaderValue::from_static(host));
        let got = status(client.request(req).await).await;
        assert_eq!(got, StatusCode::IM_A_TEAPOT, "{host}");
    }
    // A service in another namespace that no one registered: refused, not sent to payments.
    let mut req = support::get(to, "/", &[]);
    req.headers_mut().insert(
        "host",
        http::HeaderValue::from_static("payments.shop.svc.cluster.local"),
    );
    assert_eq!(
        status(client.request(req).await).await,
        StatusCode::BAD_GATEWAY
    );

    // Timeouts per route: /slow is bounded at 300 ms; a POST (another route, none) waits.
    let got = status(send(Method::GET, "/slow/2000", &[]).await).await;
    assert_eq!(got, StatusCode::GATEWAY_TIMEOUT);
    let got = status(send(Method::POST, "/slow/600", &[]).await).await;
    assert_eq!(got, StatusCode::OK, "the writes route has no timeout");
}

/// Namespace `shop`'s routes for its own `payments`.
const SHOP_ROUTES: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments, namespace: shop }
spec:
  hosts: [payments]
  http:
  - route: [{ destination: { host: payments } }]
    headers: { response: { set: { x-namespace: shop } } }
";

/// Shop's workloads take calls from shop's callers only.
const SHOP_ONLY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: shop-only, namespace: shop }
spec:
  rules: [{ from: [{ source: { namespaces: [shop] } }] }]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_keep_same_named_services_apart() {
    let _serial = SERIAL.lock().await;
    let mesh = TestMesh::start();
    let (cp, op) = (mesh.cp, mesh.op.clone());
    let strict = || serde_json::json!({"mtls": "STRICT"});
    let here = App::start("payments").await;
    let there = App::start("payments-shop").await;
    let _p = mesh
        .pod_in(
            "default",
            "payments",
            &[("version", "v1")],
            here.addr,
            strict(),
        )
        .await;
    let _q = mesh
        .pod_in(
            "shop",
            "payments",
            &[("version", "v1")],
            there.addr,
            strict(),
        )
        .await;
    let orders = mesh
        .pod_in("default", "orders", &[("version", "v1")], NO_APP, strict())
        .await;
    let shop_orders = mesh
        .pod_in("shop", "orders", &[("version", "v1")], NO_APP, strict())
        .await;
    mesh.apply("shop.yaml", SHOP_ROUTES).await;
    converged(cp, &op, 4, Duration::from_secs(20)).await;
    let client = h1_client();
    // Which app a call from `from` to `host` reached, and the response's x-namespace.
    let call = async |from: &Proc, host: &str| {
        let (n_here, n_there) = (here.seen().len(), there.seen().len());
        let req = get_host(from.addr("outbound"), host);
        let (status, headers, _) = read(client.request(req).await.expect("answered")).await;
        assert_eq!(status, StatusCode::OK, "{host}");
        let reached = match (here.seen().len() - n_here, there.seen().len() - n_there) {
            (1, 0) => "default",
            (0, 1) => "shop",
            other => panic!("{host}: reached {other:?}"),
        };
        let tag = headers
            .get("x-namespace")
            .map(|v| v.to_str().expect("ascii").to_string());
        (reached, tag)
    };
    let shop = ("shop", Some("shop".to_string()));
    // From namespace default: the short name is default's payments, untouched by shop's
    // VirtualService; every qualified form of shop's reaches shop's, with its routes.
    assert_eq!(call(&orders, "payments").await, ("default", None));
    assert_eq!(
        call(&orders, "payments.default.svc.cluster.local").await,
        ("default", None)
    );
    for host in [
        "payments.shop",
        "payments.shop.svc",
        "payments.shop.svc.cluster.local:80",
    ] {
        assert_eq!(call(&orders, host).await, shop, "{host}");
    }
    // From namespace shop, the short name is shop's own.
    assert_eq!(call(&shop_orders, "payments").await, shop);
    assert_eq!(
        call(&shop_orders, "payments.default").await,
        ("default", None)
    );

    // Each payments has its own SPIFFE identity, and sees its caller's.
    let xfcc = |app: &App| {
        let seen = app.seen();
        let last = seen.last().expect("a call");
        last.headers["x-forwarded-client-cert"]
            .to_str()
            .expect("ascii")
            .to_string()
    };
    assert_eq!(
        xfcc(&here),
        "By=spiffe://weft.local/ns/default/sa/payments;URI=spiffe://weft.local/ns/shop/sa/orders"
    );
    assert_eq!(
        xfcc(&there),
        "By=spiffe://weft.local/ns/shop/sa/payments;URI=spiffe://weft.local/ns/shop/sa/orders"
    );

    // A policy of namespace shop, by caller namespace: only shop's own callers reach shop's
    // payments; default's payments, outside the policy's namespace, is not judged by it.
    mesh.apply("shop-authz.yaml", SHOP_ONLY).await;
    converged(cp, &op, 4, Duration::from_secs(20)).await;
    let status = async |from: &Proc, host: &str| {
        let req = get_host(from.addr("outbound"), host);
        read(client.request(req).await.expect("answered")).await.0
    };
    assert_eq!(
        status(&orders, "payments.shop").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(status(&shop_orders, "payments").await, StatusCode::OK);
    assert_eq!(status(&orders, "payments").await, StatusCode::OK);

    // No workload lives in the control plane's namespace: no token for it.
    let path = "/v1/tokens/weft-control?namespace=weft-system";
    match call_raw(cp, &op, path).await {
        Err(ClientError::Refused { status, .. }) => assert_eq!(status, StatusCode::BAD_REQUEST),
        other => panic!("a token for the control plane's namespace: {other:?}"),
    }

    // A token of default's payments cannot register as shop's.
    let token = service_token(cp, &op, "payments").await;
    let path = "/v1/watch?id=x1&service=payments&namespace=shop&address=127.0.0.1:1";
    match call_raw(cp, &token, path).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert!(
                body.contains("cannot watch as") && body.contains("payments.shop"),
                "{body}"
            );
        }
        other => panic!("registered: {other:?}"),
    }
}

async fn call_raw(cp: std::net::SocketAddr, token: &str, path: &str) -> Result<Bytes, ClientError> {
    call(&endpoint(cp), token, Method::GET, path, Bytes::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_domain_is_the_meshs_choice() {
    let _serial = SERIAL.lock().await;
    let mesh = TestMesh::start_with(&["--cluster-domain", "corp.internal"]);
    let (cp, op) = (mesh.cp, mesh.op.clone());
    let domain = || serde_json::json!({"clusterDomain": "corp.internal"});
    let app = App::start("payments").await;
    let _p = mesh
        .pod_in(
            "default",
            "payments",
            &[("version", "v1")],
            app.addr,
            domain(),
        )
        .await;
    let orders = mesh
        .pod_in("default", "orders", &[("version", "v1")], NO_APP, domain())
        .await;
    let routes = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments.default.svc.corp.internal]
  http:
  - route: [{ destination: { host: payments.default.svc.corp.internal } }]
    headers: { response: { set: { x-routed: 'yes' } } }
";
    mesh.apply("routes.yaml", routes).await;
    // The default domain's FQDN names nothing in this mesh: refused, naming the field.
    let other = routes.replace("corp.internal }", "cluster.local }");
    let refused = call(
        &endpoint(cp),
        &op,
        Method::POST,
        "/v1/apply?source=other.yaml",
        Bytes::from(other),
    )
    .await;
    match refused {
        Err(ClientError::Refused { body, .. }) => assert!(
            body.contains("spec.http[0].route[0].destination.host")
                && body.contains("payments.default.svc.cluster.local"),
            "{body}"
        ),
        ok => panic!("accepted a host in another cluster domain: {ok:?}"),
    }
    converged(cp, &op, 2, Duration::from_secs(10)).await;
    let client = h1_client();
    for host in ["payments", "payments.default.svc.corp.internal"] {
        let req = get_host(orders.addr("outbound"), host);
        let (status, headers, _) = read(client.request(req).await.expect("answered")).await;
        assert_eq!(status, StatusCode::OK, "{host}");
        assert_eq!(headers["x-routed"], "yes", "{host}");
    }
    // A sidecar that reads hosts in another domain refuses the mesh's snapshots, saying why.
    let _stray = mesh
        .pod_in(
            "default",
            "reviews",
            &[("version", "v1")],
            NO_APP,
            serde_json::json!({}),
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = api(cp, &op, Method::GET, "/v1/status").await;
        let nack = st["sidecars"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["service"] == "reviews")
            .and_then(|s| s["nack"].as_str().map(str::to_string));
        if let Some(nack) = nack {
            assert!(nack.contains("clusterDomain"), "{nack}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no NACK: {st:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One CONNECT through `outbound` to `target`: the status the sidecar answered.
async fn connect_status(outbound: std::net::SocketAddr, target: std::net::SocketAddr) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(outbound)
        .await
        .expect("connect");
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = vec![0u8; 256];
    let n = tcp.read(&mut head).await.expect("read");
    let text = String::from_utf8_lossy(&head[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_resource_limits_what_a_workload_is_given_and_can_reach() {
    let _one = SERIAL.lock().await;
    let m = TestMesh::start();
    let payments = App::start("payments").await;
    let ledger = App::start("ledger").await;
    let _p = m.pod("payments", &[], payments.addr).await;
    let _l = m.pod("ledger", &[], ledger.addr).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    let out = orders.addr("outbound");
    // Something outside the mesh that an app could reach.
    let outside = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let outside_addr = outside.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = outside.accept().await {
            drop(s);
        }
    });
    converged(m.cp, &m.op, 3, Duration::from_secs(30)).await;
    let status = |host: &'static str| async move {
        read(
            h1_client()
                .request(get_host(out, host))
                .await
                .expect("call"),
        )
        .await
        .0
    };
    assert_eq!(status("ledger").await, StatusCode::OK, "reachable before");
    assert_eq!(
        connect_status(out, outside_addr).await,
        200,
        "ALLOW_ANY before"
    );

    m.apply(
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: orders }
spec:
  workloadSelector: { labels: { app: orders } }
  egress:
  - hosts: [./payments.default.svc.cluster.local]
  outboundTrafficPolicy: { mode: REGISTRY_ONLY }
",
    )
    .await;
    converged(m.cp, &m.op, 3, Duration::from_secs(30)).await;
    // orders' snapshot holds payments and itself only.
    let config = read(
        h1_client()
            .request(support::get(orders.addr("admin"), "/config", &[]))
            .await
            .expect("config"),
    )
    .await
    .2;
    let config: serde_json::Value = serde_json::from_slice(&config).expect("JSON");
    let mut services: Vec<&str> = config["services"]
        .as_object()
        .map(|s| s.keys().map(String::as_str).collect())
        .unwrap_or_default();
    services.sort_unstable();
    assert_eq!(services, ["orders", "payments"], "{config:#}");
    assert_eq!(status("payments").await, StatusCode::OK);
    let (code, _, body) = read(
        h1_client()
            .request(get_host(out, "ledger"))
            .await
            .expect("call"),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(&body).contains("REGISTRY_ONLY"),
        "{body:?}"
    );
    assert_eq!(
        connect_status(out, outside_addr).await,
        502,
        "REGISTRY_ONLY after"
    );
    let refused = write(
        m.dir.path(),
        "bad.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: bad }
spec:
  egress: [{ hosts: [payments], port: { number: 80 } }]
",
    );
    let out = weft(
        m.cp,
        &m.data,
        &["apply", "-f", refused.to_str().expect("utf-8")],
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("spec.egress[0].port: not supported by Weft yet"),
        "{said}"
    );
    assert!(
        said.contains("spec.egress[0].hosts[0]: \"payments\" must be <namespace>/<host>"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_entry_reaches_an_external_service_through_the_sidecar_with_retries() {
    let _one = SERIAL.lock().await;
    // The external service: every odd request fails 503; it records what it was sent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: std::sync::Arc<parking_lot::Mutex<Vec<http::HeaderMap>>> = Default::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let n = {
                                let mut s = record.lock();
                                s.push(req.headers().clone());
                                s.len()
                            };
                            let status = if n % 2 == 1 { 503 } else { 200 };
                            let mut resp = http::Response::new(support::full("external"));
                            *resp.status_mut() = StatusCode::from_u16(status).expect("status");
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let m = TestMesh::start();
    let orders = m.pod("orders", &[], NO_APP).await;
    m.apply(
        "external.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: example-api }}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: STATIC
  endpoints: [{{ address: 127.0.0.1, ports: {{ http: {port} }} }}]
"
        ),
    )
    .await;
    converged(m.cp, &m.op, 1, Duration::from_secs(30)).await;
    let out = orders.addr("outbound");
    for _ in 0..5 {
        let (status, _, body) = read(
            h1_client()
                .request(get_host(out, "api.example.com"))
                .await
                .expect("call"),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "Istio's default retry policy retried the 503"
        );
        assert_eq!(body, "external");
    }
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 10, "each call: a 503, then its retry");
    for h in &seen {
        assert_eq!(
            h.get("host").map(|v| v.as_bytes()),
            Some(&b"api.example.com"[..])
        );
        for mesh_only in ["x-weft-peer", "x-forwarded-host", "x-weft-target-port"] {
            assert!(
                h.get(mesh_only).is_none(),
                "{mesh_only} left the mesh: {h:?}"
            );
        }
    }
    // Istio's metrics name the external host.
    let metrics = read(
        h1_client()
            .request(support::get(orders.addr("admin"), "/metrics", &[]))
            .await
            .expect("scrape"),
    )
    .await
    .2;
    let scraped = String::from_utf8_lossy(&metrics).into_owned();
    assert!(
        scraped
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("destination_service=\"api.example.com\"")
                && l.contains("response_code=\"200\"")),
        "{scraped}"
    );
    // What Weft cannot carry yet is refused by path.
    let bad = write(
        m.dir.path(),
        "bad.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: bad }
spec:
  hosts: [db.example.com]
  addresses: [198.18.9.9]
  ports: [{ number: 5432, name: pg, protocol: TCP }]
  resolution: NONE
",
    );
    let out = weft(
        m.cp,
        &m.data,
        &["apply", "-f", bad.to_str().expect("utf-8")],
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    for needle in [
        "spec.addresses: not supported by Weft yet",
        "spec.ports[0].protocol: TCP is not supported by Weft yet",
        "spec.resolution: NONE is not supported by Weft yet",
    ] {
        assert!(said.contains(needle), "{needle:?} not in {said}");
    }
}
