//! Both systems as applications get them (`--sdk-messages`, issue #17):
//! Spread through `spread-client` against the broker's default
//! configuration (SQLite archive on, `--durability always`, default
//! subscriber buffer), and against the same broker with `--archive off`;
//! NATS through async-nats, its own client library, over TLS; Mosquitto
//! through rumqttc, QoS 0, on plain TCP (`crate::mqtt`). The same
//! workloads as the lean clients' (`throughput`, `latency`), through the
//! [`System`] traits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use spread_client::{Client, ClientConfig, Item, Subscription};

use crate::servers::{self, Server};
use crate::stats::{Latency, Throughput};
use crate::wire::{Publisher, Subscriber, System};

/// Spread through its SDK.
pub struct SdkSpread {
    pub config: ClientConfig,
    pub label: &'static str,
    /// Publish with [`Client::publish`], awaiting every report (each
    /// flush's publishes in flight at once), instead of without reports.
    pub reported: bool,
}

/// Publishes without reports ([`Client::publish_nowait`]), or with them:
/// queued payloads are kept in one buffer until `flush`.
pub struct SdkPub {
    client: Client,
    reported: bool,
    topic: String,
    queued: BytesMut,
    ends: Vec<usize>,
}

pub struct SdkSub {
    _client: Client,
    sub: Subscription,
}

impl System for SdkSpread {
    type Pub = SdkPub;
    type Sub = SdkSub;

    fn name(&self) -> &'static str {
        self.label
    }

    async fn publisher(&self) -> anyhow::Result<SdkPub> {
        Ok(SdkPub {
            client: Client::connect(self.config.clone()).await?,
            reported: self.reported,
            topic: String::new(),
            queued: BytesMut::with_capacity(1 << 20),
            ends: Vec::new(),
        })
    }

    async fn subscriber(&self, topic: &str) -> anyhow::Result<SdkSub> {
        let client = Client::connect(self.config.clone()).await?;
        let mut sub = client.subscribe(topic).await?;
        // Active once its (empty) snapshot is complete.
        loop {
            match sub.next_item().await.context("subscription ended")?? {
                Item::Synced { .. } => break,
                _ => continue,
            }
        }
        Ok(SdkSub {
            _client: client,
            sub,
        })
    }
}

impl Publisher for SdkPub {
    fn queue(&mut self, topic: &str, payload: &[u8]) {
        if self.topic != topic {
            topic.clone_into(&mut self.topic);
        }
        self.queued.extend_from_slice(payload);
        self.ends.push(self.queued.len());
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.reported {
            let queued = self.queued.split().freeze();
            let mut start = 0;
            let publishes = self.ends.drain(..).map(|end| {
                let payload = queued.slice(start..end);
                start = end;
                self.client.publish(&self.topic, payload)
            });
            futures_util::future::try_join_all(publishes).await?;
            return Ok(());
        }
        let mut start = 0;
        for end in self.ends.drain(..) {
            self.client
                .publish_nowait(&self.topic, &self.queued[start..end])
                .await?;
            start = end;
        }
        self.queued.clear();
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        self.flush().await?;
        // A reported publish is answered after every earlier one of the
        // connection is applied and logged.
        self.client.publish(&self.topic, Bytes::new()).await?;
        Ok(())
    }
}

impl Subscriber for SdkSub {
    async fn next_batch(&mut self, f: &mut (dyn FnMut(&[u8]) + Send)) -> anyhow::Result<usize> {
        let mut n = 0;
        let mut item = self.sub.next_item().await;
        loop {
            match item {
                None => anyhow::bail!("the subscription ended"),
                Some(item) => {
                    if let Item::Event(e) = item? {
                        // The empty publish that `finish` sends is no message.
                        if !e.payload_bytes().is_empty() {
                            f(e.payload_bytes());
                            n += 1;
                        }
                    }
                }
            }
            match self.sub.next_item().now_or_never() {
                Some(next) if n < 4096 => item = next,
                _ => return Ok(n),
            }
        }
    }
}

/// NATS through async-nats.
pub struct AsyncNats {
    pub addr: std::net::SocketAddr,
    pub ca: PathBuf,
}

impl AsyncNats {
    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::ConnectOptions::new()
            .add_root_certificates(self.ca.clone())
            .require_tls(true)
            .connect(format!("tls://localhost:{}", self.addr.port()))
            .await?)
    }
}

/// async-nats takes each payload as owned `Bytes`: queued ones are copied
/// once, as an application would.
pub struct NatsPub {
    client: async_nats::Client,
    subject: String,
    queued: Vec<Bytes>,
}

pub struct NatsSub {
    _client: async_nats::Client,
    sub: async_nats::Subscriber,
}

/// NATS subjects separate their tokens with dots.
fn subject(topic: &str) -> String {
    topic.replace('/', ".")
}

impl System for AsyncNats {
    type Pub = NatsPub;
    type Sub = NatsSub;

    fn name(&self) -> &'static str {
        "NATS (async-nats)"
    }

    async fn publisher(&self) -> anyhow::Result<NatsPub> {
        Ok(NatsPub {
            client: self.connect().await?,
            subject: String::new(),
            queued: Vec::new(),
        })
    }

    async fn subscriber(&self, topic: &str) -> anyhow::Result<NatsSub> {
        let client = self.connect().await?;
        let sub = client.subscribe(subject(topic)).await?;
        // The server has the subscription once it answered a ping after it.
        client.flush().await?;
        Ok(NatsSub {
            _client: client,
            sub,
        })
    }
}

impl Publisher for NatsPub {
    fn queue(&mut self, topic: &str, payload: &[u8]) {
        if self.subject.is_empty() {
            self.subject = subject(topic);
        }
        self.queued.push(Bytes::copy_from_slice(payload));
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        for payload in self.queued.drain(..) {
            self.client.publish(self.subject.clone(), payload).await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        self.flush().await?;
        self.client.flush().await?;
        Ok(())
    }
}

impl Subscriber for NatsSub {
    async fn next_batch(&mut self, f: &mut (dyn FnMut(&[u8]) + Send)) -> anyhow::Result<usize> {
        let first = self.sub.next().await.context("the subscription ended")?;
        f(&first.payload);
        let mut n = 1;
        while n < 4096 {
            match self.sub.next().now_or_never() {
                Some(Some(m)) => {
                    f(&m.payload);
                    n += 1;
                }
                _ => break,
            }
        }
        Ok(n)
    }
}

/// How long `fdatasync` takes on the data dir's disk (400 4 KiB appends,
/// each synced): the median and the 99th percentile, the floor of a
/// durable write's latency at each.
pub fn fdatasync_time(dir: &Path) -> anyhow::Result<(Duration, Duration)> {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut times = Vec::with_capacity(400);
    for _ in 0..400 {
        file.write_all(&block)?;
        let began = Instant::now();
        file.sync_data()?;
        times.push(began.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    times.sort();
    Ok((times[times.len() / 2], times[times.len() * 99 / 100]))
}

/// One workload's figures on the four systems.
struct Row {
    label: String,
    default: Vec<f64>,
    archive_off: Vec<f64>,
    nats: Vec<f64>,
    mqtt: Vec<f64>,
    /// Rates (higher is better) or times (lower is).
    rate: bool,
}

impl Row {
    fn new(label: impl Into<String>, rate: bool) -> Row {
        Row {
            label: label.into(),
            default: Vec::new(),
            archive_off: Vec::new(),
            nats: Vec::new(),
            mqtt: Vec::new(),
            rate,
        }
    }

    fn print(&self) {
        let (d, o, n, m) = (
            crate::median(self.default.clone()),
            crate::median(self.archive_off.clone()),
            crate::median(self.nats.clone()),
            crate::median(self.mqtt.clone()),
        );
        let better = if self.rate { "higher" } else { "lower" };
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {better} |",
            self.label,
            crate::human(d),
            crate::human(o),
            crate::human(n),
            crate::human(m),
            d / n,
            d / m,
            d / o,
        );
    }
}

/// Starts the broker with its defaults (only the address and the data dir
/// given), plus `extra`.
fn start_default(bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Server> {
    servers::start_spread_defaults(bin, dir, extra)
}

/// Subscribers of the fan-out workload, each on its own connection.
const FANOUT_SUBSCRIBERS: usize = 16;
/// Messages the fan-out workload publishes (issue #17's figure).
const FANOUT_MESSAGES: u64 = 100_000;

/// One run's figures on one system.
struct Figures {
    one_to_one: Throughput,
    fan_out: Throughput,
    latency: Latency,
}

/// One run of the 1 → 1 throughput, the fan-out and the latency on `sys`,
/// served by `server` (whose CPU is measured).
async fn one<S: System>(
    server: &impl servers::Process,
    sys: &S,
    topic: &str,
    n: u64,
    size: usize,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Figures> {
    let name = sys.name();
    let run = crate::throughput(sys, topic, 1, n, size);
    let one_to_one = crate::within(name, crate::measured(server, run)).await?;
    let fan_out_topic = format!("{topic}-fan-out");
    let run = crate::throughput(
        sys,
        &fan_out_topic,
        FANOUT_SUBSCRIBERS,
        FANOUT_MESSAGES,
        size,
    );
    let fan_out = crate::within(name, crate::measured(server, run)).await?;
    let latency_topic = format!("{topic}-lat");
    let run = crate::latency(sys, &latency_topic, rate, secs, size);
    let latency = crate::within(name, run).await?;
    Ok(Figures {
        one_to_one,
        fan_out,
        latency,
    })
}

/// Adds one run's figures to the column `pick` chooses.
fn record(rows: &mut [Row; 10], pick: fn(&mut Row) -> &mut Vec<f64>, n: u64, f: Figures) {
    let (t, fan, l) = (f.one_to_one, f.fan_out, f.latency);
    let fan_expected = FANOUT_MESSAGES * FANOUT_SUBSCRIBERS as u64;
    pick(&mut rows[0]).push(t.rate());
    pick(&mut rows[1]).push(t.cpu_per_message());
    pick(&mut rows[2]).push(t.client_cpu_per_message());
    pick(&mut rows[3]).push(n.saturating_sub(t.messages) as f64);
    pick(&mut rows[4]).push(fan.rate());
    pick(&mut rows[5]).push(fan.cpu_per_message());
    pick(&mut rows[6]).push(fan_expected.saturating_sub(fan.messages) as f64);
    pick(&mut rows[7]).push(l.p50);
    pick(&mut rows[8]).push(l.p99);
    pick(&mut rows[9]).push(l.p999);
}

/// Runs every workload `runs` times, alternating the systems, and prints
/// medians with ratios against NATS and against the archive-off broker.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    bin: &Path,
    data: &Path,
    nats: &crate::cluster::NatsSetup<'_>,
    n: u64,
    size: usize,
    runs: usize,
    rate: u64,
    secs: u64,
    mosquitto: &str,
) -> anyhow::Result<()> {
    let sync = fdatasync_time(data)?;
    let default_dir = data.join("sdk-default");
    let off_dir = data.join("sdk-archive-off");
    let interval_dir = data.join("sdk-interval");
    for dir in [&default_dir, &off_dir, &interval_dir] {
        crate::cluster::share_tls(data, dir)?;
    }
    let ca = data.join("tls").join("ca.pem");
    let default = start_default(bin, &default_dir, &[])?;
    let off = start_default(bin, &off_dir, &["--archive", "off"])?;
    let interval = start_default(bin, &interval_dir, &["--durability", "interval"])?;
    let nats_server = servers::start_nats(nats.bin, nats.cert, nats.key, &data.join("js-sdk"))?;
    let sdk = |server: &Server, label, reported| SdkSpread {
        config: ClientConfig::new(server.addr.to_string()).ca_file(&ca),
        label,
        reported,
    };
    let (s_default, s_off) = (
        sdk(&default, "Spread SDK, default broker", false),
        sdk(&off, "Spread SDK, --archive off", false),
    );
    let (r_default, r_off) = (
        sdk(
            &default,
            "Spread SDK awaiting reports, default broker",
            true,
        ),
        sdk(&off, "Spread SDK awaiting reports, --archive off", true),
    );
    let mut awaited = (Vec::new(), Vec::new());
    let s_interval = sdk(&interval, "Spread SDK, --durability interval", false);
    let mut interval_latency = (Vec::new(), Vec::new(), Vec::new());
    let peer = AsyncNats {
        addr: nats_server.addr,
        ca: ca.clone(),
    };
    let mqtt = crate::mqtt::Rumqttc {
        addr: mosquitto.parse().context("--mosquitto")?,
    };
    let mosquitto_process = servers::Running::find("mosquitto")?;
    println!(
        "# spread-bench --sdk-messages {n}: {size} B payloads, TLS, {} cores, median of {runs} runs; fdatasync on the data dir's disk: p50 {} µs, p99 {} µs",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sync.0.as_micros(),
        sync.1.as_micros()
    );
    let mut rows = [
        Row::new("1 → 1 delivered msgs/s", true),
        Row::new("1 → 1 server CPU µs per message", false),
        Row::new(
            "1 → 1 client CPU µs per message (publisher + subscriber)",
            false,
        ),
        Row::new("1 → 1 messages lost or conflated", false),
        Row::new(
            format!("1 → {FANOUT_SUBSCRIBERS} delivered msgs/s ({FANOUT_MESSAGES} published)"),
            true,
        ),
        Row::new(
            format!("1 → {FANOUT_SUBSCRIBERS} server CPU µs per delivery"),
            false,
        ),
        Row::new(
            format!("1 → {FANOUT_SUBSCRIBERS} deliveries lost or conflated"),
            false,
        ),
        Row::new(format!("latency p50 µs @ {rate}/s"), false),
        Row::new(format!("latency p99 µs @ {rate}/s"), false),
        Row::new(format!("latency p99.9 µs @ {rate}/s"), false),
    ];
    for round in 0..runs {
        let topic = format!("sdk-{round}");
        let figures = one(&default, &s_default, &topic, n, size, rate, secs).await?;
        record(&mut rows, |r| &mut r.default, n, figures);
        let figures = one(&off, &s_off, &topic, n, size, rate, secs).await?;
        record(&mut rows, |r| &mut r.archive_off, n, figures);
        let figures = one(&nats_server, &peer, &topic, n, size, rate, secs).await?;
        record(&mut rows, |r| &mut r.nats, n, figures);
        let figures = one(&mosquitto_process, &mqtt, &topic, n, size, rate, secs).await?;
        record(&mut rows, |r| &mut r.mqtt, n, figures);
        let topic = format!("sdk-awaited-{round}");
        let run = crate::throughput(&r_default, &topic, 1, n, size);
        awaited
            .0
            .push(crate::within(r_default.label, run).await?.rate());
        let run = crate::throughput(&r_off, &topic, 1, n, size);
        awaited
            .1
            .push(crate::within(r_off.label, run).await?.rate());
        let topic = format!("sdk-interval-{round}");
        let run = crate::latency(&s_interval, &topic, rate, secs, size);
        let l = crate::within(s_interval.label, run).await?;
        interval_latency.0.push(l.p50);
        interval_latency.1.push(l.p99);
        interval_latency.2.push(l.p999);
    }
    println!();
    println!("| workload | Spread SDK, default broker | Spread SDK, `--archive off` | NATS via async-nats | Mosquitto via rumqttc (QoS 0, plain TCP) | default ÷ NATS | default ÷ Mosquitto | default ÷ archive off | better |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in &rows {
        row.print();
    }
    println!();
    println!(
        "1 → 1 through `Client::publish` (every report awaited, 256 in flight): default broker {}, `--archive off` {} msgs/s",
        crate::human(crate::median(awaited.0)),
        crate::human(crate::median(awaited.1)),
    );
    println!(
        "latency @ {rate}/s, default broker but `--durability interval` (synced every 50 ms, reported before): p50 {} µs, p99 {} µs, p99.9 {} µs",
        crate::human(crate::median(interval_latency.0)),
        crate::human(crate::median(interval_latency.1)),
        crate::human(crate::median(interval_latency.2)),
    );
    drop(nats_server);
    drop(interval);
    drop(off);
    drop(default);
    Ok(())
}
