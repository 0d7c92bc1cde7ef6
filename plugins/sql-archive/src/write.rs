//! Batched, idempotent inserts: PostgreSQL with binary `COPY` into a
//! staging table, MySQL and SQLite with multi-row inserts; all in one
//! transaction per batch, and a row whose id is already archived is skipped.

use spread_plugin::{Error, Event};
use sqlx::{AssertSqlSafe, Executor, MySql, QueryBuilder, Sqlite};

// Statements interpolate only the table name, a validated identifier.

use crate::db::{classify, Db};

/// Columns in insert order.
pub const COLUMNS: &str =
    "id, node, iteration, topic, timestamp_us, origin, kind, payload, archived_at_us";

/// Rows per multi-row statement (9 parameters each stays far below every
/// backend's parameter limit).
const ROWS_PER_STATEMENT: usize = 3600;
/// Payload bytes per multi-row statement (below MySQL's default packet).
const BYTES_PER_STATEMENT: usize = 8 * 1024 * 1024;

/// Prepares a connection for writing (PostgreSQL's staging table).
pub async fn prepare(db: &mut Db, table: &str) -> Result<(), Error> {
    if let Db::Pg(c) = db {
        c.execute(AssertSqlSafe(format!(
            "CREATE TEMP TABLE IF NOT EXISTS {table}_stage (LIKE {table}) ON COMMIT DELETE ROWS"
        )))
        .await
        .map_err(classify)?;
    }
    Ok(())
}

/// Multi-row inserts of `$events` in chunks, in one transaction on `$c`;
/// evaluates to the rows inserted.
macro_rules! multi_row {
    ($c:expr, $db:ty, $verb:literal, $cache:expr, $table:expr, $events:expr, |$row:ident, $e:ident| $push:block) => {{
        let mut tx = sqlx::Connection::begin($c).await.map_err(classify)?;
        let mut inserted = 0;
        for chunk in chunks($events) {
            let mut q = QueryBuilder::<$db>::new(format!("{} INTO {} ({COLUMNS}) ", $verb, $table));
            q.push_values(chunk, |mut $row, $e| $push);
            inserted += q
                .build()
                .persistent($cache)
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected();
        }
        tx.commit().await.map_err(classify)?;
        Ok(inserted)
    }};
}

/// Writes `events` in one transaction; returns the rows inserted.
pub async fn insert(db: &mut Db, table: &str, events: &[Event<'_>]) -> Result<u64, Error> {
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
                Err(e) => return Err(classify(e)),
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
            .map_err(classify)
        }
        Db::My(c) => multi_row!(c, MySql, "INSERT IGNORE", false, table, events, |row, e| {
            row.push_bind(e.id().to_vec())
                .push_bind(e.node())
                .push_bind(e.iteration())
                .push_bind(e.topic())
                .push_bind(e.timestamp())
                .push_bind(e.origin())
                .push_bind(e.kind().to_byte())
                .push_bind(e.payload())
                .push_bind(now);
        }),
        // SQLite's statement cache keeps the full-size statement prepared.
        Db::Lite(c) => multi_row!(
            c,
            Sqlite,
            "INSERT OR IGNORE",
            true,
            table,
            events,
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

/// Splits a batch so each statement stays within rows and bytes limits.
fn chunks<'b, 'e>(events: &'b [Event<'e>]) -> impl Iterator<Item = &'b [Event<'e>]> {
    let mut rest = events;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < ROWS_PER_STATEMENT && (n == 0 || bytes < BYTES_PER_STATEMENT) {
            bytes += rest[n].payload().len() + rest[n].topic().len() + 64;
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
