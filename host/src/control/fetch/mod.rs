//! What the control plane fetches for a WasmPlugin's `url`, when it is applied: `http://` and
//! `https://` URLs (the server's certificate checked against the system's trust store), and
//! `oci://` images from a registry ([`oci`]). Registries are spoken to over HTTPS unless
//! `weft control --plain-http-registry <host:port>` names them (a local registry, as Docker's
//! insecure registries).

mod get;
pub mod oci;

use bytes::Bytes;

/// The most an artifact fetched by URL may hold, as a pushed one.
const MAX_ARTIFACT: usize = 32 << 20;

/// Fetches plugin artifacts.
#[derive(Debug, Clone, Default)]
pub struct Fetcher {
    plain_http: Vec<String>,
}

impl Fetcher {
    /// A fetcher speaking plain HTTP to the registries `plain_http` names (`host:port`).
    pub fn new(plain_http: Vec<String>) -> Self {
        Fetcher { plain_http }
    }

    /// Downloads an `http://` or `https://` URL.
    pub async fn url(&self, url: &str) -> Result<Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
        let reply = get::get(&uri, &[], MAX_ARTIFACT).await?;
        if !reply.status.is_success() {
            return Err(format!("answered {}", reply.status));
        }
        Ok(reply.body)
    }

    /// Pulls the plugin an `oci://` reference names, with `credentials` if the registry
    /// asks for them.
    pub async fn oci(
        &self,
        reference: &oci::Reference,
        credentials: Option<&oci::Credentials>,
    ) -> Result<oci::Pulled, String> {
        oci::pull(reference, self.plain(reference), credentials).await
    }

    /// The signatures published beside the OCI image of manifest `manifest_hex`.
    pub async fn oci_signatures(
        &self,
        reference: &oci::Reference,
        manifest_hex: &str,
        credentials: Option<&oci::Credentials>,
    ) -> Result<Vec<String>, String> {
        oci::signatures(reference, manifest_hex, self.plain(reference), credentials).await
    }

    /// The signature published at `<url>.sig`, if there is one.
    pub async fn url_signature(&self, url: &str) -> Result<Option<String>, String> {
        let uri: http::Uri = format!("{url}.sig")
            .parse()
            .map_err(|e| format!("invalid URL: {e}"))?;
        let reply = get::get(&uri, &[], 4 << 10).await?;
        match reply.status {
            http::StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(
                String::from_utf8_lossy(&reply.body).trim().to_string(),
            )),
            s => Err(format!("{url}.sig answered {s}")),
        }
    }

    /// Whether `reference`'s registry is spoken to over plain HTTP.
    pub fn plain(&self, reference: &oci::Reference) -> bool {
        self.plain_http.contains(&reference.registry)
    }
}
