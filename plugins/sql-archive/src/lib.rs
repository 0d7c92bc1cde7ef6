//! The SQL archive: a sink that stores every event in SQLite (the embedded
//! default, `<data-dir>/archive.db`), PostgreSQL or MySQL/MariaDB, chosen
//! by URL, and answers replay queries from it.
//!
//! - One row per event, keyed by the event id: redelivery after a crash
//!   never duplicates a row (`ON CONFLICT DO NOTHING` / `INSERT IGNORE` /
//!   `INSERT OR IGNORE`), so the host's at-least-once delivery archives
//!   each event exactly once.
//! - One transaction per batch: binary `COPY` into a staging table for
//!   PostgreSQL, multi-row inserts for MySQL and SQLite (WAL, synced at
//!   each commit).
//! - The schema is created and migrated at open, safely with several
//!   brokers on one database ([`schema`]).
//! - Any database error but a configuration mistake is retryable: the host
//!   backs off and delivers the same batch again once the database is back.
//!
//! The schema is documented in `docs/plugins.md` for plain SQL use.
//!
//! Settings: `url` (default `sqlite://<data-dir>/archive.db`) and `table`
//! (default `spread_events`; tests use their own).

pub mod db;
mod query;
pub mod schema;
mod write;

use std::time::{SystemTime, UNIX_EPOCH};

use spread_plugin::{Archive, Cursor, Error, Event, OpenContext, OwnedEvent, Query, Result, Sink};

use db::Db;

/// The default table.
pub const DEFAULT_TABLE: &str = "spread_events";

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: Option<String>,
    table: Option<String>,
}

/// Where the archive is.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    table: String,
}

impl Target {
    fn from(ctx: &OpenContext<'_>) -> Result<Target> {
        let s: Settings = ctx.config()?;
        let table = s.table.unwrap_or_else(|| DEFAULT_TABLE.into());
        if !schema::valid_table(&table) {
            return Err(Error::fatal(format!(
                "table {table:?}: use letters, digits and _ (at most 48)"
            )));
        }
        let url = s.url.unwrap_or_else(|| db::default_url(ctx.data_dir));
        db::Backend::of(&url)?;
        Ok(Target { url, table })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::fatal(format!("cannot start the archive's runtime: {e}")))
}

/// The sink: writes each batch in one transaction.
pub struct SqlSink {
    target: Target,
    rt: tokio::runtime::Runtime,
    /// `None` after an error: reconnected at the next call.
    db: Option<Db>,
}

impl SqlSink {
    async fn connected(target: &Target) -> Result<Db> {
        let mut db = db::connect(&target.url).await?;
        schema::migrate(&mut db, &target.table).await?;
        write::prepare(&mut db, &target.table).await?;
        Ok(db)
    }

    /// Inserts `events`; returns how many rows were new.
    pub fn insert(&mut self, events: &[Event<'_>]) -> Result<u64> {
        let SqlSink { target, rt, db } = self;
        rt.block_on(async {
            let conn = match db {
                Some(c) => c,
                None => db.insert(Self::connected(target).await?),
            };
            let result = write::insert(conn, &target.table, events).await;
            if result.is_err() {
                // The connection's state is unknown: start afresh next time.
                *db = None;
            }
            result
        })
    }
}

impl SqlSink {
    /// Drops the archive's tables (for scratch tables in tools and tests).
    pub fn drop_table(&mut self) -> Result<()> {
        let SqlSink { target, rt, db } = self;
        rt.block_on(async {
            let conn = match db {
                Some(c) => c,
                None => db.insert(db::connect(&target.url).await?),
            };
            schema::drop(conn, &target.table).await
        })
    }
}

impl Sink for SqlSink {
    fn open(ctx: &OpenContext<'_>) -> Result<Self> {
        let target = Target::from(ctx)?;
        let rt = runtime()?;
        let db = rt.block_on(Self::connected(&target))?;
        tracing::info!(
            url = %db::redact(&target.url),
            table = target.table,
            "archive open"
        );
        Ok(SqlSink {
            target,
            rt,
            db: Some(db),
        })
    }

    fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()> {
        self.insert(events).map(|_| ())
    }
}

/// The query side: each query gets its own connection.
pub struct SqlArchive {
    target: Target,
    rt: tokio::runtime::Runtime,
}

impl Archive for SqlArchive {
    type Cursor = Rows;

    fn open(ctx: &OpenContext<'_>) -> Result<Self> {
        let target = Target::from(ctx)?;
        // Several threads may query at once: a runtime with its own worker
        // drives every connection.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("spread-archive")
            .enable_all()
            .build()
            .map_err(|e| Error::fatal(format!("cannot start the archive's runtime: {e}")))?;
        // Fail early on a wrong URL or a missing schema.
        rt.block_on(async {
            let mut db = db::connect(&target.url).await?;
            schema::migrate(&mut db, &target.table).await
        })?;
        Ok(SqlArchive { target, rt })
    }

    fn query(&self, query: &Query) -> Result<Rows> {
        let db = self.rt.block_on(db::connect(&self.target.url))?;
        Ok(Rows {
            handle: self.rt.handle().clone(),
            table: self.target.table.clone(),
            query: query.clone(),
            db,
            pos: query::Position::default(),
        })
    }
}

/// A running query.
pub struct Rows {
    handle: tokio::runtime::Handle,
    table: String,
    query: Query,
    db: Db,
    pos: query::Position,
}

impl Cursor for Rows {
    fn next_page(&mut self, page: &mut Vec<OwnedEvent>) -> Result<()> {
        let Rows {
            handle,
            table,
            query,
            db,
            pos,
        } = self;
        handle.block_on(query::next_page(db, table, query, pos, page))
    }
}
