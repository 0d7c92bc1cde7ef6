//! The codec's hot paths, measured before the messages are restructured
//! (issue #12 decides between the hand-written MessagePack and `rmp` by
//! these numbers): a 128-byte publish encoded and decoded, an event
//! delivery encoded (the broker's side) and decoded (the client's), and a
//! publish report both ways.
//!
//! `cargo bench -p spread-protocol --bench codec`

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spread_protocol::request::encode_publish;
use spread_protocol::response::{encode_event, encode_report};
use spread_protocol::{
    Event, EventId, EventKind, EventParts, PublishMode, PublishStatus, Request, Response,
    SummaryRef, TopicRules,
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

criterion_group!(benches, codec);
criterion_main!(benches);
