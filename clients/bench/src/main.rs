//! `spread-bench`: Spread against NATS on the same machine, both over TLS,
//! measured in the same run by the same lean clients.
//!
//! It starts a release `spread-broker` (which generates its TLS material)
//! and a `nats-server` using that same certificate, then runs each workload
//! against both and prints a Markdown table of results and ratios.

mod nats;
mod servers;
mod spread;
mod stats;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use stats::{Latency, Throughput};
use tokio_rustls::TlsConnector;
use wire::{Publisher, Subscriber, System};

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(
    name = "spread-bench",
    about = "Spread vs NATS over TLS on this machine"
)]
struct Args {
    /// The spread-broker binary [default: next to this executable].
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// The nats-server binary.
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_bin: PathBuf,
    /// Messages in the 1-to-1 run.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Messages in the fan-out run.
    #[arg(long, default_value_t = 100_000)]
    fanout_messages: u64,
    /// Subscribers in the fan-out run.
    #[arg(long, default_value_t = 16)]
    subscribers: usize,
    /// Payload size in bytes (at least 8).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Message rate of the latency run.
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,
    /// Duration of the latency run, in seconds.
    #[arg(long, default_value_t = 5)]
    latency_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.size >= 8,
        "--size must be at least 8 (latency timestamps)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let data = tempfile_dir()?;
    let broker_bin = args
        .broker_bin
        .clone()
        .unwrap_or_else(servers::default_broker_bin);
    let broker = servers::start_spread(&broker_bin, &data)?;
    let tls_dir = data.join("tls");
    let nats_server = servers::start_nats(
        &args.nats_bin,
        &tls_dir.join("server.pem"),
        &tls_dir.join("server-key.pem"),
    )?;
    let tls = connector(&tls_dir.join("ca.pem"))?;
    let spread = spread::Spread {
        addr: broker.addr,
        tls: tls.clone(),
    };
    let nats = nats::Nats {
        addr: nats_server.addr,
        tls,
    };

    println!(
        "# spread-bench: {} B payloads, TLS on both, {} cores",
        args.size,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();

    let (s, n) = (
        throughput(&spread, "t1", 1, args.messages, args.size).await?,
        throughput(&nats, "t1", 1, args.messages, args.size).await?,
    );
    rows.push(row("1 → 1 msgs/s", s.rate(), n.rate()));
    rows.push(row("1 → 1 MB/s received", s.mb_per_s(), n.mb_per_s()));

    let (s, n) = (
        throughput(
            &spread,
            "t16",
            args.subscribers,
            args.fanout_messages,
            args.size,
        )
        .await?,
        throughput(
            &nats,
            "t16",
            args.subscribers,
            args.fanout_messages,
            args.size,
        )
        .await?,
    );
    let label = format!("1 → {} msgs/s delivered", args.subscribers);
    rows.push(row(&label, s.rate(), n.rate()));

    let (s, n) = (
        latency(
            &spread,
            "lat",
            args.latency_rate,
            args.latency_seconds,
            args.size,
        )
        .await?,
        latency(
            &nats,
            "lat",
            args.latency_rate,
            args.latency_seconds,
            args.size,
        )
        .await?,
    );
    let r = args.latency_rate;
    rows.push(row(&format!("latency p50 µs @ {r}/s"), s.p50, n.p50));
    rows.push(row(&format!("latency p99 µs @ {r}/s"), s.p99, n.p99));
    rows.push(row(&format!("latency p99.9 µs @ {r}/s"), s.p999, n.p999));

    println!();
    println!("| workload | Spread | NATS | Spread ÷ NATS |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!(
        "Ratios above 1 favour Spread for rates; for latencies, below 1 does. Broker RSS at the end: {} MiB.",
        broker.rss().unwrap_or(0) / (1024 * 1024)
    );
    drop(nats_server);
    drop(broker);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

fn row(label: &str, spread: f64, nats: f64) -> String {
    format!(
        "| {label} | {} | {} | {:.2} |",
        human(spread),
        human(nats),
        spread / nats
    )
}

fn human(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.1}", v)
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("spread-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    Ok(dir)
}

fn connector(ca: &std::path::Path) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One publisher, `subs` subscribers, `n` messages: rate from the first
/// publish to the last message received by the last subscriber.
async fn throughput<S: System>(
    sys: &S,
    run: &str,
    subs: usize,
    n: u64,
    size: usize,
) -> anyhow::Result<Throughput> {
    let topic = format!("bench/{run}");
    let mut tasks = Vec::new();
    for _ in 0..subs {
        let mut sub = sys.subscriber(&topic).await?;
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            let mut bytes = 0u64;
            while got < n {
                got += sub.next_batch(&mut |p| bytes += p.len() as u64).await? as u64;
            }
            anyhow::Ok((Instant::now(), bytes))
        }));
    }
    let mut publisher = sys.publisher().await?;
    let payload = vec![0x5a; size];
    let start = Instant::now();
    for i in 0..n {
        publisher.queue(&topic, &payload);
        if i % 256 == 255 {
            publisher.flush().await?;
        }
    }
    publisher.finish().await?;
    let mut end = start;
    let mut bytes = 0;
    for t in tasks {
        let (e, b) = t.await??;
        end = end.max(e);
        bytes += b;
    }
    let t = Throughput {
        messages: n * subs as u64,
        bytes,
        elapsed: end - start,
    };
    eprintln!(
        "{} 1→{subs}: {:.0} msgs/s, {:.1} MB/s",
        sys.name(),
        t.rate(),
        t.mb_per_s()
    );
    Ok(t)
}

/// Publish-to-receive latency at a fixed rate (the first 10% is warm-up).
async fn latency<S: System>(
    sys: &S,
    run: &str,
    rate: u64,
    secs: u64,
    size: usize,
) -> anyhow::Result<Latency> {
    let topic = format!("bench/{run}");
    let n = (rate * secs) as usize;
    let base = Instant::now();
    let mut sub = sys.subscriber(&topic).await?;
    let task = tokio::spawn(async move {
        let mut samples: Vec<u64> = Vec::with_capacity(n);
        while samples.len() < n {
            sub.next_batch(&mut |p| {
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&p[..8]);
                let sent = u64::from_le_bytes(ts);
                samples.push((base.elapsed().as_nanos() as u64).saturating_sub(sent));
            })
            .await?;
        }
        anyhow::Ok(samples)
    });
    let mut publisher = sys.publisher().await?;
    let mut payload = vec![0x5a; size];
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0usize;
    while sent < n {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize).min(n);
        while sent < due {
            payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
            publisher.queue(&topic, &payload);
            sent += 1;
        }
        publisher.flush().await?;
    }
    publisher.finish().await?;
    let mut samples = task.await??;
    let warm = samples.len() / 10;
    let l = Latency::from_nanos(&mut samples[warm..]);
    eprintln!(
        "{} latency @ {rate}/s: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs ({} samples)",
        sys.name(),
        l.p50,
        l.p99,
        l.p999,
        l.samples
    );
    Ok(l)
}
