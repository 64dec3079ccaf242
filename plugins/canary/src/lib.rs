//! Weighted canary split with Istio's `VirtualService` `http` route list: the first `http`
//! entry whose `match` fits the request is chosen, and the call goes to one of its `route`
//! destinations, picked at random in proportion to the weights, or by a hash of a sticky
//! header so a user keeps their version. No entry fits: 404, as Envoy's "no route" (NR).
//!
//! See README.md beside this crate for the configuration reference.

use regex_lite::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use weft_sdk::config::IstioDuration;
use weft_sdk::host::random_below;
pub use weft_sdk::matching::StringMatch;
use weft_sdk::matching::{Pattern, bounded_regex};
use weft_sdk::{Destination, Filter, Hooks, LocalResponse, Request, RequestAction, export_filter};

// === configuration, as Istio writes it ===

/// A destination as Istio writes it (`HTTPRouteDestination.destination`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioDestination {
    /// The service.
    pub host: String,
    /// The subset, if any.
    #[serde(default)]
    pub subset: Option<String>,
}

/// One weighted destination (Istio's `HTTPRouteDestination`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedRoute {
    /// Where it goes.
    pub destination: IstioDestination,
    /// Its share relative to the entry's other destinations (weight / sum); omitted is 0.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// Istio's `HTTPMatchRequest`: every condition given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchRequest {
    /// A label for people; not used in matching.
    #[serde(default)]
    pub name: Option<String>,
    /// The path, without its query string.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// The method.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// The authority the caller named (`Host`), port included if it gave one.
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// The scheme: `http` for every call a sidecar takes from its app.
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    /// Headers that must be present and match, by lower-case name.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must not match (an absent header counts as empty).
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameters that must be present and match, by name.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Compare `uri` `exact` and `prefix` without regard to ASCII case.
    #[serde(default)]
    pub ignore_uri_case: bool,
}

/// One entry of Istio's `http` list (`HTTPRoute`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    /// A label for people, named in errors; also the route name the plugin gives the host
    /// when this entry is chosen, so plugins scoped to it run.
    #[serde(default)]
    pub name: Option<String>,
    /// Alternatives, any of which selects this entry; none: every request.
    #[serde(default, rename = "match")]
    pub matches: Vec<MatchRequest>,
    /// The weighted destinations.
    pub route: Vec<WeightedRoute>,
    /// The call's overall timeout when this entry is chosen (`"0s"`: none from this entry).
    #[serde(default)]
    pub timeout: Option<IstioDuration>,
    /// What the call is sent upstream with instead of the caller's path and authority.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Where copies of the calls this entry takes also go.
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
}

/// Istio's `HTTPMirrorPolicy`: a destination and the share of calls copied to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Where the copies go.
    pub destination: IstioDestination,
    /// The share of calls copied, 0 to 100; every call when absent.
    #[serde(default)]
    pub percentage: Option<f64>,
}

/// Istio's `HTTPRewrite` (`uri` and `authority`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the part of the path the entry's `uri` match matched: the prefix of a prefix
    /// match, the whole path of an exact one, the leading `/` when the entry matched no `uri`
    /// (Istio's rule). The query string is kept.
    #[serde(default)]
    pub uri: Option<String>,
    /// Replaces the authority (the destination app's `Host`).
    #[serde(default)]
    pub authority: Option<String>,
    /// Rewrites the path by a regex, every match replaced (`\1` names a group), query kept.
    #[serde(default, rename = "uriRegexRewrite")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Istio's `RegexRewrite`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// The expression (RE2 syntax).
    #[serde(rename = "match")]
    pub pattern: String,
    /// The replacement; `\1`..`\9` name the expression's groups.
    pub rewrite: String,
}

/// Keeps a user on one version by hashing a request header instead of rolling dice.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    /// The header whose value identifies the user (`x-user-id`).
    pub header: String,
}

/// The canary plugin's configuration: Istio's `http` list, or the `route` shorthand.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The service this split belongs to (the VirtualService's host). A destination of this
    /// service with a subset is reached by changing only the subset, the cheaper host call.
    #[serde(default)]
    pub host: Option<String>,
    /// Routes tried in order; the first that matches is used.
    #[serde(default)]
    pub http: Option<Vec<HttpRoute>>,
    /// Shorthand for one `http` entry without `match`.
    #[serde(default)]
    pub route: Option<Vec<WeightedRoute>>,
    /// Sticky picks; without it every call rolls afresh.
    #[serde(default)]
    pub sticky: Option<Sticky>,
}

// === compiled form ===

/// The canary split.
pub struct Canary {
    entries: Vec<Entry>,
    // Header names the configuration reads; conditions refer to them by index so each is
    // fetched from the host at most once per call.
    header_names: Vec<String>,
    sticky: Option<usize>,
    no_route: String,
}

struct Entry {
    // The entry's `name`, told to the host so plugins scoped to it run; none: nothing to tell.
    name: Option<String>,
    // Empty: matches every request, as an Istio `http` entry without `match`.
    alternatives: Vec<Vec<Condition>>,
    // Cumulative upper bounds out of the last one (the sum of the weights), zero weights left
    // out.
    picks: Vec<(u64, Action)>,
    timeout: Option<Duration>,
    rewrite: Option<Rewrite>,
    // The compiled `uriRegexRewrite`: the expression and the replacement in regex-lite's terms.
    regex_rewrite: Option<(Regex, String)>,
    // Destinations and their shares per million.
    mirrors: Vec<(Destination, u64)>,
}

enum Action {
    // The configured `host` itself: only the subset changes, one cheap host call.
    Subset(String),
    Destination(Destination),
}

enum Condition {
    Uri { pattern: Pattern, ignore_case: bool },
    Method(Pattern),
    Authority(Pattern),
    Scheme(Pattern),
    Header { slot: usize, pattern: Pattern },
    WithoutHeader { slot: usize, pattern: Pattern },
    Query { name: String, pattern: Pattern },
}

fn check_header_name(name: &str, at: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{at}: {name:?} is not a valid header name"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{at}: header names must be lower-case (as Istio requires)"
        ));
    }
    Ok(())
}

/// Interns header names so that each is read from the host at most once per call.
fn slot(names: &mut Vec<String>, name: &str) -> usize {
    match names.iter().position(|n| n == name) {
        Some(i) => i,
        None => {
            names.push(name.to_string());
            names.len() - 1
        }
    }
}

fn compile_match(
    m: MatchRequest,
    at: &str,
    names: &mut Vec<String>,
) -> Result<Vec<Condition>, String> {
    let mut out = Vec::new();
    if let Some(uri) = m.uri {
        out.push(Condition::Uri {
            pattern: Pattern::compile(uri, &format!("{at}.uri"), false)?,
            ignore_case: m.ignore_uri_case,
        });
    }
    if let Some(method) = m.method {
        let pattern = Pattern::compile(method, &format!("{at}.method"), false)?;
        out.push(Condition::Method(pattern));
    }
    if let Some(authority) = m.authority {
        let pattern = Pattern::compile(authority, &format!("{at}.authority"), false)?;
        out.push(Condition::Authority(pattern));
    }
    if let Some(scheme) = m.scheme {
        let pattern = Pattern::compile(scheme, &format!("{at}.scheme"), false)?;
        out.push(Condition::Scheme(pattern));
    }
    for (name, sm) in m.headers {
        let here = format!("{at}.headers.{name}");
        check_header_name(&name, &here)?;
        out.push(Condition::Header {
            slot: slot(names, &name),
            pattern: Pattern::compile(sm, &here, true)?,
        });
    }
    for (name, sm) in m.without_headers {
        let here = format!("{at}.withoutHeaders.{name}");
        check_header_name(&name, &here)?;
        out.push(Condition::WithoutHeader {
            slot: slot(names, &name),
            pattern: Pattern::compile(sm, &here, true)?,
        });
    }
    for (name, sm) in m.query_params {
        let here = format!("{at}.queryParams.{name}");
        if name.is_empty() {
            return Err(format!("{here}: the parameter name must not be empty"));
        }
        out.push(Condition::Query {
            pattern: Pattern::compile(sm, &here, true)?,
            name,
        });
    }
    Ok(out)
}

/// Compiles Istio's `uriRegexRewrite`: RE2's `\N` group references become regex-lite's
/// `${N}`, and a literal `$` is escaped.
fn compile_regex_rewrite(rr: RegexRewrite, at: &str) -> Result<(Regex, String), String> {
    let pattern = bounded_regex(&rr.pattern, &format!("{at}.match"))?;
    let mut replacement = String::with_capacity(rr.rewrite.len());
    let mut chars = rr.rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => replacement.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    chars.next();
                    replacement.push_str(&format!("${{{d}}}"));
                }
                Some('\\') => {
                    chars.next();
                    replacement.push('\\');
                }
                _ => replacement.push('\\'),
            },
            other => replacement.push(other),
        }
    }
    Ok((pattern, replacement))
}

/// A rewrite this plugin can honour: an absolute `uri`, not after a regex `uri` match (whose
/// "matched part" Istio leaves to `uriRegexRewrite`), and a plain authority.
fn check_rewrite(r: &Rewrite, alternatives: &[Vec<Condition>], at: &str) -> Result<(), String> {
    if r.uri.is_some() && r.uri_regex_rewrite.is_some() {
        return Err(format!("{at}: set uri or uriRegexRewrite, not both"));
    }
    if let Some(uri) = &r.uri {
        if !uri.starts_with('/') || uri.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?') {
            return Err(format!(
                "{at}.uri: {uri:?} must be an absolute path without a query"
            ));
        }
        let regex = alternatives.iter().flatten().any(|c| {
            matches!(
                c,
                Condition::Uri {
                    pattern: Pattern::Regex(_),
                    ..
                }
            )
        });
        if regex {
            return Err(format!(
                "{at}.uri: not honoured after a regex uri match (Istio's rule); use uriRegexRewrite"
            ));
        }
    }
    if let Some(a) = &r.authority
        && (a.is_empty() || a.bytes().any(|b| b <= b' ' || b"/?#@".contains(&b)))
    {
        return Err(format!("{at}.authority: {a:?} is not a host[:port]"));
    }
    Ok(())
}

fn compile_route(
    route: Vec<WeightedRoute>,
    at: &str,
    label: Option<&str>,
    host: Option<&str>,
) -> Result<Vec<(u64, Action)>, String> {
    if route.is_empty() {
        return Err(format!("{at}: at least one destination is required"));
    }
    // Istio's weights are relative: a destination gets weight / (sum of weights), an omitted
    // weight is 0, and a single destination gets every call whatever its weight.
    let single = route.len() == 1;
    let mut total = 0u64;
    let mut picks = Vec::with_capacity(route.len());
    for (i, r) in route.into_iter().enumerate() {
        let weight = if single {
            1
        } else {
            u64::from(r.weight.unwrap_or(0))
        };
        if r.destination.host.is_empty() {
            return Err(format!("{at}[{i}].destination.host: must not be empty"));
        }
        total += weight;
        if weight == 0 {
            continue;
        }
        let action = match (r.destination.subset, host) {
            (Some(subset), Some(h)) if r.destination.host == h => Action::Subset(subset),
            (subset, _) => Action::Destination(Destination {
                service: r.destination.host,
                subset,
            }),
        };
        picks.push((total, action));
    }
    if total == 0 {
        let entry = label
            .map(|n| format!(" in http entry {n:?}"))
            .unwrap_or_default();
        return Err(format!(
            "{at}: weights sum to 0{entry}; at least one destination needs a weight above 0"
        ));
    }
    Ok(picks)
}

impl Filter for Canary {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let Config {
            host,
            http,
            route,
            sticky,
        } = config;
        if host.as_deref() == Some("") {
            return Err("host: must not be empty when given".into());
        }
        let host = host.as_deref();
        let mut header_names = Vec::new();
        let mut entries = Vec::new();
        match (http, route) {
            (Some(_), Some(_)) => {
                return Err(
                    "route and http: give one or the other (route is shorthand for a single \
                     http entry without match)"
                        .into(),
                );
            }
            (None, None) => {
                return Err("http: at least one entry is required (or the route shorthand)".into());
            }
            (None, Some(route)) => entries.push(Entry {
                name: None,
                alternatives: Vec::new(),
                picks: compile_route(route, "route", None, host)?,
                timeout: None,
                rewrite: None,
                regex_rewrite: None,
                mirrors: Vec::new(),
            }),
            (Some(http), None) => {
                if http.is_empty() {
                    return Err("http: at least one entry is required".into());
                }
                for (i, h) in http.into_iter().enumerate() {
                    let at = format!("http[{i}]");
                    let mut alternatives = Vec::with_capacity(h.matches.len());
                    for (j, m) in h.matches.into_iter().enumerate() {
                        let at = format!("{at}.match[{j}]");
                        alternatives.push(compile_match(m, &at, &mut header_names)?);
                    }
                    let picks =
                        compile_route(h.route, &format!("{at}.route"), h.name.as_deref(), host)?;
                    if let Some(r) = &h.rewrite {
                        check_rewrite(r, &alternatives, &format!("{at}.rewrite"))?;
                    }
                    let regex_rewrite =
                        match h.rewrite.as_ref().and_then(|r| r.uri_regex_rewrite.clone()) {
                            Some(rr) => Some(compile_regex_rewrite(
                                rr,
                                &format!("{at}.rewrite.uriRegexRewrite"),
                            )?),
                            None => None,
                        };
                    let mut mirrors = Vec::with_capacity(h.mirrors.len());
                    for (k, m) in h.mirrors.into_iter().enumerate() {
                        let at = format!("{at}.mirrors[{k}]");
                        if m.destination.host.is_empty() {
                            return Err(format!("{at}.destination.host: must not be empty"));
                        }
                        let share = match m.percentage {
                            None => 1_000_000,
                            Some(p) if (0.0..=100.0).contains(&p) => (p * 10_000.0).round() as u64,
                            Some(p) => {
                                return Err(format!(
                                    "{at}.percentage: must be from 0 to 100 (got {p})"
                                ));
                            }
                        };
                        let dest = Destination {
                            service: m.destination.host,
                            subset: m.destination.subset,
                        };
                        mirrors.push((dest, share));
                    }
                    entries.push(Entry {
                        name: h.name.filter(|n| !n.is_empty()),
                        alternatives,
                        picks,
                        // Zero is Istio's "no timeout"; the host can only fall back to the
                        // service's own, which is what leaving it unset does.
                        timeout: h.timeout.map(|t| t.0).filter(|t| !t.is_zero()),
                        rewrite: h.rewrite,
                        regex_rewrite,
                        mirrors,
                    });
                }
            }
        }
        let sticky = match sticky {
            Some(s) => {
                let name = s.header.to_ascii_lowercase();
                check_header_name(&name, "sticky.header")?;
                Some(slot(&mut header_names, &name))
            }
            None => None,
        };
        let no_route = match host {
            Some(h) => format!("no route: no http entry for {h} matches this request\n"),
            None => "no route: no http entry matches this request\n".to_string(),
        };
        Ok(Canary {
            entries,
            header_names,
            sticky,
            no_route,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, _call_id: u64, req: &mut Request<'_>) -> RequestAction {
        let (entry, matched, action, path) = {
            let mut reads = Reads::new(req, &self.header_names);
            let Some((entry, matched)) = self
                .entries
                .iter()
                .find_map(|e| e.matched(&mut reads).map(|m| (e, m)))
            else {
                return RequestAction::Respond(LocalResponse::text(404, self.no_route.clone()));
            };
            let action = entry.pick(|total| self.roll(&mut reads, total));
            // A rewrite needs the path a `uri` condition may already have read.
            (entry, matched, action, reads.path.take())
        };
        match action {
            Some(Action::Subset(subset)) => req.set_subset(subset),
            Some(Action::Destination(dest)) => req.set_destination(dest.clone()),
            None => {}
        }
        if let Some(timeout) = entry.timeout {
            req.set_timeout(timeout);
        }
        if let Some(rewrite) = &entry.rewrite {
            let path = path.unwrap_or_else(|| req.path());
            entry.rewrite(rewrite, matched, &path, req);
        }
        for (dest, share) in &entry.mirrors {
            if *share >= 1_000_000 || (*share > 0 && random_below(1_000_000) < *share) {
                req.add_mirror(dest.clone());
            }
        }
        // Only a named entry costs the host call; plugins scoped to it come after this one.
        if let Some(name) = &entry.name {
            req.set_route(name);
        }
        RequestAction::Continue
    }
}

impl Canary {
    /// A number in `0..total` that decides the pick: the sticky header's bucket, else random.
    fn roll(&self, reads: &mut Reads<'_, '_>, total: u64) -> u64 {
        match self.sticky.and_then(|slot| reads.header(slot)) {
            Some(value) => bucket(value, total),
            None => random_below(total),
        }
    }
}

impl Entry {
    /// Whether the entry takes this call, and by which alternative (none when it has no
    /// `match`).
    fn matched(&self, reads: &mut Reads<'_, '_>) -> Option<Option<usize>> {
        if self.alternatives.is_empty() {
            return Some(None);
        }
        self.alternatives
            .iter()
            .position(|all| all.iter().all(|c| c.holds(reads)))
            .map(Some)
    }

    /// Applies the entry's rewrite, by the alternative that matched, to the call whose path
    /// and query is `full`.
    fn rewrite(
        &self,
        rewrite: &Rewrite,
        matched: Option<usize>,
        full: &str,
        req: &mut Request<'_>,
    ) {
        let (path, query) = match full.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (full, None),
        };
        if let Some(uri) = &rewrite.uri {
            let uri_pattern = matched
                .and_then(|i| self.alternatives.get(i))
                .and_then(|all| {
                    all.iter().find_map(|c| match c {
                        Condition::Uri { pattern, .. } => Some(pattern),
                        _ => None,
                    })
                });
            let rest = match uri_pattern {
                Some(Pattern::Prefix(p)) => path.get(p.len()..).unwrap_or(""),
                Some(Pattern::Exact(_)) => "",
                // Istio rewrites as Envoy's prefix_rewrite on a `/` prefix.
                _ => path.strip_prefix('/').unwrap_or(path),
            };
            let mut new = format!("{uri}{rest}");
            if let Some(q) = query {
                new.push('?');
                new.push_str(q);
            }
            // Checked at configure; a refusal here leaves the caller's path.
            let _ = req.set_path(&new);
        }
        if let Some((pattern, replacement)) = &self.regex_rewrite {
            let mut new = pattern.replace_all(path, replacement.as_str()).into_owned();
            if let Some(q) = query {
                new.push('?');
                new.push_str(q);
            }
            let _ = req.set_path(&new);
        }
        if let Some(authority) = &rewrite.authority {
            let _ = req.set_authority(authority);
        }
    }

    /// The destination for a roll; the roll is only drawn when there is a choice to make,
    /// so a single destination costs neither a random number nor a header read.
    fn pick(&self, roll: impl FnOnce(u64) -> u64) -> Option<&Action> {
        if let [(_, only)] = self.picks.as_slice() {
            return Some(only);
        }
        let total = self.picks.last().map_or(1, |(upper, _)| *upper);
        let roll = roll(total);
        self.picks
            .iter()
            .find(|(upper, _)| roll < *upper)
            .map(|(_, a)| a)
    }
}

impl Condition {
    fn holds(&self, reads: &mut Reads<'_, '_>) -> bool {
        match self {
            Condition::Uri {
                pattern,
                ignore_case,
            } => {
                let path = path_only(reads.path()).as_bytes();
                if *ignore_case {
                    pattern.matches_ignoring_case(path)
                } else {
                    pattern.matches(path)
                }
            }
            Condition::Method(pattern) => pattern.matches(reads.method().as_bytes()),
            Condition::Authority(pattern) => pattern.matches(reads.authority().as_bytes()),
            // An app speaks plain HTTP to its sidecar (TLS, if any, is the mesh's).
            Condition::Scheme(pattern) => pattern.matches(b"http"),
            Condition::Header { slot, pattern } => {
                reads.header(*slot).is_some_and(|v| pattern.matches(v))
            }
            // Istio sets Envoy's treat_missing_header_as_empty here, except for presence.
            Condition::WithoutHeader { slot, pattern } => match (pattern, reads.header(*slot)) {
                (Pattern::Present, value) => value.is_none(),
                (pattern, value) => !pattern.matches(value.unwrap_or_default()),
            },
            Condition::Query { name, pattern } => {
                query_param(reads.path(), name).is_some_and(|v| pattern.matches(v.as_bytes()))
            }
        }
    }
}

/// The path without query string or fragment, as Envoy's path matchers see it.
fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

/// The first value of a query parameter, undecoded, as Envoy's `parseQueryString`; a
/// parameter without `=` has the empty value.
fn query_param<'p>(path: &'p str, name: &str) -> Option<&'p str> {
    let query = path.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// What one call reads from the host, each fetched at most once and only when needed.
struct Reads<'r, 'a> {
    req: &'r Request<'a>,
    names: &'r [String],
    method: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    // Per header slot: not yet read, or read (absent or its value).
    headers: Vec<Option<Option<Vec<u8>>>>,
}

impl<'r, 'a> Reads<'r, 'a> {
    fn new(req: &'r Request<'a>, names: &'r [String]) -> Self {
        Reads {
            req,
            names,
            method: None,
            authority: None,
            path: None,
            headers: vec![None; names.len()],
        }
    }

    fn method(&mut self) -> &str {
        self.method.get_or_insert_with(|| self.req.method())
    }

    fn authority(&mut self) -> &str {
        self.authority.get_or_insert_with(|| self.req.authority())
    }

    fn path(&mut self) -> &str {
        self.path.get_or_insert_with(|| self.req.path())
    }

    fn header(&mut self, slot: usize) -> Option<&[u8]> {
        let (req, name) = (self.req, self.names.get(slot)?);
        self.headers
            .get_mut(slot)?
            .get_or_insert_with(|| joined_header(req, name))
            .as_deref()
    }
}

/// Every value of a header, joined by commas: Envoy matches a repeated header that way.
fn joined_header(req: &Request<'_>, name: &str) -> Option<Vec<u8>> {
    let mut values = req.header_all(name).into_iter();
    let first = values.next()?;
    Some(values.fold(first, |mut acc, v| {
        acc.push(b',');
        acc.extend_from_slice(&v);
        acc
    }))
}

/// FNV-1a, 64-bit: stable across builds, platforms and releases, so a user's bucket never
/// moves on an upgrade.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// A sticky value's bucket in `0..total` (the sum of the entry's weights).
fn bucket(value: &[u8], total: u64) -> u64 {
    // FNV-1a's last bytes reach the top bits only through carries, and multiply-shift reads
    // the top bits: ids differing in their last character ("user-1", "user-2") would bunch.
    // MurmurHash3's finaliser spreads every input bit over the whole word first.
    let mut h = fnv1a64(value);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    // Multiply-shift: uses the whole hash, unlike a modulo that would read its low bits.
    ((u128::from(h) * u128::from(total)) >> 64) as u64
}

export_filter!(Canary);

#[cfg(test)]
mod tests;
