//! The artifact store's uploads: a pushed component is checked the way a sidecar would load
//! it (validated, compiled, linked against the contract) before it is stored, so a broken
//! artifact is refused at push rather than by every sidecar that is sent it.

use super::api::{Body, error, json};
use super::checker::Check;
use super::server::Shared;
use http::{Response, StatusCode};
use std::sync::Arc;

/// `POST /v1/artifacts[?signature=<hex>]`: stores a component a sidecar can run, and the
/// publisher's detached signature of it if given; answers its sha256.
pub(super) async fn push(
    shared: &Arc<Shared>,
    body: bytes::Bytes,
    signature: Option<String>,
) -> Response<Body> {
    if let Some(s) = &signature
        && !(s.len() == 128 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "signature: not an ed25519 signature (128 hex digits)",
        );
    }
    let digest = match store_checked(shared, body, Check::Full).await {
        Ok(digest) => digest,
        Err((status, reason)) => return error(status, reason),
    };
    if let Some(s) = signature
        && let Err(e) = shared.store.add_signature(&digest, &s)
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    json(StatusCode::OK, &serde_json::json!({"sha256": digest}))
}

/// Checks a component as a sidecar would load it and stores it; returns its sha256, or the
/// status and reason it was refused with. Stored artifacts were checked when they came in.
/// A `Check::Quick` check leaves the optimized compile running behind it (also for a stored
/// artifact whose optimized code is missing, as after a restart that interrupted it).
pub(super) async fn store_checked(
    shared: &Arc<Shared>,
    body: bytes::Bytes,
    how: Check,
) -> Result<String, (StatusCode, String)> {
    // Wasm's magic: a component, or a core module (a proxy-wasm filter); the check below
    // says which, and refuses a core module that is not a proxy-wasm filter.
    if !(body.len() >= 8 && body.starts_with(b"\0asm")) {
        return Err((
            StatusCode::BAD_REQUEST,
            "not WebAssembly: a plugin is a weft:filter component (built for wasm32-wasip2) \
             or a proxy-wasm filter (a core module)"
                .into(),
        ));
    }
    let digest = crate::plugin::sha256_hex(&body);
    if shared.store.has_artifact(&digest) {
        if how == Check::Quick {
            optimize_behind(shared, body);
        }
        return Ok(digest);
    }
    let (checking, bytes) = (shared.clone(), body.clone());
    match tokio::task::spawn_blocking(move || checking.checker.check(&bytes, how)).await {
        Ok(Ok(())) => {
            if how == Check::Quick {
                optimize_behind(shared, body.clone());
            }
        }
        Ok(Err(reason)) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("artifact refused: {reason}"),
            ));
        }
        Err(e) => {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("checking the artifact failed: {e}"),
            ));
        }
    }
    shared
        .store
        .put_artifact(&body)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Compiles the optimized code of `body` off the apply's path, unless it is kept already.
fn optimize_behind(shared: &Arc<Shared>, body: bytes::Bytes) {
    let compiling = shared.clone();
    tokio::task::spawn_blocking(move || {
        if !compiling
            .checker
            .has_optimized(&crate::plugin::sha256_hex(&body))
        {
            compiling.checker.optimize(&body);
        }
    });
}
