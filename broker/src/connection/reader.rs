//! The reader task: decodes requests and hands them to the engine in
//! batches of whatever arrived together.

use std::sync::Arc;

use std::time::Instant;

use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use spread_protocol::{ErrorCode, ErrorFrame, ProtocolError, Request, Response, ServerCodec};
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;

use crate::engine::Command;
use crate::session::{Conn, Outbound};

/// Most requests handed to the engine in one command.
const MAX_BATCH: usize = 512;

/// Why the reader stopped.
pub enum Stop {
    /// The peer closed, the transport failed, or the engine is gone.
    Ended,
    /// The peer sent something malformed: close with this error.
    Fatal(ErrorFrame),
    /// The broker is shutting down.
    Shutdown,
}

fn fatal(e: ProtocolError) -> Stop {
    match e {
        ProtocolError::Io(e) => {
            tracing::debug!("read failed: {e}");
            Stop::Ended
        }
        e => Stop::Fatal(ErrorFrame {
            req_id: None,
            code: e.code(),
            message: e.to_string(),
        }),
    }
}

/// A publish budget: `rate` per second, bursts of one second.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    /// Takes one publish from the budget, if there is one.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Replaces the publishes of `batch` beyond the budget with `rate_limited`
/// answers; returns them (already encoded) and how many.
fn limit(batch: &mut Vec<Request>, bucket: &mut Bucket) -> (BytesMut, u32) {
    let mut refused = BytesMut::new();
    let mut n = 0;
    batch.retain(|req| match req.written_topic() {
        Some(_) if !bucket.take() => {
            Response::Error(ErrorFrame {
                req_id: req.req_id(),
                code: ErrorCode::RateLimited,
                message: format!(
                    "more than {} publishes per second on this connection",
                    bucket.rate
                ),
            })
            .encode(&mut refused);
            n += 1;
            false
        }
        _ => true,
    });
    (refused, n)
}

/// Reads until the peer stops, sends garbage, or shutdown is signalled.
/// With `rate`, publishes beyond that many per second are refused.
pub async fn run<R: AsyncRead + Unpin>(
    framed: &mut FramedRead<R, ServerCodec>,
    conn: &Arc<Conn>,
    engine: &mpsc::Sender<Command>,
    shutdown: &mut watch::Receiver<bool>,
    rate: Option<u32>,
    idle: Option<std::time::Duration>,
) -> Stop {
    let mut bucket = rate.map(Bucket::new);
    loop {
        let quiet = async {
            match idle {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            r = framed.next() => r,
            _ = quiet => {
                conn.count_idle_closed();
                return Stop::Fatal(ErrorFrame {
                    req_id: None,
                    code: spread_protocol::ErrorCode::Timeout,
                    message: format!(
                        "nothing received for {} s: closing an idle connection (clients ping to stay)",
                        idle.map_or(0, |d| d.as_secs())
                    ),
                });
            }
            _ = shutdown.changed() => return Stop::Shutdown,
        };
        let mut batch = Vec::with_capacity(16);
        let mut stop = None;
        match first {
            None => return Stop::Ended,
            Some(Err(e)) => return fatal(e),
            Some(Ok(req)) => batch.push(req),
        }
        // Take whatever else is already decoded or buffered, without waiting
        // (never more than there are credits: the batch takes them at once).
        while batch.len() < MAX_BATCH.min(conn.max_inflight) {
            match framed.next().now_or_never() {
                Some(Some(Ok(req))) => batch.push(req),
                Some(Some(Err(e))) => {
                    stop = Some(fatal(e));
                    break;
                }
                Some(None) => {
                    stop = Some(Stop::Ended);
                    break;
                }
                None => break,
            }
        }
        // One credit per request: a client that does not read its answers
        // stops being read, instead of growing the broker's memory.
        match conn.credits.acquire_many(batch.len() as u32).await {
            Ok(permit) => permit.forget(),
            Err(_) => return Stop::Ended,
        }
        if let Some(bucket) = &mut bucket {
            let (frames, count) = limit(&mut batch, bucket);
            if count > 0 {
                conn.count_rate_limited(u64::from(count));
                conn.push(Outbound::Answers {
                    frames: frames.freeze(),
                    count,
                });
            }
            if batch.is_empty() {
                if let Some(stop) = stop {
                    return stop;
                }
                continue;
            }
        }
        let cmd = Command::Requests {
            conn: conn.clone(),
            requests: batch,
        };
        if engine.send(cmd).await.is_err() {
            return Stop::Ended;
        }
        if let Some(stop) = stop {
            return stop;
        }
    }
}
