//! What operators see of each sink: state, checkpoint, lag, errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use spread_protocol::SinkStatus;

/// A sink's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkState {
    /// Opening its instance.
    Starting,
    /// Delivering (or caught up and waiting).
    Running,
    /// The last call failed with a retryable error; backing off.
    Retrying,
    /// Stopped by a fatal error or a panic; restart the broker to resume.
    Failed,
    /// Stopped with the broker.
    Stopped,
}

impl SinkState {
    /// Stable lowercase name, as in status reports.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Starting => "starting",
            SinkState::Running => "running",
            SinkState::Retrying => "retrying",
            SinkState::Failed => "failed",
            SinkState::Stopped => "stopped",
        }
    }
}

/// What changes as a sink runs.
#[derive(Debug)]
pub struct Live {
    pub state: SinkState,
    /// Events delivered since start.
    pub delivered: u64,
    /// Failed calls since start.
    pub errors: u64,
    pub last_error: Option<String>,
    /// Since when the sink has had committed events it has not delivered.
    pub behind_since: Option<Instant>,
}

/// One sink's shared status.
#[derive(Debug)]
pub struct SinkShared {
    /// Its configured name.
    pub name: String,
    /// `name version (path)` of the plugin.
    pub plugin: String,
    /// Whether retention waits for it.
    pub hold_retention: bool,
    /// Its durable checkpoint: everything up to here was delivered and flushed.
    pub checkpoint: AtomicU64,
    /// Events in its dead-letter file (all runs).
    pub rejected: AtomicU64,
    pub live: Mutex<Live>,
}

impl SinkShared {
    /// A starting sink at `checkpoint`.
    pub fn new(name: &str, plugin: String, hold_retention: bool, checkpoint: u64) -> SinkShared {
        SinkShared {
            name: name.to_owned(),
            plugin,
            hold_retention,
            checkpoint: AtomicU64::new(checkpoint),
            rejected: AtomicU64::new(0),
            live: Mutex::new(Live {
                state: SinkState::Starting,
                delivered: 0,
                errors: 0,
                last_error: None,
                behind_since: None,
            }),
        }
    }

    /// Records an error and the state it leads to.
    pub fn failed(&self, state: SinkState, error: String) {
        let mut live = self.live.lock();
        live.state = state;
        live.errors += 1;
        live.last_error = Some(error);
    }

    /// Sets the state.
    pub fn set_state(&self, state: SinkState) {
        self.live.lock().state = state;
    }
}

/// Every sink's status, and what retention must keep for them.
#[derive(Debug, Default)]
pub struct SinkBoard {
    sinks: Vec<Arc<SinkShared>>,
    /// Last iteration recovered from disk and first of this run: numbering
    /// jumps between them at start, which lag counts must skip.
    numbering_gap: (AtomicU64, AtomicU64),
}

impl SinkBoard {
    /// A board over `sinks`.
    pub fn new(sinks: Vec<Arc<SinkShared>>) -> SinkBoard {
        SinkBoard {
            sinks,
            numbering_gap: Default::default(),
        }
    }

    /// Records where iteration numbering jumped at start.
    pub fn set_numbering_gap(&self, last_recovered: u64, start: u64) {
        self.numbering_gap
            .0
            .store(last_recovered, Ordering::Release);
        self.numbering_gap.1.store(start, Ordering::Release);
    }

    /// The sinks.
    #[cfg(test)]
    pub fn sinks(&self) -> &[Arc<SinkShared>] {
        &self.sinks
    }

    /// The lowest checkpoint among sinks that hold retention.
    pub fn retention_floor(&self) -> Option<u64> {
        self.sinks
            .iter()
            .filter(|s| s.hold_retention)
            .map(|s| s.checkpoint.load(Ordering::Acquire))
            .min()
    }

    /// Events in `checkpoint + 1 ..= committed`, skipping the jump.
    pub fn lag(&self, checkpoint: u64, committed: u64) -> u64 {
        let last_recovered = self.numbering_gap.0.load(Ordering::Acquire);
        let start = self.numbering_gap.1.load(Ordering::Acquire);
        if checkpoint >= start {
            committed.saturating_sub(checkpoint)
        } else {
            last_recovered.saturating_sub(checkpoint) + committed.saturating_sub(start)
        }
    }

    /// Every sink's status, lag measured against `committed`.
    pub fn reports(&self, committed: &crate::log::committed::Committed) -> Vec<SinkStatus> {
        let now = Instant::now();
        let committed_at = |it: u64| committed.reached_at(it);
        let committed = committed.get();
        self.sinks
            .iter()
            .map(|s| {
                let checkpoint = s.checkpoint.load(Ordering::Acquire);
                let live = s.live.lock();
                let lag_events = self.lag(checkpoint, committed);
                SinkStatus {
                    name: s.name.clone(),
                    plugin: s.plugin.clone(),
                    state: live.state.as_str().to_string(),
                    checkpoint,
                    lag_events,
                    // How long ago the first event it lacks was committed.
                    lag_ms: match lag_events {
                        0 => 0,
                        _ => committed_at(checkpoint.saturating_add(1))
                            .map_or(0, |at| now.duration_since(at).as_millis() as u64),
                    },
                    delivered: live.delivered,
                    errors: live.errors,
                    last_error: live.last_error.clone(),
                    rejected: s.rejected.load(Ordering::Acquire),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_skips_the_numbering_jump_at_start() {
        let board = SinkBoard::new(vec![]);
        board.set_numbering_gap(100, 1_000_000);
        // 10 old events unconsumed plus 5 new ones.
        assert_eq!(board.lag(90, 1_000_005), 15);
        assert_eq!(board.lag(100, 1_000_000), 0);
        assert_eq!(board.lag(1_000_002, 1_000_005), 3);
    }

    #[test]
    fn the_floor_ignores_sinks_that_do_not_hold_retention() {
        let a = Arc::new(SinkShared::new("a", "p".into(), true, 50));
        let b = Arc::new(SinkShared::new("b", "p".into(), false, 10));
        let board = SinkBoard::new(vec![a.clone(), b]);
        assert_eq!(board.retention_floor(), Some(50));
        a.checkpoint.store(70, Ordering::Release);
        assert_eq!(board.retention_floor(), Some(70));
        assert_eq!(SinkBoard::new(vec![]).retention_floor(), None);
    }
}
