//! Property tests: every message survives encode → split anywhere → decode,
//! and arbitrary bytes never panic the decoders.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use crate::*;

fn topic_str(allow_root: bool) -> impl Strategy<Value = String> {
    let min = usize::from(!allow_root);
    proptest::collection::vec("[a-z0-9é_-]{1,6}", min..5).prop_map(|segs| segs.join("/"))
}

fn topic() -> impl Strategy<Value = Topic> {
    topic_str(false).prop_map(|s| Topic::new(&s, &TopicRules::default()).unwrap())
}

fn prefix() -> impl Strategy<Value = Topic> {
    topic_str(true).prop_map(|s| Topic::prefix(&s, &TopicRules::default()).unwrap())
}

fn event() -> impl Strategy<Value = Event> {
    (
        topic_str(false),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<u64>(),
        "[a-z0-9-]{0,12}",
        any::<[u8; 16]>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(topic, payload, timestamp, origin, id, iteration, tomb)| {
            EventParts {
                topic: &topic,
                payload: &payload,
                timestamp,
                origin: &origin,
                id: EventId(id),
                iteration,
                kind: if tomb {
                    EventKind::Tombstone
                } else {
                    EventKind::Value
                },
            }
            .encode()
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u64>(), ".{0,20}", proptest::option::of(".{0,40}")).prop_map(|(v, n, t)| {
            Request::Hello(Hello {
                version: v,
                client_name: n,
                token: t,
            })
        }),
        any::<u64>().prop_map(|req_id| Request::Ping { req_id }),
        (
            any::<u64>(),
            topic(),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::option::of((any::<u64>(), proptest::option::of(any::<[u8; 16]>()))),
            0..3u8
        )
            .prop_map(|(req_id, topic, payload, stamp, m)| {
                let timestamp = stamp.map(|(ts, _)| ts);
                let id = stamp.and_then(|(_, id)| id).map(EventId);
                let mode =
                    [PublishMode::Set, PublishMode::IfAbsent, PublishMode::Delete][usize::from(m)];
                let payload = if mode == PublishMode::Delete {
                    Bytes::new()
                } else {
                    Bytes::from(payload)
                };
                Request::Publish(Publish {
                    req_id,
                    topic,
                    payload,
                    timestamp,
                    id,
                    mode,
                })
            }),
        (any::<u64>(), topic()).prop_map(|(req_id, topic)| Request::Get { req_id, topic }),
        (any::<u64>(), prefix(), any::<u64>(), any::<bool>()).prop_map(
            |(req_id, prefix, since, history)| Request::Subscribe {
                req_id,
                prefix,
                since,
                mode: if history {
                    SubscribeMode::History
                } else {
                    SubscribeMode::Latest
                },
            }
        ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(req_id, sub_id)| Request::Unsubscribe { req_id, sub_id }),
        any::<u64>().prop_map(|req_id| Request::Status { req_id }),
        (
            any::<u64>(),
            proptest::collection::vec("[a-z]{1,5}(/[a-z]{1,5}){0,2}", 0..3),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |(req_id, prefixes, from_time, to_time, from_iteration, to_iteration, limit)| {
                    Request::Replay {
                        req_id,
                        query: crate::ReplayQuery {
                            prefixes: prefixes
                                .iter()
                                .map(|p| Topic::prefix(p, &TopicRules::default()).unwrap())
                                .collect(),
                            from_time,
                            to_time,
                            from_iteration,
                            to_iteration,
                            limit,
                        },
                    }
                }
            ),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let outcome = prop_oneof![
        (
            event(),
            proptest::option::of(event()),
            proptest::collection::vec(any::<u32>(), 0..12)
        )
            .prop_map(|(event, previous, n)| Outcome::New {
                event: Summary::from(&event),
                previous: previous.as_ref().map(Summary::from),
                notified: n.into_iter().collect(),
            }),
        event().prop_map(|event| Outcome::Existing {
            event: Summary::from(&event)
        }),
        (event(), proptest::option::of(event())).prop_map(|(rejected, current)| {
            Outcome::TooLate {
                rejected: Summary::from(&rejected),
                current,
            }
        }),
        (event(), proptest::option::of(event())).prop_map(|(event, current)| {
            Outcome::Present {
                event: Summary::from(&event),
                current,
            }
        }),
    ];
    prop_oneof![
        (any::<u64>(), ".{0,20}", any::<u64>()).prop_map(|(version, node_id, iteration)| {
            Response::Welcome {
                version,
                node_id,
                iteration,
            }
        }),
        any::<u64>().prop_map(|req_id| Response::Pong { req_id }),
        (any::<u64>(), outcome).prop_map(|(req_id, outcome)| Response::Report { req_id, outcome }),
        (any::<u64>(), proptest::option::of(event()))
            .prop_map(|(req_id, event)| Response::Value { req_id, event }),
        (any::<u64>(), event()).prop_map(|(sub_id, event)| Response::Event { sub_id, event }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(sub_id, iteration)| { Response::SnapshotComplete { sub_id, iteration } }),
        any::<u64>().prop_map(|req_id| Response::Unsubscribed { req_id }),
        status_report().prop_map(Response::Status),
        (any::<u64>(), any::<u64>())
            .prop_map(|(req_id, count)| Response::ReplayComplete { req_id, count }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(sub_id, skipped)| Response::Conflated { sub_id, skipped }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(sub_id, oldest)| Response::HistoryTruncated { sub_id, oldest }),
        (
            proptest::option::of(any::<u64>()),
            proptest::sample::select(ErrorCode::ALL),
            ".{0,40}"
        )
            .prop_map(|(req_id, code, message)| {
                Response::Error(ErrorFrame {
                    req_id,
                    code,
                    message,
                })
            }),
    ]
}

/// Feeds `bytes` to `codec` in chunks cut at `cuts`, collecting every item.
fn decode_chunked<D: Decoder>(codec: &mut D, bytes: &[u8], cuts: &[usize]) -> Vec<D::Item>
where
    D::Error: std::fmt::Debug,
{
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        buf.extend_from_slice(&bytes[at..p]);
        at = p;
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            out.push(item);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    out
}

proptest! {
    #[test]
    fn requests_round_trip(reqs in proptest::collection::vec(request(), 1..8),
                           cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let mut wire = BytesMut::new();
        for r in &reqs {
            r.encode(&mut wire);
        }
        let got = decode_chunked(&mut ServerCodec::default(), &wire, &cuts);
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn responses_round_trip(resps in proptest::collection::vec(response(), 1..8),
                            cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let mut wire = BytesMut::new();
        for r in &resps {
            r.encode(&mut wire);
        }
        let got = decode_chunked(&mut ClientCodec::default(), &wire, &cuts);
        prop_assert_eq!(got, resps);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut s = ServerCodec::default();
        while let Ok(Some(_)) = s.decode(&mut buf) {}
        let mut buf = BytesMut::from(&bytes[..]);
        let mut c = ClientCodec::default();
        while let Ok(Some(_)) = c.decode(&mut buf) {}
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let frame = Bytes::from(body);
        let _ = Request::decode(&frame, &TopicRules::default());
        let _ = Response::decode(&frame, &TopicRules::default());
    }
}

#[test]
fn truncated_body_is_malformed_not_a_panic() {
    let mut wire = BytesMut::new();
    Request::Get {
        req_id: 1,
        topic: Topic::new("a/b", &TopicRules::default()).unwrap(),
    }
    .encode(&mut wire);
    let body = Bytes::copy_from_slice(&wire[HEADER_LEN..wire.len() - 1]);
    assert!(matches!(
        Request::decode(&body, &TopicRules::default()),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[test]
fn invalid_topic_is_reported_as_such() {
    // [0x13, 1, "a//b"]
    let body = Bytes::from_static(&[0x93, 0x13, 0x01, 0xa4, b'a', b'/', b'/', b'b']);
    let err = Request::decode(&body, &TopicRules::default()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidTopic);
}

#[test]
fn subscribe_without_a_mode_means_latest() {
    // [0x14, 1, "a", 0]
    let body = Bytes::from_static(&[0x94, 0x14, 0x01, 0xa1, b'a', 0x00]);
    match Request::decode(&body, &TopicRules::default()).unwrap() {
        Request::Subscribe { mode, .. } => assert_eq!(mode, SubscribeMode::Latest),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_type_is_reported_as_such() {
    let body = Bytes::from_static(&[0x92, 0x7f, 0x01]);
    let err = Request::decode(&body, &TopicRules::default()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownMessage);
}

fn sink_status() -> impl Strategy<Value = crate::SinkStatus> {
    (
        ("[a-z-]{1,12}", ".{0,20}", "[a-z]{1,9}"),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        proptest::option::of(".{0,40}"),
        any::<u64>(),
    )
        .prop_map(
            |(
                (name, plugin, state),
                (checkpoint, lag_events, lag_ms, delivered, errors),
                last_error,
                rejected,
            )| {
                crate::SinkStatus {
                    name,
                    plugin,
                    state,
                    checkpoint,
                    lag_events,
                    lag_ms,
                    delivered,
                    errors,
                    last_error,
                    rejected,
                }
            },
        )
}

fn status_report() -> impl Strategy<Value = crate::StatusReport> {
    (
        any::<u64>(),
        "[a-z0-9-]{1,20}",
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(sink_status(), 0..4),
    )
        .prop_map(
            |(req_id, node_id, iteration, committed, retained_from, sinks)| crate::StatusReport {
                req_id,
                node_id,
                iteration,
                committed,
                retained_from,
                sinks,
            },
        )
}
