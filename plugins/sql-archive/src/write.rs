//! Batched, idempotent inserts: PostgreSQL with binary `COPY` into a
//! staging table, MySQL and SQLite with multi-row inserts; all in one
//! transaction per batch, and a row whose key is already archived is
//! skipped.
//!
//! A batch holding an event the database refuses as a value (see
//! [`classify_write`]) fails as a whole with a rejection and stores
//! nothing; the host then narrows it down to that event.

use sha2::Digest;
use spread_plugin::{Error, Event};
use sqlx::{AssertSqlSafe, Executor, MySql, QueryBuilder, Row, Sqlite};

// Statements interpolate only the table name, a validated identifier.

use crate::db::{classify, classify_write, Db};

/// Columns in insert order.
pub const COLUMNS: &str =
    "id, node, iteration, topic, timestamp_us, origin, kind, payload, archived_at_us";
/// MySQL's, with the topic's digest that its primary key holds instead of
/// the topic (a 1024-character utf8mb4 column is over InnoDB's key size).
const COLUMNS_MYSQL: &str =
    "id, node, iteration, topic, timestamp_us, origin, kind, payload, archived_at_us, topic_key";

/// Rows per multi-row statement (10 parameters each stays far below every
/// backend's parameter limit).
const ROWS_PER_STATEMENT: usize = 3200;
/// Payload bytes per multi-row statement.
const BYTES_PER_STATEMENT: usize = 8 * 1024 * 1024;
/// What a row adds to a statement besides its topic, origin and payload.
const ROW_OVERHEAD: usize = 128;

/// How large one statement may be on this connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes per multi-row statement.
    statement_bytes: usize,
    /// The largest row the server accepts at all (MySQL's
    /// `max_allowed_packet`); a larger one is rejected without sending it.
    row_bytes: usize,
}

/// The first 16 bytes of the topic's SHA-256: MySQL's key column
/// (`UNHEX(LEFT(SHA2(topic, 256), 32))` in SQL).
pub(crate) fn topic_key(topic: &str) -> Vec<u8> {
    sha2::Sha256::digest(topic.as_bytes())[..16].to_vec()
}

/// Prepares a connection for writing: PostgreSQL's staging table; MySQL's
/// strict mode (a value too long is an error, never silently truncated)
/// and packet size.
pub async fn prepare(db: &mut Db, table: &str) -> Result<Limits, Error> {
    let mut limits = Limits {
        statement_bytes: BYTES_PER_STATEMENT,
        row_bytes: usize::MAX,
    };
    match db {
        Db::Pg(c) => {
            c.execute(AssertSqlSafe(format!(
                "CREATE TEMP TABLE IF NOT EXISTS {table}_stage (LIKE {table}) ON COMMIT DELETE ROWS"
            )))
            .await
            .map_err(classify)?;
        }
        Db::My(c) => {
            c.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')")
                .await
                .map_err(classify)?;
            let packet: i64 = sqlx::query("SELECT CAST(@@max_allowed_packet AS SIGNED)")
                .fetch_one(&mut *c)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(classify)?;
            let packet = usize::try_from(packet).unwrap_or(usize::MAX);
            limits.row_bytes = packet.saturating_sub(4096);
            limits.statement_bytes = BYTES_PER_STATEMENT.min(packet / 2);
        }
        Db::Lite(_) => {}
    }
    Ok(limits)
}

/// The bytes a row adds to a statement.
fn row_size(e: &Event<'_>) -> usize {
    e.payload().len() + e.topic().len() + e.origin().len() + e.node().len() + ROW_OVERHEAD
}

/// Multi-row inserts of `$events` in chunks, in one transaction on `$c`;
/// evaluates to the rows inserted.
macro_rules! multi_row {
    ($c:expr, $db:ty, $columns:expr, $on_conflict:literal, $cache:expr, $table:expr, $events:expr, $limit:expr, |$row:ident, $e:ident| $push:block) => {{
        let mut tx = sqlx::Connection::begin($c).await.map_err(classify)?;
        let mut inserted = 0;
        for chunk in chunks($events, $limit) {
            let mut q = QueryBuilder::<$db>::new(format!("INSERT INTO {} ({}) ", $table, $columns));
            q.push_values(chunk, |mut $row, $e| $push);
            q.push($on_conflict);
            inserted += q
                .build()
                .persistent($cache)
                .execute(&mut *tx)
                .await
                .map_err(classify_write)?
                .rows_affected();
        }
        tx.commit().await.map_err(classify)?;
        Ok(inserted)
    }};
}

/// Writes `events` in one transaction; returns the rows inserted.
pub async fn insert(
    db: &mut Db,
    limits: Limits,
    table: &str,
    events: &[Event<'_>],
) -> Result<u64, Error> {
    if let Some(e) = events.iter().find(|e| row_size(e) > limits.row_bytes) {
        return Err(Error::reject(format!(
            "iteration {}: a row of {} bytes is over the server's max_allowed_packet ({} with overhead)",
            e.iteration(),
            row_size(e),
            limits.row_bytes
        )));
    }
    let now = crate::now_micros() as i64;
    match db {
        Db::Pg(c) => {
            let data = pg_binary(events, now);
            // Fast path: COPY straight into the table. A row already there
            // (a redelivery after a crash) fails the whole COPY, which rolls
            // back; the batch then goes through the staging table, skipping
            // what is there.
            match pg_copy(
                c,
                &format!("COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"),
                &data,
                None,
            )
            .await
            {
                Ok(n) => return Ok(n),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                Err(e) => return Err(classify_write(e)),
            }
            let merge =
                format!("INSERT INTO {table} SELECT * FROM {table}_stage ON CONFLICT DO NOTHING");
            pg_copy(
                c,
                &format!("COPY {table}_stage ({COLUMNS}) FROM STDIN (FORMAT binary)"),
                &data,
                Some(&merge),
            )
            .await
            .map_err(classify_write)
        }
        Db::My(c) => multi_row!(
            c,
            MySql,
            COLUMNS_MYSQL,
            // Not `INSERT IGNORE`: it also turns a value too long into a
            // warning and stores it truncated.
            " ON DUPLICATE KEY UPDATE id = id",
            false,
            table,
            events,
            limits.statement_bytes,
            |row, e| {
                row.push_bind(e.id().to_vec())
                    .push_bind(e.node())
                    .push_bind(e.iteration())
                    .push_bind(e.topic())
                    .push_bind(e.timestamp())
                    .push_bind(e.origin())
                    .push_bind(e.kind().to_byte())
                    .push_bind(e.payload())
                    .push_bind(now)
                    .push_bind(topic_key(e.topic()));
            }
        ),
        // SQLite's statement cache keeps the full-size statement prepared.
        Db::Lite(c) => multi_row!(
            c,
            Sqlite,
            COLUMNS,
            " ON CONFLICT DO NOTHING",
            true,
            table,
            events,
            limits.statement_bytes,
            |row, e| {
                row.push_bind(e.id().to_vec())
                    .push_bind(e.node())
                    .push_bind(e.iteration() as i64)
                    .push_bind(e.topic())
                    .push_bind(e.timestamp() as i64)
                    .push_bind(e.origin())
                    .push_bind(i64::from(e.kind().to_byte()))
                    .push_bind(e.payload())
                    .push_bind(now);
            }
        ),
    }
}

/// One transaction: a binary COPY, then `then` if given; returns the rows
/// the last statement wrote.
async fn pg_copy(
    c: &mut sqlx::PgConnection,
    copy: &str,
    data: &[u8],
    then: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(c).await?;
    let mut sink = tx.copy_in_raw(copy).await?;
    sink.send(data).await?;
    let mut rows = sink.finish().await?;
    if let Some(sql) = then {
        rows = tx
            .execute(AssertSqlSafe(sql.to_owned()))
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(rows)
}

/// Splits a batch so each statement stays within `max_bytes` and the rows
/// limit (a row larger than `max_bytes` goes alone).
fn chunks<'b, 'e>(
    events: &'b [Event<'e>],
    max_bytes: usize,
) -> impl Iterator<Item = &'b [Event<'e>]> {
    let mut rest = events;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len()
            && n < ROWS_PER_STATEMENT
            && (n == 0 || bytes + row_size(&rest[n]) <= max_bytes)
        {
            bytes += row_size(&rest[n]);
            n += 1;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// The batch in PostgreSQL's binary COPY format.
fn pg_binary(events: &[Event<'_>], archived_at: i64) -> Vec<u8> {
    let size: usize = events
        .iter()
        .map(|e| 100 + e.topic().len() + e.payload().len() + e.origin().len() + e.node().len())
        .sum();
    let mut out = Vec::with_capacity(19 + size + 2);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for e in events {
        out.extend_from_slice(&9i16.to_be_bytes());
        field(&mut out, &e.id());
        field(&mut out, e.node().as_bytes());
        field(&mut out, &(e.iteration() as i64).to_be_bytes());
        field(&mut out, e.topic().as_bytes());
        field(&mut out, &(e.timestamp() as i64).to_be_bytes());
        field(&mut out, e.origin().as_bytes());
        field(&mut out, &i16::from(e.kind().to_byte()).to_be_bytes());
        field(&mut out, e.payload());
        field(&mut out, &archived_at.to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}
