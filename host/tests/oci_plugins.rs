//! WasmPlugins shipped as OCI images through a real registry (Debian's `docker-registry`,
//! started by the test on loopback): `weft plugin push … oci://…` publishes a component as a
//! Wasm OCI artifact; the control plane pulls it by tag and by digest, keeps what it pulled
//! under `imagePullPolicy: IfNotPresent` and pulls a moved tag again under `Always`; a digest
//! that does not match, or a `spec.sha256` that pins other content, is refused at apply while
//! the mesh keeps serving the last good chain; Istio's "compat" image (a gzipped tar layer
//! holding `plugin.wasm`) is read as well; and a registry or `https://` URL served over TLS is
//! verified against the trust store (`SSL_CERT_FILE`), an unknown issuer refused; a namespace
//! that requires signed plugins refuses unsigned and wrongly signed components, from the store,
//! a registry or a web server (`<url>.sig`), and a `file://` one it cannot see; a private
//! registry (htpasswd) is pulled from with the pull secret a plugin names, and one behind a
//! token service (the Bearer exchange of Docker Hub and ghcr.io; the registry verifies the
//! test's ES256 tokens) is pushed to with anonymous tokens and pulled from with a token the
//! pull secret's credentials get; a plugin pulled at apply moves from baseline to optimized
//! code without failing a call.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::mesh::{NO_APP, Proc, TestMesh, converged, text, weft, write};
use support::{App, full, h1_client, read};

/// The registry, killed on drop.
struct Registry {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn registry(dir: &std::path::Path) -> Registry {
    registry_with(dir, "").await
}

/// A registry storing under `dir`, with `more` YAML under `http:`'s sibling keys (`auth: …`).
async fn registry_with(dir: &std::path::Path, more: &str) -> Registry {
    support::netns::ensure_packages(&[("docker-registry", "docker-registry")]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{ level: error }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\nhttp:\n  addr: {addr}\n{more}",
            dir.join("registry").display()
        ),
    )
    .expect("config");
    let registry = Registry {
        child: Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry"),
        addr,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Up once it takes connections (it may speak TLS, or ask for credentials).
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return registry;
        }
        assert!(Instant::now() < deadline, "the registry never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A mesh pulling from the registry at `at` over plain HTTP: payments (an app behind its
/// sidecar) and orders (a sidecar that calls it). Fields drop in order: sidecars, the app,
/// then the control plane.
struct Shop {
    orders: Proc,
    _payments: Proc,
    app: App,
    m: TestMesh,
}

async fn shop(at: &str) -> Shop {
    let m = TestMesh::start_with(&["--plain-http-registry", at]);
    let app = App::start("payments").await;
    let payments = m.pod("payments", &[], app.addr).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    Shop {
        orders,
        _payments: payments,
        app,
        m,
    }
}

fn gate(url: &str, extra: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{ name: gate }}
spec:
  url: {url}
  targetRefs: [{{ kind: Service, group: \"\", name: payments }}]
  pluginConfig: {{ tag: pulled }}
{extra}"
    )
}

/// Whether a call through `out` reached the app stamped by the chaos plugin.
async fn stamped(out: SocketAddr, app: &App) -> bool {
    let before = app.seen().len();
    let req = Request::builder()
        .uri(format!("http://{out}/hello"))
        .header("host", "payments")
        .body(full(""))
        .expect("request");
    let (status, _, _) = read(h1_client().request(req).await.expect("call")).await;
    assert_eq!(status, StatusCode::OK);
    let seen = app.seen();
    assert_eq!(seen.len(), before + 1);
    seen[before]
        .headers
        .get("x-chaos-tag")
        .map(|v| v.as_bytes())
        == Some(&b"pulled"[..])
}

fn push(m: &TestMesh, file: &str, to: &str) -> String {
    let out = weft(m.cp, &m.data, &["plugin", "push", file, to, "--plain-http"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn apply(m: &TestMesh, yaml: &str) -> (bool, String) {
    let path = write(m.dir.path(), "gate.yaml", yaml);
    let out = weft(
        m.cp,
        &m.data,
        &["apply", "-f", path.to_str().expect("utf-8")],
    );
    (out.status.success(), text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_pulled_from_a_registry_by_tag_and_by_digest() {
    let dir = tempfile::tempdir().expect("dir");
    let reg = registry(dir.path()).await;
    let at = reg.addr.to_string();
    let Shop { m, app, orders, .. } = &shop(&at).await;
    let out = orders.addr("outbound");
    let live = format!("oci://{at}/weft/gate:live");

    // Published, then pulled by tag: the chain runs it.
    let chaos = push(m, weft_artifacts::CHAOS_PATH, &live);
    assert!(
        chaos.starts_with(&format!("oci://{at}/weft/gate@sha256:")),
        "{chaos}"
    );
    let (ok, said) = apply(m, &gate(&live, ""));
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 2, Duration::from_secs(60)).await;
    assert!(stamped(out, app).await);

    // The tag moves to another component. IfNotPresent (the default for a tag other than
    // `latest`) keeps what was pulled: applying again changes nothing.
    push(m, weft_artifacts::TWO_HEADERS_PATH, &live);
    let (ok, said) = apply(m, &gate(&live, "  imagePullPolicy: IfNotPresent\n"));
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 2, Duration::from_secs(60)).await;
    assert!(stamped(out, app).await, "still the first pull");
    // Always pulls again at apply, and the moved tag's component takes over.
    let (ok, said) = apply(m, &gate(&live, "  imagePullPolicy: Always\n"));
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 2, Duration::from_secs(60)).await;
    assert!(!stamped(out, app).await, "the moved tag's component");

    // By digest: the first push's manifest, whatever the tag says now.
    let (ok, said) = apply(m, &gate(&chaos, ""));
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 2, Duration::from_secs(60)).await;
    assert!(stamped(out, app).await);

    // A spec.sha256 pinning other content is refused, naming both; the chain stays.
    let other = "ab".repeat(32);
    let (ok, said) = apply(m, &gate(&chaos, &format!("  sha256: {other}\n")));
    assert!(!ok);
    assert!(
        said.contains("spec.sha256 pins") && said.contains(&other),
        "{said}"
    );
    // A digest the registry does not hold is refused too.
    let missing = format!("oci://{at}/weft/gate@sha256:{}", "1".repeat(64));
    let (ok, said) = apply(m, &gate(&missing, ""));
    assert!(!ok);
    assert!(said.contains("the registry answered 404"), "{said}");
    assert!(stamped(out, app).await, "the last good chain keeps serving");
}

/// Uploads `bytes` as a blob of `repo` on the registry at `addr`; its digest.
async fn upload(addr: SocketAddr, repo: &str, bytes: Vec<u8>) -> String {
    let digest = format!("sha256:{}", weft::plugin::sha256_hex(&bytes));
    let start = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
        .body(full(""))
        .expect("request");
    let resp = h1_client().request(start).await.expect("start upload");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("http://{addr}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = Request::builder()
        .method(Method::PUT)
        .uri(format!(
            "{location}{sep}digest={}",
            digest.replace(':', "%3A")
        ))
        .body(full(Bytes::from(bytes)))
        .expect("request");
    let resp = h1_client().request(put).await.expect("upload");
    assert_eq!(resp.status(), StatusCode::CREATED);
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compat_image_with_plugin_wasm_in_a_tar_layer_is_read() {
    let dir = tempfile::tempdir().expect("dir");
    let reg = registry(dir.path()).await;
    let at = reg.addr.to_string();
    // A container image as `docker build` would make one: a gzipped tar layer with
    // plugin.wasm at its root, a container config, a Docker schema 2 manifest.
    let wasm = std::fs::read(weft_artifacts::CHAOS_PATH).expect("chaos");
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "plugin.wasm", &wasm[..])
        .expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar.into_inner().expect("tar")).expect("gzip");
    let layer = gz.finish().expect("gzip");
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let (layer_len, config_len) = (layer.len(), config.len());
    let layer_digest = upload(reg.addr, "weft/compat", layer).await;
    let config_digest = upload(reg.addr, "weft/compat", config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": { "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": config_digest, "size": config_len },
        "layers": [{ "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                     "digest": layer_digest, "size": layer_len }],
    });
    let put = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://{at}/v2/weft/compat/manifests/v1"))
        .header(
            "content-type",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .body(full(serde_json::to_vec(&manifest).expect("json")))
        .expect("request");
    let resp = h1_client().request(put).await.expect("manifest");
    assert_eq!(resp.status(), StatusCode::CREATED);

    let Shop { m, app, orders, .. } = &shop(&at).await;
    let (ok, said) = apply(m, &gate(&format!("oci://{at}/weft/compat:v1"), ""));
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 2, Duration::from_secs(60)).await;
    assert!(stamped(orders.addr("outbound"), app).await);
}

/// A CA and a certificate it signed for 127.0.0.1, as PEM files under `dir`: (ca, cert, key).
fn tls_files(dir: &std::path::Path) -> (String, String, String) {
    let (ca, cert, key) = support::loopback_tls("registry test CA");
    let paths = ["ca.pem", "cert.pem", "key.pem"].map(|n| dir.join(n).display().to_string());
    std::fs::write(&paths[0], ca).expect("write");
    std::fs::write(&paths[1], cert).expect("write");
    std::fs::write(&paths[2], key).expect("write");
    let [a, b, c] = paths;
    (a, b, c)
}

/// The weft CLI with `SSL_CERT_FILE` set.
fn weft_trusting(ca: &str, m: &TestMesh, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .args(["--server", &m.cp.to_string(), "--data"])
        .arg(&m.data)
        .env("SSL_CERT_FILE", ca)
        .output()
        .expect("run weft")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_registries_and_urls_are_verified_against_the_trust_store() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = tls_files(dir.path());
    let registry = registry_with(
        dir.path(),
        &format!("  tls: {{ certificate: {cert}, key: {key} }}\n"),
    )
    .await;
    let at = registry.addr.to_string();
    // A control plane trusting the test CA (as an operator adds a private CA to the system's
    // store), and the CLI pushing with the same trust.
    let data = dir.path().join("data");
    let control = support::mesh::spawn_with(
        &[
            "control",
            "--data",
            data.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
        ],
        None,
        &[("SSL_CERT_FILE", &ca)],
    );
    let cp = control.addr("api");
    support::mesh::remember(cp, &data);
    let m = TestMesh {
        dir: tempfile::tempdir().expect("dir"),
        data: data.clone(),
        cp,
        op: support::mesh::token(&data),
        control,
    };
    let reference = format!("oci://{at}/weft/gate:v1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pushed = loop {
        let out = weft_trusting(
            &ca,
            &m,
            &["plugin", "push", weft_artifacts::CHAOS_PATH, &reference],
        );
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        // The registry may still be starting.
        assert!(Instant::now() < deadline, "{}", text(&out));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(pushed.contains("@sha256:"), "{pushed}");

    let app = App::start("payments").await;
    let _payments = m.pod("payments", &[], app.addr).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    let (ok, said) = apply(&m, &gate(&reference, ""));
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 2, Duration::from_secs(60)).await;
    assert!(stamped(orders.addr("outbound"), &app).await);

    // An https:// URL: the component's blob, served by the same verified server.
    let wasm = std::fs::read(weft_artifacts::CHAOS_PATH).expect("chaos");
    let digest = weft::plugin::sha256_hex(&wasm);
    let blob = format!("https://{at}/v2/weft/gate/blobs/sha256:{digest}");
    let (ok, said) = apply(&m, &gate(&blob, &format!("  sha256: \"{digest}\"\n")));
    assert!(ok, "{said}");

    // A control plane that does not trust the CA refuses both, naming the TLS failure.
    let other = TestMesh::start();
    for url in [&reference, &blob] {
        let path = write(other.dir.path(), "gate.yaml", &gate(url, ""));
        let out = weft(
            other.cp,
            &other.data,
            &["apply", "-f", path.to_str().expect("utf-8")],
        );
        assert!(!out.status.success());
        assert!(
            text(&out).contains("TLS with 127.0.0.1") && text(&out).contains("UnknownIssuer"),
            "{}",
            text(&out)
        );
    }
}

/// The weft CLI for commands that need no control plane.
fn weft_local(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("run weft")
}

fn plugin_in(namespace: &str, url: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{ name: gate-{namespace}, namespace: {namespace} }}
spec:
  url: {url}
  pluginConfig: {{ tag: pulled }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_that_require_signed_plugins_refuse_unsigned_and_wrongly_signed_ones() {
    let dir = tempfile::tempdir().expect("dir");
    let reg = registry(dir.path()).await;
    let at = reg.addr.to_string();
    let keys = dir.path().join("release");
    let out = weft_local(&["plugin", "keygen", "--out", keys.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    let stranger = dir.path().join("stranger");
    let out = weft_local(&[
        "plugin",
        "keygen",
        "--out",
        stranger.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let public = format!("{}.pub", keys.display());
    let m = TestMesh::start_with(&[
        "--plain-http-registry",
        &at,
        "--plugin-signing-key",
        &public,
        "--require-signed-plugins",
        "shop",
    ]);
    // Components copied where their signatures may be written.
    let chaos = dir.path().join("chaos.wasm");
    std::fs::copy(weft_artifacts::CHAOS_PATH, &chaos).expect("copy");
    let other = dir.path().join("two-headers.wasm");
    std::fs::copy(weft_artifacts::TWO_HEADERS_PATH, &other).expect("copy");
    let sign = |file: &std::path::Path, key: &std::path::Path| {
        let key = format!("{}.key", key.display());
        let out = weft_local(&[
            "plugin",
            "sign",
            file.to_str().expect("utf-8"),
            "--key",
            &key,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let push_signed = |file: &std::path::Path, sig: Option<&str>, to: Option<&str>| {
        let mut args = vec!["plugin", "push", file.to_str().expect("utf-8")];
        args.extend(to);
        if to.is_some() {
            args.push("--plain-http");
        }
        if let Some(s) = sig {
            args.extend(["--signature", s]);
        }
        let out = weft(m.cp, &m.data, &args);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // Signed by the trusted key, pushed to the store with its signature: taken in shop.
    let signature = sign(&chaos, &keys);
    let stored = push_signed(&chaos, Some(&signature), None);
    let (ok, said) = apply(&m, &plugin_in("shop", &stored));
    assert!(ok, "{said}");

    // Unsigned: refused in shop, taken where no signature is required.
    let unsigned = push_signed(&other, None, None);
    let (ok, said) = apply(&m, &plugin_in("shop", &unsigned));
    assert!(!ok);
    assert!(
        said.contains("is not signed") && said.contains("namespace shop requires signed plugins"),
        "{said}"
    );
    let (ok, said) = apply(&m, &plugin_in("default", &unsigned));
    assert!(ok, "{said}");

    // Signed by a key the control plane does not trust: refused, naming the trusted keys.
    let wrong = sign(&other, &stranger);
    push_signed(&other, Some(&wrong), None);
    let (ok, said) = apply(&m, &plugin_in("shop", &unsigned));
    assert!(!ok);
    assert!(
        said.contains("verifies with a trusted key") && said.contains(&public),
        "{said}"
    );

    // OCI: the signature image published beside the plugin's is pulled with it.
    let signed_image = format!("oci://{at}/weft/signed:v1");
    push_signed(&chaos, Some(&signature), Some(&signed_image));
    let (ok, said) = apply(&m, &plugin_in("shop", &signed_image));
    assert!(ok, "{said}");
    // A component the control plane has no signature of, from anywhere.
    let bare = dir.path().join("noop.wasm");
    std::fs::copy(weft_artifacts::NOOP_PATH, &bare).expect("copy");
    let bare_image = format!("oci://{at}/weft/bare:v1");
    push_signed(&bare, None, Some(&bare_image));
    let (ok, said) = apply(&m, &plugin_in("shop", &bare_image));
    assert!(!ok);
    assert!(said.contains("is not signed"), "{said}");
    // An http:// URL: its signature is read from `<url>.sig` beside it (Debian's Python
    // serving a directory, as any static web server would).
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("dir");
    let served = site.join("gate.wasm");
    std::fs::copy(weft_artifacts::TWO_HEADERS_PATH, &served).expect("copy");
    sign(&served, &keys);
    let mut web = support::WebServer::start(&site).await;
    let url = format!("http://127.0.0.1:{}/gate.wasm", web.port);
    let (ok, said) = apply(&m, &plugin_in("shop", &url));
    assert!(ok, "{said}");
    std::fs::remove_file(site.join("gate.wasm.sig")).expect("remove");
    std::fs::copy(weft_artifacts::NOOP_PATH, &served).expect("copy");
    let (ok, said) = apply(
        &m,
        &plugin_in("shop", &url).replace(
            "  pluginConfig",
            "  imagePullPolicy: Always\n  pluginConfig",
        ),
    );
    assert!(!ok);
    assert!(said.contains("is not signed"), "{said}");
    web.stop();

    // A file on the sidecar's machine cannot be verified at all.
    let (ok, said) = apply(&m, &plugin_in("shop", "file:///plugins/gate.wasm"));
    assert!(!ok);
    assert!(
        said.contains("cannot be verified by the control plane"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_is_pulled_from_with_the_pull_secret_a_plugin_names() {
    support::netns::ensure_packages(&[("htpasswd", "apache2-utils")]);
    let dir = tempfile::tempdir().expect("dir");
    // Published while the registry is open, then served with htpasswd credentials.
    let image = {
        let open = registry(dir.path()).await;
        let m = TestMesh::start();
        let at = open.addr.to_string();
        push(
            &m,
            weft_artifacts::CHAOS_PATH,
            &format!("oci://{at}/weft/private:v1"),
        );
        "weft/private:v1"
    };
    let htpasswd = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", "weft", "s3cret"])
        .output()
        .expect("htpasswd");
    assert!(out.status.success());
    std::fs::write(&htpasswd, &out.stdout).expect("write");
    let private = registry_with(
        dir.path(),
        &format!(
            "auth:\n  htpasswd: {{ realm: weft, path: {} }}\n",
            htpasswd.display()
        ),
    )
    .await;
    let at = private.addr.to_string();
    let url = format!("oci://{at}/{image}");
    let m = TestMesh::start_with(&["--plain-http-registry", &at]);
    let keep = |password: &str| keep_secret(&m, &at, "weft", password);
    let with_secret = "  imagePullSecret: registry-creds\n";

    // Anonymous: the registry wants credentials.
    let (ok, said) = apply(&m, &gate(&url, ""));
    assert!(!ok);
    assert!(
        said.contains("wants credentials; name a pull secret"),
        "{said}"
    );
    // A pull secret the control plane does not keep.
    let (ok, said) = apply(&m, &gate(&url, with_secret));
    assert!(!ok);
    assert!(
        said.contains("no pull secret registry-creds in namespace default"),
        "{said}"
    );
    // A wrong password: the registry refuses it.
    keep("wrong");
    let (ok, said) = apply(&m, &gate(&url, with_secret));
    assert!(!ok);
    assert!(said.contains("refused the credentials (401)"), "{said}");
    // The right one pulls, and the secret is listed without its password.
    keep("s3cret");
    let (ok, said) = apply(&m, &gate(&url, with_secret));
    assert!(ok, "{said}");
    let listed = support::mesh::api(m.cp, &m.op, Method::GET, "/v1/pull-secrets").await;
    assert_eq!(listed["pullSecrets"][0]["name"], "default/registry-creds");
    assert!(!listed.to_string().contains("s3cret"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_plugin_moves_to_optimized_code_without_failing_a_call() {
    let dir = tempfile::tempdir().expect("dir");
    let reg = registry(dir.path()).await;
    let at = reg.addr.to_string();
    let Shop { m, app, orders, .. } = &shop(&at).await;
    let (out, admin) = (orders.addr("outbound"), orders.addr("admin"));
    let live = format!("oci://{at}/weft/tiered:v1");
    push(m, weft_artifacts::CHAOS_PATH, &live);

    // Pulled during the apply: the control plane checks it with the baseline compiler and
    // compiles optimized code behind it. The sidecar runs whichever the control plane has
    // when the snapshot arrives, and calls go on through the move to optimized code.
    let (ok, said) = apply(m, &gate(&live, ""));
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 2, Duration::from_secs(60)).await;
    let imported = |tier: &'static str| async move {
        let label = format!("tier=\"{tier}\"");
        support::metric_sum(admin, "weft_plugin_compiled_code_imported_total", &[&label]).await
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut calls = 0;
    while imported("optimized").await < 1.0 {
        assert!(stamped(out, app).await, "call {calls} ran the plugin");
        calls += 1;
        assert!(
            Instant::now() < deadline,
            "no optimized code after {calls} calls"
        );
    }
    for _ in 0..5 {
        assert!(stamped(out, app).await, "optimized code runs the plugin");
    }
    let baseline = imported("baseline").await;
    assert!(baseline <= 1.0, "baseline code imported once at most");
    eprintln!("baseline imports: {baseline}; calls before optimized code: {calls}");
    assert_eq!(imported("optimized").await, 1.0, "moved once");
}

/// `weft pull-secret registry-creds` for `registry`, the password given on standard input.
fn keep_secret(m: &TestMesh, registry: &str, username: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["pull-secret", "registry-creds", "--registry", registry])
        .args(["--username", username, "--password-stdin"])
        .args(["--server", &m.cp.to_string(), "--data"])
        .arg(&m.data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weft");
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin"),
        format!("{password}\n").as_bytes(),
    )
    .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out));
}

/// A registry token service (the Bearer exchange of Docker Hub and ghcr.io): answers
/// `GET /token?service=…&scope=…` with a JWT (ES256, its certificate in `x5c`) granting what
/// the scope asks of its repository, to anyone while `open`, else only to `ci:t0ken` (Basic). Keeps each
/// request's scope and whether it carried the credentials.
struct TokenService {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    asked: Arc<parking_lot::Mutex<Vec<(String, bool)>>>,
    cert_pem: String,
}

const TOKEN_BASIC: &str = "Basic Y2k6dDBrZW4="; // ci:t0ken

impl TokenService {
    async fn start() -> TokenService {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["token.weft.test".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("signer");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = base64::Engine::encode(
            &b64,
            serde_json::json!({"typ": "JWT", "alg": "ES256",
                "x5c": [base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cert.der())]})
            .to_string(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicBool::new(true));
        let asked = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let signer = Arc::new(signer);
        let (is_open, log) = (open.clone(), asked.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (signer, header, is_open, log) =
                    (signer.clone(), header.clone(), is_open.clone(), log.clone());
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let query = req.uri().query().unwrap_or("").to_string();
                        let scope = query
                            .split('&')
                            .find_map(|kv| kv.strip_prefix("scope="))
                            .map(|s| {
                                s.replace("%3A", ":")
                                    .replace("%2F", "/")
                                    .replace("%2C", ",")
                            })
                            .unwrap_or_default();
                        let credentialed = req
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .is_some_and(|v| v == TOKEN_BASIC);
                        log.lock().push((scope.clone(), credentialed));
                        let answer = if is_open.load(Ordering::SeqCst) || credentialed {
                            // scope: repository:<name>:<actions>; grants what was asked.
                            let mut parts = scope.split(':');
                            let name = parts.nth(1).unwrap_or("").to_string();
                            let actions: Vec<&str> =
                                parts.next().unwrap_or("").split(',').collect();
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .expect("clock")
                                .as_secs();
                            let claims = base64::Engine::encode(
                                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                                serde_json::json!({
                                "iss": "weft-test", "sub": "ci", "aud": "weft-registry",
                                "exp": now + 300, "nbf": now - 10, "iat": now,
                                "jti": format!("{now}-{}", name.len()),
                                "access": [{"type": "repository", "name": name,
                                            "actions": actions}]})
                                .to_string(),
                            );
                            let signing_input = format!("{header}.{claims}");
                            let sig = signer
                                .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
                                .expect("sign");
                            let jwt = format!(
                                "{signing_input}.{}",
                                base64::Engine::encode(
                                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                                    sig.as_ref()
                                )
                            );
                            http::Response::new(full(serde_json::json!({"token": jwt}).to_string()))
                        } else {
                            let mut r = http::Response::new(full("{}"));
                            *r.status_mut() = StatusCode::UNAUTHORIZED;
                            r
                        };
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenService {
            addr,
            open,
            asked,
            cert_pem: cert.pem(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_behind_a_token_service_is_pulled_from_with_a_bearer_token() {
    let dir = tempfile::tempdir().expect("dir");
    let tokens = TokenService::start().await;
    let bundle = dir.path().join("token.pem");
    std::fs::write(&bundle, &tokens.cert_pem).expect("write");
    let reg = registry_with(
        dir.path(),
        &format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: weft-registry\n    \
             issuer: weft-test\n    rootcertbundle: {}\n",
            tokens.addr,
            bundle.display()
        ),
    )
    .await;
    let at = reg.addr.to_string();
    let Shop { m, app, orders, .. } = &shop(&at).await;
    let url = format!("oci://{at}/weft/tokened:v1");

    // Pushed with anonymous tokens (the service is open for now): a pull token first, then,
    // when the upload is challenged for more, a pull-and-push one.
    push(m, weft_artifacts::CHAOS_PATH, &url);
    // The registry names the actions in either order ("pull,push" or "push,pull").
    assert!(
        tokens.asked.lock().iter().any(|(scope, credentialed)| {
            let actions = scope.strip_prefix("repository:weft/tokened:").map(|a| {
                let mut a: Vec<&str> = a.split(',').collect();
                a.sort_unstable();
                a
            });
            actions == Some(vec!["pull", "push"]) && !*credentialed
        }),
        "{:?}",
        tokens.asked.lock()
    );

    // Now tokens need credentials: anonymous pulls are refused by the token service, the
    // pull secret's credentials get a token and the plugin runs.
    tokens.open.store(false, Ordering::SeqCst);
    let (ok, said) = apply(m, &gate(&url, ""));
    assert!(!ok);
    assert!(said.contains("the token service answered 401"), "{said}");
    keep_secret(m, &at, "ci", "t0ken");
    let (ok, said) = apply(m, &gate(&url, "  imagePullSecret: registry-creds\n"));
    assert!(ok, "{said}");
    converged(m.cp, &m.op, 2, Duration::from_secs(60)).await;
    assert!(stamped(orders.addr("outbound"), app).await);
    assert!(
        tokens
            .asked
            .lock()
            .iter()
            .any(|(scope, credentialed)| scope == "repository:weft/tokened:pull" && *credentialed),
        "{:?}",
        tokens.asked.lock()
    );
}
