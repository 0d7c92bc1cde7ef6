//! The plain-TCP listener: only on loopback, only when asked, and the same
//! protocol as over TLS.

mod support;

use bytes::BytesMut;
use spread_protocol::{
    ClientCodec, Hello, Publish, PublishMode, Request, Response, Topic, TopicRules,
    PROTOCOL_VERSION,
};
use support::{fail_to_start, Broker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

async fn recv(stream: &mut TcpStream, buf: &mut BytesMut) -> Response {
    let mut codec = ClientCodec::default();
    loop {
        if let Some(r) = codec.decode(buf).unwrap() {
            return r;
        }
        assert!(stream.read_buf(buf).await.unwrap() > 0, "closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_on_loopback_speaks_the_same_protocol() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let broker = Broker::start(&["--archive", "off", "--plain-listen", &addr]);
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let mut out = BytesMut::new();
    Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: "plain".into(),
        token: None,
    })
    .encode(&mut out);
    let rules = TopicRules::default();
    Request::Publish(Publish {
        req_id: 1,
        topic: Topic::new("plain/a", &rules).unwrap(),
        payload: "no tls".into(),
        timestamp: None,
        id: None,
        mode: PublishMode::Set,
    })
    .encode(&mut out);
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    assert!(matches!(
        recv(&mut stream, &mut buf).await,
        Response::Welcome { .. }
    ));
    assert!(matches!(
        recv(&mut stream, &mut buf).await,
        Response::Report { req_id: 1, .. }
    ));
    // What it published is there over TLS too.
    let client = broker.client().await;
    let e = client.get("plain/a").await.unwrap().unwrap();
    assert_eq!(e.payload_bytes(), b"no tls");
}

#[test]
fn plain_tcp_is_refused_beyond_loopback() {
    let stderr = fail_to_start(&["--plain-listen", "0.0.0.0:7777"]);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}
