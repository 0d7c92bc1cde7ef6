//! The durable event log: every applied event, in iteration order, in
//! append-only segment files under `<data-dir>/log/`.
//!
//! The engine appends each applied event's encoded bytes to an in-memory
//! buffer during a round and writes the whole buffer with one `write(2)` at
//! the end of the round, before any answer or delivery of that round leaves
//! the broker. What happens next depends on the [`Durability`] policy:
//! `always` hands the round's output to the [`sync`] thread, which releases
//! it only after `fdatasync` (all rounds queued meanwhile share one sync:
//! group commit); `interval` releases at once and syncs every few
//! milliseconds; `never` leaves syncing to the OS.
//!
//! On start the log is scanned: records are checked (length, CRC32C,
//! increasing iterations), a torn or corrupt tail of the last segment is
//! truncated, and every surviving event is handed back to rebuild the
//! latest-value table.

pub mod checkpoint;
pub mod committed;
pub mod cursor;
pub mod record;
pub mod retention;
pub mod segment;
pub mod sync;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use cursor::LogCursor;
use parking_lot::Mutex;
use spread_protocol::{Event, ProtocolError};

/// Why the log failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        source: std::io::Error,
    },
    /// A segment is damaged somewhere other than the tail of the last one.
    #[error("{path}: corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    /// The checkpoint is damaged and retention deleted the segments it
    /// replaced, so the log alone cannot rebuild the state.
    #[error("{path}: unusable checkpoint ({reason}), and retention already deleted the log history it replaced: restore the data dir from a backup; starting from the log alone would lose every topic last written before the retained history")]
    UnusableCheckpoint {
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The last segment has a damaged record followed by valid ones.
    #[error("{path}: damaged record at byte {offset} ({reason}) followed by valid records from byte {next}: this is corruption, not a torn write; start once with --repair-log to cut the log there (the cut bytes are kept in a .damaged file beside it)")]
    DamagedMiddle {
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// Where the next valid record starts.
        next: u64,
        reason: &'static str,
    },
    /// A record's checksum matched but its event does not decode.
    #[error("{path}: undecodable event: {source}")]
    Decode {
        path: PathBuf,
        source: ProtocolError,
    },
}

impl LogError {
    fn io(path: &Path) -> impl Fn(std::io::Error) -> LogError + '_ {
        move |source| LogError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// When an appended event is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Answer a publish only after its record is synced (group commit).
    Always,
    /// Sync at most this often; answer after the `write(2)`.
    Interval(Duration),
    /// Never sync explicitly; the OS writes back when it likes.
    Never,
}

/// Default sync period of the `interval` policy.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(50);

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Durability::Always),
            "interval" => Ok(Durability::Interval(DEFAULT_SYNC_INTERVAL)),
            "never" => Ok(Durability::Never),
            other => {
                let ms = other
                    .strip_prefix("interval:")
                    .and_then(|v| v.strip_suffix("ms"))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        format!("unknown durability {other:?}: always, interval, interval:<N>ms or never")
                    })?;
                Ok(Durability::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

/// How the log is laid out and synced.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Directory of the segments.
    pub dir: PathBuf,
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes: u64,
    /// Sync policy.
    pub durability: Durability,
    /// History kept.
    pub retention: retention::Retention,
    /// Cut the last segment at damage even when valid records follow it,
    /// keeping the cut bytes aside (`--repair-log`).
    pub repair: bool,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Segments read.
    pub segments: usize,
    /// Records replayed from the log.
    pub records: u64,
    /// Iteration covered by the checkpoint loaded, if any.
    pub checkpoint: Option<u64>,
    /// When that checkpoint was written (its file's modification time).
    pub checkpoint_written: Option<std::time::SystemTime>,
    /// Segments wholly covered by the checkpoint, not read.
    pub skipped_segments: usize,
    /// Highest iteration on disk.
    pub last_iteration: Option<u64>,
    /// A truncated tail: the segment, the bytes dropped and why.
    pub truncated: Option<(PathBuf, u64, &'static str)>,
    /// Time spent.
    pub elapsed: Duration,
}

struct Segment {
    first: u64,
    path: PathBuf,
    /// Iteration of its last record, when known (not for segments skipped
    /// at recovery).
    last: Option<u64>,
    /// (iteration, offset) every [`segment::INDEX_EVERY`] bytes.
    index: Vec<(u64, u64)>,
}

/// The log, owned by the engine thread.
pub struct Log {
    opts: LogOptions,
    segments: Vec<Segment>,
    /// The segment being appended to, once there is one.
    active: Option<Arc<File>>,
    active_len: u64,
    next_index: u64,
    /// Records of the current round, not yet written.
    buf: Vec<u8>,
    /// (iteration, offset in `buf`) of each buffered record.
    buf_records: Vec<(u64, u64)>,
    /// The active file, for the interval sync thread.
    shared_active: Arc<Mutex<Option<Arc<File>>>>,
    /// First iteration still in the log, once retention deleted anything.
    retained_from: Option<u64>,
}

impl Log {
    /// Opens the log in `opts.dir`, replaying every valid record into
    /// `restore` in iteration order and truncating a damaged tail.
    pub fn open(
        opts: LogOptions,
        mut restore: impl FnMut(Event),
    ) -> Result<(Log, Recovery), LogError> {
        let started = Instant::now();
        std::fs::create_dir_all(&opts.dir).map_err(LogError::io(&opts.dir))?;
        let mut report = Recovery {
            checkpoint: checkpoint::load(&opts.dir, &mut restore)?,
            ..Recovery::default()
        };
        if report.checkpoint.is_some() {
            report.checkpoint_written = std::fs::metadata(checkpoint::path(&opts.dir))
                .and_then(|m| m.modified())
                .ok();
        }
        let covered = report.checkpoint.unwrap_or(0);
        let files = segment::list_recovering(&opts.dir)?;
        let mut segments = Vec::new();
        let mut active_len = 0;
        let count = files.len();
        for (i, (first, path)) in files.iter().cloned().enumerate() {
            let is_last = i + 1 == count;
            // A segment followed by one starting at or before the checkpoint
            // holds nothing the checkpoint lacks: not read at all.
            if !is_last && report.checkpoint.is_some() && files[i + 1].0 <= covered + 1 {
                report.skipped_segments += 1;
                segments.push(Segment {
                    first,
                    path,
                    last: None,
                    index: Vec::new(),
                });
                continue;
            }
            let scanned = segment::scan(&path, |iteration, bytes| {
                if iteration <= covered && report.checkpoint.is_some() {
                    return Ok(());
                }
                let event = Event::decode(Bytes::copy_from_slice(bytes)).map_err(|source| {
                    LogError::Decode {
                        path: path.clone(),
                        source,
                    }
                })?;
                restore(event);
                Ok(())
            })?;
            if let Some((bytes, reason)) = scanned.damaged {
                if !is_last {
                    return Err(LogError::Corrupt {
                        path,
                        offset: scanned.valid_len,
                        reason,
                    });
                }
                // A torn write only ever damages the end. Valid records
                // after the damage were acknowledged: never cut them
                // silently.
                if let Some(next) = scanned.valid_after_damage {
                    if !opts.repair {
                        return Err(LogError::DamagedMiddle {
                            path,
                            offset: scanned.valid_len,
                            next,
                            reason,
                        });
                    }
                    let aside = quarantine(&path, scanned.valid_len)?;
                    tracing::error!(
                        segment = %path.display(),
                        kept_in = %aside.display(),
                        offset = scanned.valid_len,
                        "--repair-log: cut the log at a damaged record followed by valid ones"
                    );
                }
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(LogError::io(&path))?;
                f.set_len(scanned.valid_len).map_err(LogError::io(&path))?;
                f.sync_all().map_err(LogError::io(&path))?;
                tracing::warn!(
                    segment = %path.display(),
                    bytes,
                    reason,
                    "truncated a damaged log tail"
                );
                report.truncated = Some((path.clone(), bytes, reason));
            }
            report.segments += 1;
            report.records += scanned.records;
            report.last_iteration = scanned.last.or(report.last_iteration);
            if report.last_iteration < report.checkpoint {
                report.last_iteration = report.checkpoint;
            }
            active_len = scanned.valid_len;
            segments.push(Segment {
                first,
                path,
                last: scanned.last,
                index: scanned.index,
            });
        }
        // Keep appending to the last segment while it has room.
        let mut active = None;
        if let Some(last) = segments.last() {
            if active_len < opts.segment_bytes {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .read(true)
                    .open(&last.path)
                    .map_err(LogError::io(&last.path))?;
                active = Some(Arc::new(f));
            }
        }
        report.elapsed = started.elapsed();
        let retained_from = retention::load(&opts.dir)?;
        let log = Log {
            retained_from,
            next_index: active_len,
            shared_active: Arc::new(Mutex::new(active.clone())),
            active,
            active_len,
            segments,
            buf: Vec::with_capacity(256 * 1024),
            buf_records: Vec::new(),
            opts,
        };
        Ok((log, report))
    }

    /// The sync policy.
    pub fn durability(&self) -> Durability {
        self.opts.durability
    }

    /// Buffers `event` (already numbered) for the end of the round.
    pub fn append(&mut self, event: &Event) {
        self.buf_records
            .push((event.iteration(), self.buf.len() as u64));
        record::append(&mut self.buf, event.iteration(), event.encoded());
    }

    /// Writes the round's records with one `write(2)`, rolling to a new
    /// segment first if the active one is full. Returns the file written to,
    /// or `None` when the round logged nothing. On error nothing of the
    /// round is left in the file and the records stay buffered for a retry.
    pub fn write(&mut self) -> Result<Option<Arc<File>>, LogError> {
        let Some(&(first, _)) = self.buf_records.first() else {
            return Ok(None);
        };
        let full = self.active_len + self.buf.len() as u64 > self.opts.segment_bytes
            && self.active_len > segment::HEADER_LEN as u64;
        if self.active.is_none() || full {
            self.roll(first)?;
        }
        let Some(file) = self.active.clone() else {
            return Ok(None);
        };
        let path = self.active_path();
        if let Err(source) = (&*file).write_all(&self.buf) {
            // Leave no partial record behind; the next round retries. A
            // partial record that cannot be cut off would sit before the
            // retried ones, where recovery stops: stop instead.
            if let Err(e) = file.set_len(self.active_len) {
                sync::fail_stop(&e);
            }
            return Err(LogError::Io { path, source });
        }
        let base = self.active_len;
        if let Some(seg) = self.segments.last_mut() {
            seg.last = self.buf_records.last().map(|(it, _)| *it).or(seg.last);
            for (iteration, off) in &self.buf_records {
                let at = base + *off;
                if at >= self.next_index {
                    seg.index.push((*iteration, at));
                    self.next_index = at + segment::INDEX_EVERY;
                }
            }
        }
        self.active_len += self.buf.len() as u64;
        self.buf.clear();
        self.buf_records.clear();
        Ok(Some(file))
    }

    fn active_path(&self) -> PathBuf {
        self.segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.opts.dir.clone())
    }

    /// Closes the active segment (synced) and starts one at `first`.
    fn roll(&mut self, first: u64) -> Result<(), LogError> {
        // Synced under every policy: recovery refuses a damaged segment that
        // is not the last one, so a closed segment must be whole on disk.
        if let Some(old) = &self.active {
            if let Err(e) = old.sync_data() {
                sync::fail_stop(&e);
            }
        }
        let path = self.opts.dir.join(segment::file_name(first));
        // On failure the old segment stays active and nothing is left
        // behind: the next round retries the roll.
        let file = Arc::new(segment::create(&path)?);
        if let Err(e) = sync_dir(&self.opts.dir) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.segments.push(Segment {
            first,
            path,
            last: None,
            index: Vec::new(),
        });
        self.active_len = segment::HEADER_LEN as u64;
        self.next_index = self.active_len;
        *self.shared_active.lock() = Some(file.clone());
        self.active = Some(file);
        Ok(())
    }

    /// The active file as the interval sync thread sees it.
    pub fn shared_active(&self) -> Arc<Mutex<Option<Arc<File>>>> {
        self.shared_active.clone()
    }

    /// First iteration still in the log, if retention deleted older ones.
    pub fn retained_from(&self) -> Option<u64> {
        self.retained_from
    }

    /// Deletes the oldest segments beyond the retention limits among those
    /// wholly covered by a checkpoint at `covered`. Returns how many.
    pub fn enforce_retention(&mut self, covered: u64) -> Result<usize, LogError> {
        if !self.opts.retention.is_limited() || self.segments.len() < 2 {
            return Ok(0);
        }
        // Not even the oldest segment is covered: nothing to look at.
        if self.segments[1].first > covered.saturating_add(1) {
            return Ok(0);
        }
        let mut stats = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            let meta = std::fs::metadata(&s.path).map_err(LogError::io(&s.path))?;
            let modified = meta
                .modified()
                .unwrap_or_else(|_| std::time::SystemTime::now());
            stats.push((s.first, meta.len(), modified));
        }
        let n = retention::select(
            &stats,
            covered,
            self.opts.retention,
            std::time::SystemTime::now(),
        );
        if n == 0 {
            return Ok(0);
        }
        let first_kept = self.segments[n].first;
        let last_gone = &self.segments[n - 1];
        // Every deleted record is below the first kept segment's name, so
        // that bound serves when the last one is unknown (segments skipped at
        // recovery), instead of reading a whole segment on the engine thread.
        let deleted_through = last_gone.last.unwrap_or(first_kept.saturating_sub(1));
        // Recorded before any file goes: readers learn exactly what they missed.
        retention::store_value(&self.opts.dir, retention::DELETED_THROUGH, deleted_through)?;
        retention::store(&self.opts.dir, first_kept)?;
        self.retained_from = Some(first_kept);
        for seg in self.segments.drain(..n) {
            std::fs::remove_file(&seg.path).map_err(LogError::io(&seg.path))?;
        }
        sync_dir(&self.opts.dir)?;
        Ok(n)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// The segment being appended to, if any.
    pub fn active_file(&self) -> Option<Arc<File>> {
        self.active.clone()
    }

    /// A cursor over the log after iteration `after`, for another thread:
    /// it starts at the sparse-index entry at or before `after` rather than
    /// at the beginning of its segment.
    pub fn cursor(&self, after: u64) -> LogCursor {
        let cursor = LogCursor::new(&self.opts.dir, after);
        let wanted = after.saturating_add(1);
        let at = self.segments.partition_point(|s| s.first <= wanted);
        let Some(seg) = at.checked_sub(1).and_then(|i| self.segments.get(i)) else {
            return cursor;
        };
        match seg.index.partition_point(|(it, _)| *it <= after) {
            0 => cursor,
            i => cursor.seek(seg.first, seg.index[i - 1].1),
        }
    }
}

/// Copies the bytes of `path` from `offset` on into `<path>.damaged-<offset>`
/// (synced) before recovery cuts them off.
fn quarantine(path: &Path, offset: u64) -> Result<PathBuf, LogError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{offset}"));
    let aside = PathBuf::from(aside);
    let mut tail = Vec::new();
    let mut f = File::open(path).map_err(LogError::io(path))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(LogError::io(path))?;
    f.read_to_end(&mut tail).map_err(LogError::io(path))?;
    let mut out = File::create(&aside).map_err(LogError::io(&aside))?;
    out.write_all(&tail).map_err(LogError::io(&aside))?;
    out.sync_all().map_err(LogError::io(&aside))?;
    Ok(aside)
}

/// Makes a directory entry (a new or renamed file) durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    crate::durable::sync_dir(dir).map_err(LogError::io(dir))
}

impl From<crate::durable::Failed> for LogError {
    fn from(f: crate::durable::Failed) -> LogError {
        LogError::Io {
            path: f.path,
            source: f.source,
        }
    }
}

#[cfg(test)]
mod tests;
