//! The control plane as the mesh CA: the identity a token proves, certificates signed from CSRs
//! for exactly that identity, and the operator's root rotation steps.

use super::api::{Body, error, json};
use super::auth::Caller;
use super::server::{ControlError, Shared};
use super::serving::write_bundle;
use super::store::CommitError;
use super::wire::{CertificateAnswer, IdentityAnswer};
use crate::identity::{Ca, CaError, SpiffeId, system_clock};
use http::{Response, StatusCode};
use std::time::UNIX_EPOCH;

/// A step of a root rotation (see [`crate::identity::Ca`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CaStep {
    /// A new root joins the bundle; the current one keeps signing.
    Stage,
    /// The staged root signs, the API's own certificate included.
    Activate,
    /// The old roots leave the bundle.
    Retire,
}

/// Takes one rotation step and publishes the bundle it leaves.
pub(super) fn ca_step(shared: &Shared, step: CaStep) -> Result<(), ControlError> {
    let mut ca = shared.ca.lock();
    match shared.store.postgres() {
        None => take(&mut ca, step)?,
        // Taken on the CA as the store has it now, and kept only if no replica changed it
        // meanwhile: every replica signs with the root the store names.
        Some(pg) => {
            let stored = pg.ca()?.ok_or_else(|| {
                ControlError::Conflict("the store holds no CA: restart a replica".into())
            })?;
            let mut fresh = Ca::from_record(&stored.record, &shared.trust_domain, system_clock())?;
            take(&mut fresh, step)?;
            let version = match pg.save_ca(stored.version, &fresh.record()) {
                Ok(v) => v,
                Err(CommitError::Stale { .. }) => {
                    return Err(ControlError::Conflict(
                        "another replica changed the CA at the same time: take the step again"
                            .into(),
                    ));
                }
                Err(CommitError::Store(e)) => return Err(e.into()),
            };
            *ca = fresh;
            shared.seen.lock().ca = version;
        }
    }
    let bundle = ca.bundle();
    write_bundle(&shared.data_dir, &bundle)?;
    if step == CaStep::Activate {
        shared.serving.reissue(&ca)?;
    }
    let roots = bundle.matches("BEGIN CERTIFICATE").count();
    tracing::info!(?step, roots, "CA rotation step taken");
    Ok(())
}

fn take(ca: &mut Ca, step: CaStep) -> Result<(), CaError> {
    match step {
        CaStep::Stage => ca.stage_root(),
        CaStep::Activate => ca.activate_root(),
        CaStep::Retire => ca.retire_old_roots(),
    }
}

/// Applies a CA change and answers with the bundle now in force.
pub(super) fn ca_change(shared: &Shared, step: CaStep) -> Response<Body> {
    match ca_step(shared, step) {
        Ok(()) => {
            let bundle = shared.ca.lock().bundle();
            let roots = bundle.matches("-----BEGIN CERTIFICATE-----").count();
            json(
                StatusCode::OK,
                &serde_json::json!({"roots": roots, "bundle": bundle}),
            )
        }
        Err(e @ ControlError::Conflict(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The identity a service's token proves (its key names the namespace): the only one the CA
/// signs for it.
fn identity_of(shared: &Shared, service: &str) -> Result<SpiffeId, String> {
    let (name, namespace) = crate::names::key_parts(service);
    if namespace == crate::identity::CONTROL_NAMESPACE {
        return Err(format!(
            "namespace {namespace} is the control plane's: the CA signs no workload in it"
        ));
    }
    SpiffeId::new(&shared.trust_domain, namespace, name)
        .map_err(|e| format!("service {service:?} cannot be a SPIFFE identity: {e}"))
}

pub(super) fn identity(shared: &Shared, who: &Caller) -> Response<Body> {
    let Caller::Service(service) = who else {
        return error(
            StatusCode::BAD_REQUEST,
            "the operator token names no workload: use a service token",
        );
    };
    match identity_of(shared, service) {
        Ok(id) => json(
            StatusCode::OK,
            &IdentityAnswer {
                spiffe_id: id.to_string(),
                trust_domain: shared.trust_domain.clone(),
            },
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// The largest CSR read: a P-256 CSR with one URI SAN is well under 1 KiB.
const MAX_CSR: usize = 16 << 10;

/// Signs a CSR: a sidecar gets exactly its token's identity; the operator gets the service the
/// CSR names, within this trust domain and namespace.
pub(super) fn certificate(shared: &Shared, who: &Caller, body: &[u8]) -> Response<Body> {
    if body.len() > MAX_CSR {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a CSR is at most {MAX_CSR} bytes"),
        );
    }
    let Ok(csr) = std::str::from_utf8(body) else {
        return error(StatusCode::BAD_REQUEST, "the CSR is not PEM text");
    };
    let service = match who {
        Caller::Service(s) => s.clone(),
        Caller::Operator => match requested_service(csr) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
    };
    let expected = match identity_of(shared, &service) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (issued, bundle) = {
        let ca = shared.ca.lock();
        (
            ca.sign_csr(csr, &expected, shared.cert_lifetime),
            ca.bundle(),
        )
    };
    let issued = match issued {
        Ok(i) => i,
        Err(e @ CaError::WrongIdentity { .. }) => {
            tracing::warn!(caller = %expected, "certificate refused: {e}");
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "a sidecar cannot obtain a certificate for another service's identity: {e}"
                ),
            );
        }
        Err(
            e @ (CaError::Csr(_)
            | CaError::NoIdentity
            | CaError::OtherSans(_)
            | CaError::BadIdentity(_)),
        ) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            tracing::error!(identity = %expected, "cannot sign a certificate: {e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    let not_after = issued
        .not_after
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tracing::info!(identity = %expected, not_after_ms = not_after, "issued a workload certificate");
    json(
        StatusCode::OK,
        &CertificateAnswer {
            chain: issued.chain_pem,
            bundle,
            not_after,
            spiffe_id: expected.to_string(),
            trust_domain: shared.trust_domain.clone(),
        },
    )
}

/// The service a CSR's SPIFFE ID names (the operator's requests; the CA still checks the whole
/// ID against this trust domain and namespace).
fn requested_service(csr: &str) -> Result<String, String> {
    let parsed = rcgen::CertificateSigningRequestParams::from_pem(csr)
        .map_err(|e| format!("CSR refused: {e}"))?;
    parsed
        .params
        .subject_alt_names
        .iter()
        .find_map(|san| match san {
            rcgen::SanType::URI(uri) => SpiffeId::parse(uri.as_str()).ok(),
            _ => None,
        })
        .map(|id| crate::names::service_key(id.service(), id.namespace()))
        .ok_or_else(|| "CSR refused: it names no SPIFFE ID (one URI SAN expected)".to_string())
}
