//! The codec's hot paths: a 128-byte publish encoded and decoded, an event
//! delivery encoded (the broker's side) and decoded (the client's), and a
//! publish report both ways. `publish/*-rmp` does the publish's work with
//! the `rmp` crate's primitives instead of the hand-written reader and
//! writer (same frame, same topic validation), which is how the codec
//! chose to stay hand-written (docs/benchmarks.md).
//!
//! `cargo bench -p spread-protocol --bench codec`

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spread_protocol::request::encode_publish;
use spread_protocol::response::{encode_event, encode_report};
use spread_protocol::{
    Event, EventId, EventKind, EventParts, Publish, PublishMode, PublishStatus, Request, Response,
    SummaryRef, Topic, TopicRules,
};

const TOPIC: &str = "fleet/eu/truck-7/position";

fn event() -> Event {
    EventParts {
        topic: TOPIC,
        payload: &[7u8; 128],
        timestamp: 1_796_000_000_000_000,
        origin: "node-3f2a9c01d4e5",
        id: EventId([9; 16]),
        iteration: 1_796_000_000_000_123,
        kind: EventKind::Value,
        source: 0x9c41_e07a_2b55_d310,
    }
    .encode()
}

/// The body of the frame that `encode` appends (its 4-byte length cut off).
fn body(encode: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::new();
    encode(&mut buf);
    buf.split_off(spread_protocol::HEADER_LEN).freeze()
}

fn codec(c: &mut Criterion) {
    let rules = TopicRules::default();
    let payload = [7u8; 128];
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(1 << 16);

    g.bench_function("publish/encode", |b| {
        b.iter(|| {
            buf.clear();
            encode_publish(&mut buf, 42, TOPIC, &payload, None, None, PublishMode::Set);
        })
    });
    let publish = body(|d| encode_publish(d, 42, TOPIC, &payload, None, None, PublishMode::Set));
    g.bench_function("publish/decode", |b| {
        b.iter(|| Request::decode(&publish, &rules).map(|r| r.req_id()))
    });

    let mut vec = Vec::with_capacity(1 << 16);
    g.bench_function("publish/encode-rmp", |b| {
        b.iter(|| {
            vec.clear();
            rmp_encode_publish(&mut vec, 42, TOPIC, &payload);
        })
    });
    g.bench_function("publish/decode-rmp", |b| {
        b.iter(|| rmp_decode_publish(&publish, &rules).map(|p| p.req_id))
    });

    let e = event();
    g.bench_function("event/encode", |b| {
        b.iter(|| {
            buf.clear();
            encode_event(&mut buf, 7, &e);
        })
    });
    let delivery = body(|d| encode_event(d, 7, &e));
    g.bench_function("event/decode", |b| {
        b.iter(|| Response::decode(&delivery, &rules).is_ok())
    });

    let report = |d: &mut BytesMut| {
        encode_report(
            d,
            42,
            PublishStatus::New,
            SummaryRef::from(&e),
            None,
            None,
            &[1, 0, 0, 3],
        )
    };
    g.bench_function("report/encode", |b| {
        b.iter(|| {
            buf.clear();
            report(&mut buf);
        })
    });
    let answer = body(report);
    g.bench_function("report/decode", |b| {
        b.iter(|| Response::decode(&answer, &rules).is_ok())
    });
    g.finish();
}

/// The frame body `encode_publish` writes (without timestamp and id), by
/// `rmp`, into a `Vec` as its writer needs, with the length prefix.
fn rmp_encode_publish(dst: &mut Vec<u8>, req_id: u64, topic: &str, payload: &[u8]) {
    use rmp::encode::*;
    dst.extend_from_slice(&[0; 4]);
    let _ = write_array_len(dst, 6);
    let _ = write_uint(dst, spread_protocol::request::kind::PUBLISH);
    let _ = write_uint(dst, req_id);
    let _ = write_str(dst, topic);
    let _ = write_bin(dst, payload);
    let _ = write_nil(dst);
    let _ = write_nil(dst);
    let len = (dst.len() - 4) as u32;
    dst[..4].copy_from_slice(&len.to_be_bytes());
}

/// What `Request::decode` does for that frame, reading with `rmp`: the
/// topic and payload stay slices of the frame.
fn rmp_decode_publish(frame: &Bytes, rules: &TopicRules) -> Option<Publish> {
    use rmp::decode::*;
    let mut rd: &[u8] = frame;
    let at = |rd: &[u8]| frame.len() - rd.len();
    if read_array_len(&mut rd).ok()? != 6
        || read_int::<u64, _>(&mut rd).ok()? != spread_protocol::request::kind::PUBLISH
    {
        return None;
    }
    let req_id = read_int::<u64, _>(&mut rd).ok()?;
    let len = read_str_len(&mut rd).ok()? as usize;
    let start = at(rd);
    rd = rd.get(len..)?;
    let topic = Topic::from_bytes(frame.slice(start..start + len), rules, false).ok()?;
    let len = read_bin_len(&mut rd).ok()? as usize;
    let start = at(rd);
    rd = rd.get(len..)?;
    let payload = frame.slice(start..start + len);
    read_nil(&mut rd).ok()?;
    read_nil(&mut rd).ok()?;
    rd.is_empty().then_some(Publish {
        req_id,
        topic,
        payload,
        timestamp: None,
        id: None,
    })
}

criterion_group!(benches, codec);
criterion_main!(benches);
