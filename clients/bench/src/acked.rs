//! Acknowledged publishes: Spread (every event logged, under the chosen
//! durability policy) against NATS JetStream with file storage and against
//! Mosquitto with MQTT QoS 1. One publisher, a window of unacknowledged
//! messages, rate from the first publish to the last acknowledgement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::nats::Nats;
use crate::wire::{Publisher, System};

/// Unacknowledged messages a publisher may have in flight.
pub const WINDOW: u64 = 4096;

/// Spread: publishes are answered with a report once logged (and synced
/// under `always`); the broker's credits bound the window.
pub async fn spread(sys: &crate::spread::Spread, n: u64, size: usize) -> anyhow::Result<f64> {
    let mut publisher = sys.publisher().await?;
    let payload = vec![0x5a; size];
    let start = Instant::now();
    for i in 0..n {
        publisher.queue("bench/acked", &payload);
        if i % 256 == 255 {
            publisher.flush().await?;
        }
    }
    publisher.finish().await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Counts acknowledgements and lets the sender wait for window room.
#[derive(Default)]
struct Acks {
    count: AtomicU64,
    signal: Notify,
}

impl Acks {
    fn add(&self, n: u64) {
        if n > 0 {
            self.count.fetch_add(n, Ordering::Release);
            self.signal.notify_one();
        }
    }

    async fn wait_until(&self, at_least: u64) {
        while self.count.load(Ordering::Acquire) < at_least {
            self.signal.notified().await;
        }
    }
}

/// JetStream: a file-storage stream on `bench.js.>`; each publish carries a
/// reply subject and is acknowledged once stored.
pub async fn jetstream(nats: &Nats, n: u64, size: usize) -> anyhow::Result<f64> {
    jetstream_replicated(nats, n, size, 1).await
}

/// [`jetstream`] on a stream of `replicas` copies (on a JetStream
/// cluster, a publish is acknowledged once a quorum has stored it).
pub async fn jetstream_replicated(
    nats: &Nats,
    n: u64,
    size: usize,
    replicas: u32,
) -> anyhow::Result<f64> {
    let (mut rd, mut wr, mut buf) = nats.connect_raw().await?;
    wr.write_all(b"SUB _INBOX.bench.* 9\r\n").await?;
    let create = format!(
        r#"{{"name":"BENCH","subjects":["bench.js.>"],"storage":"file","retention":"limits","discard":"old","max_msgs":-1,"num_replicas":{replicas}}}"#
    );
    // A new cluster elects its JetStream leader first: retry meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        wr.write_all(
            format!(
                "PUB $JS.API.STREAM.CREATE.BENCH _INBOX.bench.create {}\r\n",
                create.len()
            )
            .as_bytes(),
        )
        .await?;
        wr.write_all(create.as_bytes()).await?;
        wr.write_all(b"\r\n").await?;
        wr.flush().await?;
        // Before its leader is elected, a cluster may not answer at all;
        // meanwhile the server's pings want a PONG (unasked ones are
        // harmless), or it drops the connection as stale.
        let answer =
            tokio::time::timeout(Duration::from_secs(1), next_msg(&mut rd, &mut buf)).await;
        wr.write_all(b"PONG\r\n").await?;
        let answer = match answer {
            Ok(answer) => answer?,
            Err(_) => "no answer yet".to_string(),
        };
        if !answer.contains("\"error\"") && answer.contains("stream_create_response")
            || answer.contains("already in use")
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("cannot create the JetStream stream: {answer}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acks = Arc::new(Acks::default());
    let counter = acks.clone();
    let reader = tokio::spawn(async move {
        loop {
            let msg: anyhow::Result<String> = next_msg(&mut rd, &mut buf).await;
            match msg {
                Ok(body) if body.contains("\"seq\"") => counter.add(1),
                Ok(body) => {
                    eprintln!("JetStream refused a publish: {body}");
                    return;
                }
                Err(e) => {
                    eprintln!("JetStream connection: {e}");
                    return;
                }
            }
        }
    });
    let payload = vec![0x5a; size];
    let header = format!("PUB bench.js.x _INBOX.bench.a {size}\r\n");
    let rate = windowed(&mut wr, &acks, n, "JetStream", |out, _| {
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(b"\r\n");
    })
    .await;
    reader.abort();
    rate
}

/// Sends `n` messages encoded by `encode` in batches, keeping at most
/// [`WINDOW`] unacknowledged, and returns the rate once all are acknowledged.
async fn windowed(
    wr: &mut (impl AsyncWriteExt + Unpin),
    acks: &Acks,
    n: u64,
    peer: &str,
    mut encode: impl FnMut(&mut Vec<u8>, u64),
) -> anyhow::Result<f64> {
    let mut out = Vec::with_capacity(256 * 1024);
    let start = Instant::now();
    for i in 0..n {
        if i >= WINDOW {
            acks.wait_until(i - WINDOW + 1).await;
        }
        encode(&mut out, i);
        if i % 256 == 255 || i + 1 == n {
            // A TLS stream keeps what the socket did not take: flush, or the
            // tail of a batch can wait in the TLS buffer forever.
            wr.write_all(&out).await?;
            wr.flush().await?;
            out.clear();
        }
    }
    tokio::time::timeout(Duration::from_secs(120), acks.wait_until(n))
        .await
        .with_context(|| format!("{peer} acknowledgements did not all arrive"))?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Reads the next MSG's payload as text (answering PINGs on the way is not
/// needed within a benchmark's duration).
async fn next_msg(
    rd: &mut (impl AsyncReadExt + Unpin),
    buf: &mut BytesMut,
) -> anyhow::Result<String> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf[..end].to_vec();
            if line.starts_with(b"MSG ") {
                let len: usize = std::str::from_utf8(&line)?
                    .rsplit(' ')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .context("bad MSG line")?;
                if buf.len() >= end + 2 + len + 2 {
                    let body = String::from_utf8_lossy(&buf[end + 2..end + 2 + len]).into_owned();
                    buf.advance(end + 2 + len + 2);
                    return Ok(body);
                }
            } else {
                if line.starts_with(b"-ERR") {
                    bail!("nats: {}", String::from_utf8_lossy(&line));
                }
                buf.advance(end + 2);
                continue;
            }
        }
        if rd.read_buf(buf).await? == 0 {
            bail!("nats closed the connection");
        }
    }
}

/// Mosquitto, MQTT 3.1.1 QoS 1 on plain TCP (the machine's broker has no
/// TLS listener): each PUBLISH is answered with a PUBACK.
pub async fn mqtt_qos1(addr: &str, n: u64, size: usize) -> anyhow::Result<f64> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("mosquitto at {addr}"))?;
    tcp.set_nodelay(true)?;
    let client_id = format!("spread-bench-{}", std::process::id());
    let mut connect = Vec::new();
    connect.extend_from_slice(&[0, 4]);
    connect.extend_from_slice(b"MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60]); // level 4, clean session, keepalive 60 s
    connect.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    connect.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10];
    put_remaining_length(&mut packet, connect.len());
    packet.extend_from_slice(&connect);
    tcp.write_all(&packet).await?;
    let mut connack = [0u8; 4];
    tcp.read_exact(&mut connack).await?;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("mosquitto refused the connection: {connack:?}");
    }
    let (mut rd, mut wr) = tcp.into_split();
    let acks = Arc::new(Acks::default());
    let counter = acks.clone();
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            if rd.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
            let mut got = 0;
            while buf.len() >= 4 && buf[0] == 0x40 && buf[1] == 0x02 {
                buf.advance(4);
                got += 1;
            }
            counter.add(got);
        }
    });
    let topic = b"bench/qos1";
    let payload = vec![0x5a; size];
    let rate = windowed(&mut wr, &acks, n, "MQTT", |out, i| {
        let id = (i % 65535 + 1) as u16;
        out.push(0x32); // PUBLISH, QoS 1
        put_remaining_length(out, 2 + topic.len() + 2 + payload.len());
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&payload);
    })
    .await;
    reader.abort();
    rate
}

fn put_remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}
