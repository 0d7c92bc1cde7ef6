//! The SDK reconnects after a cut connection and resumes every subscription
//! from the last iteration it delivered: no gap, no duplicate.

mod support;

use std::sync::atomic::Ordering;

use spread_client::{Client, Error, Item};
use support::{snapshot, Broker, Proxy, PATIENCE};

/// A client reaching `broker` through `proxy`.
async fn through(broker: &Broker, proxy: &Proxy, reconnect: bool) -> Client {
    let mut cfg = broker.config();
    cfg.server = proxy.addr.to_string();
    cfg.server_name = Some("localhost".into());
    cfg.reconnect = reconnect;
    Client::connect(cfg).await.unwrap()
}

async fn next(sub: &mut spread_client::Subscription) -> Option<Result<Item, Error>> {
    tokio::time::timeout(PATIENCE, sub.next_item())
        .await
        .expect("item in time")
}

async fn until_connected(client: &Client, connected: bool) {
    let mut state = client.connection_state();
    tokio::time::timeout(PATIENCE, state.wait_for(|c| *c == connected))
        .await
        .expect("state reached in time")
        .expect("client alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_resumes_without_gap_or_duplicate() {
    let broker = Broker::start(&[]);
    let proxy = Proxy::start(broker.addr).await;
    let client = through(&broker, &proxy, true).await;
    let publisher = broker.client().await;

    let mut sub = client.subscribe("resume").await.unwrap();
    assert!(snapshot(&mut sub).await.is_empty());
    let mut seen: Vec<(String, u64, bool)> = Vec::new();

    for i in 0..100 {
        publisher
            .publish(&format!("resume/{i}"), "a")
            .await
            .unwrap();
    }
    while seen.len() < 100 {
        if let Some(Ok(Item::Event(e))) = next(&mut sub).await {
            seen.push((e.topic().to_string(), e.iteration(), e.is_tombstone()));
        }
    }

    // Cut the connection and keep the client out while the state changes.
    proxy.open.store(false, Ordering::SeqCst);
    proxy.cut();
    until_connected(&client, false).await;
    assert!(matches!(
        client.get("resume/1").await,
        Err(Error::NotConnected)
    ));
    let mut changed = Vec::new();
    for i in 100..150 {
        let r = publisher
            .publish(&format!("resume/{i}"), "b")
            .await
            .unwrap();
        changed.push((format!("resume/{i}"), r.summary().iteration(), false));
    }
    publisher
        .publish("resume/5", "overwritten once")
        .await
        .unwrap();
    let r = publisher
        .publish("resume/5", "overwritten twice")
        .await
        .unwrap();
    changed.push(("resume/5".into(), r.summary().iteration(), false));
    let r = publisher.delete("resume/6").await.unwrap();
    changed.push(("resume/6".into(), r.summary().iteration(), true));
    proxy.open.store(true, Ordering::SeqCst);

    // After the resume: exactly the latest state of what changed, in order.
    let mut resumed = Vec::new();
    while resumed.len() < changed.len() {
        match next(&mut sub).await {
            Some(Ok(Item::Event(e))) => {
                resumed.push((e.topic().to_string(), e.iteration(), e.is_tombstone()))
            }
            Some(Ok(_)) => {}
            other => panic!("subscription failed: {other:?}"),
        }
    }
    changed.sort_by_key(|c| c.1);
    assert_eq!(resumed, changed, "no gap, no duplicate, in iteration order");
    assert!(client.is_connected());

    // Live again.
    let r = publisher.publish("resume/live", "c").await.unwrap();
    loop {
        match next(&mut sub).await {
            Some(Ok(Item::Event(e))) => {
                assert_eq!(
                    e.iteration(),
                    r.summary().iteration(),
                    "nothing else in between"
                );
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("subscription failed: {other:?}"),
        }
    }
    // Requests work on the new connection.
    assert!(client.get("resume/1").await.unwrap().is_some());
}

#[tokio::test]
async fn requests_in_flight_when_the_connection_drops_fail_cleanly() {
    let broker = Broker::start(&[]);
    let proxy = Proxy::start(broker.addr).await;
    let client = through(&broker, &proxy, false).await;
    let mut sub = client.subscribe("x").await.unwrap();
    snapshot(&mut sub).await;
    proxy.cut();
    // The stream ends with an error instead of hanging.
    let end = tokio::time::timeout(PATIENCE, sub.next_item())
        .await
        .expect("in time");
    assert!(
        matches!(end, Some(Err(Error::Disconnected)) | None),
        "{end:?}"
    );
    assert!(matches!(
        client.publish("x/y", "z").await,
        Err(Error::NotConnected) | Err(Error::Disconnected)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_subscription_resumes_with_every_event() {
    let broker = Broker::start(&[]);
    let proxy = Proxy::start(broker.addr).await;
    let client = through(&broker, &proxy, true).await;
    let publisher = broker.client().await;

    let mut sub = client.subscribe_history("audit", 0).await.unwrap();
    let first = publisher.publish("audit/x", "1").await.unwrap();
    loop {
        if let Some(Ok(Item::Event(e))) = next(&mut sub).await {
            assert_eq!(e.iteration(), first.summary().iteration());
            break;
        }
    }
    proxy.open.store(false, Ordering::SeqCst);
    proxy.cut();
    until_connected(&client, false).await;
    // Several versions of one topic while disconnected: all must arrive.
    let mut expected = Vec::new();
    for v in ["2", "3", "4"] {
        expected.push(
            publisher
                .publish("audit/x", v)
                .await
                .unwrap()
                .summary()
                .iteration(),
        );
    }
    proxy.open.store(true, Ordering::SeqCst);
    let mut got = Vec::new();
    while got.len() < expected.len() {
        match next(&mut sub).await {
            Some(Ok(Item::Event(e))) => got.push(e.iteration()),
            Some(Ok(_)) => {}
            other => panic!("subscription failed: {other:?}"),
        }
    }
    assert_eq!(got, expected);
}
