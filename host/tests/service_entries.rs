//! Hosts outside the mesh (ServiceEntries) shaped by the same VirtualServices and
//! DestinationRules as mesh services, and reached over TLS the sidecar originates, on real
//! sidecar processes and real local servers standing in for `api.example.com`.
//!
//! A VirtualService's retries and subset routing hold for an external host; a change of route
//! is followed. A DestinationRule's `tls` mode SIMPLE makes the sidecar speak HTTPS to a
//! server whose certificate chains to `caCertificates` and names the call's host (or one of
//! `subjectAltNames`, with the `sni` given); a certificate from another CA fails the call; a
//! file the sidecar cannot read is refused by the sidecar (NACK) while the last good
//! snapshot keeps serving; MUTUAL presents the client certificate a server requires.
//!
//! A `MESH_INTERNAL` entry adds a workload that does not register (a sidecar on its own
//! snapshot file, as on a machine outside the registration flow) to a mesh service, where
//! subsets select it by its labels.

mod support;

use http::StatusCode;
use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::mesh::{NO_APP, TestMesh, api, converged, spawn};
use support::{App, full, h1_client, read};

/// A call to `host` through the sidecar whose outbound listener is `out`.
async fn call(out: SocketAddr, host: &str) -> (StatusCode, String) {
    let req = http::Request::builder()
        .uri(format!("http://{out}/"))
        .header("host", host)
        .body(full(""))
        .expect("request");
    let (status, _, body) = read(h1_client().request(req).await.expect("call")).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What a test server saw: requests, and per request the server name and whether a client
/// certificate came.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    names: parking_lot::Mutex<Vec<(Option<String>, bool)>>,
}

/// An HTTP server on loopback answering `body`, failing its first `fail_first` requests with
/// 503, over TLS with `tls` when given.
async fn server(
    body: &'static str,
    fail_first: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (u16, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (record, tls) = (record.clone(), tls.clone());
            tokio::spawn(async move {
                let counter = record.clone();
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        let n = counter.requests.fetch_add(1, Ordering::SeqCst);
                        let status = if n < fail_first { 503 } else { 200 };
                        let mut resp = http::Response::new(full(body));
                        *resp.status_mut() = StatusCode::from_u16(status).expect("status");
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    },
                );
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                            .await;
                    }
                    Some(config) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        else {
                            return;
                        };
                        let (_, session) = stream.get_ref();
                        let name = session.server_name().map(str::to_string);
                        let client_cert =
                            session.peer_certificates().is_some_and(|c| !c.is_empty());
                        record.names.lock().push((name, client_cert));
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// A CA and what it signs, written as PEM files under `dir`.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: rustls::pki_types::CertificateDer<'static>,
    pem_path: std::path::PathBuf,
}

impl Ca {
    fn new(dir: &std::path::Path, name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed");
        let pem_path = dir.join(format!("{name}.pem"));
        std::fs::write(&pem_path, cert.pem()).expect("write ca");
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            der: cert.der().clone(),
            pem_path,
        }
    }

    /// A leaf for `names`; its certificate and key as PEM.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config presenting a leaf of `ca` for `names`, requiring a client certificate from
/// `clients` when given.
fn server_tls(ca: &Ca, names: &[&str], clients: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    let (cert, key) = ca.leaf(names);
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(c.der.clone()).expect("root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    Arc::new(builder.with_single_cert(chain, key).expect("server config"))
}

/// A ServiceEntry for `host` on port 80, served on loopback at `port`.
fn entry(name: &str, host: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: {name} }}
spec:
  hosts: [{host}]
  ports: [{{ number: 80, name: http, protocol: HTTP, targetPort: {port} }}]
  resolution: STATIC
  endpoints: [{{ address: 127.0.0.1 }}]
"
    )
}

/// A DestinationRule for `host` with `tls` as its `trafficPolicy.tls` (a YAML flow mapping).
fn tls_rule(name: &str, host: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: {name} }}
spec:
  host: {host}
  trafficPolicy:
    tls: {tls}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_services_and_destination_rules_shape_calls_to_hosts_outside_the_mesh() {
    // Two endpoints of api.example.com: v1 fails its first two requests, v2 always answers.
    let (v1_port, v1) = server("v1", 2, None).await;
    let (v2_port, v2) = server("v2", 0, None).await;
    let m = TestMesh::start();
    let orders = m.pod("orders", &[], NO_APP).await;
    let rules = |subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: example-api }}
spec:
  hosts: [api.example.com]
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: STATIC
  endpoints:
  - {{ address: 127.0.0.1, ports: {{ http: {v1_port} }}, labels: {{ version: v1 }} }}
  - {{ address: 127.0.0.1, ports: {{ http: {v2_port} }}, labels: {{ version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: example-api }}
spec:
  host: api.example.com
  subsets:
  - {{ name: v1, labels: {{ version: v1 }} }}
  - {{ name: v2, labels: {{ version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: example-api }}
spec:
  hosts: [api.example.com]
  http:
  - route: [{{ destination: {{ host: api.example.com, subset: {subset} }} }}]
    retries: {{ attempts: 3, retryOn: 5xx, perTryTimeout: 2s }}
    timeout: 6s
"
        )
    };
    m.apply("external.yaml", &rules("v1")).await;
    converged(m.cp, &m.op, 1, Duration::from_secs(30)).await;
    let out = orders.addr("outbound");
    // Istio's default policy would give up after 2 attempts; the VirtualService's 3 get
    // through, all to subset v1.
    assert_eq!(
        call(out, "api.example.com").await,
        (StatusCode::OK, "v1".into())
    );
    assert_eq!(
        v1.requests.load(Ordering::SeqCst),
        3,
        "two 503s and the 200"
    );
    assert_eq!(v2.requests.load(Ordering::SeqCst), 0, "subset v1 only");
    // Routing to v2 instead is followed.
    m.apply("external.yaml", &rules("v2")).await;
    converged(m.cp, &m.op, 1, Duration::from_secs(30)).await;
    for _ in 0..5 {
        assert_eq!(
            call(out, "api.example.com").await,
            (StatusCode::OK, "v2".into())
        );
    }
    assert_eq!(v1.requests.load(Ordering::SeqCst), 3);
    assert_eq!(v2.requests.load(Ordering::SeqCst), 5);
    // A rule naming an outside host no ServiceEntry declares gives it no route: the call goes
    // where an unknown host's calls go (passthrough, to a name that does not resolve here).
    m.apply(
        "other.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: elsewhere }
spec:
  host: api.elsewhere.example
",
    )
    .await;
    converged(m.cp, &m.op, 1, Duration::from_secs(30)).await;
    let (_, _, config) = read(
        h1_client()
            .request(support::get(orders.addr("admin"), "/config", &[]))
            .await
            .expect("config"),
    )
    .await;
    let routes: serde_json::Value = serde_json::from_slice(&config).expect("json");
    let services = routes["services"].as_object().expect("services");
    assert!(services.contains_key("api.example.com"), "{routes:#}");
    assert!(
        !services.contains_key("api.elsewhere.example"),
        "{routes:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_originates_tls_to_a_host_outside_the_mesh() {
    let m = TestMesh::start();
    let dir = m.dir.path();
    let ca = Ca::new(dir, "example-ca");
    let stranger = Ca::new(dir, "stranger-ca");
    let clients = Ca::new(dir, "client-ca");
    let (client_cert, client_key) = clients.leaf(&["orders.example.com"]);
    let client_cert_path = dir.join("client.pem");
    let client_key_path = dir.join("client-key.pem");
    std::fs::write(&client_cert_path, client_cert).expect("write");
    std::fs::write(&client_key_path, client_key).expect("write");
    // api.example.com speaks HTTPS only; mtls.example.com also wants a client certificate.
    let (https_port, https) = server(
        "over tls",
        0,
        Some(server_tls(
            &ca,
            &["api.example.com", "front.example.com"],
            None,
        )),
    )
    .await;
    let (mutual_port, mutual) = server(
        "over mutual tls",
        0,
        Some(server_tls(&ca, &["mtls.example.com"], Some(&clients))),
    )
    .await;
    let orders = m.pod("orders", &[], NO_APP).await;
    let out = orders.addr("outbound");
    let ca_file = ca.pem_path.display().to_string();
    let simple = format!("{{ mode: SIMPLE, caCertificates: {ca_file} }}");
    let yaml = [
        entry("example-api", "api.example.com", https_port),
        tls_rule("example-api", "api.example.com", &simple),
    ]
    .join("---\n");
    m.apply("tls.yaml", &yaml).await;
    converged(m.cp, &m.op, 1, Duration::from_secs(30)).await;

    // The app speaks plain HTTP; its sidecar speaks TLS, sending the host as the server name.
    assert_eq!(
        call(out, "api.example.com").await,
        (StatusCode::OK, "over tls".into())
    );
    assert_eq!(
        https.names.lock().last().cloned(),
        Some((Some("api.example.com".to_string()), false))
    );

    // A certificate from a CA the rule does not name fails the call before any request.
    let before = https.requests.load(Ordering::SeqCst);
    let wrong = format!(
        "{{ mode: SIMPLE, caCertificates: {} }}",
        stranger.pem_path.display()
    );
    m.apply("tls.yaml", &yaml.replace(&simple, &wrong)).await;
    converged(m.cp, &m.op, 1, Duration::from_secs(30)).await;
    let (status, _) = call(out, "api.example.com").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        https.requests.load(Ordering::SeqCst),
        before,
        "nothing sent"
    );

    // Another server name, and the certificate checked for one of subjectAltNames.
    let named = format!(
        "{{ mode: SIMPLE, caCertificates: {ca_file}, sni: front.example.com, subjectAltNames: [api.example.com] }}"
    );
    m.apply("tls.yaml", &yaml.replace(&simple, &named)).await;
    converged(m.cp, &m.op, 1, Duration::from_secs(30)).await;
    assert_eq!(
        call(out, "api.example.com").await,
        (StatusCode::OK, "over tls".into())
    );
    assert_eq!(
        https.names.lock().last().cloned(),
        Some((Some("front.example.com".to_string()), false))
    );

    // A file the sidecar cannot read: the sidecar refuses the snapshot, naming the field and
    // the file, and keeps serving the last good one.
    let missing = "{ mode: SIMPLE, caCertificates: /nonexistent/ca.pem }";
    m.apply("tls.yaml", &yaml.replace(&simple, missing)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let nack = loop {
        let st = api(m.cp, &m.op, http::Method::GET, "/v1/status").await;
        if let Some(n) = st["sidecars"][0]["nack"].as_str() {
            break n.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no NACK: {st:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        nack.contains("services.api.example.com.tls.caCertificates: /nonexistent/ca.pem"),
        "{nack}"
    );
    assert_eq!(
        call(out, "api.example.com").await,
        (StatusCode::OK, "over tls".into())
    );

    // MUTUAL presents the client certificate the server requires; SIMPLE does not, and fails.
    let mutual_yaml = |tls: &str| {
        [
            entry("mtls-api", "mtls.example.com", mutual_port),
            tls_rule("mtls-api", "mtls.example.com", tls),
        ]
        .join("---\n")
    };
    m.apply(
        "mutual.yaml",
        &mutual_yaml(&format!(
            "{{ mode: MUTUAL, caCertificates: {ca_file}, clientCertificate: {}, privateKey: {} }}",
            client_cert_path.display(),
            client_key_path.display()
        )),
    )
    .await;
    m.apply("tls.yaml", &yaml).await;
    converged(m.cp, &m.op, 1, Duration::from_secs(30)).await;
    assert_eq!(
        call(out, "mtls.example.com").await,
        (StatusCode::OK, "over mutual tls".into())
    );
    assert_eq!(
        mutual.names.lock().last().cloned(),
        Some((Some("mtls.example.com".to_string()), true))
    );
    m.apply("mutual.yaml", &mutual_yaml(&simple)).await;
    converged(m.cp, &m.op, 1, Duration::from_secs(30)).await;
    let served = mutual.requests.load(Ordering::SeqCst);
    let (status, body) = call(out, "mtls.example.com").await;
    // Under TLS 1.3 the server refuses a missing certificate after the client's handshake
    // is done, so the sidecar sees a reset rather than a connect failure: 503 either way.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(mutual.requests.load(Ordering::SeqCst), served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_internal_entry_adds_a_workload_that_does_not_register() {
    let m = TestMesh::start();
    let registered = App::start("payments-registered").await;
    let _payments = m
        .pod("payments", &[("version", "v1")], registered.addr)
        .await;
    let orders = m.pod("orders", &[], NO_APP).await;
    // The unregistered workload: a sidecar on its own snapshot file, in front of its app.
    let vm_app = App::start("payments-vm").await;
    let dir = m.dir.path();
    std::fs::write(dir.join("vm-snapshot.json"), r#"{"version": "vm"}"#).expect("write");
    let bootstrap = serde_json::json!({
        "service": "payments", "outbound": "127.0.0.1:0", "inbound": "127.0.0.1:0",
        "admin": "127.0.0.1:0", "app": vm_app.addr.to_string(), "snapshot": "vm-snapshot.json",
        "drainTimeout": "2s", "pluginDeadline": "1s", "workerThreads": 1,
    });
    let config = dir.join("vm.json");
    std::fs::write(&config, bootstrap.to_string()).expect("write");
    let vm = spawn(&["sidecar", "--config", config.to_str().expect("utf-8")]);
    let vm_port = vm.addr("inbound").port();
    m.apply(
        "vm.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: payments-vm }}
spec:
  hosts: [payments.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: STATIC
  endpoints:
  - {{ address: 127.0.0.1, ports: {{ http: {vm_port} }}, labels: {{ version: vm }}, serviceAccount: payments }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: payments }}
spec:
  host: payments
  subsets:
  - {{ name: v1, labels: {{ version: v1 }} }}
  - {{ name: vm, labels: {{ version: vm }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: payments }}
spec:
  hosts: [payments]
  http:
  - match: [{{ headers: {{ x-where: {{ exact: vm }} }} }}]
    route: [{{ destination: {{ host: payments, subset: vm }} }}]
  - route: [{{ destination: {{ host: payments, subset: v1 }} }}]
"
        ),
    )
    .await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;
    let out = orders.addr("outbound");
    let to = |where_: &str| {
        http::Request::builder()
            .uri(format!("http://{out}/hello"))
            .header("host", "payments")
            .header("x-where", where_)
            .body(full(""))
            .expect("request")
    };
    for _ in 0..3 {
        let (status, _, _) = read(h1_client().request(to("vm")).await.expect("call")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = read(h1_client().request(to("pod")).await.expect("call")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(vm_app.seen().len(), 3, "subset vm is the entry's workload");
    assert_eq!(registered.seen().len(), 3, "subset v1 the registered one");

    // An identity other than the service's is refused by path.
    let bad = support::mesh::write(
        dir,
        "bad.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: bad }
spec:
  hosts: [payments]
  location: MESH_INTERNAL
  ports: [{ number: 80, name: http }]
  resolution: DNS
  endpoints: [{ address: 127.0.0.1, serviceAccount: billing }]
",
    );
    let said = support::mesh::text(&support::mesh::weft(
        m.cp,
        &m.data,
        &["apply", "-f", bad.to_str().expect("utf-8")],
    ));
    for needle in [
        "spec.endpoints[0].serviceAccount: \"billing\": a workload of payments serves with payments's identity",
        "spec.resolution: DNS is not supported by Weft yet for MESH_INTERNAL",
    ] {
        assert!(said.contains(needle), "{needle:?} not in {said}");
    }
}
