//! Sync threads: group commit for `always`, a periodic sync for `interval`.

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

/// The group-commit thread of the `always` policy: it syncs once for every
/// round queued while the previous sync ran, then releases them in order.
pub struct GroupCommit {
    tx: Option<mpsc::Sender<Round>>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the thread.
    pub fn start() -> std::io::Result<GroupCommit> {
        let (tx, rx) = mpsc::channel::<Round>();
        let thread = std::thread::Builder::new()
            .name("spread-sync".into())
            .spawn(move || run(rx))?;
        Ok(GroupCommit {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a round; if the thread is gone, releases it at once.
    pub fn submit(&self, round: Round) {
        match &self.tx {
            Some(tx) => {
                if let Err(mpsc::SendError(round)) = tx.send(round) {
                    (round.release)();
                }
            }
            None => (round.release)(),
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

fn run(rx: mpsc::Receiver<Round>) {
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter());
        // Rounds are in order and every round wrote to the same or a later
        // file; a rolled-over file was synced when it was closed.
        if let Some(file) = batch.iter().rev().find_map(|r| r.file.as_ref()) {
            let mut delay = Duration::from_millis(10);
            while let Err(e) = file.sync_data() {
                // Releasing would acknowledge data that may not be on disk.
                tracing::error!("log sync failed: {e}; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(1));
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
                            tracing::error!("periodic log sync failed: {e}");
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
