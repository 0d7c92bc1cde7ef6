//! Replay from the archive: which events a `replay` request (0x17) asks
//! for. The answer is the matching events as `event` frames (their
//! `sub_id` is the request id), in CmRDT order (timestamp, origin, id),
//! then `replay-complete` (0x98) with the count, or an error.

use bytes::BytesMut;

use crate::error::ProtocolError;
use crate::topic::{Topic, TopicRules};
use crate::wire::{self, Reader};

/// Most prefixes one replay may name.
pub const MAX_PREFIXES: usize = 64;

/// The events a replay asks for; unset bounds are open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayQuery {
    /// Topic prefixes (whole segments); none means every topic.
    pub prefixes: Vec<Topic>,
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

fn put_opt(dst: &mut BytesMut, v: Option<u64>) {
    match v {
        Some(v) => wire::put_uint(dst, v),
        None => wire::put_nil(dst),
    }
}

fn read_opt(r: &mut Reader<'_>, what: &'static str) -> Result<Option<u64>, ProtocolError> {
    if r.nil() {
        Ok(None)
    } else {
        r.uint(what).map(Some)
    }
}

impl ReplayQuery {
    /// Appends `[prefixes], from_time, to_time, from_iteration,
    /// to_iteration, limit` (each bound a uint or nil).
    pub(crate) fn encode_fields(&self, dst: &mut BytesMut) {
        wire::put_array(dst, self.prefixes.len());
        for p in &self.prefixes {
            wire::put_str(dst, p.as_str());
        }
        put_opt(dst, self.from_time);
        put_opt(dst, self.to_time);
        put_opt(dst, self.from_iteration);
        put_opt(dst, self.to_iteration);
        put_opt(dst, self.limit);
    }

    /// Reads the fields written by [`encode_fields`](Self::encode_fields).
    pub(crate) fn read_fields(
        r: &mut Reader<'_>,
        rules: &TopicRules,
    ) -> Result<ReplayQuery, ProtocolError> {
        let n = r.array("replay: prefixes")?;
        if n > MAX_PREFIXES {
            return Err(r.malformed("replay: too many prefixes"));
        }
        let mut prefixes = Vec::with_capacity(n);
        for _ in 0..n {
            prefixes.push(Topic::from_bytes(
                r.str_bytes("replay: prefix")?,
                rules,
                true,
            )?);
        }
        Ok(ReplayQuery {
            prefixes,
            from_time: read_opt(r, "replay: from time")?,
            to_time: read_opt(r, "replay: to time")?,
            from_iteration: read_opt(r, "replay: from iteration")?,
            to_iteration: read_opt(r, "replay: to iteration")?,
            limit: read_opt(r, "replay: limit")?,
        })
    }
}
