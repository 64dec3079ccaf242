//! The four built-in policies end to end: real sidecars, real backends on loopback, the
//! plugins compiled from `plugins/` — the canary split and its match rules, retries (classes,
//! arithmetic, budget across a chain of services), outlier ejection with growth and caps, and
//! the telemetry on `/metrics`.

mod support;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::{App, Behaviour, Resetter, full, get, h1_client, read};
use weft::proxy::Sidecar;
use weft::snapshot::Snapshot;

/// An app with its sidecar.
struct Pod {
    app: App,
    sidecar: Sidecar,
}

async fn pod(service: &str, name: &str, behaviour: Behaviour) -> Pod {
    let app = App::start_with(name, behaviour).await;
    let sidecar = Sidecar::start(support::sidecar_config(service, app.addr))
        .await
        .expect("sidecar");
    Pod { app, sidecar }
}

fn endpoint(at: SocketAddr, version: &str) -> Value {
    json!({"address": at.to_string(), "labels": {"version": version}})
}

/// A snapshot with one service, `service`, reached at `endpoints` through `plugins`.
fn snapshot(service: &str, endpoints: Vec<Value>, plugins: Value) -> Snapshot {
    serde_json::from_value(json!({
        "version": "policies-1",
        "services": {
            service: {
                "timeout": "30s",
                "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}},
                "endpoints": endpoints,
                "plugins": plugins,
            }
        }
    }))
    .expect("snapshot")
}

/// A caller's sidecar (`orders`, whose own app is never called) with `snapshot` applied.
async fn caller(snapshot: Snapshot) -> Sidecar {
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let sidecar = Sidecar::start(support::sidecar_config("orders", nowhere))
        .await
        .expect("sidecar");
    sidecar.apply(snapshot).await.expect("applies");
    sidecar
}

/// Sends `n` GETs over `conns` concurrent connections; the statuses, in no order.
async fn fire(
    to: SocketAddr,
    n: usize,
    conns: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> Vec<StatusCode> {
    let client = h1_client();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..conns {
        let share = n / conns + usize::from(w < n % conns);
        let client = client.clone();
        let path = path.to_string();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        set.spawn(async move {
            let mut out = Vec::with_capacity(share);
            for _ in 0..share {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let resp = client.request(get(to, &path, &h)).await.expect("answered");
                out.push(read(resp).await.0);
            }
            out
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r.expect("worker"));
    }
    all
}

fn failures(statuses: &[StatusCode]) -> usize {
    statuses.iter().filter(|s| !s.is_success()).count()
}

/// The value of the sample `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

fn retry(config: Value) -> Value {
    json!({"name": "retry", "builtin": "retry", "config": config})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_splits_95_5_and_a_header_match_sends_testers_to_v2() {
    let v1 = pod("payments", "payments-v1", Behaviour::Paths).await;
    let v2 = pod("payments", "payments-v2", Behaviour::Paths).await;
    let canary = json!({"name": "canary", "builtin": "canary", "config": {
    "host": "payments",
    "http": [
        {"match": [{"headers": {"x-user": {"exact": "tester"}}}],
         "route": [{"destination": {"host": "payments", "subset": "v2"}}]},
        {"route": [
            {"destination": {"host": "payments", "subset": "v1"}, "weight": 95},
            {"destination": {"host": "payments", "subset": "v2"}, "weight": 5}]}
    ]}});
    let orders = caller(snapshot(
        "payments",
        vec![
            endpoint(v1.sidecar.inbound, "v1"),
            endpoint(v2.sidecar.inbound, "v2"),
        ],
        json!([canary]),
    ))
    .await;

    let statuses = fire(orders.outbound, 10_000, 32, "/charge", &[]).await;
    assert_eq!(failures(&statuses), 0);
    let (n1, n2) = (v1.app.seen().len(), v2.app.seen().len());
    assert_eq!(n1 + n2, 10_000);
    // Binomial(10,000, 0.05): mean 500, standard deviation 21.8; 5 sigma either side
    // (a false alarm about once in 1.7 million runs).
    println!("canary: v1 {n1}, v2 {n2} of 10,000");
    assert!((391..=609).contains(&n2), "v2 got {n2} of 10,000");

    let statuses = fire(orders.outbound, 200, 8, "/charge", &[("x-user", "tester")]).await;
    assert_eq!(failures(&statuses), 0);
    assert_eq!(v1.app.seen().len(), n1, "no tester reached v1");
    assert_eq!(v2.app.seen().len(), n2 + 200, "every tester reached v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_a_backend_failing_10_percent_into_about_0_1_percent() {
    let flaky = pod(
        "payments",
        "payments-v1",
        Behaviour::Flaky {
            percent: 10,
            status: 503,
            seed: 0x5eed,
        },
    )
    .await;
    // The budget is off so the arithmetic below is exact; at 10% failures the default budget
    // (20% of requests) would not bind anyway.
    let orders = caller(snapshot(
        "payments",
        vec![endpoint(flaky.sidecar.inbound, "v1")],
        json!([retry(
            json!({"attempts": 2, "perTryTimeout": "2s", "retryOn": "5xx",
                            "budget": false})
        )]),
    ))
    .await;
    let n = 5_000;
    let statuses = fire(orders.outbound, n, 32, "/charge", &[("x-user", "tester")]).await;
    let failed = failures(&statuses);
    let seen = flaky.app.seen();
    let tries = seen.len();
    // A retry is the same request again: every try, the retried ones too, carries the caller's
    // headers and the one request id.
    assert!(
        seen.iter()
            .all(|s| s.headers.get("x-user").is_some_and(|v| v == "tester")
                && s.headers.contains_key("x-request-id")),
        "a try lost the caller's headers"
    );
    let retried_ids = seen
        .iter()
        .filter_map(|s| s.headers.get("x-request-id"))
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(
        retried_ids, n,
        "each call keeps one request id across its tries"
    );
    let backend_503 = flaky.app.failed.load(Ordering::SeqCst);
    println!(
        "retry: {failed} of {n} calls failed ({:.2}%), backend saw {tries} tries, {backend_503} of them 503",
        failed as f64 * 100.0 / n as f64
    );
    // Each call fails only if three independent tries fail: p = 0.1^3, so 5 expected of 5,000
    // (Poisson, sd 2.2); 25 would be 9 sd out. Without retries it would be ~500.
    assert!(failed <= 25, "{failed} of {n} calls failed");
    // Every 503 is retried except a call's third: tries = calls + 503s - failed calls.
    assert_eq!(
        tries,
        n + backend_503 - failed,
        "every retried failure is one more try"
    );
    // Expected tries per call: 1 + 0.1 + 0.01 = 1.11, so 5,550 (sd about 25).
    assert!(
        (5_400..=5_700).contains(&tries),
        "{tries} tries for {n} calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_retried_on_reset_and_a_404_only_when_asked() {
    let resetter = Resetter::start().await;
    let via = |retry_on: &str| {
        snapshot(
            "payments",
            vec![endpoint(resetter.addr, "v1")],
            json!([retry(
                json!({"attempts": 2, "retryOn": retry_on, "budget": false})
            )]),
        )
    };
    let orders = caller(via("reset")).await;
    let statuses = fire(orders.outbound, 1, 1, "/charge", &[]).await;
    assert_eq!(
        statuses[0],
        StatusCode::SERVICE_UNAVAILABLE,
        "a reset before the response head is answered 503, as Envoy does"
    );
    assert_eq!(
        resetter.connections.load(Ordering::SeqCst),
        3,
        "a reset is retried twice on `reset`"
    );

    let orders = caller(via("connect-failure")).await;
    let before = resetter.connections.load(Ordering::SeqCst);
    fire(orders.outbound, 1, 1, "/charge", &[]).await;
    assert_eq!(
        resetter.connections.load(Ordering::SeqCst) - before,
        1,
        "a reset is not a connect failure"
    );

    let app = pod("payments", "payments-v1", Behaviour::Paths).await;
    let with = |retry_on: &str| {
        snapshot(
            "payments",
            vec![endpoint(app.sidecar.inbound, "v1")],
            json!([retry(
                json!({"attempts": 2, "retryOn": retry_on, "budget": false})
            )]),
        )
    };
    let orders = caller(with("5xx,reset,gateway-error")).await;
    let statuses = fire(orders.outbound, 1, 1, "/status/404", &[]).await;
    assert_eq!(statuses, vec![StatusCode::NOT_FOUND]);
    assert_eq!(
        app.app.seen().len(),
        1,
        "a 404 is not retried on 5xx classes"
    );
    let orders = caller(with("5xx,404")).await;
    fire(orders.outbound, 1, 1, "/status/404", &[]).await;
    assert_eq!(app.app.seen().len(), 1 + 3, "asked for: retried twice");
}

/// Calls one at a time (so consecutive errors really are consecutive at the endpoint).
async fn sequential(to: SocketAddr, n: usize) {
    fire(to, n, 1, "/hello", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_only_5xx_is_ejected_returns_and_is_ejected_longer_next_time() {
    let good = pod("payments", "good", Behaviour::Paths).await;
    let bad = pod("payments", "bad", Behaviour::Always(503)).await;
    let outlier = json!({"name": "outlier", "builtin": "outlier", "config": {
        "consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "2s",
        "maxEjectionPercent": 100}});
    let orders = caller(snapshot(
        "payments",
        vec![
            endpoint(good.sidecar.inbound, "v1"),
            endpoint(bad.sidecar.inbound, "v1"),
        ],
        json!([outlier]),
    ))
    .await;
    let bad_seen = || bad.app.seen().len();

    sequential(orders.outbound, 60).await;
    assert_eq!(bad_seen(), 5, "ejected at its fifth error in a row");
    sequential(orders.outbound, 30).await;
    assert_eq!(bad_seen(), 5, "no traffic while ejected");

    // Base ejection time (2 s; roomy, as a loaded machine slows the calls) passed: back in
    // service, and ejected again after five more, now for 2 × base.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    sequential(orders.outbound, 60).await;
    assert_eq!(
        bad_seen(),
        10,
        "back after 2 s, ejected again after five errors"
    );
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    sequential(orders.outbound, 30).await;
    assert_eq!(
        bad_seen(),
        10,
        "the second ejection lasts longer than the first"
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    sequential(orders.outbound, 60).await;
    assert_eq!(bad_seen(), 15, "back after 4 s");
    assert_eq!(good.app.failed.load(Ordering::SeqCst), 0);

    let metrics = support::scrape(&orders).await;
    assert_eq!(
        sample(&metrics, "outlier_ejections_total", &[]),
        Some(3.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_keeps_the_last_endpoints_in_service() {
    let bad1 = pod("payments", "bad1", Behaviour::Always(503)).await;
    let bad2 = pod("payments", "bad2", Behaviour::Always(503)).await;
    let good = pod("payments", "good", Behaviour::Paths).await;
    // 34% of 3 endpoints is 1.02: one ejection at a time.
    let outlier = json!({"name": "outlier", "builtin": "outlier", "config": {
        "consecutive5xxErrors": 5, "baseEjectionTime": "30s", "maxEjectionPercent": 34}});
    let orders = caller(snapshot(
        "payments",
        vec![
            endpoint(bad1.sidecar.inbound, "v1"),
            endpoint(bad2.sidecar.inbound, "v1"),
            endpoint(good.sidecar.inbound, "v1"),
        ],
        json!([outlier]),
    ))
    .await;
    sequential(orders.outbound, 120).await;
    let (a, b) = (bad1.app.seen().len(), bad2.app.seen().len());
    println!(
        "outlier cap: bad1 {a}, bad2 {b}, good {}",
        good.app.seen().len()
    );
    assert_eq!(a.min(b), 5, "the first to fail five times is ejected");
    assert!(
        a.max(b) > 10,
        "the other stays in service past its fifth error: the cap holds ({a}, {b})"
    );
}

/// A service in the middle of a chain: its app calls `next` through its own sidecar.
async fn relay_pod(service: &str, next: &str) -> Pod {
    let via = Arc::new(std::sync::OnceLock::new());
    let p = pod(
        service,
        service,
        Behaviour::Relay {
            via: via.clone(),
            host: next.to_string(),
        },
    )
    .await;
    let _ = via.set(p.sidecar.outbound);
    p
}

/// orders → a → b → c, where c's app answers 503 to everything and every hop allows three
/// tries; returns how many requests c's app received for `calls` calls.
async fn chain_of_three(budget: Value, calls: usize) -> usize {
    let c = pod("c", "c", Behaviour::Always(503)).await;
    let b = relay_pod("b", "c").await;
    let a = relay_pod("a", "b").await;
    let hop = |next: &str, to: SocketAddr| {
        let mut s = snapshot(
            next,
            vec![endpoint(to, "v1")],
            json!([retry(
                json!({"attempts": 2, "retryOn": "5xx", "budget": budget.clone()})
            )]),
        );
        s.version = format!("to-{next}");
        s
    };
    b.sidecar
        .apply(hop("c", c.sidecar.inbound))
        .await
        .expect("b → c");
    a.sidecar
        .apply(hop("b", b.sidecar.inbound))
        .await
        .expect("a → b");
    let orders = caller(hop("a", a.sidecar.inbound)).await;
    let client = h1_client();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let client = client.clone();
        let to = orders.outbound;
        set.spawn(async move {
            let req = Request::builder()
                .uri(format!("http://{to}/pay"))
                .header("host", "a")
                .body(full(""))
                .expect("request");
            read(client.request(req).await.expect("answered")).await.0
        });
    }
    while let Some(status) = set.join_next().await {
        assert!(status.expect("call").is_server_error());
    }
    c.app.seen().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_budget_stops_retries_multiplying_down_a_chain_of_services() {
    let calls = 20;
    let unbudgeted = chain_of_three(json!(false), calls).await;
    println!(
        "retry storm without a budget: {unbudgeted} requests reached the dead backend for {calls} calls"
    );
    assert_eq!(
        unbudgeted,
        calls * 27,
        "three tries at each of three hops: 27×"
    );

    let calls = 100;
    let budget = json!({"retryRatio": 0.2, "minRetriesPerSecond": 1, "ttl": "10s"});
    let budgeted = chain_of_three(budget, calls).await;
    // Each hop grants at most (floor: 1/s × 10 s) + 20% of the requests it saw:
    // f(x) = 1.2x + 10, so f(f(f(100))) = 209.2.
    let bound = (0..3).fold(calls as f64, |x, _| 1.2 * x + 10.0);
    println!(
        "with a 20% budget: {budgeted} requests reached the dead backend for {calls} calls \
         ({:.2}× vs 27×; bound {bound:.0})",
        budgeted as f64 / calls as f64
    );
    assert!(budgeted as f64 <= bound, "{budgeted} > {bound}");
    assert!(
        budgeted >= calls,
        "every call reaches the backend at least once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_shows_on_metrics_with_istio_labels_and_counts() {
    let app = pod("payments", "payments-v1", Behaviour::Paths).await;
    let chain = json!([
        {"name": "canary", "builtin": "canary", "config": {"host": "payments",
            "route": [{"destination": {"host": "payments", "subset": "v1"}}]}},
        retry(json!({"attempts": 1, "retryOn": "5xx", "budget": false})),
        {"name": "telemetry", "builtin": "telemetry"},
    ]);
    let orders = caller(snapshot(
        "payments",
        vec![endpoint(app.sidecar.inbound, "v1")],
        chain,
    ))
    .await;
    fire(orders.outbound, 20, 4, "/hello", &[]).await;
    fire(orders.outbound, 3, 1, "/status/404", &[]).await;
    fire(orders.outbound, 2, 1, "/status/503", &[]).await;
    // on-done runs as the response body ends; give the last one a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = support::scrape(&orders).await;
    let route = [
        ("source_workload", "orders"),
        ("destination_service", "payments.default.svc.cluster.local"),
        ("destination_version", "v1"),
        ("request_protocol", "http"),
        ("reporter", "source"),
    ];
    let with = |code: &'static str, flags: &'static str| {
        let mut l = route.to_vec();
        l.push(("response_code", code));
        l.push(("response_flags", flags));
        l
    };
    assert_eq!(
        sample(&m, "istio_requests_total", &with("200", "-")),
        Some(20.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "istio_requests_total", &with("404", "-")),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, "istio_requests_total", &with("503", "URX")),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &m,
            "istio_request_duration_milliseconds_count",
            &with("200", "-")
        ),
        Some(20.0)
    );
    assert_eq!(
        sample(&m, "istio_response_bytes_sum", &with("200", "-")),
        Some(20.0 * "hello from payments-v1".len() as f64)
    );
    assert_eq!(
        sample(&m, "request_retries_total", &route[..3]),
        Some(2.0),
        "two 503 calls, one retry each:\n{}",
        m.lines()
            .filter(|l| l.contains("retr"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn fault(config: Value) -> Value {
    json!({"name": "fault", "builtin": "fault", "config": config})
}

/// One GET through `to`, timed from before it is sent to the end of its body.
async fn timed_call(to: SocketAddr) -> (StatusCode, String, Duration) {
    let started = std::time::Instant::now();
    let resp = h1_client()
        .request(get(to, "/hello", &[]))
        .await
        .expect("answered");
    let (status, _, body) = read(resp).await;
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_aborts_delays_and_times_out_end_to_end() {
    let app = pod("payments", "payments-v1", Behaviour::Paths).await;
    let via = |faults: Value| {
        snapshot(
            "payments",
            vec![endpoint(app.sidecar.inbound, "v1")],
            json!([fault(faults)]),
        )
    };

    // Abort every call with 418: answered by the caller's sidecar, never reaching the app.
    let orders = caller(via(
        json!({"abort": {"httpStatus": 418, "percentage": {"value": 100.0}}}),
    ))
    .await;
    let statuses = fire(orders.outbound, 50, 4, "/hello", &[]).await;
    assert!(statuses.iter().all(|s| s.as_u16() == 418), "{statuses:?}");
    let (status, body, _) = timed_call(orders.outbound).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (418, "fault filter abort")
    );
    assert!(app.app.seen().is_empty(), "an aborted call reaches no app");

    // Delay every call by 300 ms: it is held, then goes through.
    let orders = caller(via(
        json!({"delay": {"fixedDelay": "300ms", "percentage": {"value": 100}}}),
    ))
    .await;
    let (status, body, took) = timed_call(orders.outbound).await;
    println!("fault: a call delayed 300 ms took {took:?}");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(app.app.seen().len(), 1);

    // Delayed and aborted: held for the delay first, then answered, as Envoy does.
    let orders = caller(via(json!({
        "delay": {"fixedDelay": "200ms", "percentage": {"value": 100}},
        "abort": {"httpStatus": 503, "percentage": {"value": 100}}
    })))
    .await;
    let (status, _, took) = timed_call(orders.outbound).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(took >= Duration::from_millis(200), "took {took:?}");
    assert_eq!(app.app.seen().len(), 1, "still only the delayed call");

    // A 2 s delay under the service's 500 ms timeout: the caller gets the timeout's 504 (UT)
    // at 500 ms, not the call after 2 s.
    let mut timed_out = serde_json::to_value(snapshot(
        "payments",
        vec![endpoint(app.sidecar.inbound, "v1")],
        json!([
            fault(json!({"delay": {"fixedDelay": "2s", "percentage": {"value": 100}}})),
            {"name": "telemetry", "builtin": "telemetry"},
        ]),
    ))
    .expect("snapshot as JSON");
    timed_out["services"]["payments"]["timeout"] = json!("500ms");
    let orders = caller(serde_json::from_value(timed_out).expect("snapshot")).await;
    let (status, body, took) = timed_call(orders.outbound).await;
    println!("fault: a 2 s delay under a 500 ms timeout answered {status} after {took:?}");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("upstream request timeout"), "{body}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1_500),
        "took {took:?}"
    );
    assert_eq!(app.app.seen().len(), 1, "a timed-out delay calls no app");
    let m = support::scrape(&orders).await;
    assert_eq!(
        sample(
            &m,
            "istio_requests_total",
            &[("response_code", "504"), ("response_flags", "UT")]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_scoped_to_a_route_acts_only_on_the_calls_the_canary_sends_down_it() {
    let v1 = pod("payments", "payments-v1", Behaviour::Paths).await;
    let v2 = pod("payments", "payments-v2", Behaviour::Paths).await;
    let canary = json!({"name": "canary", "builtin": "canary", "config": {
    "host": "payments",
    "http": [
        {"name": "testers",
         "match": [{"headers": {"x-user": {"exact": "tester"}}}],
         "route": [{"destination": {"host": "payments", "subset": "v2"}}]},
        {"name": "default",
         "route": [{"destination": {"host": "payments", "subset": "v1"}}]}
    ]}});
    // Stamps `x-chaos-tag` on the request and `x-chaos-status` on the response — for testers.
    let stamp = json!({"name": "stamp", "file": weft_artifacts::CHAOS_PATH,
                       "config": {"tag": "tester-only"}, "routes": ["testers"]});
    let orders = caller(snapshot(
        "payments",
        vec![
            endpoint(v1.sidecar.inbound, "v1"),
            endpoint(v2.sidecar.inbound, "v2"),
        ],
        json!([canary, stamp]),
    ))
    .await;

    let statuses = fire(orders.outbound, 100, 4, "/hello", &[("x-user", "tester")]).await;
    assert_eq!(failures(&statuses), 0);
    let statuses = fire(orders.outbound, 100, 4, "/hello", &[]).await;
    assert_eq!(failures(&statuses), 0);
    let (testers, others) = (v2.app.seen(), v1.app.seen());
    assert_eq!((testers.len(), others.len()), (100, 100));
    let tag = |s: &support::Seen| s.headers.get("x-chaos-tag").cloned();
    assert!(
        testers
            .iter()
            .all(|s| tag(s).is_some_and(|t| t == "tester-only")),
        "every tester call was stamped"
    );
    assert!(others.iter().all(|s| tag(s).is_none()), "no other call was");

    // The route reaches on-response too.
    let response_stamp = |headers: &[(&str, &str)]| {
        let req = get(orders.outbound, "/hello", headers);
        async move {
            let resp = h1_client().request(req).await.expect("answered");
            let (status, headers, _) = read(resp).await;
            assert_eq!(status, StatusCode::OK);
            headers.get("x-chaos-status").cloned()
        }
    };
    assert!(
        response_stamp(&[("x-user", "tester")])
            .await
            .is_some_and(|v| v == "200")
    );
    assert_eq!(response_stamp(&[]).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_answer_goes_back_through_the_plugins_that_saw_the_request() {
    let app = pod("payments", "payments-v1", Behaviour::Paths).await;
    let abort = fault(json!({"abort": {"httpStatus": 418, "percentage": {"value": 100}}}));
    let counting = retry(json!({"attempts": 1, "attemptCountHeader": "x-attempts"}));
    let with = |plugins: Value| {
        snapshot(
            "payments",
            vec![endpoint(app.sidecar.inbound, "v1")],
            plugins,
        )
    };

    // retry before the fault: it saw the request, so its on-response stamps the 418 (no
    // upstream attempt was made).
    let orders = caller(with(json!([counting, abort]))).await;
    let resp = h1_client()
        .request(get(orders.outbound, "/hello", &[]))
        .await
        .expect("answered");
    let (status, headers, body) = read(resp).await;
    assert_eq!(status.as_u16(), 418);
    assert_eq!(body, "fault filter abort", "the body is the answer's");
    assert_eq!(
        headers.get("x-attempts").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );

    // retry after the fault never saw the request: its on-response does not run.
    let orders = caller(with(json!([abort, counting]))).await;
    let resp = h1_client()
        .request(get(orders.outbound, "/hello", &[]))
        .await
        .expect("answered");
    let (status, headers, _) = read(resp).await;
    assert_eq!(status.as_u16(), 418);
    assert!(headers.get("x-attempts").is_none(), "{headers:?}");
    assert!(app.app.seen().is_empty());
}
