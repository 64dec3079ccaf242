//! A WasmPlugin's own sandbox bounds, from annotations reserved for the host (so the document
//! stays valid Istio, and `pluginConfig` stays the plugin's): `weft.io/plugin-deadline` (a
//! duration, `5ms`), `weft.io/plugin-memory` (a Kubernetes quantity of bytes, `32Mi`) and
//! `weft.io/plugin-instances` (a count). Each replaces the sidecar's default for this plugin.

use super::*;
use crate::snapshot::PluginLimits;
use crate::snapshot::plugin_limits::Field;

/// The hook deadline annotation.
pub const DEADLINE_ANNOTATION: &str = "weft.io/plugin-deadline";
/// The memory cap annotation.
pub const MEMORY_ANNOTATION: &str = "weft.io/plugin-memory";
/// The instance count annotation.
pub const INSTANCES_ANNOTATION: &str = "weft.io/plugin-instances";

/// Bytes in a Kubernetes quantity: a whole number with an optional binary (`Ki`..`Ti`) or
/// decimal (`k`, `M`, `G`, `T`) suffix.
fn quantity(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// The bounds a WasmPlugin's annotations set; none when it sets none.
pub(super) fn read_limits(
    metadata: Option<&Value>,
    problems: &mut Problems,
) -> Option<PluginLimits> {
    let annotations = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)?;
    let mut limits = PluginLimits::default();
    let text = |key: &str, problems: &mut Problems| match annotations.get(key) {
        None => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(other) => {
            problems.at(
                format!("metadata.annotations.{key}"),
                format!("expected a string, found {}", type_name(other)),
            );
            None
        }
    };
    if let Some(t) = text(DEADLINE_ANNOTATION, problems) {
        match parse_duration(&t) {
            Ok(d) if d.subsec_nanos() % 1_000_000 == 0 => {
                limits.deadline_ms = Some(d.as_millis() as u64);
            }
            Ok(_) => problems.at(
                format!("metadata.annotations.{DEADLINE_ANNOTATION}"),
                format!("{t:?}: give whole milliseconds"),
            ),
            Err(e) => problems.at(format!("metadata.annotations.{DEADLINE_ANNOTATION}"), e),
        }
    }
    if let Some(t) = text(MEMORY_ANNOTATION, problems) {
        match quantity(&t) {
            Some(b) => limits.memory_bytes = Some(b),
            None => problems.at(
                format!("metadata.annotations.{MEMORY_ANNOTATION}"),
                format!("{t:?} is not a quantity of bytes (`32Mi`, `1Gi`, `65536`)"),
            ),
        }
    }
    if let Some(t) = text(INSTANCES_ANNOTATION, problems) {
        match t.parse::<u32>() {
            Ok(n) => limits.instances = Some(n),
            Err(_) => problems.at(
                format!("metadata.annotations.{INSTANCES_ANNOTATION}"),
                format!("{t:?} is not a whole number"),
            ),
        }
    }
    // The ranges are the snapshot's; said here at the annotation's path.
    for (field, why) in limits.out_of_range() {
        let key = match field {
            Field::Deadline => DEADLINE_ANNOTATION,
            Field::Memory => MEMORY_ANNOTATION,
            Field::Instances => INSTANCES_ANNOTATION,
        };
        problems.at(format!("metadata.annotations.{key}"), why);
    }
    (limits != PluginLimits::default()).then_some(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(annotations: &str) -> Result<Vec<Resource>, Vec<String>> {
        parse_yaml(
            &format!(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: gate\n  annotations: {annotations}\nspec:\n  url: file:///p.wasm\n"
            ),
            "t.yaml",
        )
    }

    #[test]
    fn annotations_set_a_plugins_own_bounds() {
        let rs = plugin(
            "{ weft.io/plugin-deadline: 5ms, weft.io/plugin-memory: 32Mi, weft.io/plugin-instances: \"4\" }",
        )
        .expect("parses");
        let Spec::WasmPlugin(wp) = &rs[0].spec else {
            panic!("not a WasmPlugin")
        };
        assert_eq!(
            wp.limits,
            Some(PluginLimits {
                deadline_ms: Some(5),
                memory_bytes: Some(32 << 20),
                instances: Some(4),
            })
        );
        assert_eq!(quantity("1Gi"), Some(1 << 30));
        assert_eq!(quantity("64k"), Some(64_000));
        assert_eq!(quantity("1.5Gi"), None);
    }

    #[test]
    fn bounds_out_of_range_or_unreadable_are_refused_at_their_annotation() {
        for (annotations, needle) in [
            (
                "{ weft.io/plugin-deadline: 0ms }",
                "metadata.annotations.weft.io/plugin-deadline: 0 is outside 1..=10000",
            ),
            (
                "{ weft.io/plugin-deadline: 1500us }",
                "metadata.annotations.weft.io/plugin-deadline: \"1500us\": give whole milliseconds",
            ),
            (
                "{ weft.io/plugin-memory: 2Gi }",
                "metadata.annotations.weft.io/plugin-memory: 2147483648 is outside",
            ),
            (
                "{ weft.io/plugin-memory: lots }",
                "metadata.annotations.weft.io/plugin-memory: \"lots\" is not a quantity of bytes",
            ),
            (
                "{ weft.io/plugin-instances: \"0\" }",
                "metadata.annotations.weft.io/plugin-instances: 0 is outside 1..=256",
            ),
            (
                "{ weft.io/plugin-instances: 4 }",
                "metadata.annotations.weft.io/plugin-instances: expected a string, found",
            ),
        ] {
            let err = plugin(annotations).expect_err(annotations).join("\n");
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
}
