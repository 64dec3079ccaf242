//! PeerAuthentication (`security.istio.io`): the spec as written, the Istio fields Weft
//! refuses, and the checks one document gets.

use super::*;

/// A PeerAuthentication's spec: the mTLS mode of the inbound listener of the workloads it
/// selects.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// The workloads it applies to, by labels; none (or no labels): its whole namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode; none: inherit (as `UNSET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
}

/// Istio's `PeerAuthentication.MutualTLS`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerMtls {
    /// The mode; none: `UNSET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsModeName>,
}

/// Istio's `PeerAuthentication.MutualTLS.Mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtlsModeName {
    /// Inherit from the namespace-wide or mesh-wide policy.
    #[serde(rename = "UNSET")]
    Unset,
    /// Refused: a Weft sidecar with mTLS always has an identity to present.
    #[serde(rename = "DISABLE")]
    Disable,
    /// mTLS or plaintext.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// mTLS only.
    #[serde(rename = "STRICT")]
    Strict,
}

/// Which of Istio's three levels a PeerAuthentication is at, most specific last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerAuthnScope {
    /// In [`ROOT_NAMESPACE`] without a selector: every workload.
    Mesh,
    /// In a workload namespace without a selector: every workload there.
    Namespace,
    /// In a workload namespace with `selector.matchLabels`: the workloads carrying them.
    Workload,
}

impl PeerAuthentication {
    /// Its level, as Istio reads it, or none when it can select no workload: Istio ignores a
    /// selector in the root namespace (it would pick root-namespace workloads only).
    pub fn scope(&self, namespace: &str) -> Option<PeerAuthnScope> {
        let selects = self
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        match (namespace == ROOT_NAMESPACE, selects) {
            (true, false) => Some(PeerAuthnScope::Mesh),
            (true, true) => None,
            (false, false) => Some(PeerAuthnScope::Namespace),
            (false, true) => Some(PeerAuthnScope::Workload),
        }
    }

    /// Whether the policy, in namespace `own`, applies to a workload in `namespace` carrying
    /// `labels`.
    pub fn selects(&self, own: &str, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        match self.scope(own) {
            None => false,
            Some(PeerAuthnScope::Mesh) => true,
            Some(_) if own != namespace => false,
            Some(_) => self.selector.as_ref().is_none_or(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
            }),
        }
    }

    /// The mode it sets, none when it inherits (`UNSET` or no `mtls`); `DISABLE` is refused
    /// when the document is read, so it never gets here.
    pub fn mode(&self) -> Option<crate::snapshot::MtlsMode> {
        match self.mtls.as_ref().and_then(|m| m.mode) {
            Some(MtlsModeName::Strict) => Some(crate::snapshot::MtlsMode::Strict),
            Some(MtlsModeName::Permissive) => Some(crate::snapshot::MtlsMode::Permissive),
            Some(MtlsModeName::Unset | MtlsModeName::Disable) | None => None,
        }
    }
}

// Per-port modes need the listener to know the app's ports, which Weft's sidecar does not.
pub(in crate::control) const PEER_AUTHN_UNSUPPORTED: Unsupported = &[("", &["portLevelMtls"])];

pub(super) fn check_peer_authentication(pa: &PeerAuthentication, problems: &mut Problems) {
    if pa.mtls.as_ref().and_then(|m| m.mode) == Some(MtlsModeName::Disable) {
        problems.at(
            "spec.mtls.mode",
            "DISABLE is not supported: Weft sidecars always have identities once mTLS is on (use PERMISSIVE to accept plaintext as well)",
        );
    }
}
