//! How a sink is configured: a `[[sinks]]` entry of the TOML file.
//!
//! ```toml
//! [[sinks]]
//! name = "audit"                       # unique; names its checkpoint file
//! library = "/usr/lib/spread/libaudit.so"
//! [sinks.settings]                     # the plugin's own, passed as JSON
//! path = "audit.log"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One `[[sinks]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name: letters, digits, `-` and `_`.
    pub name: String,
    /// Path of the plugin's shared library (or `builtin`).
    #[serde(default)]
    pub library: Option<PathBuf>,
    /// A sink linked into the broker instead of a library: `sql-archive` or `log`.
    #[serde(default)]
    pub builtin: Option<String>,
    /// A disabled sink is neither loaded nor holds retention back.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Retention keeps the history this sink has not consumed yet; when
    /// false, the sink is told which range it missed instead.
    #[serde(default = "yes")]
    pub hold_retention: bool,
    /// Most events per batch.
    #[serde(default = "default_batch_events")]
    pub batch_events: usize,
    /// A batch stops growing once it holds this many payload bytes.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// How long a batch that is not full waits for more events, in ms.
    #[serde(default = "default_linger_ms")]
    pub batch_linger_ms: u64,
    /// First retry delay after a retryable error, in ms (doubled each time).
    #[serde(default = "default_retry_min_ms")]
    pub retry_min_ms: u64,
    /// Longest retry delay, in ms.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Most time between checkpoints (flush, then the position recorded), in ms.
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_ms: u64,
    /// The plugin's own settings.
    #[serde(default)]
    pub settings: toml::Table,
}

fn yes() -> bool {
    true
}
fn default_batch_events() -> usize {
    4096
}
fn default_batch_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_linger_ms() -> u64 {
    5
}
fn default_retry_min_ms() -> u64 {
    100
}
fn default_retry_max_ms() -> u64 {
    30_000
}
fn default_checkpoint_ms() -> u64 {
    100
}

impl SinkConfig {
    /// A sink called `name` with every option at the file's default and
    /// neither a library nor a builtin chosen yet (for code that writes a
    /// configuration: a test, a deployment tool).
    pub fn named(name: &str) -> SinkConfig {
        SinkConfig {
            name: name.to_owned(),
            library: None,
            builtin: None,
            enabled: yes(),
            hold_retention: yes(),
            batch_events: default_batch_events(),
            batch_bytes: default_batch_bytes(),
            batch_linger_ms: default_linger_ms(),
            retry_min_ms: default_retry_min_ms(),
            retry_max_ms: default_retry_max_ms(),
            checkpoint_ms: default_checkpoint_ms(),
            settings: toml::Table::new(),
        }
    }

    /// A built-in sink with default batching and `settings`.
    pub fn builtin(name: &str, builtin: &str, settings: toml::Table) -> SinkConfig {
        SinkConfig {
            builtin: Some(builtin.to_owned()),
            settings,
            ..SinkConfig::named(name)
        }
    }

    /// A plugin sink loaded from `library`, with default batching and
    /// `settings`.
    pub fn library(name: &str, library: &Path, settings: toml::Table) -> SinkConfig {
        SinkConfig {
            library: Some(library.to_owned()),
            settings,
            ..SinkConfig::named(name)
        }
    }

    /// Checks the values; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(format!(
                "sink name {:?}: use 1 to 64 letters, digits, '-' or '_'",
                self.name
            ));
        }
        if self.library.is_some() == self.builtin.is_some() {
            return Err(format!(
                "sink {}: give either `library` (a shared library) or `builtin`",
                self.name
            ));
        }
        if self.batch_events == 0 || self.batch_bytes == 0 {
            return Err(format!("sink {}: batch limits must be positive", self.name));
        }
        if self.retry_min_ms == 0 || self.retry_max_ms < self.retry_min_ms {
            return Err(format!(
                "sink {}: need 0 < retry_min_ms <= retry_max_ms",
                self.name
            ));
        }
        Ok(())
    }

    /// The plugin's settings as JSON text.
    pub fn settings_json(&self) -> String {
        serde_json::to_string(&self.settings).unwrap_or_else(|_| "{}".into())
    }

    /// The linger time.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_settings_as_json() {
        let c: SinkConfig =
            toml::from_str("name = \"a-1\"\nlibrary = \"x.so\"\n[settings]\npath = \"f\"\nn = 3\n")
                .unwrap();
        assert!(c.enabled && c.hold_retention);
        assert_eq!(c.batch_events, 4096);
        assert_eq!(c.settings_json(), r#"{"n":3,"path":"f"}"#);
        c.validate().unwrap();
        let bad = SinkConfig {
            name: "a/b".into(),
            ..c
        };
        assert!(bad.validate().unwrap_err().contains("a/b"));
    }

    #[test]
    fn named_has_the_files_defaults() {
        let from_file: SinkConfig = toml::from_str("name = \"s\"\n").unwrap();
        assert_eq!(SinkConfig::named("s"), from_file);
    }
}
