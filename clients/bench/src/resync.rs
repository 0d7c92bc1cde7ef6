//! Resync after a partition (docs/cluster.md, resync): node B pulls from A
//! through a proxy that counts bytes; A holds many topics, the link is cut,
//! some of them change on A, the link heals, and the bench measures the
//! bytes the link carried and the time until B holds every change. Twice:
//! in history mode (A still has the history after B's cursor, the normal
//! case), and by a digest exchange (B's cursor made to name an event A
//! does not hold at that iteration, which is how a restored A looks to B,
//! and the path taken too when retention deleted the history).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::servers::{self, Server};
use crate::spread::Spread;
use crate::wire::{Publisher, System};

const SECRET: &str = "spread-bench-resync";

/// A TCP proxy that counts the bytes it forwards and can be cut.
struct Proxy {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    open: Arc<AtomicBool>,
    links: Arc<std::sync::Mutex<JoinSet<()>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bytes = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<std::sync::Mutex<JoinSet<()>>> = Arc::default();
        let accept = {
            let (bytes, open, links) = (bytes.clone(), open.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: refused while cut
                    }
                    let bytes = bytes.clone();
                    lock(&links).spawn(async move {
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            let _ = forward(client, server, &bytes).await;
                        }
                    });
                }
            })
        };
        Ok(Proxy {
            addr,
            bytes,
            open,
            links,
            _accept: accept,
        })
    }

    /// Closes every connection and refuses new ones until [`Proxy::heal`].
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        lock(&self.links).abort_all();
    }

    fn heal(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

fn lock(links: &std::sync::Mutex<JoinSet<()>>) -> std::sync::MutexGuard<'_, JoinSet<()>> {
    // A panicked forwarding task poisons nothing worth stopping for.
    links
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn forward(client: TcpStream, server: TcpStream, bytes: &AtomicU64) -> std::io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = copy(&mut cr, &mut sw, bytes);
    let down = copy(&mut sr, &mut cw, bytes);
    tokio::try_join!(up, down)?;
    Ok(())
}

async fn copy(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    bytes: &AtomicU64,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        to.write_all(&buf[..n]).await?;
    }
}

fn topic(t: u64) -> String {
    format!("r/{}/{}", t / 1000, t % 1000)
}

/// Publishes one event to each of `topics` (acknowledged).
async fn publish_all(
    spread: &Spread,
    topics: impl Iterator<Item = u64>,
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut publisher = spread.publisher().await?;
    for (i, t) in topics.enumerate() {
        publisher.queue(&topic(t), payload);
        if i % 256 == 255 {
            publisher.flush().await?;
        }
    }
    publisher.finish().await
}

/// Waits until `node` has applied `n` events after iteration `from`.
async fn applied(node: &Spread, from: u64, n: u64) -> anyhow::Result<()> {
    let mut probe = node.probe().await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = probe.status().await?;
        if status.iteration.saturating_sub(from) >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "B did not catch up in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn digest(node: &Spread) -> anyhow::Result<u64> {
    Ok(node.probe().await?.status().await?.digest)
}

/// One resync: the bytes the link carried and the time until B held the
/// `changed` new events.
struct Resync {
    bytes: u64,
    time: Duration,
}

/// Cuts the link, changes `changed` topics on A (`step` apart), heals,
/// and measures until B holds them all with the same digest as A.
async fn resync_once(
    a: &Spread,
    b: &Spread,
    proxy: &Proxy,
    changed: u64,
    step: u64,
    payload: &[u8],
) -> anyhow::Result<Resync> {
    proxy.cut();
    publish_all(a, (0..changed).map(|i| i * step), payload).await?;
    let from = b.probe().await?.status().await?.iteration;
    proxy.bytes.store(0, Ordering::SeqCst);
    let began = Instant::now();
    proxy.heal();
    applied(b, from, changed).await?;
    let time = began.elapsed();
    anyhow::ensure!(
        digest(a).await? == digest(b).await?,
        "A and B differ after the resync"
    );
    Ok(Resync {
        bytes: proxy.bytes.load(Ordering::SeqCst),
        time,
    })
}

/// Runs the resync benchmark and prints a Markdown table.
pub async fn run(
    bin: &Path,
    data: &Path,
    tls: TlsConnector,
    topics: u64,
    changed: u64,
    size: usize,
) -> anyhow::Result<()> {
    let (dir_a, dir_b) = (data.join("resync-a"), data.join("resync-b"));
    for dir in [&dir_a, &dir_b] {
        crate::cluster::share_tls(data, dir)?;
    }
    let durability = "always";
    let a = servers::start_spread_with(bin, &dir_a, durability, &["--cluster-secret", SECRET])?;
    let proxy = Proxy::start(a.addr).await?;
    let peer = proxy.addr.to_string();
    let start_b = |listen: Option<SocketAddr>| -> anyhow::Result<Server> {
        let listen = listen.map(|a| a.to_string());
        let mut flags = vec!["--cluster-secret", SECRET, "--peer", &peer];
        if let Some(addr) = &listen {
            flags.extend(["--listen", addr]);
        }
        servers::start_spread_with(bin, &dir_b, durability, &flags)
    };
    let node_a = Spread {
        addr: a.addr,
        tls: tls.clone(),
    };
    let b = start_b(None)?;
    let b_addr = b.addr;
    let node_b = Spread {
        addr: b.addr,
        tls: tls.clone(),
    };
    let loading = Instant::now();
    let b_from = node_b.probe().await?.status().await?.iteration;
    publish_all(&node_a, 0..topics, &vec![0u8; size]).await?;
    applied(&node_b, b_from, topics).await?;
    eprintln!(
        "{topics} topics on A and replicated to B in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    // The changes spread evenly over the namespace.
    let step = (topics / changed.max(1)).max(1);
    let history = resync_once(&node_a, &node_b, &proxy, changed, step, &vec![1u8; size]).await?;

    // The same, when B's cursor names an event A does not hold there.
    drop(b);
    for entry in std::fs::read_dir(dir_b.join("peers")).context("B's cursors")? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let iteration = text.split_whitespace().next().context("empty cursor")?;
        std::fs::write(&path, format!("{iteration} {}\n", "00".repeat(16)))?;
    }
    let b = start_b(Some(b_addr))?;
    let node_b = Spread {
        addr: b.addr,
        tls: tls.clone(),
    };
    let by_digest = resync_once(&node_a, &node_b, &proxy, changed, step, &vec![2u8; size]).await?;
    drop(b);
    drop(a);

    println!(
        "| resync of {changed} changed topics among {topics} | bytes on the link | per changed topic | time |"
    );
    println!("|---|---:|---:|---:|");
    let rows = [
        ("history (the cursor still covered)", &history),
        ("digest exchange", &by_digest),
    ];
    for (name, r) in rows {
        println!(
            "| {name} | {} | {:.0} B | {:.0} ms |",
            r.bytes,
            r.bytes as f64 / changed as f64,
            r.time.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
