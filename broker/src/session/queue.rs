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
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};
use spread_protocol::{ErrorCode, ErrorFrame, Event};

use super::{Budget, Stats};

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
    pub(super) items: Vec<Outbound>,
    pub(super) event_bytes: usize,
    /// Holds something other than answers and events.
    pub(super) special: bool,
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

    pub(super) fn clear(&mut self) {
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
pub(super) struct Queue {
    pub(super) items: Vec<Outbound>,
    pub(super) event_bytes: usize,
    /// Bytes of history read back from the log, not yet taken.
    pub(super) history_bytes: usize,
    pub(super) conflated: HashSet<Conflated>,
    /// Bytes of the events in `conflated`.
    pub(super) conflated_bytes: usize,
    pub(super) skipped: HashMap<u64, u64>,
    pub(super) closed: bool,
    /// Reads waiting for room (see [`crate::reads`]), resumed at the next
    /// take or at close.
    pub(super) parked: Vec<crate::reads::Task>,
}

use crate::limits::{CONFLATED_FACTOR, CONFLATED_MIN, EXACT_QUEUE_FACTOR};

impl Queue {
    /// Queues one item, conflating events past the budget.
    pub(super) fn push_slow(&mut self, item: Outbound, budget: &Budget, stats: &Stats) {
        if self.closed {
            return;
        }
        match item {
            Outbound::Event {
                sub_id,
                event,
                exact: true,
            } => {
                let len = event.encoded().len();
                if self.event_bytes + len > budget.per_conn.saturating_mul(EXACT_QUEUE_FACTOR)
                    || !budget.admit(self.event_bytes + self.conflated_bytes, len)
                {
                    self.close_slow(
                        stats,
                        format!(
                            "history subscription {sub_id} fell too far behind; \
                             resubscribe from the last iteration received"
                        ),
                    );
                } else {
                    self.event_bytes += len;
                    self.items.push(Outbound::Event {
                        sub_id,
                        event,
                        exact: true,
                    });
                }
            }
            Outbound::Event { sub_id, event, .. } => {
                let len = event.encoded().len();
                if self.conflated.is_empty()
                    && self.event_bytes + len <= budget.per_conn
                    && budget.admit(self.event_bytes, len)
                {
                    self.event_bytes += len;
                    self.items.push(Outbound::Event {
                        sub_id,
                        event,
                        exact: false,
                    });
                    return;
                }
                self.conflated_bytes += len;
                budget.force(len);
                if let Some(old) = self.conflated.replace(Conflated { sub_id, event }) {
                    let old = old.event.encoded().len();
                    self.conflated_bytes -= old;
                    budget.release(old);
                    *self.skipped.entry(sub_id).or_default() += 1;
                    stats.conflated.fetch_add(1, Ordering::Relaxed);
                }
                let limit = budget
                    .per_conn
                    .saturating_mul(CONFLATED_FACTOR)
                    .max(CONFLATED_MIN);
                if self.conflated_bytes > limit || budget.over(self.conflated_bytes) {
                    self.close_slow(
                        stats,
                        format!(
                            "this connection fell too far behind: {} MiB of latest values \
                             wait for it; reconnect and resume",
                            self.conflated_bytes >> 20
                        ),
                    );
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
                    budget.release(gone);
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

    /// Closes the connection for falling behind, with `message` as its
    /// last words.
    fn close_slow(&mut self, stats: &Stats, message: String) {
        stats.closed_slow.fetch_add(1, Ordering::Relaxed);
        self.items.push(Outbound::Close(Some(ErrorFrame {
            req_id: None,
            code: ErrorCode::LimitExceeded,
            message,
        })));
        self.closed = true;
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
