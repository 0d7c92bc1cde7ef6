//! The engine's side of durability: writing each round's records before its
//! output is released, holding output while the log cannot be written,
//! checkpoints, retention and forgetting old deletes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{fanout, Engine, Release};
use crate::log::sync::Round;

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

    /// Writes a checkpoint of the latest-value table covering everything
    /// applied so far: in the background, or in this thread when `wait`.
    pub(super) fn checkpoint(&mut self, wait: bool) {
        if !self.held.is_empty() || self.checkpointing.swap(true, Ordering::AcqRel) {
            // Unwritten rounds, or a checkpoint already being written.
            return;
        }
        self.since_checkpoint = 0;
        if let Some(grace) = self.checkpoints.tombstone_grace {
            // Everything up to the newest iteration reached at least `grace`
            // ago was applied that long ago.
            let now = std::time::SystemTime::now();
            self.applied_by.push_back((self.tree.iteration(), now));
            let old_enough =
                |at: &std::time::SystemTime| now.duration_since(*at).is_ok_and(|age| age >= grace);
            while self.applied_by.len() > 1
                && self.applied_by.get(1).is_some_and(|(_, at)| old_enough(at))
            {
                self.applied_by.pop_front();
            }
            let cutoff = match self.applied_by.front() {
                Some((it, at)) if old_enough(at) => it.saturating_add(1),
                _ => 0,
            };
            let forgotten = self.tree.purge_tombstones(cutoff);
            if forgotten > self.forgotten_deletes {
                // Recorded before the checkpoint that lacks them is written.
                let stored = crate::log::retention::store_value(
                    self.log.dir(),
                    crate::log::retention::FORGOTTEN_DELETES,
                    forgotten,
                );
                if let Err(e) = stored {
                    tracing::error!("cannot record forgotten deletes: {e}");
                }
                self.forgotten_deletes = forgotten;
            }
        }
        let events = self.tree.all_events();
        let iteration = self.tree.iteration();
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
        } else if let Err(e) = std::thread::Builder::new()
            .name("spread-checkpoint".into())
            .spawn(job)
        {
            tracing::error!("cannot start a checkpoint: {e}");
            self.checkpointing.store(false, Ordering::Release);
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
