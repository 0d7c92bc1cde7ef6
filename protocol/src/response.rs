//! Messages the broker sends to a client.

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::error::{ErrorCode, ProtocolError};
use crate::event::{Event, EventId, EventKind};
use crate::frame::{begin_frame, end_frame};
use crate::status::StatusReport;
use crate::topic::TopicRules;
use crate::wire::{self, Reader};

/// Message type codes of broker messages.
pub mod kind {
    /// Handshake answer.
    pub const WELCOME: u64 = 0x81;
    /// Answer to a ping.
    pub const PONG: u64 = 0x82;
    /// Answer to a publish, publish-if-absent or delete.
    pub const REPORT: u64 = 0x90;
    /// Answer to a get.
    pub const VALUE: u64 = 0x91;
    /// An event delivered to a subscription.
    pub const EVENT: u64 = 0x92;
    /// End of a subscription's snapshot.
    pub const SNAPSHOT_COMPLETE: u64 = 0x93;
    /// Answer to an unsubscribe.
    pub const UNSUBSCRIBED: u64 = 0x94;
    /// Notice that a slow subscription skipped intermediate events.
    pub const CONFLATED: u64 = 0x95;
    /// Notice that a history subscription asked for more than is retained.
    pub const HISTORY_TRUNCATED: u64 = 0x96;
    /// Answer to a status request.
    pub const STATUS: u64 = 0x97;
    /// End of a replay.
    pub const REPLAY_COMPLETE: u64 = 0x98;
    /// An error.
    pub const ERROR: u64 = 0xff;
}

/// Subscribers notified at each prefix level, from the root down to the topic.
pub type Counts = SmallVec<[u32; 8]>;

/// Publish status codes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishStatus {
    /// Applied: the event is now the topic's latest.
    New = 0,
    /// This exact event was applied before; nothing changed.
    Existing = 1,
    /// A later event is already there; nothing changed.
    TooLate = 2,
    /// Publish-if-absent found a live value; nothing changed.
    Present = 3,
}

impl PublishStatus {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishStatus::New => "new",
            PublishStatus::Existing => "existing",
            PublishStatus::TooLate => "too_late",
            PublishStatus::Present => "present",
        }
    }
}

/// An event's identity without its topic and payload: what a report says
/// about the events it names, so that a publish is not answered with a copy
/// of its own payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Summary {
    id: EventId,
    timestamp: u64,
    iteration: u64,
    origin: Bytes,
    kind: EventKind,
}

impl Summary {
    /// Event id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// Microseconds since the Unix epoch.
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// The broker's iteration of the event (0 when not applied).
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// Who wrote the event.
    pub fn origin(&self) -> &str {
        // Checked as UTF-8 when built from an event or decoded.
        std::str::from_utf8(&self.origin).unwrap_or_default()
    }

    /// Value or tombstone.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    fn read(r: &mut Reader<'_>) -> Result<Summary, ProtocolError> {
        r.array_of(5, "summary: array of 5")?;
        let raw = r.bin("summary: id")?;
        let id: [u8; 16] = raw[..]
            .try_into()
            .map_err(|_| r.malformed("summary: id must be 16 bytes"))?;
        let timestamp = r.uint("summary: timestamp")?;
        let iteration = r.uint("summary: iteration")?;
        let origin = r.str_bytes("summary: origin")?;
        let kind = match r.uint("summary: kind")? {
            0 => EventKind::Value,
            1 => EventKind::Tombstone,
            _ => return Err(r.malformed("summary: kind must be 0 or 1")),
        };
        Ok(Summary {
            id: EventId(id),
            timestamp,
            iteration,
            origin,
            kind,
        })
    }
}

impl From<&Event> for Summary {
    fn from(e: &Event) -> Summary {
        Summary {
            id: e.id(),
            timestamp: e.timestamp(),
            iteration: e.iteration(),
            origin: e.origin_bytes(),
            kind: e.kind(),
        }
    }
}

impl std::fmt::Debug for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Summary")
            .field("id", &self.id)
            .field("timestamp", &self.timestamp)
            .field("iteration", &self.iteration)
            .field("origin", &self.origin())
            .field("kind", &self.kind)
            .finish()
    }
}

/// The fields of a summary, borrowed from an event or a [`Summary`], for
/// encoding without copying or reference counting.
#[derive(Debug, Clone, Copy)]
pub struct SummaryRef<'a> {
    /// Event id.
    pub id: EventId,
    /// Microseconds since the Unix epoch.
    pub timestamp: u64,
    /// The broker's iteration (0 when not applied).
    pub iteration: u64,
    /// Who wrote the event.
    pub origin: &'a str,
    /// Value or tombstone.
    pub kind: EventKind,
}

impl SummaryRef<'_> {
    fn encode(&self, dst: &mut BytesMut) {
        wire::put_array(dst, 5);
        wire::put_bin(dst, &self.id.0);
        wire::put_uint(dst, self.timestamp);
        wire::put_uint(dst, self.iteration);
        wire::put_str(dst, self.origin);
        wire::put_uint(dst, self.kind as u64);
    }
}

impl<'a> From<&'a Event> for SummaryRef<'a> {
    fn from(e: &'a Event) -> Self {
        SummaryRef {
            id: e.id(),
            timestamp: e.timestamp(),
            iteration: e.iteration(),
            origin: e.origin(),
            kind: e.kind(),
        }
    }
}

impl<'a> From<&'a Summary> for SummaryRef<'a> {
    fn from(s: &'a Summary) -> Self {
        SummaryRef {
            id: s.id,
            timestamp: s.timestamp,
            iteration: s.iteration,
            origin: s.origin(),
            kind: s.kind,
        }
    }
}

/// Appends a report frame from borrowed parts (see the report table in
/// docs/protocol.md for which parts each status carries).
pub fn encode_report(
    dst: &mut BytesMut,
    req_id: u64,
    status: PublishStatus,
    event: SummaryRef<'_>,
    previous: Option<SummaryRef<'_>>,
    current: Option<&Event>,
    notified: &[u32],
) {
    let start = begin_frame(dst);
    wire::put_array(dst, 7);
    wire::put_uint(dst, kind::REPORT);
    wire::put_uint(dst, req_id);
    wire::put_uint(dst, status as u64);
    event.encode(dst);
    match previous {
        Some(p) => p.encode(dst),
        None => wire::put_nil(dst),
    }
    put_opt_event(dst, current);
    wire::put_array(dst, notified.len());
    for n in notified {
        wire::put_uint(dst, u64::from(*n));
    }
    end_frame(dst, start);
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: the event is now the topic's latest.
    New {
        /// The applied event, with its iteration.
        event: Summary,
        /// The event it replaced, if any.
        previous: Option<Summary>,
        /// Subscribers notified at each level, root first.
        notified: Counts,
    },
    /// This exact event was applied before; nothing changed.
    Existing {
        /// The stored event.
        event: Summary,
    },
    /// A later event is already there; nothing changed.
    TooLate {
        /// The event that was not applied (iteration 0).
        rejected: Summary,
        /// The current event, which wins; `None` for a client that may not
        /// read the topic.
        current: Option<Event>,
    },
    /// Publish-if-absent on a topic with a live value; nothing changed.
    Present {
        /// The current event's summary, or for a client that may not read
        /// the topic the rejected event's (iteration 0).
        event: Summary,
        /// The current event, unchanged; `None` for a client that may not
        /// read the topic.
        current: Option<Event>,
    },
}

impl Outcome {
    /// The wire status of this outcome.
    pub fn status(&self) -> PublishStatus {
        match self {
            Outcome::New { .. } => PublishStatus::New,
            Outcome::Existing { .. } => PublishStatus::Existing,
            Outcome::TooLate { .. } => PublishStatus::TooLate,
            Outcome::Present { .. } => PublishStatus::Present,
        }
    }

    /// The event the report is about: the one applied, found or rejected,
    /// or for `present` the current one.
    pub fn summary(&self) -> Summary {
        match self {
            Outcome::New { event, .. }
            | Outcome::Existing { event }
            | Outcome::Present { event, .. } => event.clone(),
            Outcome::TooLate { rejected, .. } => rejected.clone(),
        }
    }

    /// The topic's current event when the publish changed nothing
    /// (`too_late`, `present`) and the client may read it.
    pub fn current(&self) -> Option<&Event> {
        match self {
            Outcome::TooLate { current, .. } | Outcome::Present { current, .. } => current.as_ref(),
            Outcome::New { .. } | Outcome::Existing { .. } => None,
        }
    }
}

/// An error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The request it answers, or `None` for the connection as a whole.
    pub req_id: Option<u64>,
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// A broker message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Handshake accepted.
    Welcome {
        /// Protocol version the broker will speak.
        version: u64,
        /// The broker's node id.
        node_id: String,
        /// The broker's current iteration.
        iteration: u64,
    },
    /// Answer to a ping.
    Pong {
        /// Request id.
        req_id: u64,
    },
    /// Answer to a publish, publish-if-absent or delete.
    Report {
        /// Request id.
        req_id: u64,
        /// What happened.
        outcome: Outcome,
    },
    /// Answer to a get; `None` when the topic has no live value.
    Value {
        /// Request id.
        req_id: u64,
        /// The latest event, if live.
        event: Option<Event>,
    },
    /// An event for a subscription.
    Event {
        /// Subscription id.
        sub_id: u64,
        /// The event.
        event: Event,
    },
    /// The snapshot of a subscription is complete; live events follow.
    SnapshotComplete {
        /// Subscription id.
        sub_id: u64,
        /// The broker iteration the snapshot covers.
        iteration: u64,
    },
    /// The subscription is ended; no event for it follows.
    Unsubscribed {
        /// Request id.
        req_id: u64,
    },
    /// The subscription was too slow: intermediate values were skipped, the
    /// latest value of every changed topic was delivered.
    Conflated {
        /// Subscription id.
        sub_id: u64,
        /// How many events were replaced by later ones.
        skipped: u64,
    },
    /// The history asked for starts before the oldest retained event: the
    /// latest-value snapshot follows instead, then live events.
    HistoryTruncated {
        /// Subscription id.
        sub_id: u64,
        /// The oldest iteration still retained in the log.
        oldest: u64,
    },
    /// Answer to a status request.
    Status(StatusReport),
    /// A replay delivered all its events.
    ReplayComplete {
        /// Request id of the replay.
        req_id: u64,
        /// Events delivered.
        count: u64,
    },
    /// An error.
    Error(ErrorFrame),
}

fn put_opt_event(dst: &mut BytesMut, ev: Option<&Event>) {
    match ev {
        Some(e) => dst.put_slice(e.encoded()),
        None => wire::put_nil(dst),
    }
}

/// Appends an event delivery frame without building a [`Response`].
pub fn encode_event(dst: &mut BytesMut, sub_id: u64, event: &Event) {
    let start = begin_frame(dst);
    wire::put_array(dst, 3);
    wire::put_uint(dst, kind::EVENT);
    wire::put_uint(dst, sub_id);
    dst.put_slice(event.encoded());
    end_frame(dst, start);
}

impl Response {
    /// Appends this message as a complete frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Response::Event { sub_id, event } => return encode_event(dst, *sub_id, event),
            Response::Report { req_id, outcome } => {
                let summary = outcome.summary();
                let (previous, notified): (Option<&Summary>, &[u32]) = match outcome {
                    Outcome::New {
                        previous, notified, ..
                    } => (previous.as_ref(), notified),
                    _ => (None, &[]),
                };
                return encode_report(
                    dst,
                    *req_id,
                    outcome.status(),
                    SummaryRef::from(&summary),
                    previous.map(SummaryRef::from),
                    outcome.current(),
                    notified,
                );
            }
            _ => {}
        }
        let start = begin_frame(dst);
        match self {
            Response::Welcome {
                version,
                node_id,
                iteration,
            } => {
                wire::put_array(dst, 4);
                wire::put_uint(dst, kind::WELCOME);
                wire::put_uint(dst, *version);
                wire::put_str(dst, node_id);
                wire::put_uint(dst, *iteration);
            }
            Response::Pong { req_id } => {
                wire::put_array(dst, 2);
                wire::put_uint(dst, kind::PONG);
                wire::put_uint(dst, *req_id);
            }
            Response::Report { .. } => {}
            Response::Value { req_id, event } => {
                wire::put_array(dst, 3);
                wire::put_uint(dst, kind::VALUE);
                wire::put_uint(dst, *req_id);
                put_opt_event(dst, event.as_ref());
            }
            Response::Event { .. } => {}
            Response::SnapshotComplete { sub_id, iteration } => {
                wire::put_array(dst, 3);
                wire::put_uint(dst, kind::SNAPSHOT_COMPLETE);
                wire::put_uint(dst, *sub_id);
                wire::put_uint(dst, *iteration);
            }
            Response::Unsubscribed { req_id } => {
                wire::put_array(dst, 2);
                wire::put_uint(dst, kind::UNSUBSCRIBED);
                wire::put_uint(dst, *req_id);
            }
            Response::Conflated { sub_id, skipped } => {
                wire::put_array(dst, 3);
                wire::put_uint(dst, kind::CONFLATED);
                wire::put_uint(dst, *sub_id);
                wire::put_uint(dst, *skipped);
            }
            Response::HistoryTruncated { sub_id, oldest } => {
                wire::put_array(dst, 3);
                wire::put_uint(dst, kind::HISTORY_TRUNCATED);
                wire::put_uint(dst, *sub_id);
                wire::put_uint(dst, *oldest);
            }
            Response::Status(report) => {
                wire::put_array(dst, 7);
                wire::put_uint(dst, kind::STATUS);
                report.encode_fields(dst);
            }
            Response::ReplayComplete { req_id, count } => {
                wire::put_array(dst, 3);
                wire::put_uint(dst, kind::REPLAY_COMPLETE);
                wire::put_uint(dst, *req_id);
                wire::put_uint(dst, *count);
            }
            Response::Error(e) => {
                wire::put_array(dst, 4);
                wire::put_uint(dst, kind::ERROR);
                match e.req_id {
                    Some(id) => wire::put_uint(dst, id),
                    None => wire::put_nil(dst),
                }
                wire::put_uint(dst, e.code as u64);
                wire::put_str(dst, &e.message);
            }
        }
        end_frame(dst, start);
    }

    /// Decodes one frame body. Clients should pass permissive `rules`: the
    /// broker already enforced its own.
    pub fn decode(frame: &Bytes, rules: &TopicRules) -> Result<Response, ProtocolError> {
        let mut r = Reader::new(frame);
        let len = r.array_between(2, 16, "response: array")?;
        let code = r.uint("response: type code")?;
        let expect = |r: &Reader<'_>, n: usize| {
            if len == n {
                Ok(())
            } else {
                Err(r.malformed("response: wrong number of fields for this type"))
            }
        };
        let resp = match code {
            kind::WELCOME => {
                expect(&r, 4)?;
                Response::Welcome {
                    version: r.uint("welcome: version")?,
                    node_id: r.string("welcome: node id")?,
                    iteration: r.uint("welcome: iteration")?,
                }
            }
            kind::PONG => {
                expect(&r, 2)?;
                Response::Pong {
                    req_id: r.uint("pong: request id")?,
                }
            }
            kind::REPORT => {
                expect(&r, 7)?;
                let req_id = r.uint("report: request id")?;
                let status = r.uint("report: status")?;
                let event = Summary::read(&mut r)?;
                let previous = if r.nil() {
                    None
                } else {
                    Some(Summary::read(&mut r)?)
                };
                let current = if r.nil() {
                    None
                } else {
                    Some(Event::read(&mut r, rules)?)
                };
                let n = r.array("report: notified counts")?;
                let mut notified = Counts::new();
                for _ in 0..n {
                    notified.push(r.u32("report: notified count")?);
                }
                let outcome = match (status, previous, current) {
                    (0, previous, None) => Outcome::New {
                        event,
                        previous,
                        notified,
                    },
                    (1, None, None) => Outcome::Existing { event },
                    (2, None, current) => Outcome::TooLate {
                        rejected: event,
                        current,
                    },
                    (3, None, current) => Outcome::Present { event, current },
                    _ => return Err(r.malformed("report: fields do not match the status")),
                };
                Response::Report { req_id, outcome }
            }
            kind::VALUE => {
                expect(&r, 3)?;
                let req_id = r.uint("value: request id")?;
                let event = if r.nil() {
                    None
                } else {
                    Some(Event::read(&mut r, rules)?)
                };
                Response::Value { req_id, event }
            }
            kind::EVENT => {
                expect(&r, 3)?;
                let sub_id = r.uint("event: subscription id")?;
                let event = Event::read(&mut r, rules)?;
                Response::Event { sub_id, event }
            }
            kind::SNAPSHOT_COMPLETE => {
                expect(&r, 3)?;
                Response::SnapshotComplete {
                    sub_id: r.uint("snapshot complete: subscription id")?,
                    iteration: r.uint("snapshot complete: iteration")?,
                }
            }
            kind::UNSUBSCRIBED => {
                expect(&r, 2)?;
                Response::Unsubscribed {
                    req_id: r.uint("unsubscribed: request id")?,
                }
            }
            kind::CONFLATED => {
                expect(&r, 3)?;
                Response::Conflated {
                    sub_id: r.uint("conflated: subscription id")?,
                    skipped: r.uint("conflated: skipped")?,
                }
            }
            kind::HISTORY_TRUNCATED => {
                expect(&r, 3)?;
                Response::HistoryTruncated {
                    sub_id: r.uint("history truncated: subscription id")?,
                    oldest: r.uint("history truncated: oldest")?,
                }
            }
            kind::STATUS => {
                expect(&r, 7)?;
                Response::Status(StatusReport::read_fields(&mut r)?)
            }
            kind::REPLAY_COMPLETE => {
                expect(&r, 3)?;
                Response::ReplayComplete {
                    req_id: r.uint("replay complete: request id")?,
                    count: r.uint("replay complete: count")?,
                }
            }
            kind::ERROR => {
                expect(&r, 4)?;
                let req_id = if r.nil() {
                    None
                } else {
                    Some(r.uint("error: request id")?)
                };
                let raw = r.uint("error: code")?;
                let code = ErrorCode::from_u64(raw).ok_or(ProtocolError::UnknownErrorCode(raw))?;
                let message = r.string("error: message")?;
                Response::Error(ErrorFrame {
                    req_id,
                    code,
                    message,
                })
            }
            other => return Err(ProtocolError::UnknownMessage(other)),
        };
        r.finish()?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker frames shown in docs/protocol.md §9, byte for byte.
    #[test]
    fn documented_broker_examples() {
        let mut buf = BytesMut::new();
        Response::Welcome {
            version: 1,
            node_id: "node-373c38eaec9a".into(),
            iteration: 1_796_171_496_718_358,
        }
        .encode(&mut buf);
        let mut welcome = vec![0, 0, 0, 0x1f, 0x94, 0xcc, 0x81, 0x01, 0xb1];
        welcome.extend_from_slice(b"node-373c38eaec9a");
        welcome.extend_from_slice(&[0xcf, 0x00, 0x06, 0x61, 0x9b, 0xc4, 0x04, 0x80, 0x16]);
        assert_eq!(&buf[..], &welcome[..]);
        buf.clear();
        Response::Pong { req_id: 0 }.encode(&mut buf);
        Response::Value {
            req_id: 3,
            event: None,
        }
        .encode(&mut buf);
        assert_eq!(
            &buf[..],
            &[0, 0, 0, 4, 0x92, 0xcc, 0x82, 0x00, 0, 0, 0, 5, 0x93, 0xcc, 0x91, 0x03, 0xc0]
        );
    }
}
