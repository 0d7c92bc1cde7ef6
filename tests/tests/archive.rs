//! The SQL archive through a real broker, against SQLite, the PostgreSQL
//! server and the MariaDB server on this machine: every event archived
//! exactly once, replays exact and in order with whole-segment prefixes,
//! `spread replay` (JSON, `--to-topic`, `--as-of --restore`), and a
//! database that goes away during a publish load.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::StreamExt;
use spread_broker::SinkConfig;
use spread_client::{Client, Event, Item, Outcome, Replay};
use support::{cli, eventually, Broker, Proxy};

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

/// A table name no other test (or run) uses.
fn table(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "e2e_{tag}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A broker whose only sink is the archive at `url` (SQLite in the data
/// dir when `None`) in `table`.
fn with_archive(url: Option<&str>, table: &str) -> support::BrokerBuilder {
    let mut settings = support::settings([("table", table.into())]);
    if let Some(url) = url {
        settings.insert("url".into(), url.into());
    }
    let sink = SinkConfig {
        retry_min_ms: 20,
        retry_max_ms: 200,
        ..SinkConfig::builtin("archive", "sql-archive", settings)
    };
    Broker::builder().no_archive().sink(sink)
}

/// Drops the test's tables.
async fn drop_tables(url: &str, table: &str) {
    let mut conn = spread_sql_archive::db::connect(url).await.unwrap();
    spread_sql_archive::schema::drop(&mut conn, table)
        .await
        .unwrap();
}

/// What a publish applied: the event as the archive must hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    id: String,
    timestamp: u64,
    origin: String,
    topic: String,
    payload: Vec<u8>,
    tombstone: bool,
}

impl Applied {
    fn of(e: &Event) -> Applied {
        Applied {
            id: e.id().to_string(),
            timestamp: e.timestamp(),
            origin: e.origin().to_string(),
            topic: e.topic().to_string(),
            payload: e.payload_bytes().to_vec(),
            tombstone: e.is_tombstone(),
        }
    }
}

/// Publishes `writes` (topic, `Some(payload)` or `None` for a delete),
/// pipelined, and returns what was applied.
async fn publish(client: &Client, writes: Vec<(String, Option<Vec<u8>>)>) -> Vec<Applied> {
    let tasks: Vec<_> = writes
        .into_iter()
        .map(|(topic, payload)| {
            let client = client.clone();
            tokio::spawn(async move {
                let outcome = match &payload {
                    Some(p) => client.publish(&topic, p.clone()).await,
                    None => client.delete(&topic).await,
                }
                .expect("acknowledged");
                let Outcome::New { event, .. } = outcome else {
                    panic!("not applied: {outcome:?}")
                };
                Applied {
                    id: event.id().to_string(),
                    timestamp: event.timestamp(),
                    origin: event.origin().to_string(),
                    topic: topic.clone(),
                    payload: payload.clone().unwrap_or_default(),
                    tombstone: payload.is_none(),
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// CmRDT order: timestamp, then origin, then id.
fn ordered(mut v: Vec<Applied>) -> Vec<Applied> {
    v.sort_by(|a, b| (a.timestamp, &a.origin, &a.id).cmp(&(b.timestamp, &b.origin, &b.id)));
    v
}

async fn replayed(client: &Client, r: &Replay) -> Vec<Applied> {
    let mut stream = client.replay(r).await.expect("replay");
    let mut out = Vec::new();
    while let Some(e) = stream.next().await {
        out.push(Applied::of(&e.expect("replayed event")));
    }
    out
}

/// Waits until the archive sink has every committed event.
async fn archived(client: &Client) {
    eventually("the archive to catch up", || async {
        let r = client.status().await.ok()?;
        let s = r.sinks.iter().find(|s| s.name == "archive")?;
        (s.lag_events == 0 && s.state == "running").then_some(())
    })
    .await;
}

/// The live values under `prefix`.
async fn live(client: &Client, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut sub = client.subscribe(prefix).await.unwrap();
    let mut out = BTreeMap::new();
    loop {
        match sub.next().await.unwrap().unwrap() {
            Item::Event(e) => {
                out.insert(e.topic().to_string(), e.payload_bytes().to_vec());
            }
            Item::Synced { .. } => return out,
            _ => {}
        }
    }
}

fn writes(round: &str, n: usize) -> Vec<(String, Option<Vec<u8>>)> {
    (0..n)
        .map(|i| {
            let topic = match i % 5 {
                0 => "a/b".to_string(),
                1 => format!("a/b/c{}", i % 3),
                2 => format!("a/bc/{}", i % 4),
                3 => format!("a/x{}", i % 6),
                _ => format!("other/{}", i % 7),
            };
            let payload = (i % 17 != 16).then(|| format!("{round}-{i}\u{0}").into_bytes());
            (topic, payload)
        })
        .collect()
}

async fn replay_suite(url: Option<&str>, tag: &str) {
    let dir = tempfile::tempdir().unwrap();
    let table = table(tag);
    let broker = with_archive(url, &table).dir(dir).start();
    let client = broker.client().await;

    let first = publish(&client, writes("one", 400)).await;
    let as_of = first.iter().map(|a| a.timestamp).max().unwrap();
    let second = publish(&client, writes("two", 400)).await;
    assert!(second.iter().all(|a| a.timestamp > as_of));
    archived(&client).await;
    let all = ordered(first.iter().chain(&second).cloned().collect());

    // Every event exactly once, in CmRDT order.
    let everything = replayed(&client, &Replay::default()).await;
    let ids: BTreeSet<&String> = everything.iter().map(|a| &a.id).collect();
    assert_eq!(ids.len(), everything.len(), "{tag}: a duplicate");
    assert_eq!(everything, all, "{tag}: everything");

    // `a/b` covers a/b and a/b/c*, never a/bc.
    let want: Vec<Applied> = all
        .iter()
        .filter(|a| a.topic == "a/b" || a.topic.starts_with("a/b/"))
        .cloned()
        .collect();
    assert_eq!(
        replayed(&client, &Replay::prefix("a/b")).await,
        want,
        "{tag}: prefix"
    );

    // A time range: exactly the second round.
    let r = Replay {
        from_time: Some(as_of + 1),
        ..Replay::default()
    };
    assert_eq!(
        replayed(&client, &r).await,
        ordered(second.clone()),
        "{tag}: range"
    );

    // The CLI prints the same events as JSON lines.
    let out = cli(&broker, &["replay", "a/b", "--json"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cli_ids: Vec<&str> = lines.iter().map(|v| v["id"].as_str().unwrap()).collect();
    let want_ids: Vec<&str> = want.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(cli_ids, want_ids, "{tag}: cli replay");

    // --to-topic republishes a/b's history under copy/b, in order.
    let out = cli(&broker, &["replay", "a/b", "--to-topic", "copy/b"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    archived(&client).await;
    let copied = replayed(&client, &Replay::prefix("copy/b")).await;
    let shape = |v: &[Applied], from: &str| -> Vec<(String, Vec<u8>, bool)> {
        v.iter()
            .map(|a| {
                (
                    a.topic[from.len()..].to_string(),
                    a.payload.clone(),
                    a.tombstone,
                )
            })
            .collect()
    };
    assert_eq!(
        shape(&copied, "copy/b"),
        shape(&want, "a/b"),
        "{tag}: to-topic"
    );

    // --as-of --restore rolls `a` back to the end of the first round.
    let mut then: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for a in ordered(first.clone()) {
        if a.topic.starts_with("a/") || a.topic == "a" {
            then.insert(a.topic.clone(), (!a.tombstone).then(|| a.payload.clone()));
        }
    }
    let as_of_arg = as_of.to_string();
    let out = cli(
        &broker,
        &["replay", "a", "--as-of", &as_of_arg, "--restore"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("restored"));
    let expect: BTreeMap<String, Vec<u8>> = then
        .into_iter()
        .filter_map(|(t, p)| p.map(|p| (t, p)))
        .collect();
    assert_eq!(live(&client, "a").await, expect, "{tag}: restore");
    // Other prefixes are untouched.
    assert!(!live(&client, "other").await.is_empty());

    drop(client);
    broker.stop();
    if let Some(url) = url {
        drop_tables(url, &table).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_archives_every_event_once_and_replays_it() {
    replay_suite(None, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_archives_every_event_once_and_replays_it() {
    replay_suite(Some(POSTGRES), "pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_archives_every_event_once_and_replays_it() {
    replay_suite(Some(MARIADB), "maria").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_catches_up_after_the_database_comes_back() {
    for (tag, upstream, scheme) in [
        ("pgdown", "127.0.0.1:5432", "postgres://postgres"),
        ("mariadown", "127.0.0.1:3306", "mysql://root"),
    ] {
        let proxy = Proxy::start(upstream.parse().unwrap()).await;
        let url = format!("{scheme}@{}/test", proxy.addr);
        let dir = tempfile::tempdir().unwrap();
        let table = table(tag);
        let broker = with_archive(Some(&url), &table).dir(dir).start();
        let client = broker.client().await;
        let mut all = publish(&client, writes("before", 500)).await;
        // The database becomes unreachable: publishes go on, the archive
        // sink retries.
        proxy.open.store(false, Ordering::SeqCst);
        proxy.cut();
        all.extend(publish(&client, writes("down", 500)).await);
        eventually("the archive to notice", || async {
            let r = client.status().await.ok()?;
            let s = r.sinks.iter().find(|s| s.name == "archive")?;
            (s.state == "retrying" && s.errors > 0 && s.lag_events > 0).then_some(())
        })
        .await;
        all.extend(publish(&client, writes("still-down", 500)).await);
        // Back: the archive catches up, with every event exactly once.
        proxy.open.store(true, Ordering::SeqCst);
        archived(&client).await;
        let everything = replayed(&client, &Replay::default()).await;
        assert_eq!(everything, ordered(all), "{tag}");
        drop(client);
        broker.stop();
        drop_tables(&upstream_url(scheme, upstream), &table).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_loaded_as_a_shared_library_archives_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let lib = support::built_plugin("spread-sql-archive-plugin");
    let broker = Broker::builder()
        .dir(dir)
        .no_archive()
        .sink(SinkConfig::library("archive", &lib, support::settings([])))
        .start();
    let client = broker.client().await;
    let status = client.status().await.unwrap();
    assert!(
        status.sinks[0].plugin.starts_with("sql-archive"),
        "{status:?}"
    );
    let all = publish(&client, writes("dyn", 300)).await;
    archived(&client).await;
    // Through the library's archive functions and cursor pages.
    assert_eq!(
        replayed(&client, &Replay::default()).await,
        ordered(all.clone())
    );
    let r = Replay {
        prefixes: vec!["a/bc".into(), "other".into()],
        limit: Some(25),
        ..Replay::default()
    };
    let want: Vec<Applied> = ordered(all)
        .into_iter()
        .filter(|a| a.topic.starts_with("a/bc/") || a.topic.starts_with("other/"))
        .take(25)
        .collect();
    assert_eq!(replayed(&client, &r).await, want);
    drop(client);
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_without_an_archive_is_refused_clearly() {
    let broker = Broker::start(&["--archive", "off"]);
    let client = broker.client().await;
    let mut stream = client.replay(&Replay::default()).await.unwrap();
    match stream.next().await {
        Some(Err(e)) => assert_eq!(
            e.code(),
            Some(spread_protocol::ErrorCode::ArchiveUnavailable),
            "{e}"
        ),
        other => panic!("expected archive_unavailable, got {other:?}"),
    }
    // The connection still serves.
    client.ping().await.unwrap();
}

fn upstream_url(scheme: &str, upstream: &str) -> String {
    format!("{scheme}@{upstream}/test")
}

/// A topic of `len` characters that does not compress (PostgreSQL would
/// compress a repetitive one to fit its index).
fn incompressible_topic(len: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let body: String = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize])
        })
        .collect();
    format!("poison/{body}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_database_refuses_is_dead_lettered_and_the_archive_goes_on() {
    // PostgreSQL: a topic over its index row size; MariaDB: one over its
    // 1024-character column. Both are valid topics under this broker's
    // `--max-topic-len`.
    for (tag, url, topic) in [
        ("pgpoison", POSTGRES, incompressible_topic(3600)),
        ("mariapoison", MARIADB, incompressible_topic(1100)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let table = table(tag);
        let broker = with_archive(Some(url), &table)
            .dir(dir)
            .with(|a| a.max_topic_len = Some(4096))
            .start();
        let mut settings = broker.config();
        settings.topic_rules.max_len = 4096;
        let client = spread_client::Client::connect(settings).await.unwrap();
        let mut all = publish(&client, writes("before", 200)).await;
        let poison = publish(&client, vec![(topic.clone(), Some(b"refused".to_vec()))]).await;
        all.extend(publish(&client, writes("after", 200)).await);
        // Without the dead letter, the sink would retry the poison batch
        // forever and never catch up.
        archived(&client).await;
        let status = client.status().await.unwrap();
        let sink = &status.sinks[0];
        assert_eq!(sink.rejected, 1, "{tag}: {sink:?}");
        assert!(
            sink.last_error
                .as_deref()
                .unwrap_or("")
                .contains("rejected iteration"),
            "{tag}: {sink:?}"
        );
        // Everything else is archived, in order.
        assert_eq!(
            replayed(&client, &Replay::default()).await,
            ordered(all),
            "{tag}"
        );
        // Operators see the count, and the event is kept whole on disk.
        let out = cli(&broker, &["status"], None);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("REJECTED"), "{text}");
        let letters =
            std::fs::read_to_string(broker.dir.path().join("sinks").join("archive.rejected"))
                .unwrap();
        let letter: serde_json::Value = serde_json::from_str(letters.trim()).unwrap();
        assert_eq!(letter["topic"], topic.as_str(), "{tag}");
        assert_eq!(letter["id"], poison[0].id.as_str(), "{tag}");
        assert_eq!(letter["payload_base64"], "cmVmdXNlZA==", "{tag}");
        drop(client);
        broker.stop();
        drop_tables(url, &table).await;
    }
}
