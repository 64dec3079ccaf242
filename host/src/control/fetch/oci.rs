//! Wasm plugins as OCI images, pulled from and pushed to a registry over the OCI distribution
//! API, in Istio's two layouts: the Wasm artifact (a layer of media type
//! [`WASM_LAYER`] holding the component itself, config [`WASM_CONFIG`]), and the "compat"
//! container image (a gzipped or plain tar layer holding `plugin.wasm`). A registry asking for
//! a token (`WWW-Authenticate: Bearer`) gets the anonymous token dance; every blob and a
//! manifest named by digest are checked against their sha256.

use super::get::{Reply, get, resolve, send};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Value, json};
use std::io::Read;

/// The media type of a layer that is a Wasm component (Istio's Wasm OCI artifact).
pub const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The config media type of a Wasm OCI artifact.
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// The media type of a layer holding a Weft plugin signature (hex), in the image tagged
/// `sha256-<manifest hex>.sig` beside the plugin's (cosign's naming).
pub const SIGNATURE_LAYER: &str = "application/vnd.weft.plugin.signature.v1";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const INDEXES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The most a manifest may hold.
const MAX_MANIFEST: usize = 4 << 20;
/// The most a layer (and the component in it) may hold, as a pushed artifact.
const MAX_LAYER: usize = 32 << 20;

/// An `oci://registry[:port]/repository[:tag][@sha256:<hex>]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    /// `path/to/repo`.
    pub repository: String,
    /// The tag, when given.
    pub tag: Option<String>,
    /// The manifest's sha256 (hex), when given.
    pub digest: Option<String>,
}

impl Reference {
    /// Reads an `oci://` URL.
    pub fn parse(url: &str) -> Result<Reference, String> {
        let rest = url
            .strip_prefix("oci://")
            .ok_or_else(|| format!("{url:?} is not an oci:// reference"))?;
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => {
                let hex = d.strip_prefix("sha256:").ok_or_else(|| {
                    format!("{url:?}: a digest is written @sha256:<64 hex digits>")
                })?;
                if !crate::snapshot::is_digest(hex) {
                    return Err(format!(
                        "{url:?}: a digest is written @sha256:<64 lower-case hex digits>"
                    ));
                }
                (r, Some(hex.to_string()))
            }
            None => (rest, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{url:?}: give oci://<registry>/<repository>[:<tag>]"))?;
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(format!("{url:?}: {registry:?} is not a registry host"));
        }
        // A tag follows the last `:` after the last `/`.
        let last = path.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match path[last..].rfind(':') {
            Some(i) => (&path[..last + i], Some(&path[last + i + 1..])),
            None => (path, None),
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        };
        if !repository.split('/').all(component_ok) {
            return Err(format!(
                "{url:?}: {repository:?} is not a repository (lower-case path components)"
            ));
        }
        if let Some(t) = tag
            && (t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                || t.starts_with(['.', '-']))
        {
            return Err(format!("{url:?}: {t:?} is not a tag"));
        }
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// What the registry is asked for: the digest, else the tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("sha256:{d}"),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// Whether it names a tag that moves: no digest.
    pub fn is_mutable(&self) -> bool {
        self.digest.is_none()
    }
}

/// A plugin pulled: its manifest's digest and the component.
#[derive(Debug)]
pub struct Pulled {
    /// The manifest's sha256 (hex).
    pub manifest_digest: String,
    /// The component's bytes.
    pub wasm: Vec<u8>,
}

/// A registry user and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl Credentials {
    fn basic(&self) -> String {
        use base64::Engine as _;
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Talks to one registry for one repository, with the token it was given.
struct Session<'a> {
    reference: &'a Reference,
    scheme: &'static str,
    /// What the registry asked for: `Bearer <token>` or `Basic <credentials>`.
    authorization: Option<String>,
    scope: &'static str,
    credentials: Option<&'a Credentials>,
}

impl Session<'_> {
    fn url(&self, path: &str) -> Result<Uri, String> {
        format!("{}://{}{path}", self.scheme, self.reference.registry)
            .parse()
            .map_err(|e| format!("{path}: {e}"))
    }

    fn auth(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.authorization
            .as_ref()
            .and_then(|a| HeaderValue::from_str(a).ok())
            .map(|v| vec![(http::header::AUTHORIZATION, v)])
            .unwrap_or_default()
    }

    /// Sends a request; on a Bearer challenge, gets a token and sends it once more.
    async fn call(
        &mut self,
        method: Method,
        url: &Uri,
        extra: &[(HeaderName, HeaderValue)],
        body: Bytes,
        limit: usize,
    ) -> Result<Reply, String> {
        for tried in [false, true] {
            let mut headers = self.auth();
            headers.extend(extra.iter().cloned());
            let reply = if method == Method::GET {
                get(url, &headers, limit).await?
            } else {
                send(method.clone(), url, &headers, body.clone(), limit).await?
            };
            if reply.status == StatusCode::UNAUTHORIZED && tried {
                return Err(format!(
                    "registry {} refused the credentials (401)",
                    self.reference.registry
                ));
            }
            if reply.status != StatusCode::UNAUTHORIZED {
                return Ok(reply);
            }
            let challenge = reply.header("www-authenticate").unwrap_or("").to_string();
            self.authorization = Some(self.answer(&challenge).await?);
        }
        Err("unauthorized".to_string())
    }

    /// The `Authorization` a challenge asks for: the credentials for `Basic`, a token for
    /// `Bearer` (asked for with the credentials, if any, else anonymously).
    async fn answer(&self, challenge: &str) -> Result<String, String> {
        if challenge.starts_with("Basic") {
            return match self.credentials {
                Some(c) => Ok(c.basic()),
                None => Err(format!(
                    "registry {} wants credentials; name a pull secret in spec.imagePullSecret",
                    self.reference.registry
                )),
            };
        }
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Err(format!(
                "registry {} asks for {challenge:?}, which Weft does not speak",
                self.reference.registry
            ));
        };
        let mut realm = None;
        let mut query = Vec::new();
        for part in split_params(params) {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "realm" => realm = Some(v.to_string()),
                "service" => query.push(format!("service={}", encode(v))),
                "scope" => query.push(format!("scope={}", encode(v))),
                _ => {}
            }
        }
        if !query.iter().any(|q| q.starts_with("scope=")) {
            let scope = format!("repository:{}:{}", self.reference.repository, self.scope);
            query.push(format!("scope={}", encode(&scope)));
        }
        let realm =
            realm.ok_or_else(|| format!("a Bearer challenge without a realm: {challenge:?}"))?;
        let url: Uri = format!("{realm}?{}", query.join("&"))
            .parse()
            .map_err(|e| format!("token realm {realm:?}: {e}"))?;
        let basic: Vec<(HeaderName, HeaderValue)> = self
            .credentials
            .and_then(|c| HeaderValue::from_str(&c.basic()).ok())
            .map(|v| vec![(http::header::AUTHORIZATION, v)])
            .unwrap_or_default();
        let reply = get(&url, &basic, 1 << 20).await?;
        if !reply.status.is_success() {
            return Err(format!("the token service answered {}", reply.status));
        }
        let v: Value = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("the token service's answer: {e}"))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(Value::as_str)
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| "the token service gave no token".to_string())
    }

    /// GETs the reference's manifest, accepting the media types `accept` lists.
    async fn manifest(&mut self, accept: &str) -> Result<Reply, String> {
        let url = self.url(&format!(
            "/v2/{}/manifests/{}",
            self.reference.repository,
            self.reference.reference()
        ))?;
        let accept = HeaderValue::from_str(accept).map_err(|e| e.to_string())?;
        self.call(
            Method::GET,
            &url,
            &[(http::header::ACCEPT, accept)],
            Bytes::new(),
            MAX_MANIFEST,
        )
        .await
    }

    async fn blob(&mut self, digest: &str) -> Result<Vec<u8>, String> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("blob {digest}: only sha256 digests are read"))?;
        let url = self.url(&format!("/v2/{}/blobs/{digest}", self.reference.repository))?;
        let reply = self
            .call(Method::GET, &url, &[], Bytes::new(), MAX_LAYER)
            .await?;
        if !reply.status.is_success() {
            return Err(format!(
                "blob {digest}: the registry answered {}",
                reply.status
            ));
        }
        let actual = crate::plugin::sha256_hex(&reply.body);
        if actual != hex {
            return Err(format!("blob {digest} arrived with sha256 {actual}"));
        }
        Ok(reply.body.to_vec())
    }
}

/// `a="x,y",b=z` split at the commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn session<'a>(reference: &'a Reference, plain_http: bool, scope: &'static str) -> Session<'a> {
    Session {
        reference,
        scheme: if plain_http { "http" } else { "https" },
        authorization: None,
        scope,
        credentials: None,
    }
}

/// Pulls the plugin `reference` names (over plain HTTP with `plain_http`), with
/// `credentials` if the registry asks for them.
pub async fn pull(
    reference: &Reference,
    plain_http: bool,
    credentials: Option<&Credentials>,
) -> Result<Pulled, String> {
    let mut s = session(reference, plain_http, "pull");
    s.credentials = credentials;
    let reply = s
        .manifest(&format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}"))
        .await?;
    if !reply.status.is_success() {
        return Err(format!(
            "manifest {}: the registry answered {}",
            reference.reference(),
            reply.status
        ));
    }
    let manifest_digest = crate::plugin::sha256_hex(&reply.body);
    if let Some(want) = &reference.digest
        && *want != manifest_digest
    {
        return Err(format!(
            "the manifest arrived with sha256 {manifest_digest}, not the {want} the reference names"
        ));
    }
    let manifest: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("the manifest is not JSON: {e}"))?;
    let media = manifest
        .get("mediaType")
        .and_then(Value::as_str)
        .or_else(|| reply.header("content-type"))
        .unwrap_or("");
    if INDEXES.contains(&media) {
        return Err(
            "the reference names an image index (several platforms); name one Wasm image".into(),
        );
    }
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or("the manifest lists no layers")?;
    let digest_of = |l: &Value| l.get("digest").and_then(Value::as_str).map(str::to_string);
    let media_of = |l: &Value| {
        l.get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    // The Wasm artifact: a layer that is the component.
    if let Some(layer) = layers.iter().find(|l| media_of(l) == WASM_LAYER) {
        let digest = digest_of(layer).ok_or("the Wasm layer has no digest")?;
        return Ok(Pulled {
            manifest_digest,
            wasm: s.blob(&digest).await?,
        });
    }
    // The compat image: a tar layer holding plugin.wasm.
    for layer in layers {
        let media = media_of(layer);
        if !(media.contains("tar") || media.contains("rootfs")) {
            continue;
        }
        let digest = digest_of(layer).ok_or("a layer has no digest")?;
        let blob = s.blob(&digest).await?;
        if let Some(wasm) = plugin_wasm(&blob, media.contains("gzip"))? {
            return Ok(Pulled {
                manifest_digest,
                wasm,
            });
        }
    }
    Err(format!(
        "no Wasm in the image: neither a layer of media type {WASM_LAYER} nor a tar layer holding plugin.wasm"
    ))
}

/// `plugin.wasm` out of a (gzipped) tar layer, if it holds one.
fn plugin_wasm(blob: &[u8], gzipped: bool) -> Result<Option<Vec<u8>>, String> {
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    // Bounded: a small layer must not inflate without end.
    let mut archive = tar::Archive::new(reader.take(4 * MAX_LAYER as u64));
    let entries = archive
        .entries()
        .map_err(|e| format!("a layer is not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading a layer: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("reading a layer: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if path == "plugin.wasm" {
            let mut wasm = Vec::new();
            (&mut entry)
                .take(MAX_LAYER as u64 + 1)
                .read_to_end(&mut wasm)
                .map_err(|e| format!("reading plugin.wasm: {e}"))?;
            if wasm.len() > MAX_LAYER {
                return Err(format!("plugin.wasm is over {} MiB", MAX_LAYER >> 20));
            }
            return Ok(Some(wasm));
        }
    }
    Ok(None)
}

/// The tag of the signature image of the manifest of sha256 `manifest_hex`.
fn signature_tag(manifest_hex: &str) -> String {
    format!("sha256-{manifest_hex}.sig")
}

/// The signatures (hex) published beside the image of manifest `manifest_hex`; none when
/// there is no signature image.
pub async fn signatures(
    reference: &Reference,
    manifest_hex: &str,
    plain_http: bool,
    credentials: Option<&Credentials>,
) -> Result<Vec<String>, String> {
    let tagged = Reference {
        tag: Some(signature_tag(manifest_hex)),
        digest: None,
        ..reference.clone()
    };
    let mut s = session(&tagged, plain_http, "pull");
    s.credentials = credentials;
    let reply = s.manifest(OCI_MANIFEST).await?;
    if reply.status == StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    if !reply.status.is_success() {
        return Err(format!(
            "signature image: the registry answered {}",
            reply.status
        ));
    }
    let manifest: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("the signature manifest is not JSON: {e}"))?;
    let mut out = Vec::new();
    for layer in manifest
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if layer.get("mediaType").and_then(Value::as_str) != Some(SIGNATURE_LAYER) {
            continue;
        }
        if let Some(d) = layer.get("digest").and_then(Value::as_str) {
            let blob = s.blob(d).await?;
            out.push(String::from_utf8_lossy(&blob).trim().to_string());
        }
    }
    Ok(out)
}

/// Publishes `signature` (hex) beside the image of manifest `manifest_hex`.
pub async fn push_signature(
    reference: &Reference,
    manifest_hex: &str,
    signature: &str,
    plain_http: bool,
) -> Result<(), String> {
    let tagged = Reference {
        tag: Some(signature_tag(manifest_hex)),
        digest: None,
        ..reference.clone()
    };
    put_image(
        &tagged,
        Bytes::from(signature.trim().to_string()),
        SIGNATURE_LAYER,
        "plugin.wasm.sig",
        plain_http,
    )
    .await
    .map(|_| ())
}

/// Pushes `wasm` as a Wasm OCI artifact to `reference` (its tag, else `latest`); returns the
/// manifest's sha256.
pub async fn push(reference: &Reference, wasm: &[u8], plain_http: bool) -> Result<String, String> {
    put_image(
        reference,
        Bytes::copy_from_slice(wasm),
        WASM_LAYER,
        "plugin.wasm",
        plain_http,
    )
    .await
}

/// Pushes an image of one layer `layer` (media type `media`) to `reference`'s tag; returns
/// the manifest's sha256.
async fn put_image(
    reference: &Reference,
    layer: Bytes,
    media: &str,
    title: &str,
    plain_http: bool,
) -> Result<String, String> {
    if reference.digest.is_some() {
        return Err("push to a tag (oci://registry/repository:tag), not a digest".into());
    }
    let mut s = session(reference, plain_http, "pull,push");
    let config = Bytes::from_static(b"{}");
    let config_digest = format!("sha256:{}", crate::plugin::sha256_hex(&config));
    let layer_digest = format!("sha256:{}", crate::plugin::sha256_hex(&layer));
    for (digest, bytes) in [
        (&config_digest, config.clone()),
        (&layer_digest, layer.clone()),
    ] {
        upload(&mut s, digest, bytes).await?;
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": WASM_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{
            "mediaType": media,
            "digest": layer_digest,
            "size": layer.len(),
            "annotations": { "org.opencontainers.image.title": title },
        }],
    });
    let body = Bytes::from(serde_json::to_vec(&manifest).map_err(|e| e.to_string())?);
    let digest = crate::plugin::sha256_hex(&body);
    let url = s.url(&format!(
        "/v2/{}/manifests/{}",
        reference.repository,
        reference.reference()
    ))?;
    let reply = s
        .call(
            Method::PUT,
            &url,
            &[(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(OCI_MANIFEST),
            )],
            body,
            1 << 20,
        )
        .await?;
    if reply.status != StatusCode::CREATED {
        return Err(format!(
            "putting the manifest: the registry answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ));
    }
    Ok(digest)
}

/// Uploads one blob unless the registry has it (a monolithic upload: POST, then PUT).
async fn upload(s: &mut Session<'_>, digest: &str, bytes: Bytes) -> Result<(), String> {
    let repo = s.reference.repository.clone();
    let head = s.url(&format!("/v2/{repo}/blobs/{digest}"))?;
    let had = s
        .call(Method::HEAD, &head, &[], Bytes::new(), 1 << 10)
        .await?;
    if had.status.is_success() {
        return Ok(());
    }
    let start = s.url(&format!("/v2/{repo}/blobs/uploads/"))?;
    let reply = s
        .call(Method::POST, &start, &[], Bytes::new(), 1 << 16)
        .await?;
    if reply.status != StatusCode::ACCEPTED {
        return Err(format!(
            "starting an upload: the registry answered {}",
            reply.status
        ));
    }
    let location = reply
        .header("location")
        .ok_or("the registry gave no upload location")?;
    let at = resolve(&start, location)?;
    let sep = if at.query().is_some() { '&' } else { '?' };
    let put: Uri = format!("{at}{sep}digest={}", encode(digest))
        .parse()
        .map_err(|e| format!("upload location: {e}"))?;
    let reply = s
        .call(
            Method::PUT,
            &put,
            &[(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            bytes,
            1 << 16,
        )
        .await?;
    if reply.status != StatusCode::CREATED {
        return Err(format!(
            "uploading blob {digest}: the registry answered {}",
            reply.status
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_as_registries_write_them() {
        let r = Reference::parse("oci://127.0.0.1:5000/weft/gate:v1").expect("parses");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "weft/gate", Some("v1"))
        );
        assert_eq!(r.reference(), "v1");
        let hex = "a".repeat(64);
        let r = Reference::parse(&format!("oci://ghcr.io/org/plugins/gate@sha256:{hex}"))
            .expect("parses");
        assert_eq!(r.repository, "org/plugins/gate");
        assert_eq!(r.reference(), format!("sha256:{hex}"));
        assert!(!r.is_mutable());
        assert_eq!(
            Reference::parse("oci://ghcr.io/org/gate")
                .expect("parses")
                .reference(),
            "latest"
        );
        for bad in [
            "oci://ghcr.io",
            "oci://ghcr.io/Org/gate",
            "oci://ghcr.io/org/gate:",
            "oci://ghcr.io/org/gate@sha256:abc",
            "http://ghcr.io/org/gate",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_compat_layer_gives_its_plugin_wasm() {
        let mut tar = tar::Builder::new(Vec::new());
        let wasm = b"\0asm-not-really".to_vec();
        let mut header = tar::Header::new_gnu();
        header.set_size(wasm.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "./plugin.wasm", &wasm[..])
            .expect("append");
        let plain = tar.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).expect("gzip");
        let gzipped = gz.finish().expect("gzip");
        assert_eq!(
            plugin_wasm(&gzipped, true).expect("reads"),
            Some(wasm.clone())
        );
        assert_eq!(plugin_wasm(&plain, false).expect("reads"), Some(wasm));
        assert!(plugin_wasm(b"not a tar at all, not at all", true).is_err());
    }

    #[test]
    fn challenges_split_outside_quotes() {
        assert_eq!(
            split_params(r#"realm="https://a/token",service="reg",scope="repository:x:pull,push""#),
            [
                r#"realm="https://a/token""#,
                r#"service="reg""#,
                r#"scope="repository:x:pull,push""#
            ]
        );
    }
}
