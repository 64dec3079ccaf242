//! `weft control` replicas on one PostgreSQL (Debian's, started by the test): sidecar
//! processes spread across them keep every call through replicas killed with SIGKILL and
//! restarted, changes applied through any replica reach every sidecar exactly once, the CA's
//! root rotates with every replica signing from the same root, conflicting applies through two
//! replicas are decided by revision, and a stopped database refuses changes without failing a
//! call. Replicas and sidecars each listen on a loopback address of their own, as they would
//! on hosts of their own.

mod support;

use bytes::Bytes;
use http::Method;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::mesh::*;
use support::postgres::Postgres;
use support::{App, h1_client, read};
use weft::control::client::call;

/// A `weft control` replica on the shared store.
struct Replica {
    proc: Proc,
    addr: SocketAddr,
    data: PathBuf,
}

const KEY: &str = "6b1c0f7e2d9a4c3b8e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5";

/// Starts replica `i` on `listen` (`127.0.0.1:0`, or the address it had before a restart).
fn replica(dir: &Path, i: usize, listen: &str, pg: &str) -> Replica {
    replica_with(dir, i, listen, pg, &[])
}

/// [`replica`] with more arguments.
fn replica_with(dir: &Path, i: usize, listen: &str, pg: &str, more: &[&str]) -> Replica {
    let data = dir.join(format!("replica-{i}"));
    let key = dir.join("store.key");
    std::fs::write(&key, KEY).expect("key file");
    let log = dir.join(format!("replica-{i}.log"));
    let key = key.to_str().expect("utf-8").to_string();
    let data_arg = data.to_str().expect("utf-8").to_string();
    let mut args = vec![
        "control",
        "--data",
        &data_arg,
        "--listen",
        listen,
        "--lease",
        "3s",
        "--cert-lifetime",
        "3s",
        "--store",
        pg,
        "--store-key-file",
        &key,
    ];
    args.extend_from_slice(more);
    let proc = spawn_logged(&args, Some(&log));
    let addr = proc.addr("api");
    remember(addr, &data);
    Replica { proc, addr, data }
}

/// A sidecar process of `service` at `version` in front of `app`, its bootstrap listing every
/// replica (`addrs[first]` first) and holding `extra`; it logs beside its bootstrap.
fn replicated_pod(
    dir: &Path,
    addrs: &[SocketAddr],
    first: usize,
    token: &str,
    (service, version): (&str, &str),
    app: SocketAddr,
    mut extra: serde_json::Value,
) -> Proc {
    let replicas: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    extra["controlPlane"] = serde_json::json!({"address": addrs[first].to_string(),
        "token": token, "caFile": bundle_file(addrs[0]), "replicas": replicas});
    let log = dir.join(format!("{service}-{version}.log"));
    sidecar_with(
        dir,
        addrs[first],
        token,
        service,
        &[("version", version)],
        app,
        extra,
        Some(&log),
    )
}

/// `/v1/status` of the replica at `cp`, or none when it does not answer.
async fn status(cp: SocketAddr, op: &str) -> Option<serde_json::Value> {
    let bytes = call(&endpoint(cp), op, Method::GET, "/v1/status", Bytes::new())
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Waits until every replica in `live` is at `revision` and `n` sidecars, connected across
/// them, run what they were sent; returns how many each replica holds.
async fn converged_across(live: &[SocketAddr], op: &str, revision: u64, n: usize) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut per = Vec::new();
        let mut ids = Vec::new();
        let mut done = true;
        for cp in live {
            let Some(st) = status(*cp, op).await else {
                done = false;
                per.push(0);
                continue;
            };
            done &= st["revision"] == revision;
            let connected: Vec<&serde_json::Value> = st["sidecars"]
                .as_array()
                .map(|a| a.iter().filter(|s| s["connected"] == true).collect())
                .unwrap_or_default();
            done &= connected
                .iter()
                .all(|s| s["acked"] == s["sent"] && s.get("nack").is_none() && s["acked"] != "");
            per.push(connected.len());
            ids.extend(connected.iter().map(|s| s["id"].to_string()));
        }
        ids.sort();
        ids.dedup();
        if done && ids.len() == n && per.iter().sum::<usize>() == n {
            return per;
        }
        assert!(
            Instant::now() < deadline,
            "not converged at revision {revision} with {n} sidecars: {per:?} {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The replica doing the singleton work, once exactly one of `live` says it does.
async fn singleton(live: &[SocketAddr], op: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut leaders = Vec::new();
        for cp in live {
            if status(*cp, op)
                .await
                .is_some_and(|st| st["store"]["singleton"] == true)
            {
                leaders.push(*cp);
            }
        }
        if let [one] = leaders.as_slice() {
            return *one;
        }
        assert!(Instant::now() < deadline, "singletons: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls through `orders` until `stop`; (calls, failures).
// Says what the first failed call was, for a failure's report.
#[allow(clippy::print_stdout)]
fn steady_load(
    orders: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let client = h1_client();
        let (calls, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (client, stop, calls, failed) =
                (client.clone(), stop.clone(), calls.clone(), failed.clone());
            set.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    calls.fetch_add(1, Ordering::Relaxed);
                    match client.request(charge(orders)).await {
                        Ok(r) if r.status() == http::StatusCode::OK => {
                            let _ = read(r).await;
                        }
                        other => {
                            if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                println!("a failed call: {other:?}");
                            }
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        (
            calls.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        )
    })
}

/// Applies `yaml` through the replica at `cp`; the CLI's output.
fn apply(dir: &Path, cp: SocketAddr, data: &Path, name: &str, yaml: &str) -> String {
    let file = write(dir, name, yaml);
    let out = weft(
        cp,
        data,
        &["apply", "--no-wait", "-f", file.to_str().expect("utf-8")],
    );
    assert!(
        out.status.success(),
        "apply {name} through {cp}: {}",
        text(&out)
    );
    text(&out)
}

fn bundle_of(cp: SocketAddr) -> String {
    std::fs::read_to_string(bundle_file(cp)).expect("bundle.pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_killed_and_restarted_under_load_fail_no_call_and_apply_each_change_once() {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("postgres");
    let dir = tempfile::tempdir().expect("dir");
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| replica(dir.path(), i, &format!("127.0.0.{}:0", 11 + i), &pg.url))
        .collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let op = token(&replicas[0].data);
    for r in &replicas[1..] {
        assert_eq!(token(&r.data), op, "one operator token for every replica");
        assert_eq!(
            bundle_of(r.addr),
            bundle_of(addrs[0]),
            "one CA for every replica"
        );
    }
    // The database holds the CA's key sealed, never in clear.
    let dump = std::process::Command::new("psql")
        .args([pg.url.as_str(), "-At", "-c", "SELECT sealed FROM weft_ca"])
        .output()
        .expect("psql");
    let sealed = String::from_utf8_lossy(&dump.stdout);
    assert!(sealed.starts_with("sealed1:"), "{sealed}");
    assert!(!sealed.contains("PRIVATE KEY"));

    let (pay, ord) = (
        service_token(addrs[0], &op, "payments").await,
        service_token(addrs[1], &op, "orders").await,
    );
    let (v1, v2) = (
        App::start("payments-v1").await,
        App::start("payments-v2").await,
    );
    // Each sidecar names one replica first and the others as alternatives (it starts at a
    // random one of them).
    let pod = |i: usize, token: &str, service: &str, version: &str, app: SocketAddr| {
        // As on hosts of their own: each replica and each sidecar on an address of its own,
        // the sidecars registering the inbound address peers reach them at.
        let on_its_host = serde_json::json!({"mtls": "STRICT",
            "inbound": format!("127.0.0.{}:0", 21 + i),
            "admin": format!("127.0.0.{}:0", 21 + i)});
        replicated_pod(
            dir.path(),
            &addrs,
            i,
            token,
            (service, version),
            app,
            on_its_host,
        )
    };
    let _p1 = pod(0, &pay, "payments", "v1", v1.addr);
    let _p2 = pod(1, &pay, "payments", "v2", v2.addr);
    let orders = pod(2, &ord, "orders", "v1", NO_APP);
    apply(dir.path(), addrs[0], &replicas[0].data, "seed.yaml", SEED);
    let mut revision = 1;
    converged_across(&addrs, &op, revision, 3).await;
    // How long a change applied through one replica takes to be running on every sidecar,
    // whichever replica it is on (printed: speed is measured, not asserted).
    let mut took = Vec::new();
    for (n, (a, b)) in [(90, 10), (85, 15), (90, 10), (85, 15), (90, 10)]
        .into_iter()
        .enumerate()
    {
        let started = Instant::now();
        apply(
            dir.path(),
            addrs[0],
            &replicas[0].data,
            &format!("m{n}.yaml"),
            &reweighted(a, b),
        );
        revision += 1;
        converged_across(&addrs, &op, revision, 3).await;
        took.push(started.elapsed());
    }
    took.sort();
    println!("apply through one replica -> every sidecar on three replicas ACKs: {took:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(orders.addr("outbound"), stop.clone());
    // Kill the singleton, then the next one; apply through whichever replica is up.
    let mut dead = Vec::new();
    for weight in [50, 20] {
        let live: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| !dead.contains(a))
            .collect();
        let leader = singleton(&live, &op).await;
        let i = addrs.iter().position(|a| *a == leader).expect("a replica");
        replicas[i].proc.kill();
        let killed = Instant::now();
        dead.push(leader);
        let live: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| !dead.contains(a))
            .collect();
        // Every sidecar connected to a living replica and running what it ran (printed).
        converged_across(&live, &op, revision, 3).await;
        println!(
            "kill -9 of {leader} -> every sidecar on another replica: {:?}",
            killed.elapsed()
        );
        let through = live[0];
        let data = replicas[addrs.iter().position(|a| *a == through).expect("replica")]
            .data
            .clone();
        let out = apply(
            dir.path(),
            through,
            &data,
            &format!("w{weight}.yaml"),
            &reweighted(100 - weight, weight),
        );
        revision += 1;
        assert!(out.contains(&format!("revision {revision}")), "{out}");
        let per = converged_across(&live, &op, revision, 3).await;
        println!("killed {leader} (the singleton); now {per:?} sidecars on {live:?}");
        // A singleton again among the living, and its gauge says so.
        singleton(&live, &op).await;
        let mut gauges = 0;
        for cp in &live {
            gauges += metric(*cp, "weft_control_singleton").await;
        }
        assert_eq!(gauges, 1, "one singleton gauge at 1 among {live:?}");
    }
    // The killed replicas come back on their addresses; a change through one reaches all.
    for a in dead.clone() {
        let i = addrs.iter().position(|x| *x == a).expect("replica");
        replicas[i] = replica(dir.path(), i, &a.to_string(), &pg.url);
    }
    let out = apply(
        dir.path(),
        addrs[0],
        &replicas[0].data,
        "w10.yaml",
        &reweighted(90, 10),
    );
    revision += 1;
    assert!(out.contains(&format!("revision {revision}")), "{out}");
    converged_across(&addrs, &op, revision, 3).await;

    // Root rotation, each step through another replica, a renewal (≤ 2.1 s) apart; every
    // replica publishes the same bundle after each.
    let renewal = Duration::from_millis(3_500);
    for (i, verb, roots) in [(1, "rotate", 2), (2, "activate", 2), (0, "retire", 1)] {
        let out = weft(addrs[i], &replicas[i].data, &["ca", verb]);
        assert!(out.status.success(), "ca {verb}: {}", text(&out));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut signers = Vec::new();
            for a in &addrs {
                let st = status(*a, &op).await.expect("status");
                signers.push(st["ca"]["signer"].as_str().unwrap_or_default().to_string());
            }
            let bundles_agree = addrs.iter().all(|a| bundle_of(*a) == bundle_of(addrs[i]));
            if bundles_agree && signers.iter().all(|s| *s == signers[0]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replicas disagree after {verb}: signers {signers:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            bundle_of(addrs[i]).matches("BEGIN CERTIFICATE").count(),
            roots,
            "{verb}"
        );
        tokio::time::sleep(renewal).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (calls, failed) = load.await.expect("load");
    println!("replicas killed, restarted, root rotated: {calls} calls, {failed} failed");
    assert_eq!(failed, 0, "of {calls} calls");
    assert!(calls >= 1_000, "{calls}");

    // Every change is in the history exactly once, in order.
    let history = api(addrs[2], &op, Method::GET, "/v1/history").await;
    let revisions: Vec<u64> = history
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|c| c["revision"].as_u64())
        .collect();
    assert_eq!(revisions, (1..=revision).collect::<Vec<_>>());
    drop(replicas);
    drop(pg);
}

/// The value of unlabelled series `name` in the replica's `/metrics`.
async fn metric(cp: SocketAddr, name: &str) -> i64 {
    let req = http::Request::get("/metrics")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let resp = endpoint(cp).send(req).await.expect("metrics");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or_else(|| panic!("no {name} at {cp}"), |v| v as i64)
}

/// A sidecar's admin `/endpoints`.
async fn endpoints(admin: SocketAddr) -> String {
    let resp = h1_client()
        .request(support::get(admin, "/endpoints", &[]))
        .await
        .expect("admin");
    String::from_utf8_lossy(&read(resp).await.2).into_owned()
}

/// `GET /readyz` of the replica at `cp`: its status code.
async fn readiness(cp: SocketAddr) -> u16 {
    let req = http::Request::get("/readyz")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    match endpoint(cp).send(req).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_applies_are_decided_by_revision_and_a_stopped_database_fails_no_call() {
    let mut pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("postgres");
    let dir = tempfile::tempdir().expect("dir");
    let replicas: Vec<Replica> = (0..2)
        .map(|i| replica(dir.path(), i, "127.0.0.1:0", &pg.url))
        .collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let op = token(&replicas[0].data);
    let (pay, ord) = (
        service_token(addrs[0], &op, "payments").await,
        service_token(addrs[0], &op, "orders").await,
    );
    let (v1, v2) = (
        App::start("payments-v1").await,
        App::start("payments-v2").await,
    );
    let pod = |i: usize, token: &str, service: &str, version: &str, app: SocketAddr| {
        replicated_pod(
            dir.path(),
            &addrs,
            i,
            token,
            (service, version),
            app,
            serde_json::json!({}),
        )
    };
    let _p1 = pod(0, &pay, "payments", "v1", v1.addr);
    let _p2 = pod(1, &pay, "payments", "v2", v2.addr);
    let orders = pod(1, &ord, "orders", "v1", NO_APP);
    apply(dir.path(), addrs[0], &replicas[0].data, "seed.yaml", SEED);
    converged_across(&addrs, &op, 1, 3).await;
    // `--wait` through one replica says it cannot wait for the others' sidecars.
    let seed = write(dir.path(), "seed-again.yaml", SEED);
    let again = weft(
        addrs[0],
        &replicas[0].data,
        &["apply", "--wait", "-f", seed.to_str().expect("utf-8")],
    );
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again)
            .contains("sidecars connected to other control-plane replicas are not waited for"),
        "{}",
        text(&again)
    );

    // Two operators read the route through different replicas and change it at once: one
    // change wins, the other is refused naming the revision it lost to.
    let listed = weft(addrs[1], &replicas[1].data, &["get", "vs", "payments"]);
    let listed = text(&listed);
    assert!(listed.contains("resourceVersion: \"1\""), "{listed}");
    let edit = |v1: u32, v2: u32| {
        listed
            .replace("weight: 95", &format!("weight: {v1}"))
            .replace("weight: 5\n", &format!("weight: {v2}\n"))
    };
    let (a, b) = (edit(50, 50), edit(80, 20));
    let (fa, fb) = (
        write(dir.path(), "a.yaml", &a),
        write(dir.path(), "b.yaml", &b),
    );
    let (cp_a, data_a, cp_b, data_b) = (
        addrs[0],
        replicas[0].data.clone(),
        addrs[1],
        replicas[1].data.clone(),
    );
    let ta = std::thread::spawn(move || {
        weft(
            cp_a,
            &data_a,
            &["apply", "--no-wait", "-f", fa.to_str().expect("utf-8")],
        )
    });
    let tb = std::thread::spawn(move || {
        weft(
            cp_b,
            &data_b,
            &["apply", "--no-wait", "-f", fb.to_str().expect("utf-8")],
        )
    });
    let (oa, ob) = (ta.join().expect("a"), tb.join().expect("b"));
    let (won, lost) = match (oa.status.success(), ob.status.success()) {
        (true, false) => (text(&oa), text(&ob)),
        (false, true) => (text(&ob), text(&oa)),
        _ => panic!("exactly one must win:\n{}\n{}", text(&oa), text(&ob)),
    };
    assert!(won.contains("revision 2"), "{won}");
    assert!(lost.contains("409"), "{lost}");
    assert!(
        lost.contains("metadata.resourceVersion is 1, but it was changed at revision 2"),
        "{lost}"
    );
    converged_across(&addrs, &op, 2, 3).await;

    // The database stops for 10 s under load.
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(orders.addr("outbound"), stop.clone());
    tokio::task::block_in_place(|| pg.stop());
    let stopped = Instant::now();
    for cp in &addrs {
        assert_eq!(readiness(*cp).await, 503, "{cp} ready without its store");
        assert_eq!(metric(*cp, "weft_control_store_up").await, 0, "{cp}");
    }
    let file = write(dir.path(), "down.yaml", &reweighted(70, 30));
    let out = weft(
        addrs[1],
        &replicas[1].data,
        &["apply", "--no-wait", "-f", file.to_str().expect("utf-8")],
    );
    let refused = text(&out);
    assert!(!out.status.success(), "{refused}");
    assert!(
        refused.contains("503") && refused.contains("PostgreSQL store: unreachable"),
        "{refused}"
    );
    assert!(
        refused.contains("apply again when the store is back"),
        "{refused}"
    );
    // Reads are served from memory meanwhile.
    let got = weft(addrs[0], &replicas[0].data, &["get", "vs", "payments"]);
    assert!(got.status.success(), "{}", text(&got));
    // A sidecar joins meanwhile through the replica orders is not on: it is served, and its
    // registration reaches the store, and orders through the other replica, once the store
    // is back.
    let mut orders_on = None;
    for (i, cp) in addrs.iter().enumerate() {
        let st = status(*cp, &op).await.expect("status");
        if st["sidecars"].as_array().is_some_and(|a| {
            a.iter()
                .any(|s| s["connected"] == true && s["service"].to_string().contains("orders"))
        }) {
            orders_on = Some(i);
        }
    }
    let elsewhere = 1 - orders_on.expect("orders is on a replica");
    let v4 = App::start("payments-v4").await;
    let late = sidecar(
        dir.path(),
        addrs[elsewhere],
        &pay,
        "payments",
        &[("version", "v4")],
        v4.addr,
    );
    let late_at = late.addr("inbound").to_string();
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    tokio::task::block_in_place(|| pg.restart());
    let deadline = Instant::now() + Duration::from_secs(10);
    for cp in &addrs {
        while readiness(*cp).await != 200 {
            assert!(
                Instant::now() < deadline,
                "{cp} not ready after the store came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let out = apply(
        dir.path(),
        addrs[1],
        &replicas[1].data,
        "back.yaml",
        &reweighted(70, 30),
    );
    assert!(out.contains("revision 3"), "{out}");
    converged_across(&addrs, &op, 3, 4).await;
    let admin = orders.addr("admin");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !endpoints(admin).await.contains(&late_at) {
        assert!(
            Instant::now() < deadline,
            "a sidecar registered during the outage never reached the other replica's callers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(addrs[1], "weft_control_store_up").await, 1);
    stop.store(true, Ordering::SeqCst);
    let (calls, failed) = load.await.expect("load");
    println!("database stopped for 10 s: {calls} calls, {failed} failed");
    assert_eq!(failed, 0, "of {calls} calls");
    assert!(calls >= 1_000, "{calls}");

    // A sidecar that knows only one replica dies with it (its machine lost): the surviving
    // replica, now the singleton, sweeps its registration once the dead replica has been
    // silent and the lease has run, and its endpoint leaves the callers' tables.
    drop(late);
    let v3 = App::start("payments-v3").await;
    let mut lone = sidecar(
        dir.path(),
        addrs[1],
        &pay,
        "payments",
        &[("version", "v3")],
        v3.addr,
    );
    let lone_at = lone.addr("inbound").to_string();
    converged_across(&addrs, &op, 3, 4).await;
    assert!(endpoints(admin).await.contains(&lone_at));
    let mut replicas = replicas;
    replicas[1].proc.kill();
    lone.kill();
    let killed = Instant::now();
    while endpoints(admin).await.contains(&lone_at) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the dead sidecar's endpoint is still served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "a sidecar lost with its replica left the callers' tables after {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reach_the_database_over_verified_tls() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = support::loopback_tls("database test CA");
    let pg = tokio::task::spawn_blocking(move || Postgres::start_tls(&cert, &key))
        .await
        .expect("postgres");
    let ca_file = write(dir.path(), "db-ca.pem", &ca);
    let url = format!("{}?sslmode=require", pg.url);

    // A replica that cannot verify the database's certificate does not start.
    std::fs::write(dir.path().join("store.key"), KEY).expect("key");
    let refused = tokio::task::spawn_blocking({
        let (dir, url) = (dir.path().to_path_buf(), url.clone());
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
                .args(["control", "--listen", "127.0.0.1:0", "--store", &url])
                .arg("--data")
                .arg(dir.join("untrusting"))
                .arg("--store-key-file")
                .arg(dir.join("store.key"))
                .output()
                .expect("run weft control")
        }
    })
    .await
    .expect("join");
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("certificate"), "{said}");

    // One given the database's CA starts, keeps a change, and its connections are encrypted.
    let r = replica_with(
        dir.path(),
        0,
        "127.0.0.1:0",
        &url,
        &["--store-ca-file", ca_file.to_str().expect("utf-8")],
    );
    let out = apply(dir.path(), r.addr, &r.data, "seed.yaml", SEED);
    assert!(out.contains("revision 1"), "{out}");
    // The store's calls, its listener and its lease: three connections, all over TLS.
    let sessions = |ssl: bool| {
        let count = std::process::Command::new("psql")
            .args([
                url.as_str(),
                "-At",
                "-c",
                &format!(
                    "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                     WHERE a.application_name = 'weft-control' AND s.ssl = {ssl}"
                ),
            ])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&count.stdout)
            .trim()
            .parse::<u32>()
            .unwrap_or_else(|_| panic!("psql: {}", text(&count)))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sessions(true) < 3 {
        assert!(
            Instant::now() < deadline,
            "{} sessions over TLS",
            sessions(true)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sessions(false), 0, "a session without TLS");
    drop(r);
}
