//! Registry credentials the control plane keeps for pulling private OCI plugins: Istio's
//! `imagePullSecret` names one, in the WasmPlugin's namespace. Set by the operator
//! (`weft pull-secret`, `PUT /v1/pull-secrets/<name>?namespace=<ns>`), kept owner-only in the
//! store (the data directory's `pull-secrets.json`, 0600, or sealed in a shared store), listed
//! without their passwords, used only for the registry they name.

use super::api::{Body, error, json};
use super::server::Shared;
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};

/// One registry credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullSecret {
    /// The registry it is for (`host[:port]`).
    pub server: String,
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: String,
}

/// The credential `name` in `namespace`.
pub fn get(
    store: &super::store::Store,
    namespace: &str,
    name: &str,
) -> Result<Option<PullSecret>, String> {
    Ok(store
        .pull_secrets()
        .map_err(|e| e.to_string())?
        .remove(&format!("{namespace}/{name}")))
}

/// `PUT /v1/pull-secrets/<name>?namespace=<ns>`: keeps a credential (operator).
pub(super) fn put(shared: &Shared, namespace: &str, name: &str, body: &[u8]) -> Response<Body> {
    if !crate::names::is_dns_label(name) || !crate::names::is_dns_label(namespace) {
        return error(
            StatusCode::BAD_REQUEST,
            "a pull secret's name and namespace are each 1 to 63 of a-z, 0-9 and '-'",
        );
    }
    let secret: PullSecret = match serde_json::from_slice(body) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"server\", \"username\", \"password\"}}: {e}"),
            );
        }
    };
    if secret.server.is_empty() || secret.server.contains(['/', ' ']) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("server: {:?} is not a registry host[:port]", secret.server),
        );
    }
    // One writer at a time: the mesh lock orders changes.
    let _changes = shared.mesh.lock();
    match shared
        .store
        .put_pull_secret(&format!("{namespace}/{name}"), &secret)
    {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({"pullSecret": format!("{namespace}/{name}")}),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/pull-secrets`: every credential's name and registry, never its password.
pub(super) fn list(shared: &Shared) -> Response<Body> {
    match shared.store.pull_secrets() {
        Ok(all) => {
            let shown: Vec<serde_json::Value> = all
                .iter()
                .map(|(k, s)| serde_json::json!({"name": k, "server": s.server, "username": s.username}))
                .collect();
            json(StatusCode::OK, &serde_json::json!({"pullSecrets": shown}))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
