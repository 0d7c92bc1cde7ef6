//! Every bound on what a client can make the broker spend: the configured
//! ones, resolved from the settings into one value that the listener, the
//! connections and the engine share, and the fixed ones, named here. Each
//! has its error code or behaviour in docs/operations.md ("Limits and
//! failure modes").

use std::time::Duration;

use crate::config::Config;

/// The configured limits.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Simultaneous connections (fewer if descriptors cannot hold them).
    pub connections: usize,
    /// Simultaneous connections per address (IPv6: per /64).
    pub connections_per_ip: usize,
    /// TLS handshake and hello, together.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing this long is closed.
    pub idle_timeout: Option<Duration>,
    /// A connection whose socket accepts nothing this long is closed.
    pub write_timeout: Option<Duration>,
    /// Largest frame after the hello.
    pub frame: usize,
    /// Unanswered requests per connection before it is no longer read.
    pub inflight: usize,
    /// Publishes per second per connection.
    pub publish_rate: Option<u32>,
    /// How far ahead of the broker's clock a publish's timestamp may be.
    pub clock_skew: Duration,
    /// Live subscriptions per connection.
    pub subscriptions: usize,
    /// Topics in the broker, tombstones included.
    pub topics: usize,
    /// Bytes of live events queued per connection before it conflates.
    pub subscriber_buffer: usize,
    /// Bytes of live events queued for all connections together before
    /// those over their share conflate.
    pub subscriber_memory: usize,
    /// Replays, catch-ups and large snapshots.
    pub reads: crate::reads::Limits,
}

impl Limits {
    pub fn of(config: &Config) -> Limits {
        Limits {
            connections: config.max_connections,
            connections_per_ip: config.max_connections_per_ip,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            frame: config.max_frame,
            inflight: config.max_inflight,
            publish_rate: config.max_publish_rate,
            clock_skew: config.max_clock_skew,
            subscriptions: config.max_subscriptions,
            topics: config.max_topics,
            subscriber_buffer: config.subscriber_buffer,
            subscriber_memory: config.subscriber_memory,
            reads: config.reads,
        }
    }
}

/// Largest frame read before the hello is accepted (a hello with a token
/// of a few kilobytes fits many times over).
pub(crate) const HELLO_FRAME: usize = 64 * 1024;

/// Refusal handshakes (an error frame for a connection over a limit)
/// running at once; more are closed without one.
pub(crate) const REFUSALS_AT_ONCE: usize = 64;

/// File descriptors kept for everything but client connections (log
/// segments, sinks, archive connections, reads).
pub(crate) const FD_RESERVE: u64 = 512;

/// Bytes of history (catch-ups, replays) a connection may have queued
/// before its reads park.
pub(crate) const HISTORY_QUEUE: usize = 4 * 1024 * 1024;

/// How many times the subscriber buffer a history subscription may queue
/// before its connection is closed (it resumes from the log when it
/// returns).
pub(crate) const EXACT_QUEUE_FACTOR: usize = 4;

/// How many times the subscriber buffer the conflated latest values of a
/// connection may hold (one entry per subscription and topic, so many
/// overlapping subscriptions multiply it) before it is closed...
pub(crate) const CONFLATED_FACTOR: usize = 16;
/// ...with at least this many bytes allowed, whatever the buffer.
pub(crate) const CONFLATED_MIN: usize = 64 * 1024;
