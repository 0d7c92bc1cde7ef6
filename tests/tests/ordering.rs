//! Racing publishers on one topic: every subscriber sees one order and ends
//! on the same latest value, never going back.

mod support;

use futures_util::future::join_all;
use futures_util::StreamExt;
use spread_client::{Item, PublishStatus};
use support::{snapshot, Broker, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishers_converge_for_every_subscriber() {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 500;
    let broker = Broker::in_process(&[]);

    let mut watchers = Vec::new();
    for _ in 0..3 {
        let c = broker.client().await;
        let mut s = c.subscribe("race").await.unwrap();
        snapshot(&mut s).await;
        watchers.push((c, s));
    }

    let publishers = join_all((0..PUBLISHERS).map(|_| broker.client())).await;
    let tasks = publishers.into_iter().enumerate().map(|(p, c)| {
        tokio::spawn(async move {
            // Pipelined: all of this publisher's writes in flight at once.
            let writes = (0..EACH).map(|i| {
                let c = c.clone();
                async move { c.publish("race/hot", format!("{p}-{i}")).await }
            });
            let reports = join_all(writes).await;
            reports
                .into_iter()
                .map(|r| r.expect("publish"))
                .inspect(|r| assert_eq!(r.status(), PublishStatus::New))
                .map(|r| r.summary().iteration())
                .max()
        })
    });
    let last = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("reports"))
        .max()
        .unwrap();

    let reader = broker.client().await;
    let final_event = reader.get("race/hot").await.unwrap().unwrap();
    assert_eq!(
        final_event.iteration(),
        last,
        "the last applied write is the latest value"
    );

    for (_, mut sub) in watchers {
        let mut prev: Option<spread_client::Event> = None;
        let mut count = 0;
        loop {
            let item = tokio::time::timeout(PATIENCE, sub.next_item())
                .await
                .expect("in time")
                .expect("open")
                .expect("ok");
            let Item::Event(e) = item else { continue };
            count += 1;
            if let Some(p) = &prev {
                assert!(e.iteration() > p.iteration(), "iterations go forward");
                assert!(
                    e.cmp_order(p) == std::cmp::Ordering::Greater,
                    "a subscriber never sees the value go back"
                );
            }
            let done = e.iteration() == last;
            prev = Some(e);
            if done {
                break;
            }
        }
        assert_eq!(prev.unwrap().id(), final_event.id());
        assert!(count <= PUBLISHERS * EACH);
    }
}

/// Publishes `n` topics under `prefix`, a thousand at a time.
async fn fill(client: &spread_client::Client, prefix: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        join_all(
            chunk
                .iter()
                .map(|i| async move { client.publish(&format!("{prefix}/{i}"), "0").await }),
        )
        .await
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_taken_while_writes_go_on_meets_live_without_gap_or_duplicate() {
    use std::collections::BTreeMap;
    let broker = Broker::in_process(&["--archive", "off"]);
    let writer = broker.client().await;
    fill(&writer, "big", 40_000).await;
    // Writes go on while the snapshot is walked: rewrites and new topics.
    let w = writer.clone();
    let writes = tokio::spawn(async move {
        let mut last = 0;
        for i in 0..3_000u64 {
            let topic = if i % 3 == 0 {
                format!("big/new/{i}")
            } else {
                format!("big/{}", i * 13 % 40_000)
            };
            last = w
                .publish(&topic, i.to_string())
                .await
                .unwrap()
                .summary()
                .iteration();
        }
        last
    });
    let reader = broker.client().await;
    let mut sub = reader.subscribe("").await.unwrap();
    let mut state = BTreeMap::new();
    let mut seen = 0;
    let synced = loop {
        match tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Item::Event(e) => {
                assert!(e.iteration() > seen, "snapshot in iteration order");
                seen = e.iteration();
                state.insert(e.topic().to_owned(), e.payload_bytes().to_vec());
            }
            Item::Synced { iteration } => break iteration,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(seen <= synced);
    let last = writes.await.unwrap();
    // Live from there, in order, up to the last write.
    let mut at = synced;
    while at < last {
        match tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Item::Event(e) => {
                assert!(
                    e.iteration() > at,
                    "live after the snapshot, strictly increasing"
                );
                at = e.iteration();
                state.insert(e.topic().to_owned(), e.payload_bytes().to_vec());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The same state as a snapshot taken when everything was written.
    let mut fresh = reader.subscribe("").await.unwrap();
    let truth: BTreeMap<String, Vec<u8>> = snapshot(&mut fresh)
        .await
        .into_iter()
        .map(|e| (e.topic().to_owned(), e.payload_bytes().to_vec()))
        .collect();
    assert_eq!(state.len(), truth.len());
    assert!(
        state == truth,
        "the subscriber's state differs from the broker's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_is_walked_over_several_rounds_and_counts_as_a_read() {
    use spread_protocol::{ErrorCode, Request, Response, SubscribeMode, Topic};
    let broker = Broker::in_process(&["--archive", "off", "--max-reads-per-connection", "1"]);
    let writer = broker.client().await;
    fill(&writer, "big", 40_000).await;
    let mut raw = broker.raw().await;
    let subscribe = |req_id| Request::Subscribe {
        req_id,
        prefix: Topic::root(),
        since: 0,
        mode: SubscribeMode::Latest,
        skip_source: Default::default(),
    };
    let mut out = bytes::BytesMut::new();
    subscribe(1).encode(&mut out);
    subscribe(2).encode(&mut out);
    raw.send_bytes(&out).await;
    // The first is still being walked when the second arrives.
    let (mut events, mut refused, mut complete) = (0, false, false);
    while !(refused && complete) {
        match raw.recv().await.expect("open") {
            Response::Event { sub_id: 1, .. } => events += 1,
            Response::SnapshotComplete { sub_id: 1, .. } => complete = true,
            Response::Error(e) => {
                assert_eq!(
                    (e.req_id, e.code),
                    (Some(2), ErrorCode::TooManyReads),
                    "{}",
                    e.message
                );
                refused = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(events, 40_000);
    // Once it is sent, the permit is back.
    raw.send(&subscribe(3)).await;
    loop {
        match raw.recv().await.expect("open") {
            Response::SnapshotComplete { sub_id: 3, .. } => break,
            Response::Event { sub_id: 3, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
