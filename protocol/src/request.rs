//! Messages a client sends to the broker.

use bytes::{Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::frame::{begin_frame, end_frame};
use crate::topic::{Topic, TopicRules};
use crate::wire::{self, Reader};

/// Message type codes of client requests.
pub mod kind {
    /// Handshake.
    pub const HELLO: u64 = 0x01;
    /// Liveness check.
    pub const PING: u64 = 0x02;
    /// Publish a value.
    pub const PUBLISH: u64 = 0x10;
    /// Publish a value only if the topic has none.
    pub const PUBLISH_IF_ABSENT: u64 = 0x11;
    /// Delete a topic (publish a tombstone).
    pub const DELETE: u64 = 0x12;
    /// Read a topic's latest value.
    pub const GET: u64 = 0x13;
    /// Subscribe to a prefix.
    pub const SUBSCRIBE: u64 = 0x14;
    /// End a subscription.
    pub const UNSUBSCRIBE: u64 = 0x15;
}

/// The first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u64,
    /// Free-form client name, for logs.
    pub client_name: String,
    /// Optional bearer token (JWT).
    pub token: Option<String>,
}

/// A publish, publish-if-absent or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Request id, echoed in the report.
    pub req_id: u64,
    /// Topic to change.
    pub topic: Topic,
    /// New value; empty for a delete.
    pub payload: Bytes,
    /// Event time in microseconds; the broker's clock when absent.
    pub timestamp: Option<u64>,
    /// What kind of change this is.
    pub mode: PublishMode,
}

/// How a publish applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    /// Set the value (last writer wins).
    Set,
    /// Set the value only if the topic has no live value.
    IfAbsent,
    /// Delete the topic with a tombstone (last writer wins).
    Delete,
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Handshake; must be the first frame and only the first.
    Hello(Hello),
    /// Liveness check, answered by a pong.
    Ping {
        /// Request id.
        req_id: u64,
    },
    /// Publish, publish-if-absent or delete.
    Publish(Publish),
    /// Read the latest value of a topic.
    Get {
        /// Request id.
        req_id: u64,
        /// Topic to read.
        topic: Topic,
    },
    /// Subscribe to every topic under a prefix; the request id names the
    /// subscription.
    Subscribe {
        /// Request id, also the subscription id.
        req_id: u64,
        /// Prefix (the root covers everything).
        prefix: Topic,
        /// Deliver only what changed after this iteration (0: everything).
        since: u64,
    },
    /// End a subscription.
    Unsubscribe {
        /// Request id.
        req_id: u64,
        /// The subscription to end.
        sub_id: u64,
    },
}

impl Request {
    /// The request id, if the message has one.
    pub fn req_id(&self) -> Option<u64> {
        match self {
            Request::Hello(_) => None,
            Request::Ping { req_id }
            | Request::Get { req_id, .. }
            | Request::Subscribe { req_id, .. }
            | Request::Unsubscribe { req_id, .. } => Some(*req_id),
            Request::Publish(p) => Some(p.req_id),
        }
    }

    /// Appends this request as a complete frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = begin_frame(dst);
        match self {
            Request::Hello(h) => {
                wire::put_array(dst, 4);
                wire::put_uint(dst, kind::HELLO);
                wire::put_uint(dst, h.version);
                wire::put_str(dst, &h.client_name);
                match &h.token {
                    Some(t) => wire::put_str(dst, t),
                    None => wire::put_nil(dst),
                }
            }
            Request::Ping { req_id } => {
                wire::put_array(dst, 2);
                wire::put_uint(dst, kind::PING);
                wire::put_uint(dst, *req_id);
            }
            Request::Publish(p) => {
                let code = match p.mode {
                    PublishMode::Set => kind::PUBLISH,
                    PublishMode::IfAbsent => kind::PUBLISH_IF_ABSENT,
                    PublishMode::Delete => kind::DELETE,
                };
                let with_payload = p.mode != PublishMode::Delete;
                wire::put_array(dst, if with_payload { 5 } else { 4 });
                wire::put_uint(dst, code);
                wire::put_uint(dst, p.req_id);
                wire::put_str(dst, p.topic.as_str());
                if with_payload {
                    wire::put_bin(dst, &p.payload);
                }
                match p.timestamp {
                    Some(ts) => wire::put_uint(dst, ts),
                    None => wire::put_nil(dst),
                }
            }
            Request::Get { req_id, topic } => {
                wire::put_array(dst, 3);
                wire::put_uint(dst, kind::GET);
                wire::put_uint(dst, *req_id);
                wire::put_str(dst, topic.as_str());
            }
            Request::Subscribe {
                req_id,
                prefix,
                since,
            } => {
                wire::put_array(dst, 4);
                wire::put_uint(dst, kind::SUBSCRIBE);
                wire::put_uint(dst, *req_id);
                wire::put_str(dst, prefix.as_str());
                wire::put_uint(dst, *since);
            }
            Request::Unsubscribe { req_id, sub_id } => {
                wire::put_array(dst, 3);
                wire::put_uint(dst, kind::UNSUBSCRIBE);
                wire::put_uint(dst, *req_id);
                wire::put_uint(dst, *sub_id);
            }
        }
        end_frame(dst, start);
    }

    /// Decodes one frame body, validating topics with `rules`.
    pub fn decode(frame: &Bytes, rules: &TopicRules) -> Result<Request, ProtocolError> {
        let mut r = Reader::new(frame);
        let len = r.array_between(2, 16, "request: array")?;
        let code = r.uint("request: type code")?;
        let expect = |r: &Reader<'_>, n: usize| {
            if len == n {
                Ok(())
            } else {
                Err(r.malformed("request: wrong number of fields for this type"))
            }
        };
        let req = match code {
            kind::HELLO => {
                expect(&r, 4)?;
                let version = r.uint("hello: version")?;
                let client_name = r.string("hello: client name")?;
                let token = if r.nil() {
                    None
                } else {
                    Some(r.string("hello: token")?)
                };
                Request::Hello(Hello {
                    version,
                    client_name,
                    token,
                })
            }
            kind::PING => {
                expect(&r, 2)?;
                Request::Ping {
                    req_id: r.uint("ping: request id")?,
                }
            }
            kind::PUBLISH | kind::PUBLISH_IF_ABSENT | kind::DELETE => {
                let (mode, n) = match code {
                    kind::PUBLISH => (PublishMode::Set, 5),
                    kind::PUBLISH_IF_ABSENT => (PublishMode::IfAbsent, 5),
                    _ => (PublishMode::Delete, 4),
                };
                expect(&r, n)?;
                let req_id = r.uint("publish: request id")?;
                let topic = Topic::from_bytes(r.str_bytes("publish: topic")?, rules, false)?;
                let payload = if mode == PublishMode::Delete {
                    Bytes::new()
                } else {
                    r.bin("publish: payload")?
                };
                let timestamp = if r.nil() {
                    None
                } else {
                    Some(r.uint("publish: timestamp")?)
                };
                Request::Publish(Publish {
                    req_id,
                    topic,
                    payload,
                    timestamp,
                    mode,
                })
            }
            kind::GET => {
                expect(&r, 3)?;
                let req_id = r.uint("get: request id")?;
                let topic = Topic::from_bytes(r.str_bytes("get: topic")?, rules, false)?;
                Request::Get { req_id, topic }
            }
            kind::SUBSCRIBE => {
                expect(&r, 4)?;
                let req_id = r.uint("subscribe: request id")?;
                let prefix = Topic::from_bytes(r.str_bytes("subscribe: prefix")?, rules, true)?;
                let since = r.uint("subscribe: since")?;
                Request::Subscribe {
                    req_id,
                    prefix,
                    since,
                }
            }
            kind::UNSUBSCRIBE => {
                expect(&r, 3)?;
                Request::Unsubscribe {
                    req_id: r.uint("unsubscribe: request id")?,
                    sub_id: r.uint("unsubscribe: subscription id")?,
                }
            }
            other => return Err(ProtocolError::UnknownMessage(other)),
        };
        r.finish()?;
        Ok(req)
    }
}
