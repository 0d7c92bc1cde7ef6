//! The SQL archive: a sink that stores every event in SQLite (the embedded
//! default, `<data-dir>/archive.db`), PostgreSQL or MySQL/MariaDB, chosen
//! by URL, and answers replay queries from it.
//!
//! - One row per event, keyed by its CmRDT order and topic: redelivery
//!   after a crash never duplicates a row (`ON CONFLICT DO NOTHING`, MySQL's
//!   `ON DUPLICATE KEY UPDATE id = id`), so the host's at-least-once delivery archives
//!   each event exactly once.
//! - One transaction per batch: binary `COPY` into a staging table for
//!   PostgreSQL, multi-row inserts for MySQL and SQLite (WAL, synced when
//!   the host checkpoints rather than at each commit: the broker's log
//!   holds every event until then).
//! - The schema is created and migrated at open, safely with several
//!   brokers on one database ([`schema`]).
//! - A value the database refuses (a topic too long for its column, a NUL
//!   in PostgreSQL text, a row over MySQL's `max_allowed_packet`) rejects
//!   the batch, and the host dead-letters that event; any other database
//!   error but a configuration mistake is retryable: the host backs off and
//!   delivers the same batch again once the database is back.
//!
//! The schema is documented in `docs/plugins.md` for plain SQL use.
//!
//! Settings: `url` (default `sqlite://<data-dir>/archive.db`) and `table`
//! (default `spread_events`; tests use their own).

pub mod db;
mod query;
pub mod schema;
mod write;

use std::sync::{Arc, Mutex};
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
    /// SQLite's write-ahead log, synced at each [`Sink::flush`].
    wal: Option<std::path::PathBuf>,
    rt: tokio::runtime::Runtime,
    /// `None` after an error: reconnected at the next call.
    db: Option<(Db, write::Limits)>,
}

impl SqlSink {
    async fn connected(target: &Target) -> Result<(Db, write::Limits)> {
        let mut db = db::connect(&target.url).await?;
        schema::migrate(&mut db, &target.table).await?;
        let limits = write::prepare(&mut db, &target.table).await?;
        Ok((db, limits))
    }

    /// Inserts `events`; returns how many rows were new (MySQL counts a
    /// row already stored too: sqlx always asks it for found rows, so
    /// duplicates show only in what queries return).
    pub fn insert(&mut self, events: &[Event<'_>]) -> Result<u64> {
        let SqlSink { target, rt, db, .. } = self;
        rt.block_on(async {
            let (conn, limits) = match db {
                Some(c) => c,
                None => db.insert(Self::connected(target).await?),
            };
            let result = write::insert(conn, *limits, &target.table, events).await;
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
        let SqlSink { target, rt, db, .. } = self;
        *db = None;
        rt.block_on(async {
            let mut conn = db::connect(&target.url).await?;
            schema::drop(&mut conn, &target.table).await
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
            wal: db::sqlite_wal(&target.url)?,
            target,
            rt,
            db: Some(db),
        })
    }

    fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()> {
        self.insert(events).map(|_| ())
    }

    fn flush(&mut self) -> Result<()> {
        match &self.wal {
            Some(wal) => db::sync_sqlite_wal(wal),
            None => Ok(()),
        }
    }
}

/// Database connections kept open between pages of queries.
const IDLE_CONNECTIONS: usize = 4;

/// The query side. Pages are independent keyset queries, so a query holds
/// no connection between pages: each page borrows one from a small pool,
/// and concurrent queries open at most as many connections as pages are
/// read at once (the broker reads on a few threads).
pub struct SqlArchive {
    target: Target,
    rt: tokio::runtime::Runtime,
    idle: Arc<Mutex<Vec<Db>>>,
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
            schema::migrate(&mut db, &target.table).await?;
            Ok::<_, Error>(db)
        })
        .map(|db| SqlArchive {
            target,
            rt,
            idle: Arc::new(Mutex::new(vec![db])),
        })
    }

    fn query(&self, query: &Query) -> Result<Rows> {
        Ok(Rows {
            handle: self.rt.handle().clone(),
            url: self.target.url.clone(),
            table: self.target.table.clone(),
            query: query.clone(),
            idle: self.idle.clone(),
            pos: query::Position::default(),
        })
    }
}

/// A running query.
pub struct Rows {
    handle: tokio::runtime::Handle,
    url: String,
    table: String,
    query: Query,
    idle: Arc<Mutex<Vec<Db>>>,
    pos: query::Position,
}

impl Cursor for Rows {
    fn next_page(&mut self, page: &mut Vec<OwnedEvent>) -> Result<()> {
        let Rows {
            handle,
            url,
            table,
            query,
            idle,
            pos,
        } = self;
        let pooled = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        handle.block_on(async {
            let mut db = match pooled {
                Some(db) => db,
                None => db::connect(url).await?,
            };
            // A failed connection is dropped, not given back.
            query::next_page(&mut db, table, query, pos, page).await?;
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(db);
            }
            Ok(())
        })
    }
}
