//! The original Spread's scenarios, over real TLS against a real broker.

mod support;

use spread_client::{Item, Outcome, PublishOptions, PublishStatus};
use support::{next_event, snapshot, Broker};

#[tokio::test]
async fn subscribing_where_nothing_exists_yet() {
    let broker = Broker::in_process(&[]);
    let client = broker.client().await;
    let mut sub = client.subscribe("nothing/here").await.unwrap();
    assert!(snapshot(&mut sub).await.is_empty());
    client.publish("nothing/here/yet", "first").await.unwrap();
    let e = next_event(&mut sub).await;
    assert_eq!(e.topic(), "nothing/here/yet");
    assert_eq!(e.payload_bytes(), b"first");
}

#[tokio::test]
async fn report_counts_subscribers_per_prefix_level() {
    let broker = Broker::in_process(&[]);
    let publisher = broker.client().await;
    let other = broker.client().await;
    let mut subs = Vec::new();
    for prefix in ["", "a", "a", "a/b/c", "a/bc"] {
        let mut s = other.subscribe(prefix).await.unwrap();
        snapshot(&mut s).await;
        subs.push(s);
    }
    match publisher.publish("a/b/c", "v").await.unwrap() {
        Outcome::New {
            event,
            previous,
            notified,
        } => {
            assert!(previous.is_none());
            assert!(event.iteration() > 0);
            // "", "a", "a/b", "a/b/c"; "a/bc" is a sibling, not a prefix.
            assert_eq!(&notified[..], &[1, 2, 0, 1]);
        }
        other => panic!("expected new, got {other:?}"),
    }
    let first = publisher.get("a/b/c").await.unwrap().unwrap();
    let second = publisher.publish("a/b/c", "w").await.unwrap();
    match second {
        Outcome::New { previous, .. } => {
            let previous = previous.unwrap();
            assert_eq!(previous.id(), first.id());
            assert_eq!(previous.iteration(), first.iteration());
        }
        other => panic!("expected new, got {other:?}"),
    }
}

#[tokio::test]
async fn publish_if_absent_on_an_existing_topic_changes_nothing() {
    let broker = Broker::in_process(&[]);
    let client = broker.client().await;
    let first = client.publish_if_absent("cfg/mode", "auto").await.unwrap();
    assert_eq!(first.status(), PublishStatus::New);
    let again = client
        .publish_if_absent("cfg/mode", "manual")
        .await
        .unwrap();
    assert_eq!(again.status(), PublishStatus::Present);
    assert_eq!(again.current().unwrap().payload_bytes(), b"auto");
    assert_eq!(again.summary().iteration(), first.summary().iteration());
    let now = client.get("cfg/mode").await.unwrap().unwrap();
    assert_eq!(now.payload_bytes(), b"auto");
    assert_eq!(now.iteration(), first.summary().iteration());
}

#[tokio::test]
async fn get_returns_payload_origin_and_iteration() {
    let broker = Broker::in_process(&[]);
    let client = broker.client().await;
    let report = client
        .publish("sensors/t1", &b"\x00\x01binary"[..])
        .await
        .unwrap();
    let got = client.get("sensors/t1").await.unwrap().unwrap();
    assert_eq!(got.payload_bytes(), b"\x00\x01binary");
    assert_eq!(got.origin(), client.node_id());
    assert_eq!(got.iteration(), report.summary().iteration());
    assert_eq!(got.id(), report.summary().id());
}

#[tokio::test]
async fn unknown_and_deleted_topics_are_not_found() {
    let broker = Broker::in_process(&[]);
    let client = broker.client().await;
    assert!(client.get("no/such/topic").await.unwrap().is_none());
    client.publish("gone/soon", "x").await.unwrap();
    let del = client.delete("gone/soon").await.unwrap();
    assert_eq!(del.status(), PublishStatus::New);
    assert_eq!(del.summary().kind(), spread_client::EventKind::Tombstone);
    assert!(client.get("gone/soon").await.unwrap().is_none());
    // A prefix of an existing topic is not a topic itself.
    client.publish("p/q/r", "x").await.unwrap();
    assert!(client.get("p/q").await.unwrap().is_none());
}

#[tokio::test]
async fn prefix_subscription_gets_descendants_not_string_siblings() {
    let broker = Broker::in_process(&[]);
    let client = broker.client().await;
    for t in ["a/b", "a/b/c", "a/bc", "a/bc/d", "a"] {
        client.publish(t, t).await.unwrap();
    }
    let mut sub = client.subscribe("a/b").await.unwrap();
    let mut topics: Vec<String> = snapshot(&mut sub)
        .await
        .iter()
        .map(|e| e.topic().to_string())
        .collect();
    topics.sort();
    assert_eq!(topics, ["a/b", "a/b/c"]);
    for t in ["a/bc/x", "a/b/c/d", "a", "a/b"] {
        client.publish(t, "live").await.unwrap();
    }
    assert_eq!(next_event(&mut sub).await.topic(), "a/b/c/d");
    assert_eq!(next_event(&mut sub).await.topic(), "a/b");
}

#[tokio::test]
async fn resume_from_an_iteration_gets_exactly_what_changed_since() {
    let broker = Broker::in_process(&[]);
    let client = broker.client().await;
    client.publish("r/one", "1").await.unwrap();
    client.publish("r/two", "2").await.unwrap();
    client.publish("r/gone", "3").await.unwrap();
    let mark = client
        .publish("other/x", "x")
        .await
        .unwrap()
        .summary()
        .iteration();
    client.publish("r/two", "2b").await.unwrap();
    client.delete("r/gone").await.unwrap();
    client.publish("r/three", "3").await.unwrap();

    let mut sub = client.subscribe_since("r", mark).await.unwrap();
    let got = snapshot(&mut sub).await;
    let mut seen: Vec<(String, bool, Vec<u8>)> = got
        .iter()
        .map(|e| {
            (
                e.topic().to_string(),
                e.is_tombstone(),
                e.payload_bytes().to_vec(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("r/gone".to_string(), true, vec![]),
            ("r/three".to_string(), false, b"3".to_vec()),
            ("r/two".to_string(), false, b"2b".to_vec()),
        ]
    );
    assert!(got.windows(2).all(|w| w[0].iteration() < w[1].iteration()));

    // A fresh subscription (since 0) sees live values only, no tombstones.
    let mut fresh = client.subscribe("r").await.unwrap();
    let all = snapshot(&mut fresh).await;
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|e| !e.is_tombstone()));
}

#[tokio::test]
async fn explicit_timestamps_give_too_late_and_existing() {
    // Timestamps far in the future are refused unless allowed.
    let broker = Broker::in_process(&["--max-clock-skew", "100years"]);
    let client = broker.client().await;
    let future = spread_client::EventId([42; 16]);
    let opts = PublishOptions {
        timestamp: Some(4_000_000_000_000_000),
        id: Some(future),
        ..PublishOptions::default()
    };
    assert_eq!(
        client
            .publish_with("lww", "late-winner", opts)
            .await
            .unwrap()
            .status(),
        PublishStatus::New
    );
    // The same event again (a retry): existing, nothing delivered twice.
    let again = client
        .publish_with("lww", "late-winner", opts)
        .await
        .unwrap();
    assert_eq!(again.status(), PublishStatus::Existing);
    // An older write loses and is told which event wins.
    let old = PublishOptions {
        timestamp: Some(1_000),
        ..PublishOptions::default()
    };
    match client.publish_with("lww", "old", old).await.unwrap() {
        Outcome::TooLate {
            rejected,
            current: Some(current),
        } => {
            assert_eq!(rejected.timestamp(), 1_000);
            assert_eq!(rejected.iteration(), 0);
            assert_eq!(current.id(), future);
            assert_eq!(current.payload_bytes(), b"late-winner");
        }
        other => panic!("expected too_late, got {other:?}"),
    }
    // A broker-stamped write supersedes what its writer could read.
    let stamped = client.publish("lww", "now").await.unwrap();
    assert_eq!(stamped.status(), PublishStatus::New);
    assert!(stamped.summary().timestamp() > 4_000_000_000_000_000);
}

#[tokio::test]
async fn unsubscribe_stops_deliveries() {
    let broker = Broker::in_process(&[]);
    let client = broker.client().await;
    let mut keep = client.subscribe("u").await.unwrap();
    let mut drop_me = client.subscribe("u").await.unwrap();
    snapshot(&mut keep).await;
    snapshot(&mut drop_me).await;
    drop_me.unsubscribe().await.unwrap();
    client.publish("u/x", "1").await.unwrap();
    // The kept subscription sees it: the other one is gone from the report.
    assert_eq!(next_event(&mut keep).await.topic(), "u/x");
    let report = client.publish("u/y", "2").await.unwrap();
    match report {
        Outcome::New { notified, .. } => assert_eq!(&notified[..], &[0, 1, 0]),
        other => panic!("{other:?}"),
    }
    match keep.next_item().await {
        Some(Ok(Item::Event(e))) => assert_eq!(e.topic(), "u/y"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_subscription_outlives_its_client_handle() {
    let broker = Broker::in_process(&[]);
    let client = broker.client().await;
    let mut sub = client.subscribe("keep").await.unwrap();
    drop(client);
    snapshot(&mut sub).await;
    let publisher = broker.client().await;
    publisher.publish("keep/x", "1").await.unwrap();
    assert_eq!(next_event(&mut sub).await.topic(), "keep/x");
}

#[tokio::test]
async fn a_future_timestamp_cannot_freeze_a_topic() {
    use spread_client::ErrorCode;
    let broker = Broker::in_process(&["--archive", "off"]);
    let client = broker.client().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    // The review's attack: the greatest timestamp and id there are.
    let lock = PublishOptions {
        timestamp: Some(u64::MAX),
        id: Some(spread_client::EventId([0xff; 16])),
        ..PublishOptions::default()
    };
    let err = client.publish_with("t", "lock", lock).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TimestampOutOfRange), "{err}");
    // So later writes and deletes still apply.
    assert_eq!(
        client.publish("t", "v").await.unwrap().status(),
        PublishStatus::New
    );
    assert_eq!(
        client.delete("t").await.unwrap().status(),
        PublishStatus::New
    );
    // Within the skew (1 s by default) a timestamp is accepted, and the
    // broker's own stamps, on any topic, come after it.
    let ahead = now + 500_000;
    let near = PublishOptions {
        timestamp: Some(ahead),
        ..PublishOptions::default()
    };
    let applied = client.publish_with("a", "ahead", near).await.unwrap();
    assert_eq!(applied.status(), PublishStatus::New);
    let stamped = client.publish("b", "after").await.unwrap();
    assert!(stamped.summary().timestamp() > ahead);
}

#[tokio::test]
async fn a_publish_without_a_report_is_applied_in_order_and_answered_by_nothing() {
    use spread_protocol::{Publish, Request, Response, Topic, NO_REPORT};
    let broker = Broker::in_process(&[]);
    let reader = broker.client().await;
    let mut sub = reader.subscribe("quiet").await.unwrap();
    snapshot(&mut sub).await;
    // On the wire: request id 0 gets no answer; the ping after it does.
    let mut raw = broker.raw().await;
    let publish = |req_id, payload: &'static str| {
        Request::Publish(Publish {
            req_id,
            topic: Topic::new("quiet/raw", &Default::default()).unwrap(),
            payload: payload.into(),
            timestamp: None,
            id: None,
        })
    };
    raw.send(&publish(NO_REPORT, "unreported")).await;
    raw.send(&Request::Ping { req_id: 7 }).await;
    raw.send(&publish(8, "reported")).await;
    let mut answered = Vec::new();
    while answered.len() < 2 {
        match raw.recv().await.expect("an answer") {
            Response::Pong { req_id } => answered.push(req_id),
            Response::Report { req_id, .. } => answered.push(req_id),
            other => panic!("only the ping and the reported publish are answered: {other:?}"),
        }
    }
    answered.sort();
    assert_eq!(answered, [7, 8]);
    assert_eq!(next_event(&mut sub).await.payload_bytes(), b"unreported");
    assert_eq!(next_event(&mut sub).await.payload_bytes(), b"reported");

    // Through the SDK: in order, and a reported publish after them is
    // answered only once they are applied.
    let writer = broker.client().await;
    for i in 0..1000 {
        writer
            .publish_nowait(&format!("quiet/n/{}", i % 10), i.to_string())
            .await
            .unwrap();
    }
    writer.publish("quiet/after", "done").await.unwrap();
    for k in 0..10 {
        let last = 990 + k;
        let e = reader.get(&format!("quiet/n/{k}")).await.unwrap().unwrap();
        assert_eq!(e.payload_bytes(), last.to_string().as_bytes());
    }
    let mut seen = 0;
    while seen < 1000 {
        let e = next_event(&mut sub).await;
        assert_eq!(e.payload_bytes(), seen.to_string().as_bytes(), "in order");
        seen += 1;
    }
    assert_eq!(writer.unreported_refusals(), 0);
    // An invalid topic is refused by the SDK before anything is sent.
    assert!(writer.publish_nowait("bad//topic", "x").await.is_err());
}

#[tokio::test]
async fn a_refused_publish_without_a_report_is_counted() {
    let broker = Broker::in_process(&["--max-topics", "3"]);
    let writer = broker.client().await;
    for i in 0..5 {
        writer
            .publish_nowait(&format!("full/{i}"), "v")
            .await
            .unwrap();
    }
    // The report of a later publish comes after the refusals before it.
    let refused = writer.publish("full/0", "again").await;
    assert!(
        refused.is_ok(),
        "an existing topic takes a write: {refused:?}"
    );
    assert_eq!(writer.unreported_refusals(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_without_a_report_wait_while_the_connection_is_stalled() {
    // 64 MiB of publishes through a link that forwards nothing: far more
    // than the socket buffers and the SDK's 4 MiB queue hold, so the
    // publishing must wait (its memory stays bounded) rather than queue
    // it all, and go on once the link does.
    const PUBLISHES: usize = 1_000;
    let broker = Broker::in_process(&["--archive", "off"]);
    let proxy = support::Proxy::start(broker.addr).await;
    let config = spread_client::ClientConfig::new(proxy.addr.to_string()).ca_file(broker.ca());
    let writer = spread_client::Client::connect(config).await.unwrap();
    proxy.stall();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut publishing = tokio::spawn({
        let (writer, sent) = (writer.clone(), sent.clone());
        async move {
            let mut payload = vec![b'p'; 64 * 1024];
            for i in 0..PUBLISHES {
                payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
                writer
                    .publish_nowait(&format!("stalled/{}", i % 10), &payload)
                    .await
                    .unwrap();
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let waiting = tokio::time::timeout(std::time::Duration::from_secs(2), &mut publishing).await;
    assert!(
        waiting.is_err(),
        "64 MiB were queued through a stalled link"
    );
    let queued = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(queued < PUBLISHES, "{queued}");
    proxy.resume();
    publishing.await.unwrap();
    // They arrived in order: each topic's latest is its last publish.
    writer.publish("stalled/after", "done").await.unwrap();
    for k in 0..10 {
        let e = writer.get(&format!("stalled/{k}")).await.unwrap().unwrap();
        let i = u64::from_le_bytes(e.payload_bytes()[..8].try_into().unwrap());
        assert_eq!(i, (PUBLISHES - 10 + k) as u64);
    }
    assert_eq!(writer.unreported_refusals(), 0);
}
