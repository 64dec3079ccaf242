//! Attacks and careless input, each against real processes: what an attacker holding a token,
//! a caller on the network, a hostile plugin or a slip of the operator's hand could do, and
//! what Weft does instead. Every test here failed before its fix.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use std::time::Duration;
use support::mesh::*;
use weft::control::client::{ClientError, call};

/// Each test runs a control plane, and some sidecars: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The status and body of an API call that is expected to be refused.
async fn refused(
    cp: std::net::SocketAddr,
    token: &str,
    method: Method,
    path: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, String) {
    match call(&endpoint(cp), token, method, path, body.into()).await {
        Ok(b) => panic!("{path}: accepted: {}", String::from_utf8_lossy(&b)),
        Err(ClientError::Refused { status, body }) => (status, body),
        Err(e) => panic!("{path}: no answer: {e}"),
    }
}

fn vs_with_timeout(timeout: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: payments }}\n\
         spec:\n  hosts: [payments]\n  http:\n  - timeout: {timeout}\n    route:\n    \
         - destination: {{ host: payments }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_yaml_is_refused_briefly_and_the_control_plane_lives_on() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cp_proc = control(&data, "127.0.0.1:0");
    let cp = cp_proc.addr("api");
    let op = token(&data);

    // One 1 MiB anchored string aliased 300 times: 300 MiB once expanded.
    let big = "x".repeat(1 << 20);
    let mut text = format!("a: &big {big}\nb: [");
    text.push_str(&vec!["*big"; 300].join(", "));
    text.push_str("]\n");
    let (status, body) = refused(cp, &op, Method::POST, "/v1/apply", text).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("once aliases are expanded"), "{body}");
    assert!(
        body.len() < 1024,
        "a short answer, not the value: {} bytes",
        body.len()
    );

    // A 20 MB annotation: past what apply reads at all. The answer is a 413, or the
    // connection cut while the client is still sending; nothing is kept either way.
    let huge = "y".repeat(20 << 20);
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: payments\n  \
         annotations: {{ note: {huge} }}\nspec:\n  hosts: [payments]\n"
    );
    match call(
        &endpoint(cp),
        &op,
        Method::POST,
        "/v1/apply",
        Bytes::from(text),
    )
    .await
    {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
            assert!(body.len() < 1024, "{} bytes", body.len());
        }
        Err(ClientError::Unreachable(e)) => assert!(e.contains("writing"), "{e}"),
        Ok(b) => panic!("accepted: {}", String::from_utf8_lossy(&b)),
    }
    // 2 MiB: read, and refused as a resource too large.
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: payments\n  \
         annotations: {{ note: {} }}\nspec:\n  hosts: [payments]\n  http:\n  - route:\n    \
         - destination: {{ host: payments }}\n",
        "z".repeat(2 << 20)
    );
    let (status, body) = refused(cp, &op, Method::POST, "/v1/apply", text).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("a resource may be at most 1024 KiB"),
        "{body}"
    );
    assert!(body.len() < 2048, "{} bytes", body.len());

    // Durations past any clock: a refusal naming the field, not a panic.
    for timeout in ["1e300s", "99999999999999999999h", "2562048h"] {
        let (status, body) =
            refused(cp, &op, Method::POST, "/v1/apply", vs_with_timeout(timeout)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{timeout}: {body}");
        assert!(body.contains("spec.http[0].timeout"), "{timeout}: {body}");
    }

    // Still serving, and nothing of the above was kept.
    let listed = api(cp, &op, Method::GET, "/v1/resources").await;
    assert_eq!(listed, serde_json::json!([]));
    call(
        &endpoint(cp),
        &op,
        Method::POST,
        "/v1/apply",
        Bytes::from(SEED),
    )
    .await
    .expect("the seed applies after all that");
    drop(cp_proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_saved_is_refused_and_not_applied() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cp_proc = control(&data, "127.0.0.1:0");
    let cp = cp_proc.addr("api");
    let op = token(&data);
    call(
        &endpoint(cp),
        &op,
        Method::POST,
        "/v1/apply",
        Bytes::from(vs_with_timeout("2s")),
    )
    .await
    .expect("first apply");
    // A directory where the state file goes: the rename that saves it fails, even for root.
    let state = data.join("state.json");
    std::fs::remove_file(&state).expect("rm state");
    std::fs::create_dir(&state).expect("dir in the way");
    std::fs::write(state.join("keep"), b"x").expect("non-empty");

    let (status, body) = refused(cp, &op, Method::POST, "/v1/apply", vs_with_timeout("3s")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("not applied"), "{body}");
    let (status, body) = refused(
        cp,
        &op,
        Method::DELETE,
        "/v1/resources/VirtualService/payments",
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let listed = api(cp, &op, Method::GET, "/v1/resources").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(
        listed[0].pointer("/spec/http/0/timeout"),
        Some(&serde_json::json!("2s")),
        "the last saved change is the one in force: {listed}"
    );
    drop(cp_proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_secret_stops_the_control_plane_naming_the_file() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cp_proc = control(&data, "127.0.0.1:0");
    drop(cp_proc);
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| {
        std::fs::metadata(data.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777
    };
    for f in ["secret", "operator.token", "ca/root.pem"] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
    let secret = data.join("secret");
    let mut bytes = std::fs::read(&secret).expect("secret");
    bytes.push(b'!');
    std::fs::write(&secret, &bytes).expect("damage");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["control", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .expect("run");
    assert!(!out.status.success(), "it started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&secret.display().to_string()), "{err}");
    assert_eq!(
        std::fs::read(&secret).expect("kept"),
        bytes,
        "left as found"
    );
}

/// Opens a watch as `service` with `id` using `token`; the response status.
async fn watch_as(
    cp: std::net::SocketAddr,
    token: &str,
    id: &str,
    service: &str,
    admin: &str,
) -> (StatusCode, http::Response<hyper::body::Incoming>) {
    let path = format!(
        "/v1/watch?id={id}&service={service}&address=127.0.0.1:9&labels=&version=&admin={admin}"
    );
    let req = http::Request::get(path)
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let resp = endpoint(cp).send(req).await.expect("answered");
    (resp.status(), resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cannot_take_another_services_registration_or_aim_the_stats_scraper() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cp_proc = control(&data, "127.0.0.1:0");
    let cp = cp_proc.addr("api");
    let op = token(&data);
    let orders_token = service_token(cp, &op, "orders").await;
    let pay_token = service_token(cp, &op, "payments").await;
    let app = support::App::start("orders").await;
    let _orders = sidecar(dir.path(), cp, &orders_token, "orders", &[], app.addr);
    let sidecars = converged(cp, &op, 1, Duration::from_secs(20)).await;
    assert_eq!(sidecars.len(), 1);
    let status = api(cp, &op, Method::GET, "/v1/status").await;
    let id = status["sidecars"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let nonce = id.strip_prefix("orders-").expect("service first");
    assert_eq!(nonce.len(), 32, "128 random bits: {id}");
    assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

    // payments' token reusing orders' id: refused, and orders keeps its stream and endpoint.
    let (code, resp) = watch_as(cp, &pay_token, &id, "payments", "").await;
    assert_eq!(code, StatusCode::CONFLICT);
    let (_, _, body) = support::read(resp).await;
    assert!(
        String::from_utf8_lossy(&body).contains("registered to another service"),
        "{body:?}"
    );
    let status = api(cp, &op, Method::GET, "/v1/status").await;
    let entry = &status["sidecars"][0];
    assert_eq!(entry["service"], "orders", "{status:#}");
    assert_eq!(entry["connected"], true, "{status:#}");

    // An admin address on another host is not recorded, so `weft stat` never reads it; one
    // on every interface is read at the watch's own host.
    let (code, _held) = watch_as(
        cp,
        &pay_token,
        "payments-probe-1",
        "payments",
        "127.0.0.2:80",
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _held2) = watch_as(
        cp,
        &pay_token,
        "payments-probe-2",
        "payments",
        "0.0.0.0:15000",
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let status = api(cp, &op, Method::GET, "/v1/status").await;
    let admin_of = |id: &str| {
        status["sidecars"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == id))
            .map(|s| s.get("admin").cloned())
    };
    assert_eq!(admin_of("payments-probe-1"), Some(None), "{status:#}");
    assert_eq!(
        admin_of("payments-probe-2"),
        Some(Some(serde_json::json!("127.0.0.1:15000"))),
        "{status:#}"
    );
    drop(cp_proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_artifact_is_refused_at_push_and_never_stored() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cp_proc = control(&data, "127.0.0.1:0");
    let cp = cp_proc.addr("api");
    let op = token(&data);
    let good = std::fs::read(weft_artifacts::CHAOS_PATH).expect("built");

    // A component's preamble and then nothing a validator accepts.
    let mut truncated = good[..good.len() / 2].to_vec();
    truncated.extend_from_slice(b"not the rest");
    let (status, body) = refused(cp, &op, Method::POST, "/v1/artifacts", truncated).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("artifact refused"), "{body}");

    // A well-formed component that does not implement the contract.
    let other = std::fs::read(weft_artifacts::NOT_A_FILTER_PATH).expect("built");
    let (status, body) = refused(cp, &op, Method::POST, "/v1/artifacts", other).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("weft:filter"), "{body}");

    // Nothing refused was kept; a good component is stored under its digest.
    let stored = || {
        std::fs::read_dir(data.join("artifacts"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(stored(), 0);
    let answer = call(
        &endpoint(cp),
        &op,
        Method::POST,
        "/v1/artifacts",
        Bytes::from(good.clone()),
    )
    .await
    .expect("a good component is stored");
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("json");
    assert_eq!(answer["sha256"], weft::plugin::sha256_hex(&good));
    assert_eq!(stored(), 1);
}

/// Serves `body` to every HTTP request on a loopback port until dropped.
struct OneFile {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl OneFile {
    async fn serve(body: Vec<u8>) -> OneFile {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = conn.read(&mut head).await;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                });
            }
        });
        OneFile { addr, task }
    }
}

impl Drop for OneFile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_artifact_behind_a_wasm_plugin_url_is_refused_at_apply() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cp_proc = control(&data, "127.0.0.1:0");
    let cp = cp_proc.addr("api");
    let op = token(&data);
    let plugin = |url: String| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{ name: gate }}\n\
             spec:\n  url: {url}\n"
        )
    };

    let other = std::fs::read(weft_artifacts::NOT_A_FILTER_PATH).expect("built");
    let server = OneFile::serve(other).await;
    let url = format!("http://{}/gate.wasm", server.addr);
    let (status, body) = refused(cp, &op, Method::POST, "/v1/apply", plugin(url.clone())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains(&url) && body.contains("artifact refused") && body.contains("weft:filter"),
        "{body}"
    );
    let listed = api(cp, &op, Method::GET, "/v1/resources").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    assert!(
        !data.join("artifacts").exists()
            || std::fs::read_dir(data.join("artifacts"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
    );
    drop(server);

    // The same resource, once the URL serves a real filter, is applied.
    let good = std::fs::read(weft_artifacts::CHAOS_PATH).expect("built");
    let server = OneFile::serve(good).await;
    let url = format!("http://{}/gate.wasm", server.addr);
    call(
        &endpoint(cp),
        &op,
        Method::POST,
        "/v1/apply",
        Bytes::from(plugin(url)),
    )
    .await
    .expect("a good component behind a URL is applied");
}

#[test]
fn output_into_a_closed_pipe_ends_the_cli_quietly() {
    // `weft … | head -1`: the reader is gone before the CLI writes.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["plugin", "check", weft_artifacts::CHAOS_PATH])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run weft");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
