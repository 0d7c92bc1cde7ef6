//! Restart time: a log of many events over many topics, then how long the
//! broker takes to be listening again after a graceful stop (checkpoint at
//! shutdown), after a SIGKILL (last periodic checkpoint plus the log after
//! it), and with no checkpoint at all (the whole log replayed). Also the
//! memory the latest-value table takes per topic.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::servers::{self, Server};
use crate::spread::Spread;
use crate::wire::{Publisher, System};

/// Publishes `n` events spread over `topics` topics (two levels of up to
/// 1000), returning the acknowledged rate.
async fn load(spread: &Spread, n: u64, topics: u64, size: usize) -> anyhow::Result<f64> {
    let mut publisher = spread.publisher().await?;
    let payload = vec![0x5a; size];
    let start = Instant::now();
    let mut topic = String::new();
    for i in 0..n {
        let t = i % topics;
        topic.clear();
        use std::fmt::Write;
        let _ = write!(topic, "r/{}/{}", t / 1000, t % 1000);
        publisher.queue(&topic, &payload);
        if i % 256 == 255 {
            publisher.flush().await?;
        }
    }
    publisher.finish().await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn timed_start(bin: &Path, data: &Path, durability: &str) -> anyhow::Result<(Server, Duration)> {
    let started = Instant::now();
    let server = servers::start_spread(bin, data, durability)?;
    Ok((server, started.elapsed()))
}

/// Runs the restart benchmark and prints a Markdown table.
pub async fn run(
    bin: &Path,
    data: &Path,
    durability: &str,
    tls: tokio_rustls::TlsConnector,
    events: u64,
    topics: u64,
    size: usize,
) -> anyhow::Result<()> {
    let (server, _) = timed_start(bin, data, durability)?;
    let baseline = server.rss().unwrap_or(0);
    let spread = Spread {
        addr: server.addr,
        tls: tls.clone(),
    };
    let rate = load(&spread, events, topics, size).await?;
    let loaded = server.rss().unwrap_or(0);
    let per_topic = loaded.saturating_sub(baseline) as f64 / topics as f64;
    eprintln!(
        "loaded {events} events over {topics} topics at {rate:.0}/s; {per_topic:.0} B of memory per topic"
    );

    let stopping = Instant::now();
    server.stop()?;
    let stop_time = stopping.elapsed();
    let (server, graceful) = timed_start(bin, data, durability)?;
    eprintln!("restart after a graceful stop: {graceful:?}");

    // A tail after the shutdown checkpoint, then a crash.
    let spread = Spread {
        addr: server.addr,
        tls: tls.clone(),
    };
    let tail = (events / 20).max(1);
    load(&spread, tail, topics, size).await?;
    drop(server); // SIGKILL
    let (server, crashed) = timed_start(bin, data, durability)?;
    eprintln!("restart after SIGKILL with {tail} events after the checkpoint: {crashed:?}");
    server.stop()?;

    let checkpoint = data.join("log").join("checkpoint");
    std::fs::remove_file(&checkpoint).with_context(|| {
        let files: Vec<String> = std::fs::read_dir(data.join("log"))
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "{} (the log directory holds {files:?})",
            checkpoint.display()
        )
    })?;
    let (server, full) = timed_start(bin, data, durability)?;
    eprintln!("restart replaying the whole log: {full:?}");
    drop(server);

    let log_bytes: u64 = std::fs::read_dir(data.join("log"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| events in the log | {} |", events + tail);
    println!("| topics | {topics} |");
    println!("| log size on disk | {} MiB |", log_bytes / (1024 * 1024));
    println!("| acknowledged load rate | {rate:.0} events/s |");
    println!("| latest-value table memory per topic | {per_topic:.0} B |");
    println!(
        "| graceful stop (final checkpoint included) | {:.2} s |",
        stop_time.as_secs_f64()
    );
    println!(
        "| restart after a graceful stop | {:.2} s |",
        graceful.as_secs_f64()
    );
    println!(
        "| restart after SIGKILL ({tail} events after the last checkpoint) | {:.2} s |",
        crashed.as_secs_f64()
    );
    println!(
        "| restart without a checkpoint (whole log replayed) | {:.2} s |",
        full.as_secs_f64()
    );
    Ok(())
}
