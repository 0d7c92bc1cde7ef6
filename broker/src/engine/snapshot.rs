//! Snapshots of any size without stalling the engine.
//!
//! A subscribe walks its prefix's subtree for a first slice of nodes; most
//! snapshots end there and are answered in the same round, as they always
//! were. A larger one goes on over the following rounds ([`Walk`]), a
//! budget of nodes per round shared by all of them, while the engine keeps
//! serving everyone else. The subscription is registered at once, *pending*:
//! live events for it are held, not sent. When the walk ends, the snapshot
//! (every event up to the iteration at which the walk began) is staged,
//! then the held events in order, and the subscription goes live, so the
//! seam has no gap and no duplicate, exactly as with a snapshot taken in
//! one step. A large snapshot in progress takes a read permit (limited per
//! connection and in the broker, `too_many_reads` beyond).

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use spread_protocol::{ErrorCode, Event, Topic};

use super::tree::Walk;
use super::{Engine, Subscriber};
use crate::reads::{Kind, Permit};
use crate::session::{Conn, Outbound};

/// Nodes a subscribe walks before its snapshot continues in later rounds.
const FIRST_SLICE: usize = 4096;
/// Nodes walked per engine round, across every snapshot in progress
/// (a few milliseconds of the engine's time).
const NODES_PER_ROUND: usize = 16_384;
/// Bytes of live events held for one pending snapshot before they are
/// conflated (only the latest of each topic kept).
const HELD_BYTES: usize = 4 * 1024 * 1024;

/// Snapshots being walked, by (connection, sub), and whose turn it is.
#[derive(Default)]
pub(super) struct Snapshots {
    pub(super) pending: HashMap<(u64, u64), Pending>,
    pub(super) turns: VecDeque<(u64, u64)>,
}

/// A snapshot being walked.
pub(super) struct Pending {
    conn: Arc<Conn>,
    sub_id: u64,
    prefix: Topic,
    since: u64,
    /// Events after this iteration are the live stream's.
    until: u64,
    walk: Walk,
    events: Vec<Event>,
    held: Vec<Event>,
    held_bytes: usize,
    _permit: Permit,
}

impl Pending {
    /// Keeps a live event for after the snapshot.
    pub(super) fn hold(&mut self, event: &Event) {
        self.held_bytes += event.encoded().len();
        self.held.push(event.clone());
        if self.held_bytes > HELD_BYTES {
            // Latest-value semantics: an older event of a topic that
            // changed again adds nothing the subscriber keeps.
            let mut seen = HashSet::new();
            let mut kept: Vec<Event> = self
                .held
                .drain(..)
                .rev()
                .filter(|e| seen.insert(e.topic().to_owned()))
                .collect();
            kept.reverse();
            self.held_bytes = kept.iter().map(|e| e.encoded().len()).sum();
            self.held = kept;
        }
    }
}

impl Engine {
    /// Answers a latest-mode subscribe with its snapshot of the events
    /// changed after `since`: in this round when it is small, else over
    /// the coming rounds.
    pub(super) fn start_snapshot(
        &mut self,
        conn: &Arc<Conn>,
        sub_id: u64,
        prefix: Topic,
        since: u64,
        skip_source: spread_protocol::Sources,
    ) {
        let until = self.tree.iteration();
        let mut walk = self.tree.walk(&prefix);
        let mut events = Vec::new();
        let mut budget = FIRST_SLICE;
        self.tree
            .walk_step(&mut walk, since, until, since > 0, &mut budget, &mut events);
        let pending = !walk.is_done();
        let permit = if pending {
            match self.reads.admit(conn, Kind::Snapshot) {
                Ok(permit) => Some(permit),
                Err(refused) => {
                    if let Some(subs) = self.subs.get_mut(&conn.id) {
                        subs.remove(&sub_id);
                    }
                    return self.error(conn, sub_id, ErrorCode::TooManyReads, refused.to_string());
                }
            }
        } else {
            None
        };
        self.tree.register(
            &prefix,
            Subscriber {
                conn: conn.clone(),
                sub_id,
                exact: false,
                pending,
                filtered: !conn.reads_all_under(prefix.as_str()),
                skip_source,
            },
        );
        let Some(permit) = permit else {
            return self.fanout.push(
                conn,
                Outbound::Snapshot {
                    sub_id,
                    events,
                    iteration: until,
                },
            );
        };
        self.snapshots.pending.insert(
            (conn.id, sub_id),
            Pending {
                conn: conn.clone(),
                sub_id,
                prefix,
                since,
                until,
                walk,
                events,
                held: Vec::new(),
                held_bytes: 0,
                _permit: permit,
            },
        );
        self.snapshots.turns.push_back((conn.id, sub_id));
    }

    /// Walks the snapshots in progress for one round's budget, in turn,
    /// and sends those that are complete.
    pub(super) fn advance_snapshots(&mut self) {
        let mut budget = NODES_PER_ROUND;
        while budget > 0 {
            let Some(key) = self.snapshots.turns.pop_front() else {
                return;
            };
            // Cancelled meanwhile.
            let Some(p) = self.snapshots.pending.get_mut(&key) else {
                continue;
            };
            self.tree.walk_step(
                &mut p.walk,
                p.since,
                p.until,
                p.since > 0,
                &mut budget,
                &mut p.events,
            );
            if p.walk.is_done() {
                self.finish_snapshot(key);
            } else {
                self.snapshots.turns.push_back(key);
            }
        }
    }

    /// Stages the snapshot, then what was held, and makes the subscription
    /// live.
    fn finish_snapshot(&mut self, key: (u64, u64)) {
        let Some(p) = self.snapshots.pending.remove(&key) else {
            return;
        };
        let (conn, sub_id) = (p.conn, p.sub_id);
        self.fanout.push(
            &conn,
            Outbound::Snapshot {
                sub_id,
                events: p.events,
                iteration: p.until,
            },
        );
        for event in &p.held {
            self.fanout.deliver(&conn, sub_id, event, false);
        }
        if let Some(s) = self
            .tree
            .subscriber_mut(&p.prefix, |s| s.conn.id == conn.id && s.sub_id == sub_id)
        {
            s.pending = false;
        }
    }

    /// Drops the snapshot in progress of a subscription that ended, giving
    /// back the subscribe's request credit its snapshot would have.
    pub(super) fn cancel_snapshot(&mut self, conn: &Arc<Conn>, sub_id: u64) {
        if self.snapshots.pending.remove(&(conn.id, sub_id)).is_some() {
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
