//! Inbound authorization: a snapshot's `inbound.authorization` (Istio's `AuthorizationPolicy`)
//! compiled once per snapshot into matchers, evaluated per call before it reaches the app.
//!
//! Istio's order: any DENY policy matching denies; else, when there are ALLOW policies, one must
//! match; else the call is allowed. A policy matches when any of its rules does (no rules: never,
//! so an ALLOW with no rules allows nothing); a rule when each of its non-empty `from` / `to`
//! lists has a matching entry; an entry when every condition it sets holds.
//!
//! The caller's principal is its SPIFFE ID without `spiffe://` (`weft.local/ns/default/sa/orders`),
//! compared exactly: Istio's `cluster.local` is not an alias of the mesh's trust domain. A caller
//! with no authenticated identity (plaintext under PERMISSIVE) has no principal: `principals`
//! (even `*`) never match it and `notPrincipals` always do, as in Envoy's RBAC filter — so a DENY
//! on `notPrincipals` also refuses anonymous callers. `namespaces` and `notNamespaces` are
//! judged the same way on the namespace of the caller's SPIFFE ID (`…/ns/<namespace>/sa/…`).

use crate::snapshot::{AuthzAction, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource};

/// Envoy's body for a call its RBAC filter denies.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// One value pattern, as Istio writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: any value.
    Any,
    /// A value equal to this.
    Exact(String),
    /// `prefix*`.
    Prefix(String),
    /// `*suffix`.
    Suffix(String),
}

impl Pattern {
    fn new(text: &str) -> Pattern {
        if text == "*" {
            Pattern::Any
        } else if let Some(suffix) = text.strip_prefix('*') {
            Pattern::Suffix(suffix.to_string())
        } else if let Some(prefix) = text.strip_suffix('*') {
            Pattern::Prefix(prefix.to_string())
        } else {
            Pattern::Exact(text.to_string())
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(v) => value == v,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Suffix(s) => value.ends_with(s.as_str()),
        }
    }
}

/// Whether any pattern matches `value`.
fn any(patterns: &[Pattern], value: &str) -> bool {
    patterns.iter().any(|p| p.matches(value))
}

fn compile(list: &[String]) -> Vec<Pattern> {
    list.iter().map(|t| Pattern::new(t)).collect()
}

struct Source {
    principals: Vec<Pattern>,
    not_principals: Vec<Pattern>,
    namespaces: Vec<Pattern>,
    not_namespaces: Vec<Pattern>,
}

impl Source {
    fn matches(&self, principal: Option<&str>) -> bool {
        // Envoy's RBAC: a positive list needs an identity that matches it; a negative one holds
        // unless an identity matches it.
        let holds = |yes: &[Pattern], no: &[Pattern], value: Option<&str>| {
            (yes.is_empty() || value.is_some_and(|v| any(yes, v)))
                && value.is_none_or(|v| !any(no, v))
        };
        holds(&self.principals, &self.not_principals, principal)
            && (self.namespaces.is_empty() && self.not_namespaces.is_empty()
                || holds(
                    &self.namespaces,
                    &self.not_namespaces,
                    principal.and_then(namespace_of),
                ))
    }
}

/// The namespace in an Istio principal (`weft.local/ns/shop/sa/orders` → `shop`).
fn namespace_of(principal: &str) -> Option<&str> {
    let (_, rest) = principal.split_once("/ns/")?;
    rest.split_once("/sa/").map(|(ns, _)| ns)
}

struct Operation {
    paths: Vec<Pattern>,
    not_paths: Vec<Pattern>,
    methods: Vec<Pattern>,
    not_methods: Vec<Pattern>,
}

impl Operation {
    /// Whether it names an HTTP property; every field here does.
    fn is_http_only(&self) -> bool {
        !(self.paths.is_empty()
            && self.not_paths.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty())
    }

    fn matches(&self, call: &Call<'_>, deny: bool) -> bool {
        // TCP has no method or path: as Istio does, an operation with HTTP-only fields never
        // matches in an ALLOW policy and always matches in a DENY one, so either way the
        // policy errs towards refusing.
        if call.tcp && self.is_http_only() {
            return deny;
        }
        let (method, path) = (call.method, call.path);
        (self.paths.is_empty() || any(&self.paths, path))
            && !any(&self.not_paths, path)
            && (self.methods.is_empty() || any(&self.methods, method))
            && !any(&self.not_methods, method)
    }
}

struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
}

impl Rule {
    fn matches(&self, call: &Call<'_>, deny: bool) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(call.principal)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(call, deny)))
    }
}

struct Policy {
    name: String,
    rules: Vec<Rule>,
}

impl Policy {
    fn matches(&self, call: &Call<'_>, deny: bool) -> bool {
        self.rules.iter().any(|r| r.matches(call, deny))
    }
}

/// What a call is judged on.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The caller's Istio principal; none without an authenticated identity.
    pub principal: Option<&'a str>,
    /// The request method.
    pub method: &'a str,
    /// The request path, without the query.
    pub path: &'a str,
    /// A TCP connection rather than an HTTP request: method and path are not known.
    pub tcp: bool,
}

/// The verdict on a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refuse it; the name of the DENY policy that matched, or none when no ALLOW policy did.
    Deny(Option<String>),
}

/// A snapshot's authorization policies, ready to evaluate.
#[derive(Default)]
pub struct Authorizer {
    deny: Vec<Policy>,
    allow: Vec<Policy>,
}

impl Authorizer {
    /// Compiles the snapshot's policies (already validated).
    pub fn new(policies: &[AuthzPolicy]) -> Authorizer {
        let mut out = Authorizer::default();
        for p in policies {
            let compiled = Policy {
                name: p.name.clone(),
                rules: p.rules.iter().map(rule).collect(),
            };
            match p.action {
                AuthzAction::Allow => out.allow.push(compiled),
                AuthzAction::Deny => out.deny.push(compiled),
            }
        }
        out
    }

    /// Whether there is nothing to evaluate: every call is allowed.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }

    /// Judges a call, in Istio's order: DENY, then ALLOW.
    pub fn check(&self, call: &Call<'_>) -> Verdict {
        if let Some(p) = self.deny.iter().find(|p| p.matches(call, true)) {
            return Verdict::Deny(Some(p.name.clone()));
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| p.matches(call, false)) {
            Verdict::Allow
        } else {
            Verdict::Deny(None)
        }
    }
}

fn rule(r: &AuthzRule) -> Rule {
    Rule {
        from: r.from.iter().map(source).collect(),
        to: r.to.iter().map(operation).collect(),
    }
}

fn source(s: &AuthzSource) -> Source {
    Source {
        principals: compile(&s.principals),
        not_principals: compile(&s.not_principals),
        namespaces: compile(&s.namespaces),
        not_namespaces: compile(&s.not_namespaces),
    }
}

fn operation(o: &AuthzOperation) -> Operation {
    Operation {
        paths: compile(&o.paths),
        not_paths: compile(&o.not_paths),
        methods: compile(&o.methods),
        not_methods: compile(&o.not_methods),
    }
}

/// The Istio principal of a SPIFFE ID: `<trust domain>/ns/<namespace>/sa/<service>`.
pub fn principal_of(id: &crate::identity::SpiffeId) -> String {
    format!(
        "{}/ns/{}/sa/{}",
        id.trust_domain(),
        id.namespace(),
        id.service()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;

    const ORDERS: &str = "weft.local/ns/default/sa/orders";
    const INVENTORY: &str = "weft.local/ns/default/sa/inventory";

    fn authorizer(policies: serde_json::Value) -> Authorizer {
        let snapshot: Snapshot = serde_json::from_value(serde_json::json!({
            "version": "1", "inbound": { "authorization": policies }
        }))
        .expect("snapshot");
        assert!(snapshot.validate().is_ok(), "{:?}", snapshot.validate());
        Authorizer::new(&snapshot.inbound.authorization)
    }

    fn call<'a>(principal: Option<&'a str>, method: &'a str, path: &'a str) -> Call<'a> {
        Call {
            principal,
            method,
            path,
            tcp: false,
        }
    }

    #[test]
    fn tcp_connections_meet_http_fields_as_istio_says() {
        const ORDERS: &str = "weft.local/ns/default/sa/orders";
        let tcp = |principal| Call {
            principal,
            method: "CONNECT",
            path: "",
            tcp: true,
        };
        // ALLOW with a method: never matches TCP, so nothing is allowed.
        let a = authorizer(serde_json::json!([{"rules": [{"to": [{"methods": ["GET"]}]}]}]));
        assert_eq!(a.check(&tcp(Some(ORDERS))), Verdict::Deny(None));
        // ALLOW by principal alone: TCP from that caller passes, others do not.
        let a = authorizer(serde_json::json!([{"rules": [{"from": [{"principals": [ORDERS]}]}]}]));
        assert_eq!(a.check(&tcp(Some(ORDERS))), Verdict::Allow);
        assert_eq!(a.check(&tcp(None)), Verdict::Deny(None));
        // DENY with a path: its HTTP field is ignored for TCP, so it refuses the connection.
        let d = authorizer(serde_json::json!([{"name": "no-admin", "action": "DENY",
            "rules": [{"to": [{"paths": ["/admin*"]}]}]}]));
        assert_eq!(
            d.check(&tcp(Some(ORDERS))),
            Verdict::Deny(Some("no-admin".into()))
        );
    }

    #[test]
    fn patterns_follow_istio() {
        for (pattern, value, expected) in [
            ("*", "anything", true),
            ("*", "", true),
            ("/admin*", "/admin", true),
            ("/admin*", "/admin/users", true),
            ("/admin*", "/api/admin", false),
            ("*.json", "/a/b.json", true),
            ("*.json", "/a/b.jsonx", false),
            ("/exact", "/exact", true),
            ("/exact", "/exact/", false),
            ("GET", "get", false),
        ] {
            assert_eq!(
                Pattern::new(pattern).matches(value),
                expected,
                "{pattern:?} on {value:?}"
            );
        }
        assert_eq!(
            principal_of(
                &crate::identity::SpiffeId::new("weft.local", "default", "orders").expect("id")
            ),
            ORDERS
        );
    }

    #[test]
    fn verdicts_follow_istio() {
        // (policies, principal, method, path, allowed)
        let cases: Vec<(serde_json::Value, Option<&str>, &str, &str, bool)> = vec![
            // No policy: everything is allowed.
            (serde_json::json!([]), None, "GET", "/", true),
            // ALLOW orders only.
            (
                serde_json::json!([{"rules": [{"from": [{"principals": [ORDERS]}]}]}]),
                Some(ORDERS),
                "GET",
                "/",
                true,
            ),
            (
                serde_json::json!([{"rules": [{"from": [{"principals": [ORDERS]}]}]}]),
                Some(INVENTORY),
                "GET",
                "/",
                false,
            ),
            (
                serde_json::json!([{"rules": [{"from": [{"principals": [ORDERS]}]}]}]),
                None,
                "GET",
                "/",
                false,
            ),
            // `*` is any authenticated caller, never an anonymous one.
            (
                serde_json::json!([{"rules": [{"from": [{"principals": ["*"]}]}]}]),
                Some(INVENTORY),
                "GET",
                "/",
                true,
            ),
            (
                serde_json::json!([{"rules": [{"from": [{"principals": ["*"]}]}]}]),
                None,
                "GET",
                "/",
                false,
            ),
            (
                serde_json::json!([{"rules": [{"from": [{"principals": ["*/sa/orders"]}]}]}]),
                Some(ORDERS),
                "GET",
                "/",
                true,
            ),
            (
                serde_json::json!([{"rules": [{"from": [{"principals": ["cluster.local/ns/default/sa/orders"]}]}]}]),
                Some(ORDERS),
                "GET",
                "/",
                false,
            ),
            // An ALLOW with no rules allows nothing; an empty rule allows everything.
            (
                serde_json::json!([{"action": "ALLOW"}]),
                Some(ORDERS),
                "GET",
                "/",
                false,
            ),
            (serde_json::json!([{"rules": [{}]}]), None, "GET", "/", true),
            // A DENY with no rules denies nothing.
            (
                serde_json::json!([{"action": "DENY"}]),
                None,
                "GET",
                "/",
                true,
            ),
            // A rule needs its from AND its to; entries of each are ORed.
            (
                serde_json::json!([{"rules": [{"from": [{"principals": [ORDERS]}], "to": [{"methods": ["GET"]}]}]}]),
                Some(ORDERS),
                "POST",
                "/",
                false,
            ),
            (
                serde_json::json!([{"rules": [{"from": [{"principals": [INVENTORY]}, {"principals": [ORDERS]}], "to": [{"methods": ["POST"]}, {"paths": ["/pub*"]}]}]}]),
                Some(ORDERS),
                "GET",
                "/pub/x",
                true,
            ),
            // Rules of a policy are ORed.
            (
                serde_json::json!([{"rules": [{"to": [{"paths": ["/health"]}]}, {"from": [{"principals": [ORDERS]}]}]}]),
                None,
                "GET",
                "/health",
                true,
            ),
            // DENY wins over ALLOW.
            (
                serde_json::json!([{"rules": [{}]}, {"action": "DENY", "rules": [{"to": [{"paths": ["/admin*"]}]}]}]),
                Some(ORDERS),
                "GET",
                "/admin/x",
                false,
            ),
            (
                serde_json::json!([{"rules": [{}]}, {"action": "DENY", "rules": [{"to": [{"paths": ["/admin*"]}]}]}]),
                Some(ORDERS),
                "GET",
                "/x",
                true,
            ),
            // Negative conditions.
            (
                serde_json::json!([{"action": "DENY", "rules": [{"from": [{"notPrincipals": [ORDERS]}]}]}]),
                Some(ORDERS),
                "GET",
                "/",
                true,
            ),
            (
                serde_json::json!([{"action": "DENY", "rules": [{"from": [{"notPrincipals": [ORDERS]}]}]}]),
                Some(INVENTORY),
                "GET",
                "/",
                false,
            ),
            (
                serde_json::json!([{"action": "DENY", "rules": [{"from": [{"notPrincipals": [ORDERS]}]}]}]),
                None,
                "GET",
                "/",
                false,
            ),
            // Namespaces come from the caller's identity; none without one.
            (
                serde_json::json!([{"rules": [{"from": [{"namespaces": ["shop"]}]}]}]),
                Some("weft.local/ns/shop/sa/orders"),
                "GET",
                "/",
                true,
            ),
            (
                serde_json::json!([{"rules": [{"from": [{"namespaces": ["shop"]}]}]}]),
                Some(ORDERS),
                "GET",
                "/",
                false,
            ),
            (
                serde_json::json!([{"rules": [{"from": [{"namespaces": ["*"]}]}]}]),
                None,
                "GET",
                "/",
                false,
            ),
            (
                serde_json::json!([{"action": "DENY", "rules": [{"from": [{"notNamespaces": ["default"]}]}]}]),
                Some("weft.local/ns/shop/sa/orders"),
                "GET",
                "/",
                false,
            ),
            (
                serde_json::json!([{"action": "DENY", "rules": [{"from": [{"notNamespaces": ["default"]}]}]}]),
                Some(ORDERS),
                "GET",
                "/",
                true,
            ),
            (
                serde_json::json!([{"action": "DENY", "rules": [{"from": [{"notNamespaces": ["default"]}]}]}]),
                None,
                "GET",
                "/",
                false,
            ),
            (
                serde_json::json!([{"rules": [{"to": [{"notPaths": ["/private*"], "notMethods": ["DELETE"]}]}]}]),
                None,
                "GET",
                "/public",
                true,
            ),
            (
                serde_json::json!([{"rules": [{"to": [{"notPaths": ["/private*"], "notMethods": ["DELETE"]}]}]}]),
                None,
                "GET",
                "/private/a",
                false,
            ),
            (
                serde_json::json!([{"rules": [{"to": [{"notPaths": ["/private*"], "notMethods": ["DELETE"]}]}]}]),
                None,
                "DELETE",
                "/public",
                false,
            ),
        ];
        for (i, (policies, principal, method, path, allowed)) in cases.into_iter().enumerate() {
            let verdict = authorizer(policies.clone()).check(&call(principal, method, path));
            assert_eq!(
                verdict == Verdict::Allow,
                allowed,
                "case {i}: {policies} for {principal:?} {method} {path}: {verdict:?}"
            );
        }
    }

    #[test]
    fn a_deny_names_its_policy() {
        let a = authorizer(
            serde_json::json!([{"name": "default/no-admin", "action": "DENY",
            "rules": [{"to": [{"paths": ["/admin*"]}]}]}]),
        );
        assert_eq!(
            a.check(&call(Some(ORDERS), "GET", "/admin")),
            Verdict::Deny(Some("default/no-admin".into()))
        );
        assert!(!a.is_empty());
        assert!(Authorizer::new(&[]).is_empty());
    }
}
