//! What an Istio `http` entry does to a call besides routing it: its `headers` operations on
//! the request and the response, the local answers `directResponse` and `redirect`, and its
//! `corsPolicy`. The control plane runs it after the canary: one instance when every entry has
//! the same actions, else one per distinct configuration, scoped to the routes that have it.
//!
//! Header operations run as Envoy's do: removals, then `set` (replacing), then `add`
//! (appending). A local answer carries the entry's response operations too. A destination's
//! own operations (Istio's `route[].headers`) apply when the canary sent the call there, before
//! the entry's, so the entry's `set` wins, as Envoy applies the less specific level last.

mod cors;
#[cfg(test)]
mod tests;

pub use cors::{Cors, CorsConfig, OriginMatch};

use serde::Deserialize;
use std::collections::BTreeMap;
use weft_sdk::host::state;
use weft_sdk::{
    Filter, Hooks, LocalResponse, Request, RequestAction, Response, ResponseAction, export_filter,
};

/// Istio's `Headers.HeaderOperations`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replaces each header's values with this one.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Appends a value to each header.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Removes each header.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Istio's `HTTPDirectResponse` (`body.string` only).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// The status, 200..=599.
    pub status: u16,
    /// The body, as text.
    #[serde(default)]
    pub body: Option<String>,
}

/// Istio's `HTTPRedirect` (`uri`, `authority`, `scheme`, `redirectCode`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redirect {
    /// Replaces the path (and the query, if it has one).
    #[serde(default)]
    pub uri: Option<String>,
    /// Replaces the authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// Replaces the scheme (`http` by default: calls in the mesh are plain HTTP to the app).
    #[serde(default)]
    pub scheme: Option<String>,
    /// 301 (Istio's default), 302, 303, 307 or 308.
    #[serde(default)]
    pub redirect_code: Option<u16>,
}

/// One of the entry's destinations (Istio's `route[]`) with its header operations, for the
/// calls the canary sent to it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationHeaders {
    /// The service, as the host names it (`payments`, `payments.shop`).
    pub service: String,
    /// The subset, or none for the whole service.
    #[serde(default)]
    pub subset: Option<String>,
    /// Its operations.
    #[serde(default)]
    pub headers: RouteHeaders,
}

/// Istio's `Headers`: operations on the request and on the response.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteHeaders {
    /// Operations on the request.
    #[serde(default)]
    pub request: HeaderOperations,
    /// Operations on the response.
    #[serde(default)]
    pub response: HeaderOperations,
}

impl RouteHeaders {
    fn is_empty(&self) -> bool {
        self.request == HeaderOperations::default() && self.response == HeaderOperations::default()
    }
}

/// The plugin's configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// The entry's destinations, in order, with their own operations, for the calls the
    /// canary sent to each; a destination with operations must be the only one naming its
    /// service and subset, or a call could not tell which it took.
    #[serde(default)]
    pub route: Vec<DestinationHeaders>,
    /// Operations on the request on its way up.
    #[serde(default)]
    pub request: HeaderOperations,
    /// Operations on the response on its way back (and on a local answer).
    #[serde(default)]
    pub response: HeaderOperations,
    /// Answer locally instead of routing.
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
    /// Answer with a redirect instead of routing.
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Istio's `corsPolicy`.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
}

/// A local answer decided at configure time, but for the redirect's target.
enum Answer {
    Direct(u16, Vec<u8>),
    Redirect(Redirect, u16),
}

/// The route actions.
pub struct Headers {
    request: HeaderOperations,
    response: HeaderOperations,
    destinations: Vec<DestinationHeaders>,
    answer: Option<Answer>,
    cors: Option<Cors>,
}

/// How long a call's destination is remembered for its response.
const REMEMBER_MS: u32 = 300_000;

fn destination_key(call_id: u64) -> String {
    format!("destination/{call_id}")
}

/// Whether `name` can be written as a header: an HTTP token, not a pseudo-header.
fn check_name(at: &str, name: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("{at}: {name:?} is not a valid header name"));
    }
    Ok(())
}

fn check_value(at: &str, value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("{at}: the value holds a control character"));
    }
    Ok(())
}

fn check_operations(at: &str, ops: &HeaderOperations) -> Result<(), String> {
    for (name, value) in ops.set.iter().chain(&ops.add) {
        check_name(&format!("{at}.{name}"), name)?;
        check_value(&format!("{at}.{name}"), value)?;
    }
    for name in &ops.remove {
        check_name(&format!("{at}.remove"), name)?;
    }
    Ok(())
}

/// The edits a head offers, so one routine applies operations to requests and responses.
trait Head {
    fn remove(&mut self, name: &str);
    fn set(&mut self, name: &str, value: &str);
    fn add(&mut self, name: &str, value: &str);
}

// Names and values were checked at configure; a host bound on header count is the only
// refusal left, and it fails the call on its own, so the results are not needed here.
impl Head for Request<'_> {
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
    fn set(&mut self, name: &str, value: &str) {
        let _ = self.set_header(name, value);
    }
    fn add(&mut self, name: &str, value: &str) {
        let _ = self.append_header(name, value);
    }
}

impl Head for Response<'_> {
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
    fn set(&mut self, name: &str, value: &str) {
        let _ = self.set_header(name, value);
    }
    fn add(&mut self, name: &str, value: &str) {
        let _ = self.append_header(name, value);
    }
}

/// Removals, then `set`, then `add`, as Envoy applies a route's header operations.
fn apply(ops: &HeaderOperations, head: &mut impl Head) {
    for name in &ops.remove {
        head.remove(name);
    }
    for (name, value) in &ops.set {
        head.set(name, value);
    }
    for (name, value) in &ops.add {
        head.add(name, value);
    }
}

impl Headers {
    /// Whether some destination has response operations.
    fn destination_responses(&self) -> bool {
        self.destinations
            .iter()
            .any(|d| d.headers.response != HeaderOperations::default())
    }

    /// The local answer for `req`, with the response operations applied.
    fn local(&self, answer: &Answer, req: &Request<'_>) -> LocalResponse {
        let mut reply = match answer {
            Answer::Direct(status, body) => LocalResponse {
                status: *status,
                headers: Vec::new(),
                body: body.clone(),
            },
            Answer::Redirect(r, code) => {
                let scheme = r.scheme.as_deref().unwrap_or("http");
                let authority = r.authority.clone().unwrap_or_else(|| req.authority());
                let original = req.path();
                let path = match &r.uri {
                    // A new path keeps the request's query unless it brings its own.
                    Some(uri) if uri.contains('?') => uri.clone(),
                    Some(uri) => match original.split_once('?') {
                        Some((_, query)) => format!("{uri}?{query}"),
                        None => uri.clone(),
                    },
                    None => original,
                };
                LocalResponse {
                    status: *code,
                    headers: vec![(
                        "location".into(),
                        format!("{scheme}://{authority}{path}").into_bytes(),
                    )],
                    body: Vec::new(),
                }
            }
        };
        let ops = &self.response;
        reply
            .headers
            .retain(|(n, _)| !ops.remove.iter().any(|r| r.eq_ignore_ascii_case(n)));
        for (name, value) in &ops.set {
            reply.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            reply
                .headers
                .push((name.clone(), value.clone().into_bytes()));
        }
        for (name, value) in &ops.add {
            reply
                .headers
                .push((name.clone(), value.clone().into_bytes()));
        }
        reply
    }
}

impl Filter for Headers {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        check_operations("request", &config.request)?;
        check_operations("response", &config.response)?;
        for (i, d) in config.route.iter().enumerate() {
            let at = format!("route[{i}]");
            if d.service.is_empty() {
                return Err(format!("{at}.service: must not be empty"));
            }
            check_operations(&format!("{at}.headers.request"), &d.headers.request)?;
            check_operations(&format!("{at}.headers.response"), &d.headers.response)?;
            let same = |e: &DestinationHeaders| e.service == d.service && e.subset == d.subset;
            let twin = config
                .route
                .iter()
                .enumerate()
                .find(|(j, e)| *j != i && same(e));
            if let Some((j, _)) = twin
                && !d.headers.is_empty()
            {
                let subset = d
                    .subset
                    .as_deref()
                    .map(|s| format!(" subset {s}"))
                    .unwrap_or_default();
                return Err(format!(
                    "{at}.headers: route[{j}] names the same destination ({}{subset}), so a call cannot tell which of the two it took; Weft cannot apply per-destination headers here",
                    d.service
                ));
            }
        }
        // Only destinations with operations are kept: the others need no look-up.
        let destinations: Vec<DestinationHeaders> = config
            .route
            .into_iter()
            .filter(|d| !d.headers.is_empty())
            .collect();
        let answer = match (config.direct_response, config.redirect) {
            (Some(_), Some(_)) => {
                return Err("set one of directResponse and redirect, not both".into());
            }
            (Some(d), None) => {
                if !(200..=599).contains(&d.status) {
                    return Err(format!(
                        "directResponse.status: {} is not from 200 to 599",
                        d.status
                    ));
                }
                Some(Answer::Direct(
                    d.status,
                    d.body.unwrap_or_default().into_bytes(),
                ))
            }
            (None, Some(r)) => {
                let code = r.redirect_code.unwrap_or(301);
                if ![301, 302, 303, 307, 308].contains(&code) {
                    return Err(format!(
                        "redirect.redirectCode: {code} is not 301, 302, 303, 307 or 308"
                    ));
                }
                if let Some(uri) = &r.uri
                    && !uri.starts_with('/')
                {
                    return Err(format!("redirect.uri: {uri:?} must start with '/'"));
                }
                if let Some(scheme) = &r.scheme
                    && scheme != "http"
                    && scheme != "https"
                {
                    return Err(format!("redirect.scheme: {scheme:?} is not http or https"));
                }
                if let Some(authority) = &r.authority {
                    check_value("redirect.authority", authority)?;
                    if authority.is_empty() || authority.contains(['/', ' ', '?', '#']) {
                        return Err(format!(
                            "redirect.authority: {authority:?} is not a host[:port]"
                        ));
                    }
                }
                Some(Answer::Redirect(r, code))
            }
            (None, None) => None,
        };
        let cors = config.cors.map(Cors::new).transpose()?;
        Ok(Headers {
            request: config.request,
            response: config.response,
            destinations,
            answer,
            cors,
        })
    }

    fn hooks(&self) -> Hooks {
        let mut hooks = Hooks::NONE;
        if self.answer.is_some()
            || self.cors.is_some()
            || self.request != HeaderOperations::default()
            || !self.destinations.is_empty()
        {
            hooks |= Hooks::ON_REQUEST;
        }
        if self.answer.is_none()
            && (self.cors.is_some()
                || self.response != HeaderOperations::default()
                || self.destination_responses())
        {
            hooks |= Hooks::ON_RESPONSE;
        }
        hooks
    }

    fn on_request(&self, call_id: u64, req: &mut Request<'_>) -> RequestAction {
        // A preflight is the browser's, answered before anything else the entry does.
        if let Some(cors) = &self.cors
            && let Some(reply) = cors.on_request(call_id, req)
        {
            return RequestAction::Respond(reply);
        }
        if let Some(answer) = &self.answer {
            return RequestAction::Respond(self.local(answer, req));
        }
        if !self.destinations.is_empty() {
            let to = req.destination();
            let chosen = self
                .destinations
                .iter()
                .position(|d| d.service == to.service && d.subset == to.subset);
            if let Some(i) = chosen {
                let d = &self.destinations[i].headers;
                apply(&d.request, req);
                if d.response != HeaderOperations::default() {
                    // The response hook learns the destination from this plugin's state.
                    let index = (i as u32).to_le_bytes();
                    let _ = state::set(&destination_key(call_id), &index, None, REMEMBER_MS);
                }
            }
        }
        apply(&self.request, req);
        RequestAction::Continue
    }

    fn on_response(&self, call_id: u64, resp: &mut Response<'_>) -> ResponseAction {
        if let Some(cors) = &self.cors {
            cors.on_response(call_id, resp);
        }
        if self.destination_responses() {
            let key = destination_key(call_id);
            if let Some(v) = state::get(&key) {
                state::delete(&key);
                let index = <[u8; 4]>::try_from(v.value.as_slice())
                    .map(|b| u32::from_le_bytes(b) as usize)
                    .ok();
                if let Some(d) = index.and_then(|i| self.destinations.get(i)) {
                    apply(&d.headers.response, resp);
                }
            }
        }
        apply(&self.response, resp);
        ResponseAction::Continue
    }
}

export_filter!(Headers);
