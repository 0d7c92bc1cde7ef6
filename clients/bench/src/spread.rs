//! Spread over the raw protocol: pipelined publishes, counted reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::BytesMut;
use spread_protocol::request::encode_publish;
use spread_protocol::{
    ClientCodec, Hello, PublishMode, Request, Response, Topic, TopicRules, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;

use crate::wire::{Publisher, Subscriber, System};

type Tls = TlsStream<TcpStream>;

/// A Spread broker reached over TLS.
pub struct Spread {
    /// Broker address.
    pub addr: std::net::SocketAddr,
    /// TLS client.
    pub tls: TlsConnector,
}

struct Conn {
    rd: ReadHalf<Tls>,
    wr: WriteHalf<Tls>,
    buf: BytesMut,
    codec: ClientCodec,
}

impl Conn {
    async fn recv(&mut self) -> anyhow::Result<Response> {
        loop {
            if let Some(r) = self.codec.decode(&mut self.buf)? {
                return Ok(r);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                bail!("spread closed the connection");
            }
        }
    }
}

/// A connection for status requests and replays.
pub struct StatusProbe(Conn);

impl StatusProbe {
    /// Replays `query` and returns how many events arrived.
    pub async fn replay(&mut self, query: spread_protocol::ReplayQuery) -> anyhow::Result<u64> {
        let mut out = BytesMut::new();
        Request::Replay { req_id: 2, query }.encode(&mut out);
        self.0.wr.write_all(&out).await?;
        self.0.wr.flush().await?;
        let mut events = 0u64;
        loop {
            match self.0.recv().await? {
                Response::Event { sub_id: 2, .. } => events += 1,
                Response::ReplayComplete { count, .. } => {
                    anyhow::ensure!(count == events, "{events} events for a count of {count}");
                    return Ok(events);
                }
                Response::Error(e) => bail!("replay refused: {}", e.message),
                _ => {}
            }
        }
    }

    /// The status report.
    pub async fn status(&mut self) -> anyhow::Result<spread_protocol::StatusReport> {
        let mut out = BytesMut::new();
        Request::Status { req_id: 1 }.encode(&mut out);
        self.0.wr.write_all(&out).await?;
        self.0.wr.flush().await?;
        loop {
            match self.0.recv().await? {
                Response::Status(report) => return Ok(report),
                Response::Error(e) => bail!("status refused: {}", e.message),
                _ => {}
            }
        }
    }
}

impl Spread {
    /// A status connection.
    pub async fn probe(&self) -> anyhow::Result<StatusProbe> {
        Ok(StatusProbe(self.connect().await?))
    }

    async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect("localhost".try_into().context("name")?, tcp)
            .await?;
        let (rd, wr) = tokio::io::split(tls);
        let mut conn = Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(256 * 1024),
            codec: ClientCodec::default(),
        };
        let mut out = BytesMut::new();
        Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_name: "spread-bench".into(),
            token: None,
        })
        .encode(&mut out);
        conn.wr.write_all(&out).await?;
        conn.wr.flush().await?;
        match conn.recv().await? {
            Response::Welcome { .. } => Ok(conn),
            other => bail!("expected welcome, got {other:?}"),
        }
    }
}

/// Publishing side: a task counts reports as they come back.
pub struct SpreadPub {
    wr: WriteHalf<Tls>,
    out: BytesMut,
    sent: u64,
    acked: Arc<AtomicU64>,
    acked_signal: Arc<Notify>,
    next_id: u64,
    /// The task counting reports; stopped with the publisher.
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for SpreadPub {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Subscribing side.
pub struct SpreadSub {
    conn: Conn,
}

impl System for Spread {
    type Pub = SpreadPub;
    type Sub = SpreadSub;

    fn name(&self) -> &'static str {
        "Spread"
    }

    async fn publisher(&self) -> anyhow::Result<SpreadPub> {
        let Conn {
            mut rd,
            wr,
            mut buf,
            ..
        } = self.connect().await?;
        let acked = Arc::new(AtomicU64::new(0));
        let acked_signal = Arc::new(Notify::new());
        let (a, s) = (acked.clone(), acked_signal.clone());
        // Every frame on a publisher's connection is a report: count frames
        // without decoding them, as the NATS publisher reads nothing at all.
        let reader = tokio::spawn(async move {
            loop {
                let mut n = 0;
                loop {
                    match spread_protocol::frame::decode_frame(&mut buf, usize::MAX) {
                        Ok(Some(_)) => n += 1,
                        Ok(None) => break,
                        Err(e) => return eprintln!("spread publisher: {e}"),
                    }
                }
                if n > 0 {
                    a.fetch_add(n, Ordering::Release);
                    s.notify_one();
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) => {
                        return eprintln!("spread publisher: the broker closed the connection")
                    }
                    Err(e) => return eprintln!("spread publisher: {e}"),
                    Ok(_) => {}
                }
            }
        });
        Ok(SpreadPub {
            wr,
            out: BytesMut::with_capacity(256 * 1024),
            sent: 0,
            acked,
            acked_signal,
            next_id: 1,
            reader,
        })
    }

    async fn subscriber(&self, topic: &str) -> anyhow::Result<SpreadSub> {
        let mut conn = self.connect().await?;
        let mut out = BytesMut::new();
        Request::Subscribe {
            req_id: 1,
            prefix: Topic::prefix(topic, &TopicRules::default())?,
            since: 0,
            mode: spread_protocol::SubscribeMode::Latest,
            skip_source: Default::default(),
        }
        .encode(&mut out);
        conn.wr.write_all(&out).await?;
        conn.wr.flush().await?;
        loop {
            match conn.recv().await? {
                Response::SnapshotComplete { .. } => return Ok(SpreadSub { conn }),
                Response::Event { .. } => {}
                other => bail!("expected a snapshot, got {other:?}"),
            }
        }
    }
}

impl Publisher for SpreadPub {
    fn queue(&mut self, topic: &str, payload: &[u8]) {
        encode_publish(
            &mut self.out,
            self.next_id,
            topic,
            payload,
            None,
            None,
            PublishMode::Set,
        );
        self.next_id += 1;
        self.sent += 1;
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.wr.write_all(&self.out).await?;
        // What the socket did not take stays in the TLS buffer until flushed.
        self.wr.flush().await?;
        self.out.clear();
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        self.flush().await?;
        while self.acked.load(Ordering::Acquire) < self.sent {
            let waited = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                self.acked_signal.notified(),
            )
            .await;
            if waited.is_err() {
                bail!(
                    "no report for 30 s: {} of {} publishes answered",
                    self.acked.load(Ordering::Acquire),
                    self.sent
                );
            }
        }
        Ok(())
    }
}

impl Subscriber for SpreadSub {
    async fn next_batch(&mut self, f: &mut (dyn FnMut(&[u8]) + Send)) -> anyhow::Result<usize> {
        let conn = &mut self.conn;
        if conn.rd.read_buf(&mut conn.buf).await? == 0 {
            bail!("spread closed the connection");
        }
        let mut n = 0;
        while let Some(r) = conn.codec.decode(&mut conn.buf)? {
            match r {
                Response::Event { event, .. } => {
                    f(event.payload_bytes());
                    n += 1;
                }
                Response::Conflated { skipped, .. } => {
                    eprintln!("spread: a subscriber fell behind; {skipped} events conflated")
                }
                _ => {}
            }
        }
        Ok(n)
    }
}
