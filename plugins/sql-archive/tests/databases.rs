//! The archive against real databases: SQLite in a temporary directory and
//! the PostgreSQL and MariaDB servers on this machine (database `test`).
//! Each test uses its own tables and drops them.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use spread_plugin::{Archive, Cursor, Event, Kind, OpenContext, OwnedEvent, Query, Sink};
use spread_sql_archive::{db, SqlArchive, SqlSink};

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

/// A table name no other test (or test run) uses.
fn table(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t_{tag}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every backend: (name, url), SQLite in `dir`.
fn backends(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("sqlite", format!("sqlite://{}", dir.join("a.db").display())),
        ("postgres", POSTGRES.to_string()),
        ("mariadb", MARIADB.to_string()),
    ]
}

fn settings(url: &str, table: &str) -> String {
    format!(r#"{{"url": "{url}", "table": "{table}"}}"#)
}

fn ctx<'a>(config: &'a str, dir: &'a Path) -> OpenContext<'a> {
    OpenContext {
        name: "archive",
        config_json: config,
        node: "node-a",
        data_dir: dir,
    }
}

/// Drops the test's tables.
fn drop_tables(url: &str, table: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = db::connect(url).await.unwrap();
        spread_sql_archive::schema::drop(&mut conn, table)
            .await
            .unwrap();
    });
}

/// `n` events over topics `a/b`, `a/b/c`, `a/bc`, `z/<i>`, with tombstones
/// and binary payloads; timestamps repeat so origin and id break ties.
fn events(n: u64) -> Vec<OwnedEvent> {
    (0..n)
        .map(|i| {
            let topic = match i % 4 {
                0 => "a/b".to_string(),
                1 => "a/b/c".to_string(),
                2 => "a/bc".to_string(),
                _ => format!("z/{i}"),
            };
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            id[8] = 0xee;
            OwnedEvent {
                iteration: 1000 + i,
                timestamp: 1_000_000 + i / 3,
                topic,
                payload: if i % 10 == 9 {
                    Vec::new()
                } else {
                    vec![0, 0xff, b'\t', (i % 251) as u8]
                },
                origin: format!("origin-{}", i % 3),
                node: "node-a".into(),
                id,
                kind: if i % 10 == 9 {
                    Kind::Tombstone
                } else {
                    Kind::Value
                },
            }
        })
        .collect()
}

fn query_all(archive: &SqlArchive, q: &Query) -> Vec<OwnedEvent> {
    let mut cursor = archive.query(q).unwrap();
    let mut out = Vec::new();
    loop {
        let mut page = Vec::new();
        cursor.next_page(&mut page).unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn cmrdt_order(events: &mut [OwnedEvent]) {
    events.sort_by(|a, b| (a.timestamp, &a.origin, a.id).cmp(&(b.timestamp, &b.origin, b.id)));
}

#[test]
fn every_event_once_and_queries_in_order_with_whole_segment_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, url) in backends(dir.path()) {
        let table = table(name);
        let config = settings(&url, &table);
        let all = events(12_000);
        let mut sink = SqlSink::open(&ctx(&config, dir.path())).unwrap();
        let views: Vec<Event<'_>> = all.iter().map(OwnedEvent::as_event).collect();
        // Three batches, then the middle one again (a redelivery).
        let mut inserted = 0;
        for chunk in [&views[..5000], &views[5000..9000], &views[9000..]] {
            inserted += sink.insert(chunk).unwrap();
        }
        assert_eq!(inserted, 12_000, "{name}");
        // MySQL counts found rows too; the queries below show no duplicate.
        let again = sink.insert(&views[4000..9000]).unwrap();
        assert_eq!(again, if name == "mariadb" { 5000 } else { 0 }, "{name}");
        sink.flush().unwrap();
        drop(sink);

        let archive = SqlArchive::open(&ctx(&config, dir.path())).unwrap();
        let mut want = all.clone();
        cmrdt_order(&mut want);
        // Everything, in CmRDT order, across pages.
        assert_eq!(query_all(&archive, &Query::default()), want, "{name}");
        // `a/b` covers a/b and a/b/c, never a/bc.
        let q = Query {
            prefixes: vec!["a/b".into()],
            ..Query::default()
        };
        let got = query_all(&archive, &q);
        let expect: Vec<OwnedEvent> = want
            .iter()
            .filter(|e| e.topic == "a/b" || e.topic == "a/b/c")
            .cloned()
            .collect();
        assert_eq!(got, expect, "{name}: prefix");
        // Several prefixes, a time range, an iteration range and a limit.
        let q = Query {
            prefixes: vec!["a/bc".into(), "z".into()],
            from_time: Some(1_000_100),
            to_time: Some(1_001_000),
            from_iteration: Some(1500),
            to_iteration: Some(3000),
            limit: Some(100),
            ..Query::default()
        };
        let expect: Vec<OwnedEvent> = want
            .iter()
            .filter(|e| q.matches(&e.as_event()))
            .take(100)
            .cloned()
            .collect();
        assert_eq!(expect.len(), 100);
        assert_eq!(query_all(&archive, &q), expect, "{name}: ranges");
        // Another node's events are not this node's.
        let q = Query {
            node: Some("node-b".into()),
            ..Query::default()
        };
        assert!(query_all(&archive, &q).is_empty());
        drop(archive);
        drop_tables(&url, &table);
    }
}

#[test]
fn migrations_run_at_every_open_and_by_several_brokers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for (name, url) in backends(dir.path()) {
        let table = table(name);
        let config = settings(&url, &table);
        let d = dir.path();
        std::thread::scope(|s| {
            let opens: Vec<_> = (0..3)
                .map(|_| s.spawn(|| SqlSink::open(&ctx(&config, d)).map(|_| ())))
                .collect();
            for o in opens {
                o.join().unwrap().unwrap();
            }
        });
        // Opening again changes nothing and writing works.
        let mut sink = SqlSink::open(&ctx(&config, d)).unwrap();
        let all = events(10);
        let views: Vec<Event<'_>> = all.iter().map(OwnedEvent::as_event).collect();
        assert_eq!(sink.insert(&views).unwrap(), 10, "{name}");
        drop(sink);
        drop_tables(&url, &table);
    }
}

#[test]
fn bad_settings_are_fatal() {
    let dir = tempfile::tempdir().unwrap();
    for config in [
        r#"{"url": "redis://x"}"#,
        r#"{"table": "x; drop table y"}"#,
        r#"{"nonsense": 1}"#,
    ] {
        match SqlSink::open(&ctx(config, dir.path())) {
            Err(spread_plugin::Error::Fatal(_)) => {}
            Err(e) => panic!("{config}: {e}"),
            Ok(_) => panic!("{config}: opened"),
        }
    }
    // With no settings, the archive is SQLite in the data dir.
    let sink = SqlSink::open(&ctx("{}", dir.path())).unwrap();
    drop(sink);
    assert!(dir.path().join("archive.db").exists());
}

#[test]
fn events_with_one_id_on_two_topics_are_both_kept() {
    // A client may reuse an id (and timestamp) on several topics: the
    // broker applies each, so the archive must keep each.
    let dir = tempfile::tempdir().unwrap();
    for (name, url) in backends(dir.path()) {
        let table = table(name);
        let config = settings(&url, &table);
        let mut all = events(2);
        all[1].id = all[0].id;
        all[1].timestamp = all[0].timestamp;
        all[1].origin = all[0].origin.clone();
        all[1].topic = "other/topic".into();
        let mut sink = SqlSink::open(&ctx(&config, dir.path())).unwrap();
        let views: Vec<Event<'_>> = all.iter().map(OwnedEvent::as_event).collect();
        assert_eq!(sink.insert(&views).unwrap(), 2, "{name}");
        // Redelivered: still skipped (MySQL counts found rows).
        let again = sink.insert(&views).unwrap();
        assert_eq!(again, if name == "mariadb" { 2 } else { 0 }, "{name}");
        drop(sink);
        let archive = SqlArchive::open(&ctx(&config, dir.path())).unwrap();
        let mut got = query_all(&archive, &Query::default());
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        all.sort_by(|a, b| a.topic.cmp(&b.topic));
        assert_eq!(got, all, "{name}");
        drop(archive);
        drop_tables(&url, &table);
    }
}

/// An event no database of its backend can store: PostgreSQL refuses NUL
/// in text (such topics are refused at publish now, but older logs may
/// hold them), MariaDB a topic longer than its column and a row above its
/// `max_allowed_packet`.
fn poison(name: &str, template: &OwnedEvent) -> Vec<OwnedEvent> {
    let with = |f: &dyn Fn(&mut OwnedEvent)| {
        let mut e = template.clone();
        e.id[15] ^= 0x55;
        f(&mut e);
        e
    };
    match name {
        "postgres" => vec![with(&|e| e.topic = "a\0b".into())],
        "mariadb" => vec![
            with(&|e| e.topic = "t/".to_string() + &"x".repeat(1100)),
            with(&|e| e.payload = vec![7; 17 << 20]),
        ],
        _ => vec![],
    }
}

#[test]
fn events_the_database_refuses_are_rejected_and_the_rest_stored() {
    let dir = tempfile::tempdir().unwrap();
    for (name, url) in backends(dir.path()) {
        let table = table(name);
        let config = settings(&url, &table);
        let good = events(2);
        let mut sink = SqlSink::open(&ctx(&config, dir.path())).unwrap();
        for bad in poison(name, &good[0]) {
            let batch = [good[0].clone(), bad.clone(), good[1].clone()];
            let views: Vec<Event<'_>> = batch.iter().map(OwnedEvent::as_event).collect();
            match sink.insert(&views) {
                Err(spread_plugin::Error::Rejected(m)) => eprintln!("{name}: {m}"),
                other => panic!("{name}: {other:?} for {:.60}", bad.topic),
            }
            let alone = [bad.as_event()];
            assert!(
                matches!(sink.insert(&alone), Err(spread_plugin::Error::Rejected(_))),
                "{name}"
            );
        }
        // Nothing of a rejected batch was stored; the good events go in.
        let views: Vec<Event<'_>> = good.iter().map(OwnedEvent::as_event).collect();
        assert_eq!(sink.insert(&views).unwrap(), 2, "{name}");
        drop(sink);
        drop_tables(&url, &table);
    }
}

#[test]
fn version_1_archives_are_rekeyed_with_the_topic_and_keep_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (name, url) in backends(dir.path()) {
        let table = table(name);
        let config = settings(&url, &table);
        let old = events(3);
        rt.block_on(async {
            let mut conn = db::connect(&url).await.unwrap();
            spread_sql_archive::schema::migrate_to(&mut conn, &table, 1)
                .await
                .unwrap();
            let insert = |mark: &dyn Fn(usize) -> String| {
                let marks: Vec<String> = (1..=8).map(mark).collect();
                format!(
                    "INSERT INTO {table} (id, node, iteration, topic, timestamp_us, origin, \
                     kind, payload, archived_at_us) VALUES ({}, 1)",
                    marks.join(", ")
                )
            };
            for e in &old {
                macro_rules! run {
                    ($c:expr, $sql:expr) => {
                        sqlx::query(sqlx::AssertSqlSafe($sql))
                            .bind(e.id.to_vec())
                            .bind(e.node.clone())
                            .bind(e.iteration as i64)
                            .bind(e.topic.clone())
                            .bind(e.timestamp as i64)
                            .bind(e.origin.clone())
                            .bind(i16::from(e.kind.to_byte()))
                            .bind(e.payload.clone())
                            .execute(&mut *$c)
                            .await
                            .unwrap()
                    };
                }
                match &mut conn {
                    db::Db::Pg(c) => {
                        run!(c, insert(&|i| format!("${i}")));
                    }
                    db::Db::My(c) => {
                        run!(c, insert(&|_| "?".into()));
                    }
                    db::Db::Lite(c) => {
                        run!(c, insert(&|_| "?".into()));
                    }
                }
            }
        });
        // Opening migrates to version 2; the rows are still there, and a
        // redelivery of them is still skipped.
        let mut sink = SqlSink::open(&ctx(&config, dir.path())).unwrap();
        let views: Vec<Event<'_>> = old.iter().map(OwnedEvent::as_event).collect();
        sink.insert(&views).unwrap();
        let mut twin = old[0].clone();
        twin.topic = "twin".into();
        assert_eq!(sink.insert(&[twin.as_event()]).unwrap(), 1, "{name}");
        drop(sink);
        let archive = SqlArchive::open(&ctx(&config, dir.path())).unwrap();
        let mut got = query_all(&archive, &Query::default());
        let mut want = old.clone();
        want.push(twin);
        got.sort_by(|a, b| (a.iteration, &a.topic).cmp(&(b.iteration, &b.topic)));
        want.sort_by(|a, b| (a.iteration, &a.topic).cmp(&(b.iteration, &b.topic)));
        assert_eq!(got, want, "{name}");
        drop(archive);
        drop_tables(&url, &table);
    }
}
