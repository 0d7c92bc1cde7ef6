//! Replication: acknowledged publishes on node A of a three-node mesh, and
//! the time until B and C have applied all of them, against one node alone
//! measured in the same run (docs/cluster.md, docs/benchmarks.md); and the
//! peer measured the same way: NATS JetStream on one server (one replica)
//! and on a three-server JetStream cluster (three replicas, a publish
//! acknowledged once a quorum stored it).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_rustls::TlsConnector;

use crate::servers::{self, Server};
use crate::spread::Spread;

const SECRET: &str = "spread-bench-cluster";

/// The steady rate and duration of the replication lag measurement.
const LAG_RATE: u64 = 10_000;
const LAG_SECS: u64 = 5;

/// A free loopback address (the system's choice, released at once).
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Copies the generated TLS material of `from` into `to`, so that the
/// nodes trust each other's certificate.
pub(crate) fn share_tls(from: &Path, to: &Path) -> anyhow::Result<()> {
    let tls = to.join("tls");
    std::fs::create_dir_all(&tls)?;
    for entry in std::fs::read_dir(from.join("tls"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), tls.join(entry.file_name()))?;
    }
    Ok(())
}

/// Waits until `node` has committed `n` events after iteration `from`
/// (status polled every millisecond: the bench's own bound on precision).
async fn applied(node: &Spread, from: u64, n: u64) -> anyhow::Result<Instant> {
    let mut probe = node.probe().await?;
    loop {
        let status = probe.status().await?;
        if status.committed.saturating_sub(from) >= n {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Where the peer's server is and the certificate it presents.
pub struct NatsSetup<'a> {
    pub bin: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// Prints the single-node and the replicated figures of one run each.
pub async fn run(
    bin: &Path,
    data: &Path,
    durability: &str,
    tls: TlsConnector,
    n: u64,
    size: usize,
    nats: &NatsSetup<'_>,
) -> anyhow::Result<()> {
    // Every node uses the TLS material the bench's first broker generated
    // in `data`, which `tls` trusts.
    // One node alone.
    let alone_dir = data.join("alone");
    share_tls(data, &alone_dir)?;
    let alone = servers::start_spread(bin, &alone_dir, durability)?;
    let single = Spread {
        addr: alone.addr,
        tls: tls.clone(),
    };
    let single_rate = crate::acked::spread(&single, n, size).await?;
    drop(alone);

    // Three nodes, each pulling from the two others.
    let addrs = [free_addr()?, free_addr()?, free_addr()?];
    let dirs: Vec<_> = (0..3).map(|i| data.join(format!("node-{i}"))).collect();
    let start = |i: usize| -> anyhow::Result<Server> {
        let mut flags = vec![
            "--listen".to_string(),
            addrs[i].to_string(),
            "--cluster-secret".into(),
            SECRET.into(),
        ];
        let others = addrs.iter().enumerate().filter(|(j, _)| *j != i);
        for (_, addr) in others {
            flags.push("--peer".into());
            flags.push(addr.to_string());
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        servers::start_spread_with(bin, &dirs[i], durability, &flags)
    };
    for dir in &dirs {
        share_tls(data, dir)?;
    }
    let mesh: Vec<Server> = (0..3).map(start).collect::<anyhow::Result<_>>()?;
    let nodes: Vec<Spread> = mesh
        .iter()
        .map(|s| Spread {
            addr: s.addr,
            tls: tls.clone(),
        })
        .collect();
    let mut before = Vec::new();
    for node in &nodes {
        before.push(node.probe().await?.status().await?.committed);
    }
    let began = Instant::now();
    let (rate_a, b_done, c_done) = tokio::try_join!(
        crate::acked::spread(&nodes[0], n, size),
        applied(&nodes[1], before[1], n),
        applied(&nodes[2], before[2], n),
    )
    .context("the replicated run")?;
    let end_to_end = n as f64 / (b_done.max(c_done) - began).as_secs_f64();
    // Replication lag: published on A at a steady rate, received by a
    // subscriber on B.
    let lag = crate::latency_across(&nodes[0], &nodes[1], "lag", LAG_RATE, LAG_SECS, size).await?;
    drop(mesh);

    // The peer, the same way: one server, then a cluster of three.
    let single_nats = servers::start_nats(nats.bin, nats.cert, nats.key, &data.join("js-one"))?;
    let client = crate::nats::Nats {
        addr: single_nats.addr,
        tls: tls.clone(),
    };
    let js_single = crate::acked::jetstream_replicated(&client, n, size, 1).await?;
    drop(single_nats);
    let cluster =
        servers::start_nats_cluster(nats.bin, nats.cert, nats.key, &data.join("js-three"), 3)?;
    let client = crate::nats::Nats {
        addr: cluster[0].addr,
        tls: tls.clone(),
    };
    let js_three = crate::acked::jetstream_replicated(&client, n, size, 3).await?;
    // The peer's lag the same way: core NATS published on one server of
    // the cluster, received by a subscriber on another (one route hop).
    let other = crate::nats::Nats {
        addr: cluster[1].addr,
        tls: tls.clone(),
    };
    let nats_lag = crate::latency_across(&client, &other, "lag", LAG_RATE, LAG_SECS, size).await?;
    drop(cluster);

    println!("| workload | msgs/s | ÷ one node alone |");
    println!("|---|---:|---:|");
    println!("| acked publishes, one node alone | {single_rate:.0} | 1.00 |");
    println!(
        "| acked publishes on A of a 3-node mesh | {rate_a:.0} | {:.2} |",
        rate_a / single_rate
    );
    println!(
        "| end to end: until B and C applied all of them | {end_to_end:.0} | {:.2} |",
        end_to_end / single_rate
    );
    println!("| NATS JetStream acked publishes, one server (1 replica) | {js_single:.0} | 1.00 |");
    println!(
        "| NATS JetStream acked publishes, 3-server cluster (3 replicas, acked at quorum) | {js_three:.0} | {:.2} |",
        js_three / js_single
    );
    println!();
    println!("| lag at {LAG_RATE} msgs/s, published on one node, received on another | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---:|---:|---:|");
    for (name, l) in [
        (
            "Spread, A to a subscriber on B (3-node mesh, TLS, logged on both)",
            &lag,
        ),
        (
            "NATS core, server 1 to a subscriber on server 2 (3-server cluster, TLS to clients)",
            &nats_lag,
        ),
    ] {
        println!("| {name} | {:.0} | {:.0} | {:.0} |", l.p50, l.p99, l.p999);
    }
    Ok(())
}
