//! Changes to the mesh: `apply` and `delete` of Istio resources, each validated against the
//! whole state it would produce, saved, and only then made current and pushed; the listing
//! `weft get` reads.

use super::api::{Body, error, errors, json};
use super::compile;
use super::configs;
use super::istio::{self, Kind, Resource};
use super::registry::push;
use super::server::{Mesh, Shared, now_ms};
use super::store::{Change, CommitError, State, Stored, key};
use super::wire::Pushed;
use http::{Response, StatusCode};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Parses stored documents back into resources.
pub(super) fn parse_stored(state: &State) -> Result<Vec<Resource>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (k, stored) in &state.resources {
        match istio::from_document(resolved(&stored.document, &state.fetched), k) {
            Ok(r) => out.push(r),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Fetches the `http(s)://` and `oci://` URLs of the WasmPlugins in `parsed` into the store,
/// as their pull policy says (once, or at every apply); returns url → digest of what was
/// fetched. A `spec.sha256` pins what the URL must give. Where signatures are required, the
/// signatures published with it are fetched too (the OCI signature image, `<url>.sig`).
async fn fetch_remote(
    shared: &Arc<Shared>,
    parsed: &[Resource],
) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut fetched = BTreeMap::new();
    let mut errs = Vec::new();
    for r in parsed {
        let istio::Spec::WasmPlugin(wp) = &r.spec else {
            continue;
        };
        let Ok(istio::WasmSource::Http(url)) = wp.source() else {
            continue;
        };
        let at = format!("{}: spec.url: {url}", r.origin());
        let known = fetched
            .get(&url)
            .cloned()
            .or_else(|| shared.mesh.lock().state.fetched.get(&url).cloned());
        // What spec.sha256 says of the component of sha256 `digest`, if it pins another.
        let mismatch = |digest: &str| {
            wp.digest().filter(|pin| pin != digest).map(|pin| {
                format!("{at}: it gave a component of sha256 {digest}, but spec.sha256 pins {pin}")
            })
        };
        if let Some(digest) = known.filter(|_| fetched.contains_key(&url) || !wp.pulls_always()) {
            errs.extend(mismatch(&digest));
            continue;
        }
        let signed = shared.signing.requires(&r.namespace);
        let got: Result<(bytes::Bytes, Vec<String>), String> = async {
            if url.starts_with("oci://") {
                let reference = super::fetch::oci::Reference::parse(&url)?;
                let credentials = match &wp.image_pull_secret {
                    Some(name) => Some(pull_credentials(shared, &r.namespace, name, &reference)?),
                    None => None,
                };
                let pulled = shared.fetcher.oci(&reference, credentials.as_ref()).await?;
                let signatures = if signed {
                    shared
                        .fetcher
                        .oci_signatures(&reference, &pulled.manifest_digest, credentials.as_ref())
                        .await?
                } else {
                    Vec::new()
                };
                Ok((pulled.wasm.into(), signatures))
            } else {
                let bytes = shared.fetcher.url(&url).await?;
                let signatures = if signed {
                    shared
                        .fetcher
                        .url_signature(&url)
                        .await?
                        .into_iter()
                        .collect()
                } else {
                    Vec::new()
                };
                Ok((bytes, signatures))
            }
        }
        .await;
        let (bytes, signatures) = match got {
            Ok(got) => got,
            Err(e) => {
                errs.push(format!("{at}: {e}"));
                continue;
            }
        };
        // Before storing: content the pin refuses is not kept.
        if let Some(wrong) = mismatch(&crate::plugin::sha256_hex(&bytes)) {
            errs.push(wrong);
            continue;
        }
        // Checked as a push is: a broken download is refused here, not by every sidecar.
        match super::artifacts::store_checked(shared, bytes, super::checker::Check::Quick).await {
            Ok(d) => {
                for s in &signatures {
                    if let Err(e) = shared.store.add_signature(&d, s) {
                        errs.push(format!("{at}: keeping its signature: {e}"));
                    }
                }
                fetched.insert(url, d);
            }
            Err((_, e)) => errs.push(format!("{at}: {e}")),
        }
    }
    if errs.is_empty() {
        Ok(fetched)
    } else {
        Err(errs)
    }
}

/// Has each plugin configure itself with every configuration the resources give it, as the
/// sidecars will: a configuration a plugin refuses is refused here, naming the field, and
/// never reaches a sidecar.
async fn judge_configs(
    shared: &Arc<Shared>,
    parsed: &[Resource],
    fetched: &BTreeMap<String, String>,
) -> Result<(), Vec<String>> {
    let known = shared.mesh.lock().state.fetched.clone();
    let digest_of = |url: &str| fetched.get(url).or_else(|| known.get(url)).cloned();
    let uses: Vec<configs::Use> = parsed
        .iter()
        .flat_map(|r| configs::of(r, &digest_of))
        .collect();
    if uses.is_empty() {
        return Ok(());
    }
    let judging = shared.clone();
    let judged = tokio::task::spawn_blocking(move || {
        // Several fields may give a plugin the same configuration: it is judged once.
        let mut verdicts: BTreeMap<(configs::Code, String, String), Result<(), String>> =
            BTreeMap::new();
        let mut errors = Vec::new();
        for u in uses {
            let verdict = verdicts
                .entry((u.code.clone(), u.name.clone(), u.config.clone()))
                .or_insert_with(|| {
                    let bytes: Option<std::borrow::Cow<'static, [u8]>> = match &u.code {
                        configs::Code::Builtin(name) => {
                            crate::snapshot::builtin_bytes(name).map(Into::into)
                        }
                        // A digest the store lacks is validation's to report.
                        configs::Code::Stored(digest) => {
                            judging.store.artifact(digest).map(Into::into)
                        }
                    };
                    match bytes {
                        Some(bytes) => judging
                            .checker
                            .configure(&u.name, &bytes, &u.config, &u.root_id),
                        None => Ok(()),
                    }
                });
            if let Err(reason) = verdict {
                errors.push(configs::at_field(&u.at, reason));
            }
        }
        errors
    })
    .await;
    match judged {
        Ok(errors) if errors.is_empty() => Ok(()),
        Ok(errors) => Err(errors),
        Err(e) => Err(vec![format!(
            "judging the plugin configurations failed: {e}"
        )]),
    }
}

/// Stored documents with fetched URLs replaced by their digests, as the compiler reads them.
fn resolved(doc: &serde_json::Value, fetched: &BTreeMap<String, String>) -> serde_json::Value {
    let mut doc = doc.clone();
    if let Some(url) = doc.pointer_mut("/spec/url")
        && let Some(d) = url.as_str().and_then(|u| fetched.get(u))
    {
        *url = serde_json::Value::String(format!("sha256:{d}"));
    }
    doc
}

pub(super) async fn apply(shared: &Arc<Shared>, source: &str, body: &[u8]) -> Response<Body> {
    let Ok(text) = std::str::from_utf8(body) else {
        return error(StatusCode::BAD_REQUEST, format!("{source}: not UTF-8 text"));
    };
    let parsed = match istio::parse_yaml(text, source) {
        Ok(p) => p,
        Err(e) => return errors(StatusCode::BAD_REQUEST, e),
    };
    if parsed.is_empty() {
        return error(StatusCode::BAD_REQUEST, format!("{source}: no resources"));
    }
    let fetched = match fetch_remote(shared, &parsed).await {
        Ok(f) => f,
        Err(e) => return errors(StatusCode::BAD_REQUEST, e),
    };
    let unsigned = unsigned_plugins(shared, &parsed, &fetched);
    if !unsigned.is_empty() {
        return errors(StatusCode::BAD_REQUEST, unsigned);
    }
    if let Err(e) = judge_configs(shared, &parsed, &fetched).await {
        return errors(StatusCode::BAD_REQUEST, e);
    }
    // Checked against the state in force; a replica that finds the shared store moved on
    // catches up and checks again, so a change is never checked against a state it does not
    // land on.
    until_current(
        shared,
        |caught_up| apply_parsed(shared, &parsed, &fetched, caught_up),
        "not applied: the mesh kept changing through other replicas while this apply was checked",
    )
    .await
}

/// Runs `attempt` until it is not stale, catching up with the shared store in between (and
/// telling it so); past [`STALE_RETRIES`], 409 saying `refused` and the store's revision.
async fn until_current(
    shared: &Arc<Shared>,
    attempt: impl Fn(bool) -> Result<Response<Body>, u64>,
    refused: &str,
) -> Response<Body> {
    let mut revision = 0;
    for tries in 0..STALE_RETRIES {
        match attempt(tries > 0) {
            Ok(response) => return response,
            Err(now) => revision = now,
        }
        catch_up(shared).await;
    }
    error(
        StatusCode::CONFLICT,
        format!("{refused} (now at revision {revision}); try again"),
    )
}

/// How often a change is checked again after finding the shared store moved on.
const STALE_RETRIES: usize = 5;

/// Brings this replica up to the shared store.
async fn catch_up(shared: &Arc<Shared>) {
    let syncing = shared.clone();
    match tokio::task::spawn_blocking(move || super::replicas::sync(&syncing)).await {
        Ok(Ok(true)) => super::replicas::warm(shared),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!("catching up with the store: {e}"),
        Err(e) => tracing::warn!("catching up with the store: {e}"),
    }
}

/// The revision an applied document says it was read at (`metadata.resourceVersion`).
fn read_at(r: &Resource) -> Result<Option<u64>, String> {
    match r.document.pointer("/metadata/resourceVersion") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(v))
            if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() =>
        {
            v.parse().map(Some).map_err(|_| {
                format!(
                    "{}: metadata.resourceVersion: {v:?} is not a revision",
                    r.origin()
                )
            })
        }
        Some(other) => Err(format!(
            "{}: metadata.resourceVersion: expected the revision `weft get` shows, as a string of digits, found {other}",
            r.origin()
        )),
    }
}

/// The document as kept: the revision it was read at is the store's to say, not part of it.
fn as_kept(r: &Resource) -> serde_json::Value {
    let mut doc = r.document.clone();
    if let Some(meta) = doc.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
    }
    doc
}

/// One attempt at an apply under the mesh lock; `Err` with the store's revision when another
/// replica moved it on since this replica's state. `caught_up`: this replica has just read
/// the shared store.
fn apply_parsed(
    shared: &Shared,
    parsed: &[Resource],
    fetched: &BTreeMap<String, String>,
    caught_up: bool,
) -> Result<Response<Body>, u64> {
    let mut mesh = shared.mesh.lock();
    let mut next = mesh.state.clone();
    // Optimistic concurrency as Kubernetes does it: a document carrying the revision it was
    // read at is applied only if the resource is still at that revision.
    let mut conflicts = Vec::new();
    for r in parsed {
        let at = match read_at(r) {
            Ok(Some(at)) => at,
            Ok(None) => continue,
            Err(e) => return Ok(error(StatusCode::BAD_REQUEST, e)),
        };
        if at > mesh.state.revision && shared.store.shared() && !caught_up {
            // Perhaps read through a replica ahead of this one: catch up and judge again.
            return Err(at);
        }
        let kind = r.kind.to_string();
        let held = mesh
            .state
            .resources
            .get(&key(&kind, &r.namespace, &r.name))
            .map(|s| s.revision);
        if held != Some(at) {
            conflicts.push(match held {
                _ if at > mesh.state.revision => format!(
                    "{kind} {}/{}: metadata.resourceVersion is {at}, but the mesh is at revision {}: not a revision `weft get` showed",
                    r.namespace, r.name, mesh.state.revision
                ),
                Some(now) => format!(
                    "{kind} {}/{}: metadata.resourceVersion is {at}, but it was changed at revision {now} since: get it again and reapply",
                    r.namespace, r.name
                ),
                None => format!(
                    "{kind} {}/{}: metadata.resourceVersion is {at}, but it does not exist (deleted since?)",
                    r.namespace, r.name
                ),
            });
        }
    }
    if !conflicts.is_empty() {
        return Ok(errors(StatusCode::CONFLICT, conflicts));
    }
    // A URL pulled again that now gives other content changes the resources naming it.
    let moved: Vec<String> = fetched
        .iter()
        .filter(|(url, d)| next.fetched.get(*url).is_some_and(|old| old != *d))
        .map(|(url, _)| url.clone())
        .collect();
    next.fetched.extend(fetched.clone());
    let revision = next.revision + 1;
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for r in parsed {
        let kind = r.kind.to_string();
        let k = key(&kind, &r.namespace, &r.name);
        let label = format!("{kind} {}/{}", r.namespace, r.name);
        let pulled_anew = matches!(&r.spec, istio::Spec::WasmPlugin(wp) if moved.iter().any(|u| u == wp.url.trim()));
        let document = as_kept(r);
        if next.resources.get(&k).map(|s| &s.document) == Some(&document) && !pulled_anew {
            unchanged.push(label);
            continue;
        }
        next.resources.insert(
            k,
            Stored {
                kind,
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                revision,
                document,
            },
        );
        changed.push(label);
    }
    if changed.is_empty() {
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({"revision": next.revision, "changed": [], "unchanged": unchanged, "warnings": []}),
        ));
    }
    let (resources, warnings) = match check(shared, &mesh.config, &next) {
        Ok(ok) => ok,
        Err(e) => return Ok(errors(StatusCode::BAD_REQUEST, e)),
    };
    next.revision = revision;
    let pushed = match commit(
        shared,
        &mut mesh,
        next,
        resources,
        changed.iter().map(|c| format!("apply {c}")).collect(),
    ) {
        Ok(pushed) => pushed,
        Err(Refused::Stale(now)) => return Err(now),
        Err(Refused::Failed(status, why)) => return Ok(error(status, why)),
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"revision": revision, "changed": changed, "unchanged": unchanged,
                            "warnings": warnings, "pushed": pushed}),
    ))
}

/// Parses and validates the whole state a change would produce.
fn check(
    shared: &Shared,
    config: &crate::control::mesh_config::MeshConfig,
    next: &State,
) -> Result<(Vec<Resource>, Vec<String>), Vec<String>> {
    let mut resources = Vec::new();
    let mut errs = Vec::new();
    for (k, s) in &next.resources {
        match istio::from_document(resolved(&s.document, &next.fetched), k) {
            Ok(r) => resources.push(r),
            Err(e) => errs.extend(e),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let known = |d: &str| shared.store.has_artifact(d);
    let warnings = compile::validate(&resources, &known)?;
    let unknown = config.undefined_providers(&resources);
    if !unknown.is_empty() {
        return Err(unknown);
    }
    Ok((resources, warnings))
}

/// The credentials of pull secret `name` in `namespace`, for `reference`'s registry.
fn pull_credentials(
    shared: &Shared,
    namespace: &str,
    name: &str,
    reference: &super::fetch::oci::Reference,
) -> Result<super::fetch::oci::Credentials, String> {
    let secret = super::pull_secrets::get(&shared.store, namespace, name)?.ok_or_else(|| {
        format!(
            "spec.imagePullSecret: no pull secret {name} in namespace {namespace} (weft pull-secret {name} --namespace {namespace} ...)"
        )
    })?;
    if secret.server != reference.registry {
        return Err(format!(
            "spec.imagePullSecret: pull secret {namespace}/{name} is for registry {}, not {}",
            secret.server, reference.registry
        ));
    }
    Ok(super::fetch::oci::Credentials {
        username: secret.username,
        password: secret.password,
    })
}

/// Every WasmPlugin being applied in a namespace that requires signatures whose component no
/// trusted key signed, as an error naming it. Judged at apply, so a policy made stricter
/// never blocks changes to other resources.
fn unsigned_plugins(
    shared: &Shared,
    resources: &[Resource],
    fetched: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut errs = Vec::new();
    for r in resources {
        let istio::Spec::WasmPlugin(wp) = &r.spec else {
            continue;
        };
        if !shared.signing.requires(&r.namespace) {
            continue;
        }
        let refusal = |digest: &str| {
            shared
                .signing
                .refusal(digest, &shared.store.signatures(digest))
        };
        let why = match wp.source() {
            Ok(istio::WasmSource::Stored(digest)) => refusal(&digest),
            // Fetched by this apply, or before it (an unfetched URL failed the apply already).
            Ok(istio::WasmSource::Http(url)) => fetched
                .get(&url)
                .cloned()
                .or_else(|| shared.mesh.lock().state.fetched.get(&url).cloned())
                .and_then(|digest| refusal(&digest)),
            Ok(istio::WasmSource::File(_)) => Some(
                "a file on the sidecar's machine cannot be verified by the control plane; push it with its signature".to_string(),
            ),
            Err(_) => None,
        };
        if let Some(why) = why {
            errs.push(format!(
                "{}: spec.url: {why} (namespace {} requires signed plugins)",
                r.origin(),
                r.namespace
            ));
        }
    }
    errs
}

/// Why a change was not kept.
enum Refused {
    /// Another replica moved the shared store on to this revision.
    Stale(u64),
    /// The store failed; the message says so.
    Failed(StatusCode, String),
}

/// Persists `next`, then makes it current and pushes. A state that cannot be saved is not
/// made current and nothing is pushed: the caller gets the error, and the mesh and the store
/// keep agreeing.
fn commit(
    shared: &Shared,
    mesh: &mut Mesh,
    next: State,
    resources: Vec<Resource>,
    what: Vec<String>,
) -> Result<Vec<Pushed>, Refused> {
    let change = Change {
        revision: next.revision,
        at_ms: now_ms(),
        what,
    };
    match shared.store.commit(&mesh.state, &next, &change) {
        Ok(()) => {}
        Err(CommitError::Stale { revision }) => return Err(Refused::Stale(revision)),
        Err(CommitError::Store(e @ super::store::StoreError::Database(_))) => {
            tracing::error!("change not applied: {e}");
            return Err(Refused::Failed(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not applied: {e}; sidecars keep the state in force meanwhile: apply again when the store is back"
                ),
            ));
        }
        Err(CommitError::Store(e)) => {
            tracing::error!("change not applied: cannot save the state: {e}");
            return Err(Refused::Failed(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("not applied: the control plane cannot save its state: {e}"),
            ));
        }
    }
    let revision = next.revision;
    mesh.state = next;
    mesh.resources = resources;
    // This replica's own write: nothing to follow.
    shared.seen.lock().revision = revision;
    Ok(push(mesh))
}

pub(super) fn list(shared: &Shared, kind: Option<&str>, name: Option<&str>) -> Response<Body> {
    let kind = match kind.map(str::parse::<Kind>) {
        Some(Ok(k)) => Some(k.to_string()),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        None => None,
    };
    let mesh = shared.mesh.lock();
    // Each with the revision it was last changed at, as Kubernetes gives `resourceVersion`:
    // applied back, it is refused if the resource changed since.
    let docs: Vec<serde_json::Value> = mesh
        .state
        .resources
        .values()
        .filter(|s| kind.as_deref().is_none_or(|k| s.kind == k))
        .filter(|s| name.is_none_or(|n| s.name == n))
        .map(|s| {
            let mut doc = s.document.clone();
            if let Some(meta) = doc.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.insert(
                    "resourceVersion".into(),
                    serde_json::Value::String(s.revision.to_string()),
                );
            }
            doc
        })
        .collect();
    if name.is_some() && docs.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no {} named {:?}",
                kind.unwrap_or_default(),
                name.unwrap_or_default()
            ),
        );
    }
    json(StatusCode::OK, &docs)
}

pub(super) async fn delete(
    shared: &Arc<Shared>,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Response<Body> {
    let kind = match kind.parse::<Kind>() {
        Ok(k) => k.to_string(),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    until_current(
        shared,
        |_| delete_once(shared, &kind, namespace, name),
        "not deleted: the mesh kept changing through other replicas",
    )
    .await
}

/// One attempt at a delete under the mesh lock; `Err` as for [`apply_parsed`].
fn delete_once(
    shared: &Shared,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Response<Body>, u64> {
    let mut mesh = shared.mesh.lock();
    let mut next = mesh.state.clone();
    if next.resources.remove(&key(kind, namespace, name)).is_none() {
        return Ok(error(
            StatusCode::NOT_FOUND,
            format!("no {kind} {namespace}/{name}"),
        ));
    }
    let (resources, _) = match check(shared, &mesh.config, &next) {
        Ok(ok) => ok,
        Err(e) => return Ok(errors(StatusCode::BAD_REQUEST, e)),
    };
    next.revision += 1;
    let revision = next.revision;
    match commit(
        shared,
        &mut mesh,
        next,
        resources,
        vec![format!("delete {kind} {namespace}/{name}")],
    ) {
        Ok(pushed) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"revision": revision, "pushed": pushed}),
        )),
        Err(Refused::Stale(now)) => Err(now),
        Err(Refused::Failed(status, refused)) => Ok(error(status, refused)),
    }
}
