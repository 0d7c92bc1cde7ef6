//! Sinks linked into the broker, configured with `builtin = "<name>"`
//! (`sql-archive`, `log`): the
//! same plugins as their shared-library builds, behind the same trait and
//! panic barrier, so the one-command start needs no separate build.

use std::sync::Arc;

use spread_log_sink::LogSink;
use spread_sql_archive::{SqlArchive, SqlSink};

use super::driver::{Factory, Native};

/// The built-in sinks' names.
pub const NAMES: &[&str] = &["sql-archive", "log"];

/// The factory of built-in sink `name`, if there is one.
pub fn factory(name: &str) -> Option<Arc<dyn Factory>> {
    match name {
        "sql-archive" => Some(Arc::new(Native::<SqlSink>::with_archive::<SqlArchive>(
            "sql-archive",
        ))),
        "log" => Some(Arc::new(Native::<LogSink>::new("log"))),
        _ => None,
    }
}
