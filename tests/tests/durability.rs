//! The event log: state survives restarts and crashes; nothing acknowledged
//! is lost; damaged tails are truncated.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use std::sync::Mutex;
use support::{snapshot, Broker};

fn log_dir(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("log")
}

#[tokio::test]
async fn state_and_iterations_survive_a_restart() {
    let broker = Broker::start(&[]);
    let client = broker.client().await;
    client.publish("plant/a/temp", "21").await.unwrap();
    client.publish("plant/a/temp", "22").await.unwrap();
    client.publish("plant/b/temp", "19").await.unwrap();
    let mark = client
        .publish("plant/gone", "x")
        .await
        .unwrap()
        .summary()
        .iteration();
    client.delete("plant/gone").await.unwrap();
    let last = client
        .publish("plant/c", "c")
        .await
        .unwrap()
        .summary()
        .iteration();
    drop(client);
    let dir = broker.stop();

    let broker = Broker::start_in(dir, &[]);
    let client = broker.client().await;
    let a = client.get("plant/a/temp").await.unwrap().unwrap();
    assert_eq!(a.payload_bytes(), b"22");
    assert!(client.get("plant/gone").await.unwrap().is_none());
    // A client resuming from before the delete learns of it.
    let mut sub = client.subscribe_since("plant", mark).await.unwrap();
    let got = snapshot(&mut sub).await;
    let topics: Vec<(&str, bool)> = got.iter().map(|e| (e.topic(), e.is_tombstone())).collect();
    assert_eq!(topics, [("plant/gone", true), ("plant/c", false)]);
    // Iterations go on above everything on disk.
    let next = client
        .publish("plant/d", "d")
        .await
        .unwrap()
        .summary()
        .iteration();
    assert!(next > last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    const PUBLISHERS: usize = 4;
    const TOPICS_EACH: usize = 25;
    let broker = Broker::start(&["--durability", "always"]);
    // Per topic, the highest sequence number acknowledged.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let client = broker.client().await;
        let (acked, progress) = (acked.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                seq += 1;
                // Each topic has one writer; 25 publishes in flight at once.
                let writes = (0..TOPICS_EACH).map(|t| {
                    let topic = format!("load/{p}/{t}");
                    let c = client.clone();
                    async move { (c.publish(&topic, seq.to_string()).await, topic) }
                });
                for (result, topic) in futures_util::future::join_all(writes).await {
                    match result {
                        Ok(_) => {
                            acked.lock().unwrap().insert(topic, seq);
                        }
                        Err(_) => return, // the broker is gone
                    }
                }
                progress.notify_one();
            }
        }));
    }
    // Kill once a good amount is acknowledged, in the middle of the load.
    let target = PUBLISHERS * TOPICS_EACH;
    loop {
        let notified = progress.notified();
        let enough = {
            let a = acked.lock().unwrap();
            a.len() == target && a.values().all(|s| *s >= 20)
        };
        if enough {
            break;
        }
        tokio::time::timeout(support::PATIENCE, notified)
            .await
            .expect("the load makes progress");
    }
    let dir = broker.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let broker = Broker::start_in(dir, &[]);
    let client = broker.client().await;
    let mut highest = 0;
    for (topic, seq) in &acked {
        let e = client
            .get(topic)
            .await
            .unwrap()
            .expect("acknowledged topic present");
        let stored: u64 = std::str::from_utf8(e.payload_bytes())
            .unwrap()
            .parse()
            .unwrap();
        // The stored value is the last acknowledged one, or a later write
        // that reached the log before the kill but not its acknowledgement.
        assert!(
            stored >= *seq,
            "{topic}: acknowledged {seq}, recovered {stored}"
        );
        assert!(
            stored <= seq + 1,
            "{topic}: {stored} was never published after {seq}"
        );
        highest = highest.max(e.iteration());
    }
    let next = client
        .publish("load/after", "x")
        .await
        .unwrap()
        .summary()
        .iteration();
    assert!(next > highest);
}

#[tokio::test]
async fn a_damaged_log_tail_is_truncated_and_the_broker_starts() {
    let broker = Broker::start(&[]);
    let client = broker.client().await;
    for i in 0..50 {
        client
            .publish(&format!("c/{i}"), format!("v{i}"))
            .await
            .unwrap();
    }
    drop(client);
    let dir = broker.kill();
    let segment = std::fs::read_dir(log_dir(dir.path()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .unwrap();
    let mut data = std::fs::read(&segment).unwrap();
    let n = data.len();
    data[n - 2] ^= 0xff; // inside the last record
    data.extend_from_slice(b"\x00\x00\x01garbage after a torn write");
    std::fs::write(&segment, &data).unwrap();

    let broker = Broker::start_in(dir, &[]);
    let client = broker.client().await;
    assert_eq!(
        client.get("c/48").await.unwrap().unwrap().payload_bytes(),
        b"v48"
    );
    assert!(
        client.get("c/49").await.unwrap().is_none(),
        "the damaged record is dropped"
    );
    client.publish("c/49", "again").await.unwrap();
    assert_eq!(
        client.get("c/49").await.unwrap().unwrap().payload_bytes(),
        b"again"
    );
}

#[tokio::test]
async fn restarts_use_the_checkpoint_and_survive_a_bad_one() {
    let broker = Broker::start(&["--checkpoint-every", "100"]);
    let client = broker.client().await;
    for i in 0..1000 {
        client
            .publish(&format!("cp/{}", i % 50), i.to_string())
            .await
            .unwrap();
    }
    client.delete("cp/7").await.unwrap();
    drop(client);
    // A graceful stop writes a final checkpoint.
    let dir = broker.stop();
    let checkpoint = log_dir(dir.path()).join("checkpoint");
    assert!(checkpoint.exists());

    let broker = Broker::start_in(dir, &[]);
    let client = broker.client().await;
    assert_eq!(
        client.get("cp/49").await.unwrap().unwrap().payload_bytes(),
        b"999"
    );
    assert!(client.get("cp/7").await.unwrap().is_none());
    drop(client);

    // A damaged checkpoint is ignored: the whole log is replayed instead.
    let dir = broker.kill();
    let mut data = std::fs::read(&checkpoint).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    std::fs::write(&checkpoint, &data).unwrap();
    let broker = Broker::start_in(dir, &[]);
    let client = broker.client().await;
    assert_eq!(
        client.get("cp/0").await.unwrap().unwrap().payload_bytes(),
        b"950"
    );
    assert!(client.get("cp/7").await.unwrap().is_none());
}

#[tokio::test]
async fn deletes_past_the_grace_period_are_forgotten_and_resuming_clients_resync() {
    let broker = Broker::start(&["--tombstone-grace-secs", "0", "--checkpoint-every", "5"]);
    let client = broker.client().await;
    client.publish("g/a", "1").await.unwrap();
    client.publish("g/b", "2").await.unwrap();
    let mark = client
        .publish("g/c", "3")
        .await
        .unwrap()
        .summary()
        .iteration();
    client.delete("g/a").await.unwrap();
    // Checkpoints forget the delete; drive them until it is recorded.
    let marker = log_dir(broker.dir.path()).join("deletes-forgotten-through");
    let mut n = 0;
    while !marker.exists() {
        client.publish("other/x", n.to_string()).await.unwrap();
        n += 1;
        assert!(n < 10_000, "no checkpoint forgot the delete");
    }

    let check = |client: spread_client::Client| async move {
        let mut sub = client.subscribe_since("g", mark).await.unwrap();
        match tokio::time::timeout(support::PATIENCE, sub.next_item())
            .await
            .unwrap()
        {
            Some(Ok(spread_client::Item::Truncated { oldest })) => assert!(oldest > mark),
            other => panic!("expected a resync marker, got {other:?}"),
        }
        let mut topics: Vec<String> = snapshot(&mut sub)
            .await
            .iter()
            .map(|e| {
                assert!(!e.is_tombstone());
                e.topic().to_string()
            })
            .collect();
        topics.sort();
        // The full state: replace what you had with it.
        assert_eq!(topics, ["g/b", "g/c"]);
    };
    check(client.clone()).await;
    assert!(client.get("g/a").await.unwrap().is_none());

    // The marker outlives a restart.
    drop(client);
    let dir = broker.stop();
    let broker = Broker::start_in(dir, &[]);
    check(broker.client().await).await;
}

/// The largest publish a broker accepts, for a frame limit of `max_frame`:
/// a raw publish of `topic` whose frame body is exactly `max_frame` bytes.
fn largest_publish(topic: &str, max_frame: usize) -> spread_protocol::Request {
    use spread_protocol::{Publish, Request, Topic, TopicRules};
    let publish = |n: usize| {
        Request::Publish(Publish {
            req_id: 1,
            topic: Topic::new(topic, &TopicRules::default()).unwrap(),
            payload: vec![b'x'; n].into(),
            timestamp: None,
            id: None,
        })
    };
    let body = |req: &Request| {
        let mut out = bytes::BytesMut::new();
        req.encode(&mut out);
        out.len() - spread_protocol::HEADER_LEN
    };
    let mut n = max_frame - body(&publish(0));
    while body(&publish(n)) > max_frame {
        n -= 1;
    }
    assert_eq!(body(&publish(n)), max_frame, "no payload fills the frame");
    publish(n)
}

#[tokio::test]
async fn the_largest_accepted_publish_survives_a_crash_and_a_lower_frame_limit() {
    use spread_protocol::{Outcome, Response};
    // A long origin (here the node id every anonymous client writes as)
    // makes the stored event larger than the frame it came in.
    let node = "n".repeat(200);
    let flags = [
        "--archive",
        "off",
        "--max-frame",
        "65536",
        "--node-id",
        &node,
    ];
    let broker = Broker::start(&flags);
    let mut raw = broker.raw().await;
    raw.send(&largest_publish("big", 65536)).await;
    match raw.recv().await {
        Some(Response::Report {
            outcome: Outcome::New { .. },
            ..
        }) => {}
        other => panic!("expected a new report, got {other:?}"),
    }
    let client = broker.client().await;
    client.publish("after", "b").await.unwrap();
    drop((raw, client));
    let mut dir = broker.kill();

    // After a crash, and then with a lower frame limit, both are still there.
    for max_frame in ["65536", "1024"] {
        let flags = [
            "--archive",
            "off",
            "--max-frame",
            max_frame,
            "--node-id",
            &node,
        ];
        let broker = Broker::start_in(dir, &flags);
        let client = broker.client().await;
        let big = client.get("big").await.unwrap().expect("big survives");
        assert!(big.payload_bytes().len() > 65_000);
        let after = client.get("after").await.unwrap().expect("after survives");
        assert_eq!(after.payload_bytes(), b"b");
        // A history subscription reads both back from the log.
        let mut sub = client.subscribe_history("", 1).await.unwrap();
        let topics: Vec<String> = snapshot(&mut sub)
            .await
            .iter()
            .map(|e| e.topic().to_owned())
            .collect();
        assert_eq!(topics, ["big", "after"], "max frame {max_frame}");
        drop(client);
        dir = broker.stop();
    }
}

#[tokio::test]
async fn a_damaged_checkpoint_after_retention_refuses_to_start() {
    let flags = [
        "--archive",
        "off",
        "--segment-bytes",
        "4096",
        "--checkpoint-every",
        "10",
        "--retention-bytes",
        "8192",
    ];
    let broker = Broker::start(&flags);
    let client = broker.client().await;
    client.publish("keep", "1").await.unwrap();
    let retained = log_dir(broker.dir.path()).join("retained-from");
    let mut n = 0;
    while !retained.exists() {
        client.publish("churn", vec![b'c'; 100]).await.unwrap();
        n += 1;
        assert!(n < 100_000, "retention never deleted anything");
    }
    drop(client);
    let dir = broker.stop();
    let checkpoint = log_dir(dir.path()).join("checkpoint");
    let mut data = std::fs::read(&checkpoint).unwrap();
    data[30] ^= 0xff;
    std::fs::write(&checkpoint, &data).unwrap();
    // Starting from the log alone would lose `keep`: refused, saying why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_e2e-broker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(flags)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the broker started without {checkpoint:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unusable checkpoint"), "{err}");
}

#[tokio::test]
async fn a_restart_numbers_above_every_iteration_a_previous_run_may_have_used() {
    let flags = ["--archive", "off", "--durability", "never"];
    let broker = Broker::start(&flags);
    let client = broker.client().await;
    let first = client
        .publish("n", "1")
        .await
        .unwrap()
        .summary()
        .iteration();
    // The run reserved numbers ahead of what it used, durably.
    let reserved_file = log_dir(broker.dir.path()).join("iterations-reserved-through");
    let reserved: u64 = std::fs::read_to_string(&reserved_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(reserved > first);
    drop(client);
    let dir = broker.kill();
    // As if the lost run had used numbers far above the clock (a clock that
    // stepped back since): the restart still numbers above them.
    let far = first + 3_600_000_000_000;
    std::fs::write(
        log_dir(dir.path()).join("iterations-reserved-through"),
        format!("{far}\n"),
    )
    .unwrap();
    let broker = Broker::start_in(dir, &flags);
    let client = broker.client().await;
    let next = client
        .publish("n", "2")
        .await
        .unwrap()
        .summary()
        .iteration();
    assert!(next > far, "{next} reuses numbers up to {far}");
}

#[test]
fn a_log_that_cannot_be_opened_stops_the_start_with_its_reason() {
    // With the archive on (its plugin owns a runtime): a clear error, no panic.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::write(log.join("iterations-reserved-through"), b"\xff\xfe").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_e2e-broker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("iterations-reserved-through"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
