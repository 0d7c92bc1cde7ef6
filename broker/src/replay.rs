//! Replays: a client asks for archived events (`replay`, 0x17); a blocking
//! job queries the archive page by page and streams the events to the
//! connection as `event` frames under the request id, waiting for room in
//! the connection's queue (so a slow reader bounds memory), then sends
//! `replay-complete` with the count.
//!
//! The archive is the query side of the first sink whose plugin has one
//! (the built-in SQL archive by default), opened at the first replay and
//! again after a failure. It lags the log by what its sink has not written
//! yet: a replay sees what the archive holds when each page is read.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use spread_plugin::{Kind, OpenContext, OwnedEvent, Query};
use spread_protocol::{
    ErrorCode, ErrorFrame, Event, EventId, EventKind, EventParts, ReplayQuery, Response,
};

use crate::connection::outbound::{Conn, Outbound};
use crate::sinks::driver::{ArchiveDriver, Factory};

/// Bytes of replayed events queued per connection before the job waits.
const QUEUED_LIMIT: usize = 4 * 1024 * 1024;

/// Where replays are served from.
pub struct ReplaySource {
    sink: String,
    factory: Arc<dyn Factory>,
    settings: String,
    node: Arc<str>,
    data_dir: PathBuf,
    archive: Mutex<Option<Arc<dyn ArchiveDriver>>>,
}

impl ReplaySource {
    /// The archive of sink `sink`, opened with its settings on first use.
    pub fn new(
        sink: &str,
        factory: Arc<dyn Factory>,
        settings: String,
        node: Arc<str>,
        data_dir: PathBuf,
    ) -> ReplaySource {
        ReplaySource {
            sink: sink.to_owned(),
            factory,
            settings,
            node,
            data_dir,
            archive: Mutex::new(None),
        }
    }

    /// The sink whose archive this is.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    fn archive(&self) -> Result<Arc<dyn ArchiveDriver>, spread_plugin::Error> {
        let mut slot = self.archive.lock();
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let ctx = OpenContext {
            name: &self.sink,
            config_json: &self.settings,
            node: &self.node,
            data_dir: &self.data_dir,
        };
        let archive: Arc<dyn ArchiveDriver> = self.factory.open_archive(&ctx)?.into();
        *slot = Some(archive.clone());
        Ok(archive)
    }

    /// Serves one replay on a thread of its own (not one of the broker's
    /// runtime: archive plugins may block on runtimes of their own).
    pub fn start(self: &Arc<Self>, conn: Arc<Conn>, req_id: u64, query: ReplayQuery) {
        let source = self.clone();
        let conn2 = conn.clone();
        let job = move || {
            let outcome = source.run(&conn, req_id, &query);
            let frame = match outcome {
                Ok(Some(count)) => Response::ReplayComplete { req_id, count },
                Ok(None) => return,
                Err(message) => {
                    // A failed archive is reopened at the next replay.
                    source.archive.lock().take();
                    tracing::warn!(req_id, "replay failed: {message}");
                    Response::Error(ErrorFrame {
                        req_id: Some(req_id),
                        code: ErrorCode::ArchiveUnavailable,
                        message: format!("the archive cannot be read: {message}"),
                    })
                }
            };
            answer(&conn, frame);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("spread-replay".into())
            .spawn(job)
        {
            tracing::error!("cannot start a replay thread: {e}");
            let frame = Response::Error(ErrorFrame {
                req_id: Some(req_id),
                code: ErrorCode::Internal,
                message: format!("cannot start the replay: {e}"),
            });
            answer(&conn2, frame);
        }
    }

    /// Streams the events; `Ok(None)` when the connection went away.
    fn run(&self, conn: &Conn, req_id: u64, q: &ReplayQuery) -> Result<Option<u64>, String> {
        let archive = self.archive().map_err(|e| e.message().to_owned())?;
        let query = Query {
            prefixes: q.prefixes.iter().map(|p| p.as_str().to_owned()).collect(),
            node: None,
            from_time: q.from_time,
            to_time: q.to_time,
            from_iteration: q.from_iteration,
            to_iteration: q.to_iteration,
            limit: q.limit,
        };
        let mut cursor = archive.query(&query).map_err(|e| e.message().to_owned())?;
        let never = AtomicBool::new(false);
        let (mut page, mut count) = (Vec::new(), 0u64);
        loop {
            page.clear();
            cursor
                .next_page(&mut page)
                .map_err(|e| e.message().to_owned())?;
            if page.is_empty() {
                return Ok(Some(count));
            }
            // Rights: only what this connection may read (the writer checks
            // again); the count is what it receives.
            let events: Vec<Event> = page
                .iter()
                .filter(|e| conn.may_read(&e.topic))
                .map(encode)
                .collect();
            count += events.len() as u64;
            conn.wait_for_history_room(QUEUED_LIMIT);
            if !conn.push_history(req_id, events, &never) {
                return Ok(None);
            }
        }
    }
}

/// Queues the frame that ends a replay (and releases its request credit).
fn answer(conn: &Conn, frame: Response) {
    let mut frames = BytesMut::new();
    frame.encode(&mut frames);
    conn.push(Outbound::Answers {
        frames: frames.freeze(),
        count: 1,
    });
}

/// An archived event in wire form.
fn encode(e: &OwnedEvent) -> Event {
    EventParts {
        topic: &e.topic,
        payload: &e.payload,
        timestamp: e.timestamp,
        origin: &e.origin,
        id: EventId(e.id),
        iteration: e.iteration,
        kind: match e.kind {
            Kind::Value => EventKind::Value,
            Kind::Tombstone => EventKind::Tombstone,
        },
    }
    .encode()
}
