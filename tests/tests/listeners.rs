//! Listeners: the plain-TCP one (only on loopback, only when asked, the
//! same protocol as over TLS) and certificate reload on SIGHUP.

mod support;

use bytes::BytesMut;
use spread_protocol::{
    ClientCodec, Hello, Publish, Request, Response, Topic, TopicRules, PROTOCOL_VERSION,
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

/// A CA and a `localhost` certificate it signed: (ca pem, cert pem, key pem).
fn pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    let (ca1, cert1, key1) = pki();
    let (ca2, cert2, key2) = pki();
    let (ca1_file, ca2_file) = (files.path().join("ca1.pem"), files.path().join("ca2.pem"));
    std::fs::write(&ca1_file, ca1).unwrap();
    std::fs::write(&ca2_file, ca2).unwrap();
    std::fs::write(&cert, cert1).unwrap();
    std::fs::write(&key, key1).unwrap();
    let broker = Broker::start(&[
        "--archive",
        "off",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let cfg = |ca: &std::path::Path| {
        spread_client::ClientConfig::new(broker.addr.to_string()).ca_file(ca)
    };
    let old = spread_client::Client::connect(cfg(&ca1_file))
        .await
        .unwrap();
    assert!(spread_client::Client::connect(cfg(&ca2_file))
        .await
        .is_err());
    // New certificate and key, then SIGHUP.
    std::fs::write(&cert, cert2).unwrap();
    std::fs::write(&key, key2).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let new = support::eventually("the new certificate to be served", || async {
        spread_client::Client::connect(cfg(&ca2_file)).await.ok()
    })
    .await;
    new.ping().await.unwrap();
    // Established connections keep going.
    old.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_takes_the_certificate_subject_as_identity() {
    let ca = support::TestCa::new();
    let ca_file = &ca.file;
    let (cert_file, key_file) = ca.issue("device-9");
    let broker = Broker::start(&[
        "--archive",
        "off",
        "--tls-client-ca",
        ca_file.to_str().unwrap(),
    ]);
    let with_cert =
        spread_client::Client::connect(broker.config().client_cert(&cert_file, &key_file))
            .await
            .unwrap();
    let spread_client::Outcome::New { event, .. } = with_cert.publish("d/9", "on").await.unwrap()
    else {
        panic!("not applied")
    };
    assert_eq!(event.origin(), "device-9");
    // Without a certificate the TLS handshake fails.
    assert!(spread_client::Client::connect(broker.config())
        .await
        .is_err());
    // Where tokens are required, a certificate alone is not enough.
    let strict = Broker::start(&[
        "--archive",
        "off",
        "--tls-client-ca",
        ca_file.to_str().unwrap(),
        "--jwt-secret",
        "test-secret-of-enough-length",
        "--require-auth",
    ]);
    match spread_client::Client::connect(strict.config().client_cert(&cert_file, &key_file)).await {
        Err(e) => assert_eq!(
            e.code(),
            Some(spread_client::ErrorCode::Unauthorized),
            "{e}"
        ),
        Ok(_) => panic!("a certificate alone was accepted under --require-auth"),
    }
}
