//! Malformed input gets a typed error frame and closes only that connection.

mod support;

use spread_protocol::{ErrorCode, Hello, Request, Response};
use support::{Broker, Raw};
use tokio::io::AsyncWriteExt;

/// A well-behaved client still gets served after each bad one.
async fn still_serving(broker: &Broker, n: usize) {
    let client = broker.client().await;
    let topic = format!("health/{n}");
    client.publish(&topic, "ok").await.unwrap();
    assert_eq!(
        client.get(&topic).await.unwrap().unwrap().payload_bytes(),
        b"ok"
    );
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[tokio::test]
async fn each_kind_of_bad_input_gets_its_error_and_the_broker_keeps_serving() {
    let broker = Broker::start(&["--max-frame", "65536"]);
    // A healthy subscriber that must keep receiving throughout.
    let watcher = broker.client().await;
    let mut watch = watcher.subscribe("health").await.unwrap();
    support::snapshot(&mut watch).await;

    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        // Garbage: a length prefix of "garb" = 1.7 GB, refused from the header.
        (
            "garbage",
            b"garbage bytes that are not a frame".to_vec(),
            ErrorCode::FrameTooLarge,
        ),
        (
            "length above the limit",
            65537u32.to_be_bytes().to_vec(),
            ErrorCode::FrameTooLarge,
        ),
        (
            "invalid msgpack",
            frame(&[0xc1, 0xc1, 0xc1]),
            ErrorCode::MalformedFrame,
        ),
        (
            "truncated array",
            frame(&[0x93, 0x13]),
            ErrorCode::MalformedFrame,
        ),
        (
            "unknown message",
            frame(&[0x92, 0x7e, 0x01]),
            ErrorCode::UnknownMessage,
        ),
        (
            "invalid topic",
            frame(&[0x93, 0x13, 0x01, 0xa4, b'a', b'/', b'/', b'b']),
            ErrorCode::InvalidTopic,
        ),
    ];
    for (n, (name, bytes, code)) in cases.into_iter().enumerate() {
        let mut raw = broker.raw().await;
        raw.send_bytes(&bytes).await;
        match raw.recv().await {
            Some(Response::Error(e)) => {
                assert_eq!(e.code, code, "{name}: {}", e.message);
                assert!(e.req_id.is_none(), "{name}");
            }
            other => panic!("{name}: expected error frame, got {other:?}"),
        }
        assert!(raw.recv().await.is_none(), "{name}: connection must close");
        still_serving(&broker, n).await;
        let e = support::next_event(&mut watch).await;
        assert_eq!(e.topic(), format!("health/{n}"), "{name}");
    }
}

#[tokio::test]
async fn wrong_protocol_version_names_the_supported_range() {
    let broker = Broker::start(&[]);
    // Version 1 events had no source: a version 1 client is refused too.
    for version in [1, 99] {
        let mut raw: Raw = broker.raw_unhandshaken().await;
        raw.send(&Request::Hello(Hello {
            version,
            client_name: "other".into(),
            token: None,
        }))
        .await;
        match raw.recv().await {
            Some(Response::Error(e)) => {
                assert_eq!(e.code, ErrorCode::UnsupportedVersion);
                assert!(e.message.contains("2 to 2"), "{}", e.message);
            }
            other => panic!("expected error, got {other:?}"),
        }
        assert!(raw.recv().await.is_none());
    }
    still_serving(&broker, 0).await;
}

#[tokio::test]
async fn requests_before_hello_and_a_second_hello_are_refused() {
    let broker = Broker::start(&[]);
    let mut raw = broker.raw_unhandshaken().await;
    raw.send(&Request::Ping { req_id: 1 }).await;
    raw.expect_fatal(ErrorCode::HandshakeRequired).await;

    let mut raw = broker.raw().await;
    raw.send(&Request::Ping { req_id: 7 }).await;
    raw.send(&Request::Hello(Hello {
        version: spread_protocol::PROTOCOL_VERSION,
        client_name: "again".into(),
        token: None,
    }))
    .await;
    // Requests before the bad frame are still answered, in order.
    assert_eq!(raw.recv().await, Some(Response::Pong { req_id: 7 }));
    raw.expect_fatal(ErrorCode::HandshakeRequired).await;
    still_serving(&broker, 1).await;
}

#[tokio::test]
async fn plain_tcp_and_abrupt_disconnects_do_not_hurt() {
    let broker = Broker::start(&[]);
    // Not TLS at all.
    let mut tcp = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    drop(tcp);
    // A frame cut in the middle, then the connection dropped.
    let mut raw = broker.raw().await;
    raw.send_bytes(&[0, 0, 0, 50, 0x95, 0x10]).await;
    drop(raw);
    // A subscriber that vanishes without unsubscribing.
    let mut raw = broker.raw().await;
    raw.send(&Request::Subscribe {
        req_id: 1,
        prefix: spread_protocol::Topic::root(),
        since: 0,
        mode: spread_protocol::SubscribeMode::Latest,
        skip_source: Default::default(),
    })
    .await;
    drop(raw);
    still_serving(&broker, 2).await;
}

#[tokio::test]
async fn before_its_hello_a_client_gets_no_large_frame() {
    let broker = Broker::start(&["--archive", "off"]);
    // A first frame announcing 1 MiB: refused from its header, although
    // frames of up to 8 MiB are accepted once the hello is done.
    let mut raw = broker.raw_unhandshaken().await;
    raw.send_bytes(&(1u32 << 20).to_be_bytes()).await;
    raw.expect_fatal(ErrorCode::FrameTooLarge).await;
    // A hello with a long token still fits.
    let mut raw = broker.raw_unhandshaken().await;
    raw.send(&Request::Hello(Hello {
        version: spread_protocol::PROTOCOL_VERSION,
        client_name: "x".repeat(16 * 1024),
        token: None,
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(Response::Welcome { .. })));
    // After it, large frames are accepted.
    let client = broker.client().await;
    client.publish("big", vec![b'b'; 1 << 20]).await.unwrap();
}
