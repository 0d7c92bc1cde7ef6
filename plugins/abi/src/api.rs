//! The safe Rust side of the ABI: what a plugin author implements.

#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::path::Path;

use crate::ffi;

/// Why a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// May succeed later (a database is down, a disk is full): the host
    /// retries the same call with capped exponential backoff.
    Retryable(String),
    /// Will not succeed: the host stops this sink and reports the message.
    Fatal(String),
    /// From `write_batch` only: the batch holds an event the destination
    /// will never accept (a value too long for a column, a character the
    /// database refuses). The host narrows the batch down to the rejected
    /// events, records them in the sink's dead-letter file, and goes on.
    /// Return it only for such data errors: an event rejected is not
    /// written by this sink again.
    Rejected(String),
}

impl Error {
    /// A retryable error from anything displayable.
    pub fn retry(e: impl std::fmt::Display) -> Error {
        Error::Retryable(e.to_string())
    }

    /// A fatal error from anything displayable.
    pub fn fatal(e: impl std::fmt::Display) -> Error {
        Error::Fatal(e.to_string())
    }

    /// A rejection (see [`Error::Rejected`]) from anything displayable.
    pub fn reject(e: impl std::fmt::Display) -> Error {
        Error::Rejected(e.to_string())
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Error::Retryable(m) | Error::Fatal(m) | Error::Rejected(m) => m,
        }
    }

    /// The ABI status code.
    pub fn status(&self) -> i32 {
        match self {
            Error::Retryable(_) => ffi::STATUS_RETRY,
            Error::Fatal(_) => ffi::STATUS_FATAL,
            Error::Rejected(_) => ffi::STATUS_REJECTED,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Retryable(m) => write!(f, "retryable: {m}"),
            Error::Fatal(m) => write!(f, "fatal: {m}"),
            Error::Rejected(m) => write!(f, "rejected: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Result of a plugin call.
pub type Result<T> = std::result::Result<T, Error>;

/// Whether an event sets a value or deletes its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The topic holds the payload.
    Value,
    /// The topic was deleted.
    Tombstone,
}

impl Kind {
    /// Stable lowercase name: `value` or `tombstone`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Value => "value",
            Kind::Tombstone => "tombstone",
        }
    }

    /// The ABI byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Kind::Value => ffi::KIND_VALUE,
            Kind::Tombstone => ffi::KIND_TOMBSTONE,
        }
    }
}

/// One event, borrowed from the host for the duration of a call.
///
/// A zero-cost view: it has the layout of the ABI's
/// [`SpreadEvent`](ffi::SpreadEvent), so the batch the host passes is used
/// as it is, without a copy (the export layer only checks its text fields
/// for UTF-8, in place).
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Event<'a> {
    raw: ffi::SpreadEvent,
    _borrow: PhantomData<&'a [u8]>,
}

// SAFETY: an event only holds shared borrows of immutable bytes.
unsafe impl Send for Event<'_> {}
// SAFETY: as above.
unsafe impl Sync for Event<'_> {}

impl<'a> Event<'a> {
    /// An event over borrowed fields.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        iteration: u64,
        timestamp: u64,
        topic: &'a str,
        payload: &'a [u8],
        origin: &'a str,
        node: &'a str,
        id: [u8; 16],
        kind: Kind,
    ) -> Event<'a> {
        Event {
            raw: ffi::SpreadEvent {
                iteration,
                timestamp,
                topic: ffi::SpreadBytes::new(topic.as_bytes()),
                payload: ffi::SpreadBytes::new(payload),
                origin: ffi::SpreadBytes::new(origin.as_bytes()),
                node: ffi::SpreadBytes::new(node.as_bytes()),
                id,
                kind: kind.to_byte(),
                reserved: [0; 7],
            },
            _borrow: PhantomData,
        }
    }

    /// Views a batch the host passed.
    ///
    /// # Safety
    /// Every view in `raw` points to memory valid for `'a`, and its topic,
    /// origin and node are UTF-8 (the ABI's promise).
    pub unsafe fn from_ffi_slice(raw: &'a [ffi::SpreadEvent]) -> &'a [Event<'a>] {
        // SAFETY: `Event` is a transparent wrapper of `SpreadEvent`.
        std::slice::from_raw_parts(raw.as_ptr().cast::<Event<'a>>(), raw.len())
    }

    /// The ABI view of this event.
    pub fn as_ffi(&self) -> &ffi::SpreadEvent {
        &self.raw
    }

    fn bytes(b: ffi::SpreadBytes) -> &'a [u8] {
        if b.len == 0 || b.ptr.is_null() {
            &[]
        } else {
            // SAFETY: made from a borrow of `'a` (`new`) or promised by the
            // caller of `from_ffi_slice`.
            unsafe { std::slice::from_raw_parts(b.ptr, b.len) }
        }
    }

    fn text(b: ffi::SpreadBytes) -> &'a str {
        // SAFETY: made from a `&str` (`new`) or promised UTF-8 by the
        // caller of `from_ffi_slice` (the broker validates topics and
        // origins when it decodes them).
        unsafe { std::str::from_utf8_unchecked(Self::bytes(b)) }
    }

    /// Position in the log of the node that applied it.
    pub fn iteration(&self) -> u64 {
        self.raw.iteration
    }

    /// Microseconds since the Unix epoch.
    pub fn timestamp(&self) -> u64 {
        self.raw.timestamp
    }

    /// The topic.
    pub fn topic(&self) -> &'a str {
        Self::text(self.raw.topic)
    }

    /// The payload (empty for a tombstone).
    pub fn payload(&self) -> &'a [u8] {
        Self::bytes(self.raw.payload)
    }

    /// Who published it.
    pub fn origin(&self) -> &'a str {
        Self::text(self.raw.origin)
    }

    /// The node that applied it.
    pub fn node(&self) -> &'a str {
        Self::text(self.raw.node)
    }

    /// Globally unique id: the key for effectively-once storage.
    pub fn id(&self) -> [u8; 16] {
        self.raw.id
    }

    /// Value or tombstone.
    pub fn kind(&self) -> Kind {
        if self.raw.kind == ffi::KIND_TOMBSTONE {
            Kind::Tombstone
        } else {
            Kind::Value
        }
    }

    /// An owned copy.
    pub fn to_owned_event(&self) -> OwnedEvent {
        OwnedEvent {
            iteration: self.iteration(),
            timestamp: self.timestamp(),
            topic: self.topic().to_owned(),
            payload: self.payload().to_vec(),
            origin: self.origin().to_owned(),
            node: self.node().to_owned(),
            id: self.id(),
            kind: self.kind(),
        }
    }
}

impl std::fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("iteration", &self.iteration())
            .field("timestamp", &self.timestamp())
            .field("topic", &self.topic())
            .field("payload_len", &self.payload().len())
            .field("origin", &self.origin())
            .field("node", &self.node())
            .field("kind", &self.kind())
            .finish()
    }
}

impl PartialEq for Event<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iteration() == other.iteration()
            && self.timestamp() == other.timestamp()
            && self.topic() == other.topic()
            && self.payload() == other.payload()
            && self.origin() == other.origin()
            && self.node() == other.node()
            && self.id() == other.id()
            && self.kind() == other.kind()
    }
}

impl Eq for Event<'_> {}

/// An event that owns its fields: what an archive cursor returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEvent {
    /// Position in the log of the node that applied it.
    pub iteration: u64,
    /// Microseconds since the Unix epoch.
    pub timestamp: u64,
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Who published it.
    pub origin: String,
    /// The node that applied it.
    pub node: String,
    /// Globally unique id.
    pub id: [u8; 16],
    /// Value or tombstone.
    pub kind: Kind,
}

impl OwnedEvent {
    /// A borrowed view.
    pub fn as_event(&self) -> Event<'_> {
        Event::new(
            self.iteration,
            self.timestamp,
            &self.topic,
            &self.payload,
            &self.origin,
            &self.node,
            self.id,
            self.kind,
        )
    }
}

/// What a plugin instance is opened with.
#[derive(Debug, Clone, Copy)]
pub struct OpenContext<'a> {
    /// The instance's name in the broker configuration.
    pub name: &'a str,
    /// The plugin's own settings, as JSON text.
    pub config_json: &'a str,
    /// The broker's node id.
    pub node: &'a str,
    /// The broker's data directory.
    pub data_dir: &'a Path,
}

impl OpenContext<'_> {
    /// The settings deserialized into `T` (a fatal error names what is wrong).
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.config_json)
            .map_err(|e| Error::Fatal(format!("invalid settings for {}: {e}", self.name)))
    }
}

/// Which events an archive query returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    /// Topic prefixes, matched by whole segments; empty means every topic.
    pub prefixes: Vec<String>,
    /// Only events applied by this node.
    pub node: Option<String>,
    /// Earliest timestamp (µs), inclusive.
    pub from_time: Option<u64>,
    /// Latest timestamp (µs), exclusive.
    pub to_time: Option<u64>,
    /// Lowest iteration, inclusive.
    pub from_iteration: Option<u64>,
    /// Highest iteration, exclusive.
    pub to_iteration: Option<u64>,
    /// Most events returned.
    pub limit: Option<u64>,
}

impl Query {
    /// Whether `event` is in the query's range (ordering and limit aside).
    pub fn matches(&self, event: &Event<'_>) -> bool {
        let prefix_ok =
            self.prefixes.is_empty() || self.prefixes.iter().any(|p| covers(p, event.topic()));
        prefix_ok
            && self.node.as_deref().is_none_or(|n| n == event.node())
            && self.from_time.is_none_or(|t| event.timestamp() >= t)
            && self.to_time.is_none_or(|t| event.timestamp() < t)
            && self.from_iteration.is_none_or(|i| event.iteration() >= i)
            && self.to_iteration.is_none_or(|i| event.iteration() < i)
    }
}

/// Whether `prefix` covers `topic` by whole segments: `a/b` covers `a/b`
/// and `a/b/c`, never `a/bc`; the empty prefix covers everything.
pub fn covers(prefix: &str, topic: &str) -> bool {
    prefix.is_empty()
        || (topic.starts_with(prefix)
            && (topic.len() == prefix.len() || topic.as_bytes()[prefix.len()] == b'/'))
}

/// A sink: receives every event of the log, in iteration order, in batches.
///
/// The host calls one instance from one thread at a time. Delivery is at
/// least once: after a crash, events since the last successful `flush` come
/// again; [`Event::id`] lets a sink store each event exactly once.
pub trait Sink: Send + Sized + 'static {
    /// Opens an instance with its settings.
    fn open(ctx: &OpenContext<'_>) -> Result<Self>;

    /// Takes a batch of events. On error the host retries the same batch
    /// (retryable) or stops the sink (fatal).
    fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()>;

    /// Makes everything written so far durable; the host records its
    /// checkpoint only after this succeeds.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    /// Iterations `first..=last` were deleted by retention before this sink
    /// received them (only when the operator let retention ignore it).
    fn missed(&mut self, first: u64, last: u64) -> Result<()> {
        let _ = (first, last);
        Ok(())
    }

    /// Closes the instance (flushed first when the host stops cleanly).
    fn close(self) {}
}

/// An archive: answers queries over the events a sink stored.
///
/// `query` may be called from several threads at once.
pub trait Archive: Send + Sync + Sized + 'static {
    /// The cursor of one query.
    type Cursor: Cursor;

    /// Opens an instance with its settings.
    fn open(ctx: &OpenContext<'_>) -> Result<Self>;

    /// Starts a query: events in the range, ordered by timestamp, then
    /// origin, then id.
    fn query(&self, query: &Query) -> Result<Self::Cursor>;
}

/// The running query of an [`Archive`].
pub trait Cursor: Send + 'static {
    /// Replaces `page` with the next events; leaving it empty ends the query.
    fn next_page(&mut self, page: &mut Vec<OwnedEvent>) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(covers("a/b", "a/b"));
        assert!(covers("a/b", "a/b/c"));
        assert!(!covers("a/b", "a/bc"));
        assert!(!covers("a/b", "a"));
        assert!(covers("", "x"));
    }

    #[test]
    fn query_ranges_are_half_open() {
        let owned = OwnedEvent {
            iteration: 10,
            timestamp: 100,
            topic: "s/1".into(),
            payload: vec![],
            origin: "o".into(),
            node: "n".into(),
            id: [0; 16],
            kind: Kind::Value,
        };
        let e = owned.as_event();
        let q = Query {
            prefixes: vec!["s".into()],
            from_time: Some(100),
            to_time: Some(101),
            from_iteration: Some(10),
            to_iteration: Some(11),
            ..Query::default()
        };
        assert!(q.matches(&e));
        assert!(!Query {
            to_time: Some(100),
            ..q.clone()
        }
        .matches(&e));
        assert!(!Query {
            prefixes: vec!["s/1/x".into()],
            ..q.clone()
        }
        .matches(&e));
        assert!(!Query {
            node: Some("m".into()),
            ..q
        }
        .matches(&e));
    }
}
