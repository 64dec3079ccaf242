//! A WasmPlugin's own sandbox bounds (`weft.io/plugin-*` annotations), end to end: the control
//! plane carries them in the snapshot (shown at `/config`), the sidecar runs that plugin under
//! them in place of its defaults; and, in the runtime, a plugin's instance bound makes a call
//! that finds every instance busy fail with cause `instances`. The sidecar imports the code the
//! control plane compiled for its engine when the component was pushed, compiling nothing.

mod support;

use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use support::mesh::{NO_APP, TestMesh, converged, text, weft};
use support::{App, full, h1_client, metric_sum, read};

/// A call to payments through `out` asking the chaos plugin to misbehave as `mode`.
async fn chaos_call(out: std::net::SocketAddr, mode: &str) -> StatusCode {
    let req = http::Request::builder()
        .uri(format!("http://{out}/charge"))
        .header("host", "payments")
        .header("x-chaos", mode)
        .body(full(""))
        .expect("request");
    read(h1_client().request(req).await.expect("call")).await.0
}

fn gate(digest: &str, annotations: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: gate
  annotations: {annotations}
spec:
  url: {digest}
  targetRefs: [{{ kind: Service, group: \"\", name: payments }}]
  pluginConfig: {{ tag: gate }}
  failStrategy: FAIL_CLOSE
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_own_deadline_and_memory_cap_replace_the_sidecars_defaults() {
    let m = TestMesh::start();
    let app = App::start("payments").await;
    let _payments = m.pod("payments", &[], app.addr).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    let out = weft(
        m.cp,
        &m.data,
        &["plugin", "push", weft_artifacts::CHAOS_PATH],
    );
    assert!(out.status.success(), "{}", text(&out));
    let chaos = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let via = orders.addr("outbound");
    let admin = orders.addr("admin");
    let failures = |cause: &'static str| {
        [
            "plugin=\"gate\"",
            "hook=\"on-request\"",
            match cause {
                "deadline" => "cause=\"deadline\"",
                _ => "cause=\"memory\"",
            },
        ]
    };

    // The sidecar's defaults (a 1 s deadline in these tests' bootstrap, 16 MiB): 5 ms of work
    // is fine, growing by 24 MiB is not.
    m.apply("gate.yaml", &gate(&chaos, "{}")).await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;
    assert_eq!(chaos_call(via, "spin-5").await, StatusCode::OK);
    assert_eq!(
        chaos_call(via, "grow-24").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        metric_sum(admin, "weft_plugin_failures_total", &failures("memory")).await,
        1.0
    );
    // The sidecar compiled nothing: the control plane compiled the component once, when it
    // was pushed, for the same engine, and sent that code.
    let (_, _, scraped) = read(
        h1_client()
            .request(support::get(admin, "/metrics", &[]))
            .await
            .expect("scrape"),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&scraped)
            .lines()
            .any(|l| l == "weft_plugin_compiled_code_imported_total{tier=\"optimized\"} 1"),
        "{}",
        String::from_utf8_lossy(&scraped)
    );

    // Its own memory cap, 64 MiB: the 24 MiB growth passes.
    m.apply(
        "gate.yaml",
        &gate(&chaos, "{ weft.io/plugin-memory: 64Mi }"),
    )
    .await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;
    assert_eq!(chaos_call(via, "grow-24").await, StatusCode::OK);
    // And its own deadline, 1 ms: the 5 ms of work fail. (Applied apart: a 1 ms deadline is
    // one epoch tick, which any call may straddle, so it bounds only the work that is meant to
    // fail here.)
    m.apply(
        "gate.yaml",
        &gate(
            &chaos,
            "{ weft.io/plugin-deadline: 1ms, weft.io/plugin-memory: 64Mi }",
        ),
    )
    .await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;
    assert_eq!(
        chaos_call(via, "spin-5").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        metric_sum(admin, "weft_plugin_failures_total", &failures("deadline")).await,
        1.0
    );
    assert_eq!(
        metric_sum(admin, "weft_plugin_failures_total", &failures("memory")).await,
        1.0,
        "no new memory failure"
    );
    // The bounds in force are in the sidecar's `/config`.
    let (_, _, config) = read(
        h1_client()
            .request(support::get(admin, "/config", &[]))
            .await
            .expect("config"),
    )
    .await;
    let config: serde_json::Value = serde_json::from_slice(&config).expect("json");
    let plugins = config["services"]["payments"]["plugins"]
        .as_array()
        .expect("plugins");
    let placed = plugins
        .iter()
        .find(|p| p["name"] == "gate")
        .expect("gate in the chain");
    assert_eq!(
        placed["limits"],
        serde_json::json!({ "deadlineMs": 1, "memoryBytes": 64 << 20 })
    );

    // A bound out of range is refused at apply, naming the annotation.
    let bad = support::mesh::write(
        m.dir.path(),
        "bad.yaml",
        &gate(&chaos, "{ weft.io/plugin-deadline: 1h }"),
    );
    let out = weft(
        m.cp,
        &m.data,
        &["apply", "-f", bad.to_str().expect("utf-8")],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("metadata.annotations.weft.io/plugin-deadline: 3600000 is outside"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_call_that_finds_every_instance_busy_fails_with_cause_instances() {
    use weft::plugin::*;
    let registry = prometheus::Registry::new();
    let runtime = PluginRuntime::new(RuntimeConfig::default(), &registry, Arc::new(NoEndpoints))
        .expect("runtime");
    let compiled = runtime
        .load(
            "chaos",
            Artifact::File(std::path::Path::new(weft_artifacts::CHAOS_PATH)),
            None,
        )
        .expect("chaos compiles");
    let mut spec = PluginSpec::new("one", r#"{"tag": "t"}"#);
    spec.limits.deadline = Duration::from_secs(2);
    spec.limits.instances = 1;
    let plugin = runtime.prepare(&compiled, spec).expect("prepares");
    let chain = Arc::new(Chain::new(vec![plugin]));
    // One call holds the only instance for 300 ms; a second one meanwhile finds none free.
    let busy = {
        let chain = chain.clone();
        std::thread::spawn(move || {
            let mut head = RequestHead::default();
            head.headers
                .insert("x-chaos", http::HeaderValue::from_static("spin-300"));
            chain.on_request(1, &mut head)
        })
    };
    let busy_failures = || {
        let scraped = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        scraped
            .lines()
            .filter(|l| {
                l.starts_with("weft_plugin_failures_total{")
                    && l.contains("cause=\"instances\"")
                    && l.contains("plugin=\"one\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while busy_failures() == 0.0 {
        let mut head = RequestHead::default();
        let _ = chain.on_request(2, &mut head);
        assert!(std::time::Instant::now() < deadline, "never busy");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = busy.join().expect("the busy call ends");
    // Free again, the instance serves the next call.
    let before = busy_failures();
    let mut head = RequestHead::default();
    let _ = chain.on_request(3, &mut head);
    assert_eq!(busy_failures(), before);
}
