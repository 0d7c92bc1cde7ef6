//! One client connection: TLS handshake, protocol handshake, then a reader
//! task and a writer task joined by the connection's outbound queue.

pub mod outbound;
mod reader;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use spread_protocol::{
    ErrorCode, ErrorFrame, Request, Response, ServerCodec, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;
use tracing::Instrument;

use crate::engine::Command;
use crate::server::Shared;
use outbound::{Conn, Outbound};
use reader::Stop;

/// Time allowed for the TLS handshake and the hello frame together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one accepted TCP connection to the end.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    engine: mpsc::Sender<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", id, %peer, client = tracing::field::Empty);
    async move {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("set_nodelay: {e}");
        }
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, shared.tls.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
            Err(_) => return tracing::debug!("TLS handshake timed out"),
        };
        let (rd, mut wr) = tokio::io::split(tls);
        let codec = ServerCodec::new(shared.config.topic_rules, shared.config.max_frame);
        let mut framed = FramedRead::with_capacity(rd, codec, 64 * 1024);

        let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next()).await {
            Ok(Some(Ok(Request::Hello(h)))) => h,
            Ok(Some(Ok(_))) => {
                return refuse(&mut wr, ErrorCode::HandshakeRequired, "the first frame must be hello".into()).await
            }
            Ok(Some(Err(e))) => return refuse(&mut wr, e.code(), e.to_string()).await,
            Ok(None) => return,
            Err(_) => return refuse(&mut wr, ErrorCode::Timeout, "no hello in time".into()).await,
        };
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
            let msg = format!(
                "protocol version {} is not supported; this broker speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                hello.version
            );
            return refuse(&mut wr, ErrorCode::UnsupportedVersion, msg).await;
        }
        tracing::Span::current().record("client", hello.client_name.as_str());

        let mut buf = BytesMut::new();
        Response::Welcome {
            version: PROTOCOL_VERSION,
            node_id: shared.node_id.to_string(),
            iteration: shared.iteration(),
        }
        .encode(&mut buf);
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        tracing::debug!("connected");

        let conn = Arc::new(Conn::new(
            id,
            shared.node_id.clone(),
            shared.config.max_inflight,
            shared.config.subscriber_buffer,
            shared.stats.clone(),
        ));
        let writer_conn = conn.clone();
        let writer = tokio::spawn(
            async move {
                let result = writer::run(wr, &writer_conn).await;
                // Unblock a reader waiting for credits the writer will never return.
                writer_conn.credits.close();
                writer_conn.close();
                result
            }
            .in_current_span(),
        );

        let stop = reader::run(&mut framed, &conn, &engine, &mut shutdown).await;
        let error = match stop {
            Stop::Ended => None,
            Stop::Fatal(e) => {
                tracing::info!(code = %e.code, "closing: {}", e.message);
                Some(e)
            }
            Stop::Shutdown => Some(ErrorFrame {
                req_id: None,
                code: ErrorCode::ShuttingDown,
                message: "the broker is shutting down".into(),
            }),
        };
        // The engine answers what came before, drops the subscriptions, then
        // queues the close; if it is gone, close directly.
        let closed = Command::Closed {
            conn: conn.clone(),
            error: error.clone(),
        };
        if engine.send(closed).await.is_err() {
            conn.push(Outbound::Close(error));
        }
        match writer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("write failed: {e}"),
            Err(e) => tracing::error!("writer task failed: {e}"),
        }
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await
}

/// Sends an error frame during the handshake and closes.
async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, code: ErrorCode, message: String) {
    tracing::info!(%code, "refused: {message}");
    let mut buf = BytesMut::new();
    Response::Error(ErrorFrame {
        req_id: None,
        code,
        message,
    })
    .encode(&mut buf);
    let _ = wr.write_all(&buf).await;
    let _ = wr.shutdown().await;
}
