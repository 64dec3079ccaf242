//! Configuration helpers shared by plugins: durations written the way Istio writes them.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A duration in Istio's (protobuf `Duration`) text form: `"2s"`, `"0.5s"`, `"250ms"`, `"1m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct IstioDuration(pub Duration);

impl IstioDuration {
    /// Parses `"2s"`-style text, saying what is wrong when it is not.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (number, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = t.strip_suffix('s') {
            (n, 1_000.0)
        } else if let Some(n) = t.strip_suffix('m') {
            (n, 60_000.0)
        } else if let Some(n) = t.strip_suffix('h') {
            (n, 3_600_000.0)
        } else {
            return Err(format!(
                "invalid duration {text:?}: expected a number with a unit (ms, s, m, h), e.g. \"2s\""
            ));
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: {number:?} is not a number"))?;
        if !value.is_finite() || value < 0.0 {
            return Err(format!("invalid duration {text:?}: must be zero or more"));
        }
        Ok(IstioDuration(Duration::from_secs_f64(
            value * unit_ms / 1_000.0,
        )))
    }

    /// Whole milliseconds, saturating at `u32::MAX`.
    pub fn as_millis_u32(self) -> u32 {
        u32::try_from(self.0.as_millis()).unwrap_or(u32::MAX)
    }
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

    #[test]
    fn parses_istio_forms() {
        let ms = |t: &str| IstioDuration::parse(t).map(|d| d.0.as_millis());
        assert_eq!(ms("2s"), Ok(2_000));
        assert_eq!(ms("0.5s"), Ok(500));
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("1m"), Ok(60_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
    }

    #[test]
    fn rejects_with_a_reason() {
        let err = IstioDuration::parse("2").unwrap_err();
        assert!(err.contains("expected a number with a unit"), "{err}");
        assert!(
            IstioDuration::parse("xs")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            IstioDuration::parse("-1s")
                .unwrap_err()
                .contains("zero or more")
        );
    }
}
