//! The status report: what an operator asks a broker about itself and its
//! sinks (`status` request 0x16, `status` answer 0x97).

use crate::message::{wire_struct, List};

wire_struct! {
    /// One sink as a status report shows it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    nested "sink"
    pub struct SinkStatus {
        /// Configured name.
        pub name: String,
        /// Plugin name, version and origin.
        pub plugin: String,
        /// `starting`, `running`, `retrying`, `failed` or `stopped`.
        pub state: String,
        /// Iteration up to which everything was delivered and flushed.
        pub checkpoint: u64,
        /// Committed events after the checkpoint.
        pub lag_events: u64,
        /// How long the sink has been behind, in milliseconds.
        pub lag_ms: u64,
        /// Events delivered since the broker started.
        pub delivered: u64,
        /// Failed plugin calls since the broker started.
        pub errors: u64,
        /// The last error, if any.
        pub last_error: Option<String>;
        /// Events the plugin rejected, kept in the sink's dead-letter file
        /// (counted over every run; 0 from brokers that predate it).
        pub rejected: u64,
    }
}

wire_struct! {
    /// The broker's answer to a status request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    inline "status"
    pub struct StatusReport {
        /// Request id.
        pub req_id: u64,
        /// The broker's node id.
        pub node_id: String,
        /// Last iteration applied.
        pub iteration: u64,
        /// Last iteration durable under the broker's policy.
        pub committed: u64,
        /// Oldest iteration still in the log, once retention deleted any.
        pub retained_from: Option<u64>,
        /// Every sink.
        pub sinks: Vec<SinkStatus> as List<SinkStatus, MAX_SINKS>,
        /// The digest of every live value (`crate::digest`): equal on
        /// nodes that hold the same latest values.
        pub digest: u64,
    }
}

/// Most sinks a report is decoded with (counts above are malformed).
const MAX_SINKS: usize = 4096;

wire_struct! {
    /// One pull from a peer (a peer and one replicated prefix), as a
    /// `peers` answer shows it (docs/cluster.md).
    #[derive(Debug, Clone, PartialEq, Eq)]
    nested "peer"
    pub struct PeerStatus {
        /// The address this node dials.
        pub address: String,
        /// The prefix pulled.
        pub prefix: String,
        /// `connecting`, `digest` (a digest exchange, when the peer's
        /// history no longer covers the cursor), `catching-up` (history
        /// before the peer's `synced`), `live` or `retrying`.
        pub state: String,
        /// The peer's iteration up to which everything is applied and
        /// committed here: where the pull resumes.
        pub cursor: u64,
        /// The highest iteration of the peer this node has heard of.
        pub peer_iteration: u64,
        /// Events the peer sent that were new here since the broker started.
        pub applied: u64,
        /// Events refused (clock skew, topic limit) since the broker started.
        pub refused: u64,
        /// The last error, if any.
        pub last_error: Option<String>;
        /// Events the peer sent since the broker started, new or not:
        /// `received - applied - refused` were already here (they came by
        /// another path first).
        pub received: u64,
        /// The peer's node id, from its welcome (empty before the first).
        pub peer_node: String,
        /// The peer's incarnation, from its welcome (0 before the first):
        /// it changes when the peer restarts.
        pub peer_incarnation: u64,
        /// Digest exchanges run with the peer since the broker started.
        pub exchanges: u64,
        /// Digest requests those exchanges sent (about k · depth for k
        /// differing topics).
        pub exchange_requests: u64,
        /// How far behind the peer this node is, in milliseconds: while
        /// live, how old the last event applied was when it was applied;
        /// otherwise how old it is now (by the accepting node's clock).
        pub lag_ms: u64,
        /// The runs whose events the pull asks the peer to leave out: this
        /// node's own, then those of the peers it pulls from directly
        /// (docs/cluster.md).
        pub skipping: Vec<u64> as List<u64, 8>,
    }
}

wire_struct! {
    /// The broker's answer to a peers request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    inline "peers"
    pub struct PeersReport {
        /// Request id.
        pub req_id: u64,
        /// Every pull.
        pub peers: Vec<PeerStatus> as List<PeerStatus, MAX_PEERS>,
    }
}

/// Most pulls a peers answer is decoded with.
const MAX_PEERS: usize = 4096;
