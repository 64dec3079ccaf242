//! One VM of a proxy-wasm filter: its instance, its root context's start and ticks, and the
//! stream contexts of the calls it serves, each callback lending it the call's heads.

use super::ctx::{self, Kept, Phase, ProxyCtx};
use super::{MAX_STREAMS, ROOT, Setup, VmStartError};
use crate::plugin::bindings::weft::filter::types::LocalResponse;
use crate::plugin::types::{CallSummary, Callout, CalloutAnswer, RequestHead, ResponseHead};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wasmtime::{Engine, InstancePre, Store, TypedFunc};

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponse = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The callbacks a VM exports, found once.
struct Exports {
    context_create: TypedFunc<(i32, i32), ()>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    call_response: Option<CallResponse>,
    log: Option<TypedFunc<i32, ()>>,
    done: Option<TypedFunc<i32, i32>>,
    delete: Option<TypedFunc<i32, ()>>,
    tick: Option<TypedFunc<i32, ()>>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
}

/// One instance of a proxy-wasm filter, with its root context and its calls' stream contexts.
pub(crate) struct Vm {
    pub(crate) store: Store<ProxyCtx>,
    exports: Exports,
    /// Stream contexts by call id (ids grow, so the first is the oldest).
    streams: BTreeMap<u64, Stream>,
    next_context: i32,
    /// When the root context's next tick is due; scheduled by the tick thread once the
    /// root context has asked for a period.
    pub(crate) next_tick: Option<Instant>,
}

struct Stream {
    id: i32,
    kept: Kept,
}

const PAUSE: i32 = 1;

/// What a request callback decided.
pub(crate) enum Requested {
    /// Go on to the next plugin.
    Continue,
    /// Answer with this.
    Reply(LocalResponse),
    /// Make these calls and deliver their answers; `true`: the filter did not pause (it
    /// continues once they are delivered, whatever they say).
    Paused(Vec<Callout>, bool),
}

impl Vm {
    pub(super) fn start(
        engine: &Engine,
        pre: &InstancePre<ProxyCtx>,
        setup: &Setup,
        index: usize,
    ) -> Result<Vm, VmStartError> {
        let mut store = Store::new(engine, ProxyCtx::new(setup, index));
        store.limiter(|c| &mut c.memory);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(setup.setup_ticks);
        let failed = |e: wasmtime::Error, store: &Store<ProxyCtx>| {
            VmStartError::Failed(e, store.data().memory.exceeded)
        };
        let instance = pre.instantiate(&mut store).map_err(|e| failed(e, &store))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| failed(wasmtime::format_err!("exports no memory"), &store))?;
        let malloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .map_err(|e| failed(e, &store))?;
        store.data_mut().guest_memory = Some(memory);
        store.data_mut().malloc = Some(malloc);
        // A reactor's constructors, or a command's main (older TinyGo filters).
        for init in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut store, init) {
                f.call(&mut store, ()).map_err(|e| failed(e, &store))?;
                break;
            }
        }
        macro_rules! func {
            ($name:literal) => {
                instance.get_typed_func(&mut store, $name).ok()
            };
        }
        let context_create = instance
            .get_typed_func::<(i32, i32), ()>(&mut store, "proxy_on_context_create")
            .map_err(|e| failed(e, &store))?;
        let exports = Exports {
            context_create,
            request_headers: func!("proxy_on_request_headers"),
            response_headers: func!("proxy_on_response_headers"),
            request_body: func!("proxy_on_request_body"),
            response_trailers: func!("proxy_on_response_trailers"),
            request_trailers: func!("proxy_on_request_trailers"),
            response_body: func!("proxy_on_response_body"),
            call_response: func!("proxy_on_http_call_response"),
            log: func!("proxy_on_log"),
            done: func!("proxy_on_done"),
            delete: func!("proxy_on_delete"),
            tick: func!("proxy_on_tick"),
            queue_ready: func!("proxy_on_queue_ready"),
        };
        let vm_start: Option<TypedFunc<(i32, i32), i32>> = func!("proxy_on_vm_start");
        let configure: Option<TypedFunc<(i32, i32), i32>> = func!("proxy_on_configure");
        exports
            .context_create
            .call(&mut store, (ROOT, 0))
            .map_err(|e| failed(e, &store))?;
        let refused = |store: &Store<ProxyCtx>, callback: &str| {
            let mut why = format!("{callback} returned false");
            if let Some(said) = &store.data().last_complaint {
                why.push_str(&format!(" (it logged: {said})"));
            }
            VmStartError::Refused(why)
        };
        let size = i32::try_from(setup.config.len()).unwrap_or(i32::MAX);
        for (f, callback, size) in [
            (vm_start, "proxy_on_vm_start", 0),
            (configure, "proxy_on_configure", size),
        ] {
            let Some(f) = f else { continue };
            let ok = f
                .call(&mut store, (ROOT, size))
                .map_err(|e| failed(e, &store))?;
            if let Some(why) = store.data_mut().violation.take() {
                return Err(VmStartError::Refused(format!("{callback}: {why}")));
            }
            if ok == 0 {
                return Err(refused(&store, callback));
            }
        }
        Ok(Vm {
            store,
            exports,
            streams: BTreeMap::new(),
            next_context: ROOT + 1,
            next_tick: None,
        })
    }

    /// The tick period its root context asked for.
    pub(crate) fn tick(&self) -> Option<Duration> {
        self.store.data().tick
    }

    /// The stream context of `call_id`, created on its first hook.
    fn open(&mut self, call_id: u64) -> wasmtime::Result<i32> {
        if let Some(s) = self.streams.get(&call_id) {
            return Ok(s.id);
        }
        if self.streams.len() >= MAX_STREAMS
            && let Some((_, oldest)) = self.streams.pop_first()
            && let Some(delete) = self.exports.delete.clone()
        {
            delete.call(&mut self.store, oldest.id)?;
        }
        let id = self.next_context;
        self.next_context = match self.next_context.checked_add(1) {
            Some(n) => n,
            None => ROOT + 1,
        };
        self.exports
            .context_create
            .call(&mut self.store, (id, ROOT))?;
        self.streams.insert(
            call_id,
            Stream {
                id,
                kept: Kept::default(),
            },
        );
        Ok(id)
    }

    /// What the callback decided: the filter's local answer, if it gave one; a pause it did
    /// not resume before returning fails the call, as Weft does not hold streams yet.
    fn verdict(&mut self, action: i32, what: &str) -> Option<LocalResponse> {
        let ctx = self.store.data_mut();
        ctx.phase = Phase::Root;
        if let Some(reply) = ctx.reply.take() {
            return Some(reply);
        }
        if action == PAUSE && !ctx.resumed {
            ctx.violation.get_or_insert(format!(
                "paused the {what} without answering it or dispatching an HTTP call; Weft holds a request only for its callouts"
            ));
        }
        None
    }

    /// What a request callback decided, its callouts included.
    fn requested(&mut self, action: i32) -> Requested {
        let ctx = self.store.data_mut();
        let callouts = std::mem::take(&mut ctx.callouts);
        if ctx.reply.is_none() && !callouts.is_empty() {
            ctx.phase = Phase::Root;
            let goes_on = action != PAUSE || ctx.resumed;
            return Requested::Paused(callouts, goes_on);
        }
        match self.verdict(action, "request") {
            Some(reply) => Requested::Reply(reply),
            None => Requested::Continue,
        }
    }

    /// Keeps what the request callbacks left of the head for the stream's later callbacks.
    fn keep_request(&mut self, call_id: u64, head: &RequestHead) {
        let ctx = self.store.data_mut();
        let mut kept = std::mem::take(&mut ctx.kept);
        kept.method = head.method.to_string();
        kept.path = head.path.clone();
        kept.authority = head.authority.clone();
        kept.source = head.source.clone();
        kept.request_headers = ctx::KeptHeaders::of(&head.headers);
        if let Some(s) = self.streams.get_mut(&call_id) {
            s.kept = kept;
        }
    }

    /// Delivers the answers to a call's callouts (`proxy_on_http_call_response`), the request
    /// head lent again so the filter may edit it before it resumes. `goes_on`: the filter did
    /// not pause for them.
    pub(crate) fn on_callout_answers(
        &mut self,
        call_id: u64,
        head: &mut RequestHead,
        answers: Vec<(u32, Option<CalloutAnswer>)>,
        goes_on: bool,
    ) -> wasmtime::Result<Requested> {
        let Some(f) = self.exports.call_response.clone() else {
            wasmtime::bail!(
                "the filter dispatched an HTTP call but exports no proxy_on_http_call_response"
            );
        };
        let Some(id) = self.streams.get(&call_id).map(|s| s.id) else {
            wasmtime::bail!("the request's stream context was lost with its VM");
        };
        let kept = self.lend_kept(call_id);
        let ctx = self.store.data_mut();
        std::mem::swap(&mut ctx.request, head);
        ctx.kept = kept;
        ctx.phase = Phase::RequestHeaders;
        ctx.reply = None;
        ctx.resumed = false;
        let r = self.deliver(&f, id, answers);
        let ctx = self.store.data_mut();
        std::mem::swap(&mut ctx.request, head);
        self.keep_request(call_id, head);
        r?;
        let ctx = self.store.data_mut();
        let resumed = ctx.resumed || goes_on;
        let callouts = std::mem::take(&mut ctx.callouts);
        ctx.phase = Phase::Root;
        if let Some(reply) = ctx.reply.take() {
            return Ok(Requested::Reply(reply));
        }
        if !callouts.is_empty() {
            return Ok(Requested::Paused(callouts, resumed));
        }
        if !resumed {
            ctx.violation.get_or_insert(
                "paused the request and did not resume it when its HTTP calls were answered".into(),
            );
        }
        Ok(Requested::Continue)
    }

    /// `proxy_on_request_headers` for the call.
    pub(crate) fn on_request(
        &mut self,
        call_id: u64,
        head: &mut RequestHead,
    ) -> wasmtime::Result<Requested> {
        let Some(f) = self.exports.request_headers.clone() else {
            return Ok(Requested::Continue);
        };
        let id = self.begin(call_id, Phase::RequestHeaders)?;
        let ctx = self.store.data_mut();
        std::mem::swap(&mut ctx.request, head);
        ctx.callouts.clear();
        let count = i32::try_from(ctx.request.headers.len() + 4).unwrap_or(i32::MAX);
        let end = i32::from(no_request_body(&ctx.request));
        let r = f.call(&mut self.store, (id, count, end));
        let ctx = self.store.data_mut();
        std::mem::swap(&mut ctx.request, head);
        self.keep_request(call_id, head);
        let action = r?;
        Ok(self.requested(action))
    }

    /// `proxy_on_response_headers` for the call.
    pub(crate) fn on_response(
        &mut self,
        call_id: u64,
        head: &mut ResponseHead,
    ) -> wasmtime::Result<Option<LocalResponse>> {
        let Some(f) = self.exports.response_headers.clone() else {
            return Ok(None);
        };
        let id = self.begin(call_id, Phase::ResponseHeaders)?;
        let ctx = self.store.data_mut();
        std::mem::swap(&mut ctx.response, head);
        let count = i32::try_from(ctx.response.headers.len() + 1).unwrap_or(i32::MAX);
        let end = i32::from(no_response_body(&ctx.response));
        let r = f.call(&mut self.store, (id, count, end));
        let ctx = self.store.data_mut();
        std::mem::swap(&mut ctx.response, head);
        let mut kept = std::mem::take(&mut ctx.kept);
        kept.status = Some(head.status);
        kept.response_headers = ctx::KeptHeaders::of(&head.headers);
        if let Some(s) = self.streams.get_mut(&call_id) {
            s.kept = kept;
        }
        let action = r?;
        Ok(self.verdict(action, "response"))
    }

    /// `proxy_on_request_body` or `proxy_on_response_body` on `body`, which the filter may
    /// read and rewrite (`get/set_buffer_bytes`).
    pub(crate) fn on_body(
        &mut self,
        call_id: u64,
        response: bool,
        body: &mut Vec<u8>,
        end: bool,
    ) -> wasmtime::Result<crate::plugin::types::BodyVerdict> {
        use crate::plugin::types::BodyVerdict;
        let f = if response {
            self.exports.response_body.clone()
        } else {
            self.exports.request_body.clone()
        };
        let Some(f) = f else {
            return Ok(BodyVerdict::Continue);
        };
        let phase = if response {
            Phase::ResponseBody
        } else {
            Phase::RequestBody
        };
        let id = self.begin(call_id, phase)?;
        let ctx = self.store.data_mut();
        std::mem::swap(&mut ctx.body, body);
        let size = i32::try_from(ctx.body.len()).unwrap_or(i32::MAX);
        let r = f.call(&mut self.store, (id, size, i32::from(end)));
        let ctx = self.store.data_mut();
        std::mem::swap(&mut ctx.body, body);
        ctx.phase = Phase::Root;
        self.return_kept(call_id);
        let action = r?;
        let ctx = self.store.data_mut();
        if let Some(reply) = ctx.reply.take() {
            if response {
                ctx.violation.get_or_insert(
                    "a local response from the response body: the response head has gone to the caller".into(),
                );
                return Ok(BodyVerdict::Continue);
            }
            return Ok(BodyVerdict::Respond(crate::plugin::chain::local_reply(
                reply,
            )));
        }
        Ok(match action {
            PAUSE if end => {
                ctx.violation.get_or_insert(format!(
                    "paused the {} body at its end; Weft does not hold paused streams yet",
                    if response { "response" } else { "request" }
                ));
                BodyVerdict::Continue
            }
            PAUSE => BodyVerdict::Buffer,
            _ => BodyVerdict::Continue,
        })
    }

    /// `proxy_on_request_trailers` or `proxy_on_response_trailers` on the trailers, which the
    /// filter may edit; a request's may be answered in the call's place (nothing has gone on
    /// when the body was whole; a streaming one's caller fails the call instead).
    pub(crate) fn on_trailers(
        &mut self,
        call_id: u64,
        response: bool,
        trailers: &mut http::HeaderMap,
    ) -> wasmtime::Result<crate::plugin::types::BodyVerdict> {
        use crate::plugin::types::BodyVerdict;
        let (f, phase) = if response {
            (
                self.exports.response_trailers.clone(),
                Phase::ResponseTrailers,
            )
        } else {
            (
                self.exports.request_trailers.clone(),
                Phase::RequestTrailers,
            )
        };
        let Some(f) = f else {
            return Ok(BodyVerdict::Continue);
        };
        let id = self.begin(call_id, phase)?;
        let ctx = self.store.data_mut();
        std::mem::swap(&mut ctx.trailers, trailers);
        let count = i32::try_from(ctx.trailers.len()).unwrap_or(i32::MAX);
        let r = f.call(&mut self.store, (id, count));
        let ctx = self.store.data_mut();
        std::mem::swap(&mut ctx.trailers, trailers);
        self.return_kept(call_id);
        let action = r?;
        let ctx = self.store.data_mut();
        ctx.phase = Phase::Root;
        let which = if response { "response" } else { "request" };
        if let Some(reply) = ctx.reply.take() {
            if !response {
                return Ok(BodyVerdict::Respond(crate::plugin::chain::local_reply(
                    reply,
                )));
            }
            ctx.violation.get_or_insert(
                "a local response from the response trailers: the response has gone to the caller"
                    .into(),
            );
        } else if action == PAUSE && !ctx.resumed {
            ctx.violation.get_or_insert(format!(
                "paused the {which} at its trailers; Weft does not hold paused streams yet"
            ));
        }
        Ok(BodyVerdict::Continue)
    }

    /// `proxy_on_log`, `proxy_on_done` and `proxy_on_delete`: the call has ended.
    pub(crate) fn on_done(&mut self, call_id: u64, summary: &CallSummary) -> wasmtime::Result<()> {
        let Some(stream) = self.streams.remove(&call_id) else {
            return Ok(());
        };
        let ctx = self.store.data_mut();
        ctx.kept = stream.kept;
        ctx.summary = Some(*summary);
        ctx.phase = Phase::Log;
        let mut r = Ok(());
        if let Some(f) = self.exports.log.clone() {
            r = f.call(&mut self.store, stream.id);
        }
        if r.is_ok()
            && let Some(f) = self.exports.done.clone()
        {
            r = f.call(&mut self.store, stream.id).map(|_| ());
        }
        if r.is_ok()
            && let Some(f) = self.exports.delete.clone()
        {
            r = f.call(&mut self.store, stream.id);
        }
        let ctx = self.store.data_mut();
        ctx.kept = Kept::default();
        ctx.summary = None;
        ctx.phase = Phase::Root;
        r
    }

    /// `proxy_on_queue_ready` on the root context: a queue it registered has items.
    pub(crate) fn on_queue_ready(&mut self, queue: u32) -> wasmtime::Result<()> {
        let Some(f) = self.exports.queue_ready.clone() else {
            return Ok(());
        };
        self.store.data_mut().phase = Phase::Root;
        f.call(&mut self.store, (ROOT, queue as i32))
    }

    /// `proxy_on_tick` on the root context.
    pub(crate) fn on_tick(&mut self) -> wasmtime::Result<()> {
        let Some(f) = self.exports.tick.clone() else {
            return Ok(());
        };
        self.store.data_mut().phase = Phase::Root;
        f.call(&mut self.store, ROOT)
    }

    /// The call's stream context, opened for a callback in `phase`: its id, with what the
    /// stream kept lent to the store and the callback's outcome cleared.
    fn begin(&mut self, call_id: u64, phase: Phase) -> wasmtime::Result<i32> {
        let id = self.open(call_id)?;
        let kept = self.lend_kept(call_id);
        let ctx = self.store.data_mut();
        ctx.kept = kept;
        ctx.phase = phase;
        ctx.reply = None;
        ctx.resumed = false;
        Ok(id)
    }

    /// What the stream of `call_id` kept, moved out for a callback to see.
    fn lend_kept(&mut self, call_id: u64) -> Kept {
        self.streams
            .get_mut(&call_id)
            .map(|s| std::mem::take(&mut s.kept))
            .unwrap_or_default()
    }

    /// What a callback left of the stream's kept state, back to the stream.
    fn return_kept(&mut self, call_id: u64) {
        let kept = std::mem::take(&mut self.store.data_mut().kept);
        if let Some(s) = self.streams.get_mut(&call_id) {
            s.kept = kept;
        }
    }

    /// The HTTP calls the root context dispatched, for the sidecar to make.
    pub(crate) fn take_callouts(&mut self) -> Vec<Callout> {
        std::mem::take(&mut self.store.data_mut().callouts)
    }

    /// `proxy_on_http_call_response` on the root context, for each answer to its calls.
    pub(crate) fn on_root_answers(
        &mut self,
        answers: crate::plugin::types::CalloutAnswers,
    ) -> wasmtime::Result<()> {
        let Some(f) = self.exports.call_response.clone() else {
            return Ok(());
        };
        self.store.data_mut().phase = Phase::Root;
        self.deliver(&f, ROOT, answers)
    }

    /// `proxy_on_http_call_response` on `context` for each answer, until one fails or the
    /// filter answers the request itself.
    fn deliver(
        &mut self,
        f: &CallResponse,
        context: i32,
        answers: crate::plugin::types::CalloutAnswers,
    ) -> wasmtime::Result<()> {
        let mut r = Ok(());
        for (token, answer) in answers {
            let answer = answer.unwrap_or_default();
            let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
            let counts = (
                count(answer.headers.len()),
                count(answer.body.len()),
                count(answer.trailers.len()),
            );
            self.store.data_mut().answer = Some(answer);
            r = f.call(
                &mut self.store,
                (context, token as i32, counts.0, counts.1, counts.2),
            );
            if r.is_err() || self.store.data().reply.is_some() {
                break;
            }
        }
        self.store.data_mut().answer = None;
        r
    }
}

/// Whether no body follows a request's head (Envoy's `end_of_stream` on the headers): as the
/// proxy saw the stream end with the headers; or, when it did not say, `content-length: 0`,
/// or a GET or HEAD with neither a length nor chunked framing.
fn no_request_body(head: &RequestHead) -> bool {
    if let Some(ended) = head.headers_end_stream {
        return ended;
    }
    match head.headers.get(http::header::CONTENT_LENGTH) {
        Some(v) => v.as_bytes() == b"0",
        None => {
            !head.headers.contains_key(http::header::TRANSFER_ENCODING)
                && matches!(head.method, http::Method::GET | http::Method::HEAD)
        }
    }
}

/// Whether a response head says no body follows.
fn no_response_body(head: &ResponseHead) -> bool {
    crate::plugin::types::response_without_body(head.status, &head.headers)
}
