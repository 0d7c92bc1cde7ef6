//! The engine's side of durability: writing each round's records before its
//! output is released, holding output while the log cannot be written,
//! checkpoints, retention and forgetting old deletes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::tree::Walk;
use super::{fanout, CheckpointPolicy, Engine, Release};
use crate::log::committed::Committed;
use crate::log::sync::Round;
use crate::log::Log;

/// Nodes a checkpoint walks per engine round: about 3 ms (0.8 µs a node
/// measured on a table of 1,000,000 topics).
pub(super) const CHECKPOINT_NODES_PER_ROUND: usize = 4096;

/// A checkpoint being gathered. It covers every iteration up to
/// `iteration`, where the walk began; the events it gathers may be newer
/// (each topic's latest when visited), which recovery's replay of the log
/// after `iteration` makes harmless.
pub(super) struct CheckpointWalk {
    walk: Walk,
    iteration: u64,
    cutoff: u64,
    events: Vec<spread_protocol::Event>,
    forgotten: u64,
}

/// What the engine owns for durability: the log and its release policy,
/// rounds held while it cannot be written, and the state of checkpoints,
/// retention and forgotten deletes.
pub(super) struct Persist {
    pub(super) log: Log,
    pub(super) release: Release,
    /// Rounds whose records could not be written yet, oldest first: their
    /// output waits until the write succeeds.
    pub(super) held: Vec<fanout::Staged>,
    /// Highest iteration whose record is durable under the policy.
    pub(super) durable: Arc<Committed>,
    pub(super) checkpoints: CheckpointPolicy,
    /// Events applied since the last checkpoint started.
    pub(super) since_checkpoint: u64,
    /// A checkpoint is being written.
    pub(super) checkpointing: Arc<AtomicBool>,
    /// Iteration covered by the last completed checkpoint.
    pub(super) checkpointed: Arc<AtomicU64>,
    /// Checkpoint iteration retention was last enforced for.
    pub(super) retained_up_to: u64,
    /// Why the log cannot be written, while it cannot: publishes are
    /// refused until a write succeeds again.
    pub(super) storage_failure: Option<String>,
    /// Records appended in the current round.
    pub(super) round_records: usize,
    /// Greatest iteration of a delete forgotten after the grace period: a
    /// client resuming from before it gets a full snapshot instead.
    pub(super) forgotten_deletes: u64,
    /// When iterations were reached, oldest first: at start, and at each
    /// checkpoint. Deletes are forgotten by when they were applied, never
    /// by the timestamp a client chose.
    pub(super) applied_by: std::collections::VecDeque<(u64, std::time::SystemTime)>,
    /// A checkpoint being gathered over several rounds.
    pub(super) checkpoint_walk: Option<CheckpointWalk>,
    /// The thread writing the last checkpoint, if it may still run.
    pub(super) checkpoint_writer: Option<JoinHandle<()>>,
    /// Iterations up to this one may be handed out (see
    /// [`super::ITERATIONS_RESERVED_AHEAD`]).
    pub(super) reserved_through: u64,
}

impl Engine {
    /// Deletes history beyond the retention limits once a newer checkpoint
    /// holds the state it led to.
    pub(super) fn enforce_retention(&mut self) {
        // Sinks that hold retention keep what they have not consumed.
        let covered = self
            .persist
            .checkpointed
            .load(Ordering::Acquire)
            .min(self.sinks.retention_floor().unwrap_or(u64::MAX));
        if covered <= self.persist.retained_up_to {
            return;
        }
        self.persist.retained_up_to = covered;
        match self.persist.log.enforce_retention(covered) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                segments = n,
                retained_from = self.persist.log.retained_from(),
                "deleted log history beyond retention"
            ),
            Err(e) => tracing::error!("log retention failed: {e}"),
        }
    }

    /// Starts a checkpoint of the latest-value table covering everything
    /// applied so far. The table is gathered over the following rounds, a
    /// budget of nodes per round ([`CheckpointWalk`]), so a large table
    /// never stalls the engine; it is then written in the background. With
    /// `wait` (at shutdown), everything happens now, in this thread.
    pub(super) fn checkpoint(&mut self, wait: bool) {
        if wait {
            // A walk in progress is superseded by this one (it held the
            // flag); a checkpoint being written is waited for.
            if self.persist.checkpoint_walk.take().is_some() {
                self.persist.checkpointing.store(false, Ordering::Release);
            }
            if let Some(writer) = self.persist.checkpoint_writer.take() {
                if writer.join().is_err() {
                    tracing::error!("the checkpoint writer panicked");
                }
            }
        }
        if !self.persist.held.is_empty()
            || self.persist.checkpoint_walk.is_some()
            || self.persist.checkpointing.swap(true, Ordering::AcqRel)
        {
            // Unwritten rounds, or a checkpoint already being gathered or
            // written.
            return;
        }
        self.persist.since_checkpoint = 0;
        let cutoff = self.tombstone_cutoff();
        self.persist.checkpoint_walk = Some(CheckpointWalk {
            walk: self.tree.walk(&spread_protocol::Topic::root()),
            iteration: self.tree.iteration(),
            cutoff,
            events: Vec::with_capacity(self.tree.topics()),
            forgotten: 0,
        });
        self.advance_checkpoint(
            if wait {
                usize::MAX
            } else {
                CHECKPOINT_NODES_PER_ROUND
            },
            wait,
        );
    }

    /// The iteration below which deletes are forgotten at this checkpoint:
    /// everything up to the newest iteration reached at least the grace
    /// period ago was applied that long ago (0: none).
    fn tombstone_cutoff(&mut self) -> u64 {
        let Some(grace) = self.persist.checkpoints.tombstone_grace else {
            return 0;
        };
        let now = std::time::SystemTime::now();
        self.persist
            .applied_by
            .push_back((self.tree.iteration(), now));
        let old_enough =
            |at: &std::time::SystemTime| now.duration_since(*at).is_ok_and(|age| age >= grace);
        while self.persist.applied_by.len() > 1
            && self
                .persist
                .applied_by
                .get(1)
                .is_some_and(|(_, at)| old_enough(at))
        {
            self.persist.applied_by.pop_front();
        }
        match self.persist.applied_by.front() {
            Some((it, at)) if old_enough(at) => it.saturating_add(1),
            _ => 0,
        }
    }

    /// Walks `budget` more nodes of the checkpoint being gathered; once all
    /// are, hands it to a writer (this thread when `wait`). Called after the
    /// round's records were written, so every event gathered is in the log
    /// file that the writer syncs before writing the checkpoint.
    pub(super) fn advance_checkpoint(&mut self, budget: usize, wait: bool) {
        let Some(mut cw) = self.persist.checkpoint_walk.take() else {
            return;
        };
        if !self.persist.held.is_empty() {
            // The table now holds events of rounds the log could not write:
            // none of them may be in a checkpoint. Started again later.
            self.persist.checkpointing.store(false, Ordering::Release);
            self.persist.since_checkpoint = self.persist.checkpoints.every;
            return;
        }
        let mut budget = budget;
        let forgotten =
            self.tree
                .checkpoint_step(&mut cw.walk, cw.cutoff, &mut budget, &mut cw.events);
        cw.forgotten = cw.forgotten.max(forgotten);
        // At once: a subscription resuming from before a delete forgotten
        // in this step must be told that it cannot learn of it.
        self.persist.forgotten_deletes = self.persist.forgotten_deletes.max(forgotten);
        if !cw.walk.is_done() {
            self.persist.checkpoint_walk = Some(cw);
            return;
        }
        if cw.forgotten > 0 {
            // Recorded before the checkpoint that lacks them is written
            // (until then, a restart finds them in the log).
            let stored = crate::log::retention::store_value(
                self.persist.log.dir(),
                crate::log::retention::FORGOTTEN_DELETES,
                self.persist.forgotten_deletes,
            );
            if let Err(e) = stored {
                tracing::error!("cannot record forgotten deletes: {e}");
            }
        }
        let CheckpointWalk {
            events, iteration, ..
        } = cw;
        let file = self.persist.log.active_file();
        let dir = self.persist.log.dir().to_owned();
        let busy = self.persist.checkpointing.clone();
        let done = self.persist.checkpointed.clone();
        let job = move || {
            let started = std::time::Instant::now();
            // Every event in the checkpoint must be durable in the log first.
            let result = match file.map(|f| f.sync_data()) {
                Some(Err(e)) => Err(e.to_string()),
                _ => crate::log::checkpoint::write(&dir, iteration, &events)
                    .map_err(|e| e.to_string()),
            };
            match result {
                Ok(()) => {
                    done.store(iteration, Ordering::Release);
                    tracing::info!(
                        iteration,
                        topics = events.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "checkpoint written"
                    )
                }
                Err(e) => tracing::error!("checkpoint failed: {e}"),
            }
            busy.store(false, Ordering::Release);
        };
        if wait {
            job();
            return;
        }
        match std::thread::Builder::new()
            .name("spread-checkpoint".into())
            .spawn(job)
        {
            Ok(writer) => self.persist.checkpoint_writer = Some(writer),
            Err(e) => {
                tracing::error!("cannot start a checkpoint: {e}");
                self.persist.checkpointing.store(false, Ordering::Release);
            }
        }
    }

    /// Writes the round's records, then releases its output (and that of
    /// any round held by an earlier failed write) per the durability policy.
    pub(super) fn end_round(&mut self) {
        let staged = self.fanout.take();
        let logged = std::mem::take(&mut self.persist.round_records);
        let file = match self.persist.log.write() {
            Ok(file) => {
                if self.persist.storage_failure.take().is_some() {
                    tracing::warn!("the event log is writable again; accepting publishes");
                }
                file
            }
            Err(e) => {
                if self.persist.storage_failure.is_none() {
                    tracing::error!("cannot write the event log, refusing publishes: {e}");
                }
                self.persist.storage_failure = Some(e.to_string());
                if logged > 0 {
                    // Nothing of a round with events may leave the broker
                    // before its records are on disk: hold it, retry with
                    // the next round.
                    self.persist.held.push(staged);
                } else {
                    // Reads and refusals carry no new event: release them.
                    self.release(vec![staged], None);
                }
                return;
            }
        };
        let mut rounds = std::mem::take(&mut self.persist.held);
        rounds.push(staged);
        self.release(rounds, file);
    }

    /// Releases rounds in order, per the durability policy.
    fn release(&self, rounds: Vec<fanout::Staged>, file: Option<Arc<std::fs::File>>) {
        let (durable, last) = (self.persist.durable.clone(), self.tree.iteration());
        match &self.persist.release {
            Release::Now { .. } => {
                if self.persist.held.is_empty() {
                    durable.advance(last);
                }
                rounds.into_iter().for_each(fanout::Staged::release);
            }
            Release::AfterSync(group) => {
                let advance = self.persist.held.is_empty();
                group.submit(Round {
                    file,
                    release: Box::new(move || {
                        if advance {
                            durable.advance(last);
                        }
                        rounds.into_iter().for_each(fanout::Staged::release);
                    }),
                })
            }
        }
    }
}
