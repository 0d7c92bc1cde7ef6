//! NATS over TLS with its text protocol, written as lean as the Spread
//! side so that both servers, not the clients, are what gets measured.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::wire::{Publisher, Subscriber, System};

type Tls = TlsStream<TcpStream>;

/// A nats-server reached over TLS.
pub struct Nats {
    /// Server address.
    pub addr: std::net::SocketAddr,
    /// TLS client.
    pub tls: TlsConnector,
}

/// Finds `\r\n` in `buf`.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl Nats {
    /// Connects: plaintext INFO, TLS upgrade, CONNECT, PING/PONG.
    pub async fn connect_raw(&self) -> anyhow::Result<(ReadHalf<Tls>, WriteHalf<Tls>, BytesMut)> {
        let mut tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        // The INFO line arrives before TLS.
        let mut info = Vec::new();
        let mut byte = [0u8; 1];
        while !info.ends_with(b"\r\n") {
            tcp.read_exact(&mut byte).await?;
            info.push(byte[0]);
        }
        if !info.starts_with(b"INFO") {
            bail!("unexpected greeting from nats-server");
        }
        let tls = self
            .tls
            .connect("localhost".try_into().context("name")?, tcp)
            .await?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        wr.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":true,\"name\":\"spread-bench\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1}\r\nPING\r\n",
        )
        .await?;
        wr.flush().await?;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        wait_pong(&mut rd, &mut buf).await?;
        Ok((rd, wr, buf))
    }
}

/// Reads until a PONG line, skipping INFO and +OK.
async fn wait_pong(rd: &mut ReadHalf<Tls>, buf: &mut BytesMut) -> anyhow::Result<()> {
    loop {
        while let Some(end) = line_end(buf) {
            let line = buf.split_to(end + 2);
            if line.starts_with(b"PONG") {
                return Ok(());
            }
            if line.starts_with(b"-ERR") {
                bail!("nats: {}", String::from_utf8_lossy(&line).trim());
            }
        }
        if rd.read_buf(buf).await? == 0 {
            bail!("nats closed the connection");
        }
    }
}

/// Publishing side.
pub struct NatsPub {
    wr: WriteHalf<Tls>,
    out: Vec<u8>,
    pongs: Arc<Notify>,
    /// The task reading PONGs; stopped with the publisher.
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for NatsPub {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Subscribing side.
pub struct NatsSub {
    rd: ReadHalf<Tls>,
    wr: WriteHalf<Tls>,
    buf: BytesMut,
}

impl System for Nats {
    type Pub = NatsPub;
    type Sub = NatsSub;

    fn name(&self) -> &'static str {
        "NATS"
    }

    async fn publisher(&self) -> anyhow::Result<NatsPub> {
        let (mut rd, wr, mut buf) = self.connect_raw().await?;
        let pongs = Arc::new(Notify::new());
        let p = pongs.clone();
        let reader = tokio::spawn(async move {
            loop {
                match wait_pong(&mut rd, &mut buf).await {
                    Ok(()) => p.notify_one(),
                    Err(e) => return eprintln!("nats publisher: {e}"),
                }
            }
        });
        Ok(NatsPub {
            wr,
            out: Vec::with_capacity(256 * 1024),
            pongs,
            reader,
        })
    }

    async fn subscriber(&self, topic: &str) -> anyhow::Result<NatsSub> {
        let (mut rd, mut wr, mut buf) = self.connect_raw().await?;
        let subject = topic.replace('/', ".");
        wr.write_all(format!("SUB {subject} 1\r\nPING\r\n").as_bytes())
            .await?;
        wr.flush().await?;
        wait_pong(&mut rd, &mut buf).await?;
        Ok(NatsSub { rd, wr, buf })
    }
}

impl Publisher for NatsPub {
    fn queue(&mut self, topic: &str, payload: &[u8]) {
        let _ = write!(self.out, "PUB ");
        for b in topic.bytes() {
            self.out.push(if b == b'/' { b'.' } else { b });
        }
        let _ = write!(self.out, " {}\r\n", payload.len());
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.wr.write_all(&self.out).await?;
        // What the socket did not take stays in the TLS buffer until flushed.
        self.wr.flush().await?;
        self.out.clear();
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        self.out.extend_from_slice(b"PING\r\n");
        self.flush().await?;
        tokio::time::timeout(std::time::Duration::from_secs(30), self.pongs.notified())
            .await
            .map_err(|_| anyhow::anyhow!("no PONG from nats-server for 30 s"))?;
        Ok(())
    }
}

impl Subscriber for NatsSub {
    async fn next_batch(&mut self, f: &mut (dyn FnMut(&[u8]) + Send)) -> anyhow::Result<usize> {
        if self.rd.read_buf(&mut self.buf).await? == 0 {
            bail!("nats closed the connection");
        }
        let mut n = 0;
        while let Some(end) = line_end(&self.buf) {
            let line = &self.buf[..end];
            if line.starts_with(b"MSG ") {
                let len: usize = line
                    .rsplit(|b| *b == b' ')
                    .next()
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse().ok())
                    .context("bad MSG line")?;
                if self.buf.len() < end + 2 + len + 2 {
                    break; // payload not complete yet
                }
                f(&self.buf[end + 2..end + 2 + len]);
                self.buf.advance(end + 2 + len + 2);
                n += 1;
            } else {
                if line.starts_with(b"PING") {
                    self.wr.write_all(b"PONG\r\n").await?;
                    self.wr.flush().await?;
                } else if line.starts_with(b"-ERR") {
                    bail!("nats: {}", String::from_utf8_lossy(line));
                }
                self.buf.advance(end + 2);
            }
        }
        Ok(n)
    }
}
