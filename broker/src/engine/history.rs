//! History subscriptions: every event under a prefix after an iteration, in
//! order, then live, with no gap and no duplicate at the seam.
//!
//! Recent events are served from an in-memory ring ([`Recent`]). Older ones
//! are read back from the log by a catch-up job on the read pool, which
//! pushes them straight to the connection (parking while its queue is full,
//! so memory and threads stay bounded) and then asks the engine to attach
//! the subscription after the last iteration it read. The engine attaches
//! only if its ring holds every event since that point; otherwise the job
//! reads on. Each pass starts from
//! a later iteration, so the job converges as long as it reads faster than
//! the ring turns over.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hashbrown::HashMap;
use spread_protocol::{ErrorCode, ErrorFrame, Event, Topic};
use tokio::sync::mpsc;

use super::{Command, Engine, Subscriber};
use crate::log::committed::Committed;
use crate::log::cursor::{LogCursor, Missed};
use crate::reads::{Kind, Permit, ReadJob, Step};
use crate::session::{Conn, Outbound};

/// Bytes of history pushed to a connection at a time: what the cursor reads
/// at once, so that no step reads a chunk again.
const CHUNK_BYTES: usize = crate::log::cursor::CHUNK;

/// What history subscriptions are served from: the ring of recent events,
/// and the catch-ups reading older ones from the log.
pub(super) struct History {
    pub(super) recent: Recent,
    /// Cancellation flags of running catch-up jobs, by (connection, sub).
    /// Their places in the read limits, given back as soon as they are
    /// cancelled or attached (a cancelled job ends at its next step).
    pub(super) catchups: HashMap<(u64, u64), (Arc<AtomicBool>, Permit)>,
}

/// The most recent events, in iteration order.
pub struct Recent {
    events: VecDeque<Event>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// Every event with a greater iteration is in the ring.
    covered_from: u64,
}

impl Recent {
    /// An empty ring that covers everything after `start`.
    pub fn new(start: u64, max_events: usize, max_bytes: usize) -> Self {
        Recent {
            events: VecDeque::new(),
            bytes: 0,
            max_events: max_events.max(1),
            max_bytes,
            covered_from: start,
        }
    }

    /// Adds a just-applied event, forgetting the oldest beyond the limits.
    pub fn push(&mut self, event: Event) {
        self.bytes += event.encoded().len();
        self.events.push_back(event);
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.encoded().len();
            self.covered_from = old.iteration();
        }
    }

    /// Whether the ring holds every event after `after`.
    pub fn covers(&self, after: u64) -> bool {
        after >= self.covered_from
    }

    /// The events after `after` under `prefix`, in order, leaving out
    /// those of the sources in `skip_source`.
    pub fn after(
        &self,
        after: u64,
        prefix: &Topic,
        skip_source: spread_protocol::Sources,
    ) -> Vec<Event> {
        let start = self.events.partition_point(|e| e.iteration() <= after);
        self.events
            .range(start..)
            .filter(|e| wanted(e, prefix, skip_source))
            .cloned()
            .collect()
    }
}

/// Whether a history subscription to `prefix` skipping `skip_source`
/// delivers `event`.
fn wanted(event: &Event, prefix: &Topic, skip_source: spread_protocol::Sources) -> bool {
    prefix.covers(event.topic()) && !skip_source.contains(event.source())
}

/// Where a catch-up pass ended, as it asks the engine to attach.
pub(super) struct CaughtUp {
    /// Everything up to this iteration was delivered.
    pub after: u64,
    /// Retention deleted the events up to here before the job read them.
    pub deleted_through: Option<u64>,
    pub skip_source: spread_protocol::Sources,
}

impl Recent {}

/// A catch-up job: reads the log after `after` in slices on the read pool
/// (see [`crate::reads`]), then asks the engine to attach.
pub struct CatchUp {
    pub conn: Arc<Conn>,
    pub sub_id: u64,
    pub prefix: Topic,
    pub skip_source: spread_protocol::Sources,
    pub after: u64,
    /// The end of the current pass: the durable iteration when it began.
    pub until: Option<u64>,
    pub cursor: LogCursor,
    /// Events read and not yet pushed (reused between chunks).
    pub read: Vec<Event>,
    /// Highest iteration whose record is durable (see the durability policy).
    pub durable: Arc<Committed>,
    pub engine: mpsc::WeakSender<Command>,
    pub cancelled: Arc<AtomicBool>,
}

impl ReadJob for CatchUp {
    fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    fn step(&mut self) -> Step {
        if self.cancelled.load(Ordering::Acquire) {
            return Step::Done;
        }
        if !self.conn.has_history_room() {
            return Step::Full;
        }
        let until = *self.until.get_or_insert_with(|| self.durable.get());
        match self.read_chunk(until) {
            Ok(Chunk::More) => Step::More,
            Ok(Chunk::PassDone) => self.attach(until, None),
            Ok(Chunk::Deleted { through }) => self.attach(until, Some(through)),
            Ok(Chunk::Gone) => Step::Done,
            Err(message) => {
                tracing::error!(sub = self.sub_id, "history read failed: {message}");
                self.conn.push(Outbound::Close(Some(ErrorFrame {
                    req_id: None,
                    code: ErrorCode::Internal,
                    message: format!("cannot read the event log: {message}"),
                })));
                Step::Done
            }
        }
    }
}

/// What one step of a catch-up read.
enum Chunk {
    /// More to read in this pass.
    More,
    /// Everything up to the pass's end was pushed.
    PassDone,
    /// Retention deleted the events up to `through` before they were read.
    Deleted { through: u64 },
    /// The subscription or the connection is gone.
    Gone,
}

impl CatchUp {
    /// Pushes up to [`CHUNK_BYTES`] of the events in `after + 1 ..= until`.
    fn read_chunk(&mut self, until: u64) -> Result<Chunk, String> {
        self.read.clear();
        let missed = self
            .cursor
            .read(until, usize::MAX, CHUNK_BYTES, &mut self.read)
            .map_err(|e| e.to_string())?;
        if let Missed::Range { last, .. } = missed {
            return Ok(Chunk::Deleted { through: last });
        }
        let read_bytes: usize = self.read.iter().map(|e| e.encoded().len()).sum();
        let mut kept_bytes = 0;
        let mut batch: Vec<Event> = self
            .read
            .drain(..)
            .filter(|e| wanted(e, &self.prefix, self.skip_source))
            .inspect(|e| kept_bytes += e.encoded().len())
            .collect();
        // The events share the buffer of the chunk they were read in: when
        // the prefix keeps little of it, queueing them would pin whole
        // chunks per event; copy what is kept instead.
        if kept_bytes * 4 < read_bytes {
            batch = batch.iter().map(Event::detached).collect();
        }
        if !batch.is_empty() && !self.conn.push_history(self.sub_id, batch, &self.cancelled) {
            return Ok(Chunk::Gone);
        }
        // Short of the byte limit, the cursor read all there is up to
        // `until` (which may lie past the last record: iterations are not
        // dense after a restart).
        if read_bytes >= CHUNK_BYTES {
            self.after = self.cursor.position();
            Ok(Chunk::More)
        } else {
            self.after = until;
            Ok(Chunk::PassDone)
        }
    }

    /// The pass read everything up to `until` (or found events deleted
    /// under it): ask the engine to attach, which it does when its ring
    /// covers the rest; otherwise the job reads on.
    fn attach(&mut self, until: u64, deleted_through: Option<u64>) -> Step {
        self.until = None;
        let Some(engine) = self.engine.upgrade() else {
            return Step::Done;
        };
        let (reply, answer) = std::sync::mpsc::channel();
        let attach = Command::Attach {
            conn: self.conn.clone(),
            sub_id: self.sub_id,
            after: until,
            deleted_through,
            job: self.cancelled.clone(),
            skip_source: self.skip_source,
            reply,
        };
        if engine.blocking_send(attach).is_err() {
            return Step::Done;
        }
        drop(engine);
        match answer.recv() {
            Ok(true) => Step::More,
            _ => Step::Done,
        }
    }
}

impl Engine {
    /// Starts a history subscription: from the ring when it reaches back far
    /// enough, otherwise through a catch-up job reading the log.
    pub(super) fn subscribe_history(
        &mut self,
        conn: &Arc<Conn>,
        sub_id: u64,
        prefix: Topic,
        since: u64,
        skip_source: spread_protocol::Sources,
    ) {
        if let Some(oldest) = self.persist.log.retained_from() {
            if since.saturating_add(1) < oldest && !self.history.recent.covers(since) {
                return self.fall_back_to_latest(conn, sub_id, prefix, oldest, skip_source);
            }
        }
        if self.history.recent.covers(since) || since >= self.tree.iteration() {
            let events = self.history.recent.after(since, &prefix, skip_source);
            return self.attach(conn, sub_id, &prefix, events, skip_source);
        }
        let permit = match self.reads.admit(conn, Kind::CatchUp) {
            Ok(permit) => permit,
            Err(refused) => {
                if let Some(subs) = self.subs.get_mut(&conn.id) {
                    subs.remove(&sub_id);
                }
                return self.error(conn, sub_id, ErrorCode::TooManyReads, refused.to_string());
            }
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        self.history
            .catchups
            .insert((conn.id, sub_id), (cancelled.clone(), permit));
        let job = CatchUp {
            conn: conn.clone(),
            sub_id,
            prefix,
            skip_source,
            after: since,
            until: None,
            cursor: self.persist.log.cursor(since),
            read: Vec::new(),
            durable: self.persist.durable.clone(),
            engine: self.me.clone(),
            cancelled,
        };
        let task = self.reads.task(Box::new(job), None);
        self.fanout.start_after(conn, task);
    }

    /// A catch-up job read everything up to `after`: attach if the ring
    /// covers the rest, else answer `true` (read on). Retention deleted
    /// events the job had not read (`deleted_through`): fall back to the
    /// latest values, as for a subscription that asks for history gone.
    pub(super) fn attach_caught_up(
        &mut self,
        conn: &Arc<Conn>,
        sub_id: u64,
        caught_up: CaughtUp,
        job: &Arc<AtomicBool>,
        reply: std::sync::mpsc::Sender<bool>,
    ) {
        let CaughtUp {
            after,
            deleted_through,
            skip_source,
        } = caught_up;
        let prefix = self
            .subs
            .get(&conn.id)
            .and_then(|subs| subs.get(&sub_id))
            .cloned();
        let current = self
            .history
            .catchups
            .get(&(conn.id, sub_id))
            .is_some_and(|(flag, _)| Arc::ptr_eq(flag, job));
        let (Some(prefix), true) = (prefix, current) else {
            // Unsubscribed or disconnected meanwhile.
            let _ = reply.send(false);
            return;
        };
        if let Some(through) = deleted_through {
            self.history.catchups.remove(&(conn.id, sub_id));
            self.fall_back_to_latest(conn, sub_id, prefix, through + 1, skip_source);
            let _ = reply.send(false);
        } else if self.history.recent.covers(after) || after >= self.tree.iteration() {
            self.history.catchups.remove(&(conn.id, sub_id));
            let events = self.history.recent.after(after, &prefix, skip_source);
            self.attach(conn, sub_id, &prefix, events, skip_source);
            let _ = reply.send(false);
        } else {
            let _ = reply.send(true);
        }
    }

    /// The history asked for is gone: say so, send the latest value of every
    /// topic (the full state: the client replaces what it had, so deletes
    /// it missed show as absences, forgotten ones included), then go live,
    /// every event from there on.
    fn fall_back_to_latest(
        &mut self,
        conn: &Arc<Conn>,
        sub_id: u64,
        prefix: Topic,
        oldest: u64,
        skip_source: spread_protocol::Sources,
    ) {
        self.fanout
            .push(conn, Outbound::Truncated { sub_id, oldest });
        let events = self.tree.subscribe(
            &prefix,
            0,
            Subscriber {
                conn: conn.clone(),
                sub_id,
                exact: true,
                pending: false,
                filtered: !conn.reads_all_under(prefix.as_str()),
                skip_source,
            },
        );
        self.fanout.push(
            conn,
            Outbound::Snapshot {
                sub_id,
                events,
                iteration: self.tree.iteration(),
            },
        );
    }

    /// Registers the subscription live after delivering `events`.
    fn attach(
        &mut self,
        conn: &Arc<Conn>,
        sub_id: u64,
        prefix: &Topic,
        events: Vec<Event>,
        skip_source: spread_protocol::Sources,
    ) {
        self.tree.register(
            prefix,
            Subscriber {
                conn: conn.clone(),
                sub_id,
                exact: true,
                pending: false,
                filtered: !conn.reads_all_under(prefix.as_str()),
                skip_source,
            },
        );
        if !events.is_empty() {
            self.fanout.push(conn, Outbound::History { sub_id, events });
        }
        self.fanout.push(
            conn,
            Outbound::Synced {
                sub_id,
                iteration: self.tree.iteration(),
            },
        );
    }

    /// Stops the catch-up job of a subscription, if it has one, and gives
    /// back the subscribe's request credit, which its snapshot-complete
    /// would have returned.
    pub(super) fn cancel_catch_up(&mut self, conn: &Arc<Conn>, sub_id: u64) {
        if let Some((flag, _permit)) = self.history.catchups.remove(&(conn.id, sub_id)) {
            flag.store(true, Ordering::Release);
            // A job parked on the connection ends now, not when it drains.
            conn.resume_parked();
            self.fanout.push(
                conn,
                Outbound::Answers {
                    frames: bytes::Bytes::new(),
                    count: 1,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spread_protocol::{EventId, EventKind, EventParts, TopicRules};

    fn ev(iteration: u64, topic: &str) -> Event {
        EventParts {
            topic,
            payload: b"x",
            timestamp: iteration,
            origin: "n",
            id: EventId([0; 16]),
            iteration,
            kind: EventKind::Value,
            // Even iterations come from run 7, odd ones from run 8.
            source: 7 + iteration % 2,
        }
        .encode()
    }

    #[test]
    fn skipped_sources_are_left_out_and_no_source_skips_nothing() {
        let mut r = Recent::new(0, 10, usize::MAX);
        for i in 1..=6 {
            r.push(ev(i, "a"));
        }
        let root = Topic::root();
        let its = |events: Vec<Event>| events.iter().map(Event::iteration).collect::<Vec<_>>();
        assert_eq!(its(r.after(0, &root, 7.into())), [1, 3, 5]);
        assert_eq!(its(r.after(0, &root, 8.into())), [2, 4, 6]);
        assert_eq!(its(r.after(3, &root, 0.into())), [4, 5, 6]);
        let both = spread_protocol::Sources::of([7, 8]);
        assert!(r.after(0, &root, both).is_empty());
    }

    #[test]
    fn ring_covers_what_it_still_holds() {
        let mut r = Recent::new(10, 3, usize::MAX);
        assert!(r.covers(10));
        assert!(!r.covers(9));
        for i in 11..=15 {
            r.push(ev(i, if i % 2 == 0 { "a/x" } else { "b/y" }));
        }
        // Holds 13, 14, 15: covers everything after 12.
        assert!(r.covers(12));
        assert!(!r.covers(11));
        let a = Topic::prefix("a", &TopicRules::default()).unwrap();
        let got: Vec<u64> = r
            .after(12, &a, Default::default())
            .iter()
            .map(Event::iteration)
            .collect();
        assert_eq!(got, [14]);
        let all: Vec<u64> = r
            .after(13, &Topic::root(), Default::default())
            .iter()
            .map(Event::iteration)
            .collect();
        assert_eq!(all, [14, 15]);
    }
}
