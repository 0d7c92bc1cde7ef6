//! The queue through `Conn`: batching, conflation, bounds, history room.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use spread_protocol::{ErrorCode, ErrorFrame, Event, EventId, EventKind, EventParts};

use super::queue::*;
use super::*;

fn ev(topic: &str, iteration: u64) -> Event {
    EventParts {
        topic,
        payload: &[0u8; 100],
        timestamp: iteration,
        origin: "n",
        id: EventId([0; 16]),
        iteration,
        kind: EventKind::Value,
        source: 0,
    }
    .encode()
}

fn conn(budget: usize) -> Conn {
    Conn::new(
        1,
        "n".into(),
        16,
        Arc::new(Budget::new(budget, usize::MAX / 4)),
        Arc::default(),
    )
}

fn push_events(c: &Conn, sub_id: u64, topics: &[&str], first_iteration: u64) {
    let mut batch = Batch::default();
    for (i, topic) in topics.iter().enumerate() {
        batch.push(Outbound::Event {
            sub_id,
            event: ev(topic, first_iteration + i as u64),
            exact: false,
        });
    }
    c.push_batch(&mut batch);
}

#[test]
fn past_the_broker_budget_only_connections_over_their_share_conflate() {
    // The broker may queue 8 events in all, each of the two connections
    // 100 on its own; the share of each is 4.
    let size = ev("t/0", 1).encoded().len();
    let budget = Arc::new(Budget::new(100 * size, 8 * size));
    let slow = Conn::new(1, "n".into(), 16, budget.clone(), Arc::default());
    let fast = Conn::new(2, "n".into(), 16, budget.clone(), Arc::default());
    // 8 queue, 2 conflate (within the share: not closed).
    let topics: Vec<String> = (0..10).map(|i| format!("t/{i}")).collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    for topic in &topics {
        push_events(&slow, 1, &[topic], 1);
    }
    let mut items = Vec::new();
    // The broker's budget spent, the fast one still queues within its share.
    push_events(&fast, 1, &topics[..3], 1);
    let taken = fast.take(&mut items);
    assert_eq!((items.len(), taken.conflated.len()), (3, 0));
    items.clear();
    let taken = slow.take(&mut items);
    assert_eq!(taken.conflated.len(), 2, "past the budget and its share");
    assert_eq!(items.len(), 8);
    assert!(!taken.closed);
    // Everything taken is given back.
    assert_eq!(budget.used(), 0);
    // A connection that goes away gives back what it held.
    push_events(&slow, 1, &topics, 20);
    assert!(budget.used() > 0);
    drop(slow);
    assert_eq!(budget.used(), 0);
}

#[test]
fn conflated_values_past_the_share_of_a_spent_budget_close_the_connection() {
    let budget = Arc::new(Budget::new(200, 1_000));
    let c = Conn::new(1, "n".into(), 16, budget.clone(), Arc::default());
    let topics: Vec<String> = (0..20).map(|i| format!("t/{i}")).collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    // 200 bytes queue; the other 19 topics conflate: about 2,300 bytes of
    // latest values, past the whole budget (the connection's share).
    push_events(&c, 1, &topics, 1);
    let mut items = Vec::new();
    let taken = c.take(&mut items);
    assert!(taken.closed, "never closed");
    let closing = items
        .iter()
        .any(|i| matches!(i, Outbound::Close(Some(e)) if e.code == ErrorCode::LimitExceeded));
    assert!(closing, "{items:?}");
    assert_eq!(budget.used(), 0);
}

#[test]
fn conflated_values_of_many_overlapping_subscriptions_are_bounded() {
    // One topic, a thousand subscriptions: past 64 KiB of conflated
    // values (16 times a small budget), the connection is closed.
    let c = conn(300);
    let mut batch = Batch::default();
    for sub_id in 0..1_000u64 {
        batch.push(Outbound::Event {
            sub_id,
            event: ev("t", sub_id + 1),
            exact: false,
        });
    }
    c.push_batch(&mut batch);
    let mut items = Vec::new();
    let taken = c.take(&mut items);
    assert!(taken.closed, "never closed");
    assert!(taken.conflated.len() < 1_000);
    let closing = items
        .iter()
        .any(|i| matches!(i, Outbound::Close(Some(e)) if e.code == ErrorCode::LimitExceeded));
    assert!(closing, "{items:?}");
}

#[test]
fn conflates_past_the_budget_and_keeps_latest_per_topic() {
    let c = conn(300);
    let mut batch = Batch::default();
    for i in 1..=10u64 {
        let topic = if i % 2 == 0 { "a" } else { "b" };
        batch.push(Outbound::Event {
            sub_id: 7,
            event: ev(topic, i),
            exact: false,
        });
    }
    c.push_batch(&mut batch);
    let mut items = Vec::new();
    let taken = c.take(&mut items);
    // Two ~120-byte events fit the budget; the rest were conflated.
    assert_eq!(items.len(), 2);
    let iters: Vec<u64> = taken
        .conflated
        .iter()
        .map(|x| x.event.iteration())
        .collect();
    assert_eq!(iters, [9, 10], "latest per topic, in iteration order");
    let skipped: u64 = taken.skipped.iter().map(|(_, n)| n).sum();
    assert_eq!(skipped, 6);
    assert_eq!(c.stats.conflated.load(Ordering::Relaxed), 6);
    // After the writer took everything, events queue normally again.
    c.push(Outbound::Event {
        sub_id: 7,
        event: ev("a", 11),
        exact: false,
    });
    let mut items = Vec::new();
    assert!(c.take(&mut items).conflated.is_empty());
    assert_eq!(items.len(), 1);
}

#[test]
fn unsubscribe_purges_conflated_events_of_that_subscription() {
    let c = conn(0);
    c.push(Outbound::Event {
        sub_id: 1,
        event: ev("a", 1),
        exact: false,
    });
    c.push(Outbound::Event {
        sub_id: 2,
        event: ev("a", 2),
        exact: false,
    });
    c.push(Outbound::Unsubscribed {
        req_id: 9,
        sub_id: 1,
    });
    let mut items = Vec::new();
    let taken = c.take(&mut items);
    assert_eq!(taken.conflated.len(), 1);
    assert_eq!(taken.conflated[0].sub_id, 2);
}

#[test]
fn exact_events_are_never_conflated_but_close_past_the_hard_limit() {
    let c = conn(300);
    let len = ev("a", 1).encoded().len();
    let n = 4 * 300 / len + 2;
    for i in 1..=n as u64 {
        c.push(Outbound::Event {
            sub_id: 3,
            event: ev("a", i),
            exact: true,
        });
    }
    let mut items = Vec::new();
    let taken = c.take(&mut items);
    assert!(taken.conflated.is_empty());
    // More than 4 × 300 bytes: the connection closes with a clear error
    // instead of dropping or conflating.
    assert!(taken.closed);
    match items.last() {
        Some(Outbound::Close(Some(e))) => assert_eq!(e.code, ErrorCode::LimitExceeded),
        other => panic!("{other:?}"),
    }
    let events = items
        .iter()
        .filter(|i| matches!(i, Outbound::Event { .. }))
        .count();
    assert_eq!(
        events,
        4 * 300 / len,
        "everything within the limit is kept, in order"
    );
}

#[test]
fn nothing_is_queued_after_close() {
    let c = conn(1000);
    c.push(Outbound::Close(Some(ErrorFrame {
        req_id: None,
        code: spread_protocol::ErrorCode::MalformedFrame,
        message: "bad".into(),
    })));
    c.push(Outbound::Answers {
        frames: Bytes::from_static(b"x"),
        count: 1,
    });
    let mut items = Vec::new();
    let taken = c.take(&mut items);
    assert!(taken.closed);
    assert_eq!(items.len(), 1);
}
