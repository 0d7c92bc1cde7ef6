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
use crate::log::LogReader;
use crate::reads::{Kind, Permit, ReadJob, Step};
use crate::session::{Conn, Outbound};

/// Bytes of history pushed to a connection at a time.
const CHUNK_BYTES: usize = 256 * 1024;

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

    /// The events after `after` under `prefix`, in order.
    pub fn after(&self, after: u64, prefix: &Topic) -> Vec<Event> {
        let start = self.events.partition_point(|e| e.iteration() <= after);
        self.events
            .range(start..)
            .filter(|e| prefix.covers(e.topic()))
            .cloned()
            .collect()
    }
}

/// A catch-up job: reads the log after `after` in slices on the read pool
/// (see [`crate::reads`]), then asks the engine to attach.
pub struct CatchUp {
    pub conn: Arc<Conn>,
    pub sub_id: u64,
    pub prefix: Topic,
    pub after: u64,
    /// The end of the current pass: the durable iteration when it began.
    pub until: Option<u64>,
    pub reader: LogReader,
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
            Ok(Some(true)) => Step::More,
            Ok(Some(false)) => self.attach(until),
            Ok(None) => Step::Done,
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

impl CatchUp {
    /// Pushes up to a chunk of the events in `after + 1 ..= until`.
    /// `Some(true)`: more to read in this pass; `Some(false)`: the pass is
    /// done; `None`: the subscription or the connection is gone.
    fn read_chunk(&mut self, until: u64) -> Result<Option<bool>, String> {
        let mut batch = Vec::new();
        let (mut bytes, mut last, mut full) = (0, self.after, false);
        self.reader
            .read(self.after, until, |event| {
                last = event.iteration();
                if self.prefix.covers(event.topic()) {
                    bytes += event.encoded().len();
                    batch.push(event);
                }
                full = bytes >= CHUNK_BYTES;
                !full
            })
            .map_err(|e| e.to_string())?;
        if !batch.is_empty() && !self.conn.push_history(self.sub_id, batch, &self.cancelled) {
            return Ok(None);
        }
        self.after = if full { last } else { until };
        Ok(Some(full))
    }

    /// The pass read everything up to `until`: ask the engine to attach;
    /// it answers with a fresh reader when the ring does not reach back.
    fn attach(&mut self, until: u64) -> Step {
        self.until = None;
        let Some(engine) = self.engine.upgrade() else {
            return Step::Done;
        };
        let (reply, answer) = std::sync::mpsc::channel();
        let attach = Command::Attach {
            conn: self.conn.clone(),
            sub_id: self.sub_id,
            after: until,
            job: self.cancelled.clone(),
            reply,
        };
        if engine.blocking_send(attach).is_err() {
            return Step::Done;
        }
        drop(engine);
        match answer.recv() {
            Ok(Some(fresh)) => {
                self.reader = fresh;
                Step::More
            }
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
    ) {
        if let Some(oldest) = self.persist.log.retained_from() {
            if since.saturating_add(1) < oldest && !self.history.recent.covers(since) {
                return self.fall_back_to_latest(conn, sub_id, prefix, oldest);
            }
        }
        if self.history.recent.covers(since) || since >= self.tree.iteration() {
            let events = self.history.recent.after(since, &prefix);
            return self.attach(conn, sub_id, &prefix, events);
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
            after: since,
            until: None,
            reader: self.persist.log.reader(),
            durable: self.persist.durable.clone(),
            engine: self.me.clone(),
            cancelled,
        };
        let task = self.reads.task(Box::new(job), None);
        self.fanout.start_after(conn, task);
    }

    /// A catch-up job read everything up to `after`: attach if the ring
    /// covers the rest, else send the job a fresh reader.
    pub(super) fn attach_caught_up(
        &mut self,
        conn: &Arc<Conn>,
        sub_id: u64,
        after: u64,
        job: &Arc<AtomicBool>,
        reply: std::sync::mpsc::Sender<Option<LogReader>>,
    ) {
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
            let _ = reply.send(None);
            return;
        };
        if self.history.recent.covers(after) || after >= self.tree.iteration() {
            self.history.catchups.remove(&(conn.id, sub_id));
            let events = self.history.recent.after(after, &prefix);
            self.attach(conn, sub_id, &prefix, events);
            let _ = reply.send(None);
        } else {
            let _ = reply.send(Some(self.persist.log.reader()));
        }
    }

    /// The history asked for is gone: say so, send the latest value of every
    /// topic (the full state: the client replaces what it had, so deletes
    /// it missed show as absences, forgotten ones included), then go live,
    /// every event from there on.
    fn fall_back_to_latest(&mut self, conn: &Arc<Conn>, sub_id: u64, prefix: Topic, oldest: u64) {
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
    fn attach(&mut self, conn: &Arc<Conn>, sub_id: u64, prefix: &Topic, events: Vec<Event>) {
        self.tree.register(
            prefix,
            Subscriber {
                conn: conn.clone(),
                sub_id,
                exact: true,
                pending: false,
                filtered: !conn.reads_all_under(prefix.as_str()),
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
        }
        .encode()
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
        let got: Vec<u64> = r.after(12, &a).iter().map(Event::iteration).collect();
        assert_eq!(got, [14]);
        let all: Vec<u64> = r
            .after(13, &Topic::root())
            .iter()
            .map(Event::iteration)
            .collect();
        assert_eq!(all, [14, 15]);
    }
}
