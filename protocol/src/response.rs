//! Messages the broker sends to a client.

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::error::{ErrorCode, ProtocolError};
use crate::event::{Event, EventId, EventKind};
use crate::frame::{begin_frame, end_frame};
use crate::message::{messages, wire_struct, Wire};
use crate::status::{PeersReport, StatusReport};
use crate::topic::TopicRules;
use crate::wire::{self, Reader};

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
    wire::put_array(dst, 2 + <Outcome as Wire<Outcome>>::LEN);
    wire::put_uint(dst, kind::REPORT);
    wire::put_uint(dst, req_id);
    put_outcome(dst, status, event, previous, current, notified);
    end_frame(dst, start);
}

fn put_outcome(
    dst: &mut BytesMut,
    status: PublishStatus,
    event: SummaryRef<'_>,
    previous: Option<SummaryRef<'_>>,
    current: Option<&Event>,
    notified: &[u32],
) {
    wire::put_uint(dst, status as u64);
    event.encode(dst);
    match previous {
        Some(p) => p.encode(dst),
        None => wire::put_nil(dst),
    }
    match current {
        Some(e) => dst.put_slice(e.encoded()),
        None => wire::put_nil(dst),
    }
    wire::put_array(dst, notified.len());
    for n in notified {
        wire::put_uint(dst, u64::from(*n));
    }
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

wire_struct! {
    /// An error frame.
    #[derive(Debug, Clone, PartialEq, Eq)]
    inline "error"
    pub struct ErrorFrame {
        /// The request it answers, or `None` for the connection as a whole.
        pub req_id: Option<u64>,
        /// Stable code.
        pub code: ErrorCode,
        /// Human-readable detail.
        pub message: String,
    }
}

messages! {
    /// A broker message.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Response ("response") {
        /// Handshake accepted.
        WELCOME = 0x81, "welcome" => Welcome {
            /// Protocol version the broker will speak.
            version: u64,
            /// The broker's node id.
            node_id: String,
            /// The broker's current iteration.
            iteration: u64;
            /// The broker's run (see `source` in events): drawn at every
            /// start.
            incarnation: u64,
        },
        /// Answer to a ping.
        PONG = 0x82, "pong" => Pong {
            /// Request id.
            req_id: u64,
        },
        /// Answer to a publish, publish-if-absent or delete.
        REPORT = 0x90, "report" => Report {
            /// Request id.
            req_id: u64,
            /// What happened.
            outcome: Outcome,
        },
        /// Answer to a get; `None` when the topic has no live value.
        VALUE = 0x91, "value" => Value {
            /// Request id.
            req_id: u64,
            /// The latest event, if live.
            event: Option<Event>,
        },
        /// An event for a subscription.
        EVENT = 0x92, "event" => Event {
            /// Subscription id.
            sub_id: u64,
            /// The event.
            event: Event,
        },
        /// The snapshot of a subscription is complete; live events follow.
        SNAPSHOT_COMPLETE = 0x93, "snapshot-complete" => SnapshotComplete {
            /// Subscription id.
            sub_id: u64,
            /// The broker iteration the snapshot covers.
            iteration: u64,
        },
        /// The subscription is ended; no event for it follows.
        UNSUBSCRIBED = 0x94, "unsubscribed" => Unsubscribed {
            /// Request id.
            req_id: u64,
        },
        /// The subscription was too slow: intermediate values were skipped,
        /// the latest value of every changed topic was delivered.
        CONFLATED = 0x95, "conflated" => Conflated {
            /// Subscription id.
            sub_id: u64,
            /// How many events were replaced by later ones.
            skipped: u64,
        },
        /// The history asked for starts before the oldest retained event:
        /// the latest-value snapshot follows instead, then live events.
        HISTORY_TRUNCATED = 0x96, "history-truncated" => HistoryTruncated {
            /// Subscription id.
            sub_id: u64,
            /// The oldest iteration still retained in the log.
            oldest: u64,
        },
        /// Answer to a status request.
        STATUS = 0x97, "status" => Status(StatusReport),
        /// A replay delivered all its events.
        REPLAY_COMPLETE = 0x98, "replay-complete" => ReplayComplete {
            /// Request id of the replay.
            req_id: u64,
            /// Events delivered.
            count: u64,
        },
        /// Answer to a peers request.
        PEERS = 0x99, "peers" => Peers(PeersReport),
        /// Answer to a digest request.
        DIGEST = 0x9a, "digest" => Digest(crate::digest::DigestReport),
        /// An error.
        ERROR = 0xff, "error" => Error(ErrorFrame),
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

impl Wire<Summary> for Summary {
    fn put(v: &Summary, dst: &mut BytesMut) {
        SummaryRef::from(v).encode(dst);
    }
    fn read(r: &mut Reader<'_>, _: &TopicRules, _: &'static str) -> Result<Summary, ProtocolError> {
        Summary::read(r)
    }
    fn doc_type() -> String {
        "summary".into()
    }
}

/// A report's outcome is five elements whose presence depends on the
/// status (docs/protocol.md, the report table), so its layout is written
/// here rather than declared field by field.
impl Wire<Outcome> for Outcome {
    const LEN: usize = 5;

    fn put(outcome: &Outcome, dst: &mut BytesMut) {
        let (event, previous, notified): (&Summary, Option<&Summary>, &[u32]) = match outcome {
            Outcome::New {
                event,
                previous,
                notified,
            } => (event, previous.as_ref(), notified),
            Outcome::Existing { event } | Outcome::Present { event, .. } => (event, None, &[]),
            Outcome::TooLate { rejected, .. } => (rejected, None, &[]),
        };
        put_outcome(
            dst,
            outcome.status(),
            event.into(),
            previous.map(SummaryRef::from),
            outcome.current(),
            notified,
        );
    }

    fn read(
        r: &mut Reader<'_>,
        rules: &TopicRules,
        _: &'static str,
    ) -> Result<Outcome, ProtocolError> {
        let status = r.uint("report: status")?;
        let event = Summary::read(r)?;
        let previous = <Option<Summary>>::read(r, rules, "report: previous")?;
        let current = <Option<Event>>::read(r, rules, "report: current")?;
        let n = r.array("report: notified counts")?;
        let mut notified = Counts::new();
        for _ in 0..n {
            notified.push(r.u32("report: notified count")?);
        }
        Ok(match (status, previous, current) {
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
        })
    }

    fn doc_type() -> String {
        "outcome".into()
    }

    fn doc_fields(_: &str, out: &mut Vec<String>) {
        out.extend(
            [
                "`status: uint`",
                "`event: summary`",
                "`previous: summary|nil`",
                "`current: event|nil`",
                "`notified: [uint]`",
            ]
            .map(String::from),
        );
    }
}

#[cfg(test)]
mod arb {
    use proptest::prelude::*;

    use super::*;
    use crate::message::Arb;

    impl Arb<Summary> for Summary {
        fn arb() -> BoxedStrategy<Summary> {
            <Event as Arb<Event>>::arb()
                .prop_map(|e| Summary::from(&e))
                .boxed()
        }
    }

    impl Arb<Outcome> for Outcome {
        fn arb() -> BoxedStrategy<Outcome> {
            let summary = || <Summary as Arb<Summary>>::arb();
            let event = || <Event as Arb<Event>>::arb();
            prop_oneof![
                (
                    summary(),
                    proptest::option::of(summary()),
                    proptest::collection::vec(any::<u32>(), 0..10)
                )
                    .prop_map(|(event, previous, notified)| Outcome::New {
                        event,
                        previous,
                        notified: notified.into_iter().collect(),
                    }),
                summary().prop_map(|event| Outcome::Existing { event }),
                (summary(), proptest::option::of(event()))
                    .prop_map(|(rejected, current)| Outcome::TooLate { rejected, current }),
                (summary(), proptest::option::of(event()))
                    .prop_map(|(event, current)| Outcome::Present { event, current }),
            ]
            .boxed()
        }
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
            version: 2,
            node_id: "node-373c38eaec9a".into(),
            iteration: 1_796_171_496_718_358,
            incarnation: 0x0102_0304_0506_0708,
        }
        .encode(&mut buf);
        let mut welcome = vec![0, 0, 0, 0x28, 0x95, 0xcc, 0x81, 0x02, 0xb1];
        welcome.extend_from_slice(b"node-373c38eaec9a");
        welcome.extend_from_slice(&[0xcf, 0x00, 0x06, 0x61, 0x9b, 0xc4, 0x04, 0x80, 0x16]);
        welcome.extend_from_slice(&[0xcf, 1, 2, 3, 4, 5, 6, 7, 8]);
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
