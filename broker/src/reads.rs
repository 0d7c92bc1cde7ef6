//! The read pool: a few threads shared by every connection that run the
//! broker's long reads, history catch-ups from the log and replays from the
//! archive.
//!
//! A read streams to one connection, and a connection that does not read
//! its socket would block a thread that waits for room in its queue. So a
//! job here never waits: it does one slice of work (a chunk of the log, a
//! page of the archive) per [`ReadJob::step`], and when the connection's
//! queue is full it *parks* on the connection, giving its thread back; the
//! connection's writer resumes it once it took the queue (or the connection
//! closed). Threads, open files and archive connections are therefore
//! bounded by the pool, whatever clients do, and every read holds a
//! [`Permit`] counted against its connection's limit and, for replays, the
//! broker's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::session::Conn;

/// Threads that run read jobs.
const THREADS: usize = 4;
/// Steps a job runs before it goes to the back of the queue (fairness).
const STEPS_PER_TURN: usize = 8;

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More to do.
    More,
    /// The connection's queue is full: park until its writer took it.
    Full,
    /// Finished (or the connection went away).
    Done,
}

/// A long read, done in slices.
pub trait ReadJob: Send {
    /// Does one slice of work. Never waits for the connection.
    fn step(&mut self) -> Step;
    /// The connection it streams to.
    fn conn(&self) -> &Arc<Conn>;
}

/// The kinds of reads, each with its own broker-wide limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A history subscription reading the log.
    CatchUp,
    /// A replay reading the archive (holds an archive cursor).
    Replay,
    /// A large snapshot being walked (holds the events collected so far).
    Snapshot,
}

/// Limits of the pool.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Reads (catch-ups and replays) running at once per connection.
    pub per_connection: usize,
    /// Replays running at once in the broker.
    pub replays: usize,
    /// History catch-ups running at once in the broker.
    pub catch_ups: usize,
    /// Large snapshots in progress at once in the broker.
    pub snapshots: usize,
}

/// Why a read was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The connection runs as many reads as allowed.
    #[error("this connection already runs {0} replays and history catch-ups, the most allowed")]
    Connection(usize),
    /// The broker runs as many reads of this kind as allowed.
    #[error("the broker already runs {0} reads of this kind, the most allowed; retry later")]
    Broker(usize),
}

/// A read's place in the limits, given back when the job ends.
pub struct Permit {
    conn: Arc<Conn>,
    counter: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.conn.reads.fetch_sub(1, Ordering::AcqRel);
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A job with its permit, as it waits in the queue or on a connection.
pub struct Task {
    job: Box<dyn ReadJob>,
    pool: Arc<Shared>,
    _permit: Option<Permit>,
}

impl Task {
    /// Puts the task back in its pool's queue.
    pub fn resume(self) {
        let pool = self.pool.clone();
        pool.queue.lock().push_back(self);
        pool.work.notify_one();
    }
}

struct Shared {
    queue: Mutex<VecDeque<Task>>,
    work: Condvar,
    stop: AtomicBool,
    limits: Limits,
    replays: Arc<AtomicUsize>,
    catch_ups: Arc<AtomicUsize>,
    snapshots: Arc<AtomicUsize>,
}

/// The pool; its threads stop when it is dropped.
pub struct Reads {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Reads {
    /// Starts the pool's threads.
    pub fn start(limits: Limits) -> std::io::Result<Reads> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            work: Condvar::new(),
            stop: AtomicBool::new(false),
            limits,
            replays: Arc::default(),
            catch_ups: Arc::default(),
            snapshots: Arc::default(),
        });
        let mut threads = Vec::with_capacity(THREADS);
        for i in 0..THREADS {
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("spread-read-{i}"))
                    .spawn(move || work(&shared))?,
            );
        }
        Ok(Reads { shared, threads })
    }

    /// Takes a place for a read of `kind` streaming to `conn`.
    pub fn admit(&self, conn: &Arc<Conn>, kind: Kind) -> Result<Permit, Refused> {
        let limits = &self.shared.limits;
        let (counter, max) = match kind {
            Kind::Replay => (&self.shared.replays, limits.replays),
            Kind::CatchUp => (&self.shared.catch_ups, limits.catch_ups),
            Kind::Snapshot => (&self.shared.snapshots, limits.snapshots),
        };
        if conn.reads.fetch_add(1, Ordering::AcqRel) >= limits.per_connection {
            conn.reads.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Connection(limits.per_connection));
        }
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            conn.reads.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Broker(max));
        }
        Ok(Permit {
            conn: conn.clone(),
            counter: counter.clone(),
        })
    }

    /// A task that runs `job` once resumed, holding `permit` (if any)
    /// until it ends.
    pub fn task(&self, job: Box<dyn ReadJob>, permit: Option<Permit>) -> Task {
        Task {
            job,
            pool: self.shared.clone(),
            _permit: permit,
        }
    }
}

impl Drop for Reads {
    fn drop(&mut self) {
        // Under the queue's lock: a thread between its check of `stop` and
        // its wait would otherwise miss the notification and never end
        // (seen as a broker hanging when its start failed right after the
        // pool started).
        {
            let _queue = self.shared.queue.lock();
            self.shared.stop.store(true, Ordering::Release);
        }
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a read thread panicked");
            }
        }
        // Queued jobs end here; parked ones end with their connections.
        self.shared.queue.lock().clear();
    }
}

fn work(shared: &Shared) {
    loop {
        let task = {
            let mut queue = shared.queue.lock();
            loop {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                if let Some(task) = queue.pop_front() {
                    break task;
                }
                shared.work.wait(&mut queue);
            }
        };
        run_turn(task);
    }
}

/// Runs a task for one turn, then requeues, parks or drops it.
fn run_turn(mut task: Task) {
    for _ in 0..STEPS_PER_TURN {
        match task.job.step() {
            Step::More => {}
            Step::Done => return,
            Step::Full => {
                let conn = task.job.conn().clone();
                // The writer may have taken the queue since the step looked:
                // parking checks again under the queue's lock.
                if let Some(task) = conn.park(task) {
                    task.resume();
                }
                return;
            }
        }
    }
    task.resume();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_dropped_as_soon_as_it_started_stops_its_threads() {
        let limits = Limits {
            per_connection: 1,
            replays: 1,
            catch_ups: 1,
            snapshots: 1,
        };
        // Each drop races the threads on their way to their first wait.
        for _ in 0..500 {
            drop(Reads::start(limits).unwrap());
        }
    }
}
