//! One client connection: TLS handshake, protocol handshake, then a reader
//! task and a writer task joined by the connection's outbound queue.

mod reader;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

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
use crate::session::{Conn, Outbound};
use reader::Stop;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one accepted TCP connection to the end: over TLS, or in plain
/// text when it came from the explicitly enabled loopback listener.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    engine: mpsc::Sender<Command>,
    shutdown: watch::Receiver<bool>,
) {
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "conn",
        id,
        %peer,
        client = tracing::field::Empty,
        subject = tracing::field::Empty
    );
    async move {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("set_nodelay: {e}");
        }
        // One deadline for the TLS handshake and the hello together.
        let deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
        if !tls {
            return session(stream, id, None, deadline, shared, engine, shutdown).await;
        }
        let tls = match tokio::time::timeout_at(deadline, shared.acceptor().accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
            Err(_) => return tracing::debug!("TLS handshake timed out"),
        };
        // With mutual TLS, the verified certificate's subject names the client.
        let cert_subject = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| crate::tls::subject_name(cert));
        session(tls, id, cert_subject, deadline, shared, engine, shutdown).await
    }
    .instrument(span)
    .await
}

/// The protocol over an established stream: hello, then reader and writer.
async fn session<S>(
    stream: S,
    id: u64,
    cert_subject: Option<String>,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
    engine: mpsc::Sender<Command>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    {
        let (rd, mut wr) = tokio::io::split(stream);
        // Before it is authenticated, a client gets no large buffer.
        let codec = ServerCodec::new(
            shared.config.topic_rules,
            shared.limits.frame.min(crate::limits::HELLO_FRAME),
        );
        let mut framed = FramedRead::with_capacity(rd, codec, 64 * 1024);

        let hello = match tokio::time::timeout_at(deadline, framed.next()).await {
            Ok(Some(Ok(Request::Hello(h)))) => h,
            Ok(Some(Ok(_))) => {
                return refuse(
                    &mut wr,
                    ErrorCode::HandshakeRequired,
                    "the first frame must be hello".into(),
                )
                .await
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
        let identity = match (hello.token.as_deref(), cert_subject) {
            // A client certificate the CA signed is an identity of its own.
            // --require-auth asks for a token: a certificate alone would
            // grant every right.
            (None, Some(_)) if shared.config.auth.require => {
                let msg = "this broker requires a token (a client certificate alone is not enough)";
                return refuse(&mut wr, ErrorCode::Unauthorized, msg.into()).await;
            }
            (None, Some(subject)) => {
                if let Err(e) = spread_protocol::check_origin(&subject) {
                    let msg = format!("the certificate's subject cannot name a writer: {e}");
                    return refuse(&mut wr, ErrorCode::Unauthorized, msg).await;
                }
                Some(crate::auth::Identity {
                    subject,
                    expires: None,
                    rights: None,
                })
            }
            (token, _) => match shared.auth.verify(token) {
                Ok(identity) => identity,
                Err(e) => return refuse(&mut wr, ErrorCode::Unauthorized, e.to_string()).await,
            },
        };
        let origin: Arc<str> = match &identity {
            Some(i) => {
                tracing::Span::current().record("subject", i.subject.as_str());
                i.subject.as_str().into()
            }
            None => shared.node_id.clone(),
        };
        let expires = identity.as_ref().and_then(|i| i.expires);

        framed.decoder_mut().set_max_frame(shared.limits.frame);

        let mut buf = BytesMut::new();
        Response::Welcome {
            version: PROTOCOL_VERSION,
            node_id: shared.node_id.to_string(),
            iteration: shared.iteration(),
            incarnation: shared.incarnation,
        }
        .encode(&mut buf);
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        tracing::debug!("connected");

        let conn = Arc::new(
            Conn::new(
                id,
                origin,
                shared.limits.inflight,
                shared.subscriber_memory.clone(),
                shared.stats.clone(),
            )
            .with_rights(identity.and_then(|i| i.rights)),
        );
        let writer_conn = conn.clone();
        let (stall, writer_shutdown) = (shared.limits.write_timeout, shutdown.clone());
        let mut writer = tokio::spawn(
            async move {
                let result = writer::run(wr, &writer_conn, stall, writer_shutdown).await;
                // Unblock a reader waiting for credits the writer will never return.
                writer_conn.credits.close();
                writer_conn.close();
                result
            }
            .in_current_span(),
        );

        // The connection lives as long as its token.
        let expiry = async {
            match expires {
                Some(at) => {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(left).await
                }
                None => std::future::pending().await,
            }
        };
        let rate = shared.limits.publish_rate;
        // A writer that ended early (the client stopped reading for longer
        // than the write timeout, or the socket failed) ends the reader too.
        let mut written = None;
        let stop = tokio::select! {
            stop = reader::run(&mut framed, &conn, &engine, &mut shutdown, rate, shared.limits.idle_timeout) => stop,
            _ = expiry => Stop::Fatal(ErrorFrame {
                req_id: None,
                code: ErrorCode::TokenExpired,
                message: "the token expired: reconnect with a fresh one".into(),
            }),
            result = &mut writer => {
                written = Some(result);
                Stop::Ended
            }
        };
        let error = match stop {
            Stop::Ended => None,
            Stop::Fatal(e) => {
                if !matches!(e.code, ErrorCode::Timeout | ErrorCode::TokenExpired) {
                    shared
                        .stats
                        .closed_for_bad_input
                        .fetch_add(1, Ordering::Relaxed);
                }
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
        let written = match written {
            Some(result) => result,
            None => writer.await,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                tracing::info!("closed a connection that stopped reading: {e}")
            }
            Ok(Err(e)) => tracing::debug!("write failed: {e}"),
            Err(e) => tracing::error!("writer task failed: {e}"),
        }
        tracing::debug!("disconnected");
    }
}

/// The longest a refused client gets to finish its TLS handshake.
const REFUSAL_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(2);

/// Completes the TLS handshake only to tell the client it is one connection
/// too many (from its address, or in all), then closes.
pub async fn refuse_busy(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, max: usize) {
    shared
        .stats
        .refused_connections
        .fetch_add(1, Ordering::Relaxed);
    // A courtesy, so a short one: a client that does not even finish its
    // handshake must not hold a refusal slot for long.
    let handshake = shared.limits.handshake_timeout.min(REFUSAL_HANDSHAKE);
    if let Ok(Ok(tls)) = tokio::time::timeout(handshake, shared.acceptor().accept(stream)).await {
        let (_, mut wr) = tokio::io::split(tls);
        let message = format!(
            "too many connections: at most {max} (from {} or in all)",
            peer.ip()
        );
        refuse(&mut wr, ErrorCode::TooManyConnections, message).await;
    }
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
