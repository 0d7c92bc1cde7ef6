//! Events: one change of one topic, stored and sent in a single encoding.
//!
//! An [`Event`] owns exactly one buffer: its MessagePack encoding
//! `[topic, payload, timestamp, origin, id, iteration, kind, source]`. The broker
//! keeps that buffer as the topic's latest value and splices it unchanged
//! into every delivery frame, so an event is encoded once however many
//! subscribers receive it.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::topic::TopicRules;
use crate::wire::{self, Reader};

/// Longest origin, in bytes. Origins come from token subjects, certificate
/// names and node ids; bounding them bounds how much larger a stored event
/// is than the publish frame it came in (see [`MAX_EVENT_OVERHEAD`]) and
/// keeps them within every archive's column.
pub const MAX_ORIGIN_LEN: usize = 255;

/// Most bytes an event adds to the topic and payload of its publish frame:
/// the array header, the timestamp, the origin (at most [`MAX_ORIGIN_LEN`]
/// bytes and its header), the id, the iteration and the kind, rounded up.
pub const MAX_EVENT_OVERHEAD: usize = 512;

/// Why a string cannot be an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Nothing to name the writer by.
    #[error("an origin cannot be empty")]
    Empty,
    /// Longer than [`MAX_ORIGIN_LEN`].
    #[error("origin is {0} bytes long, the maximum is {MAX_ORIGIN_LEN}")]
    TooLong(usize),
    /// A control character (U+0000 to U+001F, U+007F).
    #[error("control character at byte {0} of the origin")]
    ControlChar(usize),
}

/// Checks that `origin` may name the writer of events: 1 to
/// [`MAX_ORIGIN_LEN`] bytes without control characters.
pub fn check_origin(origin: &str) -> Result<(), OriginError> {
    if origin.is_empty() {
        return Err(OriginError::Empty);
    }
    if origin.len() > MAX_ORIGIN_LEN {
        return Err(OriginError::TooLong(origin.len()));
    }
    match origin.bytes().position(|b| b < 0x20 || b == 0x7f) {
        Some(at) => Err(OriginError::ControlChar(at)),
        None => Ok(()),
    }
}

/// A globally unique event id (16 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EventId(pub [u8; 16]);

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Whether an event sets a value or deletes the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The topic holds the payload.
    Value = 0,
    /// The topic was deleted; the payload is empty.
    Tombstone = 1,
}

impl EventKind {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Value => "value",
            EventKind::Tombstone => "tombstone",
        }
    }
}

/// The fields that order two events of one topic: last writer wins by
/// timestamp, then origin, then id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey<'a> {
    /// Microseconds since the Unix epoch.
    pub timestamp: u64,
    /// Who wrote the event.
    pub origin: &'a str,
    /// The event's unique id.
    pub id: EventId,
}

/// One applied (or proposed) change of a topic.
///
/// Only the encoding and the spans of its variable-length fields are
/// kept (56 bytes, where every field decoded took 104: the latest-value
/// table holds one per topic); the fixed ones are read from the encoding
/// when asked. The encoding is canonical where those reads need it: the
/// id right after the origin, as a `bin 8` of 16 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    raw: Bytes,
    topic: Range<u32>,
    payload: Range<u32>,
    origin: Range<u32>,
}

/// Bytes of the id's encoding: `bin 8` marker, length, 16 bytes.
const ID_LEN: usize = 18;

/// The unsigned integer encoded at `at` of `raw` (any encoding
/// `Reader::uint` accepts; checked when the event was read or written), and
/// the bytes it takes.
#[inline]
fn uint_at(raw: &[u8], at: usize) -> (u64, usize) {
    let be = |n: usize| {
        raw[at + 1..at + 1 + n]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    };
    match raw[at] {
        m @ 0x00..=0x7f => (u64::from(m), 1),
        0xcc | 0xd0 => (be(1), 2),
        0xcd | 0xd1 => (be(2), 3),
        0xce | 0xd2 => (be(4), 5),
        _ => (be(8), 9),
    }
}

/// The parts of an event before it is encoded.
#[derive(Debug, Clone, Copy)]
pub struct EventParts<'a> {
    /// The topic changed.
    pub topic: &'a str,
    /// The new value (empty for a tombstone).
    pub payload: &'a [u8],
    /// Microseconds since the Unix epoch.
    pub timestamp: u64,
    /// Who wrote it: a node id or an authenticated subject.
    pub origin: &'a str,
    /// Unique id.
    pub id: EventId,
    /// The applying node's sequence number (0 when not applied).
    pub iteration: u64,
    /// Value or tombstone.
    pub kind: EventKind,
    /// The run of the node that first accepted the event (its
    /// incarnation, drawn at every start; 0 when unknown, as for events
    /// written before protocol version 2). A node never sends an event
    /// back to the run that accepted it.
    pub source: u64,
}

impl<'a> EventParts<'a> {
    /// The conflict-resolution key of these parts.
    pub fn order_key(&self) -> OrderKey<'_> {
        OrderKey {
            timestamp: self.timestamp,
            origin: self.origin,
            id: self.id,
        }
    }

    /// Encodes the parts into a new event with its own exact-size buffer.
    pub fn encode(&self) -> Event {
        let cap = 1
            + wire::header_len(self.topic.len())
            + wire::header_len(self.payload.len())
            + 9
            + wire::header_len(self.origin.len())
            + wire::header_len(16)
            + 9
            + 1
            + 9;
        let mut buf = BytesMut::with_capacity(cap);
        wire::put_array(&mut buf, 8);
        let topic_start = buf.len() + str_header(self.topic.len());
        wire::put_str(&mut buf, self.topic);
        let topic = topic_start..buf.len();
        let payload_start = buf.len() + bin_header(self.payload.len());
        wire::put_bin(&mut buf, self.payload);
        let payload = payload_start..buf.len();
        wire::put_uint(&mut buf, self.timestamp);
        let origin_start = buf.len() + str_header(self.origin.len());
        wire::put_str(&mut buf, self.origin);
        let origin = origin_start..buf.len();
        wire::put_bin(&mut buf, &self.id.0);
        wire::put_uint(&mut buf, self.iteration);
        wire::put_uint(&mut buf, self.kind as u64);
        wire::put_uint(&mut buf, self.source);
        Event {
            raw: buf.freeze(),
            topic: range32(topic),
            payload: range32(payload),
            origin: range32(origin),
        }
    }
}

fn str_header(len: usize) -> usize {
    match len {
        0..=31 => 1,
        32..=255 => 2,
        256..=65535 => 3,
        _ => 5,
    }
}

fn bin_header(len: usize) -> usize {
    match len {
        0..=255 => 2,
        256..=65535 => 3,
        _ => 5,
    }
}

fn range32(r: Range<usize>) -> Range<u32> {
    // Frames are far below 4 GiB (the length prefix is a u32).
    r.start as u32..r.end as u32
}

impl Event {
    /// Reads one event from a frame, validating its topic with `rules`.
    pub(crate) fn read(r: &mut Reader<'_>, rules: &TopicRules) -> Result<Event, ProtocolError> {
        let start = r.position();
        // Logs and archives written before protocol version 2 hold events
        // without a source.
        let len = r.array_between(7, 8, "event: array of 7 or 8")?;
        let topic = r.str_span("event: topic string")?;
        let topic_str = std::str::from_utf8(r.bytes_of(topic.clone()))
            .map_err(|_| r.malformed("event: topic string"))?;
        rules.check(topic_str, false)?;
        let payload = r.bin_span("event: payload binary")?;
        let timestamp = r.uint("event: timestamp")?;
        let origin = r.str_span("event: origin string")?;
        let id_span = r.bin_span("event: id binary")?;
        let id: [u8; 16] = r
            .bytes_of(id_span.clone())
            .try_into()
            .map_err(|_| r.malformed("event: id must be 16 bytes"))?;
        let iteration = r.uint("event: iteration")?;
        let kind = match r.uint("event: kind")? {
            0 => EventKind::Value,
            1 => EventKind::Tombstone,
            _ => return Err(r.malformed("event: kind must be 0 or 1")),
        };
        let source = if len == 8 {
            r.uint("event: source")?
        } else {
            0
        };
        let rel = |s: Range<usize>| range32(s.start - start..s.end - start);
        let event = Event {
            raw: r.slice_from(start),
            topic: rel(topic),
            payload: rel(payload),
            origin: rel(origin.clone()),
        };
        // `source` tells 7 fields from 8 by the fixarray header.
        let canonical = id_span.start == origin.end + 2 && event.raw[0] == 0x90 | len as u8;
        if canonical {
            return Ok(event);
        }
        // A longer header for the array or the id (a foreign encoder's):
        // stored re-encoded, so that the fields are where `Event` reads
        // them.
        Ok(EventParts {
            topic: event.topic(),
            payload: event.payload_bytes(),
            timestamp,
            origin: event.origin(),
            id: EventId(id),
            iteration,
            kind,
            source,
        }
        .encode())
    }

    /// Decodes an event stored on its own (as in a log record), checking
    /// topic syntax only.
    pub fn decode(raw: Bytes) -> Result<Event, ProtocolError> {
        let rules = TopicRules {
            max_len: usize::MAX,
            max_depth: usize::MAX,
        };
        let mut r = Reader::new(&raw);
        let event = Event::read(&mut r, &rules)?;
        r.finish()?;
        Ok(event)
    }

    /// The topic this event changed.
    pub fn topic(&self) -> &str {
        // SAFETY: the range was written by `put_str` from a `&str` or
        // checked as UTF-8 by `Reader::str_bytes`; `Bytes` is immutable.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(
                &self.raw[self.topic.start as usize..self.topic.end as usize],
            )
        }
    }

    /// The payload, sharing the event's buffer.
    pub fn payload(&self) -> Bytes {
        self.raw
            .slice(self.payload.start as usize..self.payload.end as usize)
    }

    /// The payload as a byte slice.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.raw[self.payload.start as usize..self.payload.end as usize]
    }

    /// Who wrote the event.
    pub fn origin(&self) -> &str {
        // SAFETY: as for `topic`.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(
                &self.raw[self.origin.start as usize..self.origin.end as usize],
            )
        }
    }

    /// The origin's bytes, sharing the event's buffer.
    pub fn origin_bytes(&self) -> Bytes {
        self.raw
            .slice(self.origin.start as usize..self.origin.end as usize)
    }

    /// Microseconds since the Unix epoch.
    #[inline]
    pub fn timestamp(&self) -> u64 {
        // Right after the payload.
        uint_at(&self.raw, self.payload.end as usize).0
    }

    /// Where the iteration is encoded: after the origin and the id.
    #[inline]
    fn iteration_at(&self) -> usize {
        self.origin.end as usize + ID_LEN
    }

    /// The applying node's sequence number (0 when not applied).
    #[inline]
    pub fn iteration(&self) -> u64 {
        uint_at(&self.raw, self.iteration_at()).0
    }

    /// Unique id.
    #[inline]
    pub fn id(&self) -> EventId {
        let at = self.origin.end as usize + 2;
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.raw[at..at + 16]);
        EventId(id)
    }

    /// Where the kind is encoded, after the iteration.
    #[inline]
    fn kind_at(&self) -> usize {
        let at = self.iteration_at();
        at + uint_at(&self.raw, at).1
    }

    /// Value or tombstone.
    pub fn kind(&self) -> EventKind {
        match uint_at(&self.raw, self.kind_at()).0 {
            0 => EventKind::Value,
            _ => EventKind::Tombstone,
        }
    }

    /// The run of the node that first accepted it (see
    /// [`EventParts::source`]).
    pub fn source(&self) -> u64 {
        // Events of 7 fields (before protocol version 2) have none.
        if self.raw[0] == 0x97 {
            return 0;
        }
        let at = self.kind_at();
        let at = at + uint_at(&self.raw, at).1;
        uint_at(&self.raw, at).0
    }

    /// Whether this event deletes its topic.
    pub fn is_tombstone(&self) -> bool {
        self.kind() == EventKind::Tombstone
    }

    /// The MessagePack encoding of the event.
    pub fn encoded(&self) -> &Bytes {
        &self.raw
    }

    /// The same event in a buffer of its own: for keeping an event that
    /// was read as a slice of a much larger buffer without pinning it.
    pub fn detached(&self) -> Event {
        Event {
            raw: Bytes::copy_from_slice(&self.raw),
            ..self.clone()
        }
    }

    /// The conflict-resolution key.
    pub fn order_key(&self) -> OrderKey<'_> {
        OrderKey {
            timestamp: self.timestamp(),
            origin: self.origin(),
            id: self.id(),
        }
    }

    /// Compares two events by last-writer-wins order.
    pub fn cmp_order(&self, other: &Event) -> Ordering {
        self.order_key().cmp(&other.order_key())
    }

    /// The parts of this event, borrowing its buffer.
    pub fn parts(&self) -> EventParts<'_> {
        EventParts {
            topic: self.topic(),
            payload: self.payload_bytes(),
            timestamp: self.timestamp(),
            origin: self.origin(),
            id: self.id(),
            iteration: self.iteration(),
            kind: self.kind(),
            source: self.source(),
        }
    }

    /// The same event numbered with another iteration (re-encoded).
    pub fn with_iteration(&self, iteration: u64) -> Event {
        EventParts {
            iteration,
            ..self.parts()
        }
        .encode()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("topic", &self.topic())
            .field("payload_len", &self.payload.len())
            .field("timestamp", &self.timestamp())
            .field("origin", &self.origin())
            .field("id", &self.id())
            .field("iteration", &self.iteration())
            .field("kind", &self.kind())
            .field("source", &self.source())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(topic: &'a str, payload: &'a [u8]) -> EventParts<'a> {
        EventParts {
            topic,
            payload,
            timestamp: 1_700_000_000_000_000,
            origin: "node-a",
            id: EventId([7; 16]),
            iteration: 42,
            kind: EventKind::Value,
            source: 0x5eed,
        }
    }

    #[test]
    fn encode_then_read_round_trips() {
        for len in [0usize, 1, 255, 256, 70_000] {
            let payload = vec![0xabu8; len];
            let topic = "t".repeat(40);
            let ev = parts(&topic, &payload).encode();
            let mut r = Reader::new(ev.encoded());
            let back = Event::read(&mut r, &TopicRules::default()).unwrap();
            r.finish().unwrap();
            assert_eq!(back, ev);
            assert_eq!(back.payload_bytes(), &payload[..]);
            assert_eq!(back.topic(), topic);
            assert_eq!(back.origin(), "node-a");
            assert_eq!(back.iteration(), 42);
            assert_eq!(back.source(), 0x5eed);
        }
    }

    /// Logs and archives written before protocol version 2 hold events of
    /// seven elements: they read with source 0.
    #[test]
    fn seven_element_events_read_with_no_source() {
        let ev = parts("a/b", b"v1").encode();
        let raw = ev.encoded();
        // The source is the last element: a 3-byte uint (0xcd 0x5e 0xed).
        let mut old = vec![0x97];
        old.extend_from_slice(&raw[1..raw.len() - 3]);
        let back = Event::decode(Bytes::from(old)).unwrap();
        assert_eq!(back.source(), 0);
        assert_eq!(back.order_key(), ev.order_key());
        assert_eq!(back.payload_bytes(), b"v1");
        assert_eq!(back.iteration(), 42);
    }

    /// Another encoder may use longer headers and other integer encodings
    /// than ours: the event reads the same, stored in the canonical form
    /// whose fixed offsets `Event` reads its fields at.
    #[test]
    fn longer_headers_and_signed_integers_read_the_same() {
        let mut raw = vec![0xdc, 0x00, 0x08]; // array 16 of 8
        raw.extend_from_slice(&[0xa3, b'a', b'/', b'b']); // topic
        raw.extend_from_slice(&[0xc4, 0x02, b'v', b'1']); // payload
        raw.push(0xd3); // timestamp as int 64
        raw.extend_from_slice(&1_700_000_000_000_000u64.to_be_bytes());
        raw.extend_from_slice(&[0xa6, b'n', b'o', b'd', b'e', b'-', b'a']);
        raw.extend_from_slice(&[0xc5, 0x00, 0x10]); // id as bin 16
        raw.extend_from_slice(&[7; 16]);
        raw.extend_from_slice(&[0xd1, 0x00, 42]); // iteration as int 16
        raw.extend_from_slice(&[0xcc, 0x00]); // kind as uint 8
        raw.extend_from_slice(&[0xce, 0x00, 0x00, 0x5e, 0xed]); // source
        let back = Event::decode(Bytes::from(raw)).unwrap();
        let ours = parts("a/b", b"v1").encode();
        assert_eq!(back.parts().order_key(), ours.order_key());
        assert_eq!(
            (back.iteration(), back.kind(), back.source()),
            (42, EventKind::Value, 0x5eed)
        );
        assert_eq!(back.encoded(), ours.encoded(), "stored canonical");
        // Our own encoding with signed integers in place of unsigned ones
        // keeps its bytes (the offsets do not move).
        let mut signed = ours.encoded().to_vec();
        let at = signed.len() - 3 - 1 - 1; // iteration (42, one byte) before kind and source
        assert_eq!(signed[at], 42);
        signed.splice(at..at + 1, [0xd0, 42]);
        let back = Event::decode(Bytes::from(signed.clone())).unwrap();
        assert_eq!((back.iteration(), back.source()), (42, 0x5eed));
        assert_eq!(&back.encoded()[..], &signed[..]);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn an_event_keeps_only_its_encoding_and_three_spans() {
        assert_eq!(std::mem::size_of::<Event>(), 56);
    }

    #[test]
    fn a_detached_event_owns_its_bytes_and_reads_the_same() {
        let ev = parts("a/b", b"payload").encode();
        let mut big = vec![0u8; 1000];
        big.extend_from_slice(ev.encoded());
        let shared = Bytes::from(big).slice(1000..);
        let sliced = Event::decode(shared).unwrap();
        let own = sliced.detached();
        assert_eq!(own, ev);
        assert_eq!(own.encoded().len(), ev.encoded().len());
        assert_ne!(own.encoded().as_ptr(), sliced.encoded().as_ptr());
        assert_eq!((own.topic(), own.payload_bytes()), ("a/b", &b"payload"[..]));
    }

    #[test]
    fn order_is_timestamp_then_origin_then_id() {
        let a = parts("x", b"1").encode();
        let mut p = parts("x", b"2");
        p.origin = "node-b";
        let b = p.encode();
        assert_eq!(a.cmp_order(&b), Ordering::Less);
        p.timestamp -= 1;
        let c = p.encode();
        assert_eq!(c.cmp_order(&a), Ordering::Less);
    }

    #[test]
    fn with_iteration_keeps_everything_else() {
        let a = parts("x/y", b"hello").encode();
        let b = a.with_iteration(99);
        assert_eq!(b.iteration(), 99);
        assert_eq!(b.topic(), "x/y");
        assert_eq!(b.payload_bytes(), b"hello");
        assert_eq!(b.order_key(), a.order_key());
    }

    #[test]
    fn origins_are_bounded_and_printable() {
        assert_eq!(check_origin(""), Err(OriginError::Empty));
        assert_eq!(check_origin("a\0"), Err(OriginError::ControlChar(1)));
        assert_eq!(
            check_origin(&"o".repeat(256)),
            Err(OriginError::TooLong(256))
        );
        assert_eq!(check_origin(&"o".repeat(255)), Ok(()));
        assert_eq!(check_origin("user/é"), Ok(()));
    }

    #[test]
    fn an_event_is_at_most_its_topic_and_payload_plus_the_overhead() {
        let origin = "o".repeat(MAX_ORIGIN_LEN);
        for payload_len in [0, 31, 32, 255, 256, 65_535, 65_536] {
            let payload = vec![0u8; payload_len];
            let e = EventParts {
                topic: "t",
                payload: &payload,
                timestamp: u64::MAX,
                origin: &origin,
                id: EventId([0xff; 16]),
                iteration: u64::MAX,
                kind: EventKind::Tombstone,
                source: u64::MAX,
            }
            .encode();
            assert!(e.encoded().len() <= 1 + payload_len + MAX_EVENT_OVERHEAD);
        }
    }
}
