//! Cost of plugin hook calls through the real runtime: each hook with a realistic request
//! (10 headers), a four-plugin chain (canary, retry, outlier, telemetry) per request, and
//! cold start from bytes to first call with an empty and a warm compile cache.

#![allow(missing_docs)]

mod common;

use common::request;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use prometheus::Registry;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use weft::plugin::*;

const CANARY: &str = r#"{"host":"payments","route":[{"destination":{"host":"payments","subset":"v1"},"weight":95},
                                   {"destination":{"host":"payments","subset":"v2"},"weight":5}]}"#;
const RETRY: &str = r#"{"attempts":3,"perTryTimeout":"2s","retryOn":"5xx,reset"}"#;
const OUTLIER: &str = r#"{"consecutive5xxErrors":5,"baseEjectionTime":"30s"}"#;

fn runtime() -> PluginRuntime {
    PluginRuntime::new(
        RuntimeConfig::default(),
        &Registry::new(),
        Arc::new(NoEndpoints),
    )
    .expect("runtime")
}

fn plugin(rt: &PluginRuntime, name: &str, bytes: &[u8], config: &str) -> Arc<Plugin> {
    rt.plugin(Artifact::Bytes(bytes), None, PluginSpec::new(name, config))
        .expect("plugin")
}

fn attempt(outcome: Outcome) -> Attempt {
    Attempt {
        call_id: 1,
        number: 1,
        endpoint: 7,
        outcome,
        elapsed_us: 900,
        remaining_ms: 5_000,
        replayable: true,
        grpc_status: None,
    }
}

fn summary(rt: &PluginRuntime) -> CallSummary {
    CallSummary {
        call_id: 1,
        status: 200,
        attempts: 1,
        duration_us: 1_200,
        request_bytes: 187,
        response_bytes: 512,
        endpoint: 7,
        service: rt.intern("payments"),
        subset: rt.intern("v1"),
        source: rt.intern("spiffe://weft.local/ns/default/sa/orders"),
        destination_identity: rt.intern("spiffe://weft.local/ns/default/sa/payments"),
        source_workload: rt.intern("name=orders;namespace=default;app=orders;version=v1"),
        destination_workload: rt.intern("name=payments;namespace=default;app=payments;version=v1"),
        protocol: Protocol::Http1,
        response_flags: ResponseFlags::empty(),
        grpc_status: None,
    }
}

fn hooks(c: &mut Criterion) {
    let rt = runtime();
    let two_headers = std::fs::read(weft_artifacts::TWO_HEADERS_PATH).expect("built");
    let chaos = std::fs::read(weft_artifacts::CHAOS_PATH).expect("built");
    let reader = Chain::new(vec![plugin(&rt, "two-headers", &two_headers, "{}")]);
    let canary = Chain::new(vec![plugin(&rt, "canary", weft_artifacts::CANARY, CANARY)]);
    let retry = Chain::new(vec![plugin(&rt, "retry", weft_artifacts::RETRY, RETRY)]);
    let outlier = Chain::new(vec![plugin(
        &rt,
        "outlier",
        weft_artifacts::OUTLIER,
        OUTLIER,
    )]);
    let telemetry = Chain::new(vec![plugin(
        &rt,
        "telemetry",
        weft_artifacts::TELEMETRY,
        "{}",
    )]);
    let editor = Chain::new(vec![plugin(&rt, "chaos", &chaos, "{}")]);

    let mut g = c.benchmark_group("hook");
    let mut head = request();
    g.bench_function("on-request/read-2-of-10-headers", |b| {
        b.iter(|| black_box(reader.on_request(1, &mut head)))
    });
    g.bench_function("on-request/canary-pick", |b| {
        b.iter(|| black_box(canary.on_request(1, &mut head)))
    });
    g.bench_function("on-request/retry-per-try-timeout", |b| {
        b.iter(|| black_box(retry.on_request(1, &mut head)))
    });
    let ok = attempt(Outcome::Response(200));
    g.bench_function("on-attempt-end/retry-scalar", |b| {
        b.iter(|| black_box(retry.on_attempt_end(black_box(&ok), RouteId::NONE)))
    });
    g.bench_function("on-attempt-end/outlier-with-state", |b| {
        b.iter(|| black_box(outlier.on_attempt_end(black_box(&ok), RouteId::NONE)))
    });
    let mut resp = ResponseHead::default();
    g.bench_function("on-response/set-header", |b| {
        b.iter(|| black_box(editor.on_response(1, &mut resp, RouteId::NONE)))
    });
    let done = summary(&rt);
    g.bench_function("on-done/telemetry", |b| {
        b.iter(|| black_box(telemetry.on_done(black_box(&done), RouteId::NONE)))
    });
    g.finish();
}

fn chain(c: &mut Criterion) {
    let rt = runtime();
    let chain = Chain::new(vec![
        plugin(&rt, "canary", weft_artifacts::CANARY, CANARY),
        plugin(&rt, "retry", weft_artifacts::RETRY, RETRY),
        plugin(&rt, "outlier", weft_artifacts::OUTLIER, OUTLIER),
        plugin(&rt, "telemetry", weft_artifacts::TELEMETRY, "{}"),
    ]);
    // The floor of the chain: plugins that do nothing, making the same hook calls as the four
    // above (on-request twice, on-attempt-end twice, on-done once).
    let noop = std::fs::read(weft_artifacts::NOOP_PATH).expect("built");
    let noop_chain = Chain::new(vec![
        plugin(&rt, "a", &noop, r#"{"hooks":["on-request"]}"#),
        plugin(
            &rt,
            "b",
            &noop,
            r#"{"hooks":["on-request","on-attempt-end"]}"#,
        ),
        plugin(&rt, "c", &noop, r#"{"hooks":["on-attempt-end"]}"#),
        plugin(&rt, "d", &noop, r#"{"hooks":["on-done"]}"#),
    ]);
    let empty = Chain::empty();
    let mut head = request();
    let ok = attempt(Outcome::Response(200));
    let done = summary(&rt);
    let mut g = c.benchmark_group("chain");
    // One request's worth of hooks: on-request, one attempt, on-done.
    g.bench_function("4-plugins/per-request", |b| {
        b.iter(|| {
            black_box(chain.on_request(1, &mut head));
            black_box(chain.on_attempt_end(&ok, head.route));
            black_box(chain.on_done(&done, head.route));
        })
    });
    g.bench_function("4-noop-plugins/per-request", |b| {
        b.iter(|| {
            black_box(noop_chain.on_request(1, &mut head));
            black_box(noop_chain.on_attempt_end(&ok, head.route));
            black_box(noop_chain.on_done(&done, head.route));
        })
    });
    g.bench_function("empty/per-request", |b| {
        b.iter(|| {
            black_box(empty.on_request(1, &mut head));
            black_box(empty.on_attempt_end(&ok, head.route));
            black_box(empty.on_done(&done, head.route));
        })
    });
    g.finish();
}

fn cold_start(c: &mut Criterion) {
    let bytes = weft_artifacts::RETRY;
    let mut g = c.benchmark_group("cold-start");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let cached = |dir: &std::path::Path| {
        let config = RuntimeConfig {
            cache_dir: Some(dir.to_path_buf()),
            ..RuntimeConfig::default()
        };
        PluginRuntime::new(config, &Registry::new(), Arc::new(NoEndpoints)).expect("runtime")
    };
    let first_call = |rt: &PluginRuntime| {
        let p = rt
            .plugin(
                Artifact::Bytes(bytes),
                None,
                PluginSpec::new("retry", RETRY),
            )
            .expect("plugin");
        black_box(
            Chain::new(vec![p]).on_attempt_end(&attempt(Outcome::Response(503)), RouteId::NONE),
        );
    };
    // A fresh runtime per iteration (made outside the timing): nothing in memory, nothing on disk.
    let empty_dir = tempfile::tempdir().expect("tempdir");
    g.bench_function("bytes-to-first-call/empty-cache", |b| {
        b.iter_batched(
            || {
                for entry in std::fs::read_dir(empty_dir.path()).expect("dir").flatten() {
                    let _ = std::fs::remove_file(entry.path());
                }
                cached(empty_dir.path())
            },
            |rt| first_call(&rt),
            BatchSize::PerIteration,
        )
    });
    // Warm: a restarted proxy — a fresh runtime whose disk cache holds the compiled code.
    let warm_dir = tempfile::tempdir().expect("tempdir");
    cached(warm_dir.path())
        .load("retry", Artifact::Bytes(bytes), None)
        .expect("fills the cache");
    g.bench_function("bytes-to-first-call/warm-disk-cache", |b| {
        b.iter_batched(
            || cached(warm_dir.path()),
            |rt| first_call(&rt),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, hooks, chain, cold_start);
criterion_main!(benches);
