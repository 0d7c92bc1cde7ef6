//! The Spread wire protocol: frames, messages, codec and topic rules.
//!
//! This crate does no I/O; the broker and every client share it.
//!
//! # Frames
//!
//! ```text
//! +----------------+------------------------------------+
//! | length: u32 BE | body: one MessagePack array        |
//! +----------------+------------------------------------+
//! ```
//!
//! The body is `[type, field, ...]`: the first element is the message type
//! code ([`request::kind`], [`response::kind`]), the rest are the fields of
//! that type in a fixed order. The length is checked against the maximum
//! frame size before the body is buffered. Decoding is zero-copy: topics and
//! payloads are `Bytes` slices of the frame.
//!
//! An event is itself the array `[topic, payload, timestamp, origin, id,
//! iteration, kind]` ([`Event`]); the broker encodes it once and splices the
//! same bytes into every delivery.
//!
//! `docs/protocol.md` in the repository is the normative description.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod codec;
pub mod digest;
pub mod error;
pub mod event;
pub mod frame;
mod message;
pub mod replay;
pub mod request;
pub mod response;
pub mod status;
pub mod topic;
mod wire;

#[cfg(test)]
mod proptests;

pub use codec::{ClientCodec, ServerCodec};
pub use digest::{DigestEntry, DigestQuery, DigestReport};
pub use error::{ErrorCode, ProtocolError};
pub use event::{
    check_origin, Event, EventId, EventKind, EventParts, OrderKey, OriginError, MAX_EVENT_OVERHEAD,
    MAX_ORIGIN_LEN,
};
pub use frame::{DEFAULT_MAX_FRAME, HEADER_LEN};
pub use replay::ReplayQuery;
pub use request::{
    Delete, Hello, Publish, PublishMode, Request, Sources, SubscribeMode, NO_REPORT,
};
pub use response::{Counts, ErrorFrame, Outcome, PublishStatus, Response, Summary, SummaryRef};
pub use status::{PeerStatus, PeersReport, SinkStatus, StatusReport};
pub use topic::{Topic, TopicError, TopicRules};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u64 = 2;
/// Oldest protocol version this crate speaks: version 1 events have no
/// `source`, and a broker splices one encoding of each event into every
/// delivery, so it cannot send version 1 events to some connections only.
pub const MIN_PROTOCOL_VERSION: u64 = 2;
