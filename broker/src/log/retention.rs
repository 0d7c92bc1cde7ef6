//! Retention: old segments are deleted once a checkpoint holds the state
//! they led to, so state is never lost — only intermediate history.
//!
//! A segment is deleted only if it is closed and every event in it is
//! covered by the last completed checkpoint; then, oldest first, while the
//! log is larger than the size limit or the segment is older than the age
//! limit. The first iteration still in the log is recorded in
//! `<log-dir>/retained-from` (written before any file is deleted), so that
//! a history subscription asking for older events is told exactly what it
//! missed.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::LogError;

const FILE: &str = "retained-from";

/// Limits on the history kept; `None` keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many bytes of segments (the active one aside).
    pub max_bytes: Option<u64>,
    /// Delete segments last written longer ago than this.
    pub max_age: Option<Duration>,
}

impl Retention {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.max_bytes.is_some() || self.max_age.is_some()
    }
}

/// Where the last iteration of the deleted history is recorded: a reader
/// positioned before it missed events (iterations are not dense, so the
/// first retained iteration alone cannot say).
pub const DELETED_THROUGH: &str = "deleted-through";

/// Where the greatest iteration of a forgotten delete is recorded.
pub const FORGOTTEN_DELETES: &str = "deletes-forgotten-through";

/// File holding the iteration up to which numbers may have been handed
/// out: a restart numbers above it, even if the events that used them were
/// lost in a crash and the clock stepped back.
pub const ITERATIONS_RESERVED: &str = "iterations-reserved-through";

/// The first retained iteration, if retention ever deleted anything.
pub fn load(dir: &Path) -> Result<Option<u64>, LogError> {
    load_value(dir, FILE)
}

/// Records the first retained iteration durably.
pub fn store(dir: &Path, first: u64) -> Result<(), LogError> {
    store_value(dir, FILE, first)
}

/// Reads an iteration recorded in `dir/name`.
pub fn load_value(dir: &Path, name: &str) -> Result<Option<u64>, LogError> {
    let path = dir.join(name);
    crate::durable::read_u64(&path).map_err(LogError::io(&path))
}

/// Records an iteration in `dir/name` durably.
pub fn store_value(dir: &Path, name: &str, value: u64) -> Result<(), LogError> {
    Ok(crate::durable::write_u64(&dir.join(name), value)?)
}

/// Which of `segments` (first iteration, size, last modified), oldest first,
/// to delete: a prefix of the closed segments wholly covered by `covered`.
pub fn select(
    segments: &[(u64, u64, SystemTime)],
    covered: u64,
    limits: Retention,
    now: SystemTime,
) -> usize {
    // The last segment is the active one; a segment is covered when the
    // next one starts at or before `covered + 1`.
    let deletable = segments
        .windows(2)
        .take_while(|w| w[1].0 <= covered.saturating_add(1))
        .count();
    let mut total: u64 = segments.iter().map(|s| s.1).sum();
    let mut n = 0;
    while n < deletable {
        let (_, size, modified) = segments[n];
        let too_big = limits.max_bytes.is_some_and(|max| total > max);
        let too_old = limits
            .max_age
            .is_some_and(|age| now.duration_since(modified).unwrap_or_default() > age);
        if !too_big && !too_old {
            break;
        }
        total -= size;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_covered_closed_segments_go_oldest_first() {
        let now = SystemTime::now();
        let old = now - Duration::from_secs(3600);
        let segs = [
            (1, 100, old),
            (10, 100, old),
            (20, 100, old),
            (30, 100, now),
        ];
        let by_size = Retention {
            max_bytes: Some(150),
            max_age: None,
        };
        // Covered up to 19: segments 1 and 10 may go; size wants 3 gone.
        assert_eq!(select(&segs, 19, by_size, now), 2);
        // Covered up to 9: only the first.
        assert_eq!(select(&segs, 9, by_size, now), 1);
        // The active (last) segment never goes.
        assert_eq!(select(&segs, u64::MAX - 1, by_size, now), 3);
        let by_age = Retention {
            max_bytes: None,
            max_age: Some(Duration::from_secs(60)),
        };
        assert_eq!(select(&segs, 100, by_age, now), 3);
        assert_eq!(select(&segs, 100, Retention::default(), now), 0);
    }

    #[test]
    fn retained_from_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        store(dir.path(), 42).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(42));
    }
}
