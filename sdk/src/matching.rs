//! Istio's `StringMatch` (`exact`, `prefix` or `regex`), read and compiled once at configure
//! time, for every plugin that matches request values: the canary's routes, the headers
//! plugin's CORS origins. Regexes are Envoy's `safe_regex`: a full match, size-bounded.

use regex_lite::{Regex, RegexBuilder};
use serde::Deserialize;

/// Istio's `StringMatch`: one of `exact`, `prefix`, `regex` (none: presence, where allowed).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// The whole value equals this.
    #[serde(default)]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The whole value matches this regular expression (RE2-style syntax).
    #[serde(default)]
    pub regex: Option<String>,
}

/// Big enough for any pattern people write; small enough that a handful of them stay well
/// inside the sandbox's memory cap (regex-lite's own default is 10 MiB each).
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// A compiled [`StringMatch`].
#[derive(Debug)]
pub enum Pattern {
    /// Equal to this.
    Exact(String),
    /// Starts with this.
    Prefix(String),
    /// Matched whole by this.
    Regex(Regex),
    /// Present, whatever its value.
    Present,
}

impl Pattern {
    /// Compiles `m`; errors start with `at`. `presence` says whether `{}` is allowed
    /// (headers, query parameters) and means "present", as Istio has it.
    pub fn compile(m: StringMatch, at: &str, presence: bool) -> Result<Pattern, String> {
        match (m.exact, m.prefix, m.regex) {
            (Some(e), None, None) => Ok(Pattern::Exact(e)),
            (None, Some(p), None) => Ok(Pattern::Prefix(p)),
            // Istio turns the (invalid RE2) regex "*" into a presence check.
            (None, None, Some(r)) if presence && r == "*" => Ok(Pattern::Present),
            (None, None, Some(r)) => full_match(&r, &format!("{at}.regex")).map(Pattern::Regex),
            (None, None, None) if presence => Ok(Pattern::Present),
            _ => Err(format!("{at}: set exactly one of exact, prefix, regex")),
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            Pattern::Exact(e) => value == e.as_bytes(),
            Pattern::Prefix(p) => value.starts_with(p.as_bytes()),
            // regex-lite matches text only; a value that is not UTF-8 cannot match.
            Pattern::Regex(r) => std::str::from_utf8(value).is_ok_and(|s| r.is_match(s)),
            Pattern::Present => true,
        }
    }

    /// [`Pattern::matches`] with ASCII case ignored for `exact` and `prefix`.
    pub fn matches_ignoring_case(&self, value: &[u8]) -> bool {
        match self {
            Pattern::Exact(e) => value.eq_ignore_ascii_case(e.as_bytes()),
            Pattern::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
            // As Envoy: case-insensitivity does not apply to regexes; use `(?i)`.
            _ => self.matches(value),
        }
    }
}

/// A size-bounded regex; errors start with `at`.
pub fn bounded_regex(pattern: &str, at: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("{at}: {e}"))
}

/// A size-bounded regex that must match a whole value, as Envoy's `safe_regex`.
pub fn full_match(pattern: &str, at: &str) -> Result<Regex, String> {
    // Compiled alone first, so that a pattern like `a)|(b` cannot close our group and slip
    // out of the anchors below.
    bounded_regex(pattern, at)?;
    bounded_regex(&format!(r"\A(?:{pattern})\z"), at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(json: &str, presence: bool) -> Result<Pattern, String> {
        let m: StringMatch = serde_json::from_str(json).expect("a StringMatch");
        Pattern::compile(m, "m", presence)
    }

    #[test]
    fn regexes_match_whole_values_and_cannot_escape_their_anchors() {
        let p = pattern(r#"{"regex": "a|b"}"#, false).expect("compiles");
        assert!(p.matches(b"a") && p.matches(b"b"));
        assert!(!p.matches(b"ab"));
        let escape = pattern(r#"{"regex": "a)|(b"}"#, false).expect_err("refused");
        assert!(escape.starts_with("m.regex:"), "{escape}");
        let huge = pattern(
            &format!(r#"{{"regex": "{}"}}"#, "a{1000}".repeat(100)),
            false,
        );
        assert!(huge.is_err(), "a pattern past the size limit is refused");
    }

    #[test]
    fn presence_only_where_allowed_and_case_only_for_literals() {
        assert!(matches!(pattern("{}", true), Ok(Pattern::Present)));
        assert!(pattern("{}", false).is_err());
        assert!(pattern(r#"{"exact": "a", "prefix": "b"}"#, true).is_err());
        let p = pattern(r#"{"prefix": "/API"}"#, false).expect("compiles");
        assert!(p.matches_ignoring_case(b"/api/x") && !p.matches(b"/api/x"));
    }
}
