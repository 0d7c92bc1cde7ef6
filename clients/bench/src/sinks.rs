//! Sinks: what attaching a no-op dynamic sink plugin costs publishers, how
//! fast one sink drains what publishers left behind, and how fast a sink
//! added to a broker with history catches up (the rate one sink receives).
//!
//! Each run uses fresh data dirs; JetStream's acknowledged publishes are
//! measured in the same run as the peer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::nats::Nats;
use crate::servers::{self, Server};
use crate::spread::Spread;
use crate::{acked, median, row, within};

/// The no-op plugin built next to this executable (`cargo build --release
/// -p spread-example-null-sink`).
pub fn default_null_sink() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    dir.join("deps").join("libspread_example_null_sink.so")
}

/// A config file with one no-op sink.
fn config(dir: &Path, lib: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("sinks.toml");
    std::fs::write(
        &path,
        format!(
            "[[sinks]]\nname = \"null\"\nlibrary = \"{}\"\n",
            lib.display()
        ),
    )?;
    Ok(path)
}

/// Waits until the sink has consumed everything committed; returns when.
async fn drained(spread: &Spread) -> anyhow::Result<Instant> {
    let mut probe = spread.probe().await?;
    loop {
        let r = probe.status().await?;
        let sink = r.sinks.first().context("no sink in the status report")?;
        anyhow::ensure!(
            sink.state != "failed",
            "the sink failed: {:?}",
            sink.last_error
        );
        if sink.lag_events == 0 && sink.state == "running" {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A fresh data dir under `base` sharing `base`'s TLS material.
pub fn fresh(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Every data dir shares the first one's TLS material.
    let tls = base.join("tls");
    let dst = dir.join("tls");
    std::fs::create_dir_all(&dst)?;
    for entry in std::fs::read_dir(&tls)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dst.join(entry.file_name()))?;
    }
    Ok(dir)
}

/// Runs the sink benchmark and prints a Markdown table.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    bin: &Path,
    base: &Path,
    durability: &str,
    tls: tokio_rustls::TlsConnector,
    nats: &Nats,
    lib: &Path,
    n: u64,
    size: usize,
    runs: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        lib.exists(),
        "{} not found: build it with `cargo build --release -p spread-example-null-sink` or pass --sink-lib",
        lib.display()
    );
    let (mut none, mut with, mut drain, mut catch_up, mut js) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let start = |dir: &Path, extra: &[&str]| -> anyhow::Result<(Server, Spread)> {
        let server = servers::start_spread_with(bin, dir, durability, extra)?;
        let spread = Spread {
            addr: server.addr,
            tls: tls.clone(),
        };
        Ok((server, spread))
    };
    for run in 0..runs {
        // No sink.
        let plain = fresh(base, &format!("plain-{run}"))?;
        let (server, spread) = start(&plain, &[])?;
        none.push(within("publish, no sink", acked::spread(&spread, n, size)).await?);
        server.stop()?;
        // A no-op dynamic sink attached while publishing.
        let dir = fresh(base, &format!("sink-{run}"))?;
        let cfg = config(&dir, lib)?;
        let (server, spread) = start(&dir, &["--config", cfg.to_str().context("path")?])?;
        with.push(within("publish, null sink", acked::spread(&spread, n, size)).await?);
        let done = Instant::now();
        let at = within("sink drain", drained(&spread)).await?;
        drain.push(at.duration_since(done).as_secs_f64() * 1000.0);
        server.stop()?;
        // The same sink added to the broker that has `n` events of history.
        let cfg = config(&plain, lib)?;
        let started = Instant::now();
        let (server, spread) = start(&plain, &["--config", cfg.to_str().context("path")?])?;
        let at = within("sink catch-up", drained(&spread)).await?;
        catch_up.push(n as f64 / at.duration_since(started).as_secs_f64());
        server.stop()?;
        js.push(within("JetStream acked", acked::jetstream(nats, n, size)).await?);
        eprintln!(
            "run {run}: no sink {:.0}/s, null sink {:.0}/s, drain {:.1} ms, catch-up {:.0}/s, JetStream {:.0}/s",
            none[run], with[run], drain[run], catch_up[run], js[run]
        );
        let _ = std::fs::remove_dir_all(&plain);
        let _ = std::fs::remove_dir_all(&dir);
    }
    // The machine's speed drifts between runs: each run's ratio compares
    // two measurements taken back to back.
    let paired = median(with.iter().zip(&none).map(|(w, n)| w / n).collect());
    let (none, with, js) = (median(none), median(with), median(js));
    println!(
        "# spread-bench sinks: {n} acked publishes of {size} B, durability {durability}, median of {runs} runs"
    );
    println!();
    println!("| workload | Spread | peer | Spread ÷ peer |");
    println!("|---|---:|---:|---:|");
    println!(
        "{}",
        row(
            "acked publish msgs/s with a no-op dynamic sink — peer: Spread without sinks",
            with,
            none
        )
    );
    println!(
        "{}",
        row(
            "acked publish msgs/s with a no-op dynamic sink — peer: JetStream, file storage, TLS",
            with,
            js
        )
    );
    println!("{}", row("sink catch-up events/s (sink added over existing history) — peer: JetStream acked publishes", median(catch_up.clone()), js));
    println!();
    println!(
        "Median of the per-run ratios (with sink ÷ without, measured back to back): {paired:.2}."
    );
    println!(
        "After the last acknowledgement, the attached sink had everything within {:.1} ms (median).",
        median(drain)
    );
    Ok(())
}
