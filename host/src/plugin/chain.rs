//! A chain of plugins run in order on each hook, and the slot that lets a chain be replaced
//! atomically while calls run: a call holds the chain it started with until it ends.
//!
//! A plugin scoped to routes runs only for calls whose route (named in `on-request` by an
//! earlier plugin, carried by the caller to the later hooks) is one of them; an unscoped
//! plugin costs one more branch per hook.

use super::bindings::weft::filter::types as wit;
use super::instance::Plugin;
use super::proxy_wasm::Requested;
use super::types::{
    Attempt, AttemptVerdict, BodyVerdict, CallSummary, CalloutAnswer, Decided, FailStrategy,
    LocalReply, Paused, RequestHead, RequestVerdict, ResponseHead, ResponseVerdict, RouteId,
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// Plugins in order, with the ones to call per hook picked out once.
pub struct Chain {
    plugins: Vec<Arc<Plugin>>,
    /// With each plugin's place in `plugins`: a local answer names its author's place.
    on_request: Vec<(usize, Arc<Plugin>)>,
    on_attempt_end: Vec<Arc<Plugin>>,
    /// With each plugin's place in `plugins`: a local answer goes back only before its author.
    on_response: Vec<(usize, Arc<Plugin>)>,
    on_done: Vec<Arc<Plugin>>,
}

/// The verdict of a request paused at `at` for `callouts`.
fn paused_verdict(
    at: usize,
    callouts: Vec<super::types::Callout>,
    goes_on: bool,
    plugin_failed: bool,
) -> Decided<RequestVerdict> {
    Decided {
        action: RequestVerdict::Paused(Box::new(Paused {
            at,
            callouts,
            goes_on,
        })),
        plugin_failed,
        answered_at: Some(at),
    }
}

/// A plugin's local response as the proxy sends it.
pub(crate) fn local_reply(r: wit::LocalResponse) -> LocalReply {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The host bounded the count when the plugin replied; the bound holds here too.
    let mut headers = HeaderMap::with_capacity(r.headers.len().min(64));
    for (name, value) in r.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => {
                tracing::debug!(header = %name, "plugin reply header dropped: invalid name or value")
            }
        }
    }
    LocalReply {
        status,
        headers,
        body: Bytes::from(r.body),
    }
}

fn failed_closed(plugin: &Plugin) -> LocalReply {
    LocalReply::text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("plugin {:?} failed and fails closed\n", plugin.name()),
    )
}

impl Chain {
    /// A chain of these plugins, in order.
    pub fn new(plugins: Vec<Arc<Plugin>>) -> Self {
        let pick = |f: fn(&Plugin) -> bool| -> Vec<Arc<Plugin>> {
            plugins.iter().filter(|p| f(p)).cloned().collect()
        };
        let placed = |f: fn(&Plugin) -> bool| -> Vec<(usize, Arc<Plugin>)> {
            (plugins.iter().enumerate())
                .filter(|(_, p)| f(p))
                .map(|(i, p)| (i, p.clone()))
                .collect()
        };
        Chain {
            on_request: placed(|p| p.hooks().on_request),
            on_attempt_end: pick(|p| p.hooks().on_attempt_end),
            on_response: placed(|p| p.hooks().on_response),
            on_done: pick(|p| p.hooks().on_done),
            plugins,
        }
    }

    /// An empty chain.
    pub fn empty() -> Self {
        Chain::new(Vec::new())
    }

    /// Its plugins, in order.
    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// [`Chain::on_request`], saying what each plugin did to the call (for a debugged call):
    /// one line per plugin that changed where or how it goes, or answered it.
    pub fn on_request_explained(
        &self,
        call_id: u64,
        head: &mut RequestHead,
        steps: &mut Vec<(String, String)>,
    ) -> Decided<RequestVerdict> {
        let mut plugin_failed = false;
        for (at, plugin) in &self.on_request {
            if !plugin.serves(head.route) {
                continue;
            }
            let before = Seen::of(head);
            let reply = match plugin.on_request(call_id, head) {
                Ok(Requested::Continue) => {
                    let did = before.changes(head);
                    if !did.is_empty() {
                        steps.push((plugin.name().to_string(), did.join(", ")));
                    }
                    continue;
                }
                Ok(Requested::Paused(callouts, goes_on)) => {
                    steps.push((
                        plugin.name().to_string(),
                        format!("paused for {} HTTP call(s)", callouts.len()),
                    ));
                    return paused_verdict(*at, callouts, goes_on, plugin_failed);
                }
                Ok(Requested::Reply(r)) => local_reply(r),
                Err(_) if plugin.fail_strategy() == FailStrategy::FailClosed => {
                    plugin_failed = true;
                    steps.push((plugin.name().to_string(), "failed (fail closed)".into()));
                    failed_closed(plugin)
                }
                Err(_) => {
                    plugin_failed = true;
                    steps.push((plugin.name().to_string(), "failed (skipped)".into()));
                    continue;
                }
            };
            steps.push((
                plugin.name().to_string(),
                format!("answered {}", reply.status.as_u16()),
            ));
            return Decided {
                action: RequestVerdict::Respond(reply),
                plugin_failed,
                answered_at: Some(*at),
            };
        }
        Decided {
            action: RequestVerdict::Continue,
            plugin_failed,
            answered_at: None,
        }
    }

    /// [`Chain::on_attempt_end`], with each plugin's verdict (for a debugged call).
    pub fn on_attempt_end_explained(
        &self,
        attempt: &Attempt,
        route: RouteId,
        steps: &mut Vec<(String, String)>,
    ) -> Decided<AttemptVerdict> {
        let mut plugin_failed = false;
        let mut retry: Option<u32> = None;
        for plugin in self.on_attempt_end.iter().filter(|p| p.serves(route)) {
            let said = match plugin.on_attempt_end(attempt) {
                Ok(wit::AttemptAction::Done) => "done".to_string(),
                Ok(wit::AttemptAction::Retry(ms)) => {
                    retry = Some(retry.unwrap_or(0).max(ms));
                    format!("retry after {ms} ms")
                }
                Err(_) => {
                    plugin_failed = true;
                    "failed".to_string()
                }
            };
            steps.push((plugin.name().to_string(), said));
        }
        let action = match retry {
            Some(ms) => AttemptVerdict::Retry(Duration::from_millis(u64::from(ms))),
            None => AttemptVerdict::Done,
        };
        Decided {
            action,
            plugin_failed,
            answered_at: None,
        }
    }

    /// Runs `on-request` through the chain; the first local answer stops it (see
    /// [`Chain::on_local_reply`] for the answer's way back). A scoped plugin is checked against
    /// `head.route` at its turn, so it sees the route earlier plugins named.
    pub fn on_request(&self, call_id: u64, head: &mut RequestHead) -> Decided<RequestVerdict> {
        self.on_request_between(call_id, head, 0, usize::MAX)
    }

    /// [`Chain::on_request`] through the plugins placed from `from` up to (not including)
    /// `to`: the server side runs the chain in two parts, around its authorization check.
    pub fn on_request_between(
        &self,
        call_id: u64,
        head: &mut RequestHead,
        from: usize,
        to: usize,
    ) -> Decided<RequestVerdict> {
        let mut plugin_failed = false;
        for (at, plugin) in &self.on_request {
            if *at < from {
                continue;
            }
            if *at >= to {
                break;
            }
            if !plugin.serves(head.route) {
                continue;
            }
            let reply = match plugin.on_request(call_id, head) {
                Ok(Requested::Continue) => continue,
                Ok(Requested::Paused(callouts, goes_on)) => {
                    return paused_verdict(*at, callouts, goes_on, plugin_failed);
                }
                Ok(Requested::Reply(r)) => local_reply(r),
                Err(_) if plugin.fail_strategy() == FailStrategy::FailClosed => {
                    plugin_failed = true;
                    failed_closed(plugin)
                }
                Err(_) => {
                    plugin_failed = true;
                    continue;
                }
            };
            return Decided {
                action: RequestVerdict::Respond(reply),
                plugin_failed,
                answered_at: Some(*at),
            };
        }
        Decided {
            action: RequestVerdict::Continue,
            plugin_failed,
            answered_at: None,
        }
    }

    /// Gives the plugin at `paused.at` the answers to the HTTP calls it paused the request
    /// for: it goes on (`Continue`: run the chain from the plugin after it), answers, or
    /// pauses again for more. A failure applies its fail strategy.
    pub fn resume(
        &self,
        call_id: u64,
        head: &mut RequestHead,
        paused: &Paused,
        answers: Vec<(u32, Option<CalloutAnswer>)>,
    ) -> Decided<RequestVerdict> {
        let Some(plugin) = self.plugins.get(paused.at) else {
            return Decided {
                action: RequestVerdict::Continue,
                plugin_failed: false,
                answered_at: None,
            };
        };
        let reply = match plugin.on_callout_answers(call_id, head, answers, paused.goes_on) {
            Ok(Requested::Continue) => {
                return Decided {
                    action: RequestVerdict::Continue,
                    plugin_failed: false,
                    answered_at: None,
                };
            }
            Ok(Requested::Paused(callouts, goes_on)) => {
                return paused_verdict(paused.at, callouts, goes_on, false);
            }
            Ok(Requested::Reply(r)) => local_reply(r),
            Err(_) if plugin.fail_strategy() == FailStrategy::FailClosed => failed_closed(plugin),
            Err(_) => {
                return Decided {
                    action: RequestVerdict::Continue,
                    plugin_failed: true,
                    answered_at: None,
                };
            }
        };
        Decided {
            action: RequestVerdict::Respond(reply),
            plugin_failed: false,
            answered_at: Some(paused.at),
        }
    }

    /// Runs `on-response` on a local answer from `on-request` (by the plugin at `answered_at`
    /// in the chain), through the plugins before it: they saw the request, so they see its
    /// answer, as Envoy sends a local reply back through the filters that saw the request. The
    /// answering plugin and those after it never saw the request and are skipped.
    pub fn on_local_reply(
        &self,
        call_id: u64,
        head: &mut ResponseHead,
        route: RouteId,
        answered_at: usize,
    ) -> Decided<ResponseVerdict> {
        self.on_response_before(call_id, head, route, answered_at)
    }

    /// Whether a plugin may ask for a retry of a call on `route`: one runs `on-attempt-end`.
    pub fn may_retry(&self, route: RouteId) -> bool {
        self.on_attempt_end.iter().any(|p| p.serves(route))
    }

    /// Runs `on-attempt-end` through every plugin that asked and serves the call's `route`
    /// (all observe); a retry is asked for if any plugin asks, after the longest delay asked.
    pub fn on_attempt_end(&self, attempt: &Attempt, route: RouteId) -> Decided<AttemptVerdict> {
        let mut plugin_failed = false;
        let mut retry: Option<u32> = None;
        for plugin in &self.on_attempt_end {
            if !plugin.serves(route) {
                continue;
            }
            match plugin.on_attempt_end(attempt) {
                Ok(wit::AttemptAction::Done) => {}
                Ok(wit::AttemptAction::Retry(ms)) => retry = Some(retry.unwrap_or(0).max(ms)),
                Err(_) => plugin_failed = true,
            }
        }
        let action = match retry {
            Some(ms) => AttemptVerdict::Retry(Duration::from_millis(u64::from(ms))),
            None => AttemptVerdict::Done,
        };
        Decided {
            action,
            plugin_failed,
            answered_at: None,
        }
    }

    /// Runs `on-response` through the plugins that serve the call's `route`; the first
    /// replacement stops it.
    pub fn on_response(
        &self,
        call_id: u64,
        head: &mut ResponseHead,
        route: RouteId,
    ) -> Decided<ResponseVerdict> {
        self.on_response_before(call_id, head, route, usize::MAX)
    }

    /// `on-response` through the plugins placed before `end` in the chain.
    fn on_response_before(
        &self,
        call_id: u64,
        head: &mut ResponseHead,
        route: RouteId,
        end: usize,
    ) -> Decided<ResponseVerdict> {
        let mut plugin_failed = false;
        for (at, plugin) in &self.on_response {
            if *at >= end {
                break;
            }
            if !plugin.serves(route) {
                continue;
            }
            match plugin.on_response(call_id, head) {
                Ok(None) => {}
                Ok(Some(r)) => {
                    return Decided {
                        action: ResponseVerdict::Respond(local_reply(r)),
                        plugin_failed,
                        answered_at: None,
                    };
                }
                Err(_) if plugin.fail_strategy() == FailStrategy::FailClosed => {
                    return Decided {
                        action: ResponseVerdict::Respond(failed_closed(plugin)),
                        plugin_failed: true,
                        answered_at: None,
                    };
                }
                Err(_) => plugin_failed = true,
            }
        }
        Decided {
            action: ResponseVerdict::Continue,
            plugin_failed,
            answered_at: None,
        }
    }

    /// The body callbacks of the plugins serving a call on `route` that asked for the request
    /// body (or the response body): none when no plugin did.
    pub fn body_pipeline(
        &self,
        call_id: u64,
        route: RouteId,
        response: bool,
        limit: usize,
    ) -> Option<BodyPipeline> {
        let stages: Vec<Stage> = (self.plugins.iter().enumerate())
            .filter(|(_, p)| {
                let h = p.hooks();
                (if response {
                    h.on_response_body || h.on_response_trailers
                } else {
                    h.on_request_body || h.on_request_trailers
                }) && p.serves(route)
            })
            .map(|(at, p)| Stage {
                at,
                plugin: p.clone(),
                held: Vec::new(),
                failed: false,
            })
            .collect();
        (!stages.is_empty()).then_some(BodyPipeline {
            stages,
            call_id,
            response,
            limit,
            plugin_failed: false,
        })
    }

    /// Runs `on-done` through every plugin that asked and serves the call's `route`.
    pub fn on_done(&self, summary: &CallSummary, route: RouteId) -> bool {
        let mut plugin_failed = false;
        for plugin in self.on_done.iter().filter(|p| p.serves(route)) {
            plugin_failed |= plugin.on_done(summary).is_err();
        }
        plugin_failed
    }
}

/// One plugin's place in a body pipeline: the data it asked to hold.
struct Stage {
    at: usize,
    plugin: Arc<Plugin>,
    held: Vec<u8>,
    /// It failed open: the data passes it by from now on.
    failed: bool,
}

/// Why a body pipeline stopped the call.
#[derive(Debug)]
pub enum BodyStop {
    /// A plugin answered (the request body only): the answer, and the plugin's place in the
    /// chain (the answer goes back through the plugins before it).
    Respond(Box<LocalReply>, usize),
    /// A fail-closed plugin failed: the call fails with this.
    Failed(Box<LocalReply>),
    /// A plugin asked to hold more of the body than the bound (Envoy answers a request so
    /// with 413).
    TooLarge,
}

/// A call's body passing through the body callbacks of its plugins, in chain order: each
/// plugin gets what the one before it passed on; one that asks to buffer holds its data
/// (up to a bound) and gets it again, with what follows, on the next data.
pub struct BodyPipeline {
    stages: Vec<Stage>,
    call_id: u64,
    response: bool,
    limit: usize,
    /// Whether a plugin failed (open) on this body.
    pub plugin_failed: bool,
}

impl BodyPipeline {
    /// Passes the body's `trailers` through the plugins' trailers callbacks, in order, after
    /// the body's end. A request's may be answered in the call's place.
    pub fn trailers(&mut self, trailers: &mut HeaderMap) -> Result<(), BodyStop> {
        for stage in &mut self.stages {
            let hooks = stage.plugin.hooks();
            let asked = if self.response {
                hooks.on_response_trailers
            } else {
                hooks.on_request_trailers
            };
            if stage.failed || !asked {
                continue;
            }
            match stage
                .plugin
                .on_trailers(self.call_id, self.response, trailers)
            {
                Ok(BodyVerdict::Respond(reply)) => {
                    return Err(BodyStop::Respond(Box::new(reply), stage.at));
                }
                Ok(_) => continue,
                Err(_) => {}
            }
            self.plugin_failed = true;
            if stage.plugin.fail_strategy() == FailStrategy::FailClosed {
                return Err(BodyStop::Failed(Box::new(failed_closed(&stage.plugin))));
            }
            stage.failed = true;
        }
        Ok(())
    }

    /// Passes a whole body (`end_of_stream` with its last bytes), then its `trailers`, as they
    /// came: what comes out the far end.
    pub fn whole(
        &mut self,
        body: Bytes,
        trailers: Option<&mut HeaderMap>,
    ) -> Result<Bytes, BodyStop> {
        let out = self.push(body, true)?;
        if let Some(t) = trailers {
            self.trailers(t)?;
        }
        Ok(out)
    }

    /// Passes `data` (the body's next bytes; `end`: the last) through every plugin: what
    /// comes out the far end, possibly empty while a plugin holds its data.
    pub fn push(&mut self, data: Bytes, end: bool) -> Result<Bytes, BodyStop> {
        let mut data = data.to_vec();
        for stage in &mut self.stages {
            let hooks = stage.plugin.hooks();
            // A stage there for the trailers alone passes the data by, without a Wasm call.
            let asked = if self.response {
                hooks.on_response_body
            } else {
                hooks.on_request_body
            };
            if stage.failed || !asked {
                continue;
            }
            // What the stage holds, then the new data; the data itself when it holds nothing
            // (no copy: the usual case, a filter that passes each piece on).
            let mut body = if stage.held.is_empty() {
                std::mem::take(&mut data)
            } else {
                let mut held = std::mem::take(&mut stage.held);
                held.extend_from_slice(&data);
                held
            };
            if body.is_empty() && !end {
                data = body;
                continue;
            }
            let failure = match stage
                .plugin
                .on_body(self.call_id, self.response, &mut body, end)
            {
                Ok(BodyVerdict::Continue) => {
                    data = body;
                    continue;
                }
                Ok(BodyVerdict::Buffer) if body.len() <= self.limit => {
                    stage.held = body;
                    return Ok(Bytes::new());
                }
                Ok(BodyVerdict::Buffer) => {
                    tracing::debug!(
                        plugin = stage.plugin.name(),
                        limit = self.limit,
                        "a plugin asked to hold more body than the bound"
                    );
                    return Err(BodyStop::TooLarge);
                }
                Ok(BodyVerdict::Respond(reply)) => {
                    return Err(BodyStop::Respond(Box::new(reply), stage.at));
                }
                Err(_) => Some(body),
            };
            self.plugin_failed = true;
            if stage.plugin.fail_strategy() == FailStrategy::FailClosed {
                return Err(BodyStop::Failed(Box::new(failed_closed(&stage.plugin))));
            }
            // Fail open: the plugin is skipped for the rest of the body.
            stage.failed = true;
            data = failure.unwrap_or_default();
        }
        Ok(Bytes::from(data))
    }
}

/// The chain in force, replaceable atomically.
pub struct ChainSlot {
    current: ArcSwap<Chain>,
}

impl ChainSlot {
    /// A slot holding `chain`.
    pub fn new(chain: Chain) -> Self {
        ChainSlot {
            current: ArcSwap::from_pointee(chain),
        }
    }

    /// The chain in force; hold it for the whole call.
    pub fn current(&self) -> Arc<Chain> {
        self.current.load_full()
    }

    /// Puts `chain` in force. Calls holding the old chain finish on it.
    pub fn replace(&self, chain: Chain) -> Arc<Chain> {
        self.current.swap(Arc::new(chain))
    }
}

/// What a plugin may change of a call's way, compared before and after it ran.
struct Seen {
    service: String,
    subset: Option<String>,
    route: RouteId,
    per_try: Option<Duration>,
    timeout: Option<Duration>,
    delay: Option<Duration>,
    mirrors: usize,
    path: String,
    authority: String,
}

impl Seen {
    fn of(head: &RequestHead) -> Seen {
        Seen {
            service: head.destination.service.clone(),
            subset: head.destination.subset.clone(),
            route: head.route,
            per_try: head.per_try_timeout,
            timeout: head.timeout,
            delay: head.delay,
            mirrors: head.mirrors.len(),
            path: head.path.clone(),
            authority: head.authority.clone(),
        }
    }

    fn changes(&self, head: &RequestHead) -> Vec<String> {
        let mut did = Vec::new();
        if head.destination.service != self.service || head.destination.subset != self.subset {
            did.push(format!(
                "sent it to {}{}",
                head.destination.service,
                head.destination
                    .subset
                    .as_ref()
                    .map(|s| format!(" subset {s}"))
                    .unwrap_or_default()
            ));
        }
        if head.route != self.route {
            did.push("named its route".to_string());
        }
        if head.per_try_timeout != self.per_try {
            did.push(format!("per-try timeout {:?}", head.per_try_timeout));
        }
        if head.timeout != self.timeout {
            did.push(format!("timeout {:?}", head.timeout));
        }
        if head.delay != self.delay {
            did.push(format!("delay {:?}", head.delay));
        }
        if head.mirrors.len() != self.mirrors {
            did.push(format!(
                "{} mirror(s)",
                head.mirrors.len() - self.mirrors.min(head.mirrors.len())
            ));
        }
        if head.path != self.path {
            did.push(format!("path {}", head.path));
        }
        if head.authority != self.authority {
            did.push(format!("authority {}", head.authority));
        }
        did
    }
}
