//! One connection's state as the engine and its tasks share it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use spread_protocol::Event;
use tokio::sync::{Notify, Semaphore};

use super::queue::{Batch, Outbound, Queue, Taken};
use super::{Budget, Stats};
use crate::limits::HISTORY_QUEUE;

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
    budget: Arc<Budget>,
    pub(super) stats: Arc<Stats>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let q = self.queue.get_mut();
        self.budget.release(q.event_bytes + q.conflated_bytes);
        self.budget.closed();
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("id", &self.id).finish()
    }
}

impl Conn {
    /// A connection with `max_inflight` request credits whose queued events
    /// count against `budget`.
    pub fn new(
        id: u64,
        origin: Arc<str>,
        max_inflight: usize,
        budget: Arc<Budget>,
        stats: Arc<Stats>,
    ) -> Self {
        budget.opened();
        Conn {
            id,
            origin,
            rights: None,
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            reads: AtomicUsize::new(0),
            credits: Semaphore::new(max_inflight),
            max_inflight,
            budget,
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

    /// Appends a batch (leaving it empty) and wakes the writer once.
    pub fn push_batch(&self, batch: &mut Batch) {
        let mut q = self.queue.lock();
        if q.closed {
            batch.clear();
            return;
        }
        if !batch.special
            && q.conflated.is_empty()
            && q.event_bytes + batch.event_bytes <= self.budget.per_conn
            && self.budget.admit(q.event_bytes, batch.event_bytes)
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
                q.push_slow(item, &self.budget, &self.stats);
            }
        }
        batch.clear();
        drop(q);
        self.ready.notify_one();
    }

    /// Queues `response`, the answer to one request, now rather than with
    /// an engine round (see the module's paths that push at once); it gives
    /// back that request's credit when written.
    pub fn answer_now(&self, response: &spread_protocol::Response) {
        let mut frames = bytes::BytesMut::new();
        response.encode(&mut frames);
        self.push(Outbound::Answers {
            frames: frames.freeze(),
            count: 1,
        });
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
        q.history_bytes <= HISTORY_QUEUE || q.closed
    }

    /// Parks a read until the writer takes the queue; hands it back when
    /// there is room already (checked under the lock the writer takes, so
    /// no wake-up is missed).
    pub fn park(&self, task: crate::reads::Task) -> Option<crate::reads::Task> {
        let mut q = self.queue.lock();
        if q.history_bytes <= HISTORY_QUEUE || q.closed {
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
        self.budget.release(q.event_bytes + q.conflated_bytes);
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
