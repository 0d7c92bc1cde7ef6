//! Sync threads: group commit for `always`, a periodic sync for `interval`.
//!
//! A failed `fdatasync` is never retried: after a writeback error Linux
//! marks the dirty pages clean and reports the error once, so a retry can
//! succeed although the data never reached the disk ("fsyncgate"). What the
//! log holds is then unknown, and the only safe answer is PostgreSQL's:
//! acknowledge nothing more, say so, and stop, so that a restart recovers
//! from what is really on disk ([`fail_stop`]).

use std::fs::File;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

/// Output of one engine round, released once its records are synced.
pub struct Round {
    /// The file the round wrote to, if it wrote anything.
    pub file: Option<Arc<File>>,
    /// Delivers the round's answers and events.
    pub release: Box<dyn FnOnce() + Send>,
}

/// Syncs a segment's data.
pub type SyncFn = fn(&File) -> std::io::Result<()>;

/// What a failed sync does: [`fail_stop`] outside tests.
pub type FailFn = Arc<dyn Fn(&std::io::Error) + Send + Sync>;

/// Ends the process after a failed sync, acknowledging nothing more: a
/// restart recovers from what the disk really holds.
pub fn fail_stop(e: &std::io::Error) {
    tracing::error!(
        "log sync failed: {e}; what the log holds is unknown, so the broker stops \
         without acknowledging anything more (a restart recovers from the disk)"
    );
    std::process::exit(70);
}

/// The group-commit thread of the `always` policy: it syncs once for every
/// round queued while the previous sync ran, then releases them in order.
pub struct GroupCommit {
    tx: Option<mpsc::Sender<Round>>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the thread.
    pub fn start() -> std::io::Result<GroupCommit> {
        GroupCommit::start_with(File::sync_data, Arc::new(fail_stop))
    }

    /// Starts the thread with its own sync and failure reaction (tests).
    pub fn start_with(sync: SyncFn, fail: FailFn) -> std::io::Result<GroupCommit> {
        let (tx, rx) = mpsc::channel::<Round>();
        let thread = std::thread::Builder::new()
            .name("spread-sync".into())
            .spawn(move || run(rx, sync, &*fail))?;
        Ok(GroupCommit {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a round. If the thread is gone (it stopped after a failed
    /// sync) the round is dropped unreleased: nothing unsynced is
    /// acknowledged.
    pub fn submit(&self, round: Round) {
        if let Some(tx) = &self.tx {
            if tx.send(round).is_err() {
                tracing::error!("the log sync thread is gone; not acknowledging");
            }
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: mpsc::Receiver<Round>, sync: SyncFn, fail: &dyn Fn(&std::io::Error)) {
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter());
        // Rounds are in order and every round wrote to the same or a later
        // file; a rolled-over file was synced when it was closed.
        if let Some(file) = batch.iter().rev().find_map(|r| r.file.as_ref()) {
            if let Err(e) = sync(file) {
                // Releasing would acknowledge data that may not be on disk;
                // retrying could "succeed" without it (see the module doc).
                fail(&e);
                return;
            }
        }
        for round in batch.drain(..) {
            (round.release)();
        }
    }
}

/// The `interval` policy's thread: syncs the active segment periodically.
pub struct IntervalSync {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl IntervalSync {
    /// Starts syncing `active` every `period`.
    pub fn start(
        active: Arc<Mutex<Option<Arc<File>>>>,
        period: Duration,
    ) -> std::io::Result<IntervalSync> {
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spread-sync".into())
            .spawn(move || {
                let (lock, cvar) = &*stop2;
                let Ok(mut stopped) = lock.lock() else { return };
                while !*stopped {
                    match cvar.wait_timeout(stopped, period) {
                        Ok((guard, _)) => stopped = guard,
                        Err(_) => return,
                    }
                    let file = active.lock().clone();
                    if let Some(f) = file {
                        if let Err(e) = f.sync_data() {
                            // Acknowledged events may be lost: stop.
                            fail_stop(&e);
                        }
                    }
                }
            })?;
        Ok(IntervalSync {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for IntervalSync {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.stop;
        if let Ok(mut s) = lock.lock() {
            *s = true;
        }
        cvar.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn round(file: &Arc<File>, released: &Arc<AtomicUsize>) -> Round {
        let released = released.clone();
        Round {
            file: Some(file.clone()),
            release: Box::new(move || {
                released.fetch_add(1, Ordering::SeqCst);
            }),
        }
    }

    #[test]
    fn a_failed_sync_releases_nothing_and_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("seg")).unwrap());
        let (released, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let seen = failures.clone();
        let failing: SyncFn = |_| Err(std::io::Error::other("EIO"));
        let group = GroupCommit::start_with(
            failing,
            Arc::new(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        group.submit(round(&file, &released));
        group.submit(round(&file, &released));
        drop(group); // joins the thread
        assert_eq!(failures.load(Ordering::SeqCst), 1, "one failure, no retry");
        assert_eq!(released.load(Ordering::SeqCst), 0, "nothing acknowledged");
        // A working sync releases every round.
        let group = GroupCommit::start_with(File::sync_data, Arc::new(|_| {})).unwrap();
        group.submit(round(&file, &released));
        drop(group);
        assert_eq!(released.load(Ordering::SeqCst), 1);
    }
}
