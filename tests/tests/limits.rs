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
