//! Workloads as plugins see them at either end of a call (`source-workload`,
//! `destination-workload`), and the metadata a caller's sidecar sends so the destination's
//! can name the caller's labels (Istio's metadata exchange, reduced to what its standard
//! metrics need).

use http::{HeaderName, HeaderValue};
use std::collections::BTreeMap;

/// The request header carrying the caller's workload (`app=orders;version=v1`), set by the
/// caller's sidecar and removed by the destination's before the app sees the request.
pub const PEER_METADATA: HeaderName = HeaderName::from_static("x-weft-peer");

/// The longest metadata header read: two label values of at most 63 characters, and names.
const MAX_METADATA: usize = 160;

/// A workload's name form: `name=<name>;namespace=<ns>;app=<app>;version=<version>`, `app`
/// defaulting to the name, `version` empty when it has none.
pub fn encode(name: &str, namespace: &str, labels: &BTreeMap<String, String>) -> String {
    let app = labels.get("app").map_or(name, String::as_str);
    let version = labels.get("version").map_or("", String::as_str);
    format!("name={name};namespace={namespace};app={app};version={version}")
}

/// The workload serving as an endpoint of service `key` with `labels`.
pub fn of_endpoint(key: &str, labels: &BTreeMap<String, String>) -> String {
    let (name, namespace) = crate::names::key_parts(key);
    encode(name, namespace, labels)
}

/// What this sidecar says of its workload to the peers it calls.
pub fn metadata(labels: &BTreeMap<String, String>, name: &str) -> Option<HeaderValue> {
    let app = labels.get("app").map_or(name, String::as_str);
    let version = labels.get("version").map_or("", String::as_str);
    HeaderValue::from_str(&format!("app={app};version={version}")).ok()
}

/// A label value as Kubernetes allows one: at most 63 of `[A-Za-z0-9._-]`.
fn label_value_ok(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The caller's workload: name and namespace from its verified identity, `app` and `version`
/// from the metadata its sidecar sent (dropped whole when malformed: a claim is kept only as
/// a caller's sidecar writes it).
pub fn of_caller(identity: &crate::identity::SpiffeId, metadata: Option<&HeaderValue>) -> String {
    let mut labels = BTreeMap::new();
    if let Some(text) = metadata
        .filter(|v| v.len() <= MAX_METADATA)
        .and_then(|v| v.to_str().ok())
    {
        let mut claimed = BTreeMap::new();
        let mut ok = true;
        for kv in text.split(';') {
            match kv.split_once('=') {
                Some((k @ ("app" | "version"), v)) if label_value_ok(v) => {
                    claimed.insert(k.to_string(), v.to_string());
                }
                _ => ok = false,
            }
        }
        if ok {
            labels = claimed;
        }
    }
    encode(identity.service(), identity.namespace(), &labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ns: &str, sa: &str) -> crate::identity::SpiffeId {
        crate::identity::SpiffeId::parse(&format!("spiffe://weft.local/ns/{ns}/sa/{sa}"))
            .expect("a valid id")
    }

    #[test]
    fn a_caller_is_named_by_its_identity_and_labelled_by_its_sidecar() {
        let labels = BTreeMap::from([("version".to_string(), "v2".to_string())]);
        let sent = metadata(&labels, "orders").expect("a header value");
        assert_eq!(sent, "app=orders;version=v2");
        assert_eq!(
            of_caller(&id("shop", "orders"), Some(&sent)),
            "name=orders;namespace=shop;app=orders;version=v2"
        );
        // No metadata: the identity alone, app defaulting to the name.
        assert_eq!(
            of_caller(&id("default", "orders"), None),
            "name=orders;namespace=default;app=orders;version="
        );
    }

    #[test]
    fn a_claim_that_could_forge_another_field_is_dropped() {
        for forged in [
            "app=x;name=payments",
            "app=x;version=v1;namespace=kube-system",
            "version=a b",
            "app",
        ] {
            let v = HeaderValue::from_static(forged);
            assert_eq!(
                of_caller(&id("shop", "orders"), Some(&v)),
                "name=orders;namespace=shop;app=orders;version=",
                "{forged}"
            );
        }
        let long = HeaderValue::from_str(&format!("app={}", "a".repeat(200))).expect("value");
        assert!(of_caller(&id("shop", "orders"), Some(&long)).contains("app=orders;"));
    }

    #[test]
    fn an_endpoint_is_named_by_its_service_key() {
        let labels = BTreeMap::from([
            ("app".to_string(), "payments".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]);
        assert_eq!(
            of_endpoint("payments.shop", &labels),
            "name=payments;namespace=shop;app=payments;version=v1"
        );
    }
}
