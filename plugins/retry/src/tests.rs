//! Unit tests through `weft_sdk::testing`: each test thread has its own host double.

use super::*;
use weft_sdk::Outcome;
use weft_sdk::testing::{
    Harness, TestRequest, TestResponse, advance_ms, metric_value, seed_random, set_now_ms,
};

fn harness(config: &str) -> Harness<Retry> {
    match Harness::<Retry>::new(config) {
        Ok(h) => h,
        Err(e) => panic!("config {config} rejected: {e}"),
    }
}

fn config_error(config: &str) -> String {
    match Harness::<Retry>::new(config) {
        Ok(_) => panic!("config {config} accepted"),
        Err(e) => e,
    }
}

fn attempt(number: u32, outcome: Outcome) -> Attempt {
    Attempt {
        number,
        outcome,
        ..Attempt::default()
    }
}

fn retried(h: &Harness<Retry>, number: u32, outcome: Outcome) -> bool {
    matches!(
        h.on_attempt_end(&attempt(number, outcome)),
        AttemptAction::Retry(_)
    )
}

fn request(h: &mut Harness<Retry>) -> TestRequest {
    let mut req = TestRequest::get("payments", "/charge");
    h.on_request(&mut req);
    req
}

// === retryOn ===

const OUTCOMES: [Outcome; 16] = [
    Outcome::Response(200),
    Outcome::Response(404),
    Outcome::Response(409),
    Outcome::Response(418),
    Outcome::Response(429),
    Outcome::Response(500),
    Outcome::Response(501),
    Outcome::Response(502),
    Outcome::Response(503),
    Outcome::Response(504),
    Outcome::Response(599),
    Outcome::ConnectFailure,
    Outcome::Reset,
    Outcome::RefusedStream,
    Outcome::Timeout,
    Outcome::NoEndpoint,
];

#[test]
fn every_class_against_every_outcome() {
    // Columns follow OUTCOMES:
    //   200 404 409 418 429 500 501 502 503 504 599 | CF  RST REF TMO NOEP
    #[rustfmt::skip]
    let table: [(&str, [u8; 16]); 15] = [
        ("5xx",                    [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]),
        ("gateway-error",          [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0]),
        ("reset",                  [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]),
        ("connect-failure",        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
        ("refused-stream",         [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
        ("retriable-4xx",          [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("retriable-status-codes", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("retriable-status-codes,418", [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("503",                    [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
        ("cancelled",              [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("deadline-exceeded",      [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("internal",               [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("resource-exhausted",     [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("unavailable",            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        // Istio's default.
        (config::DEFAULT_RETRY_ON, [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0]),
    ];
    let mut wrong = Vec::new();
    for (class, expected) in table {
        // Ask the filter directly: a configuration that can never retry declares no
        // attempt hook, and the table is about the matching itself.
        let h = harness(&format!(
            r#"{{"attempts":1,"retryOn":"{class}","budget":false}}"#
        ));
        for (outcome, want) in OUTCOMES.iter().zip(expected) {
            let got = matches!(
                h.filter().on_attempt_end(&attempt(1, *outcome)),
                AttemptAction::Retry(_)
            );
            if got != (want == 1) {
                wrong.push(format!("{class} on {outcome:?}: retried={got}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn grpc_conditions_match_the_status_of_a_trailers_only_answer() {
    let h = harness(r#"{"attempts":2,"retryOn":"unavailable,deadline-exceeded","budget":false}"#);
    let with = |grpc: Option<u8>| {
        matches!(
            h.filter().on_attempt_end(&Attempt {
                outcome: Outcome::Response(200),
                grpc_status: grpc,
                ..Attempt::default()
            }),
            AttemptAction::Retry(_)
        )
    };
    // UNAVAILABLE (14) and DEADLINE_EXCEEDED (4) are retried; OK, INTERNAL (13) and a
    // response without a status in its headers are not.
    assert_eq!(
        [Some(14), Some(4), Some(0), Some(13), None].map(with),
        [true, true, false, false, false]
    );
    let every = harness(
        r#"{"attempts":1,"retryOn":"cancelled,deadline-exceeded,resource-exhausted,internal,unavailable","budget":false}"#,
    );
    for (code, want) in [
        (1, true),
        (4, true),
        (8, true),
        (13, true),
        (14, true),
        (2, false),
        (5, false),
    ] {
        let got = matches!(
            every.filter().on_attempt_end(&Attempt {
                grpc_status: Some(code),
                ..Attempt::default()
            }),
            AttemptAction::Retry(_)
        );
        assert_eq!(got, want, "grpc-status {code}");
    }
}

#[test]
fn classes_combine_and_tolerate_spaces() {
    let h = harness(r#"{"retryOn":" retriable-4xx , 418,503 ,,connect-failure","budget":false}"#);
    for outcome in [
        Outcome::Response(409),
        Outcome::Response(418),
        Outcome::Response(503),
        Outcome::ConnectFailure,
    ] {
        assert!(retried(&h, 1, outcome), "{outcome:?}");
    }
    for outcome in [Outcome::Response(500), Outcome::Reset, Outcome::Timeout] {
        assert!(!retried(&h, 1, outcome), "{outcome:?}");
    }
}

#[test]
fn an_absent_or_empty_retry_on_is_istios_default() {
    for config in [r#"{"budget":false}"#, r#"{"retryOn":"","budget":false}"#] {
        let h = harness(config);
        assert!(retried(&h, 1, Outcome::ConnectFailure), "{config}");
        assert!(retried(&h, 1, Outcome::RefusedStream), "{config}");
        // Istio's default policy lists 503 as its retriable status code.
        assert!(retried(&h, 1, Outcome::Response(503)), "{config}");
        assert!(!retried(&h, 1, Outcome::Response(500)), "{config}");
        assert!(!retried(&h, 1, Outcome::Reset), "{config}");
    }
}

#[test]
fn no_endpoint_is_never_retried() {
    let h = harness(
        r#"{"attempts":5,"retryOn":"5xx,gateway-error,reset,connect-failure,refused-stream","budget":false}"#,
    );
    assert_eq!(
        h.on_attempt_end(&attempt(1, Outcome::NoEndpoint)),
        AttemptAction::Done
    );
}

// === attempts ===

#[test]
fn attempts_counts_retries_after_the_first_try() {
    let h = harness(r#"{"attempts":3,"retryOn":"5xx","budget":false}"#);
    for n in 1..=3 {
        assert!(retried(&h, n, Outcome::Response(503)), "attempt {n}");
    }
    for n in [4, 5, 100] {
        assert!(!retried(&h, n, Outcome::Response(503)), "attempt {n}");
    }
}

#[test]
fn zero_attempts_never_retries_and_asks_for_no_attempt_hook() {
    let h = harness(r#"{"attempts":0,"retryOn":"5xx"}"#);
    assert!(!h.hooks().contains(Hooks::ON_ATTEMPT_END));
    assert_eq!(
        h.filter()
            .on_attempt_end(&attempt(1, Outcome::Response(503))),
        AttemptAction::Done
    );
}

#[test]
fn istios_default_is_two_retries() {
    let h = harness(r#"{"retryOn":"5xx","budget":false}"#);
    assert!(retried(&h, 2, Outcome::Response(500)));
    assert!(!retried(&h, 3, Outcome::Response(500)));
}

// === back-off ===

fn delay(h: &Harness<Retry>, n: u32) -> u32 {
    match h.on_attempt_end(&attempt(n, Outcome::Response(503))) {
        AttemptAction::Retry(d) => d,
        AttemptAction::Done => panic!("retry {n} refused"),
    }
}

/// Draws `draws` delays for retry `n`, from a fresh seed each, and returns (min, max, distinct).
fn spread(h: &Harness<Retry>, n: u32, draws: u64) -> (u32, u32, usize) {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 1..=draws {
        seed_random(seed * 7_919);
        seen.insert(delay(h, n));
    }
    let min = seen.first().copied().unwrap_or(0);
    let max = seen.last().copied().unwrap_or(0);
    (min, max, seen.len())
}

#[test]
fn default_backoff_is_full_jitter_under_a_doubling_bound_capped_at_250ms() {
    let h = harness(r#"{"attempts":10,"retryOn":"5xx","budget":false}"#);
    for (n, window) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (6, 250)] {
        let (min, max, distinct) = spread(&h, n, 400);
        assert!(max <= window, "retry {n}: {max} > {window}");
        // Uniform over [0, window]: 400 draws reach both ends' last fifth with certainty
        // short of ~1e-38.
        assert!(max * 5 >= window * 4, "retry {n}: max {max} of {window}");
        assert!(min * 5 <= window, "retry {n}: min {min} of {window}");
        assert!(distinct > 20, "retry {n}: only {distinct} distinct delays");
    }
    // Far past the cap, the bound stays the cap (no overflow from doubling).
    let (_, max, _) = spread(&h, 10, 50);
    assert!(max <= 250);
}

#[test]
fn custom_backoff_bounds() {
    let h = harness(
        r#"{"attempts":8,"retryOn":"5xx","budget":false,
            "backoff":{"baseInterval":"100ms","maxInterval":"1s"}}"#,
    );
    for (n, window) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (8, 1000)] {
        let (_, max, _) = spread(&h, n, 300);
        assert!(
            max <= window && max * 5 >= window * 4,
            "retry {n}: max {max}"
        );
    }
}

#[test]
fn max_interval_defaults_to_ten_times_the_base() {
    let h = harness(
        r#"{"attempts":8,"retryOn":"5xx","budget":false,"backoff":{"baseInterval":"10ms"}}"#,
    );
    for (n, window) in [(1, 10), (4, 80), (5, 100), (8, 100)] {
        let (_, max, _) = spread(&h, n, 300);
        assert!(
            max <= window && max * 5 >= window * 4,
            "retry {n}: max {max}"
        );
    }
}

#[test]
fn equal_base_and_max_keep_a_flat_bound() {
    let h = harness(
        r#"{"attempts":4,"retryOn":"5xx","budget":false,
            "backoff":{"baseInterval":"50ms","maxInterval":"50ms"}}"#,
    );
    for n in 1..=4 {
        let (_, max, _) = spread(&h, n, 200);
        assert!((40..=50).contains(&max), "retry {n}: max {max}");
    }
}

// === replay and deadline ===

#[test]
fn never_retries_an_unreplayable_body() {
    let h = harness(r#"{"attempts":3,"retryOn":"5xx"}"#);
    let mut a = attempt(1, Outcome::Response(500));
    a.replayable = false;
    assert_eq!(h.on_attempt_end(&a), AttemptAction::Done);
}

#[test]
fn never_retries_past_the_deadline() {
    let h = harness(r#"{"attempts":3,"retryOn":"5xx","budget":false}"#);
    let mut a = attempt(1, Outcome::Response(500));
    a.remaining_ms = 0;
    assert_eq!(h.on_attempt_end(&a), AttemptAction::Done);
    // With 10 ms left and a 25 ms window, a drawn delay either fits or the retry is dropped.
    a.remaining_ms = 10;
    let (mut fit, mut dropped) = (0, 0);
    for seed in 1..=300 {
        seed_random(seed);
        match h.on_attempt_end(&a) {
            AttemptAction::Retry(d) => {
                assert!(d < 10, "delay {d} reaches past the deadline");
                fit += 1;
            }
            AttemptAction::Done => dropped += 1,
        }
    }
    assert!(fit > 50 && dropped > 50, "fit {fit}, dropped {dropped}");
}

#[test]
fn unbounded_calls_always_have_time() {
    let h = harness(r#"{"attempts":3,"retryOn":"5xx","budget":false}"#);
    let a = attempt(3, Outcome::Response(500));
    assert_eq!(a.remaining_ms, u32::MAX);
    assert!(matches!(h.on_attempt_end(&a), AttemptAction::Retry(_)));
}

// === per-try timeout and hooks ===

#[test]
fn per_try_timeout_is_set_on_the_request() {
    let mut h = harness(r#"{"attempts":3,"perTryTimeout":"2s","retryOn":"5xx,reset"}"#);
    assert_eq!(request(&mut h).per_try_timeout_ms, Some(2_000));
    let mut h = harness(r#"{"perTryTimeout":"250ms"}"#);
    assert_eq!(request(&mut h).per_try_timeout_ms, Some(250));
    let mut h = harness(r#"{}"#);
    assert_eq!(request(&mut h).per_try_timeout_ms, None);
}

#[test]
fn declares_only_the_hooks_it_needs() {
    let cases = [
        // The budget counts requests.
        ("{}", Hooks::ON_REQUEST | Hooks::ON_ATTEMPT_END),
        (r#"{"budget":false}"#, Hooks::ON_ATTEMPT_END),
        (
            r#"{"budget":false,"perTryTimeout":"1s"}"#,
            Hooks::ON_REQUEST | Hooks::ON_ATTEMPT_END,
        ),
        (
            r#"{"budget":false,"attemptCountHeader":"x-envoy-attempt-count"}"#,
            Hooks::ON_ATTEMPT_END | Hooks::ON_RESPONSE,
        ),
        // Nothing can be retried: no attempt hook, and no requests to count.
        (r#"{"attempts":0}"#, Hooks::NONE),
        (
            r#"{"retryOn":"unavailable,cancelled"}"#,
            Hooks::ON_REQUEST | Hooks::ON_ATTEMPT_END,
        ),
        (r#"{"attempts":0,"perTryTimeout":"1s"}"#, Hooks::ON_REQUEST),
    ];
    for (config, hooks) in cases {
        assert_eq!(harness(config).hooks(), hooks, "{config}");
    }
}

// === attempt count header ===

#[test]
fn attempt_count_header_carries_the_tries() {
    let h = harness(r#"{"attemptCountHeader":"X-Envoy-Attempt-Count"}"#);
    let mut resp = TestResponse::new(503);
    resp.attempts = 3;
    h.on_response(1, &mut resp);
    assert_eq!(
        resp.header_text("x-envoy-attempt-count").as_deref(),
        Some("3")
    );
    // Replaced, not appended, when an upstream already sent one.
    let mut resp = TestResponse::new(200);
    resp.headers
        .push(("x-envoy-attempt-count".into(), b"9".to_vec()));
    h.on_response(2, &mut resp);
    let values: Vec<_> = resp
        .headers
        .iter()
        .filter(|(n, _)| n == "x-envoy-attempt-count")
        .collect();
    assert_eq!(values.len(), 1);
    assert_eq!(
        resp.header_text("x-envoy-attempt-count").as_deref(),
        Some("1")
    );
}

#[test]
fn no_attempt_count_header_by_default() {
    let h = harness("{}");
    let mut resp = TestResponse::new(200);
    h.on_response(1, &mut resp);
    assert!(resp.headers.is_empty());
}

// === budget ===

const SHARP_BUDGET: &str = r#"{"attempts":3,"retryOn":"5xx",
    "budget":{"retryRatio":0.2,"minRetriesPerSecond":1,"ttl":"10s"}}"#;

/// Fails `n` first tries and returns how many were granted a retry.
fn granted(h: &Harness<Retry>, n: usize) -> usize {
    (0..n)
        .filter(|_| retried(h, 1, Outcome::Response(503)))
        .count()
}

fn exhausted() -> f64 {
    metric_value(budget::EXHAUSTED_METRIC, &[]).unwrap_or(0.0)
}

#[test]
fn budget_grants_the_ratio_plus_the_floor_then_refuses() {
    set_now_ms(1_800_000_000_000);
    let mut h = harness(SHARP_BUDGET);
    for _ in 0..100 {
        request(&mut h);
    }
    // 1/s × 10 s + 0.2 × 100 requests.
    assert_eq!(granted(&h, 1_000), 30);
    assert_eq!(exhausted(), 970.0);
}

#[test]
fn default_budget_is_linkerds() {
    set_now_ms(1_800_000_000_000);
    let mut h = harness(r#"{"attempts":3,"retryOn":"5xx"}"#);
    for _ in 0..100 {
        request(&mut h);
    }
    // 10/s × 10 s + 0.2 × 100 requests.
    assert_eq!(granted(&h, 500), 120);
    assert_eq!(exhausted(), 380.0);
}

#[test]
fn budget_follows_the_request_rate() {
    set_now_ms(1_800_000_000_000);
    let mut h = harness(SHARP_BUDGET);
    for _ in 0..1_000 {
        request(&mut h);
    }
    assert_eq!(granted(&h, 1_000), 210);
}

#[test]
fn granted_retries_never_exceed_a_fractional_allowance() {
    set_now_ms(1_800_000_000_000);
    let mut h = harness(
        r#"{"attempts":3,"retryOn":"5xx",
            "budget":{"retryRatio":0.2,"minRetriesPerSecond":1,"ttl":"1s"}}"#,
    );
    for _ in 0..7 {
        request(&mut h);
    }
    // 1/s × 1 s + 0.2 × 7 = 2.4: two retries, not a third on the strength of 2 < 2.4.
    assert_eq!(granted(&h, 10), 2);
}

#[test]
fn budget_recovers_once_the_window_slides_past() {
    set_now_ms(1_800_000_000_000);
    let mut h = harness(SHARP_BUDGET);
    for _ in 0..100 {
        request(&mut h);
    }
    assert_eq!(granted(&h, 100), 30);
    // Nine seconds on, the first second is still in the window.
    advance_ms(9_000);
    assert_eq!(granted(&h, 10), 0);
    // Ten seconds on, it has left: only the floor again, with no new requests.
    advance_ms(1_000);
    assert_eq!(granted(&h, 100), 10);
    // New requests raise the allowance again.
    for _ in 0..50 {
        request(&mut h);
    }
    assert_eq!(granted(&h, 100), 10);
}

#[test]
fn budget_window_slides_second_by_second() {
    set_now_ms(1_800_000_000_000);
    let h = harness(
        r#"{"attempts":3,"retryOn":"5xx",
        "budget":{"retryRatio":0,"minRetriesPerSecond":1,"ttl":"3s"}}"#,
    );
    // A floor of 3 per 3 s, spent at once: they come back together when the second they
    // were spent in leaves the window, not before.
    assert_eq!(granted(&h, 10), 3);
    advance_ms(1_000);
    assert_eq!(granted(&h, 10), 0);
    advance_ms(2_000);
    assert_eq!(granted(&h, 10), 3);
}

#[test]
fn budget_is_shared_by_every_instance() {
    set_now_ms(1_800_000_000_000);
    let mut a = harness(SHARP_BUDGET);
    let b = harness(SHARP_BUDGET);
    for _ in 0..100 {
        request(&mut a);
    }
    assert_eq!(granted(&a, 20), 20);
    assert_eq!(granted(&b, 100), 10, "b sees a's requests and a's retries");
}

#[test]
fn retries_refused_for_other_reasons_do_not_spend_the_budget() {
    set_now_ms(1_800_000_000_000);
    let h = harness(
        r#"{"attempts":3,"retryOn":"5xx",
        "budget":{"retryRatio":0,"minRetriesPerSecond":1,"ttl":"1s"}}"#,
    );
    let mut late = attempt(1, Outcome::Response(503));
    late.remaining_ms = 0;
    let mut unreplayable = attempt(1, Outcome::Response(503));
    unreplayable.replayable = false;
    for _ in 0..5 {
        assert_eq!(h.on_attempt_end(&late), AttemptAction::Done);
        assert_eq!(h.on_attempt_end(&unreplayable), AttemptAction::Done);
        assert!(!retried(&h, 4, Outcome::Response(503)));
        assert!(!retried(&h, 1, Outcome::Response(200)));
    }
    assert_eq!(exhausted(), 0.0);
    assert_eq!(granted(&h, 5), 1);
    assert_eq!(exhausted(), 4.0);
}

#[test]
fn a_disabled_budget_never_refuses() {
    set_now_ms(1_800_000_000_000);
    let h = harness(r#"{"attempts":3,"retryOn":"5xx","budget":false}"#);
    assert_eq!(granted(&h, 10_000), 10_000);
    assert_eq!(metric_value(budget::EXHAUSTED_METRIC, &[]), None);
}

#[test]
fn budget_true_is_the_default_budget() {
    set_now_ms(1_800_000_000_000);
    let h = harness(r#"{"attempts":3,"retryOn":"5xx","budget":true}"#);
    assert_eq!(granted(&h, 200), 100);
}

#[test]
fn budget_fields_default_one_by_one() {
    set_now_ms(1_800_000_000_000);
    let mut h = harness(r#"{"attempts":3,"retryOn":"5xx","budget":{"retryRatio":1.0}}"#);
    for _ in 0..10 {
        request(&mut h);
    }
    // 10/s × 10 s + 1.0 × 10.
    assert_eq!(granted(&h, 500), 110);
}

#[test]
fn a_fractional_ttl_rounds_up_to_whole_seconds() {
    set_now_ms(1_800_000_000_000);
    let h = harness(
        r#"{"attempts":3,"retryOn":"5xx",
        "budget":{"retryRatio":0,"minRetriesPerSecond":2,"ttl":"1.5s"}}"#,
    );
    assert_eq!(granted(&h, 10), 4);
}

// === configuration errors ===

#[test]
fn configuration_errors_name_the_field() {
    let cases = [
        (r#"{"retries":3}"#, "retries"),
        (r#"{"attempts":-1}"#, "attempts:"),
        (r#"{"attempts":"three"}"#, "attempts:"),
        (r#"{"perTryTimeout":"2"}"#, "perTryTimeout:"),
        (r#"{"perTryTimeout":"0s"}"#, "perTryTimeout:"),
        (r#"{"retryOn":5}"#, "retryOn:"),
        (r#"{"retryOn":"5xx,sometimes"}"#, "\"sometimes\""),
        (r#"{"retryOn":"5XX"}"#, "\"5XX\""),
        (r#"{"retryOn":"600"}"#, "retryOn:"),
        (
            r#"{"retryOn":"5xx,retriable-headers"}"#,
            "\"retriable-headers\"",
        ),
        (r#"{"retryOn":"envoy-ratelimited"}"#, "not supported"),
        (r#"{"backoff":"25ms"}"#, "backoff:"),
        (r#"{"backoff":{"base":"25ms"}}"#, "base"),
        (
            r#"{"backoff":{"baseInterval":25}}"#,
            "backoff.baseInterval:",
        ),
        (
            r#"{"backoff":{"baseInterval":"0s"}}"#,
            "backoff.baseInterval:",
        ),
        (
            r#"{"backoff":{"baseInterval":"100ms","maxInterval":"50ms"}}"#,
            "backoff.maxInterval:",
        ),
        (
            r#"{"backoff":{"maxInterval":"10ms"}}"#,
            "backoff.maxInterval:",
        ),
        (r#"{"budget":"off"}"#, "budget:"),
        (r#"{"budget":{"ratio":0.2}}"#, "ratio"),
        (r#"{"budget":{"retryRatio":-0.1}}"#, "budget.retryRatio:"),
        (r#"{"budget":{"retryRatio":"lots"}}"#, "budget.retryRatio:"),
        (
            r#"{"budget":{"minRetriesPerSecond":-1}}"#,
            "budget.minRetriesPerSecond:",
        ),
        (r#"{"budget":{"ttl":"500ms"}}"#, "budget.ttl:"),
        (r#"{"budget":{"ttl":"2m"}}"#, "budget.ttl:"),
        (r#"{"budget":{"ttl":10}}"#, "budget.ttl:"),
        (
            r#"{"budget":{"retryRatio":0,"minRetriesPerSecond":0}}"#,
            "budget:",
        ),
        (
            r#"{"attemptCountHeader":"attempt count"}"#,
            "attemptCountHeader:",
        ),
        (r#"{"attemptCountHeader":""}"#, "attemptCountHeader:"),
        (r#"{"attemptCountHeader":3}"#, "attemptCountHeader:"),
        ("3", "object"),
    ];
    for (config, needle) in cases {
        let err = config_error(config);
        assert!(err.contains(needle), "{config}: {err:?} lacks {needle:?}");
    }
}

#[test]
fn type_errors_carry_no_doubled_position() {
    let err = config_error(r#"{"attempts":"three"}"#);
    assert_eq!(
        err,
        "invalid configuration: attempts: invalid type: string \"three\", expected u32"
    );
}

#[test]
fn the_full_example_parses() {
    let h = harness(
        r#"{"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset",
            "backoff": {"baseInterval": "25ms", "maxInterval": "250ms"},
            "budget": {"retryRatio": 0.2, "minRetriesPerSecond": 10, "ttl": "10s"},
            "attemptCountHeader": "x-envoy-attempt-count"}"#,
    );
    assert_eq!(
        h.hooks(),
        Hooks::ON_REQUEST | Hooks::ON_ATTEMPT_END | Hooks::ON_RESPONSE
    );
    // Null reads as absent, as serde's Option does.
    harness(r#"{"attempts":null,"budget":null,"backoff":null}"#);
}
