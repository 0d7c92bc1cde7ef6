//! The SQL archive built as a shared library: load
//! `libspread_sql_archive_plugin.so` as a `[[sinks]]` `library` to run the
//! archive out of the broker's own build (the broker also links the same
//! code in, as its default `archive` sink).

use spread_sql_archive::{SqlArchive, SqlSink};

spread_plugin::export_plugin!(name: "sql-archive", sink: SqlSink, archive: SqlArchive);
