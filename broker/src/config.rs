//! Configuration: flags, `SPREAD_*` environment variables and an optional
//! TOML file, in that order of precedence, over built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use spread_protocol::topic::{DEFAULT_MAX_TOPIC_DEPTH, DEFAULT_MAX_TOPIC_LEN};
use spread_protocol::{TopicRules, DEFAULT_MAX_FRAME};

use crate::log::{Durability, LogOptions};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7411";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./spread-data";
/// Default bound on how far ahead of the clock a client timestamp may be.
pub const DEFAULT_MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML file is invalid.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Command-line flags of `spread-broker` (each also read from `SPREAD_*`).
#[derive(Debug, Default, Clone, clap::Parser)]
#[command(name = "spread-broker", version, about = "The Spread broker")]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "SPREAD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7411].
    #[arg(long, env = "SPREAD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the node id, TLS material and (later) the log [default: ./spread-data].
    #[arg(long, env = "SPREAD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node id [default: generated once and kept in the data dir].
    #[arg(long, env = "SPREAD_NODE_ID")]
    pub node_id: Option<String>,
    /// PEM certificate chain [default: a local CA and certificate in <data-dir>/tls].
    #[arg(long, env = "SPREAD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "SPREAD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM); their subject is the client's identity.
    #[arg(long, env = "SPREAD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Largest frame accepted, in bytes [default: 8388608].
    #[arg(long, env = "SPREAD_MAX_FRAME")]
    pub max_frame: Option<usize>,
    /// Longest topic, in bytes [default: 1024].
    #[arg(long, env = "SPREAD_MAX_TOPIC_LEN")]
    pub max_topic_len: Option<usize>,
    /// Most segments in a topic [default: 32].
    #[arg(long, env = "SPREAD_MAX_TOPIC_DEPTH")]
    pub max_topic_depth: Option<usize>,
    /// Bytes of live events queued per connection before it conflates [default: 4194304].
    #[arg(long, env = "SPREAD_SUBSCRIBER_BUFFER")]
    pub subscriber_buffer: Option<usize>,
    /// Requests a connection may have unanswered [default: 4096].
    #[arg(long, env = "SPREAD_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Most simultaneous connections [default: 10000].
    #[arg(long, env = "SPREAD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// When a publish is on disk: always, interval[:<N>ms] or never [default: always].
    #[arg(long, env = "SPREAD_DURABILITY")]
    pub durability: Option<String>,
    /// Size at which a log segment is closed, in bytes [default: 67108864].
    #[arg(long, env = "SPREAD_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Recent events kept in memory for history subscriptions [default: 65536].
    #[arg(long, env = "SPREAD_RECENT_EVENTS")]
    pub recent_events: Option<usize>,
    /// Applied events between checkpoints of the latest-value table [default: 1000000].
    #[arg(long, env = "SPREAD_CHECKPOINT_EVERY")]
    pub checkpoint_every: Option<u64>,
    /// Keep at most this many bytes of log history [default: unlimited].
    #[arg(long, env = "SPREAD_RETENTION_BYTES")]
    pub retention_bytes: Option<u64>,
    /// Delete log history older than this many seconds [default: unlimited].
    #[arg(long, env = "SPREAD_RETENTION_SECS")]
    pub retention_secs: Option<u64>,
    /// Forget deletes older than this many seconds at checkpoints [default: never].
    #[arg(long, env = "SPREAD_TOMBSTONE_GRACE_SECS")]
    pub tombstone_grace_secs: Option<u64>,
    /// The SQL archive: sqlite://PATH, postgres://..., mysql://..., or off [default: sqlite://<data-dir>/archive.db].
    #[arg(long, env = "SPREAD_ARCHIVE")]
    pub archive: Option<String>,
    /// HS256 secret that verifies client tokens (repeatable).
    #[arg(long, env = "SPREAD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Vec<String>,
    /// RS256 or ES256 public key (PEM file) that verifies client tokens (repeatable).
    #[arg(long, env = "SPREAD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Vec<PathBuf>,
    /// JWKS file of keys that verify client tokens (chosen by `kid`).
    #[arg(long, env = "SPREAD_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "SPREAD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "SPREAD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Refuse clients without a valid token.
    #[arg(long, env = "SPREAD_REQUIRE_AUTH")]
    pub require_auth: bool,
    /// Most simultaneous connections from one IP address [default: 1000].
    #[arg(long, env = "SPREAD_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Most live subscriptions per connection [default: 10000].
    #[arg(long, env = "SPREAD_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Most topics the broker holds, deletes included; a publish that would
    /// add one more is refused [default: 10000000].
    #[arg(long, env = "SPREAD_MAX_TOPICS")]
    pub max_topics: Option<usize>,
    /// Publishes per second allowed per connection, bursts of one second [default: unlimited].
    #[arg(long, env = "SPREAD_MAX_PUBLISH_RATE")]
    pub max_publish_rate: Option<u32>,
    /// Time allowed for the TLS handshake and the hello, in ms [default: 10000].
    #[arg(long, env = "SPREAD_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Close connections that accept no byte of what the broker writes for this many seconds [default: never].
    #[arg(long, env = "SPREAD_WRITE_TIMEOUT_SECS")]
    pub write_timeout_secs: Option<u64>,
    /// Close connections that send nothing for this many seconds [default: never].
    #[arg(long, env = "SPREAD_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Replays and history catch-ups running at once per connection [default: 8].
    #[arg(long, env = "SPREAD_MAX_READS_PER_CONNECTION")]
    pub max_reads_per_connection: Option<usize>,
    /// Replays running at once in the broker (each holds an archive cursor) [default: 16].
    #[arg(long, env = "SPREAD_MAX_REPLAYS")]
    pub max_replays: Option<usize>,
    /// History catch-ups from the log running at once in the broker [default: 1024].
    #[arg(long, env = "SPREAD_MAX_CATCH_UPS")]
    pub max_catch_ups: Option<usize>,
    /// Large snapshots (walked over several engine rounds) in progress at once in the broker [default: 64].
    #[arg(long, env = "SPREAD_MAX_SNAPSHOTS")]
    pub max_snapshots: Option<usize>,
    /// How far ahead of the broker's clock a publish's timestamp may be, e.g. 1s, 500ms [default: 1s].
    #[arg(long, env = "SPREAD_MAX_CLOCK_SKEW")]
    pub max_clock_skew: Option<humantime::Duration>,
    /// Start even if the last log segment has a damaged record followed by valid ones: cut it there, keeping the cut bytes in a .damaged file.
    #[arg(long)]
    pub repair_log: bool,
    /// Also listen WITHOUT TLS on this loopback address (benchmarking only).
    #[arg(long, env = "SPREAD_PLAIN_LISTEN")]
    pub plain_listen: Option<SocketAddr>,
}

/// The TOML file: the same settings as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    node_id: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    max_frame: Option<usize>,
    max_topic_len: Option<usize>,
    max_topic_depth: Option<usize>,
    subscriber_buffer: Option<usize>,
    max_inflight: Option<usize>,
    max_connections: Option<usize>,
    durability: Option<String>,
    segment_bytes: Option<u64>,
    recent_events: Option<usize>,
    checkpoint_every: Option<u64>,
    retention_bytes: Option<u64>,
    retention_secs: Option<u64>,
    tombstone_grace_secs: Option<u64>,
    archive: Option<String>,
    #[serde(default)]
    jwt_secrets: Vec<String>,
    #[serde(default)]
    jwt_public_keys: Vec<PathBuf>,
    jwks_file: Option<PathBuf>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    require_auth: Option<bool>,
    max_connections_per_ip: Option<usize>,
    max_subscriptions: Option<usize>,
    max_topics: Option<usize>,
    max_publish_rate: Option<u32>,
    handshake_timeout_ms: Option<u64>,
    plain_listen: Option<SocketAddr>,
    idle_timeout_secs: Option<u64>,
    write_timeout_secs: Option<u64>,
    max_clock_skew: Option<String>,
    max_reads_per_connection: Option<usize>,
    max_replays: Option<usize>,
    max_catch_ups: Option<usize>,
    max_snapshots: Option<usize>,
    #[serde(default)]
    sinks: Vec<crate::sinks::config::SinkConfig>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Node id, if set explicitly.
    pub node_id: Option<String>,
    /// Certificate chain and key files, if given.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// CA that client certificates must chain to (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Topic limits.
    pub topic_rules: TopicRules,
    /// Bytes of live events queued per connection before conflation.
    pub subscriber_buffer: usize,
    /// Unanswered requests allowed per connection.
    pub max_inflight: usize,
    /// Simultaneous connections allowed.
    pub max_connections: usize,
    /// When a publish is on disk.
    pub durability: Durability,
    /// Size at which a log segment is closed.
    pub segment_bytes: u64,
    /// Recent events kept in memory for history subscriptions.
    pub recent_events: usize,
    /// Applied events between checkpoints.
    pub checkpoint_every: u64,
    /// History kept in the log.
    pub retention: crate::log::retention::Retention,
    /// Deletes older than this are forgotten at checkpoints.
    pub tombstone_grace: Option<std::time::Duration>,
    /// Sink plugins (from the file's `[[sinks]]` entries).
    pub sinks: Vec<crate::sinks::config::SinkConfig>,
    /// Client authentication.
    pub auth: crate::auth::AuthSettings,
    /// Simultaneous connections allowed from one IP address.
    pub max_connections_per_ip: usize,
    /// Live subscriptions allowed per connection.
    pub max_subscriptions: usize,
    /// Topics the broker holds at most (tombstones included).
    pub max_topics: usize,
    /// Publishes per second per connection (`None`: unlimited).
    pub max_publish_rate: Option<u32>,
    /// Time allowed for the TLS handshake and the hello.
    pub handshake_timeout: std::time::Duration,
    /// An unencrypted loopback listener, for benchmarks.
    pub plain_listen: Option<SocketAddr>,
    /// Connections that send nothing this long are closed.
    pub idle_timeout: Option<std::time::Duration>,
    /// How far ahead of the broker's clock a publish's timestamp may be.
    pub max_clock_skew: std::time::Duration,
    /// Limits of the read pool (catch-ups and replays).
    pub reads: crate::reads::Limits,
    /// Cut the log at mid-segment damage instead of refusing to start.
    pub repair_log: bool,
    /// A connection whose writes stall this long is closed (`None`: kept;
    /// a stalled subscriber is conflated, and shutdown gives it 5 s).
    pub write_timeout: Option<std::time::Duration>,
}

impl Config {
    /// Resolves flags over the file over the defaults.
    pub fn resolve(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let default_listen: SocketAddr =
            DEFAULT_LISTEN.parse().map_err(|_| ConfigError::Invalid {
                name: "listen",
                reason: "bad built-in default".into(),
            })?;
        let tls_files = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "tls_cert/tls_key",
                    reason: "give both the certificate and the key, or neither".into(),
                })
            }
        };
        let cfg = Config {
            listen: args.listen.or(file.listen).unwrap_or(default_listen),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            node_id: args.node_id.or(file.node_id),
            tls_files,
            tls_client_ca: args.tls_client_ca.or(file.tls_client_ca),
            max_frame: args
                .max_frame
                .or(file.max_frame)
                .unwrap_or(DEFAULT_MAX_FRAME),
            topic_rules: TopicRules {
                max_len: args
                    .max_topic_len
                    .or(file.max_topic_len)
                    .unwrap_or(DEFAULT_MAX_TOPIC_LEN),
                max_depth: args
                    .max_topic_depth
                    .or(file.max_topic_depth)
                    .unwrap_or(DEFAULT_MAX_TOPIC_DEPTH),
            },
            subscriber_buffer: args
                .subscriber_buffer
                .or(file.subscriber_buffer)
                .unwrap_or(4 * 1024 * 1024),
            max_inflight: args.max_inflight.or(file.max_inflight).unwrap_or(4096),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(10_000),
            durability: match args.durability.or(file.durability) {
                Some(d) => d.parse().map_err(|reason| ConfigError::Invalid {
                    name: "durability",
                    reason,
                })?,
                None => Durability::Always,
            },
            segment_bytes: args
                .segment_bytes
                .or(file.segment_bytes)
                .unwrap_or(64 * 1024 * 1024),
            recent_events: args.recent_events.or(file.recent_events).unwrap_or(65_536),
            checkpoint_every: args
                .checkpoint_every
                .or(file.checkpoint_every)
                .unwrap_or(1_000_000)
                .max(1),
            retention: crate::log::retention::Retention {
                max_bytes: args.retention_bytes.or(file.retention_bytes),
                max_age: args
                    .retention_secs
                    .or(file.retention_secs)
                    .map(std::time::Duration::from_secs),
            },
            tombstone_grace: args
                .tombstone_grace_secs
                .or(file.tombstone_grace_secs)
                .map(std::time::Duration::from_secs),
            auth: crate::auth::AuthSettings {
                secrets: if args.jwt_secret.is_empty() {
                    file.jwt_secrets
                } else {
                    args.jwt_secret
                },
                public_keys: if args.jwt_public_key.is_empty() {
                    file.jwt_public_keys
                } else {
                    args.jwt_public_key
                },
                jwks_file: args.jwks_file.or(file.jwks_file),
                issuer: args.jwt_issuer.or(file.jwt_issuer),
                audience: args.jwt_audience.or(file.jwt_audience),
                require: args.require_auth || file.require_auth.unwrap_or(false),
            },
            max_connections_per_ip: args
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(1000),
            max_subscriptions: args
                .max_subscriptions
                .or(file.max_subscriptions)
                .unwrap_or(10_000),
            max_topics: args.max_topics.or(file.max_topics).unwrap_or(10_000_000),
            max_publish_rate: args.max_publish_rate.or(file.max_publish_rate),
            handshake_timeout: std::time::Duration::from_millis(
                args.handshake_timeout_ms
                    .or(file.handshake_timeout_ms)
                    .unwrap_or(10_000),
            ),
            plain_listen: args.plain_listen.or(file.plain_listen),
            idle_timeout: args
                .idle_timeout_secs
                .or(file.idle_timeout_secs)
                .filter(|s| *s > 0)
                .map(std::time::Duration::from_secs),
            max_clock_skew: match (args.max_clock_skew, file.max_clock_skew) {
                (Some(d), _) => d.into(),
                (None, Some(text)) => {
                    humantime::parse_duration(&text).map_err(|e| ConfigError::Invalid {
                        name: "max_clock_skew",
                        reason: format!("{text:?}: {e}"),
                    })?
                }
                (None, None) => DEFAULT_MAX_CLOCK_SKEW,
            },
            repair_log: args.repair_log,
            write_timeout: args
                .write_timeout_secs
                .or(file.write_timeout_secs)
                .filter(|s| *s > 0)
                .map(std::time::Duration::from_secs),
            reads: crate::reads::Limits {
                per_connection: args
                    .max_reads_per_connection
                    .or(file.max_reads_per_connection)
                    .unwrap_or(8),
                replays: args.max_replays.or(file.max_replays).unwrap_or(16),
                catch_ups: args.max_catch_ups.or(file.max_catch_ups).unwrap_or(1024),
                snapshots: args.max_snapshots.or(file.max_snapshots).unwrap_or(64),
            },
            sinks: archive_sink(args.archive.or(file.archive))
                .into_iter()
                .chain(file.sinks)
                .collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Where and how the event log is kept.
    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            dir: self.data_dir.join("log"),
            segment_bytes: self.segment_bytes,
            repair: self.repair_log,
            durability: self.durability,
            retention: self.retention,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = |name: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    name,
                    reason: "must be greater than 0".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("max_frame", self.max_frame)?;
        positive("max_topic_len", self.topic_rules.max_len)?;
        positive("max_topic_depth", self.topic_rules.max_depth)?;
        positive("max_inflight", self.max_inflight)?;
        positive("max_connections", self.max_connections)?;
        positive("max_connections_per_ip", self.max_connections_per_ip)?;
        positive("max_subscriptions", self.max_subscriptions)?;
        positive("max_topics", self.max_topics)?;
        positive("max_reads_per_connection", self.reads.per_connection)?;
        positive("max_replays", self.reads.replays)?;
        positive("max_catch_ups", self.reads.catch_ups)?;
        positive("max_snapshots", self.reads.snapshots)?;
        positive(
            "max_publish_rate",
            self.max_publish_rate.unwrap_or(1) as usize,
        )?;
        positive(
            "handshake_timeout_ms",
            self.handshake_timeout.as_millis() as usize,
        )?;
        if self.segment_bytes < 4096 {
            return Err(ConfigError::Invalid {
                name: "segment_bytes",
                reason: "must be at least 4096".into(),
            });
        }
        // The stored event adds at most the overhead to its frame; records
        // of the log format hold events up to MAX_EVENT.
        let max_frame = crate::log::record::MAX_EVENT - spread_protocol::MAX_EVENT_OVERHEAD;
        if self.max_frame > max_frame {
            return Err(ConfigError::Invalid {
                name: "max_frame",
                reason: format!("must be at most {max_frame}"),
            });
        }
        if let Some(addr) = self.plain_listen {
            if !addr.ip().is_loopback() {
                return Err(ConfigError::Invalid {
                    name: "plain_listen",
                    reason: format!("{addr} is not a loopback address: plain TCP is for local benchmarking only"),
                });
            }
        }
        for sink in &self.sinks {
            sink.validate().map_err(|reason| ConfigError::Invalid {
                name: "sinks",
                reason,
            })?;
        }
        if self.max_inflight > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::Invalid {
                name: "max_inflight",
                reason: "too large".into(),
            });
        }
        Ok(())
    }
}

/// Most events per archive transaction.
pub const ARCHIVE_BATCH_EVENTS: usize = 16_384;

/// Name of the built-in archive sink.
pub const ARCHIVE_SINK: &str = "archive";

/// The built-in SQL archive sink, unless `setting` is `off`.
fn archive_sink(setting: Option<String>) -> Option<crate::sinks::config::SinkConfig> {
    let mut settings = toml::Table::new();
    match setting.as_deref() {
        Some("off") => return None,
        Some(url) => {
            settings.insert("url".into(), toml::Value::String(url.to_owned()));
        }
        None => {}
    }
    let mut sink = crate::sinks::config::SinkConfig::builtin(ARCHIVE_SINK, "sql-archive", settings);
    // One transaction per batch: large batches when the archive is behind
    // make each commit (and each index page touched) serve more events.
    sink.batch_events = ARCHIVE_BATCH_EVENTS;
    sink.batch_bytes = 8 * 1024 * 1024;
    Some(sink)
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::resolve(Args::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.max_frame, DEFAULT_MAX_FRAME);
        assert_eq!(c.topic_rules, TopicRules::default());
    }

    #[test]
    fn flags_win_over_file() {
        let dir = std::env::temp_dir().join(format!("spread-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spread.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nmax_frame = 1000\n").unwrap();
        let c = Config::resolve(Args {
            config: Some(path.clone()),
            max_frame: Some(2000),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.max_frame, 2000);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let err = Config::resolve(Args {
            config: Some(path),
            ..Args::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn durability_setting() {
        let c = Config::resolve(Args::default()).unwrap();
        assert_eq!(c.durability, Durability::Always);
        let c = Config::resolve(Args {
            durability: Some("interval:20ms".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(
            c.durability,
            Durability::Interval(std::time::Duration::from_millis(20))
        );
        let err = Config::resolve(Args {
            durability: Some("sometimes".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("durability"), "{err}");
    }

    #[test]
    fn sinks_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spread.toml");
        std::fs::write(
            &path,
            "[[sinks]]\nname = \"audit\"\nlibrary = \"/x.so\"\nbatch_events = 10\n[sinks.settings]\npath = \"a\"\n",
        )
        .unwrap();
        let c = Config::resolve(Args {
            config: Some(path.clone()),
            ..Args::default()
        })
        .unwrap();
        // The built-in archive first, then the file's sinks.
        assert_eq!(c.sinks.len(), 2);
        assert_eq!(c.sinks[0].name, ARCHIVE_SINK);
        assert_eq!(c.sinks[0].settings_json(), "{}");
        assert_eq!(c.sinks[1].batch_events, 10);
        assert_eq!(c.sinks[1].settings_json(), r#"{"path":"a"}"#);
        let c = Config::resolve(Args {
            config: Some(path.clone()),
            archive: Some("postgres://h/db".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(c.sinks[0].settings_json(), r#"{"url":"postgres://h/db"}"#);
        let c = Config::resolve(Args {
            config: Some(path.clone()),
            archive: Some("off".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(c.sinks.len(), 1);
        std::fs::write(&path, "[[sinks]]\nname = \"a b\"\nlibrary = \"/x.so\"\n").unwrap();
        let err = Config::resolve(Args {
            config: Some(path),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("a b"), "{err}");
    }

    #[test]
    fn zero_limits_are_rejected() {
        let err = Config::resolve(Args {
            max_frame: Some(0),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("max_frame"));
    }
}
