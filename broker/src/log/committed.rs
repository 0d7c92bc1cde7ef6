//! The committed iteration: the highest one whose record is durable under
//! the durability policy, and the point up to which readers of the log
//! (history catch-ups, sinks) may read. Advanced once per engine round;
//! readers can wait for it to move. It also remembers when it moved (a
//! sample every 10 ms, the last 64 Ki of them), so a reader's lag can be
//! told in time: how long ago the first event it has not consumed was
//! committed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How often the value is sampled with its time.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Samples kept (about 11 minutes at one per 10 ms).
const SAMPLES: usize = 65_536;

/// A watermark that only grows, with waiting.
#[derive(Debug, Default)]
pub struct Committed {
    value: AtomicU64,
    lock: Mutex<VecDeque<(u64, Instant)>>,
    moved: Condvar,
}

impl Committed {
    /// Starts at `value`.
    pub fn new(value: u64) -> Committed {
        Committed {
            value: AtomicU64::new(value),
            ..Committed::default()
        }
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Raises the value to `to` and wakes waiters (no syscall when none wait).
    pub fn advance(&self, to: u64) {
        self.value.fetch_max(to, Ordering::AcqRel);
        // Taking the lock orders this store before a waiter's check-then-wait.
        let mut samples = self.lock.lock();
        let now = Instant::now();
        if samples
            .back()
            .is_none_or(|(_, at)| now.duration_since(*at) >= SAMPLE_EVERY)
        {
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back((to, now));
        }
        drop(samples);
        self.moved.notify_all();
    }

    /// About when the value first reached `iteration` (within 10 ms; the
    /// oldest sample kept when it was earlier); `None` if it has not yet.
    pub fn reached_at(&self, iteration: u64) -> Option<Instant> {
        let samples = self.lock.lock();
        let i = samples.partition_point(|(v, _)| *v < iteration);
        samples
            .get(i)
            .or(samples.front().filter(|_| i == 0))
            .map(|(_, at)| *at)
    }

    /// Waits until the value exceeds `seen`, `timeout` passes or
    /// `interrupted` holds after an [`interrupt`](Committed::interrupt);
    /// returns the value.
    pub fn wait_beyond(&self, seen: u64, timeout: Duration, interrupted: impl Fn() -> bool) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock();
        while self.get() <= seen && !interrupted() {
            if self.moved.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
        self.get()
    }

    /// Wakes every waiter so it re-checks its interruption condition.
    pub fn interrupt(&self) {
        drop(self.lock.lock());
        self.moved.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waiters_wake_when_it_moves() {
        let c = Arc::new(Committed::new(5));
        let c2 = c.clone();
        let waiter =
            std::thread::spawn(move || c2.wait_beyond(5, Duration::from_secs(30), || false));
        c.advance(7);
        assert_eq!(waiter.join().unwrap(), 7);
        // Never goes back; times out when nothing moves.
        c.advance(6);
        assert_eq!(c.wait_beyond(7, Duration::from_millis(1), || false), 7);
        // An interruption ends a wait without a change.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c2, stop2) = (c.clone(), stop.clone());
        let waiter = std::thread::spawn(move || {
            c2.wait_beyond(7, Duration::from_secs(30), || stop2.load(Ordering::Acquire))
        });
        stop.store(true, Ordering::Release);
        c.interrupt();
        assert_eq!(waiter.join().unwrap(), 7);
    }

    #[test]
    fn it_remembers_when_it_moved() {
        let c = Committed::new(0);
        assert_eq!(c.reached_at(1), None);
        let before = Instant::now();
        c.advance(10);
        let at = c.reached_at(5).unwrap();
        assert!(at >= before);
        assert_eq!(c.reached_at(10), Some(at));
        assert_eq!(c.reached_at(11), None);
    }
}
