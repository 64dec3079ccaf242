//! A test plugin for the sandbox. By default it is well-behaved: it stamps a header, moves
//! tagged calls to a subset, and answers `/teapot` locally. The `x-chaos` request header makes
//! it misbehave in one way: `loop`, `alloc`, `trap` or `panic`; or, against the host's bounds
//! on what a plugin may hand it, `headers` (append 30,000 request headers) or `reply-headers`
//! (answer with 30,000 headers); or work hard but finish: `spin-<ms>` (busy for at least that
//! many milliseconds) or `grow-<MiB>` (grow its memory by that much, then go on).

use serde::Deserialize;
use weft_sdk::host::{metrics, state};
use weft_sdk::{
    Attempt, AttemptAction, CallSummary, Filter, Hooks, LocalResponse, MetricKind, Outcome,
    Request, RequestAction, Response, ResponseAction, export_filter,
};

/// Configuration.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Value of the `x-chaos-tag` header stamped on requests.
    tag: String,
    /// Reject the configuration (to test configure errors).
    reject: bool,
    /// Misbehave in `configure` itself: `trap` or `loop`.
    configure: Option<String>,
    /// Answer 403 to calls from this caller identity (a SPIFFE ID): a gate on who calls.
    deny_from: Option<String>,
    /// Stamp the caller's identity on requests as `x-chaos-source` (`none` when unknown).
    stamp_source: bool,
}

/// The chaos plugin.
pub struct Chaos {
    tag: String,
    deny_from: Option<String>,
    stamp_source: bool,
}

fn misbehave(mode: &str) {
    match mode {
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            // Capacity only: memory grows without touching pages, so the cap is what stops
            // it, not the deadline.
            let mut hoard: Vec<Vec<u8>> = Vec::with_capacity(1024);
            loop {
                hoard.push(Vec::with_capacity(1 << 20));
                std::hint::black_box(&hoard);
            }
        }
        "trap" => std::process::abort(),
        "panic" => panic!("chaos plugin asked to panic"),
        other => {
            if let Some(ms) = other
                .strip_prefix("spin-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                // The clock has millisecond steps: past `ms + 1` of them is at least `ms`.
                let start = weft_sdk::host::now_ms();
                while weft_sdk::host::now_ms() <= start + ms {
                    std::hint::spin_loop();
                }
            }
            if let Some(mib) = other
                .strip_prefix("grow-")
                .and_then(|n| n.parse::<usize>().ok())
            {
                let held: Vec<u8> = Vec::with_capacity(mib << 20);
                std::hint::black_box(&held);
            }
        }
    }
}

impl Filter for Chaos {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.reject {
            return Err("rejected on purpose: `reject` is true".into());
        }
        if let Some(mode) = &config.configure {
            misbehave(mode);
        }
        Ok(Chaos {
            tag: config.tag,
            deny_from: config.deny_from,
            stamp_source: config.stamp_source,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST | Hooks::ON_ATTEMPT_END | Hooks::ON_RESPONSE | Hooks::ON_DONE
    }

    fn on_request(&self, _call_id: u64, req: &mut Request<'_>) -> RequestAction {
        if let Some(mode) = req.header_str("x-chaos") {
            match mode.as_str() {
                "headers" => {
                    for i in 0..30_000 {
                        let _ = req.append_header("x-flood", i.to_string());
                    }
                }
                "reply-headers" => {
                    let mut reply = LocalResponse::text(200, "flood");
                    for i in 0..30_000 {
                        reply
                            .headers
                            .push(("x-flood".into(), i.to_string().into_bytes()));
                    }
                    return RequestAction::Respond(reply);
                }
                other => misbehave(other),
            }
        }
        if self.deny_from.is_some() || self.stamp_source {
            let source = req.source();
            if self.deny_from.as_deref() == Some(source.as_str()) {
                return RequestAction::Respond(LocalResponse::text(
                    403,
                    format!("chaos: caller {source} is denied\n"),
                ));
            }
            if self.stamp_source {
                let shown = if source.is_empty() { "none" } else { &source };
                let _ = req.set_header("x-chaos-source", shown);
            }
        }
        if req.path() == "/teapot" {
            return RequestAction::Respond(LocalResponse::text(418, "short and stout"));
        }
        if req.header("x-canary").is_some() {
            req.set_subset("v2");
        }
        let _ = req.set_header("x-chaos-tag", &self.tag);
        req.remove_header("x-remove-me");
        RequestAction::Continue
    }

    fn on_attempt_end(&self, attempt: &Attempt) -> AttemptAction {
        match attempt.outcome {
            Outcome::Response(503) | Outcome::Reset if attempt.number < 3 => {
                AttemptAction::Retry(attempt.number * 10)
            }
            _ => AttemptAction::Done,
        }
    }

    fn on_response(&self, _call_id: u64, resp: &mut Response<'_>) -> ResponseAction {
        let _ = resp.set_header("x-chaos-status", resp.status().to_string());
        ResponseAction::Continue
    }

    fn on_done(&self, summary: &CallSummary) {
        let _ = state::add("done", 1, 0);
        if let Ok(m) = metrics::define(
            MetricKind::Counter,
            "chaos_calls_total",
            "Calls the chaos plugin saw finish.",
            &["code"],
            &[],
        ) && let Ok(series) = metrics::series(m, &[&summary.status.to_string()])
        {
            metrics::record(&[metrics::Sample { series, value: 1.0 }]);
        }
    }
}

export_filter!(Chaos);
