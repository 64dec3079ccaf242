//! Configuration helpers shared by plugins: durations written the way Istio writes them.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A duration as Istio reads it: Go's `time.ParseDuration` grammar, which Istio's YAML accepts
/// for its protobuf `Duration` fields — one or more decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`): `"2s"`, `"0.5s"`, `"250ms"`,
/// `"1h30m"`, `"1.5h"`. A bare `"0"` is zero. Negative durations are refused, and so is
/// anything past Go's limit (about 292 years), with a reason rather than an overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct IstioDuration(pub Duration);

/// Go's `time.Duration` is an `i64` of nanoseconds: nothing longer can be written.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Nanoseconds per unit, longest suffix first so `ms` is not read as `m`.
const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
];

impl IstioDuration {
    /// Parses `"2s"`-style text, saying what is wrong when it is not.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("invalid duration {:?}: {why}", clip(text));
        let t = text.trim();
        let t = match t.strip_prefix('-') {
            Some(_) if t != "-0" => return Err(invalid("must be zero or more")),
            Some(rest) => rest,
            None => t.strip_prefix('+').unwrap_or(t),
        };
        if t == "0" {
            return Ok(IstioDuration(Duration::ZERO));
        }
        if t.is_empty() {
            return Err(invalid(
                "expected a number with a unit (ns, us, ms, s, m, h), e.g. \"2s\" or \"1h30m\"",
            ));
        }
        let mut rest = t;
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let (whole, after) = split_digits(rest);
            let (fraction, after) = match after.strip_prefix('.') {
                Some(f) => split_digits(f),
                None => ("", after),
            };
            if whole.is_empty() && fraction.is_empty() {
                let what = if rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
                    "a unit needs a number before it"
                } else {
                    "expected a number with a unit (ns, us, ms, s, m, h), e.g. \"2s\" or \"1h30m\""
                };
                return Err(invalid(what));
            }
            let Some(&(unit, per)) = UNITS.iter().find(|(u, _)| after.starts_with(u)) else {
                return Err(invalid(if after.is_empty() {
                    "a number needs a unit (ns, us, ms, s, m, h), e.g. \"2s\""
                } else {
                    "unknown unit (known: ns, us, ms, s, m, h)"
                }));
            };
            rest = &after[unit.len()..];
            let part = scaled(whole, fraction, per).ok_or_else(|| invalid("out of range"))?;
            total = total
                .checked_add(part)
                .filter(|t| *t <= MAX_NANOS)
                .ok_or_else(|| invalid("out of range (at most about 292 years)"))?;
        }
        let secs = (total / 1_000_000_000) as u64;
        let nanos = (total % 1_000_000_000) as u32;
        Ok(IstioDuration(Duration::new(secs, nanos)))
    }

    /// Whole milliseconds, saturating at `u32::MAX`.
    pub fn as_millis_u32(self) -> u32 {
        u32::try_from(self.0.as_millis()).unwrap_or(u32::MAX)
    }
}

/// The leading ASCII digits of `s`, and what follows.
fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// `whole.fraction` units of `per` nanoseconds, or `None` past the limit. Digits past what a
/// nanosecond can show are dropped, as Go drops them.
fn scaled(whole: &str, fraction: &str, per: u128) -> Option<u128> {
    let mut value: u128 = 0;
    for d in whole.bytes() {
        value = value.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
        if value > MAX_NANOS {
            return None;
        }
    }
    let mut nanos = value.checked_mul(per)?;
    let (mut numerator, mut scale) = (0u128, 1u128);
    // 18 digits resolve a nanosecond of an hour and keep `numerator * per` inside a u128.
    for d in fraction.bytes().take(18) {
        numerator = numerator * 10 + u128::from(d - b'0');
        scale *= 10;
    }
    nanos = nanos.checked_add(numerator * per / scale)?;
    (nanos <= MAX_NANOS).then_some(nanos)
}

/// Text echoed in an error, cut so a huge value cannot make a huge message.
fn clip(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        IstioDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: &str) -> Result<u128, String> {
        IstioDuration::parse(t).map(|d| d.0.as_millis())
    }

    #[test]
    fn parses_istio_forms() {
        assert_eq!(ms("2s"), Ok(2_000));
        assert_eq!(ms("0.5s"), Ok(500));
        assert_eq!(ms(".5s"), Ok(500));
        assert_eq!(ms("1.s"), Ok(1_000));
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("1m"), Ok(60_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("1.5h"), Ok(5_400_000));
        assert_eq!(ms("2m3.5s"), Ok(123_500));
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms("+3s"), Ok(3_000));
        assert_eq!(ms(" 3s "), Ok(3_000));
        assert_eq!(
            IstioDuration::parse("1500us").map(|d| d.0),
            Ok(Duration::from_micros(1_500))
        );
        assert_eq!(
            IstioDuration::parse("1µs").map(|d| d.0),
            Ok(Duration::from_micros(1))
        );
        assert_eq!(
            IstioDuration::parse("7ns").map(|d| d.0),
            Ok(Duration::from_nanos(7))
        );
        assert_eq!(
            IstioDuration::parse("0.1234567891s").map(|d| d.0),
            Ok(Duration::from_nanos(123_456_789)),
            "digits past a nanosecond are dropped"
        );
    }

    #[test]
    fn rejects_with_a_reason() {
        let err = |t: &str| IstioDuration::parse(t).unwrap_err();
        assert!(err("2").contains("needs a unit"), "{}", err("2"));
        assert!(err("xs").contains("needs a number"), "{}", err("xs"));
        assert!(err("s").contains("needs a number"));
        assert!(err("-1s").contains("zero or more"));
        assert!(err("1d").contains("unknown unit"));
        assert!(err("1h30").contains("needs a unit"));
        assert!(err("").contains("expected a number"));
        assert!(err(".s").contains("expected a number"));
        assert!(err("1..5s").contains("unknown unit"));
        assert!(err("1e3s").contains("unknown unit"));
        assert!(err("NaNs").contains("needs a number"));
    }

    #[test]
    fn huge_values_are_refused_not_overflowed() {
        for text in [
            "1e300s",
            "1000000000000000000000000000000000000000s",
            "9223372037s",
            "2562048h",
            "106752d",
            "99999999999999999999999999999999999999999999999999h",
            "5124095576030431h5124095576030431h",
        ] {
            let e = IstioDuration::parse(text).expect_err(text);
            assert!(
                e.contains("out of range") || e.contains("unknown unit"),
                "{text}: {e}"
            );
        }
        assert!(ms("2562047h").is_ok(), "just under Go's limit");
        let long = "9".repeat(10_000) + "s";
        let e = IstioDuration::parse(&long).expect_err("long");
        assert!(e.len() < 200, "the value echoed is clipped: {e}");
    }
}
