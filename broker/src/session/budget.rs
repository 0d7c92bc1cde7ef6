//! The memory that live events waiting for subscribers may take: a buffer
//! per connection (`--subscriber-buffer`) and one budget for all of them
//! together (`--subscriber-memory`).
//!
//! A connection queues events up to its buffer while the broker-wide total
//! is under the budget. Once the total is over it, a connection may still
//! queue up to its fair share (the budget divided by the connections
//! open), so that subscribers that keep up are not conflated because
//! others fell behind; the total is therefore bounded by twice the budget.
//! Past those bounds the queue conflates (see [`super::queue`]).
//!
//! The bytes counted are the encoded events as queued. An event queued for
//! many connections is one allocation shared by all of them, so the count
//! is an upper bound of what the queues hold.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The byte budget shared by every connection of the broker.
#[derive(Debug)]
pub struct Budget {
    /// Bytes one connection may queue before it conflates.
    pub per_conn: usize,
    limit: usize,
    used: AtomicUsize,
    conns: AtomicUsize,
}

impl Budget {
    pub fn new(per_conn: usize, limit: usize) -> Budget {
        Budget {
            per_conn,
            limit,
            used: AtomicUsize::new(0),
            conns: AtomicUsize::new(0),
        }
    }

    /// Counts `n` more bytes for a connection that holds `own` already, if
    /// the budget allows it; `false` (and nothing counted) if not.
    pub fn admit(&self, own: usize, n: usize) -> bool {
        let used = self.used.fetch_add(n, Ordering::Relaxed) + n;
        if used <= self.limit || own + n <= self.share() {
            true
        } else {
            self.used.fetch_sub(n, Ordering::Relaxed);
            false
        }
    }

    /// Whether a connection holding `own` bytes holds more than its share
    /// while the budget is spent.
    pub fn over(&self, own: usize) -> bool {
        self.used.load(Ordering::Relaxed) > self.limit && own > self.share()
    }

    /// Counts bytes whatever the budget (conflated values, which are
    /// bounded by the topics a connection follows, not by time).
    pub fn force(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    /// Gives back bytes counted by [`Budget::admit`] or [`Budget::force`].
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Bytes counted now, for every connection together.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn share(&self) -> usize {
        self.limit / self.conns.load(Ordering::Relaxed).max(1)
    }

    pub(super) fn opened(&self) {
        self.conns.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn closed(&self) {
        self.conns.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_budget_a_connection_keeps_its_fair_share() {
        let b = Budget::new(1000, 1000);
        b.opened();
        b.opened();
        assert!(b.admit(0, 900));
        // The total would pass 1000, but 100 is within the share of 500.
        assert!(b.admit(0, 100));
        assert!(b.admit(100, 400));
        // Past the share while the budget is spent: refused, not counted.
        assert!(!b.admit(500, 1));
        assert_eq!(b.used(), 1400);
        assert!(b.over(900));
        assert!(!b.over(500));
        b.release(900);
        assert!(b.admit(500, 1));
        assert!(!b.over(900));
    }
}
