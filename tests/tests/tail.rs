//! `spread tail`: the seam between past and live (from the log, and from the
//! archive), `--until now`, filters and formats.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use spread_client::{Client, Outcome};
use support::{cli, eventually, Broker, PATIENCE};

async fn publish(
    client: &Client,
    topic_of: impl Fn(usize) -> String,
    n: usize,
    tag: &str,
) -> Vec<u64> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, topic) = (client.clone(), topic_of(i));
            let payload = format!("{tag}-{i}");
            tokio::spawn(async move {
                let outcome = if i % 9 == 8 {
                    client.delete(&topic).await
                } else {
                    client.publish(&topic, payload).await
                }
                .expect("acknowledged");
                match outcome {
                    Outcome::New { event, .. } => event.iteration(),
                    other => panic!("not applied: {other:?}"),
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out.sort_unstable();
    out
}

/// `spread tail --since BEFORE --until now` with `extra` arguments.
fn tail_past(broker: &Broker, before: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["tail", "--since", before, "--until", "now"];
    args.extend_from_slice(extra);
    let out = cli(broker, &args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn iterations(stdout: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["iteration"].as_u64().unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_then_live_with_no_gap_and_no_duplicate_at_the_seam() {
    let broker = Broker::start(&["--archive", "off"]);
    let client = broker.client().await;
    let before = client.status().await.unwrap().iteration;
    let mut want = publish(&client, |i| format!("s/{}", i % 10), 500, "past").await;
    // The tail starts in the past while publishes go on.
    let mut child = Command::new(env!("CARGO_BIN_EXE_e2e-spread"))
        .args(["--server", &broker.addr.to_string(), "--ca"])
        .arg(broker.ca())
        .args(["tail", "s", "--json", "--since", &before.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut got = Vec::new();
        while got.len() < 1000 {
            let Some(Ok(line)) = lines.next() else { break };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            got.push(v["iteration"].as_u64().unwrap());
        }
        got
    });
    want.extend(publish(&client, |i| format!("s/{}", i % 10), 500, "live").await);
    let got = tokio::task::spawn_blocking(move || reader.join().unwrap());
    let got = tokio::time::timeout(PATIENCE, got).await.unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    want.sort_unstable();
    assert_eq!(got, want, "every event once, in iteration order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_now_filters_and_formats() {
    let broker = Broker::start(&["--archive", "off"]);
    let client = broker.client().await;
    let before = client.status().await.unwrap().iteration.to_string();
    let topic = |i: usize| {
        if i % 2 == 0 {
            format!("a/{}", i % 5)
        } else {
            format!("ab/{}", i % 5)
        }
    };
    let all = publish(&client, topic, 90, "p").await;
    let under_a: Vec<u64> = {
        // Even publishes went under a/ (whole segments: not ab/).
        iterations(&tail_past(&broker, &before, &["a", "--json"]).stdout)
    };
    assert_eq!(under_a.len(), 45);
    assert!(under_a.iter().all(|it| all.contains(it)));
    // --kind, --grep, --origin.
    let out = tail_past(&broker, &before, &["--json", "--kind", "tombstone"]);
    assert_eq!(iterations(&out.stdout).len(), 10);
    let out = tail_past(&broker, &before, &["--raw", "--grep", "^p-1[0-9]$"]);
    let raw = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = raw.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        (10..20)
            .filter(|i| i % 9 != 8)
            .map(|i| format!("p-{i}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let out = tail_past(&broker, &before, &["--json", "--origin", "nobody"]);
    assert!(out.stdout.is_empty());
    // Piped, the human format has no colors and escapes control bytes.
    client.publish("ctl/x", "bell\u{7}tab\t").await.unwrap();
    let out = tail_past(&broker, &before, &["ctl"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(
        text.contains("ctl/x") && text.contains("bell\\u{7}tab\\t"),
        "{text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_a_time_reads_the_archive_then_the_log_without_a_seam() {
    let broker = Broker::start(&[]);
    let client = broker.client().await;
    let mut want = publish(&client, |i| format!("z/{}", i % 7), 300, "old").await;
    eventually("the archive to catch up", || async {
        let r = client.status().await.ok()?;
        (r.sinks.iter().find(|s| s.name == "archive")?.lag_events == 0).then_some(())
    })
    .await;
    want.extend(publish(&client, |i| format!("z/{}", i % 7), 300, "new").await);
    let out = tail_past(&broker, "1h", &["z", "--json"]);
    let mut got = iterations(&out.stdout);
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_resumed_after_the_last_event_shown() {
    let broker = Broker::start(&["--archive", "off"]);
    let proxy = support::Proxy::start(broker.addr).await;
    let client = broker.client().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_e2e-spread"))
        .args(["--server", &proxy.addr.to_string(), "--ca"])
        .arg(broker.ca())
        .args(["tail", "r", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if tx.send(v["iteration"].as_u64().unwrap()).is_err() {
                return;
            }
        }
    });
    let (etx, erx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    // The tail is live once it shows an event published after it started.
    let mut want = Vec::new();
    let mut got = Vec::new();
    loop {
        let first = publish(&client, |_| "r/probe".to_string(), 1, "probe").await;
        want.extend(&first);
        if let Ok(it) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            got.push(it);
            break;
        }
    }
    let before = publish(&client, |i| format!("r/{i}"), 100, "before").await;
    let last_before = *before.last().unwrap();
    want.extend(before);
    while got.last() < Some(&last_before) {
        got.push(rx.recv_timeout(PATIENCE).expect("a tailed event"));
    }
    // Cut: the tail reconnects and resumes after the last event it showed.
    proxy.cut();
    want.extend(publish(&client, |i| format!("r/{i}"), 100, "after").await);
    // Every probe from the first shown on, and every later event, once.
    want.retain(|it| *it >= got[0]);
    want.sort_unstable();
    while got.len() < want.len() {
        got.push(rx.recv_timeout(PATIENCE).expect("a tailed event"));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, want);
    let notices: Vec<String> = erx.try_iter().collect();
    assert!(
        notices.iter().any(|l| l.contains("connection lost")),
        "{notices:?}"
    );
}
