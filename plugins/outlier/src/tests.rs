//! The detector against the SDK's native host double.

use super::*;
use weft_sdk::testing::{
    Harness, add_endpoint, advance_ms, ejections, is_ejected, metric_value, reset,
};

const SECOND: u64 = 1_000;

fn attempt(endpoint: u64, outcome: Outcome) -> Attempt {
    Attempt {
        endpoint,
        outcome,
        ..Attempt::default()
    }
}

/// A fresh host with endpoints `1..=n` in one service, and the plugin configured.
fn setup(n: u64, config: &str) -> Harness<Outlier> {
    reset();
    for id in 1..=n {
        add_endpoint("payments", id, &format!("10.0.0.{id}:80"));
    }
    Harness::<Outlier>::new(config).expect("valid configuration")
}

fn send(h: &Harness<Outlier>, endpoint: u64, outcome: Outcome, times: usize) {
    for _ in 0..times {
        h.on_attempt_end(&attempt(endpoint, outcome));
    }
}

fn fail(h: &Harness<Outlier>, endpoint: u64, times: usize) {
    send(h, endpoint, Outcome::Response(503), times);
}

fn ejected_total(cause: &str) -> f64 {
    metric_value("outlier_ejections_total", &[cause]).unwrap_or(0.0)
}

fn skipped_total(reason: &str) -> f64 {
    metric_value("outlier_ejections_skipped_total", &[reason]).unwrap_or(0.0)
}

fn config_error(config: &str) -> String {
    reset();
    match Harness::<Outlier>::new(config) {
        Ok(_) => panic!("{config} should be refused"),
        Err(e) => e,
    }
}

// === the 5xx detector ===

#[test]
fn five_in_a_row_ejects_for_the_base_time() {
    let h = setup(2, r#"{"consecutive5xxErrors":5,"baseEjectionTime":"30s"}"#);
    fail(&h, 1, 4);
    assert!(ejections().is_empty());
    fail(&h, 1, 1);
    assert_eq!(ejections(), vec![(1, 30_000)]);
    assert!(is_ejected(1));
    assert!(!is_ejected(2));
}

#[test]
fn defaults_eject_after_five_errors_for_thirty_seconds() {
    let h = setup(2, "{}");
    assert_eq!(h.hooks(), Hooks::ON_ATTEMPT_END);
    fail(&h, 1, 5);
    assert_eq!(ejections(), vec![(1, 30_000)]);
}

#[test]
fn a_success_in_between_resets_the_run() {
    let h = setup(2, "{}");
    fail(&h, 1, 4);
    send(&h, 1, Outcome::Response(200), 1);
    fail(&h, 1, 4);
    assert!(ejections().is_empty(), "a success in between ends the run");
    fail(&h, 1, 1);
    assert_eq!(ejections(), vec![(1, 30_000)]);
}

#[test]
fn every_5xx_counts() {
    let h = setup(2, "{}");
    for status in [500, 501, 505, 599, 503] {
        send(&h, 1, Outcome::Response(status), 1);
    }
    assert_eq!(ejections(), vec![(1, 30_000)]);
}

#[test]
fn connect_failures_timeouts_resets_and_refused_streams_count() {
    let h = setup(2, "{}");
    send(&h, 1, Outcome::ConnectFailure, 1);
    send(&h, 1, Outcome::Timeout, 1);
    send(&h, 1, Outcome::Reset, 1);
    send(&h, 1, Outcome::RefusedStream, 1);
    assert!(ejections().is_empty());
    send(&h, 1, Outcome::ConnectFailure, 1);
    assert_eq!(ejections(), vec![(1, 30_000)]);
}

#[test]
fn client_errors_do_not_count_and_end_the_run() {
    let h = setup(2, "{}");
    send(&h, 1, Outcome::Response(404), 20);
    send(&h, 1, Outcome::Response(429), 20);
    assert!(ejections().is_empty());
    fail(&h, 1, 4);
    send(&h, 1, Outcome::Response(404), 1);
    fail(&h, 1, 4);
    assert!(ejections().is_empty(), "a 4xx ends the run");
}

#[test]
fn no_endpoint_and_endpoint_zero_are_ignored() {
    let h = setup(2, "{}");
    fail(&h, 0, 20);
    assert!(ejections().is_empty());
    fail(&h, 1, 4);
    // Neither an error nor a success: it says nothing about endpoint 1.
    send(&h, 1, Outcome::NoEndpoint, 3);
    assert!(ejections().is_empty());
    fail(&h, 1, 1);
    assert_eq!(ejections(), vec![(1, 30_000)]);
}

#[test]
fn runs_are_per_endpoint() {
    let h = setup(3, r#"{"maxEjectionPercent":100}"#);
    for _ in 0..4 {
        fail(&h, 1, 1);
        fail(&h, 2, 1);
    }
    assert!(ejections().is_empty());
    fail(&h, 2, 1);
    assert_eq!(ejections(), vec![(2, 30_000)]);
}

#[test]
fn a_threshold_of_one_ejects_on_the_first_error() {
    let h = setup(2, r#"{"consecutive5xxErrors":1}"#);
    fail(&h, 1, 1);
    assert_eq!(ejections(), vec![(1, 30_000)]);
}

#[test]
fn errors_in_flight_during_an_ejection_neither_extend_it_nor_count_later() {
    let h = setup(2, "{}");
    fail(&h, 1, 5);
    fail(&h, 1, 9);
    assert_eq!(ejections(), vec![(1, 30_000)], "already ejected: ignored");
    advance_ms(30 * SECOND);
    assert!(!is_ejected(1));
    fail(&h, 1, 4);
    assert_eq!(
        ejections().len(),
        1,
        "the run starts over after the ejection"
    );
    fail(&h, 1, 1);
    assert_eq!(ejections().len(), 2);
}

#[test]
fn a_run_past_the_threshold_starts_over() {
    // A run left longer than the threshold (the threshold was lowered in a swap, or another
    // worker is acting on it) must not block ejection for good.
    let h = setup(2, "{}");
    state::counter_add(Field::Run5xx.key(1), 7, 0);
    fail(&h, 1, 1);
    assert!(ejections().is_empty());
    fail(&h, 1, 5);
    assert_eq!(ejections(), vec![(1, 30_000)]);
}

#[test]
fn a_run_unbroken_for_an_hour_starts_over() {
    let h = setup(2, "{}");
    fail(&h, 1, 4);
    advance_ms(u64::from(RUN_TTL_MS));
    fail(&h, 1, 1);
    assert!(ejections().is_empty());
    fail(&h, 1, 4);
    assert_eq!(ejections().len(), 1);
}

#[test]
fn an_endpoint_the_host_does_not_know_is_left_alone() {
    let h = setup(2, "{}");
    fail(&h, 99, 10);
    assert!(ejections().is_empty());
    assert_eq!(ejected_total("5xx"), 0.0);
}

// === the gateway detector ===

#[test]
fn gateway_detector_on_its_own() {
    let h = setup(
        2,
        r#"{"consecutive5xxErrors":0,"consecutiveGatewayErrors":3}"#,
    );
    send(&h, 1, Outcome::Response(500), 20);
    assert!(ejections().is_empty(), "500 is no gateway error");
    send(&h, 1, Outcome::Response(502), 1);
    send(&h, 1, Outcome::Response(503), 1);
    assert!(ejections().is_empty());
    send(&h, 1, Outcome::Response(504), 1);
    assert_eq!(ejections(), vec![(1, 30_000)]);
    assert_eq!(ejected_total("gateway"), 1.0);
    assert_eq!(ejected_total("5xx"), 0.0);
}

#[test]
fn a_non_gateway_5xx_ends_a_gateway_run() {
    let h = setup(
        2,
        r#"{"consecutive5xxErrors":0,"consecutiveGatewayErrors":3}"#,
    );
    send(&h, 1, Outcome::Response(502), 2);
    send(&h, 1, Outcome::Response(500), 1);
    send(&h, 1, Outcome::Response(502), 2);
    assert!(ejections().is_empty());
    send(&h, 1, Outcome::Response(200), 1);
    send(&h, 1, Outcome::Response(502), 2);
    assert!(ejections().is_empty());
}

#[test]
fn local_failures_are_gateway_errors() {
    let h = setup(
        2,
        r#"{"consecutive5xxErrors":0,"consecutiveGatewayErrors":4}"#,
    );
    send(&h, 1, Outcome::ConnectFailure, 1);
    send(&h, 1, Outcome::Timeout, 1);
    send(&h, 1, Outcome::Reset, 1);
    send(&h, 1, Outcome::RefusedStream, 1);
    assert_eq!(ejections(), vec![(1, 30_000)]);
}

#[test]
fn both_detectors_the_first_to_fill_ejects() {
    let h = setup(
        4,
        r#"{"consecutive5xxErrors":5,"consecutiveGatewayErrors":3,"maxEjectionPercent":100}"#,
    );
    // 500s fill only the 5xx run.
    send(&h, 1, Outcome::Response(500), 5);
    // 503s fill the gateway run first.
    send(&h, 2, Outcome::Response(503), 3);
    assert_eq!(ejections(), vec![(1, 30_000), (2, 30_000)]);
    assert_eq!(ejected_total("5xx"), 1.0);
    assert_eq!(ejected_total("gateway"), 1.0);
}

#[test]
fn a_tie_is_a_gateway_ejection() {
    let h = setup(
        2,
        r#"{"consecutive5xxErrors":3,"consecutiveGatewayErrors":3}"#,
    );
    fail(&h, 1, 3);
    assert_eq!(ejections(), vec![(1, 30_000)]);
    assert_eq!(ejected_total("gateway"), 1.0);
    assert_eq!(ejected_total("5xx"), 0.0);
}

#[test]
fn disabled_detectors_watch_nothing() {
    let h = setup(
        2,
        r#"{"consecutive5xxErrors":0,"consecutiveGatewayErrors":0}"#,
    );
    assert_eq!(h.hooks(), Hooks::NONE);
    fail(&h, 1, 50);
    assert!(ejections().is_empty());

    let h = setup(2, r#"{"consecutive5xxErrors":0}"#);
    assert_eq!(
        h.hooks(),
        Hooks::NONE,
        "the gateway detector is off by default"
    );
}

// === ejection time ===

#[test]
fn ejections_in_a_row_grow_linearly_up_to_the_max() {
    let h = setup(2, r#"{"baseEjectionTime":"30s","maxEjectionTime":"100s"}"#);
    let mut expected = Vec::new();
    for duration in [30_000, 60_000, 90_000, 100_000, 100_000] {
        fail(&h, 1, 5);
        expected.push((1, duration));
        assert_eq!(ejections(), expected);
        // Fails again the moment it is back.
        advance_ms(u64::from(duration));
    }
}

#[test]
fn the_multiplier_falls_back_one_step_per_interval_served() {
    let h = setup(2, r#"{"interval":"10s","baseEjectionTime":"30s"}"#);
    fail(&h, 1, 5);
    advance_ms(30 * SECOND);
    fail(&h, 1, 5);
    assert_eq!(ejections().last(), Some(&(1, 60_000)), "x2");
    // Back for one interval less a millisecond: no whole interval served.
    advance_ms(60 * SECOND + 10 * SECOND - 1);
    fail(&h, 1, 5);
    assert_eq!(ejections().last(), Some(&(1, 90_000)), "x3");
    // One whole interval served: 3 - 1 + 1.
    advance_ms(90 * SECOND + 10 * SECOND);
    fail(&h, 1, 5);
    assert_eq!(ejections().last(), Some(&(1, 90_000)), "x3 again");
    // Two intervals: 3 - 2 + 1.
    advance_ms(90 * SECOND + 20 * SECOND);
    fail(&h, 1, 5);
    assert_eq!(ejections().last(), Some(&(1, 60_000)), "x2");
    // Long healthy: back to the base.
    advance_ms(60 * SECOND + 3_600 * SECOND);
    fail(&h, 1, 5);
    assert_eq!(ejections().last(), Some(&(1, 30_000)), "x1");
}

#[test]
fn the_multiplier_stops_growing_at_the_cap() {
    // Envoy grows it only while base × multiplier < max + base: here up to 3 (90s > 60s), so
    // three served intervals bring it back to the base, not four.
    let h = setup(
        2,
        r#"{"interval":"10s","baseEjectionTime":"30s","maxEjectionTime":"60s"}"#,
    );
    for _ in 0..6 {
        fail(&h, 1, 5);
        let (_, d) = *ejections().last().expect("ejected");
        advance_ms(u64::from(d));
    }
    assert_eq!(
        ejections().iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![30_000, 60_000, 60_000, 60_000, 60_000, 60_000]
    );
    advance_ms(30 * SECOND);
    fail(&h, 1, 5);
    assert_eq!(ejections().last(), Some(&(1, 30_000)));
}

#[test]
fn the_default_max_is_raised_to_a_longer_base() {
    let h = setup(2, r#"{"baseEjectionTime":"400s"}"#);
    fail(&h, 1, 5);
    advance_ms(400 * SECOND);
    fail(&h, 1, 5);
    assert_eq!(ejections(), vec![(1, 400_000), (1, 400_000)]);
}

#[test]
fn ejection_state_expires_once_it_no_longer_matters() {
    let h = setup(2, r#"{"interval":"10s","baseEjectionTime":"30s"}"#);
    fail(&h, 1, 5);
    let multiplier = Field::Multiplier.key(1);
    assert_eq!(state::counter_add(multiplier, 0, 0), 1);
    // 30s ejected + 1 interval to fall back to 0.
    advance_ms(40 * SECOND - 1);
    assert_eq!(state::counter_add(multiplier, 0, 0), 1);
    advance_ms(1);
    assert_eq!(state::counter_add(multiplier, 0, 0), 0, "expired");
    assert_eq!(
        state::counter_add(Field::EjectionEnd.key(1), 0, 0),
        0,
        "expired"
    );
}

#[test]
fn ejection_state_is_per_endpoint() {
    let h = setup(3, r#"{"maxEjectionPercent":100}"#);
    fail(&h, 1, 5);
    advance_ms(30 * SECOND);
    fail(&h, 1, 5);
    fail(&h, 2, 5);
    assert_eq!(ejections(), vec![(1, 30_000), (1, 60_000), (2, 30_000)]);
}

// === maxEjectionPercent and minHealthPercent ===

#[test]
fn ten_percent_of_ten_ejects_one_at_a_time() {
    let h = setup(10, r#"{"maxEjectionPercent":10}"#);
    fail(&h, 1, 5);
    fail(&h, 2, 5);
    assert_eq!(ejections(), vec![(1, 30_000)]);
    assert_eq!(skipped_total("max_ejection_percent"), 1.0);
    advance_ms(30 * SECOND);
    fail(&h, 2, 5);
    assert_eq!(ejections(), vec![(1, 30_000), (2, 30_000)]);
}

#[test]
fn ten_percent_of_twenty_ejects_two() {
    let h = setup(20, "{}");
    for id in 1..=3 {
        fail(&h, id, 5);
    }
    assert_eq!(ejections(), vec![(1, 30_000), (2, 30_000)]);
    assert_eq!(skipped_total("max_ejection_percent"), 1.0);
}

#[test]
fn one_endpoint_may_always_be_ejected() {
    let h = setup(3, r#"{"maxEjectionPercent":10}"#);
    fail(&h, 1, 5);
    fail(&h, 2, 5);
    assert_eq!(ejections(), vec![(1, 30_000)]);

    let h = setup(1, "{}");
    fail(&h, 1, 5);
    assert_eq!(ejections(), vec![(1, 30_000)], "even the only endpoint");
}

#[test]
fn fifty_percent_of_four_ejects_two() {
    let h = setup(4, r#"{"maxEjectionPercent":50}"#);
    for id in 1..=4 {
        fail(&h, id, 5);
    }
    assert_eq!(ejections(), vec![(1, 30_000), (2, 30_000)]);
    assert_eq!(skipped_total("max_ejection_percent"), 2.0);
}

#[test]
fn zero_max_ejection_percent_means_the_default() {
    // As Istio: 0 cannot be told from unset, and Envoy's 10% stays.
    let h = setup(20, r#"{"maxEjectionPercent":0}"#);
    for id in 1..=3 {
        fail(&h, id, 5);
    }
    assert_eq!(ejections().len(), 2);
}

#[test]
fn a_skipped_ejection_still_resets_the_run() {
    let h = setup(3, "{}");
    fail(&h, 1, 5);
    fail(&h, 2, 5);
    assert_eq!(ejections().len(), 1);
    advance_ms(30 * SECOND);
    fail(&h, 2, 4);
    assert_eq!(
        ejections().len(),
        1,
        "Envoy starts the run over after the attempt"
    );
    fail(&h, 2, 1);
    assert_eq!(ejections(), vec![(1, 30_000), (2, 30_000)]);
}

#[test]
fn min_health_percent_blocks_ejections_below_it() {
    let h = setup(4, r#"{"maxEjectionPercent":100,"minHealthPercent":50}"#);
    for id in 1..=3 {
        fail(&h, id, 5);
    }
    // Two out leaves 50% serving; a third would leave 25%.
    assert_eq!(ejections(), vec![(1, 30_000), (2, 30_000)]);
    assert_eq!(skipped_total("min_health_percent"), 1.0);
    assert_eq!(skipped_total("max_ejection_percent"), 0.0);
}

#[test]
fn min_health_percent_keeps_a_lone_endpoint() {
    let h = setup(1, r#"{"minHealthPercent":1}"#);
    fail(&h, 1, 5);
    assert!(ejections().is_empty());
    assert_eq!(skipped_total("min_health_percent"), 1.0);
}

#[test]
fn metrics_count_ejections_and_skips() {
    let h = setup(10, "{}");
    fail(&h, 1, 5);
    fail(&h, 2, 5);
    fail(&h, 3, 5);
    advance_ms(30 * SECOND);
    fail(&h, 2, 5);
    assert_eq!(ejected_total("5xx"), 2.0);
    assert_eq!(ejected_total("gateway"), 0.0);
    assert_eq!(skipped_total("max_ejection_percent"), 2.0);
    assert_eq!(skipped_total("min_health_percent"), 0.0);
}

// === configuration ===

#[test]
fn a_full_istio_configuration_is_accepted() {
    let h = setup(
        10,
        r#"{"consecutive5xxErrors":7,"consecutiveGatewayErrors":2,"interval":"5s",
            "baseEjectionTime":"1m","maxEjectionTime":"10m","maxEjectionPercent":30,
            "minHealthPercent":20}"#,
    );
    let f = h.filter();
    assert_eq!(f.consecutive_5xx, Some(7));
    assert_eq!(f.consecutive_gateway, Some(2));
    assert_eq!(
        (f.interval_ms, f.base_ms, f.max_ms),
        (5_000, 60_000, 600_000)
    );
    assert_eq!((f.max_ejection_percent, f.min_health_percent), (30, 20));
}

#[test]
fn defaults_are_istios() {
    let h = setup(1, "{}");
    let f = h.filter();
    assert_eq!(f.consecutive_5xx, Some(5));
    assert_eq!(f.consecutive_gateway, None);
    assert_eq!(
        (f.interval_ms, f.base_ms, f.max_ms),
        (10_000, 30_000, 300_000)
    );
    assert_eq!((f.max_ejection_percent, f.min_health_percent), (10, 0));
}

#[test]
fn config_errors_name_the_field() {
    let cases = [
        (r#"{"consecutiveErrors":5}"#, "consecutiveErrors"),
        (r#"{"consecutive5xxErrors":-1}"#, "consecutive5xxErrors"),
        (r#"{"consecutive5xxErrors":"five"}"#, "consecutive5xxErrors"),
        (
            r#"{"consecutiveGatewayErrors":1.5}"#,
            "consecutiveGatewayErrors",
        ),
        (r#"{"interval":"10"}"#, "interval"),
        (r#"{"interval":"0s"}"#, "interval"),
        (r#"{"baseEjectionTime":"abc"}"#, "baseEjectionTime"),
        (r#"{"baseEjectionTime":"0.1ms"}"#, "baseEjectionTime"),
        (r#"{"maxEjectionTime":10}"#, "maxEjectionTime"),
        (
            r#"{"baseEjectionTime":"60s","maxEjectionTime":"30s"}"#,
            "maxEjectionTime",
        ),
        (r#"{"maxEjectionPercent":101}"#, "maxEjectionPercent"),
        (r#"{"maxEjectionPercent":-1}"#, "maxEjectionPercent"),
        (r#"{"minHealthPercent":150}"#, "minHealthPercent"),
        (r#"{"minHealthPercent":"half"}"#, "minHealthPercent"),
    ];
    for (config, field) in cases {
        let err = config_error(config);
        assert!(err.contains(field), "{config}: {err:?} should name {field}");
    }
}

#[test]
fn config_error_messages_read_well() {
    assert_eq!(
        config_error(r#"{"maxEjectionPercent":101}"#),
        "maxEjectionPercent: must be between 0 and 100, got 101"
    );
    assert_eq!(
        config_error(r#"{"interval":"0s"}"#),
        "interval: must be at least 1ms"
    );
    let err = config_error(r#"{"interval":"10"}"#);
    assert!(
        err.starts_with("invalid configuration: interval: invalid duration \"10\""),
        "{err}"
    );
    assert_eq!(err.matches(" at line ").count(), 1, "{err}");
}

#[test]
fn an_explicit_max_equal_to_the_base_is_fine() {
    let h = setup(2, r#"{"baseEjectionTime":"60s","maxEjectionTime":"60s"}"#);
    fail(&h, 1, 5);
    advance_ms(60 * SECOND);
    fail(&h, 1, 5);
    assert_eq!(ejections(), vec![(1, 60_000), (1, 60_000)]);
}
