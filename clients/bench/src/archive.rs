//! The SQL archive: sustained ingest per database and payload size, the
//! archive's lag under a steady publish load, and replay speed to a client.
//!
//! Ingest: a broker without the archive logs `n` events; restarted with the
//! archive added, it catches up from its checkpoint 0, and the time until
//! the archive's lag is 0 gives the sustained ingest rate (nothing else
//! runs meanwhile). Replay: every archived event to one client. Lag: the
//! archive attached while a publisher holds a steady rate for 10 s.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::servers::{self, Server};
use crate::spread::Spread;
use crate::wire::{Publisher, System};
use crate::within;

/// The databases measured: (name, URL; `None` is SQLite in the data dir).
const DATABASES: &[(&str, Option<&str>)] = &[
    ("SQLite", None),
    (
        "PostgreSQL",
        Some("postgres://postgres@127.0.0.1:5432/test"),
    ),
    ("MariaDB", Some("mysql://root@127.0.0.1:3306/test")),
];

fn archive_config(dir: &Path, url: Option<&str>, table: &str) -> anyhow::Result<PathBuf> {
    let url = url.map(|u| format!("url = \"{u}\"\n")).unwrap_or_default();
    let path = dir.join("archive.toml");
    std::fs::write(
        &path,
        format!(
            "archive = \"off\"\n[[sinks]]\nname = \"archive\"\nbuiltin = \"sql-archive\"\n\
             batch_events = 16384\nbatch_bytes = 16777216\n[sinks.settings]\n{url}table = \"{table}\"\n"
        ),
    )?;
    Ok(path)
}

async fn drop_tables(url: &str, table: &str) -> anyhow::Result<()> {
    let mut conn = spread_sql_archive::db::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    spread_sql_archive::schema::drop(&mut conn, table)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Publishes `n` acknowledged events of `size` bytes over 1000 topics.
async fn load(spread: &Spread, n: u64, size: usize) -> anyhow::Result<()> {
    let mut publisher = spread.publisher().await?;
    let payload = vec![0x5a; size];
    let mut topic = String::new();
    for i in 0..n {
        topic.clear();
        use std::fmt::Write;
        let _ = write!(topic, "bench/{}/{}", i % 10, i % 100);
        publisher.queue(&topic, &payload);
        if i % 256 == 255 {
            publisher.flush().await?;
        }
    }
    publisher.finish().await
}

/// Waits until the archive sink has no lag; returns when.
async fn caught_up(spread: &Spread) -> anyhow::Result<Instant> {
    let mut probe = spread.probe().await?;
    loop {
        let r = probe.status().await?;
        let s = r.sinks.first().context("no archive sink")?;
        anyhow::ensure!(s.state != "failed", "archive failed: {:?}", s.last_error);
        if s.lag_events == 0 && s.state == "running" {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One database and payload size: (ingest events/s, replay events/s).
async fn ingest_and_replay(
    bin: &Path,
    base: &Path,
    tls: &tokio_rustls::TlsConnector,
    url: Option<&str>,
    table: &str,
    n: u64,
    size: usize,
) -> anyhow::Result<(f64, f64)> {
    let dir = crate::sinks::fresh(base, table)?;
    let start = |extra: &[&str]| -> anyhow::Result<(Server, Spread)> {
        let server = servers::start_spread_with(bin, &dir, "always", extra)?;
        let spread = Spread {
            addr: server.addr,
            tls: tls.clone(),
        };
        Ok((server, spread))
    };
    let (server, spread) = start(&[])?;
    within("archive load", load(&spread, n, size)).await?;
    server.stop()?;
    let cfg = archive_config(&dir, url, table)?;
    let started = Instant::now();
    let (server, spread) = start(&["--config", cfg.to_str().context("path")?])?;
    let done = within("archive ingest", caught_up(&spread)).await?;
    let ingest = n as f64 / done.duration_since(started).as_secs_f64();
    let mut probe = spread.probe().await?;
    let began = Instant::now();
    let replayed = within(
        "replay",
        probe.replay(spread_protocol::ReplayQuery::default()),
    )
    .await?;
    let replay = replayed as f64 / began.elapsed().as_secs_f64();
    anyhow::ensure!(replayed == n, "replayed {replayed} of {n} events");
    server.stop()?;
    if let Some(url) = url {
        drop_tables(url, table).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((ingest, replay))
}

/// The archive's lag while a publisher holds `rate` events/s for 10 s:
/// (median lag ms, max lag ms, max lag events).
async fn lag_under_load(
    bin: &Path,
    base: &Path,
    tls: &tokio_rustls::TlsConnector,
    url: Option<&str>,
    table: &str,
    rate: u64,
) -> anyhow::Result<(f64, u64, u64)> {
    let dir = crate::sinks::fresh(base, table)?;
    let cfg = archive_config(&dir, url, table)?;
    let server = servers::start_spread_with(
        bin,
        &dir,
        "always",
        &["--config", cfg.to_str().context("path")?],
    )?;
    let spread = Spread {
        addr: server.addr,
        tls: tls.clone(),
    };
    let mut publisher = spread.publisher().await?;
    let mut probe = spread.probe().await?;
    let payload = vec![0x5a; 128];
    let per_tick = rate / 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (mut lags_ms, mut max_events) = (Vec::new(), 0u64);
    let began = Instant::now();
    let mut i = 0u64;
    while began.elapsed() < Duration::from_secs(10) {
        tick.tick().await;
        for _ in 0..per_tick {
            publisher.queue(&format!("steady/{}", i % 1000), &payload);
            i += 1;
        }
        publisher.flush().await?;
        if i.is_multiple_of(per_tick * 10) {
            let r = probe.status().await?;
            if let Some(s) = r.sinks.first() {
                lags_ms.push(s.lag_ms as f64);
                max_events = max_events.max(s.lag_events);
            }
        }
    }
    publisher.finish().await?;
    caught_up(&spread).await?;
    server.stop()?;
    if let Some(url) = url {
        drop_tables(url, table).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let max_ms = lags_ms.iter().copied().fold(0.0, f64::max) as u64;
    Ok((crate::median(lags_ms), max_ms, max_events))
}

/// Runs the archive benchmark and prints Markdown tables.
pub async fn run(
    bin: &Path,
    base: &Path,
    tls: tokio_rustls::TlsConnector,
    n: u64,
    rate: u64,
) -> anyhow::Result<()> {
    println!("# spread-bench archive: {n} events per measurement, durability always");
    println!();
    println!("| database | payload | ingest events/s | replay events/s |");
    println!("|---|---:|---:|---:|");
    for (name, url) in DATABASES {
        for size in [128usize, 4096] {
            let table = format!(
                "bench_{}_{size}_{}",
                name.to_lowercase(),
                std::process::id()
            );
            // Fewer 4 KiB events: the same order of bytes as the 128 B runs.
            let count = if size > 1024 { (n / 8).max(1000) } else { n };
            let (ingest, replay) =
                ingest_and_replay(bin, base, &tls, *url, &table, count, size).await?;
            println!("| {name} | {size} B | {ingest:.0} | {replay:.0} |");
            eprintln!(
                "{name} {size} B: ingest {ingest:.0}/s, replay {replay:.0}/s ({count} events)"
            );
        }
    }
    println!();
    println!("Archive lag while publishing {rate} events/s (128 B) for 10 s:");
    println!();
    println!("| database | median lag | max lag | max lag (events) |");
    println!("|---|---:|---:|---:|");
    for (name, url) in DATABASES {
        let table = format!("bench_lag_{}_{}", name.to_lowercase(), std::process::id());
        let (p50, max_ms, max_events) = lag_under_load(bin, base, &tls, *url, &table, rate).await?;
        println!("| {name} | {p50:.0} ms | {max_ms} ms | {max_events} |");
    }
    Ok(())
}
