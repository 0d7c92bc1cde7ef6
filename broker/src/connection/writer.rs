//! The writer task: takes everything queued for the connection, encodes it
//! into one buffer and writes it with as few TLS writes as possible.

use bytes::BytesMut;
use spread_protocol::response::encode_event;
use spread_protocol::Response;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::session::{Conn, Outbound};

/// Buffered bytes at which the writer writes before encoding more.
const FLUSH_AT: usize = 256 * 1024;

/// How long a write may still take once the broker is shutting down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The writer's socket and how long a write may stall: a client that reads
/// nothing for that long is closed (like NATS's write deadline), so it
/// holds neither the connection's memory nor a shutdown.
struct Out<W> {
    wr: W,
    stall: Option<Duration>,
    shutdown: watch::Receiver<bool>,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let Out {
            wr,
            stall,
            shutdown,
        } = self;
        let stall = *stall;
        tokio::select! {
            r = wr.write_all(buf) => r,
            _ = sleep_or_never(stall) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {stall:?}"),
            )),
            _ = async {
                let _ = shutdown.wait_for(|s| *s).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client reads nothing and the broker is shutting down",
            )),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        tokio::select! {
            r = self.wr.flush() => r,
            _ = sleep_or_never(self.stall) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Writes `buf` out when it has grown past [`FLUSH_AT`].
async fn spill<W: AsyncWrite + Unpin>(wr: &mut Out<W>, buf: &mut BytesMut) -> std::io::Result<()> {
    if buf.len() >= FLUSH_AT {
        wr.write_all(buf).await?;
        buf.clear();
    }
    Ok(())
}

/// Runs until the connection closes or the peer stops accepting bytes (for
/// longer than `stall`, or for a short grace once `shutdown` is set).
pub async fn run<W: AsyncWrite + Unpin>(
    wr: W,
    conn: &Conn,
    stall: Option<Duration>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut wr = Out {
        wr,
        stall,
        shutdown,
    };
    let mut items = Vec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let taken = conn.take(&mut items);
        if items.is_empty() && taken.conflated.is_empty() {
            if taken.closed {
                break;
            }
            conn.ready().await;
            continue;
        }
        let mut answers = 0u32;
        let mut delivered = 0u64;
        let mut close = false;
        // The fatal error goes last, after everything before it.
        let mut last_words = None;
        for item in items.drain(..) {
            if close {
                continue;
            }
            answers += item.answers();
            match item {
                Outbound::Answers { frames, .. } => buf.extend_from_slice(&frames),
                Outbound::Answer(response) => {
                    response.encode(&mut buf);
                    spill(&mut wr, &mut buf).await?;
                }
                Outbound::Event { sub_id, event, .. } => {
                    if conn.may_read(event.topic()) {
                        encode_event(&mut buf, sub_id, &event);
                        delivered += 1;
                    }
                }
                Outbound::History { sub_id, events } => {
                    for e in events.iter().filter(|e| conn.may_read(e.topic())) {
                        encode_event(&mut buf, sub_id, e);
                        delivered += 1;
                        spill(&mut wr, &mut buf).await?;
                    }
                }
                Outbound::Truncated { sub_id, oldest } => {
                    Response::HistoryTruncated { sub_id, oldest }.encode(&mut buf)
                }
                Outbound::Synced { sub_id, iteration } => {
                    Response::SnapshotComplete { sub_id, iteration }.encode(&mut buf)
                }
                Outbound::Snapshot {
                    sub_id,
                    mut events,
                    iteration,
                } => {
                    // Iteration order lets a client that loses the connection
                    // mid-snapshot resume from the last iteration it saw.
                    events.sort_unstable_by_key(|e| e.iteration());
                    for e in events.iter().filter(|e| conn.may_read(e.topic())) {
                        encode_event(&mut buf, sub_id, e);
                        delivered += 1;
                        spill(&mut wr, &mut buf).await?;
                    }
                    Response::SnapshotComplete { sub_id, iteration }.encode(&mut buf);
                }
                Outbound::Unsubscribed { req_id, .. } => {
                    Response::Unsubscribed { req_id }.encode(&mut buf)
                }
                Outbound::Close(error) => {
                    last_words = error;
                    close = true;
                }
            }
            spill(&mut wr, &mut buf).await?;
        }
        for c in taken
            .conflated
            .iter()
            .filter(|c| conn.may_read(c.event.topic()))
        {
            encode_event(&mut buf, c.sub_id, &c.event);
            delivered += 1;
            spill(&mut wr, &mut buf).await?;
        }
        for (sub_id, skipped) in taken.skipped {
            Response::Conflated { sub_id, skipped }.encode(&mut buf);
        }
        if let Some(e) = last_words {
            Response::Error(e).encode(&mut buf);
        }
        if !buf.is_empty() {
            wr.write_all(&buf).await?;
            buf.clear();
        }
        wr.flush().await?;
        conn.count_delivered(delivered);
        conn.credits.add_permits(answers as usize);
        if close {
            break;
        }
    }
    // The TLS close_notify, within the same bound.
    tokio::select! {
        r = wr.wr.shutdown() => r,
        _ = sleep_or_never(wr.stall.or(Some(SHUTDOWN_GRACE))) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spread_protocol::{ClientCodec, ErrorCode, ErrorFrame, EventId, EventKind, EventParts};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Decoder;

    #[tokio::test]
    async fn the_fatal_error_is_the_last_frame_even_after_conflation() {
        let budget = Arc::new(crate::session::Budget::new(100, usize::MAX / 4));
        let conn = Arc::new(Conn::new(1, "n".into(), 16, budget, Arc::default()));
        // Past the 100-byte budget: events conflate, then a fatal error.
        for i in 1..=20u64 {
            let event = EventParts {
                topic: if i % 2 == 0 { "a" } else { "b" },
                payload: b"0123456789",
                timestamp: i,
                origin: "n",
                id: EventId([i as u8; 16]),
                iteration: i,
                kind: EventKind::Value,
                source: 0,
            }
            .encode();
            conn.push(Outbound::Event {
                sub_id: 1,
                event,
                exact: false,
            });
        }
        conn.push(Outbound::Close(Some(ErrorFrame {
            req_id: None,
            code: ErrorCode::MalformedFrame,
            message: "bye".into(),
        })));
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (_, shutdown) = watch::channel(false);
        run(server, &conn, None, shutdown).await.unwrap();
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        let mut bytes = bytes::BytesMut::from(&all[..]);
        let mut codec = ClientCodec::default();
        let mut last = None;
        while let Some(frame) = codec.decode(&mut bytes).unwrap() {
            last = Some(frame);
        }
        assert!(
            matches!(last, Some(Response::Error(ref e)) if e.code == ErrorCode::MalformedFrame),
            "{last:?}"
        );
    }
}
