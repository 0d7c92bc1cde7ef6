//! Collects one engine round's output per connection, then hands each
//! connection its items in one push.
//!
//! Answers (reports, values, pongs, errors) are encoded straight into one
//! buffer per connection, so a publish's report costs a few bytes written,
//! not an item moved through queues; event deliveries stay items because a
//! slow subscriber's queue conflates them.

use std::sync::Arc;

use bytes::BytesMut;
use hashbrown::HashMap;
use spread_protocol::Event;

use crate::session::{Batch, Conn, Outbound};

struct Slot {
    conn: Arc<Conn>,
    batch: Batch,
    /// Encoded answers not yet wrapped into an item.
    answers: BytesMut,
    answer_count: u32,
}

impl Slot {
    /// Wraps pending answers into an item, keeping them ordered before
    /// whatever is pushed next.
    fn seal_answers(&mut self) {
        if self.answer_count > 0 {
            self.batch.push(Outbound::Answers {
                frames: self.answers.split().freeze(),
                count: self.answer_count,
            });
            self.answer_count = 0;
        }
    }
}

/// Per-round staging of outbound items, keyed by connection.
/// Events larger than this are answered by reference, not copied.
pub(super) const SPLICE_AT: usize = 16 * 1024;

#[derive(Default)]
pub struct Fanout {
    slots: Vec<Slot>,
    index: HashMap<u64, usize>,
    /// Reads started this round, resumed once its output is released.
    reads: Vec<crate::reads::Task>,
}

impl Fanout {
    fn slot(&mut self, conn: &Arc<Conn>) -> &mut Slot {
        let Fanout { slots, index, .. } = self;
        let i = *index.entry(conn.id).or_insert_with(|| {
            slots.push(Slot {
                conn: conn.clone(),
                batch: Batch::default(),
                answers: BytesMut::new(),
                answer_count: 0,
            });
            slots.len() - 1
        });
        &mut slots[i]
    }

    /// Stages `item` for `conn`.
    pub fn push(&mut self, conn: &Arc<Conn>, item: Outbound) {
        let slot = self.slot(conn);
        slot.seal_answers();
        slot.batch.push(item);
    }

    /// Stages a live event for subscription `sub_id` of `conn`.
    pub fn deliver(&mut self, conn: &Arc<Conn>, sub_id: u64, event: &Event, exact: bool) {
        let slot = self.slot(conn);
        slot.seal_answers();
        slot.batch.push(Outbound::Event {
            sub_id,
            event: event.clone(),
            exact,
        });
    }

    /// Stages `response`, which carries `carried` bytes of a stored event:
    /// by reference when that is large (see [`Outbound::Answer`]), else
    /// encoded with the other answers.
    pub fn answer_response(
        &mut self,
        conn: &Arc<Conn>,
        response: spread_protocol::Response,
        carried: usize,
    ) {
        if carried > SPLICE_AT {
            self.push(conn, Outbound::Answer(Box::new(response)));
        } else {
            self.answer(conn, |dst| response.encode(dst));
        }
    }

    /// Stages an answer frame, encoded by `encode`.
    pub fn answer(&mut self, conn: &Arc<Conn>, encode: impl FnOnce(&mut BytesMut)) {
        let slot = self.slot(conn);
        encode(&mut slot.answers);
        slot.answer_count += 1;
    }

    /// Starts `read` (a catch-up or a replay streaming to `conn`) once this
    /// round's output is released: a job pushes to its connection directly,
    /// and started at once it could overtake answers staged before it (an
    /// earlier `unsubscribed` of the same subscription id, a publish's
    /// report), which the client must see first.
    pub fn start_after(&mut self, conn: &Arc<Conn>, read: crate::reads::Task) {
        // The slot makes the connection's staged output (if any) part of
        // this round's release.
        self.slot(conn);
        self.reads.push(read);
    }

    /// Takes the round's staged output, to release once it is durable.
    pub fn take(&mut self) -> Staged {
        self.index.clear();
        let mut slots: Vec<Slot> = self.slots.drain(..).collect();
        for slot in &mut slots {
            slot.seal_answers();
        }
        Staged(slots, std::mem::take(&mut self.reads))
    }
}

/// One round's output, staged per connection, and the reads it started.
pub struct Staged(Vec<Slot>, Vec<crate::reads::Task>);

impl Staged {
    /// Hands every connection its items, then starts the round's reads.
    pub fn release(self) {
        for mut slot in self.0 {
            slot.conn.push_batch(&mut slot.batch);
        }
        self.1.into_iter().for_each(crate::reads::Task::resume);
    }
}
