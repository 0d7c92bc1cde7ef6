//! Errors of the client SDK.

use spread_protocol::{ErrorCode, ProtocolError, TopicError};

/// Everything that can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker could not be reached or the connection failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS could not be configured or the handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection was lost before the answer arrived; the request may or
    /// may not have been applied.
    #[error("the connection was lost before the broker answered")]
    Disconnected,
    /// The client is between connections (reconnecting) or closed.
    #[error("not connected to the broker")]
    NotConnected,
    /// The broker answered with an error frame.
    #[error("broker error {code}: {message}")]
    Server {
        /// Stable error code.
        code: ErrorCode,
        /// Detail from the broker.
        message: String,
    },
    /// The broker sent something this client cannot decode.
    #[error("protocol error")]
    Protocol(#[from] ProtocolError),
    /// A topic or prefix is invalid (checked before sending).
    #[error("invalid topic")]
    InvalidTopic(#[from] TopicError),
    /// The broker answered with a message of the wrong type.
    #[error("unexpected answer from the broker: {0}")]
    Unexpected(&'static str),
    /// The handshake did not complete in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl Error {
    /// The broker's error code, when the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}
