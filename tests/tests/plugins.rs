//! Sink plugins loaded by a real broker: the Rust and C examples, plugins
//! that fail, block or panic, a crash mid-batch, retention, and plugins the
//! broker must refuse to load.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use spread_broker::SinkConfig;
use spread_client::{Client, Outcome, StatusReport};
use support::{build_c_plugin, built_plugin, eventually, only_sinks, path_value, settings, Broker};

/// One event as the example sinks write it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    iteration: u64,
    id: String,
    kind: String,
    topic: String,
    payload: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The events in a sink's file, in file order (`missed` lines apart).
fn read_lines(path: &Path) -> (Vec<Line>, Vec<(u64, u64)>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut events, mut missed) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f[0] == "missed" {
            missed.push((f[1].parse().unwrap(), f[2].parse().unwrap()));
            continue;
        }
        assert_eq!(f.len(), 7, "malformed line {line:?}");
        events.push(Line {
            iteration: f[0].parse().unwrap(),
            id: f[2].to_string(),
            kind: f[3].to_string(),
            topic: f[5].to_string(),
            payload: f[6].to_string(),
        });
    }
    (events, missed)
}

/// Publishes `n` events (pipelined) over a few topics, a delete every 50,
/// and returns what the sinks must hold, by iteration.
async fn publish_load(client: &Client, n: usize, tag: &str) -> BTreeMap<u64, Line> {
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let topic = format!("load/{}/{}", i % 7, i % 13);
        let client = client.clone();
        let payload: Vec<u8> = format!("{tag}-{i}\t\u{0}\u{ff}").into_bytes();
        pending.push(tokio::spawn(async move {
            let outcome = if i % 50 == 49 {
                client.delete(&topic).await
            } else {
                client.publish(&topic, payload.clone()).await
            }
            .expect("acknowledged");
            (
                topic,
                if i % 50 == 49 { Vec::new() } else { payload },
                outcome,
            )
        }));
    }
    let mut expected = BTreeMap::new();
    for p in pending {
        let (topic, payload, outcome) = p.await.unwrap();
        let Outcome::New { event, .. } = outcome else {
            panic!("not applied: {outcome:?}")
        };
        expected.insert(
            event.iteration(),
            Line {
                iteration: event.iteration(),
                id: hex(&event.id().0),
                kind: event.kind().as_str().to_string(),
                topic,
                payload: hex(&payload),
            },
        );
    }
    expected
}

async fn status(client: &Client) -> StatusReport {
    client.status().await.expect("status")
}

/// Waits until sink `name` has consumed everything committed.
async fn caught_up(client: &Client, name: &str) -> StatusReport {
    eventually(&format!("sink {name} to catch up"), || async {
        let report = status(client).await;
        let sink = report.sinks.iter().find(|s| s.name == name)?;
        (sink.lag_events == 0 && sink.state == "running").then_some(report)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_c_examples_receive_every_event_exactly_as_published() {
    let dir = tempfile::tempdir().unwrap();
    let c_lib = dir.path().join("libc_file_sink.so");
    build_c_plugin(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../plugins/examples/c-file-sink/file_sink.c"
        )),
        &c_lib,
    );
    let rust_lib = built_plugin("spread-example-file-sink");
    let setup = only_sinks(vec![
        SinkConfig::library("rust", &rust_lib, settings([("path", "rust.txt".into())])),
        SinkConfig::library("c", &c_lib, settings([("path", "c.txt".into())])),
    ]);
    let broker = Broker::builder().dir(dir).args(setup.clone()).start();
    let client = broker.client().await;
    let expected = publish_load(&client, 3000, "x").await;
    caught_up(&client, "rust").await;
    let report = caught_up(&client, "c").await;
    for sink in &report.sinks {
        assert_eq!(sink.state, "running", "{sink:?}");
        assert_eq!(sink.delivered, 3000, "{sink:?}");
        assert_eq!(sink.errors, 0, "{sink:?}");
    }
    assert!(report.sinks[1]
        .plugin
        .starts_with("example-c-file-sink 0.1.0"));
    let dir = broker.stop();
    let want: Vec<Line> = expected.into_values().collect();
    for file in ["rust.txt", "c.txt"] {
        let (got, missed) = read_lines(&dir.path().join(file));
        assert!(missed.is_empty());
        assert_eq!(got.len(), want.len(), "{file}");
        assert_eq!(got, want, "{file}: events differ from what was published");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_blocking_and_panicking_plugins_never_stall_publishers() {
    let dir = tempfile::tempdir().unwrap();
    let lib = built_plugin("spread-chaos-sink");
    let d = dir.path().to_path_buf();
    let marker = |name: &str| {
        let p = d.join(name);
        std::fs::write(&p, b"").unwrap();
        p
    };
    let (fail, block, panic) = (marker("fail"), marker("block"), marker("panic"));
    let sink = |name: &str, out: &str, key: &str, file: &Path| {
        SinkConfig::library(
            name,
            &lib,
            settings([("path", path_value(&d.join(out))), (key, path_value(file))]),
        )
    };
    let fast_retry = SinkConfig {
        retry_min_ms: 5,
        retry_max_ms: 50,
        ..sink("failing", "failing.txt", "fail_file", &fail)
    };
    let setup = only_sinks(vec![
        fast_retry,
        sink("blocked", "blocked.txt", "block_file", &block),
        sink("panics", "panics.txt", "panic_file", &panic),
    ]);
    let broker = Broker::builder().dir(dir).args(setup.clone()).start();
    let client = broker.client().await;
    // Every publish is acknowledged while no sink makes progress.
    let expected = publish_load(&client, 20_000, "chaos").await;
    let report = eventually("the sinks to show their trouble", || async {
        let r = status(&client).await;
        let by: HashMap<&str, _> = r.sinks.iter().map(|s| (s.name.as_str(), s)).collect();
        (by["failing"].state == "retrying"
            && by["failing"].errors > 0
            && by["panics"].state == "failed")
            .then_some(r)
    })
    .await;
    let by: HashMap<&str, _> = report.sinks.iter().map(|s| (s.name.as_str(), s)).collect();
    assert_eq!(by["blocked"].delivered, 0, "{:?}", by["blocked"]);
    assert_eq!(by["blocked"].lag_events, 20_000);
    assert!(by["blocked"].lag_ms > 0);
    assert_eq!(by["failing"].delivered, 0);
    assert!(
        by["panics"]
            .last_error
            .as_deref()
            .unwrap()
            .contains("asked to panic"),
        "{:?}",
        by["panics"]
    );
    // The destination comes back: the failing sink catches up live.
    std::fs::remove_file(&fail).unwrap();
    caught_up(&client, "failing").await;
    // A stop does not wait for the blocked plugin; the restart resumes each
    // sink from its checkpoint.
    drop(client);
    let dir = broker.stop();
    std::fs::remove_file(&block).unwrap();
    let broker = Broker::builder().dir(dir).args(setup.clone()).start();
    let client = broker.client().await;
    for name in ["failing", "blocked", "panics"] {
        caught_up(&client, name).await;
    }
    drop(client);
    let dir = broker.stop();
    let want: Vec<Line> = expected.into_values().collect();
    for file in ["failing.txt", "blocked.txt", "panics.txt"] {
        let (got, _) = read_lines(&dir.path().join(file));
        assert_eq!(got, want, "{file}: not every event exactly once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_batch_loses_nothing_and_dedupe_on_id_keeps_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let setup = only_sinks(vec![
        SinkConfig {
            checkpoint_ms: 200,
            batch_events: 64,
            ..SinkConfig::library(
                "dedupe",
                &built_plugin("spread-example-file-sink"),
                settings([("path", "dedupe.txt".into()), ("dedupe", true.into())]),
            )
        },
        SinkConfig {
            checkpoint_ms: 200,
            batch_events: 64,
            ..SinkConfig::library(
                "plain",
                &built_plugin("spread-chaos-sink"),
                settings([("path", path_value(&d.join("plain.txt")))]),
            )
        },
    ]);
    let broker = Broker::builder().dir(dir).args(setup.clone()).start();
    let client = broker.client().await;
    // Publish until the sinks are mid-stream, then kill the broker.
    let mut expected = BTreeMap::new();
    let mut round = 0;
    loop {
        expected.extend(publish_load(&client, 500, &format!("r{round}")).await);
        round += 1;
        let r = status(&client).await;
        if r.sinks.iter().all(|s| s.delivered > 0 && s.lag_events > 0) || round > 40 {
            break;
        }
    }
    drop(client);
    let dir = broker.kill();
    let broker = Broker::builder().dir(dir).args(setup).start();
    let client = broker.client().await;
    caught_up(&client, "dedupe").await;
    caught_up(&client, "plain").await;
    drop(client);
    let dir = broker.stop();
    let want: Vec<Line> = expected.into_values().collect();
    // Deduplicated on id: every acknowledged event exactly once.
    let (mut got, _) = read_lines(&dir.path().join("dedupe.txt"));
    got.sort_by_key(|l| l.iteration);
    assert_eq!(got, want);
    // At least once: every acknowledged event, duplicates only of events
    // redelivered after the crash, nothing foreign.
    let (got, _) = read_lines(&dir.path().join("plain.txt"));
    let mut seen: BTreeMap<u64, Line> = BTreeMap::new();
    for line in got {
        if let Some(previous) = seen.insert(line.iteration, line.clone()) {
            assert_eq!(previous, line, "a duplicate that differs");
        }
    }
    assert_eq!(seen.into_values().collect::<Vec<_>>(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_a_sink_has_not_consumed_or_tells_it_what_it_missed() {
    let lib = built_plugin("spread-chaos-sink");
    for hold in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let block = d.join("block");
        std::fs::write(&block, b"").unwrap();
        let setup = only_sinks(vec![SinkConfig {
            hold_retention: hold,
            batch_events: 100,
            ..SinkConfig::library(
                "archive",
                &lib,
                settings([
                    ("path", path_value(&d.join("out.txt"))),
                    ("block_file", path_value(&block)),
                ]),
            )
        }]);
        let broker = Broker::builder()
            .dir(dir)
            .args(setup)
            .with(|a| {
                a.segment_bytes = Some(16384);
                a.retention_bytes = Some(1);
                a.checkpoint_every = Some(200);
            })
            .start();
        let client = broker.client().await;
        // The sink is stuck on its first batch while history piles up.
        let mut expected = BTreeMap::new();
        for round in 0..5 {
            expected.extend(publish_load(&client, 1000, &format!("r{round}")).await);
        }
        let last = *expected.keys().last().unwrap();
        if hold {
            let r = status(&client).await;
            assert_eq!(
                r.retained_from, None,
                "history deleted under a holding sink"
            );
        } else {
            eventually("retention to delete history", || async {
                status(&client).await.retained_from
            })
            .await;
        }
        std::fs::remove_file(&block).unwrap();
        caught_up(&client, "archive").await;
        drop(client);
        let dir = broker.stop();
        let (got, missed) = read_lines(&dir.path().join("out.txt"));
        let want: Vec<Line> = expected.values().cloned().collect();
        if hold {
            assert!(missed.is_empty());
            assert_eq!(got, want);
        } else {
            // Retention went on deleting while the sink caught up: every
            // event was either received, in order, or inside a range the
            // sink was told it missed — never both, never neither.
            assert!(!missed.is_empty());
            let in_missed = |it: u64| missed.iter().any(|(f, l)| (*f..=*l).contains(&it));
            let kept: Vec<Line> = expected
                .values()
                .filter(|l| !in_missed(l.iteration))
                .cloned()
                .collect();
            assert!(got.iter().all(|l| !in_missed(l.iteration)), "{missed:?}");
            assert!(got.len() < expected.len());
            assert_eq!(got.last().map(|l| l.iteration), Some(last));
            assert_eq!(got, kept);
        }
    }
}

#[test]
fn plugins_the_broker_cannot_use_stop_the_start_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write_c = |name: &str, body: &str| {
        let src = d.join(format!("{name}.c"));
        std::fs::write(&src, format!("#include \"spread_plugin.h\"\n{body}\n")).unwrap();
        let lib = d.join(format!("lib{name}.so"));
        build_c_plugin(&src, &lib);
        lib
    };
    let future = write_c(
        "future",
        "static const SpreadPlugin P = { .abi_version = 99, .size = sizeof(SpreadPlugin) };\n\
         const SpreadPlugin *spread_plugin_entry(void) { return &P; }",
    );
    let no_entry = write_c("noentry", "int not_a_plugin(void) { return 1; }");
    let cases = [
        (
            future,
            "speaks plugin ABI version 99; this broker speaks version 1",
        ),
        (no_entry, "no symbol spread_plugin_entry"),
        (d.join("missing.so"), "cannot load"),
    ];
    for (lib, reason) in cases {
        let setup = only_sinks(vec![SinkConfig::library("bad-one", &lib, settings([]))]);
        let stderr = Broker::builder().args(setup).fail_to_start();
        assert!(
            stderr.contains("sink bad-one") && stderr.contains(reason),
            "for {}: {stderr}",
            lib.display()
        );
    }
    // A plugin that refuses its settings stops the start too.
    let setup = only_sinks(vec![SinkConfig::library(
        "picky",
        &built_plugin("spread-example-file-sink"),
        settings([]),
    )]);
    let stderr = Broker::builder().args(setup).fail_to_start();
    assert!(
        stderr.contains("sink picky: cannot open") && stderr.contains("path"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_shows_each_sink() {
    let dir = tempfile::tempdir().unwrap();
    let setup = only_sinks(vec![SinkConfig::library(
        "nothing",
        &built_plugin("spread-example-null-sink"),
        settings([]),
    )]);
    let broker = Broker::builder().dir(dir).args(setup.clone()).start();
    let client = broker.client().await;
    publish_load(&client, 10, "s").await;
    caught_up(&client, "nothing").await;
    let out = support::cli(&broker, &["status", "--json"], None);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sinks"][0]["name"], "nothing");
    assert_eq!(v["sinks"][0]["state"], "running");
    assert_eq!(v["sinks"][0]["delivered"], 10);
    assert_eq!(v["sinks"][0]["lag_events"], 0);
    let out = support::cli(&broker, &["status"], None);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("nothing") && text.contains("running") && text.contains("null-sink"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_sink_rotates_json_lines_without_losing_or_splitting_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let setup = only_sinks(vec![SinkConfig {
        batch_events: 200,
        ..SinkConfig::builtin(
            "events",
            "log",
            settings([
                ("dir", "shipped".into()),
                ("max_bytes", 16384.into()),
                ("keep", 10000.into()),
            ]),
        )
    }]);
    let broker = Broker::builder().dir(dir).args(setup.clone()).start();
    let client = broker.client().await;
    let expected = publish_load(&client, 5000, "log").await;
    caught_up(&client, "events").await;
    drop(client);
    let dir = broker.stop();
    let shipped = dir.path().join("shipped");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&shipped)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    // Rotated files sort by name, the active one last.
    let active = files.remove(
        files
            .iter()
            .position(|p| p.ends_with("events.jsonl"))
            .unwrap(),
    );
    files.push(active);
    assert!(files.len() > 20, "{} files", files.len());
    let mut got = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.len() <= 16384, "{}: {} bytes", f.display(), text.len());
        assert!(text.is_empty() || text.ends_with('\n'));
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("whole JSON lines");
            got.push((
                v["iteration"].as_u64().unwrap(),
                v["id"].as_str().unwrap().to_string(),
                v["node"].as_str().unwrap().to_string(),
            ));
        }
    }
    let want: Vec<u64> = expected.keys().copied().collect();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want);
    for (it, id, node) in &got {
        assert_eq!(id, &expected[it].id);
        assert!(node.starts_with("node-"));
    }
}
