//! Replication between brokers (docs/cluster.md): each node pulls from the
//! peers it is given, over the client protocol, with a history
//! subscription per replicated prefix from a durable cursor, and applies
//! what it receives through the engine's conflict rule.

pub(crate) mod board;
mod cursor;
mod direct;
mod puller;
mod reconcile;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spread_protocol::{Topic, TopicRules};
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, Settings};
use crate::engine::Command;
use crate::log::committed::Committed;

/// How long a peer token lives; a puller mints a new one at every
/// (re)connection.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The cluster settings, resolved.
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// Nodes to pull from, `host:port`.
    pub peers: Vec<String>,
    /// The HS256 secret peers sign their tokens with.
    pub secret: Option<String>,
    /// CA certificates trusted when dialling peers.
    pub peer_ca: PathBuf,
    /// Whether the system's roots are trusted too (when `--peer-ca` is not
    /// given and `peer_ca` is the node's own CA).
    pub system_roots: bool,
    /// What this node asks its peers for.
    pub replicate: Vec<Topic>,
    /// How often a pull runs a digest exchange while live (`None`: only
    /// when the peer's history no longer covers the cursor).
    pub anti_entropy: Option<Duration>,
    /// The certificate chain and key a pull presents (mutual TLS).
    pub peer_cert: Option<(PathBuf, PathBuf)>,
}

impl ClusterConfig {
    pub(crate) fn of(s: &Settings) -> Result<ClusterConfig, ConfigError> {
        let invalid = |name, reason: String| ConfigError::Invalid { name, reason };
        let peer_cert = match (&s.peer_cert, &s.peer_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "peer_cert",
                    "--peer-cert and --peer-key go together".into(),
                ))
            }
        };
        if !s.peer.is_empty() && s.cluster_secret.is_none() && peer_cert.is_none() {
            return Err(invalid(
                "peer",
                "peers authenticate with --cluster-secret or a certificate (--peer-cert, --peer-key): give one".into(),
            ));
        }
        let rules = TopicRules {
            max_len: s.max_topic_len,
            max_depth: s.max_topic_depth,
        };
        let mut replicate = Vec::new();
        for p in &s.replicate {
            let topic = Topic::prefix(p, &rules)
                .map_err(|e| invalid("replicate", format!("{p:?}: {e}")))?;
            replicate.push(topic);
        }
        if replicate.is_empty() {
            replicate.push(Topic::root());
        }
        Ok(ClusterConfig {
            peers: s.peer.clone(),
            secret: s.cluster_secret.clone(),
            system_roots: s.peer_ca.is_none(),
            peer_ca: s
                .peer_ca
                .clone()
                .unwrap_or_else(|| s.data_dir.join("tls").join("ca.pem")),
            replicate,
            anti_entropy: (s.anti_entropy_secs > 0)
                .then(|| Duration::from_secs(s.anti_entropy_secs)),
            peer_cert,
        })
    }
}

/// The claims of a peer token: a peer is a client with every right plus
/// the peer right.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct PeerClaims {
    pub sub: String,
    pub exp: u64,
    pub peer: bool,
}

/// A token that proves to another node of the cluster that this node is a
/// peer.
fn peer_token(secret: &str, node_id: &str) -> Option<String> {
    let exp = SystemTime::now()
        .checked_add(TOKEN_TTL)?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs();
    let claims = PeerClaims {
        sub: node_id.to_owned(),
        exp,
        peer: true,
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    match jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) {
        Ok(token) => Some(token),
        Err(e) => {
            tracing::error!("cannot sign a peer token: {e}");
            None
        }
    }
}

/// What a puller needs of its own node.
#[derive(Clone)]
pub(crate) struct Local {
    /// This run of the node: what its pulls ask peers to leave out.
    pub incarnation: u64,
    pub node_id: Arc<str>,
    pub engine: mpsc::Sender<Command>,
    /// Where the log is committed up to: a batch's cursor is written after.
    pub committed: Arc<Committed>,
    pub board: Arc<board::PeerBoard>,
    /// The pulls live right now, whose peers' own events other pulls
    /// leave out.
    pub direct: Arc<direct::Direct>,
}

/// Starts one puller per (peer, replicated prefix) on `tracker`; they end
/// when `shutdown` turns true.
pub(crate) fn start(
    config: &ClusterConfig,
    data_dir: &std::path::Path,
    local: Local,
    tracker: &TaskTracker,
    shutdown: watch::Receiver<bool>,
) {
    for address in &config.peers {
        for prefix in &config.replicate {
            let puller = puller::Puller {
                entry: local.board.add(address, prefix.as_str()),
                address: address.clone(),
                prefix: prefix.clone(),
                cursor: cursor::Cursor::new(data_dir, address, prefix),
                ca: config.peer_ca.clone(),
                system_roots: config.system_roots,
                secret: config.secret.clone(),
                peer_cert: config.peer_cert.clone(),
                anti_entropy: config.anti_entropy,
                local: local.clone(),
            };
            tracker.spawn(puller.run(shutdown.clone()));
        }
    }
}
