//! Sandbox bounds one plugin sets for itself (a WasmPlugin's `weft.io/plugin-*` annotations),
//! each replacing the sidecar's default for that plugin alone.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The shortest hook deadline a plugin may ask for.
pub const MIN_DEADLINE_MS: u64 = 1;
/// The longest: a hook runs on the request path.
pub const MAX_DEADLINE_MS: u64 = 10_000;
/// The smallest memory cap: one Wasm page.
pub const MIN_MEMORY_BYTES: u64 = 64 << 10;
/// The largest: what one instance of the sidecar's pooling allocator may hold.
pub const MAX_MEMORY_BYTES: u64 = 1 << 30;
/// The most instances one plugin may ask for: the engine pools 256 in all.
pub const MAX_INSTANCES: u32 = 256;

/// A bound of [`PluginLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `deadlineMs`.
    Deadline,
    /// `memoryBytes`.
    Memory,
    /// `instances`.
    Instances,
}

/// One plugin's own bounds; an unset one keeps the sidecar's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginLimits {
    /// A hook call's deadline, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// An instance's memory cap, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The most instances alive at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
}

impl PluginLimits {
    /// `base` with these bounds in place of its own.
    pub fn over(&self, base: crate::plugin::Limits) -> crate::plugin::Limits {
        crate::plugin::Limits {
            deadline: self
                .deadline_ms
                .map_or(base.deadline, Duration::from_millis),
            memory_bytes: self
                .memory_bytes
                .and_then(|b| usize::try_from(b).ok())
                .unwrap_or(base.memory_bytes),
            instances: self.instances.unwrap_or(base.instances),
            ..base
        }
    }

    /// Every bound out of range: its field and why.
    pub fn out_of_range(&self) -> Vec<(Field, String)> {
        let mut out = Vec::new();
        if let Some(ms) = self.deadline_ms
            && !(MIN_DEADLINE_MS..=MAX_DEADLINE_MS).contains(&ms)
        {
            out.push((
                Field::Deadline,
                format!("{ms} is outside {MIN_DEADLINE_MS}..={MAX_DEADLINE_MS}"),
            ));
        }
        if let Some(b) = self.memory_bytes
            && !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&b)
        {
            out.push((
                Field::Memory,
                format!("{b} is outside {MIN_MEMORY_BYTES}..={MAX_MEMORY_BYTES}"),
            ));
        }
        if let Some(n) = self.instances
            && !(1..=MAX_INSTANCES).contains(&n)
        {
            out.push((
                Field::Instances,
                format!("{n} is outside 1..={MAX_INSTANCES}"),
            ));
        }
        out
    }

    /// Every bound out of range, each at `at.<field>`.
    pub fn check(&self, at: &str, errors: &mut Vec<String>) {
        for (field, why) in self.out_of_range() {
            let name = match field {
                Field::Deadline => "deadlineMs",
                Field::Memory => "memoryBytes",
                Field::Instances => "instances",
            };
            errors.push(format!("{at}.{name}: {why}"));
        }
    }
}
