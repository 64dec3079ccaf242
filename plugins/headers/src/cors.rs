//! Istio's `CorsPolicy`, as Envoy's CORS filter runs it: a preflight (`OPTIONS` with `Origin`
//! and `Access-Control-Request-Method`) from an allowed origin is answered here; an actual
//! request from one gets `Access-Control-Allow-Origin` (and the rest) on its response; a
//! request from any other origin gets no CORS headers, and its preflight is forwarded (or, with
//! `unmatchedPreflights: IGNORE`, answered without them).

use serde::Deserialize;
use weft_sdk::config::IstioDuration;
use weft_sdk::host::state;
use weft_sdk::matching::Pattern;
use weft_sdk::{LocalResponse, Request, Response};

/// Istio's `StringMatch`, for origins.
pub use weft_sdk::matching::StringMatch as OriginMatch;

/// The policy as written (camelCase).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CorsConfig {
    /// Origins allowed.
    #[serde(default)]
    pub allow_origins: Vec<OriginMatch>,
    /// Methods a preflight may ask for.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Headers a preflight may ask for.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may show the page.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a preflight's answer may be cached.
    #[serde(default)]
    pub max_age: Option<IstioDuration>,
    /// Whether credentials may be sent.
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// `FORWARD` (the default) or `IGNORE`: what happens to a preflight from another origin.
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

/// A compiled policy.
pub struct Cors {
    origins: Vec<Pattern>,
    preflight_headers: Vec<(String, Vec<u8>)>,
    credentials: bool,
    expose: Option<String>,
    ignore_unmatched: bool,
}

/// How long an actual request's origin is remembered for its response.
const REMEMBER_MS: u32 = 300_000;

fn state_key(call_id: u64) -> String {
    format!("cors-origin/{call_id}")
}

impl Cors {
    /// Compiles `config`; errors name the field.
    pub fn new(config: CorsConfig) -> Result<Cors, String> {
        let mut origins = Vec::new();
        for (i, m) in config.allow_origins.into_iter().enumerate() {
            let at = format!("cors.allowOrigins[{i}]");
            origins.push(Pattern::compile(m, &at, false)?);
        }
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        for (field, list) in [
            ("allowMethods", &config.allow_methods),
            ("allowHeaders", &config.allow_headers),
            ("exposeHeaders", &config.expose_headers),
        ] {
            for (i, v) in list.iter().enumerate() {
                if v.is_empty() || !v.chars().all(token) {
                    return Err(format!("cors.{field}[{i}]: {v:?} is not a token"));
                }
            }
        }
        let ignore_unmatched = match config.unmatched_preflights.as_deref() {
            None | Some("UNSPECIFIED" | "FORWARD") => false,
            Some("IGNORE") => true,
            Some(other) => {
                return Err(format!(
                    "cors.unmatchedPreflights: {other:?} is not FORWARD or IGNORE"
                ));
            }
        };
        let credentials = config.allow_credentials == Some(true);
        let mut preflight_headers = Vec::new();
        if !config.allow_methods.is_empty() {
            preflight_headers.push((
                "access-control-allow-methods".into(),
                config.allow_methods.join(",").into_bytes(),
            ));
        }
        if !config.allow_headers.is_empty() {
            preflight_headers.push((
                "access-control-allow-headers".into(),
                config.allow_headers.join(",").into_bytes(),
            ));
        }
        if let Some(age) = config.max_age {
            preflight_headers.push((
                "access-control-max-age".into(),
                age.0.as_secs().to_string().into_bytes(),
            ));
        }
        Ok(Cors {
            origins,
            preflight_headers,
            credentials,
            expose: (!config.expose_headers.is_empty()).then(|| config.expose_headers.join(",")),
            ignore_unmatched,
        })
    }

    fn allows(&self, origin: &str) -> bool {
        // `exact: "*"` is any origin, as Envoy reads it.
        self.origins.iter().any(|o| match o {
            Pattern::Exact(e) if e == "*" => true,
            o => o.matches(origin.as_bytes()),
        })
    }

    /// A local answer for a preflight, or none to let the call go on (remembering an allowed
    /// origin for the response).
    pub fn on_request(&self, call_id: u64, req: &Request<'_>) -> Option<LocalResponse> {
        let origin = req.header_str("origin")?;
        let allowed = self.allows(&origin);
        let preflight =
            req.method() == "OPTIONS" && req.header("access-control-request-method").is_some();
        if preflight {
            if allowed {
                let mut headers = vec![(
                    "access-control-allow-origin".to_string(),
                    origin.into_bytes(),
                )];
                headers.extend(self.preflight_headers.iter().cloned());
                if self.credentials {
                    headers.push(("access-control-allow-credentials".into(), b"true".to_vec()));
                }
                return Some(LocalResponse {
                    status: 200,
                    headers,
                    body: Vec::new(),
                });
            }
            if self.ignore_unmatched {
                return Some(LocalResponse {
                    status: 200,
                    headers: Vec::new(),
                    body: Vec::new(),
                });
            }
            return None;
        }
        if allowed {
            // Only the response hook can add its headers, and it sees no request: the origin
            // waits in this plugin's state, keyed by the call.
            let _ = state::set(&state_key(call_id), origin.as_bytes(), None, REMEMBER_MS);
        }
        None
    }

    /// Adds the CORS headers to the response of a call from an allowed origin.
    pub fn on_response(&self, call_id: u64, resp: &mut Response<'_>) {
        let key = state_key(call_id);
        let Some(origin) = state::get(&key) else {
            return;
        };
        state::delete(&key);
        let _ = resp.set_header("access-control-allow-origin", &origin.value);
        if self.credentials {
            let _ = resp.set_header("access-control-allow-credentials", "true");
        }
        if let Some(expose) = &self.expose {
            let _ = resp.set_header("access-control-expose-headers", expose);
        }
    }
}
