//! `spread-bench`: Spread against NATS on the same machine, both over TLS,
//! measured in the same run by the same lean clients.
//!
//! It starts a release `spread-broker` (which generates its TLS material)
//! and a `nats-server` using that same certificate, then runs each workload
//! against both and prints a Markdown table of results and ratios.

mod acked;
mod apps;
mod archive;
mod cluster;
mod connections;
mod mqtt;
mod nats;
mod restart;
mod resync;
mod servers;
mod sinks;
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
    /// Messages in the acknowledged-publish run (vs JetStream and MQTT QoS 1).
    #[arg(long, default_value_t = 200_000)]
    acked_messages: u64,
    /// Mosquitto address for the MQTT QoS 1 comparison (plain TCP).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mosquitto: String,
    /// Instead of the workloads: the restart benchmark with this many events.
    #[arg(long, default_value_t = 0)]
    restart_events: u64,
    /// Topics of the restart benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    restart_topics: u64,
    /// Instead of the workloads: the replication benchmark (a three-node
    /// mesh against one node) with this many acknowledged publishes.
    #[arg(long, default_value_t = 0)]
    cluster_events: u64,
    /// Instead of the workloads: the resync benchmark (two nodes, a cut
    /// link) over this many topics.
    #[arg(long, default_value_t = 0)]
    resync_topics: u64,
    /// Topics changed during the cut of the resync benchmark.
    #[arg(long, default_value_t = 1000)]
    resync_changed: u64,
    /// Instead of the workloads: the sink benchmark with this many publishes.
    #[arg(long, default_value_t = 0)]
    sink_events: u64,
    /// Instead of the workloads: the archive benchmark with this many events per measurement.
    #[arg(long, default_value_t = 0)]
    archive_events: u64,
    /// Publish rate of the archive lag measurement.
    #[arg(long, default_value_t = 100_000)]
    archive_rate: u64,
    /// The no-op sink plugin [default: deps/libspread_example_null_sink.so next to this executable].
    #[arg(long)]
    sink_lib: Option<PathBuf>,
    /// Instead of the workloads: both systems through their own client
    /// libraries (spread-client against the default broker and with the
    /// archive off; async-nats), 1 → 1 with this many messages, and the
    /// latency at `--latency-rate`.
    #[arg(long, default_value_t = 0)]
    sdk_messages: u64,
    /// Instead of the workloads: this many subscriber connections of one
    /// topic on each system (through spread-client and async-nats), one
    /// publisher at `--connections-rate`.
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Publish rate of the `--connections` workload.
    #[arg(long, default_value_t = 1_000)]
    connections_rate: u64,
    /// Duration of the `--connections` workload's publishing, in seconds.
    #[arg(long, default_value_t = 5)]
    connections_seconds: u64,
    /// Durability policy of the Spread broker's event log.
    #[arg(long, default_value = "always")]
    durability: String,
    /// Repetitions of each workload (alternating systems); the median counts.
    #[arg(long, default_value_t = 3)]
    runs: usize,
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
    if args.restart_events > 0 {
        // The first start creates the TLS material the client trusts.
        drop(servers::start_spread(&broker_bin, &data, &args.durability)?);
        let tls = connector(&data.join("tls").join("ca.pem"))?;
        return cleaning_up(
            &data,
            restart::run(
                &broker_bin,
                &data,
                &args.durability,
                tls,
                args.restart_events,
                args.restart_topics.max(1),
                args.size,
            ),
        )
        .await;
    }
    let broker = servers::start_spread(&broker_bin, &data, &args.durability)?;
    let tls_dir = data.join("tls");
    if args.resync_topics > 0 {
        drop(broker);
        let tls = connector(&tls_dir.join("ca.pem"))?;
        return cleaning_up(
            &data,
            resync::run(
                &broker_bin,
                &data,
                tls,
                args.resync_topics,
                args.resync_changed,
                args.size,
            ),
        )
        .await;
    }
    // The peer's servers present the certificate the broker generated.
    let (nats_cert, nats_key) = (tls_dir.join("server.pem"), tls_dir.join("server-key.pem"));
    let nats = cluster::NatsSetup {
        bin: &args.nats_bin,
        cert: &nats_cert,
        key: &nats_key,
    };
    if args.cluster_events > 0 {
        drop(broker);
        let tls = connector(&tls_dir.join("ca.pem"))?;
        return cleaning_up(
            &data,
            cluster::run(
                &broker_bin,
                &data,
                &args.durability,
                tls,
                args.cluster_events,
                args.size,
                &nats,
            ),
        )
        .await;
    }
    if args.connections > 0 {
        drop(broker);
        return cleaning_up(
            &data,
            connections::run(
                &broker_bin,
                &data,
                &nats,
                args.connections,
                args.connections_rate,
                args.connections_seconds,
                args.size,
            ),
        )
        .await;
    }
    if args.sdk_messages > 0 {
        drop(broker);
        return cleaning_up(
            &data,
            apps::run(
                &broker_bin,
                &data,
                &nats,
                args.sdk_messages,
                args.size,
                args.runs.max(1),
                args.latency_rate,
                args.latency_seconds,
                &args.mosquitto,
            ),
        )
        .await;
    }
    if args.archive_events > 0 {
        drop(broker);
        let tls = connector(&tls_dir.join("ca.pem"))?;
        return cleaning_up(
            &data,
            archive::run(
                &broker_bin,
                &data,
                tls,
                args.archive_events,
                args.archive_rate,
            ),
        )
        .await;
    }
    let nats_server = servers::start_nats(nats.bin, nats.cert, nats.key, &data.join("jetstream"))?;
    if args.sink_events > 0 {
        drop(broker);
        let tls = connector(&tls_dir.join("ca.pem"))?;
        let nats = nats::Nats {
            addr: nats_server.addr,
            tls: tls.clone(),
        };
        let lib = args
            .sink_lib
            .clone()
            .unwrap_or_else(sinks::default_null_sink);
        let result = sinks::run(
            &broker_bin,
            &data,
            &args.durability,
            tls,
            &nats,
            &lib,
            args.sink_events,
            args.size,
            args.runs.max(1),
        )
        .await;
        drop(nats_server);
        let _ = std::fs::remove_dir_all(&data);
        return result;
    }
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
        "# spread-bench: {} B payloads, TLS on both, {} cores, median of {} runs, Spread log durability {}",
        args.size,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.runs.max(1),
        args.durability
    );
    let mut rows = Vec::new();

    let runs = args.runs.max(1);
    let mut t1 = (Vec::new(), Vec::new());
    let mut t16 = (Vec::new(), Vec::new());
    let mut lat = (Vec::new(), Vec::new());
    let mut acked_runs = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let (n1, n16, nl) = (
            format!("t1-{run}"),
            format!("t16-{run}"),
            format!("lat-{run}"),
        );
        let (subs, m, size) = (args.subscribers, args.fanout_messages, args.size);
        let run = throughput(&spread, &n1, 1, args.messages, size);
        t1.0.push(within("Spread 1→1", measured(&broker, run)).await?);
        let run = throughput(&nats, &n1, 1, args.messages, size);
        t1.1.push(within("NATS 1→1", measured(&nats_server, run)).await?);
        let run = throughput(&spread, &n16, subs, m, size);
        t16.0
            .push(within("Spread fan-out", measured(&broker, run)).await?);
        let run = throughput(&nats, &n16, subs, m, size);
        t16.1
            .push(within("NATS fan-out", measured(&nats_server, run)).await?);
        let (r, secs) = (args.latency_rate, args.latency_seconds);
        lat.0
            .push(within("Spread latency", latency(&spread, &nl, r, secs, args.size)).await?);
        lat.1
            .push(within("NATS latency", latency(&nats, &nl, r, secs, args.size)).await?);
        let (n, size) = (args.acked_messages, args.size);
        acked_runs
            .0
            .push(within("Spread acked", acked::spread(&spread, n, size)).await?);
        acked_runs
            .1
            .push(within("JetStream acked", acked::jetstream(&nats, n, size)).await?);
        acked_runs.2.push(
            within(
                "Mosquitto acked",
                acked::mqtt_qos1(&args.mosquitto, n, size),
            )
            .await?,
        );
        eprintln!(
            "acked publishes: Spread {:.0}/s, JetStream {:.0}/s, Mosquitto QoS 1 {:.0}/s",
            acked_runs.0.last().copied().unwrap_or(0.0),
            acked_runs.1.last().copied().unwrap_or(0.0),
            acked_runs.2.last().copied().unwrap_or(0.0)
        );
    }
    let med = |v: &[Throughput], f: fn(&Throughput) -> f64| median(v.iter().map(f).collect());
    let medl = |v: &[Latency], f: fn(&Latency) -> f64| median(v.iter().map(f).collect());
    rows.push(row(
        "1 → 1 msgs/s",
        med(&t1.0, Throughput::rate),
        med(&t1.1, Throughput::rate),
    ));
    rows.push(row(
        "1 → 1 MB/s received",
        med(&t1.0, Throughput::mb_per_s),
        med(&t1.1, Throughput::mb_per_s),
    ));
    rows.push(row(
        "1 → 1 server CPU µs per message",
        med(&t1.0, Throughput::cpu_per_message),
        med(&t1.1, Throughput::cpu_per_message),
    ));
    let label = format!("1 → {} msgs/s delivered", args.subscribers);
    rows.push(row(
        &label,
        med(&t16.0, Throughput::rate),
        med(&t16.1, Throughput::rate),
    ));
    rows.push(row(
        &format!("1 → {} server CPU µs per delivery", args.subscribers),
        med(&t16.0, Throughput::cpu_per_message),
        med(&t16.1, Throughput::cpu_per_message),
    ));
    let r = args.latency_rate;
    rows.push(row(
        &format!("latency p50 µs @ {r}/s"),
        medl(&lat.0, |l| l.p50),
        medl(&lat.1, |l| l.p50),
    ));
    rows.push(row(
        &format!("latency p99 µs @ {r}/s"),
        medl(&lat.0, |l| l.p99),
        medl(&lat.1, |l| l.p99),
    ));
    rows.push(row(
        &format!("latency p99.9 µs @ {r}/s"),
        medl(&lat.0, |l| l.p999),
        medl(&lat.1, |l| l.p999),
    ));

    let (a_spread, a_js, a_mqtt) = (
        median(acked_runs.0.clone()),
        median(acked_runs.1.clone()),
        median(acked_runs.2.clone()),
    );
    rows.push(row(
        "acked publish msgs/s — peer: JetStream, file storage, TLS",
        a_spread,
        a_js,
    ));
    rows.push(row(
        "acked publish msgs/s — peer: Mosquitto QoS 1, plain TCP",
        a_spread,
        a_mqtt,
    ));

    println!();
    println!("| workload (peer: core NATS unless named) | Spread | peer | Spread ÷ peer |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!(
        "Ratios above 1 favour Spread for rates; for latencies and CPU per message, below 1 does. Broker RSS at the end: {} MiB.",
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

/// Fails a workload that does not finish within 3 minutes, naming it,
/// instead of hanging the whole benchmark.
/// Runs one mode's workload, then removes the data dir, whatever the
/// outcome.
async fn cleaning_up<T>(
    data: &std::path::Path,
    run: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let result = run.await;
    let _ = std::fs::remove_dir_all(data);
    result
}

async fn within<T>(
    label: &str,
    run: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .map_err(|_| anyhow::anyhow!("{label} did not finish within 180 s"))?
}

/// Runs a throughput workload and records the server's CPU time during it,
/// and this process's (the clients').
async fn measured(
    server: &impl servers::Process,
    run: impl std::future::Future<Output = anyhow::Result<Throughput>>,
) -> anyhow::Result<Throughput> {
    let (before, ours) = (server.cpu(), servers::cpu_of(std::process::id()));
    let mut t = run.await?;
    t.server_cpu = server.cpu().saturating_sub(before);
    t.client_cpu = servers::cpu_of(std::process::id()).saturating_sub(ours);
    Ok(t)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn human(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
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
/// publish to the last message received. A subscriber that the server let
/// fall behind (NATS drops messages for slow consumers, Spread conflates
/// them) stops after a second without messages; the loss is reported.
async fn throughput<S: System>(
    sys: &S,
    run: &str,
    subs: usize,
    n: u64,
    size: usize,
) -> anyhow::Result<Throughput> {
    let topic = format!("bench/{run}");
    let mut tasks = Vec::new();
    let idle = Duration::from_secs(1);
    for _ in 0..subs {
        let mut sub = within("subscribing", sys.subscriber(&topic)).await?;
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            let mut bytes = 0u64;
            let mut last = Instant::now();
            while got < n {
                let mut count = |p: &[u8]| bytes += p.len() as u64;
                let batch = sub.next_batch(&mut count);
                match tokio::time::timeout(idle, batch).await {
                    Ok(r) => {
                        got += r? as u64;
                        last = Instant::now();
                    }
                    Err(_) => break,
                }
            }
            anyhow::Ok((last, got, bytes))
        }));
    }
    let mut publisher = within("connecting the publisher", sys.publisher()).await?;
    let payload = vec![0x5a; size];
    let start = Instant::now();
    within("publishing", async {
        for i in 0..n {
            publisher.queue(&topic, &payload);
            if i % 256 == 255 {
                publisher.flush().await?;
            }
        }
        publisher.finish().await
    })
    .await?;
    let published = start.elapsed();
    let mut end = start;
    let (mut received, mut bytes) = (0, 0);
    for t in tasks {
        let (e, got, b) = within("draining the subscribers", async { t.await? }).await?;
        end = end.max(e);
        received += got;
        bytes += b;
    }
    let t = Throughput {
        messages: received,
        bytes,
        elapsed: end - start,
        server_cpu: Duration::ZERO,
        client_cpu: Duration::ZERO,
    };
    let expected = n * subs as u64;
    eprintln!(
        "{} 1→{subs}: {:.0} msgs/s, {:.1} MB/s received; published at {:.0} msgs/s; {} of {} received{}",
        sys.name(),
        t.rate(),
        t.mb_per_s(),
        n as f64 / published.as_secs_f64(),
        received,
        expected,
        if received < expected { " (the server shed load)" } else { "" }
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
    latency_across(sys, sys, run, rate, secs, size).await
}

/// Publishes `n` messages of `size` bytes on `topic` at a steady `rate`
/// per second, each carrying its send time (nanoseconds since `base`) in
/// its first 8 bytes, then waits until the server has them all; returns
/// when publishing began.
async fn paced<P: Publisher>(
    publisher: &mut P,
    topic: &str,
    rate: u64,
    n: u64,
    size: usize,
    base: Instant,
) -> anyhow::Result<Instant> {
    let mut payload = vec![0x5a; size];
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    while sent < n {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(n);
        while sent < due {
            payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
            publisher.queue(topic, &payload);
            sent += 1;
        }
        publisher.flush().await?;
    }
    publisher.finish().await?;
    Ok(start)
}

/// [`latency`] with the publisher on `publish_to` and the subscriber on
/// `subscribe_to` (two nodes of a cluster: the replication lag).
async fn latency_across<S: System>(
    publish_to: &S,
    subscribe_to: &S,
    run: &str,
    rate: u64,
    secs: u64,
    size: usize,
) -> anyhow::Result<Latency> {
    let sys = publish_to;
    let topic = format!("bench/{run}");
    let n = (rate * secs) as usize;
    let base = Instant::now();
    let mut sub = subscribe_to.subscriber(&topic).await?;
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
    paced(&mut publisher, &topic, rate, n as u64, size, base).await?;
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
