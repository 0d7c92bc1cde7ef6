//! Async Rust client for the Spread broker.
//!
//! One [`Client`] holds one TLS connection on which any number of requests
//! are in flight at once; answers are matched by request id. Subscriptions
//! are [`Stream`](futures_util::Stream)s of [`Item`]s: the snapshot of the
//! prefix, a [`Item::Synced`] marker, then live changes.
//!
//! When the connection is lost the client reconnects with exponential
//! backoff and resumes every subscription from the last iteration it
//! delivered, so the application sees neither a gap nor a duplicate.
//! Requests in flight when the connection drops fail with
//! [`Error::Disconnected`]; requests made while reconnecting fail with
//! [`Error::NotConnected`]. Retry a publish with a fixed
//! [`PublishOptions::id`] and `timestamp` to make the retry idempotent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), spread_client::Error> {
//! use spread_client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::new("127.0.0.1:7411").ca_file("spread-data/tls/ca.pem")).await?;
//! client.publish("fleet/eu/truck-7", "ok").await?;
//! let latest = client.get("fleet/eu/truck-7").await?;
//! assert_eq!(latest.map(|e| e.payload()), Some("ok".into()));
//! # Ok(()) }
//! ```
//!
//! Producers that publish many values and do not need each report (the
//! way NATS core or MQTT QoS 0 are used) call [`Client::publish_nowait`]:
//! about five times the rate of awaiting every report
//! (docs/benchmarks.md), and still logged by the broker before it is
//! delivered. A reported publish after them answers once they are logged:
//!
//! ```no_run
//! # async fn demo(client: spread_client::Client) -> Result<(), spread_client::Error> {
//! for i in 0..10_000u32 {
//!     client.publish_nowait("fleet/eu/truck-7/speed", i.to_le_bytes()).await?;
//! }
//! client.publish("fleet/eu/truck-7/batch", "done").await?;
//! assert_eq!(client.unreported_refusals(), 0);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod config;
mod driver;
mod error;
mod replay;
mod subscription;
mod tls;

pub use client::{Client, PublishOptions};
pub use config::{ClientConfig, Trust};
pub use error::Error;
pub use replay::{Replay, ReplayStream};
pub use spread_protocol::{
    ErrorCode, Event, EventId, EventKind, Outcome, PeerStatus, PeersReport, PublishStatus,
    SinkStatus, StatusReport, Summary,
};
pub use subscription::{Item, Subscription};

/// The prefixes of `topic` from the root down, matching the levels of a
/// report's `notified` counts (`""`, `a`, `a/b`, ...).
pub fn prefix_levels(topic: &str) -> Vec<&str> {
    let mut out = vec![""];
    for (i, b) in topic.bytes().enumerate() {
        if b == b'/' {
            out.push(&topic[..i]);
        }
    }
    if !topic.is_empty() {
        out.push(topic);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_levels() {
        assert_eq!(super::prefix_levels("a/b/c"), ["", "a", "a/b", "a/b/c"]);
        assert_eq!(super::prefix_levels("x"), ["", "x"]);
    }
}
