//! Per-route policies: each VirtualService `http` entry's `retries`, `fault` and `timeout`
//! apply to exactly the calls that entry matches, as in Istio.
//!
//! `headers`, `redirect` and `directResponse` are per-route the same way, in the `headers`
//! built-in. The built-in plugins stay where each policy lives; what changes is their scope. When every
//! entry of a service has the same policy (the common case: one entry), one plugin serves
//! every call, as before, at no extra cost. When entries differ, the canary names the route
//! each call took (every entry gets a name: its own, or `#<index>`), and one instance of the
//! plugin runs per distinct configuration, scoped to the routes that use it; a route with no
//! policy has no instance. Timeouts ride on the canary's route choice: the service keeps one
//! only when every entry has the same.

use super::builtins::{builtin, entry_retry};
use crate::control::istio::{HttpRoute, VirtualService};
use crate::snapshot::{PluginRef, parse_duration};
use serde_json::Value;
use std::time::Duration;

/// How a VirtualService's entries reach the chain.
#[derive(Debug, Default)]
pub(in crate::control) struct RoutePolicies {
    /// Whether the canary must name every route (some plugin is scoped to routes).
    pub names_routes: bool,
    /// A fault shared by every entry: for every call an entry takes, so right after the canary
    /// (a call no entry takes gets the canary's 404 untouched, as Envoy's no route).
    pub shared_fault: Vec<PluginRef>,
    /// Route-scoped faults, right after the canary.
    pub scoped_faults: Vec<PluginRef>,
    /// The entries' `headers`, `redirect` and `directResponse` (the `headers` built-in): one
    /// for every call, or one per distinct configuration scoped to its routes; after the
    /// canary, so a local answer is given once the route is known.
    pub actions: Vec<PluginRef>,
    /// Retries: one for every call, or one per distinct configuration scoped to its routes.
    pub retries: Vec<PluginRef>,
    /// The service's overall timeout: the entries' when they all agree; else none, and each
    /// entry's own comes with the canary's route choice.
    pub service_timeout: Option<String>,
}

/// The name of entry `i` as the canary names it.
pub(super) fn route_name(entry: &HttpRoute, i: usize) -> String {
    match entry.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => format!("#{i}"),
    }
}

/// Entry `i`'s timeout, where `0s` (Istio's "none") and absence are the same.
fn timeout_of(entry: &HttpRoute) -> Option<(Duration, String)> {
    let t = entry.timeout.as_ref()?;
    let d = parse_duration(t).ok().filter(|d| !d.is_zero())?;
    Some((d, t.clone()))
}

/// Per-entry configurations grouped by equal value, in entry order; the routes of each.
fn groups(
    vs: &VirtualService,
    config: impl Fn(&HttpRoute) -> Option<Value>,
) -> Vec<(Option<Value>, Vec<String>)> {
    let mut out: Vec<(Option<Value>, Vec<String>)> = Vec::new();
    for (i, entry) in vs.http.iter().enumerate() {
        let c = config(entry);
        let name = route_name(entry, i);
        match out.iter_mut().find(|(seen, _)| *seen == c) {
            Some((_, routes)) => routes.push(name),
            None => out.push((c, vec![name])),
        }
    }
    out
}

/// One plugin per configured group, scoped to its routes and named for its first.
fn scoped(kind: &str, groups: Vec<(Option<Value>, Vec<String>)>) -> Vec<PluginRef> {
    groups
        .into_iter()
        .filter_map(|(config, routes)| {
            let config = config?;
            let mut p = builtin(kind, config);
            p.name = format!("{kind}@{}", routes[0]);
            p.routes = routes;
            Some(p)
        })
        .collect()
}

/// The instances of built-in `kind` for these groups, and whether they are scoped to routes:
/// one for every call when every entry has the same configuration (and no entry is for some
/// callers only), else one per distinct configuration, scoped to its routes; none when no
/// entry has one.
fn instances(
    kind: &str,
    groups: Vec<(Option<Value>, Vec<String>)>,
    per_caller: bool,
) -> (Vec<PluginRef>, bool) {
    match groups.as_slice() {
        [] | [(None, _)] => (Vec::new(), false),
        [(Some(config), _)] if !per_caller => (vec![builtin(kind, config.clone())], false),
        _ => (scoped(kind, groups), true),
    }
}

impl RoutePolicies {
    /// The policies of `vs`'s entries.
    pub(super) fn of(vs: &VirtualService, namespace: &str) -> RoutePolicies {
        let mut out = RoutePolicies::default();
        // Entries for some callers only (`sourceLabels`, `sourceNamespace`, `gateways`) are left out of
        // other callers' canaries, so their policies must be scoped to them even when every
        // entry agrees: an unscoped one would run for calls that took no entry.
        let per_caller = vs.http.iter().any(|e| {
            e.matches.iter().any(|m| {
                !m.source_labels.is_empty()
                    || m.source_namespace.is_some()
                    || !m.gateways.is_empty()
            })
        });

        let (faults, scoped_faults) = instances(
            "fault",
            groups(vs, |e| e.fault.as_ref().map(|f| f.to_config())),
            per_caller,
        );
        if scoped_faults {
            out.scoped_faults = faults;
        } else {
            out.shared_fault = faults;
        }
        let (actions, scoped_actions) = instances(
            "headers",
            groups(vs, |e| e.actions_config(namespace)),
            per_caller,
        );
        out.actions = actions;
        let (retries, scoped_retries) = instances("retry", groups(vs, entry_retry), per_caller);
        out.retries = retries;
        out.names_routes = scoped_faults || scoped_actions || scoped_retries;

        let timeouts: Vec<Option<(Duration, String)>> = vs.http.iter().map(timeout_of).collect();
        if let Some(first) = timeouts.first()
            && timeouts
                .iter()
                .all(|t| t.as_ref().map(|t| t.0) == first.as_ref().map(|t| t.0))
        {
            out.service_timeout = first.as_ref().map(|t| t.1.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::istio::{Spec, parse_yaml};

    impl RoutePolicies {
        fn of_default(vs: &VirtualService) -> RoutePolicies {
            RoutePolicies::of(vs, "default")
        }
    }

    fn vs(http: &str) -> VirtualService {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: reviews }}\n\
             spec:\n  hosts: [reviews]\n  http:\n{http}"
        );
        match parse_yaml(&text, "t.yaml").expect("parses").remove(0).spec {
            Spec::VirtualService(vs) => vs,
            _ => unreachable!("a VirtualService"),
        }
    }

    #[test]
    fn one_entry_keeps_one_unscoped_plugin_per_policy() {
        let p = RoutePolicies::of_default(&vs(
            "  - route: [{ destination: { host: reviews } }]\n    timeout: 6s\n    \
             retries: { attempts: 3, retryOn: 5xx }\n    \
             fault: { abort: { httpStatus: 503, percentage: { value: 10 } } }\n",
        ));
        assert!(!p.names_routes);
        assert_eq!(p.shared_fault.len(), 1);
        assert!(p.shared_fault[0].routes.is_empty());
        assert_eq!(p.retries.len(), 1);
        assert_eq!(p.retries[0].name, "retry");
        assert!(p.retries[0].routes.is_empty());
        assert_eq!(p.service_timeout.as_deref(), Some("6s"));
    }

    #[test]
    fn istios_backoff_is_the_retry_plugins_base_interval() {
        let p =
            RoutePolicies::of_default(&vs("  - route: [{ destination: { host: reviews } }]\n    \
             retries: { attempts: 2, backoff: 100ms }\n"));
        assert_eq!(p.retries[0].config["backoff"]["baseInterval"], "100ms");
    }

    #[test]
    fn entries_that_differ_get_plugins_scoped_to_their_routes() {
        // Istio's fault-injection task: jason is delayed, everyone else is not; a POST-only
        // route has retries off; only the first entry has a timeout.
        let p = RoutePolicies::of_default(&vs(
            "  - name: jason\n    match: [{ headers: { end-user: { exact: jason } } }]\n    \
             fault: { delay: { fixedDelay: 7s, percentage: { value: 100 } } }\n    \
             timeout: 10s\n    route: [{ destination: { host: reviews } }]\n  \
             - match: [{ method: { exact: POST } }]\n    retries: { attempts: 0 }\n    \
             route: [{ destination: { host: reviews } }]\n  \
             - route: [{ destination: { host: reviews } }]\n",
        ));
        assert!(p.names_routes);
        assert!(p.shared_fault.is_empty());
        let faults: Vec<(&str, &[String])> = p
            .scoped_faults
            .iter()
            .map(|f| (f.name.as_str(), f.routes.as_slice()))
            .collect();
        assert_eq!(faults, [("fault@jason", &["jason".to_string()][..])]);
        // The first and last entries share Istio's default retries; the POST route has none.
        let retries: Vec<(&str, &[String])> = p
            .retries
            .iter()
            .map(|r| (r.name.as_str(), r.routes.as_slice()))
            .collect();
        assert_eq!(
            retries,
            [("retry@jason", &["jason".to_string(), "#2".to_string()][..])]
        );
        assert_eq!(p.service_timeout, None);
    }
}
