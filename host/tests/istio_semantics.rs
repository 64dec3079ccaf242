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

/// `SEED` with one line replaced.
fn seed_with(from: &str, to: &str) -> String {
    let out = SEED.replacen(from, to, 1);
    assert_ne!(out, SEED, "the seed has no {from:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_plugin_would_refuse_is_refused_at_apply_and_the_mesh_carries_on() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cp_proc = control(&data, "127.0.0.1:0");
    let cp = cp_proc.addr("api");
    let op = token(&data);
    let (pay, ord) = (
        service_token(cp, &op, "payments").await,
        service_token(cp, &op, "orders").await,
    );
    let (v1, v2) = (
        App::start("payments-v1").await,
        App::start("payments-v2").await,
    );
    let _p1 = sidecar(
        dir.path(),
        cp,
        &pay,
        "payments",
        &[("version", "v1")],
        v1.addr,
    );
    let _p2 = sidecar(
        dir.path(),
        cp,
        &pay,
        "payments",
        &[("version", "v2")],
        v2.addr,
    );
    let orders = sidecar(
        dir.path(),
        cp,
        &ord,
        "orders",
        &[("version", "v1")],
        std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
    );
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
}
