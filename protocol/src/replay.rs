//! Replay from the archive: which events a `replay` request (0x17) asks
//! for. The answer is the matching events as `event` frames (their
//! `sub_id` is the request id), in CmRDT order (timestamp, origin, id),
//! then `replay-complete` (0x98) with the count, or an error.

use crate::message::{wire_struct, List, Prefix};
use crate::topic::Topic;

/// Most prefixes one replay may name.
pub const MAX_PREFIXES: usize = 64;

wire_struct! {
    /// The events a replay asks for; unset bounds are open.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    inline "replay"
    pub struct ReplayQuery {
        /// Topic prefixes (whole segments); none means every topic.
        pub prefixes: Vec<Topic> as List<Prefix, MAX_PREFIXES>,
        /// Earliest timestamp (µs), inclusive.
        pub from_time: Option<u64>,
        /// Latest timestamp (µs), exclusive.
        pub to_time: Option<u64>,
        /// Lowest iteration, inclusive.
        pub from_iteration: Option<u64>,
        /// Highest iteration, exclusive.
        pub to_iteration: Option<u64>,
        /// Most events.
        pub limit: Option<u64>,
    }
}
