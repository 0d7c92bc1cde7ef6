//! Raw protocol connections, for tests that need exact frames.

use bytes::BytesMut;
use spread_protocol::{ClientCodec, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Decoder;

use super::PATIENCE;

/// A raw protocol connection for tests that need exact bytes.
pub struct Raw {
    pub stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Raw {
    /// A raw connection over `stream`, nothing sent yet.
    pub fn new(stream: TlsStream<TcpStream>) -> Raw {
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Sends one request.
    pub async fn send(&mut self, req: &Request) {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        self.send_bytes(&out).await;
    }

    /// Sends arbitrary bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// The next message, or `None` once the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Response> {
        let mut codec = ClientCodec::default();
        loop {
            if let Some(resp) = codec.decode(&mut self.buf).expect("decode") {
                return Some(resp);
            }
            let n = tokio::time::timeout(PATIENCE, self.stream.read_buf(&mut self.buf))
                .await
                .expect("broker answered in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Expects an error frame with `code`, then the connection to close.
    pub async fn expect_fatal(&mut self, code: spread_protocol::ErrorCode) {
        match self.recv().await {
            Some(Response::Error(e)) => assert_eq!(e.code, code, "{}", e.message),
            other => panic!("expected error {code}, got {other:?}"),
        }
        assert!(self.recv().await.is_none(), "connection must close");
    }
}
