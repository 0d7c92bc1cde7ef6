//! One sink's thread: reads the log from the sink's checkpoint, hands it
//! batches, retries with backoff, and records its checkpoint durably.
//!
//! Each sink runs on its own thread and only reads the log files, so a slow,
//! failing or blocked plugin never touches the publish path: it only falls
//! behind (and, while it holds retention, keeps history from being deleted).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use spread_plugin::{Error, Event as SinkEvent, Kind};
use spread_protocol::{Event, EventKind};

use super::config::SinkConfig;
use super::dead_letter;
use super::driver::{Driver, Factory};
use super::status::{SinkShared, SinkState};
use crate::log::committed::Committed;
use crate::log::cursor::{LogCursor, Missed};
use crate::log::retention;
use spread_plugin::OpenContext;

/// Longest idle wait between checks for new events (a wake-up arrives
/// sooner whenever the log moves).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Niceness of sink threads: below the publish path, so a busy sink takes
/// only CPU the engine and connections leave.
const SINK_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority (Linux: per thread).
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread, no pointers.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, SINK_NICE)
    };
    if result != 0 {
        tracing::debug!(
            "cannot lower the sink thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// How often a sink that stays behind says so in the log.
const LAG_NOTE_EVERY: Duration = Duration::from_secs(30);

/// Asks sink threads to stop and wakes them from their waits.
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Stop {
    /// Whether a stop was requested.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Requests the stop.
    pub fn request(&self) {
        self.flag.store(true, Ordering::Release);
        drop(self.lock.lock());
        self.cv.notify_all();
    }

    /// Sleeps for `d` unless stopped first; returns whether stopped.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut guard = self.lock.lock();
        while !self.is_set() {
            if self.cv.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
        self.is_set()
    }
}

/// Where a sink's checkpoint files live.
pub fn checkpoint_name(sink: &str) -> String {
    format!("{sink}.checkpoint")
}

/// Everything a sink thread needs.
pub struct Runner {
    pub config: SinkConfig,
    /// Opens instances.
    pub factory: Arc<dyn Factory>,
    /// The instance opened at start, if that succeeded.
    pub driver: Option<Box<dyn Driver>>,
    pub shared: Arc<SinkShared>,
    pub log_dir: PathBuf,
    /// Where checkpoints are stored.
    pub checkpoints_dir: PathBuf,
    /// The data directory (for re-opening).
    pub data_dir: PathBuf,
    /// This node's id.
    pub node: Arc<str>,
    /// How far the log may be read.
    pub committed: Arc<Committed>,
    pub stop: Arc<Stop>,
    /// Last iteration the sink accepted (or was told it missed).
    pub delivered: u64,
}

/// How a call with retries ended.
enum Outcome<T> {
    Done(T),
    Fatal,
    Stopped,
    /// `write` only: the plugin rejected the batch (see [`Error::Rejected`]).
    Rejected(String),
}

/// A sink's view of a log event.
fn view<'a>(e: &'a Event, node: &'a str) -> SinkEvent<'a> {
    SinkEvent::new(
        e.iteration(),
        e.timestamp(),
        e.topic(),
        e.payload_bytes(),
        e.origin(),
        node,
        e.id().0,
        match e.kind() {
            EventKind::Value => Kind::Value,
            EventKind::Tombstone => Kind::Tombstone,
        },
    )
}

impl Runner {
    /// Runs until stopped or failed.
    pub fn run(mut self) {
        let span = tracing::info_span!("sink", name = %self.config.name);
        let _entered = span.enter();
        lower_priority();
        let letters = dead_letter::path(&self.checkpoints_dir, &self.config.name);
        match dead_letter::count(&letters) {
            Ok(n) => self.shared.rejected.store(n, Ordering::Release),
            Err(e) => tracing::warn!("cannot count {}: {e}", letters.display()),
        }
        self.delivered = self.shared.checkpoint.load(Ordering::Acquire);
        let Some(mut driver) = self.driver.take().or_else(|| self.open()) else {
            return;
        };
        self.shared.set_state(SinkState::Running);
        tracing::info!(checkpoint = self.delivered, "sink started");
        if let Outcome::Stopped = self.deliver(driver.as_mut()) {
            // Stopping cleanly: what was delivered is flushed and recorded.
            if let Outcome::Done(()) = self.checkpoint(driver.as_mut()) {
                self.shared.set_state(SinkState::Stopped);
            }
        }
        drop(driver);
        let live = self.shared.live.lock();
        tracing::info!(
            state = live.state.as_str(),
            delivered = live.delivered,
            checkpoint = self.shared.checkpoint.load(Ordering::Acquire),
            "sink thread ended"
        );
    }

    fn open(&self) -> Option<Box<dyn Driver>> {
        let settings = self.config.settings_json();
        let args = OpenContext {
            name: &self.config.name,
            config_json: &settings,
            node: &self.node,
            data_dir: &self.data_dir,
        };
        match self.retry("open", || self.factory.open(&args)) {
            Outcome::Done(d) => Some(d),
            Outcome::Fatal | Outcome::Stopped | Outcome::Rejected(_) => None,
        }
    }

    /// Delivers batches until stopped or a fatal error.
    fn deliver(&mut self, driver: &mut dyn Driver) -> Outcome<()> {
        let (max_events, max_bytes) = (self.config.batch_events, self.config.batch_bytes);
        let checkpoint_every = Duration::from_millis(self.config.checkpoint_ms);
        let mut cursor = LogCursor::new(&self.log_dir, self.delivered);
        let mut batch: Vec<Event> = Vec::with_capacity(max_events.min(1 << 16));
        let mut last_checkpoint = Instant::now();
        let mut last_lag_note = Instant::now();
        let mut read_delay = Duration::from_millis(self.config.retry_min_ms);
        loop {
            if self.stop.is_set() {
                return Outcome::Stopped;
            }
            let until = self.committed.get();
            batch.clear();
            let mut missed = match cursor.read(until, max_events, max_bytes, &mut batch) {
                Ok(m) => {
                    read_delay = Duration::from_millis(self.config.retry_min_ms);
                    m
                }
                Err(e) => {
                    self.shared
                        .failed(SinkState::Retrying, format!("reading the log: {e}"));
                    tracing::error!("cannot read the log: {e}; retrying in {read_delay:?}");
                    if self.stop.sleep(read_delay) {
                        return Outcome::Stopped;
                    }
                    read_delay =
                        (read_delay * 2).min(Duration::from_millis(self.config.retry_max_ms));
                    cursor = LogCursor::new(&self.log_dir, self.delivered);
                    continue;
                }
            };
            if batch.is_empty() && missed == Missed::None {
                // Caught up: make what was delivered durable once the
                // checkpoint is due (not after every batch: a sink that
                // keeps up with a steady load would sync its database at
                // every batch, and its syncs share the disk with the
                // log's), then wait, at most until the next one is due.
                self.shared.live.lock().behind_since = None;
                let due = checkpoint_every.saturating_sub(last_checkpoint.elapsed());
                if due.is_zero() {
                    if let o @ (Outcome::Fatal | Outcome::Stopped | Outcome::Rejected(_)) =
                        self.checkpoint(driver)
                    {
                        return o;
                    }
                    last_checkpoint = Instant::now();
                }
                let unrecorded = self.delivered > self.shared.checkpoint.load(Ordering::Acquire);
                let wait = if unrecorded && !due.is_zero() {
                    due.min(IDLE_WAIT)
                } else {
                    IDLE_WAIT
                };
                self.committed
                    .wait_beyond(until, wait, || self.stop.is_set());
                continue;
            }
            let behind = *self
                .shared
                .live
                .lock()
                .behind_since
                .get_or_insert_with(Instant::now);
            if behind.elapsed() >= LAG_NOTE_EVERY && last_lag_note.elapsed() >= LAG_NOTE_EVERY {
                // Operators tailing logs see a sink that cannot keep up.
                tracing::warn!(
                    behind_s = behind.elapsed().as_secs(),
                    position = self.delivered,
                    committed = until,
                    "sink is behind"
                );
                last_lag_note = Instant::now();
            }
            // Not full: let more accumulate, so batches stay large. A plain
            // sleep, not a wait on the committed watermark: waking at every
            // engine round would cost the publish path a wake-up per round.
            let mut bytes: usize = batch.iter().map(|e| e.payload_bytes().len()).sum();
            let linger = self.config.linger();
            if missed == Missed::None
                && batch.len() < max_events
                && bytes < max_bytes
                && !linger.is_zero()
            {
                if self.stop.sleep(linger) {
                    return Outcome::Stopped;
                }
                let before = batch.len();
                // A read error surfaces again on the next pass.
                if let Ok(m) = cursor.read(
                    self.committed.get(),
                    max_events - before,
                    max_bytes - bytes,
                    &mut batch,
                ) {
                    missed = m;
                }
                bytes += batch[before..]
                    .iter()
                    .map(|e| e.payload_bytes().len())
                    .sum::<usize>();
            }
            if !batch.is_empty() {
                let views: Vec<SinkEvent<'_>> = batch.iter().map(|e| view(e, &self.node)).collect();
                match self.write(driver, &views) {
                    Outcome::Done(()) => {}
                    other => return other,
                }
            }
            if let Some(last) = batch.last() {
                self.delivered = last.iteration();
            }
            self.shared.live.lock().delivered += batch.len() as u64;
            // The deleted range comes after the batch read before it.
            if let Missed::Range { first, last } = missed {
                tracing::warn!(
                    first,
                    last,
                    "log history was deleted before this sink read it"
                );
                match self.retry("missed", || driver.missed(first, last)) {
                    Outcome::Done(()) => self.delivered = last,
                    other => return other,
                }
            }
            if last_checkpoint.elapsed() >= checkpoint_every {
                if let o @ (Outcome::Fatal | Outcome::Stopped | Outcome::Rejected(_)) =
                    self.checkpoint(driver)
                {
                    return o;
                }
                last_checkpoint = Instant::now();
            }
        }
    }

    /// Writes `events`. A rejected batch is split in halves until each
    /// rejected event stands alone; those go to the dead-letter file, the
    /// rest is written in order.
    fn write(&self, driver: &mut dyn Driver, events: &[SinkEvent<'_>]) -> Outcome<()> {
        match self.retry("write", || driver.write(events)) {
            Outcome::Rejected(m) if events.len() == 1 => self.dead_letter(&events[0], &m),
            Outcome::Rejected(_) => {
                let (head, tail) = events.split_at(events.len() / 2);
                match self.write(driver, head) {
                    Outcome::Done(()) => self.write(driver, tail),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Records a rejected event durably (retrying while the disk refuses),
    /// so that the sink can move past it.
    fn dead_letter(&self, event: &SinkEvent<'_>, error: &str) -> Outcome<()> {
        let path = dead_letter::path(&self.checkpoints_dir, &self.config.name);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let outcome = self.retry("dead-letter", || {
            dead_letter::append(&path, event, error, now)
                .map_err(|e| Error::retry(format!("{}: {e}", path.display())))
        });
        if let Outcome::Done(()) = outcome {
            let total = self.shared.rejected.fetch_add(1, Ordering::AcqRel) + 1;
            // A topic refused for its length would flood the log.
            let topic = match event.topic().char_indices().nth(120) {
                Some((cut, _)) => format!("{}…", &event.topic()[..cut]),
                None => event.topic().to_owned(),
            };
            tracing::error!(
                iteration = event.iteration(),
                topic,
                total,
                "the sink rejected an event; kept in {}: {error}",
                path.display()
            );
            let mut live = self.shared.live.lock();
            live.errors += 1;
            live.last_error = Some(format!(
                "rejected iteration {} ({topic}): {error}",
                event.iteration()
            ));
        }
        outcome
    }

    /// Flushes the sink and records everything delivered as its checkpoint.
    fn checkpoint(&self, driver: &mut dyn Driver) -> Outcome<()> {
        if self.delivered <= self.shared.checkpoint.load(Ordering::Acquire) {
            return Outcome::Done(());
        }
        match self.retry("flush", || driver.flush()) {
            Outcome::Done(()) => {}
            other => return other,
        }
        let name = checkpoint_name(&self.config.name);
        match retention::store_value(&self.checkpoints_dir, &name, self.delivered) {
            Ok(()) => self
                .shared
                .checkpoint
                .store(self.delivered, Ordering::Release),
            Err(e) => {
                // Delivery goes on; the checkpoint is retried next time (a
                // crash meanwhile only means more redelivery).
                tracing::error!("cannot record the sink checkpoint: {e}");
                let mut live = self.shared.live.lock();
                live.errors += 1;
                live.last_error = Some(format!("recording the checkpoint: {e}"));
            }
        }
        Outcome::Done(())
    }

    /// Calls `f` until it succeeds, backing off on retryable errors.
    fn retry<T>(&self, call: &str, mut f: impl FnMut() -> Result<T, Error>) -> Outcome<T> {
        let mut delay = Duration::from_millis(self.config.retry_min_ms);
        let max = Duration::from_millis(self.config.retry_max_ms);
        loop {
            match f() {
                Ok(v) => {
                    let mut live = self.shared.live.lock();
                    if live.state == SinkState::Retrying {
                        live.state = SinkState::Running;
                        tracing::info!(call, "sink recovered");
                    }
                    return Outcome::Done(v);
                }
                Err(Error::Retryable(m)) => {
                    tracing::warn!(
                        call,
                        retry_in_ms = delay.as_millis() as u64,
                        "sink error: {m}"
                    );
                    self.shared
                        .failed(SinkState::Retrying, format!("{call}: {m}"));
                    if self.stop.sleep(delay) {
                        return Outcome::Stopped;
                    }
                    delay = (delay * 2).min(max);
                }
                Err(Error::Rejected(m)) if call == "write" => return Outcome::Rejected(m),
                Err(Error::Fatal(m) | Error::Rejected(m)) => {
                    tracing::error!(call, "sink stopped by a fatal error: {m}");
                    self.shared
                        .failed(SinkState::Failed, format!("{call}: {m}"));
                    return Outcome::Fatal;
                }
            }
        }
    }
}
