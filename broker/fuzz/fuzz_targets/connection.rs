//! A whole connection's message stream against an in-process broker: each
//! input is sent after a valid hello on a fresh connection (over the plain
//! loopback listener: TLS is not what is fuzzed), then a long-lived healthy
//! connection must still get its ping answered. A panic, a hang or a broker
//! that stops serving is a finding.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spread_protocol::{ClientCodec, Hello, Request, Response, PROTOCOL_VERSION};
use tokio_util::codec::Decoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

struct Fixture {
    rt: Runtime,
    addr: SocketAddr,
}

fn hello() -> BytesMut {
    let mut out = BytesMut::new();
    Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: "fuzz".into(),
        token: None,
    })
    .encode(&mut out);
    out
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = std::env::temp_dir().join(format!("spread-fuzz-{}", std::process::id()));
        let plain = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr");
        let args = spread_broker::Args {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(dir),
            durability: Some("never".into()),
            archive: Some("off".into()),
            plain_listen: Some(plain),
            ..spread_broker::Args::default()
        };
        let config = spread_broker::Config::resolve(args).expect("config");
        let server = rt.block_on(spread_broker::Server::bind(config)).expect("bind");
        let addr = server.plain_addr().expect("plain listener");
        rt.spawn(server.run(std::future::pending()));
        Fixture { rt, addr }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.rt.block_on(async {
        // The hostile stream, after a valid hello.
        if let Ok(mut s) = TcpStream::connect(f.addr).await {
            let mut out = hello();
            out.extend_from_slice(data);
            let _ = s.write_all(&out).await;
            let _ = s.shutdown().await;
            let mut sink = vec![0u8; 64 * 1024];
            let drain = async {
                while let Ok(n) = s.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
        }
        // The broker still serves: a new connection gets a ping answered.
        let mut s = TcpStream::connect(f.addr).await.expect("broker accepts");
        let mut out = hello();
        Request::Ping { req_id: 1 }.encode(&mut out);
        s.write_all(&out).await.expect("write");
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            let mut codec = ClientCodec::default();
            let mut buf = BytesMut::new();
            loop {
                match codec.decode(&mut buf).expect("the broker sends valid frames") {
                    Some(Response::Pong { req_id: 1 }) => return,
                    Some(_) => continue,
                    None => {}
                }
                let n = s.read_buf(&mut buf).await.expect("read");
                assert!(n > 0, "the broker closed a healthy connection");
            }
        })
        .await;
        assert!(answered.is_ok(), "the broker stopped answering");
    });
});
