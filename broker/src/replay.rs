//! Replays: a client asks for archived events (`replay`, 0x17); a job on
//! the read pool ([`crate::reads`]) queries the archive page by page and
//! streams the events to the connection as `event` frames under the request
//! id, parking while the connection's queue is full (so a slow reader bounds
//! memory and holds no thread), then sends `replay-complete` with the count.
//!
//! The archive is the query side of the first sink whose plugin has one
//! (the built-in SQL archive by default), opened at the first replay and
//! again after a failure. It lags the log by what its sink has not written
//! yet: a replay sees what the archive holds when each page is read.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parking_lot::Mutex;
use spread_plugin::{Kind, OpenContext, OwnedEvent, Query};
use spread_protocol::{
    ErrorCode, ErrorFrame, Event, EventId, EventKind, EventParts, ReplayQuery, Response,
};

use crate::reads::{ReadJob, Step};
use crate::session::Conn;
use crate::sinks::driver::{ArchiveDriver, Factory};

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

    /// The job serving one replay on the read pool.
    pub fn job(self: &Arc<Self>, conn: &Arc<Conn>, req_id: u64, query: ReplayQuery) -> Box<Replay> {
        Box::new(Replay {
            source: self.clone(),
            conn: conn.clone(),
            req_id,
            query,
            cursor: None,
            count: 0,
        })
    }
}

/// One replay in progress: a page of the archive per step.
pub struct Replay {
    source: Arc<ReplaySource>,
    conn: Arc<Conn>,
    req_id: u64,
    query: ReplayQuery,
    cursor: Option<Box<dyn crate::sinks::driver::CursorDriver>>,
    count: u64,
}

impl ReadJob for Replay {
    fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    fn step(&mut self) -> Step {
        if !self.conn.has_history_room() {
            return Step::Full;
        }
        let frame = match self.page() {
            Ok(true) => return Step::More,
            Ok(false) => Response::ReplayComplete {
                req_id: self.req_id,
                count: self.count,
            },
            Err(Gone) => return Step::Done,
        };
        self.conn.answer_now(&frame);
        Step::Done
    }
}

/// The connection went away (or the replay failed and was answered).
struct Gone;

impl Replay {
    /// Sends the next page; `Ok(false)` once there is none.
    fn page(&mut self) -> Result<bool, Gone> {
        match self.next_page() {
            // Nothing this connection may read in the page: read on.
            Ok(Some(events)) if events.is_empty() => Ok(true),
            Ok(Some(events)) => {
                self.count += events.len() as u64;
                let never = AtomicBool::new(false);
                if self.conn.push_history(self.req_id, events, &never) {
                    Ok(true)
                } else {
                    Err(Gone)
                }
            }
            Ok(None) => Ok(false),
            Err(message) => {
                // A failed archive is reopened at the next replay.
                self.source.archive.lock().take();
                tracing::warn!(req_id = self.req_id, "replay failed: {message}");
                self.conn.answer_now(&Response::Error(ErrorFrame {
                    req_id: Some(self.req_id),
                    code: ErrorCode::ArchiveUnavailable,
                    message: format!("the archive cannot be read: {message}"),
                }));
                Err(Gone)
            }
        }
    }

    /// Reads a page (`None` past the last), filtered by the connection's
    /// rights (the writer checks again; the count is what it receives).
    fn next_page(&mut self) -> Result<Option<Vec<Event>>, String> {
        let cursor = match &mut self.cursor {
            Some(c) => c,
            None => {
                let archive = self.source.archive().map_err(|e| e.message().to_owned())?;
                let q = &self.query;
                let query = Query {
                    prefixes: q.prefixes.iter().map(|p| p.as_str().to_owned()).collect(),
                    node: None,
                    from_time: q.from_time,
                    to_time: q.to_time,
                    from_iteration: q.from_iteration,
                    to_iteration: q.to_iteration,
                    limit: q.limit,
                };
                let cursor = archive.query(&query).map_err(|e| e.message().to_owned())?;
                self.cursor.insert(cursor)
            }
        };
        let mut page = Vec::new();
        cursor
            .next_page(&mut page)
            .map_err(|e| e.message().to_owned())?;
        if page.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            page.iter()
                .filter(|e| self.conn.may_read(&e.topic))
                .map(encode)
                .collect(),
        ))
    }
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
        // The archive does not keep it: replays are for reading, not for
        // replication.
        source: 0,
    }
    .encode()
}
