//! Connections: one of three databases, chosen by the URL's scheme, and how
//! their errors map to the plugin ABI's retryable and fatal errors.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use spread_plugin::Error;
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (`postgres://` or `postgresql://`).
    Postgres,
    /// MySQL or MariaDB (`mysql://` or `mariadb://`).
    MySql,
    /// SQLite (`sqlite://path`), the embedded default.
    Sqlite,
}

impl Backend {
    /// The backend a URL names.
    pub fn of(url: &str) -> Result<Backend, Error> {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        match scheme {
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "mysql" | "mariadb" => Ok(Backend::MySql),
            "sqlite" => Ok(Backend::Sqlite),
            _ => Err(Error::fatal(format!(
                "unsupported archive URL {}: use sqlite://, postgres:// or mysql://",
                redact(url)
            ))),
        }
    }
}

/// An open connection.
pub enum Db {
    /// PostgreSQL.
    Pg(PgConnection),
    /// MySQL / MariaDB.
    My(MySqlConnection),
    /// SQLite.
    Lite(SqliteConnection),
}

/// The default archive: `<data-dir>/archive.db`.
pub fn default_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("archive.db").display())
}

/// The write-ahead log of the SQLite database at `url`; `None` for the
/// other databases.
pub fn sqlite_wal(url: &str) -> Result<Option<std::path::PathBuf>, Error> {
    if Backend::of(url)? != Backend::Sqlite {
        return Ok(None);
    }
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::fatal(format!("archive URL {url}: {e}")))?;
    let mut wal = opts.get_filename().as_os_str().to_owned();
    wal.push("-wal");
    Ok(Some(wal.into()))
}

/// Makes every commit so far durable: SQLite commits in WAL mode with
/// `synchronous = NORMAL` write the WAL without syncing it, and what its
/// own checkpoints copy out of the WAL is synced by SQLite. A WAL that
/// does not exist holds nothing to sync.
pub fn sync_sqlite_wal(wal: &Path) -> Result<(), Error> {
    match std::fs::File::open(wal) {
        Ok(file) => file
            .sync_data()
            .map_err(|e| Error::retry(format!("syncing {}: {e}", wal.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::retry(format!("opening {}: {e}", wal.display()))),
    }
}

/// `url` with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Connects to `url`.
pub async fn connect(url: &str) -> Result<Db, Error> {
    let db = match Backend::of(url)? {
        Backend::Postgres => Db::Pg(PgConnection::connect(url).await.map_err(classify)?),
        Backend::MySql => {
            let url = url.replacen("mariadb://", "mysql://", 1);
            Db::My(MySqlConnection::connect(&url).await.map_err(classify)?)
        }
        Backend::Sqlite => {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| Error::fatal(format!("archive URL {url}: {e}")))?
                .create_if_missing(true)
                // WAL, not synced at each commit (a crash of the machine
                // may take back the last commits, never corrupt the file):
                // the sink syncs the WAL when the host checkpoints
                // ([`sync_sqlite_wal`]), so a batch the host checkpoints is
                // on disk, and until then the broker's log holds it.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            Db::Lite(connect_sqlite(&opts).await?)
        }
    };
    Ok(db)
}

/// Opens a SQLite connection. Switching a new database to WAL takes an
/// exclusive lock that SQLite refuses at once (`SQLITE_BUSY`, without the
/// busy timeout) while another connection opens it too — the sink and the
/// replay side at a first start, or several brokers: a few retries.
async fn connect_sqlite(opts: &SqliteConnectOptions) -> Result<SqliteConnection, Error> {
    let mut delay = Duration::from_millis(5);
    for _ in 0..40 {
        match opts.connect().await {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("5") => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(250));
            }
            other => return other.map_err(classify),
        }
    }
    opts.connect().await.map_err(classify)
}

/// Maps a database error: configuration mistakes are fatal, everything else
/// (a server down or restarting, a lost connection, a lock timeout, a full
/// disk) is retried, so nothing is dropped while the database is away.
pub fn classify(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Configuration(_) | sqlx::Error::ConfigFile(_) => Error::fatal(e),
        other => Error::retry(other),
    }
}

/// Maps an error of a write: as [`classify`], except that the database
/// refusing a value itself rejects the batch (a topic too long for its
/// column or index, a character the encoding forbids, a row over the
/// packet size), so that the host sets that event aside instead of
/// retrying it forever.
pub fn classify_write(e: sqlx::Error) -> Error {
    if refuses_the_value(&e) {
        Error::reject(e)
    } else {
        classify(e)
    }
}

fn refuses_the_value(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // Data too long, incorrect string or value, out of range, row size
        // too large, packet too large, result over max_allowed_packet.
        return matches!(my.number(), 1406 | 1366 | 1292 | 1264 | 1118 | 1153 | 1301);
    }
    let Some(code) = db.code() else {
        return false;
    };
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        // Class 22: data exception (a NUL in text, a value too long);
        // class 54: program limit exceeded (an index row too large).
        return code.starts_with("22") || code.starts_with("54");
    }
    // SQLite: SQLITE_TOOBIG.
    code == "18"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_by_scheme_and_passwords_redacted() {
        assert_eq!(Backend::of("sqlite:///x.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of("postgresql://h/db").unwrap(), Backend::Postgres);
        assert_eq!(Backend::of("mariadb://h/db").unwrap(), Backend::MySql);
        assert!(matches!(Backend::of("redis://h"), Err(Error::Fatal(_))));
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("mysql://root@h/test"), "mysql://root@h/test");
    }

    #[test]
    fn the_wal_of_a_sqlite_archive_is_beside_it_and_synced_when_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let url = default_url(dir.path());
        let wal = sqlite_wal(&url).unwrap().unwrap();
        assert_eq!(wal, dir.path().join("archive.db-wal"));
        // Not created yet: nothing to sync.
        sync_sqlite_wal(&wal).unwrap();
        std::fs::write(&wal, b"frames").unwrap();
        sync_sqlite_wal(&wal).unwrap();
        assert_eq!(sqlite_wal("postgres://localhost/test").unwrap(), None);
    }
}
