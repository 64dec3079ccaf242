//! AuthorizationPolicy (`security.istio.io`): the spec as written, the Istio fields Weft
//! refuses, and the checks one document gets.

use super::*;

/// An AuthorizationPolicy's spec: which workloads' inbound calls it judges, and how.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// The workloads it applies to, by labels; none: every workload in its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (default) or `DENY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AuthzActionName>,
    /// Any matching is the policy matching; none: it never matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRuleSpec>,
}

/// Istio's `AuthorizationPolicy.Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthzActionName {
    /// Allow matching calls (and, once any ALLOW applies, only those).
    #[serde(rename = "ALLOW")]
    Allow,
    /// Deny matching calls.
    #[serde(rename = "DENY")]
    Deny,
    /// Not supported by Weft yet.
    #[serde(rename = "AUDIT")]
    Audit,
    /// Not supported by Weft yet (external authorizers).
    #[serde(rename = "CUSTOM")]
    Custom,
}

/// Istio's `Rule`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzRuleSpec {
    /// Callers; any entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthzFrom>,
    /// Requests; any entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthzTo>,
}

/// Istio's `Rule.From`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzFrom {
    /// The caller's conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<AuthzSourceSpec>,
}

/// Istio's `Source`, the fields Weft implements.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzSourceSpec {
    /// Peer principals (`<trust domain>/ns/<ns>/sa/<sa>`, with `*` wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Principals the caller must not be.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// The caller's namespace, from its peer certificate (with `*` wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces the caller must not be in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
}

/// Istio's `Rule.To`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzTo {
    /// The request's conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<AuthzOperationSpec>,
}

/// Istio's `Operation`, the fields Weft implements.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzOperationSpec {
    /// Paths without the query (`/exact`, `/prefix*`, `*suffix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths the request's must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// Methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods the request's must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
}

impl AuthorizationPolicy {
    /// Whether the policy, in namespace `own`, judges the inbound calls of a workload in
    /// `namespace` carrying `labels`: one of its own namespace's, or any from
    /// [`ROOT_NAMESPACE`] (mesh-wide).
    pub fn selects(&self, own: &str, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        (own == namespace || own == ROOT_NAMESPACE)
            && self.selector.as_ref().is_none_or(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
            })
    }

    /// The snapshot's form, named `<namespace>/<name>` (a checked policy: its action is ALLOW
    /// or DENY, each `source`/`operation` present).
    pub fn to_snapshot(&self, name: String) -> crate::snapshot::AuthzPolicy {
        use crate::snapshot::{AuthzAction, AuthzOperation, AuthzRule, AuthzSource};
        crate::snapshot::AuthzPolicy {
            name,
            action: match self.action {
                Some(AuthzActionName::Deny) => AuthzAction::Deny,
                _ => AuthzAction::Allow,
            },
            rules: self
                .rules
                .iter()
                .map(|r| AuthzRule {
                    from: r
                        .from
                        .iter()
                        .filter_map(|f| f.source.as_ref())
                        .map(|s| AuthzSource {
                            principals: s.principals.clone(),
                            not_principals: s.not_principals.clone(),
                            namespaces: s.namespaces.clone(),
                            not_namespaces: s.not_namespaces.clone(),
                        })
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .filter_map(|t| t.operation.as_ref())
                        .map(|o| AuthzOperation {
                            paths: o.paths.clone(),
                            not_paths: o.not_paths.clone(),
                            methods: o.methods.clone(),
                            not_methods: o.not_methods.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

pub(in crate::control) const AUTHZ_UNSUPPORTED: Unsupported = &[
    ("", &["targetRef", "targetRefs", "provider"]),
    ("rules[]", &["when"]),
    (
        "rules[].from[].source",
        &[
            "requestPrincipals",
            "notRequestPrincipals",
            "ipBlocks",
            "notIpBlocks",
            "remoteIpBlocks",
            "notRemoteIpBlocks",
            "serviceAccounts",
            "notServiceAccounts",
        ],
    ),
    (
        "rules[].to[].operation",
        &["hosts", "notHosts", "ports", "notPorts"],
    ),
];

pub(super) fn check_authorization_policy(ap: &AuthorizationPolicy, problems: &mut Problems) {
    if let Some(action @ (AuthzActionName::Audit | AuthzActionName::Custom)) = ap.action {
        let name = if action == AuthzActionName::Audit {
            "AUDIT"
        } else {
            "CUSTOM"
        };
        problems.at(
            "spec.action",
            format!("{name} is not supported by Weft yet (use ALLOW or DENY)"),
        );
    }
    let check = |at: String, values: &[String], is_path: bool, problems: &mut Problems| {
        for (i, v) in values.iter().enumerate() {
            // Templates first: `{*}` would otherwise read as a misplaced wildcard.
            if is_path && v.contains(['{', '}']) {
                problems.at(
                    format!("{at}[{i}]"),
                    format!("{v:?}: path templates ({{*}}, {{**}}) are not supported by Weft yet"),
                );
            } else if let Err(e) = crate::snapshot::check_authz_pattern(v) {
                problems.at(format!("{at}[{i}]"), e);
            }
        }
    };
    for (i, rule) in ap.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let at = format!("{at}.from[{j}].source");
            match &from.source {
                None => problems.at(at, "required"),
                Some(s)
                    if s.principals.is_empty()
                        && s.not_principals.is_empty()
                        && s.namespaces.is_empty()
                        && s.not_namespaces.is_empty() =>
                {
                    problems.at(
                        at,
                        "must not be empty (give principals, notPrincipals, namespaces or notNamespaces)",
                    )
                }
                Some(s) => {
                    for (field, values) in [
                        ("principals", &s.principals),
                        ("notPrincipals", &s.not_principals),
                        ("namespaces", &s.namespaces),
                        ("notNamespaces", &s.not_namespaces),
                    ] {
                        check(format!("{at}.{field}"), values, false, problems);
                    }
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let at = format!("{at}.to[{j}].operation");
            match &to.operation {
                None => problems.at(at, "required"),
                Some(o)
                    if o.paths.is_empty()
                        && o.not_paths.is_empty()
                        && o.methods.is_empty()
                        && o.not_methods.is_empty() =>
                {
                    problems.at(
                        at,
                        "must not be empty (give paths, notPaths, methods or notMethods)",
                    )
                }
                Some(o) => {
                    check(format!("{at}.paths"), &o.paths, true, problems);
                    check(format!("{at}.notPaths"), &o.not_paths, true, problems);
                    check(format!("{at}.methods"), &o.methods, false, problems);
                    check(format!("{at}.notMethods"), &o.not_methods, false, problems);
                }
            }
        }
    }
}
