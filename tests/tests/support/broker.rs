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

use super::Raw;

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
