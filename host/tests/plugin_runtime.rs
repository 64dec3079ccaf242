//! The plugin runtime against real components built from source: behaviour, the sandbox's
//! deadline and memory cap, isolation of traps and panics, refusal of bad artifacts, and a
//! chain swap under a stream of calls.

use http::{HeaderValue, Method, StatusCode};
use prometheus::Registry;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use weft::plugin::*;

struct Fixture {
    runtime: PluginRuntime,
    registry: Registry,
    chaos: Compiled,
}

// One runtime and one compile per test binary: compiling is the slow part.
static FIX: LazyLock<Fixture> = LazyLock::new(fixture);

// The route-scoping tests run several chaos plugins through on-done: the first plugin name to
// define chaos's metric owns it, so they get a runtime (and registry) of their own rather than
// take it from the tests that read it.
static ROUTED: LazyLock<Fixture> = LazyLock::new(fixture);

fn fixture() -> Fixture {
    let registry = Registry::new();
    let runtime = PluginRuntime::new(RuntimeConfig::default(), &registry, Arc::new(NoEndpoints))
        .expect("runtime");
    let chaos = runtime
        .load(
            "chaos",
            Artifact::File(Path::new(weft_artifacts::CHAOS_PATH)),
            None,
        )
        .expect("chaos compiles");
    Fixture {
        runtime,
        registry,
        chaos,
    }
}

fn chaos(name: &str, config: &str, fail: FailStrategy) -> Arc<Plugin> {
    let mut spec = PluginSpec::new(name, config);
    spec.fail_strategy = fail;
    // Deadlines are wall-clock: on a loaded 2-core machine a preempted call can pass 10 ms.
    // Tests that are not about the deadline must not meet it.
    spec.limits.deadline = Duration::from_secs(1);
    FIX.runtime
        .prepare(&FIX.chaos, spec)
        .expect("chaos prepares")
}

fn request(path: &str) -> RequestHead {
    RequestHead {
        method: Method::GET,
        path: path.into(),
        authority: "payments".into(),
        destination: Destination {
            service: "payments".into(),
            subset: Some("v1".into()),
        },
        ..RequestHead::default()
    }
}

fn misbehaving(mode: &str) -> RequestHead {
    let mut r = request("/charge");
    r.headers
        .insert("x-chaos", HeaderValue::from_str(mode).expect("ascii"));
    r
}

fn counter(name: &str, labels: &[(&str, &str)]) -> f64 {
    counter_in(&FIX.registry, name, labels)
}

fn counter_in(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// A normal call: the chain must still work exactly as configured.
fn assert_serves(chain: &Chain, tag: &str) {
    let mut head = request("/charge");
    let verdict = chain.on_request(1, &mut head);
    assert!(matches!(verdict.action, RequestVerdict::Continue));
    assert!(
        !verdict.plugin_failed,
        "a healthy call must not be marked failed"
    );
    assert_eq!(
        head.headers.get("x-chaos-tag").map(|v| v.as_bytes()),
        Some(tag.as_bytes())
    );
}

#[test]
fn a_well_behaved_plugin_changes_the_request_as_it_says() {
    let chain = Chain::new(vec![chaos(
        "good",
        r#"{"tag":"hello"}"#,
        FailStrategy::FailOpen,
    )]);
    let mut head = request("/charge");
    head.headers
        .insert("x-canary", HeaderValue::from_static("1"));
    head.headers
        .insert("x-remove-me", HeaderValue::from_static("bye"));
    // A value that is not UTF-8 must reach the plugin and come back untouched.
    head.headers.insert(
        "x-binary",
        HeaderValue::from_bytes(&[0xff, 0xfe, b'a']).expect("opaque"),
    );

    let verdict = chain.on_request(7, &mut head);
    assert!(matches!(verdict.action, RequestVerdict::Continue));
    assert_eq!(
        head.headers.get("x-chaos-tag").map(|v| v.as_bytes()),
        Some(&b"hello"[..])
    );
    assert!(head.headers.get("x-remove-me").is_none());
    assert_eq!(
        head.headers.get("x-binary").map(|v| v.as_bytes()),
        Some(&[0xff, 0xfe, b'a'][..])
    );
    assert_eq!(
        head.destination.subset.as_deref(),
        Some("v2"),
        "tagged calls go to the canary"
    );

    let attempt = Attempt {
        call_id: 7,
        number: 1,
        endpoint: 3,
        outcome: Outcome::Response(503),
        elapsed_us: 1_000,
        remaining_ms: 5_000,
        replayable: true,
        grpc_status: None,
    };
    assert_eq!(
        chain.on_attempt_end(&attempt, RouteId::NONE).action,
        AttemptVerdict::Retry(Duration::from_millis(10))
    );
    let ok = Attempt {
        outcome: Outcome::Response(200),
        ..attempt
    };
    assert_eq!(
        chain.on_attempt_end(&ok, RouteId::NONE).action,
        AttemptVerdict::Done
    );

    let mut resp = ResponseHead {
        status: StatusCode::OK,
        ..ResponseHead::default()
    };
    assert!(matches!(
        chain.on_response(7, &mut resp, RouteId::NONE).action,
        ResponseVerdict::Continue
    ));
    assert_eq!(
        resp.headers.get("x-chaos-status").map(|v| v.as_bytes()),
        Some(&b"200"[..])
    );

    let before = counter("chaos_calls_total", &[("code", "201")]);
    let summary = CallSummary {
        call_id: 7,
        status: 201,
        attempts: 1,
        duration_us: 1,
        request_bytes: 0,
        response_bytes: 0,
        endpoint: 3,
        service: FIX.runtime.intern("payments"),
        subset: FIX.runtime.intern("v2"),
        source: 0,
        destination_identity: 0,
        source_workload: 0,
        destination_workload: 0,
        protocol: Protocol::Http1,
        response_flags: ResponseFlags::empty(),
        grpc_status: None,
    };
    assert!(!chain.on_done(&summary, RouteId::NONE));
    assert_eq!(
        counter("chaos_calls_total", &[("code", "201")]),
        before + 1.0
    );
}

#[test]
fn a_plugin_can_answer_locally() {
    let chain = Chain::new(vec![chaos("teapot", "{}", FailStrategy::FailOpen)]);
    let mut head = request("/teapot");
    match chain.on_request(1, &mut head).action {
        RequestVerdict::Respond(reply) => {
            assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
            assert_eq!(&reply.body[..], b"short and stout");
        }
        other => panic!("expected a local reply, got {other:?}"),
    }
}

fn assert_isolated(mode: &str, cause: &str) {
    let name = format!("isolated-{mode}");
    let mut spec = PluginSpec::new(name.as_str(), r#"{"tag":"ok"}"#);
    // Only the loop should meet the deadline, even on a loaded machine.
    spec.limits.deadline = if mode == "loop" {
        Duration::from_millis(10)
    } else {
        Duration::from_secs(2)
    };
    let chain = Chain::new(vec![
        FIX.runtime.prepare(&FIX.chaos, spec).expect("prepares"),
    ]);
    let before = counter(
        "weft_plugin_failures_total",
        &[("plugin", &name), ("cause", cause)],
    );
    for _ in 0..2 {
        let mut head = misbehaving(mode);
        let verdict = chain.on_request(1, &mut head);
        assert!(
            matches!(verdict.action, RequestVerdict::Continue),
            "fail-open skips the plugin"
        );
        assert!(verdict.plugin_failed);
        assert!(
            head.headers.get("x-chaos").is_some(),
            "the request head survives the trap"
        );
        assert_serves(&chain, "ok");
    }
    let after = counter(
        "weft_plugin_failures_total",
        &[("plugin", &name), ("cause", cause)],
    );
    assert_eq!(after - before, 2.0, "each {mode} counted as {cause}");
}

#[test]
fn a_plugin_that_loops_forever_is_stopped_at_its_deadline() {
    assert_isolated("loop", "deadline");
}

#[test]
fn a_plugin_that_allocates_without_end_is_stopped_at_its_cap() {
    assert_isolated("alloc", "memory");
}

#[test]
fn a_plugin_that_floods_the_request_with_headers_fails_at_the_host_bound() {
    assert_isolated("headers", "limit");
}

#[test]
fn a_plugin_that_replies_with_a_flood_of_headers_fails_at_the_host_bound() {
    assert_isolated("reply-headers", "limit");
    // Failing closed, the caller gets the host's 503, never the flood.
    let chain = Chain::new(vec![chaos(
        "reply-flood-closed",
        r#"{"tag":"ok"}"#,
        FailStrategy::FailClosed,
    )]);
    let mut head = misbehaving("reply-headers");
    match chain.on_request(1, &mut head).action {
        RequestVerdict::Respond(reply) => {
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(reply.headers.get("x-flood").is_none());
        }
        other => panic!("expected the fail-closed answer, got {other:?}"),
    }
}

#[test]
fn a_plugin_that_traps_is_isolated() {
    assert_isolated("trap", "trap");
}

#[test]
fn a_plugin_that_panics_is_isolated() {
    assert_isolated("panic", "trap");
}

#[test]
fn a_panicking_plugin_on_a_tokio_worker_does_not_take_the_worker_down() {
    // A panic prints to stderr through WASI; wasmtime-wasi's own blocking stdio would call
    // `block_on` on the worker and panic the host. Weft's must not.
    let chain = Arc::new(Chain::new(vec![chaos(
        "tokio-panic",
        r#"{"tag":"ok"}"#,
        FailStrategy::FailOpen,
    )]));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let served = rt.block_on(async move {
        tokio::spawn(async move {
            let mut head = misbehaving("panic");
            let failed = chain.on_request(1, &mut head).plugin_failed;
            let mut head = request("/");
            chain.on_request(2, &mut head);
            failed && head.headers.contains_key("x-chaos-tag")
        })
        .await
    });
    assert!(
        matches!(served, Ok(true)),
        "worker survived and served: {served:?}"
    );
}

#[test]
fn a_fail_closed_plugin_fails_the_call_with_503() {
    let chain = Chain::new(vec![chaos("closed", "{}", FailStrategy::FailClosed)]);
    let mut head = misbehaving("trap");
    let verdict = chain.on_request(1, &mut head);
    match verdict.action {
        RequestVerdict::Respond(reply) => {
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                String::from_utf8_lossy(&reply.body).contains("\"closed\""),
                "names the plugin"
            );
        }
        other => panic!("expected 503, got {other:?}"),
    }
    assert!(verdict.plugin_failed);
}

#[test]
fn a_plugin_that_keeps_crashing_is_reinstantiated_with_backoff() {
    let name = "crash-loop";
    let chain = Chain::new(vec![chaos(name, "{}", FailStrategy::FailOpen)]);
    let created = || counter("weft_plugin_instances_created_total", &[("plugin", name)]);
    let before = created();
    for _ in 0..200 {
        let mut head = misbehaving("trap");
        assert!(chain.on_request(1, &mut head).plugin_failed);
    }
    let made = created() - before;
    assert!(
        made < 20.0,
        "200 crashing calls made {made} instances; back-off must hold them off"
    );
    assert!(
        counter(
            "weft_plugin_failures_total",
            &[("plugin", name), ("cause", "backing_off")]
        ) > 0.0
    );
}

#[test]
fn a_rejected_configuration_names_the_plugin_and_the_reason() {
    let err = FIX
        .runtime
        .prepare(&FIX.chaos, PluginSpec::new("picky", r#"{"reject":true}"#))
        .err()
        .expect("rejected");
    let text = err.to_string();
    assert!(matches!(err, PluginError::ConfigRejected { .. }), "{text}");
    assert!(
        text.contains("\"picky\"") && text.contains("rejected on purpose"),
        "{text}"
    );

    let err = FIX
        .runtime
        .prepare(&FIX.chaos, PluginSpec::new("typo", r#"{"tagg":"x"}"#))
        .err()
        .expect("unknown field rejected");
    assert!(err.to_string().contains("unknown field `tagg`"), "{err}");
}

#[test]
fn a_plugin_that_traps_in_configure_is_refused() {
    let err = FIX
        .runtime
        .prepare(
            &FIX.chaos,
            PluginSpec::new("bad-start", r#"{"configure":"trap"}"#),
        )
        .err()
        .expect("refused");
    assert!(matches!(err, PluginError::Start { .. }), "{err}");
    assert!(err.to_string().contains("\"bad-start\""), "{err}");
    let err = FIX
        .runtime
        .prepare(
            &FIX.chaos,
            PluginSpec::new("slow-start", r#"{"configure":"loop"}"#),
        )
        .err()
        .expect("refused");
    assert!(err.to_string().contains("deadline"), "{err}");
}

#[test]
fn a_component_of_another_world_is_refused() {
    let err = FIX
        .runtime
        .plugin(
            Artifact::File(Path::new(weft_artifacts::NOT_A_FILTER_PATH)),
            None,
            PluginSpec::new("greeter", "{}"),
        )
        .err()
        .expect("refused");
    assert!(matches!(err, PluginError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("weft:filter@0.1.0"), "{err}");
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    // A core module that is not a proxy-wasm filter either.
    let core_module = b"\0asm\x01\0\0\0";
    let err = FIX
        .runtime
        .plugin(
            Artifact::Bytes(core_module),
            None,
            PluginSpec::new("core", "{}"),
        )
        .err()
        .expect("refused");
    assert!(err.to_string().contains("core Wasm module"), "{err}");
    assert!(err.to_string().contains("proxy_abi_version_0_2_1"), "{err}");
    let err = FIX
        .runtime
        .load("junk", Artifact::Bytes(b"hello"), None)
        .err()
        .expect("refused");
    assert!(matches!(err, PluginError::NotAComponent { .. }), "{err}");
    let err = FIX
        .runtime
        .load(
            "missing",
            Artifact::File(Path::new("/nonexistent/plugin.wasm")),
            None,
        )
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("/nonexistent/plugin.wasm"),
        "{err}"
    );
}

#[test]
fn the_sha256_is_verified() {
    let bytes = std::fs::read(weft_artifacts::CHAOS_PATH).expect("built");
    let digest = sha256_hex(&bytes);
    let wrong = "0".repeat(64);
    let err = FIX
        .runtime
        .load("chaos", Artifact::Bytes(&bytes), Some(&wrong))
        .err()
        .expect("mismatch");
    let text = err.to_string();
    assert!(matches!(err, PluginError::DigestMismatch { .. }), "{text}");
    assert!(
        text.contains(&wrong) && text.contains(&digest),
        "names both digests: {text}"
    );
    let ok = FIX
        .runtime
        .load(
            "chaos",
            Artifact::Bytes(&bytes),
            Some(&format!("sha256:{}", digest.to_uppercase())),
        )
        .expect("matching digest");
    assert_eq!(ok.digest, digest);
}

#[test]
fn the_compile_cache_survives_a_restart_and_shrugs_off_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = |registry: &Registry| {
        let config = RuntimeConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            ..RuntimeConfig::default()
        };
        PluginRuntime::new(config, registry, Arc::new(NoEndpoints)).expect("runtime")
    };
    let path = Path::new(weft_artifacts::CHAOS_PATH);
    let first = runtime(&Registry::new())
        .load("c", Artifact::File(path), None)
        .expect("compiles");
    assert!(!first.from_cache);
    // A new runtime (a restarted proxy) finds the compiled code.
    let restarted = runtime(&Registry::new());
    let second = restarted
        .load("c", Artifact::File(path), None)
        .expect("loads");
    assert!(second.from_cache);
    let plugin = restarted
        .prepare(&second, PluginSpec::new("cached", r#"{"tag":"c"}"#))
        .expect("runs");
    assert_serves(&Chain::new(vec![plugin]), "c");
    // A corrupted entry is detected and recompiled, never run.
    for entry in std::fs::read_dir(dir.path()).expect("cache dir") {
        let p = entry.expect("entry").path();
        if p.file_name() == Some(std::ffi::OsStr::new("key")) {
            continue;
        }
        let mut data = std::fs::read(&p).expect("read");
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&p, data).expect("write");
    }
    let third = runtime(&Registry::new())
        .load("c", Artifact::File(path), None)
        .expect("recompiles");
    assert!(!third.from_cache);
    // Entries not authenticated by this host's key (here: written under an older key) are
    // compiled afresh rather than trusted, however well-formed they are.
    assert!(
        runtime(&Registry::new())
            .load("c", Artifact::File(path), None)
            .expect("loads")
            .from_cache
    );
    std::fs::remove_file(dir.path().join("key")).expect("drop key");
    let fourth = runtime(&Registry::new())
        .load("c", Artifact::File(path), None)
        .expect("recompiles");
    assert!(!fourth.from_cache);
}

#[test]
fn a_cache_directory_others_can_write_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let err = PluginRuntime::new(config, &Registry::new(), Arc::new(NoEndpoints))
        .err()
        .expect("a world-writable cache directory is refused");
    let text = err.to_string();
    assert!(
        text.contains(&dir.path().display().to_string()) && text.contains("writable"),
        "{text}"
    );
}

#[test]
fn a_chain_swap_during_a_stream_of_calls_loses_none() {
    let slot = Arc::new(ChainSlot::new(Chain::new(vec![chaos(
        "swap",
        r#"{"tag":"old"}"#,
        FailStrategy::FailOpen,
    )])));
    let swapped = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (slot, swapped, served) = (slot.clone(), swapped.clone(), served.clone());
            std::thread::spawn(move || {
                let mut new_after_swap = 0;
                for i in 0..3_000u64 {
                    let saw_swap = swapped.load(Ordering::SeqCst);
                    let chain = slot.current();
                    let mut head = request("/charge");
                    let verdict = chain.on_request(i, &mut head);
                    assert!(
                        matches!(verdict.action, RequestVerdict::Continue)
                            && !verdict.plugin_failed
                    );
                    let tag = head
                        .headers
                        .get("x-chaos-tag")
                        .map(|v| v.as_bytes().to_vec());
                    match tag.as_deref() {
                        Some(b"old") => {
                            assert!(!saw_swap, "a call started after the swap ran the old chain")
                        }
                        Some(b"new") => new_after_swap += 1,
                        other => panic!("call {i} lost: tag {other:?}"),
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                }
                new_after_swap
            })
        })
        .collect();
    while served.load(Ordering::SeqCst) < 3_000 {
        std::thread::yield_now();
    }
    let new_chain = Chain::new(vec![chaos(
        "swap",
        r#"{"tag":"new"}"#,
        FailStrategy::FailOpen,
    )]);
    slot.replace(new_chain);
    swapped.store(true, Ordering::SeqCst);
    let new_calls: usize = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    assert_eq!(served.load(Ordering::SeqCst), 9_000, "every call served");
    assert!(new_calls > 0, "calls after the swap ran the new chain");
}

#[test]
fn the_built_in_policies_run_the_seed_scenario() {
    let load = |name: &str, bytes: &[u8], config: &str| {
        FIX.runtime
            .plugin(Artifact::Bytes(bytes), None, PluginSpec::new(name, config))
            .expect(name)
    };
    let chain = Chain::new(vec![
        load(
            "seed-canary",
            weft_artifacts::CANARY,
            r#"{"host":"payments","route":[{"destination":{"host":"payments","subset":"v1"},"weight":95},
                         {"destination":{"host":"payments","subset":"v2"},"weight":5}]}"#,
        ),
        load(
            "seed-retry",
            weft_artifacts::RETRY,
            r#"{"attempts":3,"perTryTimeout":"2s","retryOn":"5xx,reset"}"#,
        ),
        load(
            "seed-outlier",
            weft_artifacts::OUTLIER,
            r#"{"consecutive5xxErrors":5,"baseEjectionTime":"30s"}"#,
        ),
        load("seed-telemetry", weft_artifacts::TELEMETRY, "{}"),
    ]);
    let mut v2 = 0;
    for i in 0..2_000 {
        let mut head = request("/charge");
        head.destination.subset = None;
        chain.on_request(i, &mut head);
        assert_eq!(head.per_try_timeout, Some(Duration::from_secs(2)));
        if head.destination.subset.as_deref() == Some("v2") {
            v2 += 1;
        }
    }
    // 5% of 2,000 = 100, sd ~9.7: 5 sigma either side.
    assert!((51..=149).contains(&v2), "v2 got {v2} of 2000");
    let failed = Attempt {
        call_id: 1,
        number: 1,
        endpoint: 9,
        outcome: Outcome::Response(503),
        elapsed_us: 10,
        remaining_ms: 5_000,
        replayable: true,
        grpc_status: None,
    };
    assert!(
        matches!(chain.on_attempt_end(&failed, RouteId::NONE).action, AttemptVerdict::Retry(d) if d <= Duration::from_millis(250))
    );
    assert_eq!(
        chain
            .on_attempt_end(
                &Attempt {
                    number: 4,
                    ..failed
                },
                RouteId::NONE
            )
            .action,
        AttemptVerdict::Done
    );
    let summary = CallSummary {
        call_id: 1,
        status: 200,
        attempts: 1,
        duration_us: 2_500,
        request_bytes: 10,
        response_bytes: 20,
        endpoint: 9,
        service: FIX.runtime.intern("payments"),
        subset: FIX.runtime.intern("v2"),
        source: FIX
            .runtime
            .intern("spiffe://weft.local/ns/default/sa/orders"),
        destination_identity: 0,
        source_workload: FIX
            .runtime
            .intern("name=orders;namespace=default;app=orders;version=v1"),
        destination_workload: FIX
            .runtime
            .intern("name=payments;namespace=default;app=payments;version=v2"),
        protocol: Protocol::Http1,
        response_flags: ResponseFlags::empty(),
        grpc_status: None,
    };
    chain.on_done(&summary, RouteId::NONE);
    let labels = [
        ("reporter", "source"),
        ("source_workload", "orders"),
        ("source_version", "v1"),
        ("destination_service", "payments.default.svc.cluster.local"),
        ("destination_version", "v2"),
        ("response_code", "200"),
    ];
    assert_eq!(counter("istio_requests_total", &labels), 1.0);
}

#[test]
fn the_sdk_readme_example_runs_in_the_real_runtime() {
    let gate = FIX
        .runtime
        .plugin(
            Artifact::File(Path::new(weft_artifacts::TENANT_GATE_PATH)),
            None,
            PluginSpec::new("tenant-gate", r#"{"allow":["acme"]}"#),
        )
        .expect("loads");
    let chain = Chain::new(vec![gate]);
    let mut allowed = request("/");
    allowed
        .headers
        .insert("x-tenant", HeaderValue::from_static("acme"));
    assert!(matches!(
        chain.on_request(1, &mut allowed).action,
        RequestVerdict::Continue
    ));
    let mut denied = request("/");
    denied
        .headers
        .insert("x-tenant", HeaderValue::from_static("evil"));
    match chain.on_request(2, &mut denied).action {
        RequestVerdict::Respond(reply) => assert_eq!(reply.status, StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {other:?}"),
    }
}

#[test]
fn the_outlier_plugin_ejects_through_the_hosts_endpoint_table() {
    use std::collections::BTreeMap;
    use weft::endpoints::EndpointTable;
    let table = Arc::new(EndpointTable::new());
    let labels = BTreeMap::from([("version".to_string(), "v1".to_string())]);
    let bad = table.upsert("payments", "10.0.0.9:80", labels.clone()).id;
    table.upsert("payments", "10.0.0.8:80", labels);
    let runtime = PluginRuntime::new(RuntimeConfig::default(), &Registry::new(), table.clone())
        .expect("runtime");
    let outlier = runtime
        .plugin(
            Artifact::Bytes(weft_artifacts::OUTLIER),
            None,
            PluginSpec::new(
                "outlier",
                r#"{"consecutive5xxErrors":5,"baseEjectionTime":"30s"}"#,
            ),
        )
        .expect("loads");
    let chain = Chain::new(vec![outlier]);
    let attempt = |outcome| Attempt {
        call_id: 1,
        number: 1,
        endpoint: bad,
        outcome,
        elapsed_us: 10,
        remaining_ms: 1_000,
        replayable: true,
        grpc_status: None,
    };
    let ejected = || {
        table
            .get(bad)
            .is_some_and(|e| e.is_ejected(std::time::Instant::now()))
    };
    for _ in 0..4 {
        chain.on_attempt_end(&attempt(Outcome::Response(503)), RouteId::NONE);
    }
    chain.on_attempt_end(&attempt(Outcome::Response(200)), RouteId::NONE);
    for _ in 0..4 {
        chain.on_attempt_end(&attempt(Outcome::ConnectFailure), RouteId::NONE);
    }
    assert!(!ejected(), "a success in between ends the run");
    chain.on_attempt_end(&attempt(Outcome::Timeout), RouteId::NONE);
    assert!(ejected(), "the fifth error in a row ejects");
}

#[test]
fn a_runtime_without_an_instance_pool_runs_plugins_the_same() {
    // instances: 0 allocates on demand, as the engine also does when the pool's address-space
    // reservation is refused.
    let config = RuntimeConfig {
        pool: PoolSizes {
            instances: 0,
            ..PoolSizes::default()
        },
        ..RuntimeConfig::default()
    };
    let runtime =
        PluginRuntime::new(config, &Registry::new(), Arc::new(NoEndpoints)).expect("runtime");
    let mut spec = PluginSpec::new("on-demand", r#"{"tag":"od"}"#);
    spec.limits.deadline = Duration::from_secs(1);
    let plugin = runtime
        .plugin(
            Artifact::File(Path::new(weft_artifacts::CHAOS_PATH)),
            None,
            spec,
        )
        .expect("loads");
    let chain = Chain::new(vec![plugin]);
    assert_serves(&chain, "od");
    let mut head = misbehaving("alloc");
    assert!(
        chain.on_request(1, &mut head).plugin_failed,
        "the memory cap still holds"
    );
    assert_serves(&chain, "od");
}

fn runtime_compiling_with(exe: &Path) -> PluginRuntime {
    let config = RuntimeConfig {
        compiler: Compiler::Subprocess(exe.to_path_buf()),
        ..RuntimeConfig::default()
    };
    PluginRuntime::new(config, &Registry::new(), Arc::new(NoEndpoints)).expect("runtime")
}

fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\ncat > /dev/null\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn a_component_compiled_by_the_weft_child_process_runs_in_the_parent() {
    let runtime = runtime_compiling_with(Path::new(env!("CARGO_BIN_EXE_weft")));
    let compiled = runtime
        .load(
            "child",
            Artifact::File(Path::new(weft_artifacts::CHAOS_PATH)),
            None,
        )
        .expect("compiled by the child");
    assert!(!compiled.from_cache);
    let mut spec = PluginSpec::new("child", r#"{"tag":"from-child"}"#);
    spec.limits.deadline = Duration::from_secs(1);
    let plugin = runtime.prepare(&compiled, spec).expect("prepares");
    let chain = Chain::new(vec![plugin]);
    assert_serves(&chain, "from-child");
    let mut head = misbehaving("loop");
    assert!(
        chain.on_request(1, &mut head).plugin_failed,
        "the deadline holds in code compiled elsewhere"
    );
    assert_serves(&chain, "from-child");
}

#[test]
fn the_child_compilers_refusal_names_the_plugin_and_its_words() {
    let dir = tempfile::tempdir().expect("dir");
    let refuses = script(
        dir.path(),
        "refuses",
        &format!("echo 'section 9 is malformed' >&2; exit {PRECOMPILE_REFUSED}"),
    );
    let err = runtime_compiling_with(&refuses)
        .load(
            "picky",
            Artifact::File(Path::new(weft_artifacts::CHAOS_PATH)),
            None,
        )
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("picky") && err.contains("section 9 is malformed"),
        "{err}"
    );

    // A compiler that dies is a refusal too: never retried inside the proxy.
    let dies = script(dir.path(), "dies", "kill -9 $$");
    let err = runtime_compiling_with(&dies)
        .load(
            "victim",
            Artifact::File(Path::new(weft_artifacts::CHAOS_PATH)),
            None,
        )
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("the compiler process failed"), "{err}");
}

#[test]
fn unusable_child_output_or_a_missing_compiler_falls_back_to_compiling_in_process() {
    let dir = tempfile::tempdir().expect("dir");
    let junk = script(dir.path(), "junk", "echo 'not compiled code'");
    let missing = dir.path().join("no-such-compiler");
    for exe in [junk, missing] {
        let runtime = runtime_compiling_with(&exe);
        let mut spec = PluginSpec::new("fallback", r#"{"tag":"fb"}"#);
        spec.limits.deadline = Duration::from_secs(1);
        let plugin = runtime
            .plugin(
                Artifact::File(Path::new(weft_artifacts::CHAOS_PATH)),
                None,
                spec,
            )
            .unwrap_or_else(|e| panic!("{} -> {e}", exe.display()));
        assert_serves(&Chain::new(vec![plugin]), "fb");
    }
}

// === route-scoped plugins ===

/// The built-in canary with two named `http` entries: `testers` (`x-user: tester`) → v2, and
/// `default` → v1. It names the route each call takes.
const NAMED_ROUTES: &str = r#"{"host":"payments","http":[
    {"name":"testers","match":[{"headers":{"x-user":{"exact":"tester"}}}],
     "route":[{"destination":{"host":"payments","subset":"v2"}}]},
    {"name":"default","route":[{"destination":{"host":"payments","subset":"v1"}}]}]}"#;

fn canary(name: &str, config: &str) -> Arc<Plugin> {
    let mut spec = PluginSpec::new(name, config);
    spec.limits.deadline = Duration::from_secs(1);
    ROUTED
        .runtime
        .plugin(Artifact::Bytes(weft_artifacts::CANARY), None, spec)
        .expect("canary prepares")
}

/// A chaos plugin that stamps its own name as `x-chaos-tag`, scoped to `routes` (none: every
/// call).
fn scoped(name: &str, routes: &[&str]) -> Arc<Plugin> {
    let mut spec = PluginSpec::new(name, format!(r#"{{"tag":"{name}"}}"#));
    spec.limits.deadline = Duration::from_secs(1);
    spec.routes = routes.iter().map(|r| r.to_string()).collect();
    ROUTED
        .runtime
        .prepare(&ROUTED.chaos, spec)
        .expect("prepares")
}

/// How many times each hook of `plugin` ran, in call order (on-request … on-done).
fn hook_calls(plugin: &str) -> [f64; 4] {
    ["on-request", "on-attempt-end", "on-response", "on-done"].map(|hook| {
        counter_in(
            &ROUTED.registry,
            "weft_plugin_calls_total",
            &[("plugin", plugin), ("hook", hook)],
        )
    })
}

/// What one call through every hook gave: the request head after on-request, the verdict on a
/// failed (503) first attempt, and the response head after on-response.
struct Through {
    head: RequestHead,
    attempt: AttemptVerdict,
    response: ResponseHead,
}

/// One call through every hook as the proxy makes it: the route named in on-request travels
/// to the other hooks.
fn through(chain: &Chain, mut head: RequestHead) -> Through {
    assert!(matches!(
        chain.on_request(1, &mut head).action,
        RequestVerdict::Continue
    ));
    let route = head.route;
    let failed = Attempt {
        call_id: 1,
        number: 1,
        endpoint: 3,
        outcome: Outcome::Response(503),
        elapsed_us: 1_000,
        remaining_ms: 5_000,
        replayable: true,
        grpc_status: None,
    };
    let attempt = chain.on_attempt_end(&failed, route).action;
    let mut response = ResponseHead {
        status: StatusCode::OK,
        ..ResponseHead::default()
    };
    assert!(matches!(
        chain.on_response(1, &mut response, route).action,
        ResponseVerdict::Continue
    ));
    let summary = CallSummary {
        call_id: 1,
        status: 200,
        attempts: 1,
        duration_us: 1,
        request_bytes: 0,
        response_bytes: 0,
        endpoint: 3,
        service: ROUTED.runtime.intern("payments"),
        subset: 0,
        source: 0,
        destination_identity: 0,
        source_workload: 0,
        destination_workload: 0,
        protocol: Protocol::Http1,
        response_flags: ResponseFlags::empty(),
        grpc_status: None,
    };
    assert!(!chain.on_done(&summary, route));
    Through {
        head,
        attempt,
        response,
    }
}

fn tester() -> RequestHead {
    let mut head = request("/charge");
    head.headers
        .insert("x-user", HeaderValue::from_static("tester"));
    head
}

fn tag(head: &RequestHead) -> Option<&str> {
    head.headers
        .get("x-chaos-tag")
        .and_then(|v| v.to_str().ok())
}

#[test]
fn a_route_scoped_plugin_runs_in_every_hook_of_its_routes_calls_only() {
    let chain = Chain::new(vec![
        canary("namer", NAMED_ROUTES),
        scoped("scoped-testers", &["testers"]),
        scoped("scoped-both", &["default", "testers"]),
    ]);

    let (only, both) = (hook_calls("scoped-testers"), hook_calls("scoped-both"));
    let call = through(&chain, tester());
    assert_ne!(call.head.route, RouteId::NONE, "the canary named the route");
    assert_eq!(call.head.destination.subset.as_deref(), Some("v2"));
    assert_eq!(tag(&call.head), Some("scoped-both"), "both ran, in order");
    assert_eq!(
        call.attempt,
        AttemptVerdict::Retry(Duration::from_millis(10))
    );
    assert!(call.response.headers.contains_key("x-chaos-status"));
    assert_eq!(hook_calls("scoped-testers"), only.map(|n| n + 1.0));
    assert_eq!(hook_calls("scoped-both"), both.map(|n| n + 1.0));

    // The default route: only the plugin scoped to it too, in every hook.
    let (only, both) = (hook_calls("scoped-testers"), hook_calls("scoped-both"));
    let call = through(&chain, request("/charge"));
    assert_eq!(call.head.destination.subset.as_deref(), Some("v1"));
    assert_eq!(tag(&call.head), Some("scoped-both"));
    assert_eq!(hook_calls("scoped-testers"), only, "skipped in every hook");
    assert_eq!(hook_calls("scoped-both"), both.map(|n| n + 1.0));

    // With the plugin scoped to both gone, nothing touches a default call.
    let chain = Chain::new(vec![
        canary("namer-alone", NAMED_ROUTES),
        scoped("scoped-testers-alone", &["testers"]),
    ]);
    let before = hook_calls("scoped-testers-alone");
    let call = through(&chain, request("/charge"));
    assert_eq!(tag(&call.head), None);
    assert_eq!(call.attempt, AttemptVerdict::Done, "no retry asked");
    assert!(!call.response.headers.contains_key("x-chaos-status"));
    assert_eq!(hook_calls("scoped-testers-alone"), before);
    let call = through(&chain, tester());
    assert_eq!(tag(&call.head), Some("scoped-testers-alone"));
    assert_eq!(hook_calls("scoped-testers-alone"), before.map(|n| n + 1.0));
}

#[test]
fn a_call_that_names_no_route_runs_only_unscoped_plugins() {
    // Nothing names a route: the scoped plugin never runs, the unscoped one always does.
    let chain = Chain::new(vec![
        scoped("unscoped-plain", &[]),
        scoped("scoped-unnamed", &["testers"]),
    ]);
    let (plain, never) = (hook_calls("unscoped-plain"), hook_calls("scoped-unnamed"));
    let call = through(&chain, tester());
    assert_eq!(call.head.route, RouteId::NONE);
    assert_eq!(tag(&call.head), Some("unscoped-plain"));
    assert_eq!(hook_calls("unscoped-plain"), plain.map(|n| n + 1.0));
    assert_eq!(hook_calls("scoped-unnamed"), never);

    // A canary whose entries have no names names no route either.
    let unnamed = NAMED_ROUTES
        .replace(r#""name":"testers","#, "")
        .replace(r#""name":"default","#, "");
    let chain = Chain::new(vec![
        canary("namer-of-nothing", &unnamed),
        scoped("scoped-unnamed-2", &["testers"]),
    ]);
    let before = hook_calls("scoped-unnamed-2");
    let call = through(&chain, tester());
    assert_eq!(call.head.destination.subset.as_deref(), Some("v2"));
    assert_eq!(call.head.route, RouteId::NONE);
    assert_eq!(tag(&call.head), None);
    assert_eq!(hook_calls("scoped-unnamed-2"), before);
}

#[test]
fn a_scoped_plugin_before_the_one_naming_the_route_misses_only_its_on_request() {
    // Checked at its turn: the route is not named yet when it comes first. The control plane
    // places scoped plugins right after the canary for this reason.
    let chain = Chain::new(vec![
        scoped("scoped-early", &["testers"]),
        canary("namer-late", NAMED_ROUTES),
    ]);
    let before = hook_calls("scoped-early");
    let call = through(&chain, tester());
    assert_ne!(call.head.route, RouteId::NONE);
    assert_eq!(tag(&call.head), None, "skipped in on-request");
    assert_eq!(
        call.attempt,
        AttemptVerdict::Retry(Duration::from_millis(10)),
        "the later hooks see the route"
    );
    let after = hook_calls("scoped-early");
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2],
            after[3] - before[3]
        ],
        [0.0, 1.0, 1.0, 1.0]
    );
}

#[test]
fn an_empty_route_name_is_refused() {
    let mut spec = PluginSpec::new("scoped-empty", "{}");
    spec.routes = vec!["testers".into(), String::new()];
    let err = FIX
        .runtime
        .prepare(&ROUTED.chaos, spec)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("route names must not be empty"), "{err}");
}

#[test]
fn baseline_code_runs_sandboxed_until_optimized_code_replaces_it() {
    // The control plane's side: a quick baseline compile, kept on disk to be served.
    let dir = tempfile::tempdir().expect("tempdir");
    let control = PluginRuntime::new(
        RuntimeConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            pool: PoolSizes {
                instances: 0,
                ..PoolSizes::default()
            },
            ..RuntimeConfig::default()
        },
        &Registry::new(),
        Arc::new(NoEndpoints),
    )
    .expect("runtime");
    let bytes = std::fs::read(weft_artifacts::CHAOS_PATH).expect("chaos");
    let digest = control.check_baseline("chaos", &bytes).expect("checks");
    let baseline_fp = control
        .baseline_fingerprint()
        .expect("winch here")
        .to_string();
    assert_ne!(baseline_fp, control.fingerprint(), "two code formats");
    let baseline = control
        .compiled_code_for(&digest, &baseline_fp)
        .expect("baseline code kept");
    assert!(
        control.compiled_code(&digest).is_none(),
        "no optimized code compiled yet"
    );

    // A sidecar runs it: same behaviour, same sandbox.
    let registry = Registry::new();
    let sidecar = PluginRuntime::new(RuntimeConfig::default(), &registry, Arc::new(NoEndpoints))
        .expect("runtime");
    let tier = sidecar
        .import_compiled(&digest, &baseline_fp, &baseline)
        .expect("imports");
    assert_eq!(tier, Tier::Baseline);
    assert!(sidecar.runs_baseline(&digest) && !sidecar.has_compiled(&digest));
    let run = |tag: &str| {
        let mut spec = PluginSpec::new("tiered", format!(r#"{{"tag":"{tag}"}}"#));
        spec.limits.deadline = Duration::from_millis(200);
        let plugin = sidecar
            .plugin(Artifact::Bytes(&bytes), Some(&digest), spec)
            .expect("prepares");
        Chain::new(vec![plugin])
    };
    let chain = run("base");
    assert_serves(&chain, "base");
    for (mode, cause) in [("loop", "deadline"), ("alloc", "memory"), ("trap", "trap")] {
        let verdict = chain.on_request(1, &mut misbehaving(mode));
        assert!(verdict.plugin_failed, "{mode} contained");
        assert!(
            counter_in(
                &registry,
                "weft_plugin_failures_total",
                &[("plugin", "tiered"), ("cause", cause)]
            ) >= 1.0,
            "{mode} counted as {cause}"
        );
        assert_serves(&chain, "base");
    }

    // The optimized compile lands; the sidecar takes it and loads it from then on.
    control.check("chaos", &bytes).expect("compiles optimized");
    let optimized = control.compiled_code(&digest).expect("optimized code kept");
    assert_eq!(
        sidecar
            .import_compiled(&digest, control.fingerprint(), &optimized)
            .expect("imports"),
        Tier::Optimized
    );
    assert!(sidecar.has_compiled(&digest) && !sidecar.runs_baseline(&digest));
    assert_serves(&run("opt"), "opt");
    for tier in ["baseline", "optimized"] {
        assert_eq!(
            counter_in(
                &registry,
                "weft_plugin_compiled_code_imported_total",
                &[("tier", tier)]
            ),
            1.0
        );
    }
    // Code for an engine the sidecar does not have is refused, not guessed at.
    assert!(
        sidecar
            .import_compiled(&digest, "0123", &optimized)
            .is_err()
    );
}
