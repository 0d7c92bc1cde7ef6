//! The queue between the engine and one connection's writer.
//!
//! The engine pushes a whole batch per connection under one lock and wakes
//! the writer once; the writer takes everything queued under one lock.
//!
//! Slow subscribers: live events are queued up to a byte budget. Past it the
//! connection *conflates*: each further event replaces the queued event of
//! the same subscription and topic, so memory is bounded by the number of
//! topics the connection follows, publishers never wait, and the subscriber
//! still ends with the latest value of every topic. The writer drains the
//! conflated events in iteration order after everything queued before them
//! and then sends a `Conflated` notice with the number of skipped events.
//! Answers to requests are never dropped; the reader stops reading new
//! requests while too many answers are outstanding (see `credits`).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};
use parking_lot::Mutex;
use spread_protocol::{ErrorCode, ErrorFrame, Event};
use tokio::sync::{Notify, Semaphore};

/// One item for a connection's writer.
#[derive(Debug)]
pub enum Outbound {
    /// Encoded answer frames (reports, values, pongs, errors).
    Answers {
        /// The frames, back to back.
        frames: Bytes,
        /// How many requests they answer.
        count: u32,
    },
    /// A live event for a subscription.
    Event {
        sub_id: u64,
        event: Event,
        /// Of a history subscription, which must get every event: never
        /// conflated; past the hard limit the connection is closed instead.
        exact: bool,
    },
    /// Events a history subscription reads back from the log.
    History {
        sub_id: u64,
        /// Events in iteration order.
        events: Vec<Event>,
    },
    /// A history subscription asked for events older than the log retains.
    Truncated {
        sub_id: u64,
        /// The oldest iteration still retained.
        oldest: u64,
    },
    /// A history subscription caught up and is live from `iteration`.
    Synced {
        sub_id: u64,
        /// The broker iteration it caught up to.
        iteration: u64,
    },
    /// The answer to a subscribe: the snapshot, then the snapshot marker.
    Snapshot {
        sub_id: u64,
        /// Latest events under the prefix, in any order.
        events: Vec<Event>,
        /// The iteration the snapshot covers.
        iteration: u64,
    },
    /// The answer to an unsubscribe.
    Unsubscribed {
        /// Request id.
        req_id: u64,
        sub_id: u64,
    },
    /// An answer that carries a large event (a value, a report's current
    /// event): kept as a reference to the stored event and encoded by the
    /// writer, so a thousand unread answers of one 8 MiB value hold one
    /// copy of it, not a thousand.
    Answer(Box<spread_protocol::Response>),
    /// The last item: the error to send, if any, then the connection closes.
    Close(Option<ErrorFrame>),
}

impl Outbound {
    /// How many requests this item answers (credits it returns).
    pub fn answers(&self) -> u32 {
        match self {
            Outbound::Answers { count, .. } => *count,
            Outbound::Snapshot { .. }
            | Outbound::Unsubscribed { .. }
            | Outbound::Synced { .. }
            | Outbound::Answer(_) => 1,
            Outbound::Event { .. }
            | Outbound::History { .. }
            | Outbound::Truncated { .. }
            | Outbound::Close(_) => 0,
        }
    }
}

/// Items staged for one connection, with what the queue needs to take them
/// in one move.
#[derive(Debug, Default)]
pub struct Batch {
    items: Vec<Outbound>,
    event_bytes: usize,
    /// Holds something other than answers and events.
    special: bool,
}

impl Batch {
    /// Appends an item.
    pub fn push(&mut self, item: Outbound) {
        match &item {
            Outbound::Event { event, .. } => self.event_bytes += event.encoded().len(),
            Outbound::Answers { .. } => {}
            _ => self.special = true,
        }
        self.items.push(item);
    }

    fn clear(&mut self) {
        self.items.clear();
        self.event_bytes = 0;
        self.special = false;
    }
}

/// A conflated event, keyed by subscription and topic.
#[derive(Debug)]
pub struct Conflated {
    pub sub_id: u64,
    /// The latest event of the topic.
    pub event: Event,
}

impl PartialEq for Conflated {
    fn eq(&self, other: &Self) -> bool {
        self.sub_id == other.sub_id && self.event.topic() == other.event.topic()
    }
}

impl Eq for Conflated {}

impl Hash for Conflated {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.sub_id.hash(state);
        self.event.topic().hash(state);
    }
}

#[derive(Default)]
struct Queue {
    items: Vec<Outbound>,
    event_bytes: usize,
    /// Bytes of history read back from the log, not yet taken.
    history_bytes: usize,
    conflated: HashSet<Conflated>,
    /// Bytes of the events in `conflated`.
    conflated_bytes: usize,
    skipped: HashMap<u64, u64>,
    closed: bool,
    /// Reads waiting for room (see [`crate::reads`]), resumed at the next
    /// take or at close.
    parked: Vec<crate::reads::Task>,
}

/// Bytes of history (catch-ups, replays) a connection may have queued
/// before its reads park.
pub const HISTORY_QUEUE_LIMIT: usize = 4 * 1024 * 1024;

/// How many times the conflation budget a history subscription may queue
/// before its connection is closed (it resumes from the log when it returns).
const EXACT_LIMIT_FACTOR: usize = 4;

/// How many times the budget the conflated latest values of a connection
/// may hold (one entry per subscription and topic, so many overlapping
/// subscriptions multiply it) before the connection is closed.
const CONFLATED_LIMIT_FACTOR: usize = 16;
/// The conflated bytes always allowed, whatever the budget.
const CONFLATED_LIMIT_MIN: usize = 64 * 1024;

impl Queue {
    /// Queues one item, conflating events past the budget.
    fn push_slow(&mut self, item: Outbound, budget: usize, stats: &Stats) {
        if self.closed {
            return;
        }
        match item {
            Outbound::Event {
                sub_id,
                event,
                exact: true,
            } => {
                self.event_bytes += event.encoded().len();
                if self.event_bytes > budget.saturating_mul(EXACT_LIMIT_FACTOR) {
                    stats.closed_slow.fetch_add(1, Ordering::Relaxed);
                    self.items.push(Outbound::Close(Some(ErrorFrame {
                        req_id: None,
                        code: ErrorCode::LimitExceeded,
                        message: format!(
                            "history subscription {sub_id} fell too far behind; \
                             resubscribe from the last iteration received"
                        ),
                    })));
                    self.closed = true;
                } else {
                    self.items.push(Outbound::Event {
                        sub_id,
                        event,
                        exact: true,
                    });
                }
            }
            Outbound::Event { sub_id, event, .. } => {
                let len = event.encoded().len();
                if !self.conflated.is_empty() || self.event_bytes + len > budget {
                    self.conflated_bytes += len;
                    if let Some(old) = self.conflated.replace(Conflated { sub_id, event }) {
                        self.conflated_bytes -= old.event.encoded().len();
                        *self.skipped.entry(sub_id).or_default() += 1;
                        stats.conflated.fetch_add(1, Ordering::Relaxed);
                    }
                    let limit = budget
                        .saturating_mul(CONFLATED_LIMIT_FACTOR)
                        .max(CONFLATED_LIMIT_MIN);
                    if self.conflated_bytes > limit {
                        stats.closed_slow.fetch_add(1, Ordering::Relaxed);
                        self.items.push(Outbound::Close(Some(ErrorFrame {
                            req_id: None,
                            code: ErrorCode::LimitExceeded,
                            message: format!(
                                "this connection fell too far behind: {} MiB of latest values \
                                 wait for it; reconnect and resume",
                                self.conflated_bytes >> 20
                            ),
                        })));
                        self.closed = true;
                    }
                } else {
                    self.event_bytes += len;
                    self.items.push(Outbound::Event {
                        sub_id,
                        event,
                        exact: false,
                    });
                }
            }
            Outbound::Unsubscribed { req_id, sub_id } => {
                if !self.conflated.is_empty() {
                    let mut gone = 0;
                    self.conflated.retain(|c| {
                        let keep = c.sub_id != sub_id;
                        if !keep {
                            gone += c.event.encoded().len();
                        }
                        keep
                    });
                    self.conflated_bytes -= gone;
                    self.skipped.remove(&sub_id);
                }
                self.items.push(Outbound::Unsubscribed { req_id, sub_id });
            }
            Outbound::Close(e) => {
                self.items.push(Outbound::Close(e));
                self.closed = true;
            }
            other => self.items.push(other),
        }
    }
}

/// What the writer takes in one go.
#[derive(Debug, Default)]
pub struct Taken {
    /// Conflated events, to write after the items.
    pub conflated: Vec<Conflated>,
    /// Skipped-event counts per subscription, for the notices.
    pub skipped: Vec<(u64, u64)>,
    /// The connection is closing: write what was taken, then stop.
    pub closed: bool,
}

/// Counters shared by all connections.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections closed because a history subscription fell too far behind.
    pub closed_slow: AtomicU64,
    /// Events replaced in a slow subscriber's queue.
    pub conflated: AtomicU64,
    /// Events written to subscribers.
    pub delivered: AtomicU64,
    /// Subscriptions refused: too many on their connection.
    pub refused_subscriptions: AtomicU64,
    /// Connections refused: too many from their address.
    pub refused_connections: AtomicU64,
    /// Publishes refused: over their connection's rate.
    pub rate_limited: AtomicU64,
    /// Connections closed for being idle.
    pub idle_closed: AtomicU64,
    /// Connections closed for bad input (malformed or oversized frames and
    /// the like; the log names the code of each).
    pub closed_for_bad_input: AtomicU64,
}

/// State shared by the engine and one connection's tasks.
pub struct Conn {
    /// Connection id, unique in this process.
    pub id: u64,
    /// Origin stamped on events this connection publishes.
    pub origin: Arc<str>,
    /// What its token lets it do; `None`: everything.
    pub rights: Option<crate::auth::rights::Rights>,
    queue: Mutex<Queue>,
    ready: Notify,
    /// Replays and catch-ups running for this connection.
    pub reads: AtomicUsize,
    /// Request credits: the reader takes one per request, the writer returns
    /// one per answer written.
    pub credits: Semaphore,
    /// How many credits there are (a batch of requests takes at most this
    /// many at once).
    pub max_inflight: usize,
    event_budget: usize,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("id", &self.id).finish()
    }
}

impl Conn {
    /// A connection with `max_inflight` request credits and an event queue
    /// budget of `event_budget` bytes before conflation.
    pub fn new(
        id: u64,
        origin: Arc<str>,
        max_inflight: usize,
        event_budget: usize,
        stats: Arc<Stats>,
    ) -> Self {
        Conn {
            id,
            origin,
            rights: None,
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            reads: AtomicUsize::new(0),
            credits: Semaphore::new(max_inflight),
            max_inflight,
            event_budget,
            stats,
        }
    }

    /// The same connection, limited to `rights`.
    pub fn with_rights(mut self, rights: Option<crate::auth::rights::Rights>) -> Self {
        self.rights = rights;
        self
    }

    /// Whether events of `topic` may be delivered to this connection (every
    /// delivery passes here, so a broader subscription never leaks).
    pub fn may_read(&self, topic: &str) -> bool {
        self.rights.as_ref().is_none_or(|r| r.can_read(topic))
    }

    /// Whether every event under `prefix` may be delivered to this
    /// connection (else a subscription of it filters at delivery).
    pub fn reads_all_under(&self, prefix: &str) -> bool {
        self.rights
            .as_ref()
            .is_none_or(|r| r.reads_all_under(prefix))
    }

    /// Whether this connection may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.rights.as_ref().is_none_or(|r| r.can_publish(topic))
    }

    /// Whether a subscription or replay of `prefix` may reach any topic.
    pub fn may_read_under(&self, prefix: &str) -> bool {
        self.rights
            .as_ref()
            .is_none_or(|r| r.may_read_under(prefix))
    }

    /// Appends a batch (leaving it empty) and wakes the writer once.
    pub fn push_batch(&self, batch: &mut Batch) {
        let mut q = self.queue.lock();
        if q.closed {
            batch.clear();
            return;
        }
        if !batch.special
            && q.conflated.is_empty()
            && q.event_bytes + batch.event_bytes <= self.event_budget
        {
            // The common case: take the whole batch in one move.
            q.event_bytes += batch.event_bytes;
            if q.items.is_empty() {
                std::mem::swap(&mut q.items, &mut batch.items);
            } else {
                q.items.append(&mut batch.items);
            }
        } else {
            for item in batch.items.drain(..) {
                q.push_slow(item, self.event_budget, &self.stats);
            }
        }
        batch.clear();
        drop(q);
        self.ready.notify_one();
    }

    /// Queues one item.
    pub fn push(&self, item: Outbound) {
        let mut batch = Batch::default();
        batch.push(item);
        self.push_batch(&mut batch);
    }

    /// Queues events read back from the log for a history subscription,
    /// unless `cancelled` (checked under the queue lock, so nothing is
    /// queued after the subscription ended). Returns `false` when the
    /// connection is closed or the subscription cancelled.
    pub fn push_history(&self, sub_id: u64, events: Vec<Event>, cancelled: &AtomicBool) -> bool {
        let mut q = self.queue.lock();
        if q.closed || cancelled.load(Ordering::Acquire) {
            return false;
        }
        q.history_bytes += events.iter().map(|e| e.encoded().len()).sum::<usize>();
        q.items.push(Outbound::History { sub_id, events });
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Whether history may be queued now (or the connection is closed,
    /// which a read learns when it pushes).
    pub fn has_history_room(&self) -> bool {
        let q = self.queue.lock();
        q.history_bytes <= HISTORY_QUEUE_LIMIT || q.closed
    }

    /// Parks a read until the writer takes the queue; hands it back when
    /// there is room already (checked under the lock the writer takes, so
    /// no wake-up is missed).
    pub fn park(&self, task: crate::reads::Task) -> Option<crate::reads::Task> {
        let mut q = self.queue.lock();
        if q.history_bytes <= HISTORY_QUEUE_LIMIT || q.closed {
            return Some(task);
        }
        q.parked.push(task);
        None
    }

    /// Resumes every parked read (those no longer wanted then end; the
    /// others park again).
    pub fn resume_parked(&self) {
        let parked = std::mem::take(&mut self.queue.lock().parked);
        parked.into_iter().for_each(crate::reads::Task::resume);
    }

    /// Marks the connection closed and wakes the writer to finish.
    pub fn close(&self) {
        let parked = {
            let mut q = self.queue.lock();
            q.closed = true;
            std::mem::take(&mut q.parked)
        };
        self.ready.notify_one();
        // They see the connection closed and end.
        parked.into_iter().for_each(crate::reads::Task::resume);
    }

    /// Waits until something is queued (or the connection closes).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Moves everything queued into `out` (which must be empty).
    pub fn take(&self, out: &mut Vec<Outbound>) -> Taken {
        let mut q = self.queue.lock();
        std::mem::swap(&mut q.items, out);
        q.event_bytes = 0;
        q.history_bytes = 0;
        let mut taken = Taken {
            closed: q.closed,
            ..Taken::default()
        };
        if !q.conflated.is_empty() {
            q.conflated_bytes = 0;
            taken.conflated = q.conflated.drain().collect();
            taken.skipped = q.skipped.drain().collect();
        }
        let parked = std::mem::take(&mut q.parked);
        drop(q);
        parked.into_iter().for_each(crate::reads::Task::resume);
        if !taken.conflated.is_empty() {
            taken
                .conflated
                .sort_unstable_by_key(|c| c.event.iteration());
        }
        taken
    }

    /// Counts events written to subscribers.
    pub fn count_delivered(&self, n: u64) {
        self.stats.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a subscription refused for being one too many.
    pub fn count_refused_subscription(&self) {
        self.stats
            .refused_subscriptions
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed for being idle.
    pub fn count_idle_closed(&self) {
        self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts publishes refused for exceeding the rate.
    pub fn count_rate_limited(&self, n: u64) {
        self.stats.rate_limited.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spread_protocol::{EventId, EventKind, EventParts};

    fn ev(topic: &str, iteration: u64) -> Event {
        EventParts {
            topic,
            payload: &[0u8; 100],
            timestamp: iteration,
            origin: "n",
            id: EventId([0; 16]),
            iteration,
            kind: EventKind::Value,
        }
        .encode()
    }

    fn conn(budget: usize) -> Conn {
        Conn::new(1, "n".into(), 16, budget, Arc::default())
    }

    #[test]
    fn conflated_values_of_many_overlapping_subscriptions_are_bounded() {
        // One topic, a thousand subscriptions: past 64 KiB of conflated
        // values (16 times a small budget), the connection is closed.
        let c = conn(300);
        let mut batch = Batch::default();
        for sub_id in 0..1_000u64 {
            batch.push(Outbound::Event {
                sub_id,
                event: ev("t", sub_id + 1),
                exact: false,
            });
        }
        c.push_batch(&mut batch);
        let mut items = Vec::new();
        let taken = c.take(&mut items);
        assert!(taken.closed, "never closed");
        assert!(taken.conflated.len() < 1_000);
        let closing = items
            .iter()
            .any(|i| matches!(i, Outbound::Close(Some(e)) if e.code == ErrorCode::LimitExceeded));
        assert!(closing, "{items:?}");
    }

    #[test]
    fn conflates_past_the_budget_and_keeps_latest_per_topic() {
        let c = conn(300);
        let mut batch = Batch::default();
        for i in 1..=10u64 {
            let topic = if i % 2 == 0 { "a" } else { "b" };
            batch.push(Outbound::Event {
                sub_id: 7,
                event: ev(topic, i),
                exact: false,
            });
        }
        c.push_batch(&mut batch);
        let mut items = Vec::new();
        let taken = c.take(&mut items);
        // Two ~120-byte events fit the budget; the rest were conflated.
        assert_eq!(items.len(), 2);
        let iters: Vec<u64> = taken
            .conflated
            .iter()
            .map(|x| x.event.iteration())
            .collect();
        assert_eq!(iters, [9, 10], "latest per topic, in iteration order");
        let skipped: u64 = taken.skipped.iter().map(|(_, n)| n).sum();
        assert_eq!(skipped, 6);
        assert_eq!(c.stats.conflated.load(Ordering::Relaxed), 6);
        // After the writer took everything, events queue normally again.
        c.push(Outbound::Event {
            sub_id: 7,
            event: ev("a", 11),
            exact: false,
        });
        let mut items = Vec::new();
        assert!(c.take(&mut items).conflated.is_empty());
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn unsubscribe_purges_conflated_events_of_that_subscription() {
        let c = conn(0);
        c.push(Outbound::Event {
            sub_id: 1,
            event: ev("a", 1),
            exact: false,
        });
        c.push(Outbound::Event {
            sub_id: 2,
            event: ev("a", 2),
            exact: false,
        });
        c.push(Outbound::Unsubscribed {
            req_id: 9,
            sub_id: 1,
        });
        let mut items = Vec::new();
        let taken = c.take(&mut items);
        assert_eq!(taken.conflated.len(), 1);
        assert_eq!(taken.conflated[0].sub_id, 2);
    }

    #[test]
    fn exact_events_are_never_conflated_but_close_past_the_hard_limit() {
        let c = conn(300);
        let len = ev("a", 1).encoded().len();
        let n = 4 * 300 / len + 2;
        for i in 1..=n as u64 {
            c.push(Outbound::Event {
                sub_id: 3,
                event: ev("a", i),
                exact: true,
            });
        }
        let mut items = Vec::new();
        let taken = c.take(&mut items);
        assert!(taken.conflated.is_empty());
        // More than 4 × 300 bytes: the connection closes with a clear error
        // instead of dropping or conflating.
        assert!(taken.closed);
        match items.last() {
            Some(Outbound::Close(Some(e))) => assert_eq!(e.code, ErrorCode::LimitExceeded),
            other => panic!("{other:?}"),
        }
        let events = items
            .iter()
            .filter(|i| matches!(i, Outbound::Event { .. }))
            .count();
        assert_eq!(
            events,
            4 * 300 / len,
            "everything within the limit is kept, in order"
        );
    }

    #[test]
    fn nothing_is_queued_after_close() {
        let c = conn(1000);
        c.push(Outbound::Close(Some(ErrorFrame {
            req_id: None,
            code: spread_protocol::ErrorCode::MalformedFrame,
            message: "bad".into(),
        })));
        c.push(Outbound::Answers {
            frames: Bytes::from_static(b"x"),
            count: 1,
        });
        let mut items = Vec::new();
        let taken = c.take(&mut items);
        assert!(taken.closed);
        assert_eq!(items.len(), 1);
    }
}
