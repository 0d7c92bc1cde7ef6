//! The engine's side of durability: writing each round's records before its
//! output is released, holding output while the log cannot be written,
//! checkpoints, retention and forgetting old deletes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::tree::Walk;
use super::{fanout, Engine, Release};
use crate::log::sync::Round;

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

impl Engine {
    /// Deletes history beyond the retention limits once a newer checkpoint
    /// holds the state it led to.
    pub(super) fn enforce_retention(&mut self) {
        // Sinks that hold retention keep what they have not consumed.
        let covered = self
            .checkpointed
            .load(Ordering::Acquire)
            .min(self.sinks.retention_floor().unwrap_or(u64::MAX));
        if covered <= self.retained_up_to {
            return;
        }
        self.retained_up_to = covered;
        match self.log.enforce_retention(covered) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                segments = n,
                retained_from = self.log.retained_from(),
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
            if self.checkpoint_walk.take().is_some() {
                self.checkpointing.store(false, Ordering::Release);
            }
            if let Some(writer) = self.checkpoint_writer.take() {
                if writer.join().is_err() {
                    tracing::error!("the checkpoint writer panicked");
                }
            }
        }
        if !self.held.is_empty()
            || self.checkpoint_walk.is_some()
            || self.checkpointing.swap(true, Ordering::AcqRel)
        {
            // Unwritten rounds, or a checkpoint already being gathered or
            // written.
            return;
        }
        self.since_checkpoint = 0;
        let cutoff = self.tombstone_cutoff();
        self.checkpoint_walk = Some(CheckpointWalk {
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
        let Some(grace) = self.checkpoints.tombstone_grace else {
            return 0;
        };
        let now = std::time::SystemTime::now();
        self.applied_by.push_back((self.tree.iteration(), now));
        let old_enough =
            |at: &std::time::SystemTime| now.duration_since(*at).is_ok_and(|age| age >= grace);
        while self.applied_by.len() > 1
            && self.applied_by.get(1).is_some_and(|(_, at)| old_enough(at))
        {
            self.applied_by.pop_front();
        }
        match self.applied_by.front() {
            Some((it, at)) if old_enough(at) => it.saturating_add(1),
            _ => 0,
        }
    }

    /// Walks `budget` more nodes of the checkpoint being gathered; once all
    /// are, hands it to a writer (this thread when `wait`). Called after the
    /// round's records were written, so every event gathered is in the log
    /// file that the writer syncs before writing the checkpoint.
    pub(super) fn advance_checkpoint(&mut self, budget: usize, wait: bool) {
        let Some(mut cw) = self.checkpoint_walk.take() else {
            return;
        };
        if !self.held.is_empty() {
            // The table now holds events of rounds the log could not write:
            // none of them may be in a checkpoint. Started again later.
            self.checkpointing.store(false, Ordering::Release);
            self.since_checkpoint = self.checkpoints.every;
            return;
        }
        let mut budget = budget;
        let forgotten =
            self.tree
                .checkpoint_step(&mut cw.walk, cw.cutoff, &mut budget, &mut cw.events);
        cw.forgotten = cw.forgotten.max(forgotten);
        // At once: a subscription resuming from before a delete forgotten
        // in this step must be told that it cannot learn of it.
        self.forgotten_deletes = self.forgotten_deletes.max(forgotten);
        if !cw.walk.is_done() {
            self.checkpoint_walk = Some(cw);
            return;
        }
        if cw.forgotten > 0 {
            // Recorded before the checkpoint that lacks them is written
            // (until then, a restart finds them in the log).
            let stored = crate::log::retention::store_value(
                self.log.dir(),
                crate::log::retention::FORGOTTEN_DELETES,
                self.forgotten_deletes,
            );
            if let Err(e) = stored {
                tracing::error!("cannot record forgotten deletes: {e}");
            }
        }
        let CheckpointWalk {
            events, iteration, ..
        } = cw;
        let file = self.log.active_file();
        let dir = self.log.dir().to_owned();
        let busy = self.checkpointing.clone();
        let done = self.checkpointed.clone();
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
            Ok(writer) => self.checkpoint_writer = Some(writer),
            Err(e) => {
                tracing::error!("cannot start a checkpoint: {e}");
                self.checkpointing.store(false, Ordering::Release);
            }
        }
    }

    /// Writes the round's records, then releases its output (and that of
    /// any round held by an earlier failed write) per the durability policy.
    pub(super) fn end_round(&mut self) {
        let staged = self.fanout.take();
        let logged = std::mem::take(&mut self.round_records);
        let file = match self.log.write() {
            Ok(file) => {
                if self.storage_failure.take().is_some() {
                    tracing::warn!("the event log is writable again; accepting publishes");
                }
                file
            }
            Err(e) => {
                if self.storage_failure.is_none() {
                    tracing::error!("cannot write the event log, refusing publishes: {e}");
                }
                self.storage_failure = Some(e.to_string());
                if logged > 0 {
                    // Nothing of a round with events may leave the broker
                    // before its records are on disk: hold it, retry with
                    // the next round.
                    self.held.push(staged);
                } else {
                    // Reads and refusals carry no new event: release them.
                    self.release(vec![staged], None);
                }
                return;
            }
        };
        let mut rounds = std::mem::take(&mut self.held);
        rounds.push(staged);
        self.release(rounds, file);
    }

    /// Releases rounds in order, per the durability policy.
    fn release(&self, rounds: Vec<fanout::Staged>, file: Option<Arc<std::fs::File>>) {
        let (durable, last) = (self.durable.clone(), self.tree.iteration());
        match &self.release {
            Release::Now { .. } => {
                if self.held.is_empty() {
                    durable.advance(last);
                }
                rounds.into_iter().for_each(fanout::Staged::release);
            }
            Release::AfterSync(group) => {
                let advance = self.held.is_empty();
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
