//! The two sides of a benchmark, written once for both systems.

use std::future::Future;

/// A system under test.
pub trait System {
    /// Publishing side.
    type Pub: Publisher + Send + 'static;
    /// Subscribing side.
    type Sub: Subscriber + Send + 'static;
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// Opens a publishing connection.
    fn publisher(&self) -> impl Future<Output = anyhow::Result<Self::Pub>> + Send;
    /// Opens a connection subscribed to `topic`; returns once the
    /// subscription is active on the server.
    fn subscriber(&self, topic: &str) -> impl Future<Output = anyhow::Result<Self::Sub>> + Send;
}

/// Sends messages on one topic.
pub trait Publisher {
    /// Encodes one message into the send buffer.
    fn queue(&mut self, topic: &str, payload: &[u8]);
    /// Writes the send buffer.
    fn flush(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Flushes and waits until the server has processed every message.
    fn finish(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Receives messages.
pub trait Subscriber {
    /// Waits for more data and calls `f` with each complete message's
    /// payload; returns how many there were.
    fn next_batch(
        &mut self,
        f: &mut (dyn FnMut(&[u8]) + Send),
    ) -> impl Future<Output = anyhow::Result<usize>> + Send;
}
