//! The status report: what an operator asks a broker about itself and its
//! sinks (`status` request 0x16, `status` answer 0x97).

use bytes::BytesMut;

use crate::error::ProtocolError;
use crate::wire::{self, Reader};

/// One sink as a status report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub last_error: Option<String>,
    /// Events the plugin rejected, kept in the sink's dead-letter file
    /// (counted over every run; 0 from brokers that predate it).
    pub rejected: u64,
}

/// The broker's answer to a status request.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub sinks: Vec<SinkStatus>,
}

/// Most sinks a report is decoded with (counts above are malformed).
const MAX_SINKS: usize = 4096;

fn put_opt_str(dst: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => wire::put_str(dst, s),
        None => wire::put_nil(dst),
    }
}

impl StatusReport {
    /// Appends the fields after the type code: `[req_id, node_id, iteration,
    /// committed, retained_from | nil, [sink...]]`, each sink being `[name,
    /// plugin, state, checkpoint, lag_events, lag_ms, delivered, errors,
    /// last_error | nil, rejected]` (decoders accept the 9 elements before
    /// `rejected` too, from older brokers).
    pub(crate) fn encode_fields(&self, dst: &mut BytesMut) {
        wire::put_uint(dst, self.req_id);
        wire::put_str(dst, &self.node_id);
        wire::put_uint(dst, self.iteration);
        wire::put_uint(dst, self.committed);
        match self.retained_from {
            Some(r) => wire::put_uint(dst, r),
            None => wire::put_nil(dst),
        }
        wire::put_array(dst, self.sinks.len());
        for s in &self.sinks {
            wire::put_array(dst, 10);
            wire::put_str(dst, &s.name);
            wire::put_str(dst, &s.plugin);
            wire::put_str(dst, &s.state);
            wire::put_uint(dst, s.checkpoint);
            wire::put_uint(dst, s.lag_events);
            wire::put_uint(dst, s.lag_ms);
            wire::put_uint(dst, s.delivered);
            wire::put_uint(dst, s.errors);
            put_opt_str(dst, s.last_error.as_deref());
            wire::put_uint(dst, s.rejected);
        }
    }

    /// Reads the fields written by [`encode_fields`](Self::encode_fields).
    pub(crate) fn read_fields(r: &mut Reader<'_>) -> Result<StatusReport, ProtocolError> {
        let req_id = r.uint("status: request id")?;
        let node_id = r.string("status: node id")?;
        let iteration = r.uint("status: iteration")?;
        let committed = r.uint("status: committed")?;
        let retained_from = if r.nil() {
            None
        } else {
            Some(r.uint("status: retained from")?)
        };
        let n = r.array("status: sinks")?;
        if n > MAX_SINKS {
            return Err(r.malformed("status: too many sinks"));
        }
        let mut sinks = Vec::with_capacity(n);
        for _ in 0..n {
            let fields = r.array_between(9, 10, "status: sink")?;
            sinks.push(SinkStatus {
                name: r.string("sink: name")?,
                plugin: r.string("sink: plugin")?,
                state: r.string("sink: state")?,
                checkpoint: r.uint("sink: checkpoint")?,
                lag_events: r.uint("sink: lag events")?,
                lag_ms: r.uint("sink: lag ms")?,
                delivered: r.uint("sink: delivered")?,
                errors: r.uint("sink: errors")?,
                last_error: if r.nil() {
                    None
                } else {
                    Some(r.string("sink: last error")?)
                },
                rejected: match fields {
                    10 => r.uint("sink: rejected")?,
                    _ => 0,
                },
            });
        }
        Ok(StatusReport {
            req_id,
            node_id,
            iteration,
            committed,
            retained_from,
            sinks,
        })
    }
}
