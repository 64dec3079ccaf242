use super::*;
use weft_sdk::testing::{Harness, TestRequest, seed_random};

const SEED: &str = r#"{"route":[
    {"destination":{"host":"payments","subset":"v1"},"weight":95},
    {"destination":{"host":"payments","subset":"v2"},"weight":5}]}"#;

fn canary(cfg: &str) -> Harness<Canary> {
    Harness::<Canary>::new(cfg).expect("valid config")
}

fn rejected(cfg: &str) -> String {
    Harness::<Canary>::new(cfg)
        .err()
        .expect("config must be rejected")
}

/// The subset a request ends up with, or `"404"` when the plugin answers locally.
fn subset(h: &mut Harness<Canary>, mut req: TestRequest) -> String {
    match h.on_request(&mut req).1 {
        RequestAction::Continue => req.destination.subset.unwrap_or_default(),
        RequestAction::Respond(r) => r.status.to_string(),
    }
}

/// One `http` entry with this `match` list going to subset `hit`; nothing else, so a request
/// that does not match gets 404.
fn only_when(matches: &str) -> Harness<Canary> {
    canary(&format!(
        r#"{{"host":"payments","http":[{{"match":{matches},
            "route":[{{"destination":{{"host":"payments","subset":"hit"}}}}]}}]}}"#
    ))
}

fn hits(h: &mut Harness<Canary>, req: TestRequest) -> bool {
    match subset(h, req).as_str() {
        "hit" => true,
        "404" => false,
        other => panic!("unexpected subset {other}"),
    }
}

fn get(path: &str) -> TestRequest {
    TestRequest::get("payments", path)
}

fn post(path: &str) -> TestRequest {
    TestRequest {
        method: "POST".into(),
        ..get(path)
    }
}

fn count_v2(h: &mut Harness<Canary>, requests: impl Iterator<Item = TestRequest>) -> u32 {
    requests.map(|r| u32::from(subset(h, r) == "v2")).sum()
}

// === weights ===

#[test]
fn splits_by_weight() {
    seed_random(42);
    let mut h = canary(SEED);
    let v2 = count_v2(&mut h, (0..10_000).map(|_| get("/charge")));
    // Binomial(n = 10,000, p = 0.05): mean 500, sigma = sqrt(n p (1 - p)) ~ 21.8. Five sigma
    // either side (a fair generator lands outside with probability ~6e-7): 391..=609.
    assert!((391..=609).contains(&v2), "v2 got {v2} of 10000");
}

#[test]
fn zero_weight_gets_nothing_and_100_gets_everything() {
    let mut h = canary(
        r#"{"route":[
        {"destination":{"host":"payments","subset":"v1"},"weight":100},
        {"destination":{"host":"payments","subset":"v2"},"weight":0}]}"#,
    );
    for seed in 1..=1_000 {
        seed_random(seed);
        assert_eq!(subset(&mut h, get("/")), "v1");
    }
    let mut h = canary(
        r#"{"route":[
        {"destination":{"host":"payments","subset":"v1"},"weight":0},
        {"destination":{"host":"payments","subset":"v2"},"weight":100}]}"#,
    );
    for seed in 1..=1_000 {
        seed_random(seed);
        assert_eq!(subset(&mut h, get("/")), "v2");
    }
}

#[test]
fn a_zero_weight_in_the_middle_is_skipped() {
    let mut h = canary(
        r#"{"route":[
        {"destination":{"host":"payments","subset":"v1"},"weight":50},
        {"destination":{"host":"payments","subset":"dark"},"weight":0},
        {"destination":{"host":"payments","subset":"v2"},"weight":50}]}"#,
    );
    seed_random(7);
    for _ in 0..2_000 {
        assert_ne!(subset(&mut h, get("/")), "dark");
    }
}

#[test]
fn weights_are_relative_as_in_istio() {
    // 3:1, summing to 4: v1 takes three quarters.
    let mut h = canary(
        r#"{"route":[{"destination":{"host":"p","subset":"v1"},"weight":3},
                     {"destination":{"host":"p","subset":"v2"},"weight":1}]}"#,
    );
    seed_random(11);
    let v1 = (0..4_000)
        .filter(|_| subset(&mut h, get("/")) == "v1")
        .count();
    assert!((2_800..=3_200).contains(&v1), "{v1} of 4000 to v1");
    // Sums other than 100 are fine: 90 and 20 split 9:2.
    canary(
        r#"{"route":[{"destination":{"host":"p","subset":"v1"},"weight":90},
                     {"destination":{"host":"p","subset":"v2"},"weight":20}]}"#,
    );
}

#[test]
fn a_zero_sum_names_the_http_entry() {
    let err = rejected(
        r#"{"http":[
        {"route":[{"destination":{"host":"p"}}]},
        {"name":"split","route":[{"destination":{"host":"p","subset":"v1"},"weight":0},
                                 {"destination":{"host":"p","subset":"v2"}}]}]}"#,
    );
    assert!(err.starts_with("http[1].route: weights sum to 0"), "{err}");
    assert!(err.contains(r#"http entry "split""#), "{err}");
}

#[test]
fn an_omitted_weight_is_zero_beside_others_and_all_for_a_single_destination() {
    let mut h = canary(r#"{"route":[{"destination":{"host":"payments","subset":"v3"}}]}"#);
    assert_eq!(subset(&mut h, get("/")), "v3");
    let mut h = canary(
        r#"{"route":[{"destination":{"host":"payments","subset":"v1"},"weight":100},
                     {"destination":{"host":"payments","subset":"v2"}}]}"#,
    );
    for seed in 1..=500 {
        seed_random(seed);
        assert_eq!(subset(&mut h, get("/")), "v1");
    }
    // A single destination gets every call whatever its weight, as Istio has it.
    let mut h =
        canary(r#"{"route":[{"destination":{"host":"payments","subset":"v3"},"weight":0}]}"#);
    assert_eq!(subset(&mut h, get("/")), "v3");
}

#[test]
fn structural_mistakes_are_named() {
    let err = rejected(r#"{"route":[{"destination":{"host":""}}]}"#);
    assert!(
        err.contains("route[0].destination.host: must not be empty"),
        "{err}"
    );
    let err = rejected(r#"{"route":[]}"#);
    assert!(err.contains("route: at least one destination"), "{err}");
    let err = rejected(r#"{"http":[{"route":[]}]}"#);
    assert!(
        err.contains("http[0].route: at least one destination"),
        "{err}"
    );
    let err = rejected(r#"{"http":[]}"#);
    assert!(err.contains("http: at least one entry"), "{err}");
    let err = rejected(r#"{"host":"payments"}"#);
    assert!(err.contains("http: at least one entry"), "{err}");
    let err = rejected(r#"{"host":"","route":[{"destination":{"host":"p"}}]}"#);
    assert!(err.contains("host: must not be empty"), "{err}");
    let err = rejected(
        r#"{"route":[{"destination":{"host":"p"}}],
            "http":[{"route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(err.contains("route and http"), "{err}");
}

#[test]
fn unknown_fields_are_named() {
    for (cfg, field) in [
        (
            r#"{"route":[{"destination":{"host":"p"},"weigth":100}]}"#,
            "weigth",
        ),
        (
            r#"{"http":[{"matches":[],"route":[{"destination":{"host":"p"}}]}]}"#,
            "matches",
        ),
        (
            r#"{"http":[{"match":[{"ignoreURICase":true}],"route":[{"destination":{"host":"p"}}]}]}"#,
            "ignoreURICase",
        ),
        (
            r#"{"http":[{"match":[{"uri":{"suffix":"/x"}}],"route":[{"destination":{"host":"p"}}]}]}"#,
            "suffix",
        ),
        (
            r#"{"route":[{"destination":{"host":"p"}}],"sticky":{"cookie":"id"}}"#,
            "cookie",
        ),
        // Istio fields this plugin does not implement are refused, not silently ignored.
        (
            r#"{"http":[{"match":[{"sourceLabels":{"app":"x"}}],"route":[{"destination":{"host":"p"}}]}]}"#,
            "sourceLabels",
        ),
    ] {
        let err = rejected(cfg);
        assert!(err.contains(&format!("unknown field `{field}`")), "{err}");
    }
}

#[test]
fn timeout_applies_when_its_entry_is_chosen() {
    let mut h = canary(
        r#"{"host":"payments","http":[
        {"match":[{"uri":{"prefix":"/slow"}}],"route":[{"destination":{"host":"payments"}}],
         "timeout":"250ms"},
        {"match":[{"uri":{"prefix":"/none"}}],"route":[{"destination":{"host":"payments"}}],
         "timeout":"0s"},
        {"route":[{"destination":{"host":"payments"}}]}]}"#,
    );
    let mut slow = get("/slow/report");
    h.on_request(&mut slow);
    assert_eq!(slow.timeout_ms, Some(250));
    let mut none = get("/none");
    h.on_request(&mut none);
    assert_eq!(none.timeout_ms, None, "0s leaves the service's own timeout");
    let mut other = get("/fast");
    h.on_request(&mut other);
    assert_eq!(other.timeout_ms, None);
    let err = rejected(r#"{"http":[{"route":[{"destination":{"host":"p"}}],"timeout":"6"}]}"#);
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn same_service_changes_only_the_subset_other_services_the_destination() {
    let mut h = canary(
        r#"{"host":"payments","http":[
        {"match":[{"uri":{"exact":"/a"}}],"route":[{"destination":{"host":"payments","subset":"v2"}}]},
        {"match":[{"uri":{"exact":"/b"}}],"route":[{"destination":{"host":"billing","subset":"v9"}}]},
        {"route":[{"destination":{"host":"payments"}}]}]}"#,
    );
    let mut a = get("/a");
    a.destination.subset = Some("stale".into());
    h.on_request(&mut a);
    assert_eq!(a.destination.service, "payments");
    assert_eq!(a.destination.subset.as_deref(), Some("v2"));
    let mut b = get("/b");
    h.on_request(&mut b);
    assert_eq!(b.destination.service, "billing");
    assert_eq!(b.destination.subset.as_deref(), Some("v9"));
    // The whole service (no subset) needs set_destination to clear a subset set earlier.
    let mut c = get("/c");
    c.destination.subset = Some("stale".into());
    h.on_request(&mut c);
    assert_eq!(c.destination.service, "payments");
    assert_eq!(c.destination.subset, None);
}

#[test]
fn without_host_every_pick_sets_the_destination() {
    let mut h = canary(r#"{"route":[{"destination":{"host":"billing","subset":"v2"}}]}"#);
    let mut req = get("/");
    h.on_request(&mut req);
    assert_eq!(req.destination.service, "billing");
    assert_eq!(req.destination.subset.as_deref(), Some("v2"));
}

#[test]
fn declares_only_on_request() {
    assert_eq!(canary(SEED).hooks(), Hooks::ON_REQUEST);
}

// === matching ===

#[test]
fn uri_exact_prefix_regex() {
    let mut h = only_when(r#"[{"uri":{"exact":"/charge"}}]"#);
    assert!(hits(&mut h, get("/charge")));
    assert!(
        hits(&mut h, get("/charge?amount=3")),
        "the query is not part of uri"
    );
    assert!(!hits(&mut h, get("/charge/3")));
    assert!(!hits(&mut h, get("/Charge")));

    let mut h = only_when(r#"[{"uri":{"prefix":"/charge"}}]"#);
    assert!(hits(&mut h, get("/charge")));
    assert!(hits(&mut h, get("/charges/3")));
    assert!(!hits(&mut h, get("/refund")));

    let mut h = only_when(r#"[{"uri":{"regex":"/charge/[0-9]+"}}]"#);
    assert!(hits(&mut h, get("/charge/42")));
    assert!(hits(&mut h, get("/charge/42?x=y")));
    assert!(
        !hits(&mut h, get("/charge/42/refund")),
        "the regex must cover the whole path"
    );
    assert!(
        !hits(&mut h, get("/v1/charge/42")),
        "and start at its beginning"
    );
}

#[test]
fn ignore_uri_case_covers_exact_and_prefix_not_regex() {
    let mut h = only_when(r#"[{"uri":{"exact":"/Charge"},"ignoreUriCase":true}]"#);
    assert!(hits(&mut h, get("/cHARGE")));
    assert!(!hits(&mut h, get("/charges")));
    let mut h = only_when(r#"[{"uri":{"prefix":"/API/"},"ignoreUriCase":true}]"#);
    assert!(hits(&mut h, get("/api/v1")));
    assert!(!hits(&mut h, get("/ap")), "shorter than the prefix");
    let mut h = only_when(r#"[{"uri":{"regex":"/api"},"ignoreUriCase":true}]"#);
    assert!(
        !hits(&mut h, get("/API")),
        "as in Envoy, regexes stay case-sensitive"
    );
    let mut h = only_when(r#"[{"uri":{"regex":"(?i)/api"}}]"#);
    assert!(
        hits(&mut h, get("/API")),
        "(?i) is the way to fold case in a regex"
    );
}

#[test]
fn method_exact_prefix_regex() {
    let mut h = only_when(r#"[{"method":{"exact":"POST"}}]"#);
    assert!(hits(&mut h, post("/")));
    assert!(!hits(&mut h, get("/")));
    let mut h = only_when(r#"[{"method":{"prefix":"PO"}}]"#);
    assert!(hits(&mut h, post("/")));
    assert!(!hits(&mut h, get("/")));
    let mut h = only_when(r#"[{"method":{"regex":"PUT|POST"}}]"#);
    assert!(hits(&mut h, post("/")));
    assert!(!hits(&mut h, get("/")));
}

#[test]
fn headers_exact_prefix_regex_and_presence() {
    let mut h = only_when(r#"[{"headers":{"x-user":{"exact":"tester"}}}]"#);
    assert!(hits(&mut h, get("/").with_header("x-user", "tester")));
    assert!(
        hits(&mut h, get("/").with_header("X-User", "tester")),
        "names fold case"
    );
    assert!(
        !hits(&mut h, get("/").with_header("x-user", "Tester")),
        "values do not"
    );
    assert!(!hits(&mut h, get("/").with_header("x-user", "tester2")));
    assert!(!hits(&mut h, get("/")), "absent never matches");

    let mut h = only_when(r#"[{"headers":{"x-user":{"prefix":"test"}}}]"#);
    assert!(hits(&mut h, get("/").with_header("x-user", "tester")));
    assert!(!hits(&mut h, get("/").with_header("x-user", "atester")));

    let mut h = only_when(r#"[{"headers":{"x-user":{"regex":"user-[0-9]{3}"}}}]"#);
    assert!(hits(&mut h, get("/").with_header("x-user", "user-123")));
    assert!(!hits(&mut h, get("/").with_header("x-user", "user-1234")));
    assert!(!hits(&mut h, get("/").with_header("x-user", [b'u', 0xff])));

    for presence in ["{}", r#"{"regex":"*"}"#] {
        let mut h = only_when(&format!(r#"[{{"headers":{{"x-debug":{presence}}}}}]"#));
        assert!(hits(&mut h, get("/").with_header("x-debug", "")));
        assert!(hits(&mut h, get("/").with_header("x-debug", "1")));
        assert!(!hits(&mut h, get("/")));
    }
}

#[test]
fn repeated_headers_match_as_one_comma_joined_value() {
    let mut h = only_when(r#"[{"headers":{"x-tag":{"exact":"a,b"}}}]"#);
    let req = get("/").with_header("x-tag", "a").with_header("x-tag", "b");
    assert!(hits(&mut h, req));
    assert!(!hits(&mut h, get("/").with_header("x-tag", "a")));
}

#[test]
fn non_utf8_header_values_match_exact_but_never_a_regex() {
    let mut h = only_when(r#"[{"headers":{"x-raw":{"exact":"ok"}}}]"#);
    assert!(!hits(&mut h, get("/").with_header("x-raw", [0xff])));
    let mut h = only_when(r#"[{"headers":{"x-raw":{"regex":".*"}}}]"#);
    assert!(hits(&mut h, get("/").with_header("x-raw", "anything")));
    assert!(!hits(&mut h, get("/").with_header("x-raw", [0xff])));
}

#[test]
fn without_headers() {
    let mut h = only_when(r#"[{"withoutHeaders":{"x-user":{"exact":"bot"}}}]"#);
    assert!(
        hits(&mut h, get("/")),
        "absent counts as empty, which is not bot"
    );
    assert!(hits(&mut h, get("/").with_header("x-user", "alice")));
    assert!(!hits(&mut h, get("/").with_header("x-user", "bot")));

    let mut h = only_when(r#"[{"withoutHeaders":{"x-user":{"regex":"bot-.*"}}}]"#);
    assert!(hits(&mut h, get("/").with_header("x-user", "alice")));
    assert!(!hits(&mut h, get("/").with_header("x-user", "bot-7")));

    let mut h = only_when(r#"[{"withoutHeaders":{"x-debug":{}}}]"#);
    assert!(hits(&mut h, get("/")));
    assert!(
        !hits(&mut h, get("/").with_header("x-debug", "")),
        "{{}}: absent only"
    );

    let mut h = only_when(r#"[{"withoutHeaders":{"x-user":{"exact":""}}}]"#);
    assert!(
        !hits(&mut h, get("/")),
        "absent is empty, and empty is excluded"
    );
    assert!(hits(&mut h, get("/").with_header("x-user", "a")));
}

#[test]
fn query_params_exact_prefix_regex_and_presence() {
    let mut h = only_when(r#"[{"queryParams":{"debug":{"exact":"true"}}}]"#);
    assert!(hits(&mut h, get("/x?debug=true")));
    assert!(hits(&mut h, get("/x?a=1&debug=true&b")));
    assert!(!hits(&mut h, get("/x?debug=truer")));
    assert!(!hits(&mut h, get("/x?nodebug=true")));
    assert!(!hits(&mut h, get("/x")));
    assert!(
        !hits(&mut h, get("/x#debug=true")),
        "a fragment is not a query"
    );
    assert!(
        !hits(&mut h, get("/x?debug=false&debug=true")),
        "the first occurrence decides, as in Envoy"
    );

    let mut h = only_when(r#"[{"queryParams":{"v":{"prefix":"2."}}}]"#);
    assert!(hits(&mut h, get("/x?v=2.1")));
    assert!(!hits(&mut h, get("/x?v=1.2")));

    let mut h = only_when(r#"[{"queryParams":{"id":{"regex":"[0-9]+"}}}]"#);
    assert!(hits(&mut h, get("/x?id=123")));
    assert!(!hits(&mut h, get("/x?id=a123")));
    assert!(!hits(&mut h, get("/x?id=123a")));

    let mut h = only_when(r#"[{"queryParams":{"flag":{}}}]"#);
    assert!(hits(&mut h, get("/x?flag")));
    assert!(hits(&mut h, get("/x?flag=")));
    assert!(!hits(&mut h, get("/x?flags")));

    let mut h = only_when(r#"[{"queryParams":{"flag":{"exact":""}}}]"#);
    assert!(hits(&mut h, get("/x?flag")), "no '=' is the empty value");
}

#[test]
fn conditions_in_one_match_are_anded() {
    let mut h = only_when(
        r#"[{"uri":{"prefix":"/charge"},"method":{"exact":"POST"},
              "headers":{"x-user":{"exact":"tester"}}}]"#,
    );
    assert!(hits(
        &mut h,
        post("/charge").with_header("x-user", "tester")
    ));
    assert!(!hits(
        &mut h,
        get("/charge").with_header("x-user", "tester")
    ));
    assert!(!hits(
        &mut h,
        post("/refund").with_header("x-user", "tester")
    ));
    assert!(!hits(
        &mut h,
        post("/charge").with_header("x-user", "other")
    ));
}

#[test]
fn match_entries_are_ored() {
    let mut h = only_when(
        r#"[{"headers":{"x-user":{"exact":"tester"}}},
             {"uri":{"prefix":"/beta"}}]"#,
    );
    assert!(hits(&mut h, get("/").with_header("x-user", "tester")));
    assert!(hits(&mut h, get("/beta/x")));
    assert!(!hits(&mut h, get("/")));
}

#[test]
fn an_empty_match_entry_or_list_matches_everything() {
    let mut h = only_when(r#"[{}]"#);
    assert!(hits(&mut h, get("/anything")));
    let mut h = only_when(r#"[]"#);
    assert!(hits(&mut h, get("/anything")));
}

#[test]
fn the_first_matching_entry_wins() {
    let mut h = canary(
        r#"{"host":"payments","http":[
        {"name":"testers","match":[{"headers":{"x-user":{"exact":"tester"}}}],
         "route":[{"destination":{"host":"payments","subset":"v2"}}]},
        {"match":[{"uri":{"prefix":"/"}}],
         "route":[{"destination":{"host":"payments","subset":"v1"}}]},
        {"route":[{"destination":{"host":"payments","subset":"never"}}]}]}"#,
    );
    assert_eq!(
        subset(&mut h, get("/").with_header("x-user", "tester")),
        "v2"
    );
    assert_eq!(
        subset(&mut h, get("/").with_header("x-user", "alice")),
        "v1"
    );
    assert_eq!(subset(&mut h, get("/")), "v1");
}

#[test]
fn no_matching_entry_answers_404() {
    let mut h = only_when(r#"[{"uri":{"prefix":"/charge"}}]"#);
    let mut req = get("/refund");
    let RequestAction::Respond(r) = h.on_request(&mut req).1 else {
        panic!("expected a local 404");
    };
    assert_eq!(r.status, 404);
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("no route") && body.contains("payments"),
        "{body}"
    );
    assert_eq!(req.destination.subset, None, "nothing was picked");
}

#[test]
fn the_readme_example_routes_as_described() {
    let mut h = canary(
        r#"{"host":"payments",
        "http":[
          {"name":"testers",
           "match":[{"headers":{"x-user":{"exact":"tester"}},"uri":{"prefix":"/charge"},
                     "method":{"exact":"POST"}}],
           "route":[{"destination":{"host":"payments","subset":"v2"}}],
           "timeout":"6s"},
          {"route":[{"destination":{"host":"payments","subset":"v1"},"weight":95},
                    {"destination":{"host":"payments","subset":"v2"},"weight":5}]}],
        "sticky":{"header":"x-user-id"}}"#,
    );
    let mut tester = post("/charge/1").with_header("x-user", "tester");
    h.on_request(&mut tester);
    assert_eq!(tester.destination.subset.as_deref(), Some("v2"));
    assert_eq!(tester.timeout_ms, Some(6_000));
    let mut other = get("/charge/1").with_header("x-user-id", "alice");
    h.on_request(&mut other);
    assert_eq!(other.timeout_ms, None);
    assert!(other.destination.subset.is_some());
}

#[test]
fn the_readme_opt_in_example_routes_as_described() {
    let mut h = canary(
        r#"{"host": "payments",
        "http": [
          {"name": "opt-in",
           "match": [{"headers": {"x-canary": {}}, "withoutHeaders": {"user-agent": {"regex": "(?i).*bot.*"}}},
                     {"queryParams": {"canary": {"exact": "1"}}, "uri": {"prefix": "/api/"}}],
           "route": [{"destination": {"host": "payments", "subset": "v2"}}]},
          {"name": "api",
           "match": [{"uri": {"regex": "/api/v[0-9]+/.*"}}],
           "route": [{"destination": {"host": "payments", "subset": "v1"}}],
           "timeout": "2s"}
        ]}"#,
    );
    assert_eq!(
        subset(&mut h, get("/home").with_header("x-canary", "1")),
        "v2"
    );
    let bot = get("/api/v1/x")
        .with_header("x-canary", "1")
        .with_header("user-agent", "GoogleBot/2.1");
    assert_eq!(subset(&mut h, bot), "v1");
    assert_eq!(subset(&mut h, get("/api/v2/charge?canary=1")), "v2");
    assert_eq!(subset(&mut h, get("/home?canary=1")), "404");
    let mut api = get("/api/v3/charge");
    h.on_request(&mut api);
    assert_eq!(api.destination.subset.as_deref(), Some("v1"));
    assert_eq!(api.timeout_ms, Some(2_000));
    assert_eq!(subset(&mut h, get("/home")), "404");
}

// === configuration errors in matches ===

#[test]
fn a_bad_regex_is_rejected_with_its_path() {
    let err = rejected(
        r#"{"http":[{"match":[{"uri":{"prefix":"/"}},
                              {"headers":{"x-user":{"regex":"(unclosed"}}}],
                     "route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(
        err.starts_with("http[0].match[1].headers.x-user.regex: "),
        "{err}"
    );
    let err = rejected(
        r#"{"http":[{"route":[{"destination":{"host":"p"}}]},
                    {"match":[{"uri":{"regex":"*a"}}],"route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(err.starts_with("http[1].match[0].uri.regex: "), "{err}");
    let err = rejected(
        r#"{"http":[{"match":[{"queryParams":{"id":{"regex":"[z-a]"}}}],
                     "route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(
        err.starts_with("http[0].match[0].queryParams.id.regex: "),
        "{err}"
    );
    let err = rejected(
        r#"{"http":[{"match":[{"withoutHeaders":{"x-a":{"regex":"\\p{Greek}"}}}],
                     "route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(
        err.starts_with("http[0].match[0].withoutHeaders.x-a.regex: "),
        "{err}"
    );
}

#[test]
fn a_regex_cannot_escape_its_anchors() {
    // Inside `\A(?:...)\z` this would read "starts with a, or ends with b".
    let err = rejected(
        r#"{"http":[{"match":[{"uri":{"regex":"a)|(b"}}],"route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(err.starts_with("http[0].match[0].uri.regex: "), "{err}");
}

#[test]
fn a_huge_regex_is_rejected() {
    let err = rejected(
        r#"{"http":[{"match":[{"uri":{"regex":"(((a{100}){100}){100})"}}],
                     "route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(err.starts_with("http[0].match[0].uri.regex: "), "{err}");
}

#[test]
fn a_string_match_has_exactly_one_kind() {
    let err = rejected(
        r#"{"http":[{"match":[{"uri":{"exact":"/a","prefix":"/a"}}],
                     "route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(
        err.contains("http[0].match[0].uri: set exactly one of exact, prefix, regex"),
        "{err}"
    );
    let err =
        rejected(r#"{"http":[{"match":[{"method":{}}],"route":[{"destination":{"host":"p"}}]}]}"#);
    assert!(
        err.contains("http[0].match[0].method: set exactly one"),
        "{err}"
    );
    let err = rejected(
        r#"{"http":[{"match":[{"headers":{"x-a":{"exact":"1","regex":"1"}}}],
                     "route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(
        err.contains("http[0].match[0].headers.x-a: set exactly one"),
        "{err}"
    );
}

#[test]
fn header_names_must_be_lower_case_tokens() {
    let err = rejected(
        r#"{"http":[{"match":[{"headers":{"X-User":{"exact":"a"}}}],
                     "route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(err.contains("http[0].match[0].headers.X-User: header names must be lower-case"));
    let err = rejected(
        r#"{"http":[{"match":[{"withoutHeaders":{"x user":{}}}],
                     "route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(err.contains("is not a valid header name"), "{err}");
    let err = rejected(r#"{"route":[{"destination":{"host":"p"}}],"sticky":{"header":""}}"#);
    assert!(err.contains("sticky.header"), "{err}");
}

// === sticky ===

const STICKY: &str = r#"{"host":"payments","route":[
    {"destination":{"host":"payments","subset":"v1"},"weight":95},
    {"destination":{"host":"payments","subset":"v2"},"weight":5}],
    "sticky":{"header":"x-user-id"}}"#;

fn sticky_split(v2_weight: u32) -> Harness<Canary> {
    canary(&format!(
        r#"{{"host":"payments","route":[
        {{"destination":{{"host":"payments","subset":"v1"}},"weight":{}}},
        {{"destination":{{"host":"payments","subset":"v2"}},"weight":{v2_weight}}}],
        "sticky":{{"header":"x-user-id"}}}}"#,
        100 - v2_weight
    ))
}

fn user(id: &str) -> TestRequest {
    get("/").with_header("x-user-id", id)
}

#[test]
fn sticky_same_user_same_subset() {
    let mut h = sticky_split(50);
    for id in ["alice", "bob", "carol", "user-1", "user-2"] {
        let first = subset(&mut h, user(id));
        for seed in 1..=1_000 {
            // A different random stream each time: only the header may decide.
            seed_random(seed);
            assert_eq!(subset(&mut h, user(id)), first, "{id} moved");
        }
    }
}

#[test]
fn sticky_users_spread_by_weight() {
    let mut h = canary(STICKY);
    let v2 = count_v2(&mut h, (0..10_000).map(|i| user(&format!("user-{i}"))));
    // As for random picks: if the hash spreads ids like a uniform draw, v2's count is
    // Binomial(10,000, 0.05); five sigma either side is 391..=609. Sequential ids are the
    // hard case for a weak hash.
    assert!((391..=609).contains(&v2), "v2 got {v2} of 10000 users");
    let mut h = sticky_split(50);
    let v2 = count_v2(&mut h, (0..10_000).map(|i| user(&format!("{i}"))));
    // Binomial(10,000, 0.5): sigma = 50, five sigma is 4750..=5250.
    assert!((4_750..=5_250).contains(&v2), "v2 got {v2} of 10000 users");
}

#[test]
fn sticky_growing_the_canary_keeps_its_users() {
    let ids: Vec<String> = (0..5_000).map(|i| format!("u{i}")).collect();
    let on_v2 = |weight: u32| -> Vec<bool> {
        let mut h = sticky_split(weight);
        ids.iter()
            .map(|id| subset(&mut h, user(id)) == "v2")
            .collect()
    };
    let mut before = on_v2(0);
    for weight in [5, 20, 50, 95, 100] {
        let after = on_v2(weight);
        for (id, (was, is)) in ids.iter().zip(before.iter().zip(&after)) {
            assert!(!was || *is, "{id} left v2 when its weight grew to {weight}");
        }
        before = after;
    }
    assert!(before.iter().all(|v2| *v2));
}

#[test]
fn sticky_header_absent_rolls_at_random() {
    let mut h = sticky_split(50);
    seed_random(99);
    let v2 = count_v2(&mut h, (0..1_000).map(|_| get("/")));
    // Binomial(1,000, 0.5): sigma ~ 15.8, five sigma is 421..=579.
    assert!((421..=579).contains(&v2), "v2 got {v2} of 1000");
}

#[test]
fn sticky_header_name_is_case_insensitive() {
    let cfg = STICKY.replace("x-user-id", "X-User-Id");
    let mut upper = canary(&cfg);
    let mut lower = canary(STICKY);
    for i in 0..200 {
        let id = format!("id-{i}");
        assert_eq!(subset(&mut upper, user(&id)), subset(&mut lower, user(&id)));
    }
}

#[test]
fn the_sticky_hash_is_pinned() {
    // A different hash would move every sticky user on upgrade: these values must not change.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    let buckets: Vec<u64> = ["alice", "bob", "user-1", "user-2", ""]
        .iter()
        .map(|v| bucket(v.as_bytes(), 100))
        .collect();
    assert_eq!(buckets, PINNED_BUCKETS);
}

const PINNED_BUCKETS: [u64; 5] = [20, 96, 25, 66, 93];

// === route names ===

#[test]
fn a_named_entry_names_the_route_and_an_unnamed_one_does_not() {
    let mut h = canary(
        r#"{"host":"payments","http":[
            {"name":"testers","match":[{"headers":{"x-user":{"exact":"tester"}}}],
             "route":[{"destination":{"host":"payments","subset":"v2"}}]},
            {"name":"","match":[{"uri":{"prefix":"/blank"}}],
             "route":[{"destination":{"host":"payments","subset":"v1"}}]},
            {"match":[{"uri":{"prefix":"/anon"}}],
             "route":[{"destination":{"host":"payments","subset":"v1"}}]},
            {"name":"default","route":[{"destination":{"host":"payments","subset":"v1"}}]}]}"#,
    );
    let route = |h: &mut Harness<Canary>, mut req: TestRequest| {
        let (_, action) = h.on_request(&mut req);
        assert!(matches!(action, RequestAction::Continue));
        req.route
    };
    assert_eq!(
        route(&mut h, get("/charge").with_header("x-user", "tester")).as_deref(),
        Some("testers")
    );
    assert_eq!(route(&mut h, get("/charge")).as_deref(), Some("default"));
    // No name (or an empty one): no host call, no route.
    assert_eq!(route(&mut h, get("/anon")), None);
    assert_eq!(route(&mut h, get("/blank")), None);
    // The shorthand has no names; a 404 chose no entry.
    let mut shorthand = canary(SEED);
    assert_eq!(route(&mut shorthand, get("/")), None);
    let mut only = only_when(r#"[{"uri":{"exact":"/x"}}]"#);
    let mut req = get("/y");
    assert!(matches!(
        only.on_request(&mut req).1,
        RequestAction::Respond(_)
    ));
    assert_eq!(req.route, None);
}

// === rewrite ===

/// The path and authority a request is sent upstream with after the canary.
fn rewritten(cfg: &str, path: &str) -> (String, String) {
    let mut h = canary(cfg);
    let mut req = get(path);
    let (_, action) = h.on_request(&mut req);
    assert!(matches!(action, RequestAction::Continue));
    (req.path, req.authority)
}

#[test]
fn a_rewrite_replaces_what_the_uri_match_matched_and_keeps_the_query() {
    let entry = |m: &str, rewrite: &str| {
        format!(
            r#"{{"http":[{{"match":[{m}],"rewrite":{rewrite},
                 "route":[{{"destination":{{"host":"payments"}}}}]}}]}}"#
        )
    };
    // A prefix match: the prefix.
    let cfg = entry(r#"{"uri":{"prefix":"/v1/"}}"#, r#"{"uri":"/api/"}"#);
    assert_eq!(rewritten(&cfg, "/v1/charge?id=7").0, "/api/charge?id=7");
    // An exact match: the whole path.
    let cfg = entry(r#"{"uri":{"exact":"/old"}}"#, r#"{"uri":"/new"}"#);
    assert_eq!(rewritten(&cfg, "/old?x=1").0, "/new?x=1");
    // No uri match: the leading slash, as Istio has it.
    let cfg = entry(
        r#"{"headers":{"end-user":{"exact":"jason"}}},{}"#,
        r#"{"uri":"/v2/","authority":"billing:8080"}"#,
    );
    assert_eq!(
        rewritten(&cfg, "/charge"),
        ("/v2/charge".to_string(), "billing:8080".to_string())
    );
}

#[test]
fn a_rewrite_that_cannot_be_honoured_is_refused() {
    for (rewrite, words) in [
        (r#"{"uri":"relative"}"#, "rewrite.uri"),
        (r#"{"uri":"/x?y=1"}"#, "without a query"),
        (r#"{"authority":"a/b"}"#, "rewrite.authority"),
        (r#"{"uriRegexRewrite":{}}"#, "missing field `match`"),
        (
            r#"{"uri":"/a","uriRegexRewrite":{"match":"a","rewrite":"b"}}"#,
            "not both",
        ),
        (
            r#"{"uriRegexRewrite":{"match":"(","rewrite":"b"}}"#,
            "rewrite.uriRegexRewrite.match",
        ),
    ] {
        let cfg = format!(
            r#"{{"http":[{{"rewrite":{rewrite},"route":[{{"destination":{{"host":"p"}}}}]}}]}}"#
        );
        let err = rejected(&cfg);
        assert!(err.contains(words), "{rewrite}: {err}");
    }
    let err = rejected(
        r#"{"http":[{"match":[{"uri":{"regex":"/v[0-9]+/.*"}}],"rewrite":{"uri":"/"},
                     "route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(err.contains("regex uri match"), "{err}");
}

// === mirrors ===

#[test]
fn an_entry_mirrors_its_calls_in_its_share() {
    let mut h = canary(
        r#"{"http":[{"match":[{"uri":{"prefix":"/charge"}}],
             "mirrors":[{"destination":{"host":"payments-next","subset":"v3"}},
                        {"destination":{"host":"audit"},"percentage":25}],
             "route":[{"destination":{"host":"payments"}}]},
            {"route":[{"destination":{"host":"payments"}}]}]}"#,
    );
    seed_random(3);
    let (mut next, mut audit) = (0, 0);
    for _ in 0..4_000 {
        let mut req = get("/charge");
        h.on_request(&mut req);
        next += req
            .mirrors
            .iter()
            .filter(|d| d.service == "payments-next")
            .count();
        audit += req.mirrors.iter().filter(|d| d.service == "audit").count();
        assert!(
            req.mirrors
                .iter()
                .all(|d| d.service != "payments-next" || d.subset.as_deref() == Some("v3"))
        );
    }
    assert_eq!(next, 4_000, "no percentage: every call");
    // Binomial(4000, 0.25): mean 1000, sd 27; 5 sigma.
    assert!((863..=1137).contains(&audit), "{audit}");
    // Another entry's calls are not mirrored.
    let mut req = get("/other");
    h.on_request(&mut req);
    assert!(req.mirrors.is_empty());
    let err = rejected(
        r#"{"http":[{"mirrors":[{"destination":{"host":"a"},"percentage":101}],
                     "route":[{"destination":{"host":"p"}}]}]}"#,
    );
    assert!(err.contains("http[0].mirrors[0].percentage"), "{err}");
}

#[test]
fn a_regex_rewrite_replaces_every_match_with_its_groups_and_keeps_the_query() {
    let cfg = r#"{"http":[{"rewrite":{"uriRegexRewrite":{"match":"^/service/([^/]+)(/.*)$","rewrite":"\\2/instance/\\1"}},
                  "route":[{"destination":{"host":"payments"}}]}]}"#;
    assert_eq!(
        rewritten(cfg, "/service/foo/v1/api?x=1").0,
        "/v1/api/instance/foo?x=1"
    );
    // Every match, and a `$` in the replacement is literal.
    let cfg = r#"{"http":[{"rewrite":{"uriRegexRewrite":{"match":"a","rewrite":"$"}},
                  "route":[{"destination":{"host":"payments"}}]}]}"#;
    assert_eq!(rewritten(cfg, "/banana").0, "/b$n$n$");
}

#[test]
fn authority_and_scheme_match_as_envoy_sees_a_sidecars_call() {
    let mut h = canary(
        r#"{"http":[{"match":[{"authority":{"prefix":"payments.default"}}],
                     "route":[{"destination":{"host":"payments","subset":"fqdn"}}]},
                    {"match":[{"scheme":{"exact":"https"}}],
                     "route":[{"destination":{"host":"payments","subset":"tls"}}]},
                    {"match":[{"scheme":{"exact":"http"}}],
                     "route":[{"destination":{"host":"payments","subset":"plain"}}]}]}"#,
    );
    let mut req = get("/");
    req.authority = "payments.default.svc.cluster.local:80".into();
    assert_eq!(subset(&mut h, req), "fqdn");
    // The app's call to its sidecar is plain HTTP: `https` never matches.
    assert_eq!(subset(&mut h, get("/")), "plain");
}
