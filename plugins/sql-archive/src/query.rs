//! Archive queries: events in a range, in the archive's key order (CmRDT
//! order, timestamp, origin, id, then the topic), fetched page by page with keyset pagination so a result of any size
//! streams in bounded memory.
//!
//! A prefix matches by whole segments with an index-friendly range instead
//! of `LIKE`: `topic = 'a/b' OR (topic >= 'a/b/' AND topic < 'a/b0')`, since
//! `0` is the byte after `/` (the columns compare bytewise: `COLLATE "C"` in
//! PostgreSQL, `utf8mb4_bin` in MySQL, SQLite's default).

use spread_plugin::{Error, Kind, OwnedEvent, Query};
use sqlx::{AssertSqlSafe, Row};

use crate::db::{classify, Db};

/// Rows per page.
pub const PAGE: usize = 5000;

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
enum Bind {
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// Where a query stands: the order key of the last row returned (its last
/// part is the topic, or MySQL's topic digest).
#[derive(Debug, Clone, Default)]
pub struct Position {
    after: Option<(i64, String, Vec<u8>, Bind)>,
    /// Rows returned so far.
    pub returned: u64,
}

/// The SQL of the next page and its bound values; `mark(i)` writes the
/// `i`-th placeholder (from 1) in the backend's syntax.
fn page_sql(
    table: &str,
    columns: &str,
    tie: &str,
    q: &Query,
    pos: &Position,
    limit: usize,
    mark: impl Fn(usize) -> String,
) -> (String, Vec<Bind>) {
    let mut binds = Vec::new();
    let mut bind = |b: Bind| {
        binds.push(b);
        mark(binds.len())
    };
    let mut conds: Vec<String> = Vec::new();
    let prefixes: Vec<&String> = q.prefixes.iter().filter(|p| !p.is_empty()).collect();
    if !prefixes.is_empty() && prefixes.len() == q.prefixes.len() {
        let alternatives: Vec<String> = prefixes
            .iter()
            .map(|p| {
                let exact = bind(Bind::Text((*p).clone()));
                let low = bind(Bind::Text(format!("{p}/")));
                let high = bind(Bind::Text(format!("{p}0")));
                format!("topic = {exact} OR (topic >= {low} AND topic < {high})")
            })
            .collect();
        conds.push(format!("({})", alternatives.join(" OR ")));
    }
    if let Some(node) = &q.node {
        conds.push(format!("node = {}", bind(Bind::Text(node.clone()))));
    }
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    if let Some(t) = q.from_time {
        conds.push(format!("timestamp_us >= {}", bind(Bind::Int(clamp(t)))));
    }
    if let Some(t) = q.to_time {
        conds.push(format!("timestamp_us < {}", bind(Bind::Int(clamp(t)))));
    }
    if let Some(i) = q.from_iteration {
        conds.push(format!("iteration >= {}", bind(Bind::Int(clamp(i)))));
    }
    if let Some(i) = q.to_iteration {
        conds.push(format!("iteration < {}", bind(Bind::Int(clamp(i)))));
    }
    if let Some((ts, origin, id, last)) = &pos.after {
        // `(timestamp_us, origin, id, tie) > (a, b, c, d)`, spelled out:
        // MySQL and MariaDB do not turn a row comparison into an index
        // range, which made every page a scan.
        let a = bind(Bind::Int(*ts));
        let a2 = bind(Bind::Int(*ts));
        let b = bind(Bind::Text(origin.clone()));
        let b2 = bind(Bind::Text(origin.clone()));
        let c = bind(Bind::Blob(id.clone()));
        let c2 = bind(Bind::Blob(id.clone()));
        let d = bind(last.clone());
        conds.push(format!(
            "timestamp_us >= {a} AND (timestamp_us > {a2} OR origin > {b} OR (origin = {b2} AND \
             (id > {c} OR (id = {c2} AND {tie} > {d}))))"
        ));
    }
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    let sql = format!(
        "SELECT {columns} FROM {table}{filter} \
         ORDER BY {table}.timestamp_us, {table}.origin, {table}.id, {table}.{tie} LIMIT {limit}"
    );
    (sql, binds)
}

macro_rules! run_page {
    ($conn:expr, $sql:expr, $binds:expr, $ty:ty) => {{
        // Only the validated table name is interpolated; values are bound.
        let mut query = sqlx::query::<$ty>(AssertSqlSafe($sql));
        for b in $binds {
            query = match b {
                Bind::Int(v) => query.bind(v),
                Bind::Text(v) => query.bind(v),
                Bind::Blob(v) => query.bind(v),
            };
        }
        let rows = query.fetch_all($conn).await.map_err(classify)?;
        rows.iter()
            .map(|r| -> Result<OwnedEvent, sqlx::Error> {
                let id: Vec<u8> = r.try_get("id")?;
                let kind: i64 = r.try_get("kind")?;
                Ok(OwnedEvent {
                    iteration: r.try_get::<i64, _>("iteration")? as u64,
                    timestamp: r.try_get::<i64, _>("timestamp_us")? as u64,
                    topic: r.try_get("topic")?,
                    payload: r.try_get("payload")?,
                    origin: r.try_get("origin")?,
                    node: r.try_get("node")?,
                    id: id.as_slice().try_into().unwrap_or([0; 16]),
                    kind: if kind == 1 {
                        Kind::Tombstone
                    } else {
                        Kind::Value
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?
    }};
}

/// The columns selected, as signed 64-bit integers on every backend.
const COLUMNS_PG: &str =
    "id, node, iteration, topic, timestamp_us, origin, CAST(kind AS BIGINT) AS kind, payload";
const COLUMNS_MYSQL: &str = "id, node, CAST(iteration AS SIGNED) AS iteration, topic, \
     CAST(timestamp_us AS SIGNED) AS timestamp_us, origin, CAST(kind AS SIGNED) AS kind, payload";
const COLUMNS_SQLITE: &str = "id, node, iteration, topic, timestamp_us, origin, kind, payload";

/// Fetches the next page of `q` after `pos` into `page`; empty at the end.
pub async fn next_page(
    db: &mut Db,
    table: &str,
    q: &Query,
    pos: &mut Position,
    page: &mut Vec<OwnedEvent>,
) -> Result<(), Error> {
    let limit = match q.limit {
        Some(limit) => (limit.saturating_sub(pos.returned)).min(PAGE as u64) as usize,
        None => PAGE,
    };
    if limit == 0 {
        return Ok(());
    }
    let rows = match db {
        Db::Pg(c) => {
            let (sql, binds) = page_sql(table, COLUMNS_PG, "topic", q, pos, limit, |i| {
                format!("${i}")
            });
            run_page!(&mut *c, sql, binds, sqlx::Postgres)
        }
        Db::My(c) => {
            let (sql, binds) = page_sql(table, COLUMNS_MYSQL, "topic_key", q, pos, limit, |_| {
                "?".into()
            });
            run_page!(&mut *c, sql, binds, sqlx::MySql)
        }
        Db::Lite(c) => {
            let (sql, binds) = page_sql(table, COLUMNS_SQLITE, "topic", q, pos, limit, |_| {
                "?".into()
            });
            run_page!(&mut *c, sql, binds, sqlx::Sqlite)
        }
    };
    if let Some(last) = rows.last() {
        let tie = match db {
            Db::My(_) => Bind::Blob(crate::write::topic_key(&last.topic)),
            _ => Bind::Text(last.topic.clone()),
        };
        pos.after = Some((
            last.timestamp as i64,
            last.origin.clone(),
            last.id.to_vec(),
            tie,
        ));
    }
    pos.returned += rows.len() as u64;
    page.extend(rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_ranges_and_pages_continue_after_the_last_key() {
        let q = Query {
            prefixes: vec!["a/b".into()],
            from_time: Some(5),
            ..Query::default()
        };
        let pos = Position {
            after: Some((7, "o".into(), vec![1], Bind::Text("a/b/x".into()))),
            returned: 1,
        };
        let (sql, binds) = page_sql("t", "id", "topic", &q, &pos, 10, |i| format!("${i}"));
        assert!(
            sql.contains("(topic = $1 OR (topic >= $2 AND topic < $3))"),
            "{sql}"
        );
        assert!(
            sql.contains(
                "timestamp_us >= $5 AND (timestamp_us > $6 OR origin > $7 OR (origin = $8 AND \
                 (id > $9 OR (id = $10 AND topic > $11))))"
            ),
            "{sql}"
        );
        // Qualified: in MySQL an unqualified name would sort by the CAST
        // alias of the same name, not the indexed column.
        assert!(sql.ends_with("ORDER BY t.timestamp_us, t.origin, t.id, t.topic LIMIT 10"));
        assert_eq!(binds[1], Bind::Text("a/b/".into()));
        assert_eq!(binds[2], Bind::Text("a/b0".into()));
        assert_eq!(binds[3], Bind::Int(5));
    }
}
