//! Configuration: flags, `SPREAD_*` environment variables and an optional
//! TOML file, in that order of precedence, over built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spread_protocol::TopicRules;

use crate::log::{Durability, LogOptions};
use crate::sinks::config::SinkConfig;

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

/// Declares every setting once: its kind, type, environment variable,
/// default (as documented; parsed for `value` settings, so that the text
/// shown and the value used are one) and help line. Kinds: `value` (one
/// value with a default), `optional` (absent means off or unlimited), `list`
/// (repeatable), `flag`. The flag is `--<name>` in kebab case, the TOML key
/// `<name>` unless an attribute renames it. `Args` (flags and file, the same
/// struct), `Settings` (resolved) and [`DOCUMENTED`] (checked against
/// docs/operations.md) all come from the declaration. Each setting is one
/// step of a token muncher, so that clap's derive sees plain `Option<T>`,
/// `Vec<T>` and `bool` field types.
macro_rules! settings {
    // One declaration: its field types by kind, then one common step.
    (@acc $acc:tt $(#[$meta:meta])* $name:ident: $kind:ident $ty:ty,
        $env:literal, $default:literal, $help:literal; $($rest:tt)*) => {
        settings!(@typed $kind $ty; $acc [$(#[$meta])*] $name, $env, $default, $help; $($rest)*);
    };
    (@typed value $ty:ty; $($x:tt)*) => { settings!(@push [Option<$ty>] [$ty] value $ty; $($x)*); };
    (@typed optional $ty:ty; $($x:tt)*) => {
        settings!(@push [Option<$ty>] [Option<$ty>] optional $ty; $($x)*);
    };
    (@typed list $ty:ty; $($x:tt)*) => { settings!(@push [Vec<$ty>] [Vec<$ty>] list $ty; $($x)*); };
    (@typed flag $ty:ty; $($x:tt)*) => { settings!(@push [bool] [bool] flag $ty; $($x)*); };
    (@push [$($given:tt)*] [$($resolved:tt)*] $kind:ident $ty:ty;
        [[$($field:tt)*] [$($merge:tt)*] [$($out:tt)*] [$($resolve:tt)*] [$($doc:tt)*]]
        [$($meta:tt)*] $name:ident, $env:literal, $default:literal, $help:literal; $($rest:tt)*) => {
        settings!(@acc [
            [$($field)*
                #[doc = $help]
                #[arg(long, env = $env, help = concat!($help, " [default: ", $default, "]"))]
                $($meta)*
                pub $name: $($given)*,]
            [$($merge)* ($kind $name)]
            [$($out)* #[doc = $help] pub $name: $($resolved)*,]
            [$($resolve)* ($kind $name $ty, $default)]
            [$($doc)* (stringify!($name), $env, $default),]
        ] $($rest)*);
    };
    (@acc [[$($field:tt)*] [$(($mkind:ident $mname:ident))*] [$($out:tt)*]
        [$(($rkind:ident $rname:ident $rty:ty, $rdefault:literal))*] [$($doc:tt)*]]) => {
        /// Command-line flags of `spread-broker` (each also read from its
        /// `SPREAD_*` variable), and the TOML file's keys.
        #[derive(Debug, Default, Clone, clap::Parser, serde::Deserialize, serde::Serialize)]
        #[command(name = "spread-broker", version, about = "The Spread broker")]
        #[serde(default, deny_unknown_fields)]
        pub struct Args {
            /// TOML configuration file.
            #[arg(long, env = "SPREAD_CONFIG")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $($field)*
            /// Start even if the last log segment has a damaged record
            /// followed by valid ones: cut it there, keeping the cut bytes
            /// in a .damaged file (a flag only: a one-off repair).
            #[arg(long)]
            #[serde(skip)]
            pub repair_log: bool,
            /// Sink plugins: the file's `[[sinks]]` tables.
            #[arg(skip)]
            pub sinks: Vec<SinkConfig>,
        }

        /// Every setting, resolved: flag, else environment, else file, else
        /// default.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $($out)*
        }

        impl Args {
            /// These flags over the settings of `file`.
            fn over(self, file: Args) -> Args {
                Args {
                    config: self.config,
                    $($mname: settings!(@merge $mkind self.$mname, file.$mname),)*
                    repair_log: self.repair_log,
                    sinks: file.sinks,
                }
            }

            fn settings(&self) -> Result<Settings, ConfigError> {
                Ok(Settings {
                    $($rname: settings!(@resolve $rkind $rty, self.$rname.clone(), $rname, $rdefault),)*
                })
            }
        }

        /// `(name, environment variable, default as documented)` of every
        /// setting but `--config` and `--repair-log`.
        #[cfg(test)]
        pub(crate) const DOCUMENTED: &[(&str, &str, &str)] = &[$($doc)*];
    };
    (@merge value $flag:expr, $file:expr) => { $flag.or($file) };
    (@merge optional $flag:expr, $file:expr) => { $flag.or($file) };
    (@merge list $flag:expr, $file:expr) => {
        if $flag.is_empty() { $file } else { $flag }
    };
    (@merge flag $flag:expr, $file:expr) => { $flag || $file };
    (@resolve value $ty:ty, $given:expr, $name:ident, $default:literal) => {
        match $given {
            Some(v) => v,
            None => $default.parse::<$ty>().map_err(|e| ConfigError::Invalid {
                name: stringify!($name),
                reason: format!("built-in default {:?}: {e}", $default),
            })?,
        }
    };
    (@resolve $kind:ident $ty:ty, $given:expr, $name:ident, $default:literal) => { $given };
    ($($decl:tt)*) => {
        settings!(@acc [[] [] [] [] []] $($decl)*);
    };
}

settings! {
    listen: value SocketAddr, "SPREAD_LISTEN", "127.0.0.1:7411",
        "Address to listen on";
    data_dir: value PathBuf, "SPREAD_DATA_DIR", "./spread-data",
        "Directory for the node id, TLS material, the event log and the SQLite archive";
    node_id: optional String, "SPREAD_NODE_ID", "generated once, kept in <data-dir>/node-id",
        "Node id: origin of anonymous writes";
    #[arg(requires = "tls_key")]
    tls_cert: optional PathBuf, "SPREAD_TLS_CERT", "generated",
        "PEM certificate chain, leaf first; without it a local CA and certificate are generated in <data-dir>/tls";
    #[arg(requires = "tls_cert")]
    tls_key: optional PathBuf, "SPREAD_TLS_KEY", "generated",
        "PEM private key of the certificate";
    tls_client_ca: optional PathBuf, "SPREAD_TLS_CLIENT_CA", "none",
        "Require client certificates signed by this CA (PEM); their subject is the client's identity";
    max_frame: value usize, "SPREAD_MAX_FRAME", "8388608",
        "Largest frame accepted, in bytes";
    max_topic_len: value usize, "SPREAD_MAX_TOPIC_LEN", "1024",
        "Longest topic, in bytes";
    max_topic_depth: value usize, "SPREAD_MAX_TOPIC_DEPTH", "32",
        "Most segments in a topic";
    subscriber_buffer: value usize, "SPREAD_SUBSCRIBER_BUFFER", "67108864",
        "Bytes of live events queued per connection before it conflates";
    subscriber_memory: value usize, "SPREAD_SUBSCRIBER_MEMORY", "1073741824",
        "Bytes of live events queued for all connections together before those over their share conflate";
    max_inflight: value usize, "SPREAD_MAX_INFLIGHT", "4096",
        "Requests a connection may have unanswered";
    max_connections: value usize, "SPREAD_MAX_CONNECTIONS", "10000",
        "Most simultaneous connections";
    durability: value String, "SPREAD_DURABILITY", "always",
        "When a publish is on disk: always, interval[:<N>ms] or never";
    segment_bytes: value u64, "SPREAD_SEGMENT_BYTES", "67108864",
        "Size at which a log segment is closed, in bytes";
    recent_events: value usize, "SPREAD_RECENT_EVENTS", "65536",
        "Recent events kept in memory for history subscriptions";
    checkpoint_every: value u64, "SPREAD_CHECKPOINT_EVERY", "1000000",
        "Applied events between checkpoints of the latest-value table";
    retention_bytes: optional u64, "SPREAD_RETENTION_BYTES", "unlimited",
        "Keep at most this many bytes of log history";
    retention_secs: optional u64, "SPREAD_RETENTION_SECS", "unlimited",
        "Delete log history older than this many seconds";
    tombstone_grace_secs: optional u64, "SPREAD_TOMBSTONE_GRACE_SECS", "never",
        "Forget deletes older than this many seconds at checkpoints";
    archive: optional String, "SPREAD_ARCHIVE", "sqlite://<data-dir>/archive.db",
        "The SQL archive: sqlite://PATH, postgres://..., mysql://..., or off";
    #[arg(hide_env_values = true)]
    #[serde(rename = "jwt_secrets")]
    jwt_secret: list String, "SPREAD_JWT_SECRET", "none",
        "HS256 secret that verifies client tokens (repeatable; TOML: jwt_secrets)";
    #[serde(rename = "jwt_public_keys")]
    jwt_public_key: list PathBuf, "SPREAD_JWT_PUBLIC_KEY", "none",
        "RS256 or ES256 public key (PEM file) that verifies client tokens (repeatable; TOML: jwt_public_keys)";
    jwks_file: optional PathBuf, "SPREAD_JWKS_FILE", "none",
        "JWKS file of keys that verify client tokens (chosen by kid)";
    jwt_issuer: optional String, "SPREAD_JWT_ISSUER", "none",
        "Required iss claim";
    jwt_audience: optional String, "SPREAD_JWT_AUDIENCE", "none",
        "Required aud claim";
    require_auth: flag bool, "SPREAD_REQUIRE_AUTH", "false",
        "Refuse clients without a valid token";
    max_topics: value usize, "SPREAD_MAX_TOPICS", "10000000",
        "Most topics the broker holds, deletes included; a publish that would add one more is refused";
    max_connections_per_ip: value usize, "SPREAD_MAX_CONNECTIONS_PER_IP", "1000",
        "Most simultaneous connections from one address (IPv6: per /64)";
    max_subscriptions: value usize, "SPREAD_MAX_SUBSCRIPTIONS", "10000",
        "Most live subscriptions per connection";
    max_publish_rate: optional u32, "SPREAD_MAX_PUBLISH_RATE", "unlimited",
        "Publishes per second allowed per connection, bursts of one second";
    handshake_timeout_ms: value u64, "SPREAD_HANDSHAKE_TIMEOUT_MS", "10000",
        "Time allowed for the TLS handshake and the hello, in ms";
    write_timeout_secs: optional u64, "SPREAD_WRITE_TIMEOUT_SECS", "never",
        "Close connections that accept no byte of what the broker writes for this many seconds";
    idle_timeout_secs: optional u64, "SPREAD_IDLE_TIMEOUT_SECS", "never",
        "Close connections that send nothing for this many seconds";
    max_reads_per_connection: value usize, "SPREAD_MAX_READS_PER_CONNECTION", "8",
        "Replays and history catch-ups running at once per connection";
    max_replays: value usize, "SPREAD_MAX_REPLAYS", "16",
        "Replays running at once in the broker (each holds an archive cursor)";
    max_catch_ups: value usize, "SPREAD_MAX_CATCH_UPS", "1024",
        "History catch-ups from the log running at once in the broker";
    max_snapshots: value usize, "SPREAD_MAX_SNAPSHOTS", "64",
        "Large snapshots (walked over several engine rounds) in progress at once in the broker";
    #[serde(deserialize_with = "from_text", serialize_with = "as_text")]
    max_clock_skew: value humantime::Duration, "SPREAD_MAX_CLOCK_SKEW", "1s",
        "How far ahead of the broker's clock a publish's timestamp may be, e.g. 1s, 500ms";
    plain_listen: optional SocketAddr, "SPREAD_PLAIN_LISTEN", "none",
        "Also listen WITHOUT TLS on this loopback address (benchmarking only)";
    #[serde(rename = "peers", deserialize_with = "peers_from_toml")]
    peer: list String, "SPREAD_PEER", "none",
        "A node to replicate from, HOST:PORT (repeatable; TOML: peers, or [[peers]] tables with an address); see docs/cluster.md";
    #[arg(hide_env_values = true)]
    cluster_secret: optional String, "SPREAD_CLUSTER_SECRET", "none",
        "HS256 secret shared by the nodes of a cluster: peers prove with it that they are peers";
    peer_cert: optional PathBuf, "SPREAD_PEER_CERT", "none",
        "Certificate chain (PEM) this node presents when dialling peers (mutual TLS; with --peer-key)";
    peer_key: optional PathBuf, "SPREAD_PEER_KEY", "none",
        "Private key (PEM) of --peer-cert";
    peer_ca: optional PathBuf, "SPREAD_PEER_CA", "the system roots and <data-dir>/tls/ca.pem",
        "CA certificates (PEM) trusted when dialling peers (given: only these)";
    replicate: list String, "SPREAD_REPLICATE", "the root",
        "Prefix this node asks its peers for (repeatable; default: everything)";
    anti_entropy_secs: value u64, "SPREAD_ANTI_ENTROPY_SECS", "600",
        "How often each pull compares digests with its peer and fetches what differs (0: only when history is gone)";
}

/// Reads `peers` as a list of addresses or as `[[peers]]` tables, each
/// with an `address` (room for per-peer settings later).
fn peers_from_toml<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PeerTable {
        address: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(
        untagged,
        expecting = "a peer: \"host:port\" or a table with an address"
    )]
    enum Peer {
        Address(String),
        Table(PeerTable),
    }
    let peers: Vec<Peer> = serde::Deserialize::deserialize(d)?;
    Ok(peers
        .into_iter()
        .map(|p| match p {
            Peer::Address(a) | Peer::Table(PeerTable { address: a }) => a,
        })
        .collect())
}

/// Reads a setting written as text in the file (a duration such as `1s`).
fn from_text<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text: Option<String> = serde::Deserialize::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// Writes a setting that the file holds as text (see [`from_text`]).
fn as_text<S, T>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    T: std::fmt::Display,
{
    match v {
        Some(v) => s.serialize_some(&v.to_string()),
        None => s.serialize_none(),
    }
}

/// The resolved configuration: every setting, plus what is derived from
/// several of them or parsed further (durations, the durability policy,
/// the sinks with the built-in archive). Reads of a plain setting go
/// through to [`Settings`]; a derived field of the same name (such as
/// `durability`) is the parsed one.
#[derive(Debug, Clone)]
pub struct Config {
    settings: Settings,
    pub(crate) tls_files: Option<(PathBuf, PathBuf)>,
    pub(crate) topic_rules: TopicRules,
    pub(crate) durability: Durability,
    pub(crate) retention: crate::log::retention::Retention,
    pub(crate) tombstone_grace: Option<Duration>,
    pub(crate) auth: crate::auth::AuthSettings,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) max_clock_skew: Duration,
    pub(crate) reads: crate::reads::Limits,
    pub(crate) repair_log: bool,
    /// The built-in archive (unless off), then the file's sinks.
    pub(crate) sinks: Vec<SinkConfig>,
    pub(crate) cluster: crate::cluster::ClusterConfig,
}

impl std::ops::Deref for Config {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

impl Config {
    /// Resolves flags over the file over the defaults.
    pub fn resolve(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => Args::default(),
        };
        let args = args.over(file);
        let s = args.settings()?;
        let tls_files = match (&s.tls_cert, &s.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "tls_cert/tls_key",
                    reason: "give both the certificate and the key, or neither".into(),
                })
            }
        };
        let secs = |v: Option<u64>| v.filter(|s| *s > 0).map(Duration::from_secs);
        let cfg = Config {
            tls_files,
            topic_rules: TopicRules {
                max_len: s.max_topic_len,
                max_depth: s.max_topic_depth,
            },
            durability: s
                .durability
                .parse()
                .map_err(|reason| ConfigError::Invalid {
                    name: "durability",
                    reason,
                })?,
            retention: crate::log::retention::Retention {
                max_bytes: s.retention_bytes,
                max_age: s.retention_secs.map(Duration::from_secs),
            },
            tombstone_grace: s.tombstone_grace_secs.map(Duration::from_secs),
            auth: crate::auth::AuthSettings {
                secrets: s.jwt_secret.clone(),
                public_keys: s.jwt_public_key.clone(),
                jwks_file: s.jwks_file.clone(),
                issuer: s.jwt_issuer.clone(),
                audience: s.jwt_audience.clone(),
                require: s.require_auth,
                cluster_secret: s.cluster_secret.clone(),
            },
            handshake_timeout: Duration::from_millis(s.handshake_timeout_ms),
            idle_timeout: secs(s.idle_timeout_secs),
            write_timeout: secs(s.write_timeout_secs),
            max_clock_skew: s.max_clock_skew.into(),
            reads: crate::reads::Limits {
                per_connection: s.max_reads_per_connection,
                replays: s.max_replays,
                catch_ups: s.max_catch_ups,
                snapshots: s.max_snapshots,
            },
            repair_log: args.repair_log,
            cluster: crate::cluster::ClusterConfig::of(&s)?,
            sinks: archive_sink(s.archive.clone())
                .into_iter()
                .chain(args.sinks)
                .collect(),
            settings: Settings {
                checkpoint_every: s.checkpoint_every.max(1),
                ..s
            },
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

fn load_file(path: &Path) -> Result<Args, ConfigError> {
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
    fn peers_are_a_list_or_tables() {
        let listed: Args = toml::from_str(r#"peers = ["a:1", "b:2"]"#).unwrap();
        assert_eq!(listed.peer, ["a:1", "b:2"]);
        let tables: Args =
            toml::from_str("[[peers]]\naddress = \"a:1\"\n\n[[peers]]\naddress = \"b:2\"\n")
                .unwrap();
        assert_eq!(tables.peer, ["a:1", "b:2"]);
        let typo = toml::from_str::<Args>("[[peers]]\nadress = \"a:1\"\n");
        assert!(typo.is_err(), "an unknown key in a peer table is refused");
    }

    /// What a program writes (a test harness, a deployment tool) is what
    /// the broker reads back.
    #[test]
    fn args_written_as_toml_read_back_the_same() {
        let mut sink = SinkConfig::named("events");
        sink.builtin = Some("log".into());
        sink.settings.insert("path".into(), "events.log".into());
        let args = Args {
            archive: Some("off".into()),
            jwt_secret: vec!["s1".into(), "s2".into()],
            max_clock_skew: Some("2m".parse().unwrap()),
            retention_secs: Some(60),
            require_auth: true,
            sinks: vec![sink],
            ..Args::default()
        };
        let text = toml::to_string(&args).unwrap();
        let back: Args = toml::from_str(&text).unwrap();
        assert_eq!(toml::to_string(&back).unwrap(), text);
        assert_eq!(back.sinks, args.sinks);
        assert_eq!(
            back.max_clock_skew.map(Duration::from),
            Some(Duration::from_secs(120))
        );
        assert!(back.require_auth && back.jwt_secret.len() == 2);
    }

    #[test]
    fn defaults() {
        let c = Config::resolve(Args::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7411");
        // The protocol's defaults (what clients assume) are the broker's.
        assert_eq!(c.max_frame, spread_protocol::DEFAULT_MAX_FRAME);
        assert_eq!(c.topic_rules, TopicRules::default());
        assert_eq!(c.max_clock_skew, Duration::from_secs(1));
        assert!(c.idle_timeout.is_none() && c.max_publish_rate.is_none());
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

    /// The settings table of docs/operations.md: each row's flag,
    /// environment variable, TOML key and default.
    fn documented_rows() -> Vec<[String; 4]> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .filter(|l| l.starts_with("| `--"))
            .map(|l| {
                let cells: Vec<String> = l
                    .split('|')
                    .skip(1)
                    .take(4)
                    .map(|c| c.trim().replace('`', ""))
                    .collect();
                [
                    cells[0].clone(),
                    cells[1].clone(),
                    cells[2].clone(),
                    cells[3].clone(),
                ]
            })
            .collect()
    }

    #[test]
    fn the_operations_guide_lists_every_setting_with_its_real_default() {
        use clap::CommandFactory;
        let rows = documented_rows();
        let command = Args::command();
        for (name, env, default) in DOCUMENTED {
            let flag = format!("--{}", name.replace('_', "-"));
            let row = rows
                .iter()
                .find(|r| r[0] == flag)
                .unwrap_or_else(|| panic!("{flag} is not in docs/operations.md"));
            assert_eq!(row[1], *env, "{flag}: environment variable");
            let key = row[2].trim_end_matches(" (list)");
            let renamed = match *name {
                "jwt_secret" => "jwt_secrets",
                "jwt_public_key" => "jwt_public_keys",
                "peer" => "peers",
                other => other,
            };
            assert_eq!(key, renamed, "{flag}: TOML key");
            assert_eq!(row[3], *default, "{flag}: default");
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == *name)
                .unwrap_or_else(|| panic!("{flag} is not a flag"));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(*env));
        }
        // And nothing documented that does not exist.
        for row in &rows {
            let name = row[0].trim_start_matches("--").replace('-', "_");
            assert!(
                DOCUMENTED.iter().any(|(n, _, _)| *n == name)
                    || ["config", "repair_log"].contains(&name.as_str()),
                "{} is documented but not a setting",
                row[0]
            );
        }
    }

    #[test]
    fn every_documented_toml_key_is_read_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spread.toml");
        std::fs::write(
            &path,
            "max_topics = 7\njwt_secrets = [\"s\"]\nmax_clock_skew = \"250ms\"\nrequire_auth = true\n",
        )
        .unwrap();
        let c = Config::resolve(Args {
            config: Some(path),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(c.max_topics, 7);
        assert_eq!(c.auth.secrets, ["s"]);
        assert_eq!(c.max_clock_skew, Duration::from_millis(250));
        assert!(c.auth.require);
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
