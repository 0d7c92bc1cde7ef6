//! Property tests: every message survives encode → split anywhere → decode,
//! and arbitrary bytes never panic the decoders.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use crate::*;

fn request() -> BoxedStrategy<Request> {
    Request::arbitrary()
}

fn response() -> BoxedStrategy<Response> {
    Response::arbitrary()
}

fn body(frame: &BytesMut) -> Bytes {
    Bytes::copy_from_slice(&frame[HEADER_LEN..])
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

    /// The SDK's borrowed-parts publish encoder writes what the declared
    /// messages write.
    #[test]
    fn publish_fast_path_matches_the_declaration(req in request()) {
        let (mode, p) = match req {
            Request::Publish(p) => (PublishMode::Set, p),
            Request::PublishIfAbsent(p) => (PublishMode::IfAbsent, p),
            Request::Delete(d) => (PublishMode::Delete, Publish::from(d)),
            _ => return Ok(()),
        };
        let mut fast = BytesMut::new();
        crate::request::encode_publish(
            &mut fast, p.req_id, p.topic.as_str(), &p.payload, p.timestamp, p.id.as_ref(), mode,
        );
        let declared = Request::decode(&body(&fast), &TopicRules::default()).unwrap();
        let mut again = BytesMut::new();
        declared.encode(&mut again);
        prop_assert_eq!(fast, again);
    }

    /// The broker's event and report encoders write what the declared
    /// messages write.
    #[test]
    fn broker_fast_paths_match_the_declaration(resp in response()) {
        let mut fast = BytesMut::new();
        match &resp {
            Response::Event { sub_id, event } => {
                crate::response::encode_event(&mut fast, *sub_id, event)
            }
            Response::Report { req_id, outcome } => {
                let summary = outcome.summary();
                let (previous, notified): (Option<&Summary>, &[u32]) = match outcome {
                    Outcome::New { previous, notified, .. } => (previous.as_ref(), notified),
                    _ => (None, &[]),
                };
                crate::response::encode_report(
                    &mut fast,
                    *req_id,
                    outcome.status(),
                    SummaryRef::from(&summary),
                    previous.map(SummaryRef::from),
                    outcome.current(),
                    notified,
                )
            }
            _ => return Ok(()),
        }
        let mut declared = BytesMut::new();
        resp.encode(&mut declared);
        prop_assert_eq!(fast, declared);
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

/// The message tables of docs/protocol.md (§5 and §6) list every declared
/// message with its code, name and fields in wire order, exactly as the
/// declarations give them.
#[test]
fn docs_list_every_message_as_declared() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    let section = |from: &str, to: &str| -> Vec<String> {
        let start = doc.find(from).unwrap();
        let end = start + doc[start..].find(to).unwrap();
        doc[start..end]
            .lines()
            .filter(|l| l.starts_with("| `0x"))
            .map(str::to_owned)
            .collect()
    };
    let row = |(code, name, fields): (u64, &str, String)| {
        format!(
            "| `{code:#04x}` | {name} | {} |",
            fields.replace('|', "\\|")
        )
    };
    let want: Vec<String> = Request::doc_rows().into_iter().map(row).collect();
    assert_eq!(section("## 5. Client", "## 6. Broker"), want);
    let want: Vec<String> = Response::doc_rows().into_iter().map(row).collect();
    assert_eq!(section("## 6. Broker", "## 7. Subscriptions"), want);
}

#[test]
fn a_sink_from_an_older_broker_has_no_rejected_count() {
    // [0x97, 1, "n", 2, 2, nil, [["s", "p", "running", 1, 0, 0, 5, 0, nil]], 7]
    let mut body = vec![
        0x98, 0xcc, 0x97, 0x01, 0xa1, b'n', 0x02, 0x02, 0xc0, 0x91, 0x99,
    ];
    body.extend_from_slice(&[0xa1, b's', 0xa1, b'p', 0xa7]);
    body.extend_from_slice(b"running");
    body.extend_from_slice(&[0x01, 0x00, 0x00, 0x05, 0x00, 0xc0, 0x07]);
    match Response::decode(&Bytes::from(body), &TopicRules::default()).unwrap() {
        Response::Status(report) => {
            assert_eq!(report.sinks.len(), 1);
            assert_eq!(report.sinks[0].delivered, 5);
            assert_eq!(report.sinks[0].rejected, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_id_without_a_timestamp_is_malformed() {
    let mut wire = BytesMut::new();
    crate::request::encode_publish(
        &mut wire,
        1,
        "a",
        b"x",
        None,
        Some(&EventId([1; 16])),
        PublishMode::Set,
    );
    let err = Request::decode(&body(&wire), &TopicRules::default()).unwrap_err();
    assert!(
        matches!(err, ProtocolError::Malformed { what, .. } if what.contains("requires a timestamp")),
        "{err}"
    );
}
