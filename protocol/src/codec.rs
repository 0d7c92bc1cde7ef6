//! tokio-util codecs for both ends of a connection.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ProtocolError;
use crate::frame::{decode_frame, DEFAULT_MAX_FRAME};
use crate::request::Request;
use crate::response::Response;
use crate::topic::TopicRules;

/// Broker side: decodes requests, encodes responses.
#[derive(Debug, Clone)]
pub struct ServerCodec {
    rules: TopicRules,
    max_frame: usize,
}

impl ServerCodec {
    /// A codec enforcing `rules` and `max_frame` on everything it decodes.
    pub fn new(rules: TopicRules, max_frame: usize) -> Self {
        ServerCodec { rules, max_frame }
    }

    /// Changes the largest frame accepted from now on (the hello is held
    /// to a smaller one than what follows it).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }
}

impl Default for ServerCodec {
    fn default() -> Self {
        ServerCodec::new(TopicRules::default(), DEFAULT_MAX_FRAME)
    }
}

impl Decoder for ServerCodec {
    type Item = Request;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        match decode_frame(src, self.max_frame)? {
            Some(frame) => Request::decode(&frame, &self.rules).map(Some),
            None => Ok(None),
        }
    }
}

impl Encoder<&Response> for ServerCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: &Response, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        item.encode(dst);
        Ok(())
    }
}

/// Client side: decodes responses, encodes requests.
#[derive(Debug, Clone)]
pub struct ClientCodec {
    rules: TopicRules,
    max_frame: usize,
}

impl ClientCodec {
    /// A codec accepting frames up to `max_frame` bytes. Topics from the
    /// broker are checked for syntax only: the broker enforced its limits.
    pub fn new(max_frame: usize) -> Self {
        ClientCodec {
            rules: TopicRules {
                max_len: usize::MAX,
                max_depth: usize::MAX,
            },
            max_frame,
        }
    }
}

impl Default for ClientCodec {
    fn default() -> Self {
        // Snapshots and large payloads: accept somewhat more than the
        // broker's default so a broker configured higher still works.
        ClientCodec::new(4 * DEFAULT_MAX_FRAME)
    }
}

impl Decoder for ClientCodec {
    type Item = Response;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Response>, ProtocolError> {
        match decode_frame(src, self.max_frame)? {
            Some(frame) => Response::decode(&frame, &self.rules).map(Some),
            None => Ok(None),
        }
    }
}

impl Encoder<&Request> for ClientCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: &Request, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        item.encode(dst);
        Ok(())
    }
}
