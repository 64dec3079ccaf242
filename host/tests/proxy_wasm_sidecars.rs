//! proxy-wasm filters built from source with the proxy-wasm Rust SDK, shipped as Istio
//! WasmPlugins to real sidecar processes through the control plane, and run there beside a
//! `weft:filter` component on the same calls.

mod support;

use http::Request;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use support::mesh::{NO_APP, TestMesh, converged, text, weft, write};
use support::{App, full, h1_client, read};

/// Pushes an artifact to the control plane's store: its `sha256:` URL.
fn push(m: &TestMesh, path: &str) -> String {
    let out = weft(m.cp, &m.data, &["plugin", "push", path]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `weft apply -f` of `yaml`: whether it was taken, and what it said.
fn apply(m: &TestMesh, name: &str, yaml: &str) -> (bool, String) {
    let path = write(m.dir.path(), name, yaml);
    let out = weft(
        m.cp,
        &m.data,
        &["apply", "-f", path.to_str().expect("utf-8")],
    );
    (out.status.success(), text(&out))
}

fn plugin(name: &str, app: &str, mode: &str, url: &str, priority: i32, config: &str) -> String {
    format!(
        "---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{ name: {name} }}
spec:
  selector: {{ matchLabels: {{ app: {app} }} }}
  pluginName: root-of-{name}
  url: {url}
  priority: {priority}
  match: [{{ mode: {mode} }}]
  pluginConfig: {config}
"
    )
}

/// Calls payments through `out` with `headers`: status, response headers, body.
async fn call(
    out: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let mut req = Request::get(format!("http://{out}/charge")).header("host", "payments");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = h1_client()
        .request(req.body(full("")).expect("request"))
        .await
        .expect("answered");
    let (status, headers, body) = read(resp).await;
    (
        status.as_u16(),
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn scrape(admin: std::net::SocketAddr) -> String {
    let req = Request::get(format!("http://{admin}/metrics"))
        .body(full(""))
        .expect("request");
    let (_, _, body) = read(h1_client().request(req).await.expect("scrape")).await;
    String::from_utf8_lossy(&body).into_owned()
}

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_wasm_filters_run_unchanged_in_sidecars_beside_components() {
    let m = TestMesh::start();
    let app = App::start("payments").await;
    let payments = m.pod("payments", &[("version", "v1")], app.addr).await;
    let orders = m.pod("orders", &[("version", "v1")], NO_APP).await;
    // `weft plugin check` says what it is and runs its configuration, as a sidecar would.
    let check = |config: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["plugin", "check", weft_artifacts::PW_AUTH_PATH])
            .args(["--config", config])
            .output()
            .expect("weft runs")
    };
    let out = check(r#"{"token":"t"}"#);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ok: a proxy-wasm filter"),
        "{}",
        text(&out)
    );
    let out = check("{}");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("pluginConfig.token is required"),
        "{}",
        text(&out)
    );
    let auth = push(&m, weft_artifacts::PW_AUTH_PATH);
    let headers = push(&m, weft_artifacts::PW_HEADERS_PATH);
    let counter = push(&m, weft_artifacts::PW_COUNTER_PATH);

    // A filter whose proxy_on_configure returns false is refused at apply, with its words,
    // and nothing reaches a sidecar.
    let (ok, said) = apply(
        &m,
        "bad-auth.yaml",
        &plugin("pw-auth", "payments", "SERVER", &auth, 10, "{}"),
    );
    assert!(!ok, "{said}");
    assert!(said.contains("proxy_on_configure returned false"), "{said}");
    assert!(said.contains("pluginConfig.token is required"), "{said}");

    // Server side of payments: the gate (priority 10, first), then the counter. Client side
    // of orders: the chaos component (priority 20) stamps a tag, then the proxy-wasm header
    // filter (priority 10) copies it: both act on one call, in their declared order.
    let mesh = |response: &str| {
        [
            plugin(
                "pw-auth",
                "payments",
                "SERVER",
                &auth,
                10,
                "{ token: s3cret }",
            ),
            plugin("pw-counter", "payments", "SERVER", &counter, 5, "{}"),
            plugin(
                "chaos-tag",
                "orders",
                "CLIENT",
                &format!("file://{}", weft_artifacts::CHAOS_PATH),
                20,
                "{ tag: from-chaos }",
            ),
            plugin(
                "pw-headers",
                "orders",
                "CLIENT",
                &headers,
                10,
                &format!("{{ request: from-config, response: {response} }}"),
            ),
        ]
        .concat()
    };
    let (ok, said) = apply(&m, "filters.yaml", &mesh("first"));
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;

    let out = orders.addr("outbound");
    let (status, _, body) = call(out, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, "Access forbidden.\n");
    assert!(
        app.seen().is_empty(),
        "a refused call never reaches the app"
    );

    let token = [("authorization", "Bearer s3cret")];
    let (status, resp, body) = call(out, &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(resp["x-pw-response"], "first");
    // Filters that leave the body alone leave its length, as under Envoy (each of these
    // exports the body callbacks).
    assert_eq!(
        resp.get("content-length").map(|v| v.as_bytes().to_vec()),
        Some(body.len().to_string().into_bytes()),
        "{resp:?}"
    );
    // Istio's pluginName is the filter's root id.
    let seen = resp["x-pw-properties"].to_str().expect("ascii");
    assert!(
        seen.contains("plugin=pw-headers;root=root-of-pw-headers;"),
        "{seen}"
    );
    let seen = app.seen();
    let last = seen.last().expect("the app saw the call");
    assert_eq!(last.headers["x-pw-request"], "from-config");
    assert_eq!(last.headers["x-chaos-tag"], "from-chaos");
    assert_eq!(last.headers["x-pw-saw-chaos"], "from-chaos");
    assert_eq!(
        last.headers["x-pw-count"], "1",
        "the counter runs after the gate"
    );

    for _ in 0..4 {
        let (status, _, body) = call(out, &token).await;
        assert_eq!(status, 200, "{body}");
    }
    let metrics = scrape(payments.addr("admin")).await;
    assert_eq!(
        sample(&metrics, "pw_requests_total"),
        Some(5.0),
        "{metrics}"
    );

    // A new pluginConfig is in force on the next calls, without a restart, and no call fails
    // while the filters' new VMs take over from the old ones under a steady stream of calls.
    let load = tokio::spawn(async move {
        let mut seen = (0usize, 0usize);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, resp, body) = call(out, &token).await;
            assert_eq!(status, 200, "{body}");
            match resp["x-pw-response"].to_str().expect("ascii") {
                "first" => seen.0 += 1,
                "second" => seen.1 += 1,
                other => panic!("x-pw-response {other}"),
            }
            if seen.1 >= 50 {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the new configuration never came"
            );
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (ok, said) = apply(&m, "filters.yaml", &mesh("second"));
    assert!(ok, "{said}");
    let (before, after) = load.await.expect("every call answered 200");
    assert!(
        before > 0 && after >= 50,
        "{before} calls before the swap, {after} after"
    );
}

/// Pushes pw-body and applies it on both sides: payments' server side, orders' client side.
fn apply_body_filters(m: &TestMesh) {
    let body = push(m, weft_artifacts::PW_BODY_PATH);
    let yaml = [
        plugin("body-server", "payments", "SERVER", &body, 0, "{}"),
        plugin("body-client", "orders", "CLIENT", &body, 0, "{}"),
    ]
    .concat();
    let (ok, said) = apply(m, "body.yaml", &yaml);
    assert!(ok, "{said}");
}

/// POSTs `body` to payments' `/echo` through `out`: status and body.
async fn post(out: std::net::SocketAddr, body: Vec<u8>) -> (u16, String) {
    post_with(out, body, &[]).await
}

/// [`post`] with `headers`.
async fn post_with(
    out: std::net::SocketAddr,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = Request::post(format!("http://{out}/echo")).header("host", "payments");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(full(body)).expect("request");
    let (status, _, body) = read(h1_client().request(req).await.expect("answered")).await;
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_callbacks_get_whole_bodies_on_both_sides_and_may_answer_in_their_place() {
    let m = TestMesh::start();
    let app = App::start("payments").await;
    let _payments = m.pod("payments", &[("version", "v1")], app.addr).await;
    let orders = m.pod("orders", &[("version", "v1")], NO_APP).await;
    apply_body_filters(&m);
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;
    let out = orders.addr("outbound");

    // Masked on the client side (and found masked on the server side); the echo comes back
    // through both sides' response-body callbacks, each appending its line.
    let (status, body) = post(out, b"my secret".to_vec()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "my ******\n-- filtered by pw-body\n-- filtered by pw-body"
    );

    // A filter that grows a body but leaves its content-length (removing it is the filter's
    // job, as under Envoy): the response is not delivered with a false length.
    let req = Request::post(format!("http://{out}/echo"))
        .header("host", "payments")
        .header("x-keep-length", "yes")
        .body(full("short"))
        .expect("request");
    let resp = h1_client().request(req).await;
    let whole = match resp {
        Ok(r) if r.status() == 200 => r.into_body().collect().await.is_ok(),
        _ => false,
    };
    assert!(!whole, "a body longer than its content-length was sent");

    // Refused by the client side's callback: nothing leaves orders' sidecar.
    let before = app.seen().len();
    let (status, body) = post(out, b"this is forbidden".to_vec()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, "body refused\n");
    assert_eq!(app.seen().len(), before, "the app never saw it");

    // A chunked body (no length: it streams through the callbacks as it comes) that the filter
    // holds to its end: answered in its place, or masked whole, all the same.
    let chunked = |pieces: &[&'static str]| {
        let req = Request::post(format!("http://{out}/echo"))
            .header("host", "payments")
            .body(
                Chunks(
                    pieces
                        .iter()
                        .map(|p| bytes::Bytes::from_static(p.as_bytes()))
                        .collect(),
                    None,
                )
                .boxed_unsync(),
            )
            .expect("request");
        async move {
            let (status, _, body) = read(h1_client().request(req).await.expect("answered")).await;
            (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, body) = chunked(&["this is ", "forbid", "den"]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(app.seen().len(), before, "the app never saw it");
    let (status, body) = chunked(&["my se", "cret"]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("my ******\n"), "{body}");
    let before = app.seen().len();

    // A body over the 64 KiB a body callback is given whole is refused, not let past the
    // filter unseen.
    let (status, body) = post(out, vec![b'a'; 64 * 1024 + 1]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(app.seen().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_filter_asks_a_mesh_service_over_an_http_callout() {
    // Istio's cluster-name form of the upstream, as filters written for Istio name it.
    let a = auth_mesh(
        "pw-callout",
        "{ upstream: \"outbound|80||auth.default.svc.cluster.local\" }",
    )
    .await;
    let (out, payments_app, auth_app) = (a.out, &a.payments, &a.auth);

    // Allowed by the auth service: on to payments, with the auth service's name added.
    let (status, _, body) = call(out, &[("x-allow", "yes")]).await;
    assert_eq!(status, 200, "{body}");
    let seen = payments_app.seen();
    assert_eq!(
        seen.last().expect("payments saw it").headers["x-auth-by"],
        "auth"
    );
    let asked = auth_app.seen();
    assert_eq!(asked.last().expect("auth was asked").path, "/status/200");

    // Refused by the auth service: answered 403 by the filter; payments never sees it.
    let before = payments_app.seen().len();
    let (status, headers, body) = call(out, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, "denied by auth\n");
    assert_eq!(headers["x-denied-by"], "pw-callout");
    assert_eq!(payments_app.seen().len(), before);
    assert_eq!(
        auth_app.seen().len(),
        2,
        "each call asked the auth service once"
    );

    // The mark that lets a filter's own call past the chain is the sidecar's secret: an app
    // that sends the header is filtered as any call, and the header goes no further.
    let (status, _, body) = call(out, &[("x-weft-callout", "guess"), ("x-allow", "yes")]).await;
    assert_eq!(status, 200, "{body}");
    let seen = payments_app.seen();
    let last = seen.last().expect("payments saw it");
    assert_eq!(last.headers["x-auth-by"], "auth", "the filter ran");
    assert!(last.headers.get("x-weft-callout").is_none());
    assert_eq!(auth_app.seen().len(), 3);

    // A body over the 64 KiB a filter may hold streams through its body callbacks (which
    // pass each piece on), whole.
    let big: Vec<u8> = (0..200 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let (status, echoed) = post_with(out, big.clone(), &[("x-allow", "yes")]).await;
    assert_eq!(status, 200);
    assert_eq!(echoed.as_bytes(), &big[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_proxy_wasm_filter_is_contained_in_a_sidecar() {
    let m = TestMesh::start();
    let app = App::start("payments").await;
    let payments = m.pod("payments", &[("version", "v1")], app.addr).await;
    let orders = m.pod("orders", &[("version", "v1")], NO_APP).await;
    let hostile = push(&m, weft_artifacts::PW_HOSTILE_PATH);
    let yaml = format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: pw-hostile
  annotations: {{ weft.io/plugin-deadline: 50ms, weft.io/plugin-memory: 8Mi }}
spec:
  selector: {{ matchLabels: {{ app: payments }} }}
  url: {hostile}
  failStrategy: FAIL_OPEN
  match: [{{ mode: SERVER }}]
"
    );
    let (ok, said) = apply(&m, "hostile.yaml", &yaml);
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;
    let out = orders.addr("outbound");
    // Each attack costs only its own VM: the filter is skipped (fail open), the call goes on,
    // and the next call finds a fresh VM.
    for attack in ["loop", "memory", "trap", "grpc", "none"] {
        let (status, _, body) = call(out, &[("x-attack", attack)]).await;
        assert_eq!(status, 200, "{attack}: {body}");
        let seen = app.seen();
        let passed = seen
            .last()
            .expect("the app saw it")
            .headers
            .get("x-hostile-passed");
        assert_eq!(passed.is_some(), attack == "none", "{attack}");
    }
    // The server side streams a body over the bound through the filter's body callbacks.
    let big: Vec<u8> = (0..200 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let (status, echoed) = post(out, big.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(echoed.as_bytes(), &big[..]);
    let metrics = scrape(payments.addr("admin")).await;
    for cause in ["deadline", "memory", "trap", "limit"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("weft_plugin_failures_total{")
                    && l.contains("plugin=\"pw-hostile\"")
                    && l.contains(&format!("cause=\"{cause}\""))
            })
            .unwrap_or_else(|| panic!("no {cause} failure counted:\n{metrics}"));
        assert!(line.ends_with(" 1"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_context_asks_a_mesh_service_on_its_tick() {
    let a = auth_mesh("pw-refresh", "{ upstream: auth, refresh: true }").await;
    let (out, payments_app, auth_app) = (a.out, &a.payments, &a.auth);
    // The root contexts' ticks ask auth through the sidecar and keep its answer; requests
    // carry it without asking themselves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = call(out, &[]).await;
        assert_eq!(status, 200, "{body}");
        let seen = payments_app.seen();
        let by = seen.last().expect("payments saw it").headers["x-refreshed-by"].clone();
        if by == "auth" {
            break;
        }
        assert!(Instant::now() < deadline, "no refresh reached the requests");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        auth_app.seen().iter().all(|s| s.path == "/status/200"),
        "only the ticks asked auth"
    );
}

/// payments and auth, each an app behind a sidecar, orders' sidecar with the callout filter
/// applied as `name` with `config` on its client side, every sidecar running it.
struct AuthMesh {
    payments: App,
    auth: App,
    out: std::net::SocketAddr,
    _mesh: (TestMesh, [support::mesh::Proc; 3]),
}

async fn auth_mesh(name: &str, config: &str) -> AuthMesh {
    let m = TestMesh::start();
    let payments = App::start("payments").await;
    let auth = App::start("auth").await;
    let payments_pod = m.pod("payments", &[("version", "v1")], payments.addr).await;
    let auth_pod = m.pod("auth", &[("version", "v1")], auth.addr).await;
    let orders = m.pod("orders", &[("version", "v1")], NO_APP).await;
    let callout = push(&m, weft_artifacts::PW_CALLOUT_PATH);
    let yaml = plugin(name, "orders", "CLIENT", &callout, 0, config);
    let (ok, said) = apply(&m, "callout.yaml", &yaml);
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 3, Duration::from_secs(30)).await;
    AuthMesh {
        payments,
        auth,
        out: orders.addr("outbound"),
        _mesh: (m, [payments_pod, auth_pod, orders]),
    }
}

/// POSTs `body`, then `trailers`, to payments' `/echo` through `out` over HTTP/2 as a gRPC
/// call does (so it stays HTTP/2 to the app, which echoes the trailers as `x-trailer-*`
/// headers): status, headers, body.
async fn post_trailers(
    out: std::net::SocketAddr,
    body: Vec<u8>,
    headers: &[(&str, &str)],
    trailers: &[(&'static str, &'static str)],
) -> (u16, http::HeaderMap, String) {
    let mut map = http::HeaderMap::new();
    for (k, v) in trailers {
        map.insert(*k, http::HeaderValue::from_static(v));
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(body))
        .with_trailers(std::future::ready(Some(Ok(map))))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut req = Request::post("http://payments/echo")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut sender = support::h2_connection(out).await;
    let resp = (sender.send_request(req.body(body).expect("request")).await).expect("answered");
    let (status, headers, body) = read(resp).await;
    (
        status.as_u16(),
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The values of `name` in `headers`, in order.
fn values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    (headers.get_all(name).iter())
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_cross_the_mesh_through_trailers_callbacks() {
    let m = TestMesh::start();
    let app = App::start("payments").await;
    let _payments = m.pod("payments", &[("version", "v1")], app.addr).await;
    let orders = m.pod("orders", &[("version", "v1")], NO_APP).await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;
    let out = orders.addr("outbound");

    // Without a filter, a request's trailers reach the app as they were sent.
    let (status, headers, body) =
        post_trailers(out, b"hello".to_vec(), &[], &[("x-checksum", "abc")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(values(&headers, "x-trailer-x-checksum"), ["abc"]);

    apply_body_filters(&m);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Each side's trailers callback reads the trailer and adds its own: the client side's,
    // then the server side's.
    loop {
        let (status, headers, body) =
            post_trailers(out, b"hello".to_vec(), &[], &[("x-checksum", "abc")]).await;
        assert_eq!(status, 200, "{body}");
        let added = values(&headers, "x-trailer-x-pw-request-trailer");
        if added.len() == 2 {
            assert_eq!(added, ["saw abc", "saw abc"]);
            assert_eq!(values(&headers, "x-trailer-x-checksum"), ["abc"]);
            let seen = app.seen();
            let last = seen.last().expect("the app saw it");
            assert_eq!(
                values(&last.headers, "x-pw-end-of-stream"),
                ["false", "false"],
                "a body follows the headers"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the filters never ran: {headers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An HTTP/2 request whose headers end it, without a `content-length` (a DELETE): each
    // side's filter is told no body follows.
    let mut sender = support::h2_connection(out).await;
    let req = Request::delete("http://payments/status/204")
        .body(full(""))
        .expect("request");
    let (status, _, _) = read(sender.send_request(req).await.expect("answered")).await;
    assert_eq!(status.as_u16(), 204);
    let seen = app.seen();
    let last = seen.last().expect("the app saw it");
    assert_eq!(
        values(&last.headers, "x-pw-end-of-stream"),
        ["true", "true"]
    );

    // A trailers callback answers in the call's place: the client side's refuses, and
    // nothing leaves orders' sidecar.
    let before = app.seen().len();
    let (status, headers, body) =
        post_trailers(out, b"hello".to_vec(), &[], &[("x-deny", "yes")]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, "trailers refused\n");
    assert_eq!(values(&headers, "x-refused-by"), ["pw-body"]);
    assert_eq!(app.seen().len(), before, "the app never saw it");

    // A body over the bound streams through both sides' body callbacks (both ways: the
    // filter passes each piece on), and its trailers through their trailers callbacks.
    let big: Vec<u8> = (0..200 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let (status, headers, body) = post_trailers(
        out,
        big.clone(),
        &[("x-stream", "yes")],
        &[("x-checksum", "big")],
    )
    .await;
    assert_eq!(status, 200, "{}", &body[..body.len().min(200)]);
    assert!(body.as_bytes() == big, "the body came back whole");
    assert_eq!(
        values(&headers, "x-trailer-x-pw-request-trailer"),
        ["saw big", "saw big"]
    );
}

/// A request body in pieces, of unknown length (sent chunked, or as HTTP/2 data frames without
/// `content-length`), then its trailers if it has any.
struct Chunks(
    std::collections::VecDeque<bytes::Bytes>,
    Option<http::HeaderMap>,
);

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let next = match self.0.pop_front() {
            Some(b) => Some(http_body::Frame::data(b)),
            None => self.1.take().map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(next.map(Ok))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sends_the_request_body_and_its_trailers_again() {
    let m = TestMesh::start();
    // Half the calls fail 503, which Istio's default retry policy retries once.
    let flaky = support::Behaviour::Flaky {
        percent: 50,
        status: 503,
        seed: 11,
    };
    let app = App::start_with("payments", flaky).await;
    let _payments = m.pod("payments", &[("version", "v1")], app.addr).await;
    let orders = m.pod("orders", &[("version", "v1")], NO_APP).await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;
    let out = orders.addr("outbound");
    let failed = || app.failed.load(std::sync::atomic::Ordering::SeqCst);
    // Both kinds of body the sidecar keeps for retries: one of known length, read whole
    // first, and one of unknown length, sent on as it comes with a copy kept.
    for known_length in [true, false] {
        let mut retried = false;
        for _ in 0..40 {
            let failed_before = failed();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
            let body = if known_length {
                http_body_util::Full::new(bytes::Bytes::from_static(b"hello"))
                    .with_trailers(std::future::ready(Some(Ok(trailers))))
                    .map_err(|never| match never {})
                    .boxed_unsync()
            } else {
                let pieces = ["hel", "lo"].map(|p| bytes::Bytes::from_static(p.as_bytes()));
                Chunks(pieces.into_iter().collect(), Some(trailers)).boxed_unsync()
            };
            let req = Request::post("http://payments/echo")
                .header("content-type", "application/grpc")
                .body(body)
                .expect("request");
            let mut sender = support::h2_connection(out).await;
            let resp = sender.send_request(req).await.expect("answered");
            let (status, headers, body) = read(resp).await;
            if status == 200 && failed() > failed_before {
                assert_eq!(&body[..], b"hello", "known length {known_length}");
                assert_eq!(
                    values(&headers, "x-trailer-x-checksum"),
                    ["abc"],
                    "known length {known_length}"
                );
                retried = true;
                break;
            }
        }
        assert!(
            retried,
            "no call was retried and answered (known length {known_length})"
        );
    }
}
