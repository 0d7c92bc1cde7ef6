//! The topic tree's hot paths: a publish that changes an existing topic
//! among many (the steady state of a broker holding state), one that adds
//! a new topic, and a `get`, each on a tree of 100,000 topics four levels
//! deep with 128-byte values.
//!
//! `cargo bench -p spread-broker --features bench-internals --bench tree`

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]
// A bench without the system's random source has nothing to measure.
#![allow(clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use spread_broker::bench_internals::{Clock, Draft, IdGen, Tree};
use spread_protocol::PublishMode;

const TOPICS: usize = 100_000;

fn topic(i: usize) -> String {
    format!("fleet/r{}/t{}/p{i}", i % 10, i % 1000)
}

fn draft<'a>(topic: &'a str, payload: &'a [u8]) -> Draft<'a> {
    Draft {
        topic,
        payload,
        timestamp: None,
        id: None,
        origin: "bench",
        mode: PublishMode::Set,
        source: 1,
    }
}

/// A tree holding `TOPICS` topics (no subscribers: `u32` stands in).
fn filled() -> Tree<u32> {
    let ids = IdGen::random().expect("the system's random source");
    let mut tree = Tree::new(Clock::system(), ids, 0);
    let payload = [7u8; 128];
    for i in 0..TOPICS {
        tree.publish(draft(&topic(i), &payload), |_, _| {});
    }
    tree
}

fn tree(c: &mut Criterion) {
    let topics: Vec<String> = (0..TOPICS).map(topic).collect();
    let payload = [9u8; 128];
    let mut group = c.benchmark_group("tree");
    group.throughput(Throughput::Elements(1));
    let mut tree = filled();
    let mut i = 0usize;
    group.bench_function("publish/existing-topic", |b| {
        b.iter(|| {
            // A stride that visits every topic in an order unlike insertion.
            i = (i + 7919) % TOPICS;
            tree.publish(draft(&topics[i], &payload), |_, _| {})
        })
    });
    group.bench_function("get", |b| {
        b.iter(|| {
            i = (i + 7919) % TOPICS;
            tree.get(&topics[i]).is_some()
        })
    });
    let mut n = 0usize;
    group.bench_function("publish/new-topic", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("fresh/{}/{n}", n % 100)
            },
            |t| tree.publish(draft(&t, &payload), |_, _| {}),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, tree);
criterion_main!(benches);
