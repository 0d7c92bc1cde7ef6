//! Shared harness: start a real broker process on a free port with its own
//! data dir, connect SDK clients and raw TLS connections to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use spread_client::{Client, ClientConfig, Event, Item, Subscription};
use spread_protocol::{ClientCodec, Hello, Request, Response, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;

/// Generous bound for conditions awaited in tests; a hang fails instead of
/// blocking CI forever.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A broker process, killed on drop.
pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Broker {
    /// Starts `spread-broker` with default settings plus `extra` flags.
    pub fn start(extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        Broker::start_in(dir, extra)
    }

    /// Starts a broker on an existing data dir.
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_e2e-broker"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
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
        Broker { child, addr, dir }
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
        Raw {
            stream: self.raw_tls().await,
            buf: BytesMut::new(),
        }
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Kills the process (SIGKILL) and hands back its data dir.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    /// Stops the process gracefully (SIGTERM), checks it exited cleanly, and
    /// hands back its data dir.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.terminate();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "broker exited with {status:?}");
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw protocol connection for tests that need exact bytes.
pub struct Raw {
    pub stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Raw {
    /// Sends one request.
    pub async fn send(&mut self, req: &Request) {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        self.send_bytes(&out).await;
    }

    /// Sends arbitrary bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// The next message, or `None` once the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Response> {
        let mut codec = ClientCodec::default();
        loop {
            if let Some(resp) = codec.decode(&mut self.buf).expect("decode") {
                return Some(resp);
            }
            let n = tokio::time::timeout(PATIENCE, self.stream.read_buf(&mut self.buf))
                .await
                .expect("broker answered in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Expects an error frame with `code`, then the connection to close.
    pub async fn expect_fatal(&mut self, code: spread_protocol::ErrorCode) {
        match self.recv().await {
            Some(Response::Error(e)) => assert_eq!(e.code, code, "{}", e.message),
            other => panic!("expected error {code}, got {other:?}"),
        }
        assert!(self.recv().await.is_none(), "connection must close");
    }
}

/// Waits for the next event of a subscription, skipping markers.
pub async fn next_event(sub: &mut Subscription) -> Event {
    tokio::time::timeout(PATIENCE, sub.next_event())
        .await
        .expect("event in time")
        .expect("subscription open")
        .expect("no error")
}

/// The next item of a subscription, failing the test after [`PATIENCE`].
pub async fn next_item(sub: &mut Subscription) -> Item {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("item in time")
        .expect("subscription open")
        .expect("no error")
}

/// Collects events until the `Synced` marker and returns them.
pub async fn snapshot(sub: &mut Subscription) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let item = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("item in time")
            .expect("subscription open")
            .expect("no error");
        match item {
            Item::Event(e) => out.push(e),
            Item::Synced { .. } => return out,
            Item::Conflated { .. } | Item::Truncated { .. } => {}
        }
    }
}

/// Runs the `spread` CLI against `broker` with `args`.
pub fn cli(broker: &Broker, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_e2e-spread"))
        .arg("--server")
        .arg(broker.addr.to_string())
        .arg("--ca")
        .arg(broker.ca())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cli");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("cli output")
}

/// Runs the broker expecting it to refuse to start; returns its stderr.
pub fn fail_to_start(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_e2e-broker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
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

/// A shared library built by cargo as a dependency of these tests (a
/// plugin crate), next to the test binary.
pub fn built_plugin(crate_name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    let lib = deps.join(format!("lib{}.so", crate_name.replace('-', "_")));
    assert!(lib.exists(), "{} was not built", lib.display());
    lib
}

/// Compiles C `source` into a shared library at `out` with the plugin header.
pub fn build_c_plugin(source: &std::path::Path, out: &std::path::Path) {
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/abi/include");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args([
            "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-std=c99", "-I", include,
        ])
        .arg(source)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        built.status.success(),
        "{} does not compile:\n{}",
        source.display(),
        String::from_utf8_lossy(&built.stderr)
    );
}

/// Polls `check` (every few milliseconds) until it yields a value, failing
/// the test after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy whose connections the test can cut, and which can refuse
/// new connections for a while.
pub struct Proxy {
    pub addr: SocketAddr,
    generation: tokio::sync::watch::Sender<u64>,
    /// Whether new connections are let through.
    pub open: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (gen_tx, open2) = (generation.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if !open2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees a failed handshake
                }
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            generation,
            open,
        }
    }

    /// Drops every proxied connection.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}
