//! Timestamps that never run backwards, and globally unique event ids.

use std::time::{SystemTime, UNIX_EPOCH};

use spread_protocol::EventId;

/// Microseconds since the Unix epoch by the system clock.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A hybrid logical clock in microseconds: each stamp is greater than the
/// previous one and than every client timestamp the broker accepted, even
/// when the system clock steps back, so the broker's own writes stay
/// ordered after any (bounded) future timestamp it has seen. The system
/// time is read once per engine round ([`Clock::refresh`]), not once per
/// event.
#[derive(Debug)]
pub struct Clock {
    last: u64,
    now: u64,
    source: fn() -> u64,
}

/// How far a debug build's engine clock is shifted from the system's, in
/// µs: `SPREAD_TEST_CLOCK_OFFSET_SECS` (signed), a test hook for a cluster
/// node whose clock is wrong. Release builds ignore it.
fn test_offset() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        if !cfg!(debug_assertions) {
            return 0;
        }
        std::env::var("SPREAD_TEST_CLOCK_OFFSET_SECS")
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .map_or(0, |secs| secs.saturating_mul(1_000_000))
    })
}

fn skewed_now_micros() -> u64 {
    now_micros().saturating_add_signed(test_offset())
}

impl Clock {
    /// A clock reading the system time (shifted by the test hook above in
    /// debug builds).
    pub fn system() -> Self {
        if test_offset() != 0 {
            tracing::warn!(
                offset_us = test_offset(),
                "test hook: this node's clock is shifted (SPREAD_TEST_CLOCK_OFFSET_SECS)"
            );
            return Clock::with_source(skewed_now_micros);
        }
        Clock::with_source(now_micros)
    }

    /// A clock reading `source` (tests use a fixed source).
    pub fn with_source(source: fn() -> u64) -> Self {
        Clock {
            last: 0,
            now: source(),
            source,
        }
    }

    /// Reads the time source; stamps until the next refresh follow it.
    pub fn refresh(&mut self) {
        self.now = (self.source)();
    }

    /// The system time read at the last refresh.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Takes an accepted client timestamp into account: later stamps are
    /// greater than it.
    pub fn observe(&mut self, timestamp: u64) {
        self.last = self.last.max(timestamp);
    }

    /// The next timestamp, strictly after the previous one and after `after`
    /// (the topic's current timestamp, so that a write stamped here always
    /// supersedes what its writer could have read). A topic stamped far in
    /// the future by a client does not drag the clock of other topics along.
    pub fn stamp(&mut self, after: Option<u64>) -> u64 {
        let own = self.now.max(self.last.saturating_add(1));
        self.last = own;
        match after {
            Some(t) => own.max(t.saturating_add(1)),
            None => own,
        }
    }
}

/// Generates event ids: 8 random bytes chosen at start, then a counter.
/// Unique within the process by the counter and across processes and nodes
/// by the random prefix.
#[derive(Debug)]
pub struct IdGen {
    prefix: [u8; 8],
    counter: u64,
}

impl IdGen {
    /// A generator with a random prefix.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut prefix = [0u8; 8];
        getrandom::getrandom(&mut prefix)?;
        Ok(IdGen { prefix, counter: 0 })
    }

    /// A generator with a fixed prefix (tests).
    #[cfg(test)]
    pub fn with_prefix(prefix: [u8; 8]) -> Self {
        IdGen { prefix, counter: 0 }
    }

    /// The next id.
    pub fn next_id(&mut self) -> EventId {
        self.counter += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.prefix);
        id[8..].copy_from_slice(&self.counter.to_be_bytes());
        EventId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_strictly_increase_even_when_time_stands_still() {
        let mut c = Clock::with_source(|| 1000);
        assert_eq!(c.stamp(None), 1000);
        assert_eq!(c.stamp(None), 1001);
        assert_eq!(c.stamp(None), 1002);
    }

    #[test]
    fn stamp_follows_the_topic_it_overwrites() {
        let mut c = Clock::with_source(|| 1000);
        assert_eq!(c.stamp(Some(5000)), 5001);
        // Other topics keep the real clock.
        assert_eq!(c.stamp(None), 1001);
    }

    #[test]
    fn stamps_follow_an_observed_future_timestamp() {
        let mut c = Clock::with_source(|| 1000);
        c.observe(1500);
        assert_eq!(c.stamp(None), 1501);
        // An older observation does not move it back.
        c.observe(10);
        assert_eq!(c.stamp(None), 1502);
    }

    #[test]
    fn ids_are_unique() {
        let mut g = IdGen::with_prefix([1; 8]);
        let a = g.next_id();
        let b = g.next_id();
        assert_ne!(a, b);
        assert_eq!(&a.0[..8], &[1; 8]);
    }
}
