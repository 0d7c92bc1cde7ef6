//! A subscriber that stops reading neither stalls publishers nor grows the
//! broker's memory: its queue conflates to the latest value per topic.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::future::join_all;
use spread_protocol::{Request, Response, Topic};
use support::{snapshot, Broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_is_conflated_and_memory_stays_bounded() {
    const TOPICS: usize = 50;
    const ROUNDS: usize = 4000; // 200,000 events of 1 KiB: ~200 MiB published
                                // The archive's batches (up to 8 MiB of payloads) would blur what this
                                // measures: the bound on a stalled subscriber's queue.
    let broker = Broker::start(&["--subscriber-buffer", "1048576", "--archive", "off"]);

    // The stalled subscriber: subscribes, then never reads.
    let mut stalled = broker.raw().await;
    stalled
        .send(&Request::Subscribe {
            req_id: 1,
            prefix: Topic::root(),
            since: 0,
            mode: spread_protocol::SubscribeMode::Latest,
            skip_source: Default::default(),
        })
        .await;

    // A healthy subscriber that must get every topic's final value.
    let fast_client = broker.client().await;
    let mut fast = fast_client.subscribe("load").await.unwrap();
    snapshot(&mut fast).await;

    let baseline = broker.rss();
    let publisher = broker.client().await;
    let payload = Bytes::from(vec![b'x'; 1024]);
    let mut finals = HashMap::new();
    let mut fast_seen: HashMap<String, u64> = HashMap::new();
    let mut peak = baseline;
    for round in 0..ROUNDS {
        let writes = (0..TOPICS).map(|t| {
            let (c, p) = (publisher.clone(), payload.clone());
            async move { c.publish(&format!("load/{t}"), p).await }
        });
        for (t, r) in join_all(writes).await.into_iter().enumerate() {
            finals.insert(
                format!("load/{t}"),
                r.expect("publish").summary().iteration(),
            );
        }
        if round % 200 == 0 {
            peak = peak.max(broker.rss());
        }
        // Keep the fast subscriber drained as we go.
        while let Ok(Some(Ok(item))) =
            tokio::time::timeout(std::time::Duration::ZERO, fast.next_item()).await
        {
            if let spread_client::Item::Event(e) = item {
                fast_seen.insert(e.topic().to_string(), e.iteration());
            }
        }
    }
    peak = peak.max(broker.rss());
    // Without conflation the stalled queue alone would hold ~200 MiB.
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 96 * 1024 * 1024,
        "broker grew by {} MiB while a subscriber was stalled",
        growth / (1024 * 1024)
    );

    // The healthy subscriber reaches every final value.
    while fast_seen != finals {
        let e = support::next_event(&mut fast).await;
        fast_seen.insert(e.topic().to_string(), e.iteration());
    }

    // The stalled subscriber, once it reads again, ends on the latest value
    // of every topic and is told that it skipped events.
    let mut latest: HashMap<String, u64> = HashMap::new();
    let mut skipped = 0;
    while latest != finals || skipped == 0 {
        match stalled.recv().await.expect("still connected") {
            Response::Event { event, .. } => {
                let prev = latest.insert(event.topic().to_string(), event.iteration());
                assert!(
                    prev.is_none_or(|p| p < event.iteration()),
                    "never goes back"
                );
            }
            Response::Conflated { sub_id, skipped: n } => {
                assert_eq!(sub_id, 1);
                skipped += n;
            }
            Response::SnapshotComplete { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(skipped > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscribers_together_stay_within_the_brokers_subscriber_memory() {
    // Four subscribers that never read, each of its own topics: each
    // within its own (default, 64 MiB) buffer, together past the broker's
    // 8 MiB budget. Without the budget their queues hold ~240 MiB.
    const STALLED: u64 = 4;
    const TOPICS: u64 = 32;
    const EVENTS: u64 = 15_000; // per stalled subscriber, of 4 KiB
                                // Few recent events kept in memory: they would hold 4 KiB each too.
    let broker = Broker::start(&[
        "--subscriber-memory",
        "8388608",
        "--recent-events",
        "1024",
        "--archive",
        "off",
    ]);
    let mut stalled = Vec::new();
    for s in 0..STALLED {
        let mut raw = broker.raw().await;
        raw.send(&Request::Subscribe {
            req_id: 1,
            prefix: Topic::new(&format!("s{s}"), &Default::default()).unwrap(),
            since: 0,
            mode: spread_protocol::SubscribeMode::Latest,
            skip_source: Default::default(),
        })
        .await;
        stalled.push(raw);
    }
    let publisher = broker.client().await;
    publisher.ping().await.unwrap();
    let baseline = broker.rss();
    let mut peak = baseline;
    let payload = vec![b'x'; 4096];
    for i in 0..EVENTS {
        for s in 0..STALLED {
            let topic = format!("s{s}/{}", i % TOPICS);
            publisher.publish_nowait(&topic, &payload).await.unwrap();
        }
        if i % 1_000 == 0 {
            // Reported after everything before it is applied.
            publisher.publish("sync", "x").await.unwrap();
            peak = peak.max(broker.rss());
        }
    }
    publisher.publish("sync", "x").await.unwrap();
    peak = peak.max(broker.rss());
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 96 * 1024 * 1024,
        "broker grew by {} MiB for four stalled subscribers",
        growth / (1024 * 1024)
    );
    // Each ends on its latest values and is told that it skipped events.
    for (s, raw) in stalled.iter_mut().enumerate() {
        let mut latest = HashMap::new();
        let mut skipped = 0;
        while latest.len() < TOPICS as usize || skipped == 0 {
            match raw.recv().await.expect("still connected") {
                Response::Event { event, .. } => {
                    assert!(event.topic().starts_with(&format!("s{s}/")));
                    latest.insert(event.topic().to_string(), event.iteration());
                }
                Response::Conflated { skipped: n, .. } => skipped += n,
                Response::SnapshotComplete { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_answers_of_a_large_value_hold_one_copy_of_it() {
    let broker = Broker::start(&["--archive", "off"]);
    let client = broker.client().await;
    let value = Bytes::from(vec![b'v'; 4 * 1024 * 1024]);
    client.publish("big", value).await.unwrap();
    // An old write to it: too_late, each report carrying the current event.
    let stale = spread_client::PublishOptions {
        timestamp: Some(1),
        ..Default::default()
    };
    client.publish_with("big", "old", stale).await.unwrap();
    client.ping().await.unwrap();
    let baseline = broker.rss();
    // 400 gets and 400 stale publishes of it, never read: 3 GiB if copied.
    let mut raw = broker.raw().await;
    let mut out = bytes::BytesMut::new();
    for req_id in 0..400 {
        Request::Get {
            req_id,
            topic: Topic::new("big", &Default::default()).unwrap(),
        }
        .encode(&mut out);
        Request::Publish(spread_protocol::Publish {
            req_id: 1_000 + req_id,
            topic: Topic::new("big", &Default::default()).unwrap(),
            payload: Bytes::from_static(b"old"),
            timestamp: Some(1),
            id: None,
        })
        .encode(&mut out);
    }
    raw.send_bytes(&out).await;
    // Another connection's request goes through the engine after them.
    broker.client().await.ping().await.unwrap();
    let growth = broker.rss().saturating_sub(baseline);
    assert!(
        growth < 256 * 1024 * 1024,
        "broker grew by {} MiB for unread answers",
        growth / (1024 * 1024)
    );
    // Each answer is still whole when read.
    let mut values = 0;
    while values < 800 {
        match raw.recv().await.expect("open") {
            Response::Value { event: Some(e), .. } => {
                assert_eq!(e.payload_bytes().len(), 4 * 1024 * 1024);
                values += 1;
            }
            Response::Report { outcome, .. } => {
                assert_eq!(
                    outcome.current().unwrap().payload_bytes().len(),
                    4 * 1024 * 1024
                );
                values += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
