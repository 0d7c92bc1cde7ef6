//! Many subscriber connections on one topic (`--connections`, issue #17):
//! N connections through each system's own client library (spread-client
//! against the default broker, async-nats against nats-server over TLS),
//! each subscribed to the same topic, and one publisher at a steady rate
//! with the send time in each payload. Reported per system: the time to
//! connect and subscribe them all, the server's memory per connection, the
//! deliveries per second it sustained, the deliveries lost (shed or
//! conflated), and the publish-to-receive latency over every delivery.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use spread_client::ClientConfig;

use crate::apps::{AsyncNats, SdkSpread};
use crate::servers::{self, Server};
use crate::stats::Latency;
use crate::wire::{Subscriber, System};

/// Subscriptions opened at once while connecting.
const CONNECT_AT_ONCE: usize = 64;
/// A subscriber that receives nothing this long after the last publish
/// has everything it will get.
const QUIET: Duration = Duration::from_secs(3);

/// One system's figures.
struct Figures {
    connect: Duration,
    rss_per_conn: f64,
    deliveries_per_s: f64,
    lost: u64,
    latency: Latency,
}

/// Connects `subs` subscribers of one topic, then publishes at `rate` for
/// `secs` seconds.
async fn one<S>(
    sys: &Arc<S>,
    server: &Server,
    subs: usize,
    rate: u64,
    secs: u64,
    size: usize,
) -> anyhow::Result<Figures>
where
    S: System + Send + Sync + 'static,
{
    let topic = "bench/connections";
    let rss_before = server.rss().unwrap_or(0);
    let began = Instant::now();
    let mut subscribers = Vec::with_capacity(subs);
    while subscribers.len() < subs {
        let batch = (subs - subscribers.len()).min(CONNECT_AT_ONCE);
        let opening = (0..batch).map(|_| {
            let sys = sys.clone();
            tokio::spawn(async move { sys.subscriber(topic).await })
        });
        for s in futures_util::future::join_all(opening).await {
            subscribers.push(s??);
        }
    }
    let connect = began.elapsed();
    let rss_per_conn = server.rss().unwrap_or(0).saturating_sub(rss_before) as f64 / subs as f64;
    eprintln!(
        "{}: {subs} subscribers in {:.1} s, {:.0} B of server memory each",
        sys.name(),
        connect.as_secs_f64(),
        rss_per_conn
    );

    let n = rate * secs;
    let base = Instant::now();
    let warm_up = base + Duration::from_secs(secs) / 10;
    let tasks: Vec<_> = subscribers
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                let mut samples: Vec<u32> = Vec::with_capacity(n as usize);
                let mut last = base;
                let mut got = 0u64;
                while got < n {
                    let mut record = |p: &[u8]| {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&p[..8]);
                        let sent = u64::from_le_bytes(ts);
                        let now = base.elapsed().as_nanos() as u64;
                        if base + Duration::from_nanos(sent) >= warm_up {
                            samples.push((now.saturating_sub(sent) / 1_000) as u32);
                        }
                    };
                    let batch = sub.next_batch(&mut record);
                    match tokio::time::timeout(QUIET + Duration::from_secs(secs), batch).await {
                        Ok(r) => {
                            got += r? as u64;
                            last = Instant::now();
                        }
                        Err(_) => break,
                    }
                }
                anyhow::Ok((got, last, samples))
            })
        })
        .collect();

    let mut publisher = sys.publisher().await?;
    let start = crate::paced(&mut publisher, topic, rate, n, size, base).await?;

    let (mut received, mut end, mut micros) = (0u64, start, Vec::new());
    for t in tasks {
        let (got, last, samples) = t.await??;
        received += got;
        end = end.max(last);
        micros.extend(samples);
    }
    let mut nanos: Vec<u64> = micros.into_iter().map(|us| u64::from(us) * 1_000).collect();
    let latency = Latency::from_nanos(&mut nanos);
    let expected = n * subs as u64;
    let figures = Figures {
        connect,
        rss_per_conn,
        deliveries_per_s: received as f64 / (end - start).as_secs_f64(),
        lost: expected.saturating_sub(received),
        latency,
    };
    eprintln!(
        "{}: {received} of {expected} delivered, {:.0}/s; latency p50 {:.0} µs, p99 {:.0} µs",
        sys.name(),
        figures.deliveries_per_s,
        latency.p50,
        latency.p99
    );
    Ok(figures)
}

/// Runs the workload on Spread (default broker, with room for the
/// connections) and on NATS, and prints both with their ratios.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    bin: &Path,
    data: &Path,
    nats: &crate::cluster::NatsSetup<'_>,
    subs: usize,
    rate: u64,
    secs: u64,
    size: usize,
) -> anyhow::Result<()> {
    let dir = data.join("connections");
    crate::cluster::share_tls(data, &dir)?;
    let ca = data.join("tls").join("ca.pem");
    // The only settings changed from the defaults: room for the
    // subscribers, the publisher and a margin, all from one address
    // (10,000 in all and 1,000 per address by default; nats-server allows
    // 64 Ki in all and has no limit per address).
    let max = (subs + 100).to_string();
    let limits = ["--max-connections", &max, "--max-connections-per-ip", &max];
    let broker = servers::start_spread_defaults(bin, &dir, &limits)?;
    let spread = Arc::new(SdkSpread {
        config: ClientConfig::new(broker.addr.to_string()).ca_file(&ca),
        label: "Spread SDK, default broker",
        reported: false,
    });
    let s = one(&spread, &broker, subs, rate, secs, size)
        .await
        .context("Spread")?;
    drop(broker);
    let nats_server = servers::start_nats(nats.bin, nats.cert, nats.key, &data.join("js-conn"))?;
    let peer = Arc::new(AsyncNats {
        addr: nats_server.addr,
        ca,
    });
    let n = one(&peer, &nats_server, subs, rate, secs, size)
        .await
        .context("NATS")?;
    drop(nats_server);

    println!(
        "# spread-bench --connections {subs}: one topic, one publisher at {rate} msgs/s for {secs} s, {size} B payloads, TLS"
    );
    println!();
    println!(
        "| measure | Spread SDK, default broker | NATS via async-nats | Spread ÷ NATS | better |"
    );
    println!("|---|---:|---:|---:|---|");
    let rows = [
        (
            "connect and subscribe all, s",
            s.connect.as_secs_f64(),
            n.connect.as_secs_f64(),
            "lower",
        ),
        (
            "server memory per connection, B",
            s.rss_per_conn,
            n.rss_per_conn,
            "lower",
        ),
        (
            "deliveries/s",
            s.deliveries_per_s,
            n.deliveries_per_s,
            "higher",
        ),
        (
            "deliveries lost or conflated",
            s.lost as f64,
            n.lost as f64,
            "lower",
        ),
        ("latency p50 µs", s.latency.p50, n.latency.p50, "lower"),
        ("latency p99 µs", s.latency.p99, n.latency.p99, "lower"),
        ("latency p99.9 µs", s.latency.p999, n.latency.p999, "lower"),
    ];
    for (label, a, b, better) in rows {
        println!(
            "| {label} | {} | {} | {:.2} | {better} |",
            crate::human(a),
            crate::human(b),
            a / b
        );
    }
    Ok(())
}
