//! The reader task: decodes requests and hands them to the engine in
//! batches of whatever arrived together.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use spread_protocol::{ErrorFrame, ProtocolError, ServerCodec};
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;

use super::outbound::Conn;
use crate::engine::Command;

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

/// Reads until the peer stops, sends garbage, or shutdown is signalled.
pub async fn run<R: AsyncRead + Unpin>(
    framed: &mut FramedRead<R, ServerCodec>,
    conn: &Arc<Conn>,
    engine: &mpsc::Sender<Command>,
    shutdown: &mut watch::Receiver<bool>,
) -> Stop {
    loop {
        let first = tokio::select! {
            r = framed.next() => r,
            _ = shutdown.changed() => return Stop::Shutdown,
        };
        let mut batch = Vec::with_capacity(16);
        let mut stop = None;
        match first {
            None => return Stop::Ended,
            Some(Err(e)) => return fatal(e),
            Some(Ok(req)) => batch.push(req),
        }
        // Take whatever else is already decoded or buffered, without waiting.
        while batch.len() < MAX_BATCH {
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
