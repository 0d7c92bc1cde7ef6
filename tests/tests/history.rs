//! History subscriptions: every event after an iteration, in order, from
//! memory or from the log, then live with no gap and no duplicate.

mod support;

use spread_client::{Client, Item, Subscription};
use support::{Broker, PATIENCE};

/// Events until the `Synced` marker, then `live` more events.
async fn collect(sub: &mut Subscription, live: usize) -> (Vec<(String, u64, Vec<u8>)>, u64) {
    let mut out = Vec::new();
    let mut synced_at = None;
    let mut after_sync = 0;
    while synced_at.is_none() || after_sync < live {
        let item = tokio::time::timeout(PATIENCE, sub.next_item())
            .await
            .expect("item in time")
            .expect("open")
            .expect("no error");
        match item {
            Item::Event(e) => {
                out.push((
                    e.topic().to_string(),
                    e.iteration(),
                    e.payload_bytes().to_vec(),
                ));
                if synced_at.is_some() {
                    after_sync += 1;
                }
            }
            Item::Synced { iteration } => synced_at = Some(iteration),
            other => panic!("unexpected {other:?}"),
        }
    }
    (out, synced_at.unwrap_or(0))
}

async fn publish_all(client: &Client, items: &[(&str, &str)]) -> Vec<(String, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for (t, v) in items {
        let it = client
            .publish(t, v.to_string())
            .await
            .unwrap()
            .summary()
            .iteration();
        out.push((t.to_string(), it, v.as_bytes().to_vec()));
    }
    out
}

#[tokio::test]
async fn every_event_in_order_then_live() {
    let broker = Broker::start(&[]);
    let client = broker.client().await;
    client.publish("a/1", "before").await.unwrap();
    let mark = client
        .publish("b/x", "other")
        .await
        .unwrap()
        .summary()
        .iteration();
    let published = publish_all(
        &client,
        &[
            ("a/1", "v1"),
            ("b/x", "no"),
            ("a/1", "v2"),
            ("a/2", "w"),
            ("a/1", "v3"),
        ],
    )
    .await;
    let deleted = client.delete("a/2").await.unwrap().summary().iteration();
    let mut sub = client.subscribe_history("a", mark).await.unwrap();
    let live = client
        .publish("a/3", "live")
        .await
        .unwrap()
        .summary()
        .iteration();
    let (got, _) = collect(&mut sub, 1).await;
    let mut expected: Vec<_> = published
        .into_iter()
        .filter(|(t, _, _)| t.starts_with("a/"))
        .collect();
    expected.push(("a/2".into(), deleted, vec![]));
    expected.push(("a/3".into(), live, b"live".to_vec()));
    assert_eq!(got, expected, "every version of a/1, the delete, then live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_from_the_log_meets_live_without_gap_or_duplicate() {
    // A ring of 16 events forces the catch-up through the log files.
    let broker = Broker::start(&["--recent-events", "16", "--segment-bytes", "65536"]);
    let client = broker.client().await;
    let mut published = Vec::new();
    for i in 0..3000 {
        let topic = format!("h/{}", i % 10);
        let it = client
            .publish(&topic, i.to_string())
            .await
            .unwrap()
            .summary()
            .iteration();
        published.push(it);
    }
    let mut sub = client.subscribe_history("h", 0).await.unwrap();
    // Keep publishing while the subscriber catches up.
    let writer = client.clone();
    let more = tokio::spawn(async move {
        let mut its = Vec::new();
        for i in 0..1000 {
            let r = writer
                .publish(&format!("h/{}", i % 7), "late")
                .await
                .unwrap();
            its.push(r.summary().iteration());
        }
        its
    });
    let mut seen = Vec::new();
    let target = published.len() + 1000;
    while seen.len() < target {
        match tokio::time::timeout(PATIENCE, sub.next_item())
            .await
            .expect("in time")
        {
            Some(Ok(Item::Event(e))) => seen.push(e.iteration()),
            Some(Ok(Item::Synced { .. })) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    published.extend(more.await.unwrap());
    assert_eq!(
        seen, published,
        "every event exactly once, in iteration order"
    );
}

#[tokio::test]
async fn history_is_read_back_after_a_restart() {
    let broker = Broker::start(&[]);
    let client = broker.client().await;
    let published = publish_all(&client, &[("r/a", "1"), ("r/a", "2"), ("r/b", "3")]).await;
    drop(client);
    let dir = broker.stop();
    let broker = Broker::start_in(dir, &[]);
    let client = broker.client().await;
    let mut sub = client.subscribe_history("r", 0).await.unwrap();
    let (got, synced) = collect(&mut sub, 0).await;
    assert_eq!(got, published);
    assert!(synced >= published.last().unwrap().1);
}

#[test]
fn cli_sub_history_prints_every_version() {
    let broker = Broker::start(&[]);
    for v in ["1", "2", "3"] {
        assert!(support::cli(&broker, &["pub", "k/v", v], None)
            .status
            .success());
    }
    let out = support::cli(
        &broker,
        &["sub", "k", "--history", "--json", "--count", "3"],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let payloads: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(payloads, ["1", "2", "3"]);
}

/// Tiny segments, frequent checkpoints, little history kept, a tiny ring:
/// history older than a few hundred events is soon gone.
const SMALL_RETENTION: [&str; 8] = [
    "--segment-bytes",
    "4096",
    "--checkpoint-every",
    "50",
    "--retention-bytes",
    "8192",
    "--recent-events",
    "8",
];

#[tokio::test]
async fn history_beyond_retention_says_so_then_gives_latest_values_then_live() {
    let broker = Broker::start(&SMALL_RETENTION);
    let client = broker.client().await;
    let log = broker.dir.path().join("log");
    let segments = || {
        let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        names.sort();
        names
    };
    client.publish("kept/0", "first").await.unwrap();
    let first_segment = segments()[0].clone();
    let mut i = 1u64;
    // Publish until retention has deleted history (bounded).
    while !log.join("retained-from").exists() {
        client
            .publish(&format!("kept/{}", i % 20), i.to_string())
            .await
            .unwrap();
        i += 1;
        assert!(i < 200_000, "retention never ran");
    }
    // The marker is written before files are deleted, in the same engine
    // step: one more round trip through the engine sees it finished.
    client.ping().await.unwrap();
    // (Counting segments raced with rolls: a roll and a deletion in one
    // round leave as many as before.)
    assert!(!first_segment.exists(), "the oldest segment was deleted");
    let mut latest = std::collections::HashMap::new();
    for t in 0..20 {
        let e = client.get(&format!("kept/{t}")).await.unwrap().unwrap();
        latest.insert(e.topic().to_string(), e.payload_bytes().to_vec());
    }

    let mut sub = client.subscribe_history("kept", 0).await.unwrap();
    let first = tokio::time::timeout(PATIENCE, sub.next_item())
        .await
        .unwrap();
    let oldest = match first {
        Some(Ok(Item::Truncated { oldest })) => oldest,
        other => panic!("expected the truncation marker, got {other:?}"),
    };
    assert!(oldest > 0);
    let mut snapshot = std::collections::HashMap::new();
    loop {
        match tokio::time::timeout(PATIENCE, sub.next_item())
            .await
            .unwrap()
        {
            Some(Ok(Item::Event(e))) => {
                snapshot.insert(e.topic().to_string(), e.payload_bytes().to_vec());
            }
            Some(Ok(Item::Synced { .. })) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        snapshot, latest,
        "state is never lost, only intermediate history"
    );
    // Then every event, live.
    let a = client
        .publish("kept/0", "x1")
        .await
        .unwrap()
        .summary()
        .iteration();
    let b = client
        .publish("kept/0", "x2")
        .await
        .unwrap()
        .summary()
        .iteration();
    let got = vec![
        support::next_event(&mut sub).await.iteration(),
        support::next_event(&mut sub).await.iteration(),
    ];
    assert_eq!(got, [a, b]);

    // After a restart the state is whole and the marker persists.
    drop(sub);
    drop(client);
    let dir = broker.stop();
    let broker = Broker::start_in(dir, &[]);
    let client = broker.client().await;
    assert_eq!(
        client.get("kept/0").await.unwrap().unwrap().payload_bytes(),
        b"x2"
    );
    let mut sub = client.subscribe_history("kept", 0).await.unwrap();
    match tokio::time::timeout(PATIENCE, sub.next_item())
        .await
        .unwrap()
    {
        Some(Ok(Item::Truncated { oldest: again })) => assert_eq!(again, oldest),
        other => panic!("expected the truncation marker, got {other:?}"),
    }
}

#[tokio::test]
async fn history_beyond_retention_gives_the_full_state_to_replace() {
    let broker = Broker::start(&[&SMALL_RETENTION[..], &["--archive", "off"]].concat());
    let client = broker.client().await;
    client.publish("s/gone", "x").await.unwrap();
    let since = client
        .publish("s/kept", "y")
        .await
        .unwrap()
        .summary()
        .iteration();
    client.delete("s/gone").await.unwrap();
    let log = broker.dir.path().join("log");
    let mut n = 0;
    while !log.join("retained-from").exists() {
        client.publish("churn", n.to_string()).await.unwrap();
        n += 1;
        assert!(n < 200_000, "retention never ran");
    }
    client.ping().await.unwrap();
    // Resuming from `since`: the history is gone, so the full state comes,
    // with s/kept although it did not change after `since`.
    let mut sub = client.subscribe_history("s", since).await.unwrap();
    match tokio::time::timeout(PATIENCE, sub.next_item())
        .await
        .unwrap()
    {
        Some(Ok(Item::Truncated { .. })) => {}
        other => panic!("expected the truncation marker, got {other:?}"),
    }
    let got: Vec<(String, bool)> = support::snapshot(&mut sub)
        .await
        .iter()
        .map(|e| (e.topic().to_owned(), e.is_tombstone()))
        .collect();
    assert_eq!(got, [("s/kept".to_owned(), false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_subscription_id_never_gets_an_earlier_jobs_history() {
    use spread_protocol::{Request, Response, SubscribeMode, Topic};
    // Resubscribing with the same id while the previous catch-up may still
    // be attaching: the new subscription's stream must stay exact.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let broker = Broker::start(&["--archive", "off", "--recent-events", "1"]);
    let client = broker.client().await;
    for i in 0..3_000 {
        client.publish(&format!("r/{}", i % 30), "v").await.unwrap();
    }
    let mut raw = broker.raw().await;
    let subscribe = Request::Subscribe {
        req_id: 1,
        prefix: Topic::root(),
        since: 1,
        mode: SubscribeMode::History,
        skip_source: Default::default(),
    };
    for round in 0..50u64 {
        // A few quick cancel-and-resubscribe cycles, then one kept.
        for _ in 0..next() % 4 {
            raw.send(&subscribe).await;
            raw.send(&Request::Unsubscribe {
                req_id: 10_000 + round,
                sub_id: 1,
            })
            .await;
            // Reading its events, so that some jobs reach their attach.
            if next() % 2 == 0 {
                raw.send(&Request::Ping {
                    req_id: 20_000 + round,
                })
                .await;
                while !matches!(raw.recv().await, Some(Response::Pong { .. })) {}
            }
        }
        raw.send(&subscribe).await;
        // Read up to its snapshot-complete: strictly increasing events of
        // this subscription after the last unsubscribed answer.
        let mut last = 0;
        loop {
            match raw.recv().await.expect("open") {
                Response::Unsubscribed { .. } => last = 0,
                Response::Event { sub_id: 1, event } => {
                    assert!(event.iteration() > last, "seed {seed}: out of order");
                    last = event.iteration();
                }
                Response::SnapshotComplete { sub_id: 1, .. } => break,
                Response::Pong { .. } => {}
                other => panic!("seed {seed}: unexpected {other:?}"),
            }
        }
        raw.send(&Request::Unsubscribe {
            req_id: 30_000 + round,
            sub_id: 1,
        })
        .await;
    }
}

/// A catch-up that parks behind a subscriber that does not read, while
/// retention deletes the segments it has not reached: the subscriber gets
/// the history it was sent, then the truncation marker, then the full
/// state, then live events; never a closed connection or a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_deleted_under_a_parked_catch_up_falls_back_to_the_latest_values() {
    use spread_protocol::{Request, Response, SubscribeMode, Topic, TopicRules};
    // 48 MiB of history kept; 16 KiB events. A subscriber that does not
    // read holds at most the connection's history queue (4 MiB) plus the
    // sockets' buffers: far less than what is retained.
    const PAYLOAD: usize = 16 * 1024;
    let broker = Broker::start(&[
        "--archive",
        "off",
        "--segment-bytes",
        "1048576",
        "--checkpoint-every",
        "200",
        "--retention-bytes",
        "50331648",
        "--recent-events",
        "8",
    ]);
    let client = broker.client().await;
    let log = broker.dir.path().join("log");
    let retained_from = || {
        std::fs::read_to_string(log.join("retained-from"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let payload = bytes::Bytes::from(vec![b'h'; PAYLOAD]);
    let mut latest = std::collections::HashMap::new();
    let mut round = 0u64;
    // Fill the retained history (until retention starts deleting).
    let mut end_of_history = 0;
    while retained_from().is_none() {
        end_of_history = publish_round(&client, &payload, &mut latest).await;
        round += 1;
        assert!(round < 10_000, "retention never ran");
    }
    let since = retained_from().unwrap_or(0);

    let mut reader = broker.raw().await;
    reader
        .send(&Request::Subscribe {
            req_id: 1,
            prefix: Topic::new("h", &TopicRules::default()).unwrap(),
            since,
            mode: SubscribeMode::History,
            skip_source: Default::default(),
        })
        .await;
    // Publish until everything the catch-up was to read is deleted.
    while retained_from().is_none_or(|from| from <= end_of_history) {
        publish_round(&client, &payload, &mut latest).await;
        round += 1;
        assert!(round < 20_000, "retention stopped");
    }

    // Reading again: history in order, then the marker, the state, live.
    let mut previous = since;
    let mut history = 0;
    let oldest = loop {
        match tokio::time::timeout(PATIENCE, reader.recv())
            .await
            .expect("the catch-up goes on")
        {
            Some(Response::Event { sub_id: 1, event }) => {
                assert!(event.iteration() > previous, "in order, no duplicate");
                previous = event.iteration();
                history += 1;
            }
            Some(Response::HistoryTruncated { sub_id: 1, oldest }) => break oldest,
            other => panic!("expected history or the truncation marker, got {other:?}"),
        }
    };
    assert!(history > 0, "the catch-up had started");
    assert!(previous < end_of_history, "the catch-up had not finished");
    assert!(oldest > previous, "the marker says where history resumes");
    let mut state = std::collections::HashMap::new();
    loop {
        match tokio::time::timeout(PATIENCE, reader.recv()).await.unwrap() {
            Some(Response::Event { sub_id: 1, event }) => {
                state.insert(event.topic().to_owned(), event.iteration());
            }
            Some(Response::SnapshotComplete { sub_id: 1, .. }) => break,
            other => panic!("expected the state, got {other:?}"),
        }
    }
    assert_eq!(state, latest, "the full state after the marker");
    let live = client
        .publish("h/live", "x")
        .await
        .unwrap()
        .summary()
        .iteration();
    match tokio::time::timeout(PATIENCE, reader.recv()).await.unwrap() {
        Some(Response::Event { sub_id: 1, event }) => assert_eq!(event.iteration(), live),
        other => panic!("expected the live event, got {other:?}"),
    }
}

/// Publishes one value to each of `h/0..32` at once; records each topic's
/// iteration in `latest` and returns the greatest.
async fn publish_round(
    client: &Client,
    payload: &bytes::Bytes,
    latest: &mut std::collections::HashMap<String, u64>,
) -> u64 {
    let writes = (0..32).map(|t| {
        let (c, p) = (client.clone(), payload.clone());
        async move { (t, c.publish(&format!("h/{t}"), p).await) }
    });
    let mut last = 0;
    for (t, r) in futures_util::future::join_all(writes).await {
        let it = r.expect("publish").summary().iteration();
        latest.insert(format!("h/{t}"), it);
        last = last.max(it);
    }
    last
}
