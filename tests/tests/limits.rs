//! Limits against abuse: subscriptions per connection, connections per
//! address, publish rate, a client that never finishes its handshake, and
//! ten thousand connections opened and dropped — each breach gets its own
//! error and the broker keeps serving well-behaved clients.

mod support;

use futures_util::StreamExt;
use spread_client::{Client, ErrorCode};
use support::{eventually, Broker, PATIENCE};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_subscriptions_stops_at_the_limit() {
    let broker = Broker::start(&["--archive", "off", "--max-subscriptions", "5"]);
    let client = broker.client().await;
    let mut kept = Vec::new();
    for i in 0..5 {
        let mut sub = client.subscribe(&format!("s/{i}")).await.unwrap();
        support::snapshot(&mut sub).await;
        kept.push(sub);
    }
    let mut extra = client.subscribe("s/extra").await.unwrap();
    match tokio::time::timeout(PATIENCE, extra.next()).await.unwrap() {
        Some(Err(e)) => assert_eq!(e.code(), Some(ErrorCode::TooManySubscriptions), "{e}"),
        other => panic!("expected too_many_subscriptions, got {other:?}"),
    }
    // The connection and its subscriptions go on.
    client.publish("s/0/x", "1").await.unwrap();
    assert_eq!(support::next_event(&mut kept[0]).await.topic(), "s/0/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_stop_at_the_limit_deletes_included() {
    let broker = Broker::start(&["--archive", "off", "--max-topics", "3"]);
    let client = broker.client().await;
    client.publish("t/1", "a").await.unwrap();
    client.publish("t/2", "a").await.unwrap();
    // A delete of a topic nobody wrote still leaves a tombstone: one more.
    client.delete("t/3").await.unwrap();
    let refused = |r: Result<spread_client::Outcome, spread_client::Error>| match r {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::TooManyTopics), "{e}"),
        Ok(o) => panic!("expected too_many_topics, got {o:?}"),
    };
    refused(client.publish("t/4", "a").await);
    refused(client.delete("t/5").await);
    // Topics it holds still change, the deleted one included.
    client.publish("t/1", "b").await.unwrap();
    client.delete("t/2").await.unwrap();
    client.publish("t/3", "back").await.unwrap();
    assert_eq!(
        client.get("t/3").await.unwrap().unwrap().payload_bytes(),
        b"back"
    );
    assert!(client.get("t/4").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let broker = Broker::start(&["--archive", "off", "--max-connections-per-ip", "3"]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(broker.client().await);
    }
    match Client::connect(broker.config()).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::TooManyConnections), "{e}"),
        Ok(_) => panic!("a fourth connection was accepted"),
    }
    // The broker-wide limit refuses the same way.
    let small = Broker::start(&["--archive", "off", "--max-connections", "1"]);
    let _only = small.client().await;
    match Client::connect(small.config()).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::TooManyConnections), "{e}"),
        Ok(_) => panic!("a second connection was accepted"),
    }
    // One leaves: a new one gets in.
    drop(clients.pop());
    let fresh = eventually("a connection slot to free up", || async {
        Client::connect(broker.config()).await.ok()
    })
    .await;
    fresh.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_beyond_the_rate_are_refused_not_queued() {
    let broker = Broker::start(&["--archive", "off", "--max-publish-rate", "100"]);
    let client = broker.client().await;
    let results = futures_util::future::join_all((0..500).map(|i| {
        let c = client.clone();
        async move { c.publish(&format!("r/{i}"), "x").await }
    }))
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let limited = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(ErrorCode::RateLimited)))
        .count();
    assert_eq!(ok + limited, 500, "every publish answered");
    assert!(
        (100..250).contains(&ok),
        "{ok} accepted in a burst of 500 at 100/s"
    );
    // The connection stays open and the budget refills.
    client.ping().await.unwrap();
    eventually("the budget to refill", || async {
        client.publish("r/later", "y").await.ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_ten_thousand_dropped_connections_do_not_hurt() {
    let broker = Broker::start(&["--archive", "off", "--handshake-timeout-ms", "300"]);
    // A client that connects and never speaks is closed after the timeout.
    let mut silent = TcpStream::connect(broker.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // Ten thousand connections opened and dropped.
    for _ in 0..10_000 {
        drop(TcpStream::connect(broker.addr).await.unwrap());
    }
    // Well-behaved clients are served.
    let client = broker.client().await;
    client.publish("ok/1", "1").await.unwrap();
    assert_eq!(
        client.get("ok/1").await.unwrap().unwrap().payload_bytes(),
        b"1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_keepalives_keep_quiet_subscribers() {
    let broker = Broker::start(&["--archive", "off", "--idle-timeout-secs", "1"]);
    // A subscriber that only listens, with keepalives and no reconnection:
    // if it were closed, its subscription would end.
    let mut cfg = broker.config();
    cfg.reconnect = false;
    cfg.keepalive = Some(std::time::Duration::from_millis(200));
    let listener = Client::connect(cfg).await.unwrap();
    let mut sub = listener.subscribe("quiet").await.unwrap();
    support::snapshot(&mut sub).await;
    // A raw connection that says nothing after its hello is closed.
    let mut raw = broker.raw().await;
    tokio::time::timeout(PATIENCE, raw.expect_fatal(ErrorCode::Timeout))
        .await
        .expect("closed for idleness");
    // More than the idle time has passed: the listener is still there.
    let publisher = broker.client().await;
    publisher.publish("quiet/1", "still here").await.unwrap();
    assert_eq!(support::next_event(&mut sub).await.topic(), "quiet/1");
}

/// Threads of the broker process.
fn threads(broker: &Broker) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", broker.pid()))
        .unwrap()
        .count()
}

/// Open file descriptors of the broker process.
fn fds(broker: &Broker) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", broker.pid()))
        .unwrap()
        .count()
}

/// Sends `requests` in one write, reading nothing.
async fn pipeline(
    raw: &mut support::Raw,
    requests: impl Iterator<Item = spread_protocol::Request>,
) {
    let mut out = bytes::BytesMut::new();
    for r in requests {
        r.encode(&mut out);
    }
    raw.send_bytes(&out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_that_nobody_reads_hold_no_thread_and_are_capped_per_connection() {
    use spread_protocol::{ReplayQuery, Request, Response};
    let broker = Broker::start(&["--max-reads-per-connection", "8"]);
    let client = broker.client().await;
    for i in 0..2_000 {
        client
            .publish(&format!("r/{}", i % 50), vec![b'x'; 512])
            .await
            .unwrap();
    }
    // Wait for the archive to hold everything.
    eventually("the archive to catch up", || async {
        let s = client.status().await.ok()?;
        (s.sinks[0].lag_events == 0 && s.sinks[0].state == "running").then_some(())
    })
    .await;
    let (threads_before, fds_before) = (threads(&broker), fds(&broker));
    const REPLAYS: u64 = 3_000;
    let mut raw = broker.raw().await;
    pipeline(
        &mut raw,
        (1..=REPLAYS).map(|req_id| Request::Replay {
            req_id,
            query: ReplayQuery::default(),
        }),
    )
    .await;
    // Another client is served meanwhile.
    let other = broker.client().await;
    other.ping().await.unwrap();
    assert!(other.get("r/1").await.unwrap().is_some());
    let (threads_during, fds_during) = (threads(&broker), fds(&broker));
    // A few at most: the archive's query side opens its few pooled database
    // connections (sqlx gives each SQLite connection a thread).
    assert!(
        threads_during <= threads_before + 8,
        "{threads_before} threads before, {threads_during} during"
    );
    assert!(
        fds_during <= fds_before + 16,
        "{fds_before} fds before, {fds_during} during"
    );
    // Beyond the per-connection limit: too_many_reads; the rest complete.
    let (mut refused, mut complete, mut events) = (0, 0, 0u64);
    while refused + complete < REPLAYS {
        match raw.recv().await.expect("connection open") {
            Response::Error(e) => {
                assert_eq!(
                    e.code,
                    spread_protocol::ErrorCode::TooManyReads,
                    "{}",
                    e.message
                );
                refused += 1;
            }
            Response::ReplayComplete { count, .. } => {
                assert_eq!(count, 2_000);
                complete += 1;
            }
            Response::Event { .. } => events += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(complete >= 8, "{complete} replays completed");
    assert_eq!(events, complete * 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_catch_ups_of_a_stalled_client_do_not_stall_others() {
    use spread_protocol::{Request, Response, SubscribeMode, Topic};
    let broker = Broker::start(&["--archive", "off", "--recent-events", "1"]);
    let client = broker.client().await;
    for i in 0..5_000 {
        client
            .publish(&format!("h/{}", i % 100), vec![b'x'; 1_000])
            .await
            .unwrap();
    }
    // 600 history subscriptions from the start, never read.
    let mut stalled = broker.raw().await;
    pipeline(
        &mut stalled,
        (1..=600).map(|req_id| Request::Subscribe {
            req_id,
            prefix: Topic::root(),
            since: 1,
            mode: SubscribeMode::History,
            skip_source: Default::default(),
        }),
    )
    .await;
    // Someone else's history subscription completes.
    let mut sub = client.subscribe_history("h", 1).await.unwrap();
    let got = support::snapshot(&mut sub).await;
    assert_eq!(got.len(), 5_000);
    // The stalled connection was told which subscriptions were refused.
    let mut refused = 0;
    while refused < 600 - 8 {
        if let Some(Response::Error(e)) = stalled.recv().await {
            assert_eq!(e.code, spread_protocol::ErrorCode::TooManyReads);
            refused += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_catch_ups_give_their_request_credit_back() {
    use spread_protocol::{Request, Response, SubscribeMode, Topic};
    let broker = Broker::start(&[
        "--archive",
        "off",
        "--recent-events",
        "1",
        "--max-inflight",
        "8",
    ]);
    let client = broker.client().await;
    for i in 0..2_000 {
        client.publish(&format!("c/{}", i % 10), "v").await.unwrap();
    }
    let mut raw = broker.raw().await;
    for round in 0..3u64 {
        // More subscribe-then-unsubscribe cycles than there are credits.
        for i in 0..8 {
            let id = round * 100 + i + 1;
            pipeline(
                &mut raw,
                [
                    Request::Subscribe {
                        req_id: id,
                        prefix: Topic::root(),
                        since: 1,
                        mode: SubscribeMode::History,
                        skip_source: Default::default(),
                    },
                    Request::Unsubscribe {
                        req_id: id + 50,
                        sub_id: id,
                    },
                ]
                .into_iter(),
            )
            .await;
        }
        raw.send(&Request::Ping { req_id: 9_999 }).await;
        loop {
            match raw.recv().await.expect("connection open") {
                Response::Pong { req_id: 9_999 } => break,
                Response::Error(e) => panic!("{e:?}"),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_inflight_limit_still_serves_a_pipelined_burst() {
    use spread_protocol::{Request, Response};
    let broker = Broker::start(&["--archive", "off", "--max-inflight", "100"]);
    let mut raw = broker.raw().await;
    pipeline(&mut raw, (1..=200).map(|req_id| Request::Ping { req_id })).await;
    for want in 1..=200 {
        match raw.recv().await {
            Some(Response::Pong { req_id }) => assert_eq!(req_id, want),
            other => panic!("expected pong {want}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_cannot_take_the_files_the_log_needs() {
    // The broker under a limit of 1024 descriptors.
    let broker = Broker::builder()
        .fd_limit(1024)
        .flags(&[
            "--archive",
            "off",
            "--segment-bytes",
            "4096",
            "--handshake-timeout-ms",
            "60000",
        ])
        .start();
    let client = broker.client().await;
    // 1,500 connections that never say a word, from one address.
    let mut flood = Vec::new();
    for _ in 0..1_500 {
        if let Ok(s) = TcpStream::connect(broker.addr).await {
            flood.push(s);
        }
    }
    // One more, after the flood in the accept queue: refused once the
    // broker went through all of it (told so while few refusals run, else
    // closed at once).
    match tokio::time::timeout(PATIENCE, Client::connect(broker.config())).await {
        // Told, or (refusal slots busy) closed or reset: any error but
        // another code.
        Ok(Err(e)) => assert!(
            e.code().is_none_or(|c| c == ErrorCode::TooManyConnections),
            "{e}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Room is left for the log: writes that need new segments succeed.
    assert!(
        fds(&broker) <= 1024 - 256,
        "{} descriptors open",
        fds(&broker)
    );
    for i in 0..100 {
        client
            .publish(&format!("f/{i}"), vec![b'f'; 1_000])
            .await
            .unwrap();
    }
    drop(flood);
    // And once they are gone, new clients get in.
    let fresh = eventually("a connection to be admitted again", || async {
        Client::connect(broker.config()).await.ok()
    })
    .await;
    fresh.ping().await.unwrap();
}
