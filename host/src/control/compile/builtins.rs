//! The plugins a chain is made of: the built-ins' configurations from a VirtualService's
//! entries (the canary's routes, retries), and a WasmPlugin's place.

use super::*;

/// What a VirtualService's `http` entries give the chain-wide plugins, which have one
/// configuration per service where Istio has one per route.
pub(super) fn default_retry() -> Value {
    json!({ "attempts": DEFAULT_RETRY_ATTEMPTS, "retryOn": DEFAULT_RETRY_ON })
}

/// The retry plugin's configuration for one entry; none when retries are off.
pub(in crate::control) fn entry_retry(entry: &HttpRoute) -> Option<Value> {
    let Some(r) = &entry.retries else {
        return Some(default_retry());
    };
    let attempts = r.attempts.filter(|a| *a > 0)?;
    let mut config = Map::new();
    config.insert("attempts".into(), Value::from(attempts));
    if let Some(t) = &r.per_try_timeout {
        config.insert("perTryTimeout".into(), Value::from(t.as_str()));
    }
    if let Some(on) = &r.retry_on {
        config.insert("retryOn".into(), Value::from(on.as_str()));
    }
    if let Some(base) = &r.backoff {
        config.insert("backoff".into(), json!({ "baseInterval": base.as_str() }));
    }
    Some(Value::Object(config))
}

/// The canary's configuration for `service`; none when it would change nothing, unless it
/// must run anyway (`names_routes`: a scoped plugin needs the route it names).
///
/// `me`, the labels and namespace of the workload whose sidecar runs it, decides
/// `sourceLabels` and `sourceNamespace` here, as Istio decides them when it generates a proxy's
/// routes: an alternative for other callers is left out, and an entry left with none is left
/// out; none (for judging a configuration) keeps every alternative. The VirtualService's hosts
/// are read in its own `namespace`.
pub(in crate::control) fn canary_config(
    service: &str,
    vs: &VirtualService,
    namespace: &str,
    names_routes: bool,
    me: Option<(&BTreeMap<String, String>, &str)>,
) -> Option<Value> {
    // The proxy knows services by key; the canary names them so.
    let short = |host: &str| {
        service_of_host(host, namespace)
            .map(std::borrow::Cow::into_owned)
            .unwrap_or_else(|_| host.to_string())
    };
    if !names_routes
        && let [entry] = vs.http.as_slice()
        && entry.matches.is_empty()
        && entry.rewrite.is_none()
        && entry.all_mirrors().is_empty()
        && let [only] = entry.route.as_slice()
        && only.destination.subset.is_none()
        && short(&only.destination.host) == service
    {
        return None;
    }
    let mut entries: Vec<Value> = vs
        .http
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            let mut out = Map::new();
            let alternatives: Vec<Value> = entry
                .matches
                .iter()
                .filter(|m| me.is_none_or(|(labels, ns)| m.is_for_caller(labels, ns)))
                .map(|m| serde_json::to_value(m.for_canary()).unwrap_or(Value::Null))
                .collect();
            if !entry.matches.is_empty() && alternatives.is_empty() {
                return None;
            }
            // Plugins scoped to routes need every route named, the unnamed ones too.
            if names_routes {
                out.insert("name".into(), Value::from(route_name(entry, i)));
            } else if let Some(name) = &entry.name {
                out.insert("name".into(), Value::from(name.as_str()));
            }
            if !alternatives.is_empty() {
                out.insert("match".into(), Value::Array(alternatives));
            }
            // An entry that answers locally (redirect, directResponse) still needs the canary to
            // pick it and name its route; the `headers` plugin after it answers.
            let to_self = [crate::control::istio::RouteDestination::to(service)];
            let destinations: &[crate::control::istio::RouteDestination] = if entry.route.is_empty()
            {
                &to_self
            } else {
                &entry.route
            };
            let route: Vec<Value> = destinations
                .iter()
                .map(|d| {
                    let mut destination = json!({ "host": short(&d.destination.host) });
                    if let Some(subset) = &d.destination.subset {
                        destination["subset"] = Value::from(subset.as_str());
                    }
                    let mut item = json!({ "destination": destination });
                    if let Some(w) = d.weight {
                        item["weight"] = Value::from(w);
                    }
                    item
                })
                .collect();
            out.insert("route".into(), Value::Array(route));
            if let Some(t) = &entry.timeout {
                out.insert("timeout".into(), Value::from(t.as_str()));
            }
            let mirrors: Vec<Value> = entry
                .all_mirrors()
                .into_iter()
                .map(|(d, share)| {
                    let mut destination = json!({ "host": short(&d.host) });
                    if let Some(subset) = &d.subset {
                        destination["subset"] = Value::from(subset.as_str());
                    }
                    let mut m = json!({ "destination": destination });
                    if let Some(p) = share {
                        m["percentage"] = Value::from(p);
                    }
                    m
                })
                .collect();
            if !mirrors.is_empty() {
                out.insert("mirrors".into(), Value::Array(mirrors));
            }
            if let Some(r) = &entry.rewrite {
                out.insert(
                    "rewrite".into(),
                    serde_json::to_value(r).unwrap_or(Value::Null),
                );
            }
            Some(Value::Object(out))
        })
        .collect();
    if entries.is_empty() {
        // Every entry is for other callers: nothing matches here (an app's call is never
        // `https`), so every call gets the canary's 404, as Istio's "no route".
        entries.push(json!({
            "match": [{ "scheme": { "exact": "https" } }],
            "route": [{ "destination": { "host": service } }],
        }));
    }
    Some(json!({ "host": service, "http": entries }))
}

pub(in crate::control) fn builtin(name: &str, config: Value) -> PluginRef {
    PluginRef {
        name: name.to_string(),
        builtin: Some(name.to_string()),
        file: None,
        artifact: None,
        sha256: None,
        config,
        fail_strategy: FailStrategy::FailOpen,
        routes: Vec::new(),
        ports: Vec::new(),
        limits: None,
        root_id: String::new(),
    }
}

/// A WasmPlugin's place in a chain, or a warning why it has none.
pub(super) fn wasm_plugin_ref(r: &Resource, wp: &WasmPlugin) -> Result<PluginRef, String> {
    let (file, artifact) = match wp.source() {
        Ok(WasmSource::File(path)) => (Some(path), None),
        Ok(WasmSource::Stored(hex)) => (None, Some(hex)),
        // The apply handler stores what a URL serves and rewrites the URL to its digest; a
        // given sha256 names the same artifact.
        Ok(WasmSource::Http(url)) => match wp.digest() {
            Some(hex) => (None, Some(hex)),
            None => {
                return Err(format!(
                    "{}: spec.url: {url} has not been fetched into the artifact store; the plugin is left out of the chains",
                    r.origin()
                ));
            }
        },
        Err(e) => return Err(format!("{}: spec.url: {e}", r.origin())),
    };
    Ok(PluginRef {
        name: r.name.clone(),
        builtin: None,
        file,
        artifact,
        sha256: wp.digest(),
        config: wp.plugin_config.clone().unwrap_or_else(|| json!({})),
        fail_strategy: match wp.fail_strategy {
            Some(IstioFailStrategy::FailOpen) => FailStrategy::FailOpen,
            // Istio's default; FAIL_RELOAD is refused when read.
            _ => FailStrategy::FailClosed,
        },
        root_id: wp.plugin_name.clone().unwrap_or_default(),
        routes: wp.routes.clone(),
        // Per side: set where the plugin joins a chain (see `WasmPlugin::ports_on`).
        ports: Vec::new(),
        limits: wp.limits,
    })
}
