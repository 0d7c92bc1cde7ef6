//! Protocol errors and the stable error codes carried by error frames.

use std::fmt;

use crate::topic::TopicError;

/// Why a frame could not be read or a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix announces more than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Announced body length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The body is not the MessagePack the message type requires.
    #[error("malformed frame at byte {offset}: {what}")]
    Malformed {
        /// Offset inside the frame body where decoding failed.
        offset: usize,
        /// What was expected there.
        what: &'static str,
    },
    /// The message type code is not one this side knows.
    #[error("unknown message type {0:#04x}")]
    UnknownMessage(u64),
    /// A topic or prefix breaks the topic rules.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// An error code this side does not know (forward compatibility).
    #[error("unknown error code {0}")]
    UnknownErrorCode(u64),
}

impl ProtocolError {
    /// The wire code a broker sends back for this decoding failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::Io(_) => ErrorCode::Internal,
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ProtocolError::Malformed { .. } | ProtocolError::UnknownErrorCode(_) => {
                ErrorCode::MalformedFrame
            }
            ProtocolError::UnknownMessage(_) => ErrorCode::UnknownMessage,
            ProtocolError::InvalidTopic(_) => ErrorCode::InvalidTopic,
        }
    }
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, $text:literal; )*) => {
        /// Stable numeric error codes. A number is never reused for another meaning.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $num, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The code's stable snake_case name.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$name => $text,)* }
            }

            /// The code for a wire number, if known.
            pub fn from_u64(n: u64) -> Option<ErrorCode> {
                match n { $($num => Some(ErrorCode::$name),)* _ => None }
            }
        }
    };
}

error_codes! {
    /// The frame body is not valid MessagePack or lacks a required field.
    MalformedFrame = 1, "malformed_frame";
    /// The length prefix exceeds the broker's maximum frame size.
    FrameTooLarge = 2, "frame_too_large";
    /// The message type code is unknown.
    UnknownMessage = 3, "unknown_message";
    /// A topic or prefix breaks the topic rules.
    InvalidTopic = 4, "invalid_topic";
    /// The client's protocol version is not supported.
    UnsupportedVersion = 5, "unsupported_version";
    /// A request arrived before the handshake, or a second handshake.
    HandshakeRequired = 6, "handshake_required";
    /// The credentials are missing or invalid.
    Unauthorized = 7, "unauthorized";
    /// The credentials do not grant this operation on this topic.
    Forbidden = 8, "forbidden";
    /// Unsubscribe named a subscription that does not exist.
    UnknownSubscription = 9, "unknown_subscription";
    /// Subscribe reused the id of a live subscription.
    DuplicateSubscription = 10, "duplicate_subscription";
    /// The broker is shutting down.
    ShuttingDown = 11, "shutting_down";
    /// The broker failed internally; the request may be retried.
    Internal = 12, "internal";
    /// The connection was idle or too slow for too long.
    Timeout = 13, "timeout";
    /// A configured limit was reached.
    LimitExceeded = 14, "limit_exceeded";
    /// The broker cannot write its event log (for example, the disk is
    /// full); the publish was not applied. Reads still work.
    StorageUnavailable = 15, "storage_unavailable";
    /// A replay cannot be served: no archive is configured, or it cannot
    /// be reached (retry later).
    ArchiveUnavailable = 16, "archive_unavailable";
    /// The connection's token expired: reconnect with a fresh one.
    TokenExpired = 17, "token_expired";
    /// The connection has as many live subscriptions as allowed.
    TooManySubscriptions = 18, "too_many_subscriptions";
    /// Too many connections from this address.
    TooManyConnections = 19, "too_many_connections";
    /// The connection publishes faster than allowed; the publish was not applied.
    RateLimited = 20, "rate_limited";
    /// The publish's timestamp is further ahead of the broker's clock than
    /// the allowed skew; the publish was not applied.
    TimestampOutOfRange = 21, "timestamp_out_of_range";
    /// The connection (or the broker) already runs as many replays and
    /// history catch-ups as allowed; retry once one finished.
    TooManyReads = 22, "too_many_reads";
    /// The broker holds as many topics as allowed (`--max-topics`) and the
    /// publish or delete would add one; it was not applied.
    TooManyTopics = 23, "too_many_topics";
}

impl ErrorCode {
    /// Whether the broker closes the connection after sending this code.
    pub fn is_fatal(self) -> bool {
        !matches!(
            self,
            ErrorCode::Forbidden
                | ErrorCode::UnknownSubscription
                | ErrorCode::DuplicateSubscription
                | ErrorCode::Internal
                | ErrorCode::StorageUnavailable
                | ErrorCode::ArchiveUnavailable
                | ErrorCode::TooManySubscriptions
                | ErrorCode::RateLimited
                | ErrorCode::TimestampOutOfRange
                | ErrorCode::TooManyReads
                | ErrorCode::TooManyTopics
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(*code as u16), "duplicate number for {code}");
            assert_eq!(ErrorCode::from_u64(*code as u64), Some(*code));
        }
        assert_eq!(ErrorCode::from_u64(0), None);
    }
}
