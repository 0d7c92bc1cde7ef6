//! Counters of every connection, logged when the broker stops.

use std::sync::atomic::AtomicU64;

/// Counters shared by all connections.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections closed because a history subscription fell too far behind.
    pub closed_slow: AtomicU64,
    /// Events replaced in a slow subscriber's queue.
    pub conflated: AtomicU64,
    /// Events written to subscribers.
    pub delivered: AtomicU64,
    /// Subscriptions refused: too many on their connection.
    pub refused_subscriptions: AtomicU64,
    /// Connections refused: too many from their address.
    pub refused_connections: AtomicU64,
    /// Publishes refused: over their connection's rate.
    pub rate_limited: AtomicU64,
    /// Connections closed for being idle.
    pub idle_closed: AtomicU64,
    /// Connections closed for bad input (malformed or oversized frames and
    /// the like; the log names the code of each).
    pub closed_for_bad_input: AtomicU64,
}
