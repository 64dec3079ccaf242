//! Unit tests through `weft_sdk::testing`: each test thread has its own host double.
//!
//! Shares are checked over many draws from a seeded generator. Each bound is the binomial mean
//! ± 5 standard deviations, so a correct plugin fails one about once in 1.7 million seeds; with
//! the fixed seeds here the outcome is the same on every run.

use super::*;
use weft_sdk::testing::{Harness, TestRequest, logs, seed_random};

fn harness(config: &str) -> Harness<Fault> {
    match Harness::<Fault>::new(config) {
        Ok(h) => h,
        Err(e) => panic!("config {config} rejected: {e}"),
    }
}

fn config_error(config: &str) -> String {
    match Harness::<Fault>::new(config) {
        Ok(_) => panic!("config {config} accepted"),
        Err(e) => e,
    }
}

fn parsed(config: &str) -> Config {
    match serde_json::from_str::<Config>(config) {
        Ok(c) => c,
        Err(e) => panic!("config {config} rejected: {e}"),
    }
}

/// What one call got: its delay (ms), if any, and its abort status, if any.
fn call(h: &mut Harness<Fault>) -> (Option<u32>, Option<u16>) {
    let mut req = TestRequest::get("payments", "/charge");
    let (_, action) = h.on_request(&mut req);
    let status = match action {
        RequestAction::Respond(r) => Some(r.status),
        RequestAction::Continue => None,
    };
    (req.delay_ms, status)
}

/// Over `n` calls: how many were delayed and how many aborted.
fn tally(h: &mut Harness<Fault>, n: u32) -> (u32, u32) {
    let (mut delayed, mut aborted) = (0, 0);
    for _ in 0..n {
        let (d, a) = call(h);
        delayed += u32::from(d.is_some());
        aborted += u32::from(a.is_some());
    }
    (delayed, aborted)
}

/// The mean ± 5 standard deviations of Binomial(n, p).
fn bounds(n: u32, p: f64) -> std::ops::RangeInclusive<u32> {
    let mean = f64::from(n) * p;
    let spread = 5.0 * (mean * (1.0 - p)).sqrt();
    let low = (mean - spread).floor().max(0.0) as u32;
    let high = (mean + spread).ceil() as u32;
    low..=high
}

// === shares ===

#[test]
fn zero_percent_never_fires_and_costs_no_hook() {
    for config in [
        r#"{"abort":{"httpStatus":503,"percentage":{"value":0}}}"#,
        r#"{"delay":{"fixedDelay":"1s","percentage":{"value":0.0}}}"#,
        r#"{"abort":{"httpStatus":503,"percent":0}}"#,
        // Finer than one in a million rounds to none.
        r#"{"abort":{"httpStatus":503,"percentage":{"value":0.00004}}}"#,
        // Protobuf's default for a Percent with no value.
        r#"{"abort":{"httpStatus":503,"percentage":{}}}"#,
    ] {
        let mut h = harness(config);
        assert_eq!(h.hooks(), Hooks::NONE, "{config}");
        seed_random(7);
        assert_eq!(tally(&mut h, 10_000), (0, 0), "{config}");
    }
}

#[test]
fn a_hundred_percent_always_fires() {
    let mut h = harness(
        r#"{"delay":{"fixedDelay":"2s","percentage":{"value":100}},
            "abort":{"httpStatus":503,"percentage":{"value":100.0}}}"#,
    );
    assert_eq!(h.hooks(), Hooks::ON_REQUEST);
    for seed in 1..=2_000 {
        seed_random(seed);
        assert_eq!(call(&mut h), (Some(2_000), Some(503)), "seed {seed}");
    }
    let mut h = harness(r#"{"abort":{"httpStatus":500,"percent":100}}"#);
    assert_eq!(tally(&mut h, 2_000), (0, 2_000));
}

#[test]
fn percentages_hold_over_many_draws() {
    let n = 100_000;
    for (value, seed) in [(5.0, 11), (10.0, 12), (50.0, 13), (90.0, 14), (99.5, 15)] {
        seed_random(seed);
        let mut h = harness(&format!(
            r#"{{"abort":{{"httpStatus":503,"percentage":{{"value":{value}}}}}}}"#
        ));
        let (_, aborted) = tally(&mut h, n);
        let expected = bounds(n, value / 100.0);
        assert!(
            expected.contains(&aborted),
            "{value}%: {aborted} of {n} aborted, expected {expected:?}"
        );

        seed_random(seed + 100);
        let mut h = harness(&format!(
            r#"{{"delay":{{"fixedDelay":"10ms","percentage":{{"value":{value}}}}}}}"#
        ));
        let (delayed, _) = tally(&mut h, n);
        assert!(
            expected.contains(&delayed),
            "{value}%: {delayed} of {n} delayed, expected {expected:?}"
        );
    }
}

#[test]
fn a_fractional_percentage_is_one_in_a_thousand() {
    // Istio's own example: `value: 0.1` delays 1 request in 1,000.
    seed_random(21);
    let mut h = harness(r#"{"abort":{"httpStatus":400,"percentage":{"value":0.1}}}"#);
    let n = 400_000;
    let (_, aborted) = tally(&mut h, n);
    // Mean 400, sd 20: 300..=500.
    let expected = bounds(n, 0.001);
    assert!(
        expected.contains(&aborted),
        "{aborted} of {n} aborted, expected {expected:?}"
    );
}

#[test]
fn percentages_resolve_to_a_millionth() {
    let per_million = |value: &str| {
        parsed(&format!(
            r#"{{"abort":{{"httpStatus":503,"percentage":{{"value":{value}}}}}}}"#
        ))
        .abort
        .map(|a| a.share.per_million)
    };
    assert_eq!(per_million("0.1"), Some(1_000));
    assert_eq!(per_million("0.0001"), Some(1));
    assert_eq!(per_million("0.29"), Some(2_900), "rounded, not truncated");
    assert_eq!(per_million("12.5"), Some(125_000));
    assert_eq!(per_million("99.9999"), Some(999_999));
    assert_eq!(per_million("100"), Some(PER_MILLION));
}

#[test]
fn the_legacy_integer_percent_works_on_delay_and_abort() {
    let c = parsed(
        r#"{"delay":{"fixedDelay":"1s","percent":30},"abort":{"httpStatus":503,"percent":7}}"#,
    );
    assert_eq!(c.delay.map(|d| d.share.per_million), Some(300_000));
    assert_eq!(c.abort.map(|a| a.share.per_million), Some(70_000));

    seed_random(31);
    let n = 50_000;
    let mut h = harness(
        r#"{"delay":{"fixedDelay":"1s","percent":30},"abort":{"httpStatus":503,"percent":7}}"#,
    );
    let (delayed, aborted) = tally(&mut h, n);
    assert!(bounds(n, 0.30).contains(&delayed), "{delayed} delayed");
    assert!(bounds(n, 0.07).contains(&aborted), "{aborted} aborted");
}

#[test]
fn percentage_wins_over_percent_as_in_istio() {
    let c = parsed(r#"{"delay":{"fixedDelay":"1s","percent":100,"percentage":{"value":0.5}}}"#);
    assert_eq!(c.delay.map(|d| d.share.per_million), Some(5_000));
}

// === what a fault does ===

#[test]
fn a_delay_sets_the_fixed_delay_and_lets_the_call_go_on() {
    for (text, ms) in [("5s", 5_000), ("250ms", 250), ("0.5s", 500), ("1m", 60_000)] {
        let mut h = harness(&format!(
            r#"{{"delay":{{"fixedDelay":"{text}","percentage":{{"value":100}}}}}}"#
        ));
        assert_eq!(call(&mut h), (Some(ms), None), "{text}");
    }
}

#[test]
fn an_abort_answers_plainly_with_the_status() {
    let mut h = harness(r#"{"abort":{"httpStatus":418,"percentage":{"value":100}}}"#);
    let mut req = TestRequest::get("payments", "/charge");
    let (_, action) = h.on_request(&mut req);
    let RequestAction::Respond(reply) = action else {
        panic!("not aborted: {action:?}");
    };
    assert_eq!(reply.status, 418);
    assert_eq!(reply.body, ABORT_BODY.as_bytes());
    assert_eq!(
        reply.headers,
        vec![(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec()
        )]
    );
    // The request itself is left as it was: no delay, no header.
    assert_eq!(req.delay_ms, None);
    assert!(req.headers.is_empty());
}

#[test]
fn delay_and_abort_are_drawn_independently() {
    seed_random(41);
    let mut h = harness(
        r#"{"delay":{"fixedDelay":"100ms","percentage":{"value":50}},
            "abort":{"httpStatus":503,"percentage":{"value":50}}}"#,
    );
    let n = 40_000;
    let mut both = [[0u32; 2]; 2];
    for _ in 0..n {
        let (d, a) = call(&mut h);
        both[usize::from(d.is_some())][usize::from(a.is_some())] += 1;
    }
    // Each of the four combinations is a quarter: a call may be delayed and then aborted.
    for (i, row) in both.iter().enumerate() {
        for (j, count) in row.iter().enumerate() {
            assert!(
                bounds(n, 0.25).contains(count),
                "delayed {i}, aborted {j}: {count} of {n}"
            );
        }
    }
    // Delayed and aborted together: the delay is set on the call the abort answers, and the
    // host holds the answer for it.
    let mut h = harness(
        r#"{"delay":{"fixedDelay":"300ms","percentage":{"value":100}},
            "abort":{"httpStatus":503,"percentage":{"value":100}}}"#,
    );
    assert_eq!(call(&mut h), (Some(300), Some(503)));
}

#[test]
fn no_percentage_means_never_as_in_istio_with_a_warning() {
    let mut h = harness(r#"{"abort":{"httpStatus":503}}"#);
    assert_eq!(h.hooks(), Hooks::NONE);
    assert_eq!(tally(&mut h, 1_000), (0, 0));
    let warned = logs()
        .iter()
        .any(|(level, line)| *level == Level::Warn && line.starts_with("abort: no percentage"));
    assert!(warned, "{:?}", logs());

    let h = harness(r#"{"delay":{"fixedDelay":"1s"},"abort":{"httpStatus":503,"percent":5}}"#);
    assert_eq!(h.hooks(), Hooks::ON_REQUEST);
    assert!(
        logs()
            .iter()
            .any(|(_, line)| line.starts_with("delay: no percentage"))
    );
}

#[test]
fn istios_examples_parse() {
    let c = parsed(
        r#"{"delay": {"percentage": {"value": 10.0}, "fixedDelay": "5s"},
            "abort": {"percentage": {"value": 5.0}, "httpStatus": 503}}"#,
    );
    assert_eq!(
        c,
        Config {
            delay: Some(DelayConfig {
                share: Share {
                    per_million: 100_000,
                    given: true
                },
                fixed_delay: Duration::from_secs(5),
            }),
            abort: Some(AbortConfig {
                share: Share {
                    per_million: 50_000,
                    given: true
                },
                http_status: 503,
                grpc_status: None,
            }),
        }
    );
    // Null reads as absent, as serde's Option does.
    let c = parsed(r#"{"delay":null,"abort":{"httpStatus":503,"percentage":null,"percent":null}}"#);
    assert_eq!(c.delay, None);
}

// === configuration errors ===

#[test]
fn configuration_errors_name_the_field() {
    let cases = [
        ("{}", "a fault needs a delay, an abort, or both"),
        (
            r#"{"delay":null,"abort":null}"#,
            "a delay, an abort, or both",
        ),
        (r#"{"abort":{"httpStatus":503},"retries":3}"#, "retries"),
        ("3", "object"),
        (r#"{"delay":"5s"}"#, "delay:"),
        (r#"{"delay":{"fixedDelay":"5s","delay":"1s"}}"#, "`delay`"),
        (
            r#"{"delay":{"percentage":{"value":10}}}"#,
            "delay.fixedDelay: required",
        ),
        (r#"{"delay":{"fixedDelay":5}}"#, "delay.fixedDelay:"),
        (r#"{"delay":{"fixedDelay":"5"}}"#, "delay.fixedDelay:"),
        (
            r#"{"delay":{"fixedDelay":"0s"}}"#,
            "delay.fixedDelay: must be at least 1ms",
        ),
        (
            r#"{"delay":{"fixedDelay":"1.5ms"}}"#,
            "delay.fixedDelay: only whole milliseconds",
        ),
        (
            r#"{"delay":{"fixedDelay":"2000h"}}"#,
            "delay.fixedDelay: must be at most",
        ),
        (
            r#"{"delay":{"exponentialDelay":"1s","percentage":{"value":10}}}"#,
            "delay.exponentialDelay: not supported",
        ),
        (
            r#"{"delay":{"fixedDelay":"1s","percentage":10}}"#,
            "delay.percentage:",
        ),
        (
            r#"{"delay":{"fixedDelay":"1s","percentage":{"value":100.5}}}"#,
            "delay.percentage.value: must be from 0 to 100",
        ),
        (
            r#"{"delay":{"fixedDelay":"1s","percentage":{"value":-1}}}"#,
            "delay.percentage.value:",
        ),
        (
            r#"{"delay":{"fixedDelay":"1s","percentage":{"value":"ten"}}}"#,
            "delay.percentage.value:",
        ),
        (
            r#"{"delay":{"fixedDelay":"1s","percentage":{"val":10}}}"#,
            "`val`",
        ),
        (
            r#"{"delay":{"fixedDelay":"1s","percent":101}}"#,
            "delay.percent: must be from 0 to 100",
        ),
        (
            r#"{"delay":{"fixedDelay":"1s","percent":12.5}}"#,
            "delay.percent:",
        ),
        (
            r#"{"abort":{"percentage":{"value":10}}}"#,
            "abort.httpStatus: required",
        ),
        (r#"{"abort":{"httpStatus":"503"}}"#, "abort.httpStatus:"),
        (
            r#"{"abort":{"httpStatus":99}}"#,
            "abort.httpStatus: must be from 200 to 599",
        ),
        (
            r#"{"abort":{"httpStatus":100}}"#,
            "abort.httpStatus: must be from 200 to 599",
        ),
        (
            r#"{"abort":{"httpStatus":600}}"#,
            "abort.httpStatus: must be from 200 to 599",
        ),
        (r#"{"abort":{"httpStatus":-1}}"#, "abort.httpStatus:"),
        (
            r#"{"abort":{"grpcStatus":"14","percentage":{"value":10}}}"#,
            "abort.grpcStatus: \"14\" is not a gRPC status name",
        ),
        (
            r#"{"abort":{"grpcStatus":"UNAVAILABLE","httpStatus":503}}"#,
            "abort: give httpStatus or grpcStatus, not both",
        ),
        (
            r#"{"abort":{"http2Error":"REFUSED_STREAM"}}"#,
            "abort.http2Error: not supported",
        ),
        (
            r#"{"abort":{"httpStatus":503,"percent":-5}}"#,
            "abort.percent:",
        ),
        (r#"{"abort":{"httpStatus":503,"status":503}}"#, "`status`"),
    ];
    for (config, needle) in cases {
        let err = config_error(config);
        assert!(err.contains(needle), "{config}: {err:?} lacks {needle:?}");
    }
}

#[test]
fn type_errors_carry_no_doubled_position() {
    let err = config_error(r#"{"abort":{"httpStatus":"503"}}"#);
    assert_eq!(
        err,
        "invalid configuration: abort.httpStatus: invalid type: string \"503\", expected i64"
    );
}

#[test]
fn boundary_statuses_are_accepted() {
    for status in [200, 418, 503, 599] {
        let mut h = harness(&format!(
            r#"{{"abort":{{"httpStatus":{status},"percentage":{{"value":100}}}}}}"#
        ));
        assert_eq!(call(&mut h), (None, Some(status)));
    }
}

#[test]
fn a_grpc_abort_answers_grpc_callers_in_grpc_and_others_with_its_http_pair() {
    let mut h = harness(r#"{"abort":{"grpcStatus":"UNAVAILABLE","percentage":{"value":100}}}"#);
    let mut grpc = TestRequest::get("payments", "/pkg.Payments/Charge")
        .with_header("content-type", "application/grpc");
    let (_, action) = h.on_request(&mut grpc);
    let RequestAction::Respond(reply) = action else {
        panic!("not aborted")
    };
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_empty());
    assert!(
        reply
            .headers
            .contains(&("grpc-status".into(), b"14".to_vec()))
    );
    assert!(
        reply
            .headers
            .contains(&("content-type".into(), b"application/grpc".to_vec()))
    );
    // A plain HTTP caller: the status the gRPC spec pairs with UNAVAILABLE.
    assert_eq!(call(&mut h), (None, Some(503)));
}
