//! The archive's schema and its versioned migrations.
//!
//! The primary key is the CmRDT order and the topic, `(timestamp_us,
//! origin, id, topic)`: a redelivered event is skipped, while one id that a
//! client used on two topics (two events to the broker) is kept twice
//! (schema version 1 keyed without the topic and dropped the second). It
//! is the order replays read in (clustered in MySQL and SQLite). MySQL's
//! key holds `topic_key`, the first 16 bytes of the topic's SHA-256,
//! instead of the topic, which is too long for an InnoDB key. Two more
//! indexes serve prefix queries (`topic, timestamp_us`) and iteration
//! ranges (`node, iteration`).
//!
//! Migrations are applied at every open, under a lock that serialises
//! brokers sharing one database (PostgreSQL: an advisory transaction lock;
//! MySQL: `GET_LOCK`; SQLite: `BEGIN IMMEDIATE`), and each is recorded in
//! `<table>_migrations`, so running them again is a no-op.

use spread_plugin::Error;
use sqlx::{AssertSqlSafe, Executor, Row};

// Every dynamic statement below interpolates only the table name, which
// `valid_table` restricts to a plain identifier; values are bound.

use crate::db::{classify, Db};

/// `(version, statements)` per backend, oldest first; `{t}` is the table.
type Migration = (i64, &'static [&'static str]);

const POSTGRES: &[Migration] = &[
    (
    1,
    &[
        r#"CREATE TABLE IF NOT EXISTS {t} (
            id BYTEA NOT NULL,
            node TEXT NOT NULL,
            iteration BIGINT NOT NULL,
            topic TEXT COLLATE "C" NOT NULL,
            timestamp_us BIGINT NOT NULL,
            origin TEXT COLLATE "C" NOT NULL,
            kind SMALLINT NOT NULL,
            payload BYTEA NOT NULL,
            archived_at_us BIGINT NOT NULL,
            PRIMARY KEY (timestamp_us, origin, id))"#,
        "CREATE INDEX IF NOT EXISTS {t}_topic_time ON {t} (topic, timestamp_us)",
        "CREATE INDEX IF NOT EXISTS {t}_node_iteration ON {t} (node, iteration)",
    ],
    ),
    (
        2,
        &["ALTER TABLE {t} DROP CONSTRAINT {t}_pkey, ADD PRIMARY KEY (timestamp_us, origin, id, topic)"],
    ),
];

const MYSQL: &[Migration] = &[
    (
        1,
        &["CREATE TABLE IF NOT EXISTS {t} (
            id BINARY(16) NOT NULL,
            node VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            iteration BIGINT UNSIGNED NOT NULL,
            topic VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            timestamp_us BIGINT UNSIGNED NOT NULL,
            origin VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            kind TINYINT UNSIGNED NOT NULL,
            payload LONGBLOB NOT NULL,
            archived_at_us BIGINT UNSIGNED NOT NULL,
            PRIMARY KEY (timestamp_us, origin, id),
            KEY {t}_topic_time (topic(500), timestamp_us),
            KEY {t}_node_iteration (node, iteration)
        ) ENGINE=InnoDB"],
    ),
    (
        2,
        &[
            // One statement, so that a crash leaves the table as it was or
            // fully keyed; rows get their digest just after, in the same
            // migration, before anything is inserted.
            "ALTER TABLE {t} ADD COLUMN topic_key BINARY(16) NOT NULL DEFAULT '', \
             DROP PRIMARY KEY, ADD PRIMARY KEY (timestamp_us, origin, id, topic_key)",
            "UPDATE {t} SET topic_key = UNHEX(LEFT(SHA2(topic, 256), 32))",
        ],
    ),
];

const SQLITE: &[Migration] = &[
    (
    1,
    &[
        "CREATE TABLE IF NOT EXISTS {t} (
            id BLOB NOT NULL,
            node TEXT NOT NULL,
            iteration INTEGER NOT NULL,
            topic TEXT NOT NULL,
            timestamp_us INTEGER NOT NULL,
            origin TEXT NOT NULL,
            kind INTEGER NOT NULL,
            payload BLOB NOT NULL,
            archived_at_us INTEGER NOT NULL,
            PRIMARY KEY (timestamp_us, origin, id)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS {t}_topic_time ON {t} (topic, timestamp_us)",
        "CREATE INDEX IF NOT EXISTS {t}_node_iteration ON {t} (node, iteration)",
    ],
    ),
    (
        2,
        // SQLite cannot change a primary key: the table is rebuilt, inside
        // the migration's transaction.
        &[
            "CREATE TABLE {t}_v2 (
            id BLOB NOT NULL,
            node TEXT NOT NULL,
            iteration INTEGER NOT NULL,
            topic TEXT NOT NULL,
            timestamp_us INTEGER NOT NULL,
            origin TEXT NOT NULL,
            kind INTEGER NOT NULL,
            payload BLOB NOT NULL,
            archived_at_us INTEGER NOT NULL,
            PRIMARY KEY (timestamp_us, origin, id, topic)) WITHOUT ROWID",
            "INSERT INTO {t}_v2 SELECT id, node, iteration, topic, timestamp_us, origin, kind, payload, archived_at_us FROM {t}",
            "DROP TABLE {t}",
            "ALTER TABLE {t}_v2 RENAME TO {t}",
            "CREATE INDEX {t}_topic_time ON {t} (topic, timestamp_us)",
            "CREATE INDEX {t}_node_iteration ON {t} (node, iteration)",
        ],
    ),
];

/// The newest schema version.
pub const VERSION: i64 = 2;

/// Whether `table` is a safe SQL identifier for the archive.
pub fn valid_table(table: &str) -> bool {
    let mut bytes = table.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && table.len() <= 48
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn lock_key(table: &str) -> i64 {
    // FNV-1a: a stable advisory lock key per table.
    table.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) as i64
}

/// Creates the migration log, reads the version and applies (and records)
/// every newer migration on connection or transaction `$c`; evaluates to
/// `Result<(), sqlx::Error>`. A statement failing with an error that
/// `$done_before` recognises had already run (before a crash, where DDL is
/// not transactional).
macro_rules! apply {
    ($c:expr, $sql:expr, $create_log:expr, $migrations:expr, $now:expr, $current:literal, $insert:literal, $done_before:expr) => {
        async {
            $c.execute(AssertSqlSafe($sql($create_log))).await?;
            let current: i64 = sqlx::query(AssertSqlSafe($sql($current)))
                .fetch_one(&mut *$c)
                .await?
                .try_get(0)?;
            for (version, statements) in $migrations.iter().filter(|(v, _)| *v > current) {
                for s in *statements {
                    match $c.execute(AssertSqlSafe($sql(s))).await {
                        Err(e) if $done_before(&e) => {}
                        other => {
                            other?;
                        }
                    }
                }
                sqlx::query(AssertSqlSafe($sql($insert)))
                    .bind(version)
                    .bind($now)
                    .execute(&mut *$c)
                    .await?;
            }
            Ok::<(), sqlx::Error>(())
        }
        .await
    };
}

/// MySQL's "duplicate column name": an `ADD COLUMN` that ran before a crash
/// (MySQL commits each DDL statement on its own).
fn column_exists(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some_and(|m| m.number() == 1060))
}

/// Applies the migrations `table` lacks; returns the schema version.
pub async fn migrate(db: &mut Db, table: &str) -> Result<i64, Error> {
    migrate_to(db, table, VERSION).await
}

/// Applies the migrations `table` lacks up to version `upto` (tests build
/// older schemas with it); returns `upto`.
pub async fn migrate_to(db: &mut Db, table: &str, upto: i64) -> Result<i64, Error> {
    let (all, create_log): (&[Migration], _) = match db {
        Db::Pg(_) => (POSTGRES, "CREATE TABLE IF NOT EXISTS {t}_migrations (version BIGINT PRIMARY KEY, applied_at_us BIGINT NOT NULL)"),
        Db::My(_) => (MYSQL, "CREATE TABLE IF NOT EXISTS {t}_migrations (version BIGINT PRIMARY KEY, applied_at_us BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB"),
        Db::Lite(_) => (SQLITE, "CREATE TABLE IF NOT EXISTS {t}_migrations (version INTEGER PRIMARY KEY, applied_at_us INTEGER NOT NULL)"),
    };
    let migrations = &all[..all.iter().take_while(|(v, _)| *v <= upto).count()];
    let sql = |s: &str| s.replace("{t}", table);
    let now = crate::now_micros() as i64;
    let key = lock_key(table);
    match db {
        Db::Pg(c) => {
            let mut tx = sqlx::Connection::begin(c).await.map_err(classify)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            let conn: &mut sqlx::PgConnection = &mut tx;
            apply!(
                conn,
                sql,
                create_log,
                migrations,
                now,
                "SELECT COALESCE(MAX(version), 0) FROM {t}_migrations",
                "INSERT INTO {t}_migrations (version, applied_at_us) VALUES ($1, $2)",
                |_: &sqlx::Error| false
            )
            .map_err(classify)?;
            tx.commit().await.map_err(classify)?;
        }
        Db::My(c) => {
            // DDL commits implicitly in MySQL: a named lock serialises brokers.
            let name = format!("spread_migrate_{table}");
            let got: Option<i64> = sqlx::query("SELECT GET_LOCK(?, 60)")
                .bind(&name)
                .fetch_one(&mut *c)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(classify)?;
            if got != Some(1) {
                return Err(Error::retry(
                    "another broker is migrating the archive schema",
                ));
            }
            let result = apply!(
                &mut *c,
                sql,
                create_log,
                migrations,
                now,
                "SELECT CAST(COALESCE(MAX(version), 0) AS SIGNED) FROM {t}_migrations",
                "INSERT INTO {t}_migrations (version, applied_at_us) VALUES (?, ?)",
                column_exists
            );
            let released = sqlx::query("SELECT RELEASE_LOCK(?)")
                .bind(&name)
                .execute(&mut *c)
                .await;
            result.map_err(classify)?;
            released.map_err(classify)?;
        }
        Db::Lite(c) => {
            c.execute("BEGIN IMMEDIATE").await.map_err(classify)?;
            let result = apply!(
                &mut *c,
                sql,
                create_log,
                migrations,
                now,
                "SELECT COALESCE(MAX(version), 0) FROM {t}_migrations",
                "INSERT INTO {t}_migrations (version, applied_at_us) VALUES (?, ?)",
                |_: &sqlx::Error| false
            );
            match result {
                Ok(()) => {
                    c.execute("COMMIT").await.map_err(classify)?;
                }
                Err(e) => {
                    let _ = c.execute("ROLLBACK").await;
                    return Err(classify(e));
                }
            }
        }
    }
    Ok(upto)
}

/// Drops the archive's table and its migration log.
pub async fn drop(db: &mut Db, table: &str) -> Result<(), Error> {
    for t in [table.to_string(), format!("{table}_migrations")] {
        let sql = AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}"));
        match db {
            Db::Pg(c) => c.execute(sql).await.map(|_| ()),
            Db::My(c) => c.execute(sql).await.map(|_| ()),
            Db::Lite(c) => c.execute(sql).await.map(|_| ()),
        }
        .map_err(classify)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(valid_table("spread_events"));
        assert!(valid_table("_t1"));
        assert!(!valid_table("1t"));
        assert!(!valid_table("t; DROP TABLE x"));
        assert!(!valid_table(""));
    }
}
