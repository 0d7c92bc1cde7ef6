//! A real broker process on a free port with its own data dir, and the
//! clients and raw connections that reach it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use spread_client::{Client, ClientConfig};
use spread_protocol::{Hello, Request, Response, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use spread_broker::{Args, SinkConfig};

use super::Raw;

/// A broker for a test: a process by default (killed on drop), or inside
/// the test process (see [`BrokerBuilder::start_in_process`]).
pub struct Broker {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    run: Run,
}

enum Run {
    Process(Child),
    InProcess(InProcess),
}

/// A broker on its own runtime and thread in the test process: the same
/// `Config::resolve` and `Server` as the binary, over the same TLS, minus
/// the process start. For tests that need no crash, signal, CLI or process
/// metric.
struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Asks the server to stop and waits until it has (log synced, sinks
    /// stopped), as SIGTERM does for a process; `false` if it panicked.
    fn stop(&mut self) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().is_none_or(|t| t.join().is_ok())
    }
}

/// How a test broker is set up: typed settings (the broker's own [`Args`],
/// written as its configuration file, so that a misspelt setting does not
/// compile), flags as a user types them, and a data dir.
#[must_use]
pub struct BrokerBuilder {
    args: Args,
    typed: bool,
    flags: Vec<String>,
    dir: Option<tempfile::TempDir>,
    fd_limit: Option<u32>,
    listen: Option<SocketAddr>,
    /// Environment variables of the process (test hooks).
    env: Vec<(String, String)>,
}

impl BrokerBuilder {
    /// Changes typed settings (any of the broker's `Args`).
    pub fn with(mut self, change: impl FnOnce(&mut Args)) -> BrokerBuilder {
        change(&mut self.args);
        self.typed = true;
        self
    }

    /// Replaces every typed setting.
    pub fn args(self, args: Args) -> BrokerBuilder {
        self.with(|a| *a = args)
    }

    /// Turns the built-in SQLite archive off.
    pub fn no_archive(self) -> BrokerBuilder {
        self.with(|a| a.archive = Some("off".into()))
    }

    /// Adds a sink.
    pub fn sink(self, sink: SinkConfig) -> BrokerBuilder {
        self.with(|a| a.sinks.push(sink))
    }

    /// Adds command-line flags (these win over typed settings, as flags
    /// win over a configuration file).
    pub fn flags(mut self, flags: &[&str]) -> BrokerBuilder {
        self.flags.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// Listens on `addr` instead of a port of the system's choice (for
    /// nodes that must find each other again after a restart).
    pub fn listen(mut self, addr: SocketAddr) -> BrokerBuilder {
        self.listen = Some(addr);
        self
    }

    /// Sets an environment variable of the process, such as the debug
    /// build's clock offset `SPREAD_TEST_CLOCK_OFFSET_SECS`.
    pub fn env(mut self, key: &str, value: &str) -> BrokerBuilder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the process under `ulimit -n limit`.
    pub fn fd_limit(mut self, limit: u32) -> BrokerBuilder {
        self.fd_limit = Some(limit);
        self
    }

    /// Starts on an existing data dir (a restart).
    pub fn dir(mut self, dir: tempfile::TempDir) -> BrokerBuilder {
        self.dir = Some(dir);
        self
    }

    /// The data dir and the arguments after the program name.
    fn command_line(&mut self) -> (tempfile::TempDir, Vec<std::ffi::OsString>) {
        let dir = match self.dir.take() {
            Some(dir) => dir,
            None => tempfile::tempdir().expect("temp dir"),
        };
        let listen = self.listen.map_or("127.0.0.1:0".into(), |a| a.to_string());
        let mut argv: Vec<std::ffi::OsString> =
            vec!["--listen".into(), listen.into(), "--data-dir".into()];
        argv.push(dir.path().into());
        if self.typed {
            argv.push("--config".into());
            argv.push(super::config_file(dir.path(), &self.args).into());
        }
        argv.extend(self.flags.iter().map(Into::into));
        (dir, argv)
    }

    /// Starts `spread-broker` as a process.
    pub fn start(mut self) -> Broker {
        let (dir, argv) = self.command_line();
        let broker = env!("CARGO_BIN_EXE_e2e-broker");
        let mut command = match self.fd_limit {
            None => Command::new(broker),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(broker);
                sh
            }
        };
        let mut child = command
            .args(argv)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn broker");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read broker stdout");
        let addr = line
            .trim()
            .strip_prefix("spread-broker listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from broker: {line:?}"))
            .parse()
            .expect("address");
        Broker {
            addr,
            dir,
            run: Run::Process(child),
        }
    }

    /// Runs the broker expecting it to refuse to start; returns its stderr.
    pub fn fail_to_start(mut self) -> String {
        let (_dir, argv) = self.command_line();
        let out = Command::new(env!("CARGO_BIN_EXE_e2e-broker"))
            .args(argv)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run broker");
        assert!(
            !out.status.success(),
            "the broker started: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts the broker inside the test process, on a runtime of its own
    /// (so that it does not share the test's), with the same configuration
    /// path as the binary.
    pub fn start_in_process(mut self) -> Broker {
        use clap::Parser;
        assert!(
            self.fd_limit.is_none(),
            "a descriptor limit needs a process"
        );
        let (dir, argv) = self.command_line();
        let args = Args::try_parse_from(std::iter::once("spread-broker".into()).chain(argv))
            .expect("valid flags");
        let config = spread_broker::Config::resolve(args).expect("valid configuration");
        let (started, addr) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                match spread_broker::Server::bind(config).await {
                    Ok(server) => {
                        let _ = started.send(server.local_addr().map_err(|e| e.to_string()));
                        server
                            .run(async {
                                let _ = stopped.await;
                            })
                            .await;
                    }
                    Err(e) => {
                        let _ = started.send(Err(e.to_string()));
                    }
                }
            });
        });
        let addr = addr
            .recv()
            .expect("the broker thread answers")
            .unwrap_or_else(|e| panic!("the broker did not start: {e}"));
        Broker {
            addr,
            dir,
            run: Run::InProcess(InProcess {
                stop: Some(stop),
                thread: Some(thread),
            }),
        }
    }
}

impl Broker {
    /// A broker set up step by step.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder {
            args: Args::default(),
            typed: false,
            flags: Vec::new(),
            dir: None,
            fd_limit: None,
            listen: None,
            env: Vec::new(),
        }
    }

    /// Starts `spread-broker` with default settings plus `extra` flags.
    pub fn start(extra: &[&str]) -> Broker {
        Broker::builder().flags(extra).start()
    }

    /// Starts a broker inside the test process with `extra` flags: for
    /// tests of what the protocol does, which need no crash, signal, CLI
    /// or process metric.
    pub fn in_process(extra: &[&str]) -> Broker {
        Broker::builder().flags(extra).start_in_process()
    }

    /// Starts a broker on an existing data dir.
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Broker {
        Broker::builder().dir(dir).flags(extra).start()
    }

    /// The broker's process (for tests of process behaviour: exit status,
    /// signals).
    pub fn child(&mut self) -> &mut Child {
        match &mut self.run {
            Run::Process(child) => child,
            Run::InProcess(_) => panic!("this test needs a broker process"),
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        match &self.run {
            Run::Process(child) => child.id(),
            Run::InProcess(_) => panic!("this test needs a broker process"),
        }
    }

    /// The CA file clients must trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls").join("ca.pem")
    }

    /// Client settings for this broker.
    pub fn config(&self) -> ClientConfig {
        ClientConfig::new(self.addr.to_string()).ca_file(self.ca())
    }

    /// A connected SDK client.
    pub async fn client(&self) -> Client {
        Client::connect(self.config()).await.expect("connect")
    }

    /// A raw TLS connection, no handshake sent.
    pub async fn raw_tls(&self) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in spread_broker::load_certs(&self.ca()).expect("ca") {
            roots.add(cert).expect("add ca");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(self.addr).await.expect("tcp");
        TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().expect("name"), tcp)
            .await
            .expect("tls")
    }

    /// A raw protocol connection that has not sent hello yet.
    pub async fn raw_unhandshaken(&self) -> Raw {
        Raw::new(self.raw_tls().await)
    }

    /// A raw TLS connection that completed the hello/welcome handshake.
    pub async fn raw(&self) -> Raw {
        let mut raw = self.raw_unhandshaken().await;
        raw.send(&Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_name: "raw-test".into(),
            token: None,
        }))
        .await;
        match raw.recv().await {
            Some(Response::Welcome { .. }) => raw,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Resident memory of the broker process, in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child().try_wait().expect("try_wait").is_none()
    }

    /// Kills the process (SIGKILL) and hands back its data dir.
    pub fn kill(mut self) -> tempfile::TempDir {
        let child = self.child();
        let _ = child.kill();
        let _ = child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    /// Stops the broker gracefully (SIGTERM for a process), checks that it
    /// exited cleanly, and hands back its data dir.
    pub fn stop(mut self) -> tempfile::TempDir {
        match &mut self.run {
            Run::Process(child) => {
                terminate(child.id());
                let status = child.wait().expect("wait");
                assert!(status.success(), "broker exited with {status:?}");
            }
            Run::InProcess(broker) => assert!(broker.stop(), "the broker panicked"),
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        terminate(self.pid());
    }
}

fn terminate(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

impl Drop for Broker {
    fn drop(&mut self) {
        match &mut self.run {
            Run::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Run::InProcess(broker) => {
                broker.stop();
            }
        }
    }
}

/// A loopback address no one listens on now, for a broker started on it
/// later (a mesh's nodes, whose addresses their peers and proxies need
/// first). Chosen below the ephemeral port range (32768–60999 on Linux),
/// which every outgoing connection and every bind to port 0 draws from:
/// a port picked there could be taken by another test's connection before
/// the broker binds it. Distinct within this process; checked free.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const PORTS: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(7_919) % PORTS;
    for _ in 0..PORTS {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (offset + n) % PORTS;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return l.local_addr().expect("address");
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + PORTS)
}

/// Runs the broker with `extra` flags expecting it to refuse to start;
/// returns its stderr.
pub fn fail_to_start(extra: &[&str]) -> String {
    Broker::builder().flags(extra).fail_to_start()
}
