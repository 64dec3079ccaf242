//! Istio resources as people write them: `VirtualService` and `DestinationRule`
//! (`networking.istio.io`), `WasmPlugin` (`extensions.istio.io`), `AuthorizationPolicy` and
//! `PeerAuthentication` (`security.istio.io`) and `Telemetry` (`telemetry.istio.io`, access
//! logging), read from multi-document YAML.
//!
//! YAML is read with `yaml-rust2` into its tree, turned into JSON, then into the typed structs
//! below through `serde_path_to_error`, so every error names its document and the field's path
//! (`payments.yaml: document 1 (VirtualService payments): spec.http[0].route[1].weight: invalid
//! type: floating point`). Nothing is half-read: a file with one bad document is rejected whole,
//! with every problem of every document.
//!
//! The structs deny unknown fields. Istio fields Weft does not implement (`delegate`,
//! `connectionPool`, …) are refused as "not supported by Weft yet" rather than silently ignored,
//! so a policy never looks applied when it is not. `gateways` and `exportTo` are honoured as
//! Istio does: a VirtualService bound only to gateways, or a resource not exported to
//! namespace `default` (where every Weft sidecar is), reaches no sidecar
//! ([`super::compile::validate`] says so in a warning).
//!
//! One module per kind holds its types, the Istio fields it refuses and its checks
//! (`virtual_service`, `destination_rule`, `wasm_plugin`, `authorization`,
//! `peer_authentication`); `hosts` says which service a host names. This module reads the
//! envelope and dispatches, and checks each document on its own; checks that need several resources (subsets a
//! route names, one VirtualService per host, stored artifacts) are [`super::compile::validate`]'s.

use super::yaml;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use yaml_rust2::Yaml;

use crate::names::is_dns_label;
use crate::snapshot::{is_digest, parse_duration};

mod authorization;
mod client_tls;
mod destination_rule;
mod grpc_route;
mod hosts;
pub mod http_route;
mod peer_authentication;
mod plugin_limits;
mod service_entry;
mod sidecar_scope;
mod telemetry;
#[cfg(test)]
mod tests;
mod virtual_service;
mod wasm_plugin;

pub(in crate::control) use authorization::AUTHZ_UNSUPPORTED;
pub use authorization::*;
pub use client_tls::ClientTls;
pub(in crate::control) use destination_rule::DR_UNSUPPORTED;
pub use destination_rule::*;
pub(in crate::control) use grpc_route::GRPC_ROUTE_UNSUPPORTED;
pub use grpc_route::GatewayGrpcRoute;
use grpc_route::check_grpc_route;
pub use hosts::*;
pub use http_route::GatewayHttpRoute;
pub(in crate::control) use http_route::HTTP_ROUTE_UNSUPPORTED;
use http_route::check_http_route;
pub(in crate::control) use peer_authentication::PEER_AUTHN_UNSUPPORTED;
pub use peer_authentication::*;
pub(in crate::control) use service_entry::SERVICE_ENTRY_UNSUPPORTED;
pub use service_entry::*;
pub(in crate::control) use sidecar_scope::SIDECAR_UNSUPPORTED;
pub use sidecar_scope::*;
pub(in crate::control) use telemetry::TELEMETRY_UNSUPPORTED;
pub use telemetry::*;
pub(in crate::control) use virtual_service::VS_UNSUPPORTED;
pub use virtual_service::*;
pub(in crate::control) use wasm_plugin::WASM_UNSUPPORTED;
pub use wasm_plugin::*;

/// The kinds of Istio resource Weft reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `networking.istio.io` VirtualService: routes, weights, retries, timeouts, faults.
    VirtualService,
    /// `networking.istio.io` DestinationRule: subsets, load balancing, outlier detection.
    DestinationRule,
    /// `extensions.istio.io` WasmPlugin: a plugin joining the chain.
    WasmPlugin,
    /// `security.istio.io` AuthorizationPolicy: who may call a workload, enforced inbound.
    AuthorizationPolicy,
    /// `security.istio.io` PeerAuthentication: whether a workload's inbound listener requires mTLS.
    PeerAuthentication,
    /// `telemetry.istio.io` Telemetry: access logging per workload and side.
    Telemetry,
    /// `gateway.networking.k8s.io` HTTPRoute attached to a Service: mesh routing (GAMMA).
    GatewayHttpRoute,
    /// `gateway.networking.k8s.io` GRPCRoute attached to a Service: gRPC routing (GAMMA).
    GatewayGrpcRoute,
    /// `networking.istio.io` Sidecar: what a workload's sidecar is given and may reach.
    Sidecar,
    /// `networking.istio.io` ServiceEntry: a service outside the mesh.
    ServiceEntry,
}

impl Kind {
    /// Every kind, in the order `weft get` lists them.
    pub const ALL: [Kind; 10] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::WasmPlugin,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::Telemetry,
        Kind::GatewayHttpRoute,
        Kind::GatewayGrpcRoute,
        Kind::Sidecar,
        Kind::ServiceEntry,
    ];

    /// The kind as Istio spells it in a document.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::WasmPlugin => "WasmPlugin",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Telemetry => "Telemetry",
            Kind::GatewayHttpRoute => "HTTPRoute",
            Kind::GatewayGrpcRoute => "GRPCRoute",
            Kind::Sidecar => "Sidecar",
            Kind::ServiceEntry => "ServiceEntry",
        }
    }

    /// The `apiVersion`s that serve this kind.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::VirtualService | Kind::DestinationRule | Kind::Sidecar | Kind::ServiceEntry => &[
                "networking.istio.io/v1",
                "networking.istio.io/v1beta1",
                "networking.istio.io/v1alpha3",
            ],
            Kind::WasmPlugin => &["extensions.istio.io/v1alpha1"],
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => {
                &["security.istio.io/v1", "security.istio.io/v1beta1"]
            }
            Kind::Telemetry => &["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"],
            Kind::GatewayHttpRoute => &[
                "gateway.networking.k8s.io/v1",
                "gateway.networking.k8s.io/v1beta1",
            ],
            Kind::GatewayGrpcRoute => &[
                "gateway.networking.k8s.io/v1",
                "gateway.networking.k8s.io/v1alpha2",
            ],
        }
    }

    /// The kind a document's `kind` names: exact spelling only, as Kubernetes reads it.
    fn from_document(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    /// Reads a kind as `weft get` takes it: any case, plural, or short name (`vs`, `dr`).
    fn from_str(text: &str) -> Result<Kind, String> {
        match text.to_ascii_lowercase().as_str() {
            "virtualservice" | "virtualservices" | "vs" => Ok(Kind::VirtualService),
            "destinationrule" | "destinationrules" | "dr" => Ok(Kind::DestinationRule),
            "wasmplugin" | "wasmplugins" => Ok(Kind::WasmPlugin),
            "authorizationpolicy" | "authorizationpolicies" | "ap" => Ok(Kind::AuthorizationPolicy),
            "peerauthentication" | "peerauthentications" | "pa" => Ok(Kind::PeerAuthentication),
            "telemetry" | "telemetries" => Ok(Kind::Telemetry),
            "httproute" | "httproutes" => Ok(Kind::GatewayHttpRoute),
            "grpcroute" | "grpcroutes" => Ok(Kind::GatewayGrpcRoute),
            "sidecar" | "sidecars" => Ok(Kind::Sidecar),
            "serviceentry" | "serviceentries" | "se" => Ok(Kind::ServiceEntry),
            _ => Err(format!(
                "unknown kind {text:?} (known: VirtualService or vs, DestinationRule or dr, WasmPlugin, AuthorizationPolicy or ap, PeerAuthentication or pa, Telemetry, HTTPRoute, GRPCRoute, Sidecar, ServiceEntry or se)"
            )),
        }
    }
}

/// One Istio resource, read and checked on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Its kind.
    pub kind: Kind,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when not given.
    pub namespace: String,
    /// Where it was read from (a file name), for messages.
    pub source: String,
    /// Its document's position in the source, from 1, for messages; 0 when the source holds
    /// just this document (a stored one).
    pub index: usize,
    /// The whole document as applied, for `weft get -o yaml|json`.
    pub document: Value,
    /// Its spec, typed.
    pub spec: Spec,
}

/// A resource's spec, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A VirtualService's spec.
    VirtualService(VirtualService),
    /// A DestinationRule's spec.
    DestinationRule(DestinationRule),
    /// A WasmPlugin's spec.
    WasmPlugin(WasmPlugin),
    /// An AuthorizationPolicy's spec.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A PeerAuthentication's spec.
    PeerAuthentication(PeerAuthentication),
    /// A Telemetry's spec.
    Telemetry(Telemetry),
    /// A Gateway API HTTPRoute's spec, with the VirtualService it means.
    GatewayHttpRoute(GatewayHttpRoute),
    /// A GRPCRoute's spec, with the VirtualService it means.
    GatewayGrpcRoute(GatewayGrpcRoute),
    /// A Sidecar's spec.
    Sidecar(SidecarScope),
    /// A ServiceEntry's spec.
    ServiceEntry(ServiceEntry),
}

impl Resource {
    /// Where it came from, for messages: `payments.yaml: document 1 (VirtualService payments)`.
    pub fn origin(&self) -> String {
        format!(
            "{}{} ({} {})",
            self.source,
            document_number(self.index),
            self.kind,
            self.name
        )
    }

    /// Reads one document already in JSON form (as `document` holds it, so a store can reload
    /// what it kept). `source` and `index` only name it in messages.
    pub fn from_document(
        document: Value,
        source: &str,
        index: usize,
    ) -> Result<Resource, Vec<String>> {
        let kind_text = document.get("kind").and_then(Value::as_str);
        let name_text = document.pointer("/metadata/name").and_then(Value::as_str);
        let at = format!("{source}{}", document_number(index));
        let label = match (kind_text, name_text) {
            (Some(k), Some(n)) => format!("{at} ({k} {n})"),
            (Some(k), None) => format!("{at} ({k})"),
            _ => at,
        };
        let mut problems = Problems::default();
        let size = serde_json::to_vec(&document).map_or(0, |b| b.len());
        if size > MAX_RESOURCE_BYTES {
            return Err(vec![format!(
                "{label}: {size} bytes; a resource may be at most {} KiB",
                MAX_RESOURCE_BYTES >> 10
            )]);
        }
        let parsed = read_document(&document, &mut problems);
        match parsed {
            Some((kind, name, namespace, spec)) if problems.0.is_empty() => Ok(Resource {
                kind,
                name,
                namespace,
                source: source.to_string(),
                index,
                document,
                spec,
            }),
            // A message may quote the value it refuses: clipped, so a huge value does not
            // come back as a huge error.
            _ => Err(problems
                .0
                .into_iter()
                .map(|p| format!("{label}: {}", yaml::clip(&p, MAX_MESSAGE_BYTES)))
                .collect()),
        }
    }
}

/// The largest resource, as JSON: Kubernetes stores objects of up to about 1.5 MiB; Istio
/// resources are a few KiB, and every one is kept, re-read at each change and sent to sidecars.
pub const MAX_RESOURCE_BYTES: usize = 1 << 20;

/// The most all of a resource's annotations may hold, as in Kubernetes.
const MAX_ANNOTATION_BYTES: usize = 256 << 10;

/// The most one error message may say.
const MAX_MESSAGE_BYTES: usize = 1024;

/// `: document N` for a document of a multi-document source; nothing for a lone one (index 0).
fn document_number(index: usize) -> String {
    if index == 0 {
        String::new()
    } else {
        format!(": document {index}")
    }
}

/// Reads one stored document (as [`Resource::document`] holds it); `source` names it in
/// messages (`VirtualService payments: spec.hosts: …`).
pub fn from_document(document: Value, source: &str) -> Result<Resource, Vec<String>> {
    Resource::from_document(document, source, 0)
}

/// Reads multi-document YAML into resources. Empty documents are skipped; anything wrong in any
/// document rejects the whole text, with every problem found, each naming `source`, the
/// document and the field's path. A syntax error names its line and column.
pub fn parse_yaml(text: &str, source: &str) -> Result<Vec<Resource>, Vec<String>> {
    let docs = yaml::load(text, source)?;
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let index = i + 1;
        // `---` with nothing after it, or only comments: nothing to apply, as kubectl reads it.
        if matches!(doc, Yaml::Null | Yaml::BadValue) {
            continue;
        }
        let value = match yaml::to_json(doc, "") {
            Ok(v) => v,
            Err(e) => {
                let label = match (doc["kind"].as_str(), doc["metadata"]["name"].as_str()) {
                    (Some(k), Some(n)) => format!(" ({k} {n})"),
                    _ => String::new(),
                };
                errors.push(format!("{source}: document {index}{label}: {e}"));
                continue;
            }
        };
        match Resource::from_document(value, source, index) {
            Ok(r) => resources.push(r),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if resources.is_empty() && errors.is_empty() {
        errors.push(format!("{source}: no resources found"));
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(errors)
    }
}

/// Problems found in one document, each `path: message`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn at(&mut self, path: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(format!("{path}: {message}"));
    }
}

/// Istio fields Weft knows but does not implement, by where they sit under `spec`
/// (`[]` = every element of a list).
pub(super) type Unsupported = &'static [(&'static str, &'static [&'static str])];

/// Reads kind, name, namespace and spec, recording every problem found.
fn read_document(doc: &Value, problems: &mut Problems) -> Option<(Kind, String, String, Spec)> {
    let Some(top) = doc.as_object() else {
        problems.0.push(format!(
            "expected a mapping with apiVersion, kind, metadata and spec, found {}",
            type_name(doc)
        ));
        return None;
    };
    for key in top.keys() {
        // `status` appears in what `kubectl get -o yaml` prints; it is the server's, not ours.
        if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
            problems.0.push(format!(
                "unknown field `{key}`, expected one of `apiVersion`, `kind`, `metadata`, `spec`"
            ));
        }
    }

    let kind = match top.get("kind") {
        None => {
            problems.at("kind", "required");
            None
        }
        Some(Value::String(k)) => match Kind::from_document(k) {
            Some(kind) => Some(kind),
            None => {
                problems.at(
                    "kind",
                    format!(
                        "{k} is not supported by Weft yet (supported: VirtualService, DestinationRule, WasmPlugin, AuthorizationPolicy, PeerAuthentication, Telemetry)"
                    ),
                );
                None
            }
        },
        Some(other) => {
            problems.at(
                "kind",
                format!("expected a string, found {}", type_name(other)),
            );
            None
        }
    };

    match (top.get("apiVersion"), kind) {
        (None, _) => problems.at("apiVersion", "required"),
        (Some(Value::String(v)), Some(kind)) if !kind.api_versions().contains(&v.as_str()) => {
            problems.at(
                "apiVersion",
                format!(
                    "{v} does not serve {kind} (use {})",
                    kind.api_versions().join(", ")
                ),
            )
        }
        (Some(Value::String(_)), _) => {}
        (Some(other), _) => problems.at(
            "apiVersion",
            format!("expected a string, found {}", type_name(other)),
        ),
    }

    let (name, namespace) = read_metadata(top.get("metadata"), problems);
    // A WasmPlugin named like a built-in (`retry`) replaces it: see compile::replace_builtin.

    let mut spec = match top.get("spec") {
        None => {
            problems.at("spec", "required");
            None
        }
        Some(spec @ Value::Object(_)) => {
            kind.and_then(|k| read_spec(k, spec, &namespace, problems))
        }
        Some(other) => {
            problems.at(
                "spec",
                format!("expected a mapping, found {}", type_name(other)),
            );
            None
        }
    };
    if let Some(Spec::WasmPlugin(wp)) = &mut spec {
        wp.routes = read_routes(top.get("metadata"), problems);
        wp.limits = plugin_limits::read_limits(top.get("metadata"), problems);
        check_route_scope(wp, problems);
    }
    Some((kind?, name?, namespace, spec?))
}

fn read_metadata(metadata: Option<&Value>, problems: &mut Problems) -> (Option<String>, String) {
    let mut namespace = DEFAULT_NAMESPACE.to_string();
    let Some(metadata) = metadata else {
        problems.at("metadata", "required");
        return (None, namespace);
    };
    let Some(m) = metadata.as_object() else {
        problems.at(
            "metadata",
            format!("expected a mapping, found {}", type_name(metadata)),
        );
        return (None, namespace);
    };
    // Other metadata (labels, annotations, what a server adds) is kept in the document and
    // otherwise not read; annotations are bounded as Kubernetes bounds them.
    if let Some(Value::Object(annotations)) = m.get("annotations") {
        let size: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > MAX_ANNOTATION_BYTES {
            problems.at(
                "metadata.annotations",
                format!(
                    "{size} bytes; annotations may hold at most {} KiB in all",
                    MAX_ANNOTATION_BYTES >> 10
                ),
            );
        }
    }
    let name = match m.get("name") {
        None => {
            problems.at("metadata.name", "required");
            None
        }
        Some(Value::String(n)) if is_dns_subdomain(n) => Some(n.clone()),
        Some(Value::String(n)) => {
            problems.at(
                "metadata.name",
                format!(
                    "{n:?} is not a valid name (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
                ),
            );
            None
        }
        Some(other) => {
            problems.at(
                "metadata.name",
                format!("expected a string, found {}", type_name(other)),
            );
            None
        }
    };
    match m.get("namespace") {
        None => {}
        Some(Value::String(ns)) if is_dns_label(ns) => namespace = ns.clone(),
        Some(Value::String(ns)) => problems.at(
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace (lower-case letters, digits and '-')"),
        ),
        Some(other) => problems.at(
            "metadata.namespace",
            format!("expected a string, found {}", type_name(other)),
        ),
    }
    (name, namespace)
}

fn read_spec(kind: Kind, spec: &Value, namespace: &str, problems: &mut Problems) -> Option<Spec> {
    let rules = match kind {
        Kind::VirtualService => VS_UNSUPPORTED,
        Kind::DestinationRule => DR_UNSUPPORTED,
        Kind::WasmPlugin => WASM_UNSUPPORTED,
        Kind::AuthorizationPolicy => AUTHZ_UNSUPPORTED,
        Kind::PeerAuthentication => PEER_AUTHN_UNSUPPORTED,
        Kind::Telemetry => TELEMETRY_UNSUPPORTED,
        Kind::GatewayHttpRoute => HTTP_ROUTE_UNSUPPORTED,
        Kind::GatewayGrpcRoute => GRPC_ROUTE_UNSUPPORTED,
        Kind::Sidecar => SIDECAR_UNSUPPORTED,
        Kind::ServiceEntry => SERVICE_ENTRY_UNSUPPORTED,
    };
    // Unsupported fields are named and taken out first, so the typed read below still reports
    // the document's other mistakes in the same pass.
    let mut spec = spec.clone();
    for (at, fields) in rules {
        let segments: Vec<&str> = at.split('.').filter(|s| !s.is_empty()).collect();
        strip_unsupported(&mut spec, &segments, "spec".to_string(), fields, problems);
    }
    match kind {
        Kind::VirtualService => typed::<VirtualService>(spec, problems).map(|vs| {
            check_virtual_service(&vs, namespace, problems);
            Spec::VirtualService(vs)
        }),
        Kind::DestinationRule => typed::<DestinationRule>(spec, problems).map(|dr| {
            check_destination_rule(&dr, namespace, problems);
            Spec::DestinationRule(dr)
        }),
        Kind::WasmPlugin => typed::<WasmPlugin>(spec, problems).map(|wp| {
            check_wasm_plugin(&wp, namespace, problems);
            Spec::WasmPlugin(wp)
        }),
        Kind::AuthorizationPolicy => typed::<AuthorizationPolicy>(spec, problems).map(|ap| {
            check_authorization_policy(&ap, problems);
            Spec::AuthorizationPolicy(ap)
        }),
        Kind::PeerAuthentication => typed::<PeerAuthentication>(spec, problems).map(|pa| {
            check_peer_authentication(&pa, problems);
            Spec::PeerAuthentication(pa)
        }),
        Kind::Telemetry => typed::<Telemetry>(spec, problems).map(|t| {
            check_telemetry(&t, problems);
            Spec::Telemetry(t)
        }),
        Kind::GatewayHttpRoute => typed::<GatewayHttpRoute>(spec, problems).map(|mut hr| {
            check_http_route(&hr, namespace, problems);
            hr.mesh = hr.to_virtual_service(namespace);
            Spec::GatewayHttpRoute(hr)
        }),
        Kind::GatewayGrpcRoute => typed::<GatewayGrpcRoute>(spec, problems).map(|mut gr| {
            check_grpc_route(&gr, namespace, problems);
            gr.mesh = gr.to_virtual_service(namespace);
            Spec::GatewayGrpcRoute(gr)
        }),
        Kind::Sidecar => typed::<SidecarScope>(spec, problems).map(|s| {
            check_sidecar(&s, problems);
            Spec::Sidecar(s)
        }),
        Kind::ServiceEntry => typed::<ServiceEntry>(spec, problems).map(|s| {
            check_service_entry(&s, namespace, problems);
            Spec::ServiceEntry(s)
        }),
    }
}

fn strip_unsupported(
    value: &mut Value,
    segments: &[&str],
    path: String,
    fields: &[&str],
    problems: &mut Problems,
) {
    let Some((segment, rest)) = segments.split_first() else {
        if let Some(object) = value.as_object_mut() {
            for field in fields {
                if object.remove(*field).is_some() {
                    problems.at(format!("{path}.{field}"), "not supported by Weft yet");
                }
            }
        }
        return;
    };
    let (key, each) = match segment.strip_suffix("[]") {
        Some(key) => (key, true),
        None => (*segment, false),
    };
    let Some(child) = value.as_object_mut().and_then(|o| o.get_mut(key)) else {
        return;
    };
    if !each {
        strip_unsupported(child, rest, format!("{path}.{key}"), fields, problems);
    } else if let Some(items) = child.as_array_mut() {
        for (i, item) in items.iter_mut().enumerate() {
            strip_unsupported(item, rest, format!("{path}.{key}[{i}]"), fields, problems);
        }
    }
}

/// Deserializes a spec, naming the path of what is wrong.
fn typed<T: serde::de::DeserializeOwned>(spec: Value, problems: &mut Problems) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(spec) {
        Ok(t) => Some(t),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            problems.at(path, e.inner());
            None
        }
    }
}

fn check_percentage(value: f64, at: &str, problems: &mut Problems) {
    if !(0.0..=100.0).contains(&value) {
        problems.at(at, format!("must be between 0 and 100, got {value}"));
    }
}

fn check_duration(text: &str, at: &str, positive: bool, problems: &mut Problems) {
    match parse_duration(text) {
        Err(e) => problems.at(at, e),
        Ok(d) if positive && d.as_millis() < 1 => problems.at(at, "must be at least 1ms"),
        Ok(_) => {}
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}
