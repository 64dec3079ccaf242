//! Runs the hooks its config names (`{"hooks": ["on-request", "on-attempt-end", "on-done"]}`)
//! and does nothing in them: what a hook call costs before a plugin does any work, the floor
//! the built-in plugins' costs are judged against.

use serde::Deserialize;
use weft_sdk::{Filter, Hooks, export_filter};

/// The plugin's configuration.
#[derive(Deserialize)]
pub struct Config {
    /// The hooks to run, by their WIT names.
    hooks: Vec<String>,
}

/// The plugin.
pub struct Noop(Hooks);

impl Filter for Noop {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mut hooks = Hooks::default();
        for name in &config.hooks {
            hooks |= match name.as_str() {
                "on-request" => Hooks::ON_REQUEST,
                "on-attempt-end" => Hooks::ON_ATTEMPT_END,
                "on-response" => Hooks::ON_RESPONSE,
                "on-done" => Hooks::ON_DONE,
                other => return Err(format!("hooks: unknown hook {other:?}")),
            };
        }
        Ok(Noop(hooks))
    }

    fn hooks(&self) -> Hooks {
        self.0
    }
}

export_filter!(Noop);
