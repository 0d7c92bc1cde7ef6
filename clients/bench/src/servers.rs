//! Starts the servers under test: the Spread broker (release build) and a
//! TLS-enabled nats-server using the broker's generated certificate.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child process killed on drop.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!("server {} had already exited: {status}", self.addr);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Stops the process gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.child.try_wait()?.is_none() {
            anyhow::ensure!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// CPU time (user + system) the process has used, from /proc.
    pub fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }

    /// Resident memory in bytes, from /proc.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }
}

/// CPU time (user + system) process `pid` has used, from /proc (zero
/// when it cannot be read).
/// A server whose CPU time a workload measures.
pub trait Process {
    /// CPU time (user + system) the process has used, from /proc.
    fn cpu(&self) -> Duration;
}

impl Process for Server {
    fn cpu(&self) -> Duration {
        Server::cpu(self)
    }
}

/// A server the bench did not start (the machine's Mosquitto service).
pub struct Running {
    pid: u32,
}

impl Running {
    /// The process whose command name is `name`, from /proc.
    pub fn find(name: &str) -> anyhow::Result<Running> {
        for entry in std::fs::read_dir("/proc")? {
            let entry = entry?;
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                return Ok(Running { pid });
            }
        }
        anyhow::bail!("no {name} process is running")
    }
}

impl Process for Running {
    fn cpu(&self) -> Duration {
        cpu_of(self.pid)
    }
}

pub fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields overall, in clock ticks (100 per second).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Starts `spread-broker` as a user would: only the address and the data
/// dir given (so the SQLite archive is on, durability `always` and the
/// default subscriber buffer), plus `extra`.
pub fn start_spread_defaults(
    bin: &Path,
    data_dir: &Path,
    extra: &[&str],
) -> anyhow::Result<Server> {
    let listen: &[&str] = &["--listen", "127.0.0.1:0"];
    spawn_broker(bin, data_dir, &[listen, extra])
}

/// Starts `spread-broker` from `bin` with its data in `data_dir`.
pub fn start_spread(bin: &Path, data_dir: &Path, durability: &str) -> anyhow::Result<Server> {
    start_spread_with(bin, data_dir, durability, &[])
}

/// As [`start_spread`], with `extra` flags. The built-in archive is off
/// unless `extra` sets `--archive`: these workloads measure the broker and
/// its log; the archive has a benchmark of its own (`--archive-events`).
pub fn start_spread_with(
    bin: &Path,
    data_dir: &Path,
    durability: &str,
    extra: &[&str],
) -> anyhow::Result<Server> {
    let archive: &[&str] = if extra.contains(&"--archive") {
        &[]
    } else {
        &["--archive", "off"]
    };
    let listen: &[&str] = if extra.contains(&"--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    let durability: &[&str] = &["--durability", durability];
    // The same pending budget per subscriber as nats-server's default
    // (64 MiB) before it acts on a slow consumer.
    let buffer: &[&str] = &["--subscriber-buffer", "67108864"];
    spawn_broker(bin, data_dir, &[listen, buffer, durability, archive, extra])
}

/// Spawns the broker on `data_dir` with the flags `args`, and waits for
/// its `listening on` line.
fn spawn_broker(bin: &Path, data_dir: &Path, args: &[&[&str]]) -> anyhow::Result<Server> {
    let child = Command::new(bin)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args.iter().flat_map(|a| a.iter()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    listening(child)
}

/// Waits for the broker's `listening on` line and reads its address.
fn listening(mut child: Child) -> anyhow::Result<Server> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("spread-broker listening on ")
        .with_context(|| format!("unexpected broker output {line:?}"))?
        .parse()?;
    Ok(Server { child, addr })
}

/// Where a `nats-server` listens and keeps its JetStream files.
struct NatsFiles<'a> {
    cert: &'a Path,
    key: &'a Path,
    store_dir: &'a Path,
}

/// Spawns `nats-server` with TLS and JetStream on `port`, with `extra`
/// arguments (a cluster's).
fn spawn_nats(
    bin: &Path,
    port: u16,
    files: &NatsFiles<'_>,
    extra: &[String],
) -> anyhow::Result<Server> {
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .args(["--tls", "--tlscert"])
        .arg(files.cert)
        .arg("--tlskey")
        .arg(files.key)
        .arg("-js")
        .arg("-sd")
        .arg(files.store_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    Ok(Server { child, addr })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `nats-server` with TLS and JetStream (file storage in
/// `store_dir`) on a free port.
pub fn start_nats(bin: &Path, cert: &Path, key: &Path, store_dir: &Path) -> anyhow::Result<Server> {
    let files = NatsFiles {
        cert,
        key,
        store_dir,
    };
    let server = spawn_nats(bin, free_port()?, &files, &[])?;
    wait_listening(&[&server], Instant::now() + Duration::from_secs(10))?;
    Ok(server)
}

/// Waits until every server accepts connections, until `deadline`.
fn wait_listening(servers: &[&Server], deadline: Instant) -> anyhow::Result<()> {
    for server in servers {
        while std::net::TcpStream::connect(server.addr).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not start listening on {}", server.addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Starts a JetStream cluster of `n` `nats-server`s on loopback (TLS for
/// clients, plain routes between the servers), each storing in its own
/// directory under `store_dir`.
pub fn start_nats_cluster(
    bin: &Path,
    cert: &Path,
    key: &Path,
    store_dir: &Path,
    n: usize,
) -> anyhow::Result<Vec<Server>> {
    let routes: Vec<u16> = (0..n).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let mut servers = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let others: Vec<String> = routes
            .iter()
            .filter(|r| *r != route)
            .map(|r| format!("nats://127.0.0.1:{r}"))
            .collect();
        let extra = [
            "-n".to_string(),
            format!("bench-{i}"),
            "--cluster_name".into(),
            "bench".into(),
            "--cluster".into(),
            format!("nats://127.0.0.1:{route}"),
            "--routes".into(),
            others.join(","),
        ];
        let dir = store_dir.join(format!("node-{i}"));
        let files = NatsFiles {
            cert,
            key,
            store_dir: &dir,
        };
        servers.push(spawn_nats(bin, free_port()?, &files, &extra)?);
    }
    let all: Vec<&Server> = servers.iter().collect();
    wait_listening(&all, Instant::now() + Duration::from_secs(10))?;
    Ok(servers)
}

/// The release `spread-broker` next to this executable.
pub fn default_broker_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("spread-broker")))
        .unwrap_or_else(|| PathBuf::from("spread-broker"))
}
