//! proxy-wasm filters, built from source with the proxy-wasm Rust SDK from crates.io, run
//! unchanged by the plugin runtime: their callbacks, host calls and configuration, their
//! sandbox, and a chain mixing them with `weft:filter` components.

use http::{HeaderValue, Method, StatusCode};
use prometheus::Registry;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use weft::plugin::*;

struct Fixture {
    runtime: PluginRuntime,
    registry: Registry,
}

static FIX: LazyLock<Fixture> = LazyLock::new(|| {
    let registry = Registry::new();
    let config = RuntimeConfig {
        node: NodeInfo {
            id: "sidecar~shop~orders".into(),
            name: "orders".into(),
            namespace: "shop".into(),
            identity: "spiffe://weft.local/ns/shop/sa/orders".into(),
        },
        ..RuntimeConfig::default()
    };
    let runtime = PluginRuntime::new(config, &registry, Arc::new(NoEndpoints)).expect("runtime");
    Fixture { runtime, registry }
});

fn spec(name: &str, config: &str, fail: FailStrategy) -> PluginSpec {
    let mut spec = PluginSpec::new(name, config);
    spec.fail_strategy = fail;
    // Deadlines are wall-clock: on a loaded 2-core machine a preempted call can pass 10 ms.
    // Tests that are not about the deadline must not meet it.
    spec.limits.deadline = Duration::from_secs(1);
    spec
}

fn filter(path: &str, name: &str, config: &str) -> Arc<Plugin> {
    FIX.runtime
        .plugin(
            Artifact::File(Path::new(path)),
            None,
            spec(name, config, FailStrategy::FailOpen),
        )
        .expect("the filter loads")
}

fn request(path: &str) -> RequestHead {
    RequestHead {
        method: Method::GET,
        path: path.into(),
        authority: "payments".into(),
        source: Arc::from("spiffe://weft.local/ns/shop/sa/orders"),
        destination: Destination {
            service: "payments".into(),
            subset: None,
        },
        ..RequestHead::default()
    }
}

fn response(status: u16) -> ResponseHead {
    ResponseHead {
        status: StatusCode::from_u16(status).expect("status"),
        attempts: 1,
        ..ResponseHead::default()
    }
}

fn summary(call_id: u64, status: u16) -> CallSummary {
    CallSummary {
        call_id,
        status,
        attempts: 1,
        duration_us: 1_000,
        request_bytes: 0,
        response_bytes: 5,
        endpoint: 0,
        service: 0,
        subset: 0,
        source: 0,
        destination_identity: 0,
        source_workload: 0,
        destination_workload: 0,
        protocol: Protocol::Http1,
        response_flags: ResponseFlags::empty(),
        grpc_status: None,
    }
}

fn header(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get(name).map(|v| v.to_str().expect("ascii").to_string())
}

fn value_of(name: &str) -> f64 {
    FIX.registry
        .gather()
        .into_iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().to_vec())
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

fn failures(plugin: &str, cause: &str) -> f64 {
    FIX.registry
        .gather()
        .into_iter()
        .filter(|f| f.name() == "weft_plugin_failures_total")
        .flat_map(|f| f.get_metric().to_vec())
        .filter(|m| {
            let has = |k: &str, v: &str| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == k && l.value() == v)
            };
            has("plugin", plugin) && has("cause", cause)
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

#[test]
fn a_header_filter_edits_both_heads_with_its_configuration_and_reads_properties() {
    let plugin = filter(
        weft_artifacts::PW_HEADERS_PATH,
        "pw-headers",
        r#"{"request":"from-config","response":"on-the-way-back"}"#,
    );
    assert!(plugin.is_proxy_wasm());
    let hooks = plugin.hooks();
    assert!(hooks.on_request && hooks.on_response && hooks.on_done && !hooks.on_attempt_end);
    let chain = Chain::new(vec![plugin]);

    let mut head = request("/charge?amount=5");
    head.headers
        .insert("x-strip-me", HeaderValue::from_static("secret"));
    head.headers
        .insert("x-echo", HeaderValue::from_static("ping"));
    let decided = chain.on_request(11, &mut head);
    assert!(matches!(decided.action, RequestVerdict::Continue));
    assert!(!decided.plugin_failed);
    assert_eq!(
        header(&head.headers, "x-pw-request").as_deref(),
        Some("from-config")
    );
    assert_eq!(
        header(&head.headers, "x-pw-saw-path").as_deref(),
        Some("/charge?amount=5")
    );
    assert!(head.headers.get("x-strip-me").is_none(), "removed");

    let mut resp = response(201);
    let decided = chain.on_response(11, &mut resp, RouteId::NONE);
    assert!(matches!(decided.action, ResponseVerdict::Continue));
    assert_eq!(
        header(&resp.headers, "x-pw-response").as_deref(),
        Some("on-the-way-back")
    );
    // The request's headers, kept for the response's callback.
    assert_eq!(header(&resp.headers, "x-pw-echo").as_deref(), Some("ping"));
    // The source is this workload's own identity: a call it makes, not over mTLS from a peer.
    assert_eq!(
        header(&resp.headers, "x-pw-properties").as_deref(),
        Some(
            "plugin=pw-headers;root=;ns=shop;code=201;mtls=false;source=spiffe://weft.local/ns/shop/sa/orders"
        )
    );
    assert!(!chain.on_done(&summary(11, 201), RouteId::NONE));

    // The server side: the caller is a peer, so the connection is mutual TLS.
    let mut head = request("/x");
    head.source = Arc::from("spiffe://weft.local/ns/shop/sa/frontend");
    chain.on_request(12, &mut head);
    let mut resp = response(200);
    chain.on_response(12, &mut resp, RouteId::NONE);
    let seen = header(&resp.headers, "x-pw-properties").expect("set");
    assert!(
        seen.contains("mtls=true;source=spiffe://weft.local/ns/shop/sa/frontend"),
        "{seen}"
    );
    chain.on_done(&summary(12, 200), RouteId::NONE);
}

#[test]
fn an_authorization_filter_refuses_locally_and_its_configuration_is_checked() {
    let plugin = filter(
        weft_artifacts::PW_AUTH_PATH,
        "pw-auth",
        r#"{"token":"s3cret"}"#,
    );
    let chain = Chain::new(vec![plugin]);

    let mut head = request("/charge");
    let decided = chain.on_request(21, &mut head);
    let RequestVerdict::Respond(reply) = decided.action else {
        panic!("a request without the token must be answered locally");
    };
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        header(&reply.headers, "x-denied-by").as_deref(),
        Some("pw-auth")
    );
    assert_eq!(&reply.body[..], b"Access forbidden.\n");
    assert_eq!(decided.answered_at, Some(0));
    chain.on_done(&summary(21, 403), RouteId::NONE);

    let mut head = request("/charge");
    head.headers
        .insert("authorization", HeaderValue::from_static("Bearer s3cret"));
    let decided = chain.on_request(22, &mut head);
    assert!(matches!(decided.action, RequestVerdict::Continue));
    chain.on_done(&summary(22, 200), RouteId::NONE);

    // proxy_on_configure returning false refuses the plugin, with what the filter logged.
    let err = FIX
        .runtime
        .plugin(
            Artifact::File(Path::new(weft_artifacts::PW_AUTH_PATH)),
            None,
            spec("pw-auth-bad", "{}", FailStrategy::FailClosed),
        )
        .err()
        .expect("refused");
    assert!(matches!(err, PluginError::ConfigRejected { .. }), "{err}");
    let said = err.to_string();
    assert!(said.contains("proxy_on_configure returned false"), "{said}");
    assert!(said.contains("pluginConfig.token is required"), "{said}");
}

#[test]
fn counts_in_shared_data_span_vms_and_threads_and_metrics_and_ticks_reach_the_host() {
    let plugin = filter(weft_artifacts::PW_COUNTER_PATH, "pw-counter", "{}");
    let chain = Arc::new(Chain::new(vec![plugin]));
    let before = value_of("pw_requests_total");
    const CALLS: u64 = 200;
    let vms = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let counts = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (chain, vms, counts) = (&chain, &vms, &counts);
            s.spawn(move || {
                for i in 0..CALLS / 2 {
                    let id = 1_000 + t * CALLS + i;
                    let mut head = request("/");
                    assert!(matches!(
                        chain.on_request(id, &mut head).action,
                        RequestVerdict::Continue
                    ));
                    let n: u64 = header(&head.headers, "x-pw-count")
                        .expect("counted")
                        .parse()
                        .expect("a number");
                    counts.lock().expect("lock").push(n);
                    let mut resp = response(200);
                    chain.on_response(id, &mut resp, RouteId::NONE);
                    vms.lock()
                        .expect("lock")
                        .insert(header(&resp.headers, "x-pw-vm").expect("named"));
                    chain.on_done(&summary(id, 200), RouteId::NONE);
                }
            });
        }
    });
    // Every increment landed exactly once (compare-and-swap across VMs and threads).
    let mut counts = counts.into_inner().expect("lock");
    counts.sort_unstable();
    assert_eq!(counts, (1..=CALLS).collect::<Vec<_>>());
    let vms = vms.into_inner().expect("lock");
    assert!(vms.len() >= 2, "calls spread over the VMs: {vms:?}");
    assert_eq!(value_of("pw_requests_total") - before, CALLS as f64);

    // The root contexts' 50 ms tick fires: its shared count and its gauge (`pw.ticks`,
    // named for Prometheus) grow.
    let ticks = || {
        let mut head = request("/");
        chain.on_request(9_000, &mut head);
        let mut resp = response(200);
        chain.on_response(9_000, &mut resp, RouteId::NONE);
        chain.on_done(&summary(9_000, 200), RouteId::NONE);
        header(&resp.headers, "x-pw-ticks")
            .expect("set")
            .parse::<u64>()
            .expect("a number")
    };
    let first = ticks();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks() < first + 4 {
        assert!(Instant::now() < deadline, "the tick timer does not fire");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(value_of("pw_ticks") >= 4.0);

    // Every request enqueued an item on the shared queue; the root context that registered
    // it is told and dequeues them all, each once.
    let dequeued = || {
        let mut head = request("/");
        chain.on_request(9_001, &mut head);
        let mut resp = response(200);
        chain.on_response(9_001, &mut resp, RouteId::NONE);
        chain.on_done(&summary(9_001, 200), RouteId::NONE);
        header(&resp.headers, "x-pw-dequeued")
            .expect("set")
            .parse::<u64>()
            .expect("a number")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while dequeued() < CALLS {
        assert!(
            Instant::now() < deadline,
            "the queue's items are not delivered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_hostile_filter_is_contained_like_a_component() {
    let mut s = spec("pw-hostile", "{}", FailStrategy::FailClosed);
    s.limits.deadline = Duration::from_millis(50);
    s.limits.memory_bytes = 8 << 20;
    let plugin = FIX
        .runtime
        .plugin(
            Artifact::File(Path::new(weft_artifacts::PW_HOSTILE_PATH)),
            None,
            s,
        )
        .expect("loads");
    let chain = Chain::new(vec![plugin]);
    let id = std::cell::Cell::new(100u64);
    let next = || {
        id.set(id.get() + 1);
        id.get()
    };
    let attack = |mode: &str| {
        let id = next();
        let mut head = request("/");
        head.headers
            .insert("x-attack", HeaderValue::from_str(mode).expect("ascii"));
        let decided = chain.on_request(id, &mut head);
        chain.on_done(&summary(id, 503), RouteId::NONE);
        decided
    };
    // "grpc": a host function Weft does not provide yet: the call fails naming it.
    for (mode, cause) in [
        ("loop", "deadline"),
        ("memory", "memory"),
        ("trap", "trap"),
        ("grpc", "limit"),
    ] {
        let before = failures("pw-hostile", cause);
        let decided = attack(mode);
        let RequestVerdict::Respond(reply) = decided.action else {
            panic!("{mode}: a failing fail-closed filter answers 503");
        };
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{mode}");
        assert!(decided.plugin_failed, "{mode}");
        assert_eq!(
            failures("pw-hostile", cause) - before,
            1.0,
            "{mode} is named as {cause}"
        );
        // The next call gets a fresh VM and passes.
        let mut head = request("/");
        let id = next();
        let decided = chain.on_request(id, &mut head);
        assert!(
            matches!(decided.action, RequestVerdict::Continue),
            "after {mode}"
        );
        assert_eq!(
            header(&head.headers, "x-hostile-passed").as_deref(),
            Some("1")
        );
        chain.on_done(&summary(id, 200), RouteId::NONE);
    }
}

#[test]
fn a_filter_pauses_a_request_for_an_http_call_and_acts_on_its_answer() {
    let plugin = FIX
        .runtime
        .plugin(
            Artifact::File(Path::new(weft_artifacts::PW_CALLOUT_PATH)),
            None,
            spec(
                "pw-callout",
                r#"{"upstream":"outbound|80||auth.shop.svc.cluster.local"}"#,
                FailStrategy::FailClosed,
            ),
        )
        .expect("loads");
    let chain = Chain::new(vec![plugin]);
    let answer = |status: &str| CalloutAnswer {
        headers: vec![
            (":status".into(), status.as_bytes().to_vec()),
            ("x-app".into(), b"auth".to_vec()),
        ],
        ..CalloutAnswer::default()
    };

    // Allowed: the request waits for the call, then goes on carrying what the answer said.
    let mut head = request("/");
    head.headers
        .insert("x-allow", HeaderValue::from_static("yes"));
    let decided = chain.on_request(300, &mut head);
    let RequestVerdict::Paused(paused) = decided.action else {
        panic!("the filter pauses for its call: {:?}", decided.action);
    };
    assert_eq!(paused.at, 0);
    let [call] = paused.callouts.as_slice() else {
        panic!("one call: {:?}", paused.callouts);
    };
    assert_eq!(call.upstream, "outbound|80||auth.shop.svc.cluster.local");
    assert!(
        call.headers
            .contains(&(":path".into(), b"/status/200".to_vec()))
    );
    assert_eq!(call.timeout, Duration::from_secs(2));
    let decided = chain.resume(
        300,
        &mut head,
        &paused,
        vec![(call.token, Some(answer("200")))],
    );
    assert!(
        matches!(decided.action, RequestVerdict::Continue),
        "{:?}",
        decided.action
    );
    assert_eq!(header(&head.headers, "x-auth-by").as_deref(), Some("auth"));
    chain.on_done(&summary(300, 200), RouteId::NONE);

    // Denied, and a call that failed (no answer): both answered with the filter's 403.
    for (id, got) in [(301, Some(answer("403"))), (302, None)] {
        let mut head = request("/");
        let RequestVerdict::Paused(paused) = chain.on_request(id, &mut head).action else {
            panic!("paused");
        };
        let token = paused.callouts[0].token;
        let decided = chain.resume(id, &mut head, &paused, vec![(token, got)]);
        let RequestVerdict::Respond(reply) = decided.action else {
            panic!("refused: {:?}", decided.action);
        };
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(&reply.body[..], b"denied by auth\n");
        assert_eq!(decided.answered_at, Some(0));
        chain.on_done(&summary(id, 403), RouteId::NONE);
    }
}

#[test]
fn a_proxy_wasm_filter_and_a_component_act_on_one_call_in_their_declared_order() {
    let pw = || {
        filter(
            weft_artifacts::PW_HEADERS_PATH,
            "pw-order",
            r#"{"request":"from-pw"}"#,
        )
    };
    let component = || {
        FIX.runtime
            .plugin(
                Artifact::Bytes(weft_artifacts::HEADERS),
                None,
                spec(
                    "component-order",
                    r#"{"request":{"set":{"x-pw-request":"from-component"}}}"#,
                    FailStrategy::FailOpen,
                ),
            )
            .expect("the component loads")
    };
    // The component last: its `set` replaces what the filter added.
    let chain = Chain::new(vec![pw(), component()]);
    let mut head = request("/");
    chain.on_request(400, &mut head);
    let got: Vec<_> = head.headers.get_all("x-pw-request").iter().collect();
    assert_eq!(got, ["from-component"]);
    chain.on_done(&summary(400, 200), RouteId::NONE);

    // The filter last: it adds after the component set.
    let chain = Chain::new(vec![component(), pw()]);
    let mut head = request("/");
    chain.on_request(401, &mut head);
    let got: Vec<_> = head.headers.get_all("x-pw-request").iter().collect();
    assert_eq!(got, ["from-component", "from-pw"]);
    chain.on_done(&summary(401, 200), RouteId::NONE);
}

#[test]
fn a_body_filter_sees_whole_bodies_rewrites_them_and_answers_in_their_place() {
    let plugin = filter(weft_artifacts::PW_BODY_PATH, "pw-body", "{}");
    let plugin_hooks = plugin.hooks();
    assert!(plugin_hooks.on_request_body && plugin_hooks.on_response_body);
    let chain = Chain::new(vec![plugin]);
    let bytes = |s: &'static str| bytes::Bytes::from_static(s.as_bytes());

    let mut head = request("/");
    chain.on_request(500, &mut head);
    let mut pipe = chain
        .body_pipeline(500, RouteId::NONE, false, 1 << 20)
        .expect("the filter asked for the request body");
    let out = pipe.push(bytes("my secret"), true).expect("passes");
    assert_eq!(&out[..], b"my ******");

    // The response body in pieces: held while the filter asks (Pause), then rewritten whole.
    let mut resp = response(200);
    chain.on_response(500, &mut resp, RouteId::NONE);
    let mut pipe = chain
        .body_pipeline(500, RouteId::NONE, true, 1 << 20)
        .expect("the filter asked for the response body");
    assert!(pipe.push(bytes("hello "), false).expect("held").is_empty());
    assert!(pipe.push(bytes("world"), false).expect("held").is_empty());
    let out = pipe.push(bytes(""), true).expect("passes");
    assert_eq!(&out[..], b"hello world\n-- filtered by pw-body");
    // Then its trailers, which the filter reads and adds to.
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    pipe.trailers(&mut trailers).expect("passes");
    assert_eq!(
        header(&trailers, "x-pw-trailer").as_deref(),
        Some("saw grpc-status 0")
    );
    assert!(!pipe.plugin_failed);
    chain.on_done(&summary(500, 200), RouteId::NONE);

    let mut head = request("/");
    chain.on_request(501, &mut head);
    let mut pipe = chain
        .body_pipeline(501, RouteId::NONE, false, 1 << 20)
        .expect("asked");
    match pipe.push(bytes("this is forbidden"), true) {
        Err(BodyStop::Respond(reply, at)) => {
            assert_eq!(reply.status, StatusCode::FORBIDDEN);
            assert_eq!(&reply.body[..], b"body refused\n");
            assert_eq!(
                header(&reply.headers, "x-refused-by").as_deref(),
                Some("pw-body")
            );
            assert_eq!(at, 0);
        }
        other => panic!("a forbidden body is answered in its place: {other:?}"),
    }
    chain.on_done(&summary(501, 403), RouteId::NONE);

    // The request's trailers after its body: the filter reads one and adds its own, or
    // answers in the call's place.
    assert!(plugin_hooks.on_request_trailers);
    for (id, deny) in [(503, false), (504, true)] {
        let mut head = request("/");
        chain.on_request(id, &mut head);
        let mut pipe = chain
            .body_pipeline(id, RouteId::NONE, false, 1 << 20)
            .expect("asked");
        pipe.push(bytes("fine"), true).expect("passes");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        if deny {
            trailers.insert("x-deny", HeaderValue::from_static("yes"));
        }
        match pipe.trailers(&mut trailers) {
            Ok(()) if !deny => assert_eq!(
                header(&trailers, "x-pw-request-trailer").as_deref(),
                Some("saw abc")
            ),
            Err(BodyStop::Respond(reply, _)) if deny => {
                assert_eq!(reply.status, StatusCode::FORBIDDEN);
                assert_eq!(&reply.body[..], b"trailers refused\n");
            }
            other => panic!("deny {deny}: {other:?}"),
        }
        assert!(!pipe.plugin_failed);
        chain.on_done(&summary(id, 200), RouteId::NONE);
    }

    // Asking to hold more than the bound stops the body (the proxy answers a request so with
    // 413, and resets a response).
    let mut pipe = chain
        .body_pipeline(502, RouteId::NONE, true, 8)
        .expect("asked");
    assert!(matches!(
        pipe.push(bytes("0123456789abcdef"), false),
        Err(BodyStop::TooLarge)
    ));
    chain.on_done(&summary(502, 200), RouteId::NONE);
}

#[test]
fn a_bound_on_instances_is_the_number_of_vms() {
    // A runtime of its own: the counter's metric belongs to the plugin that defined it first.
    let runtime = PluginRuntime::new(
        RuntimeConfig::default(),
        &Registry::new(),
        Arc::new(NoEndpoints),
    )
    .expect("runtime");
    let mut s = spec("pw-counter", "{}", FailStrategy::FailClosed);
    s.limits.instances = 3;
    let plugin = runtime
        .plugin(
            Artifact::File(Path::new(weft_artifacts::PW_COUNTER_PATH)),
            None,
            s,
        )
        .expect("loads");
    let chain = Chain::new(vec![plugin]);
    let mut vms = std::collections::BTreeSet::new();
    for id in 0..30 {
        let mut head = request("/");
        chain.on_request(id, &mut head);
        let mut resp = response(200);
        chain.on_response(id, &mut resp, RouteId::NONE);
        vms.insert(header(&resp.headers, "x-pw-vm").expect("named"));
        chain.on_done(&summary(id, 200), RouteId::NONE);
    }
    assert_eq!(vms.len(), 3, "{vms:?}");
}
