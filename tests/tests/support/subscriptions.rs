//! Awaiting what a subscription delivers, with a bound.

use futures_util::StreamExt;
use spread_client::{Event, Item, Subscription};

use super::PATIENCE;

/// Waits for the next event of a subscription, skipping markers.
pub async fn next_event(sub: &mut Subscription) -> Event {
    tokio::time::timeout(PATIENCE, sub.next_event())
        .await
        .expect("event in time")
        .expect("subscription open")
        .expect("no error")
}

/// The next item of a subscription, failing the test after [`PATIENCE`].
pub async fn next_item(sub: &mut Subscription) -> Item {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("item in time")
        .expect("subscription open")
        .expect("no error")
}

/// Collects events until the `Synced` marker and returns them.
pub async fn snapshot(sub: &mut Subscription) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let item = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("item in time")
            .expect("subscription open")
            .expect("no error");
        match item {
            Item::Event(e) => out.push(e),
            Item::Synced { .. } => return out,
            Item::Conflated { .. } | Item::Truncated { .. } => {}
        }
    }
}
