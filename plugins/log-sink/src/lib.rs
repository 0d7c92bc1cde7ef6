//! The log-system sink: every event to a log pipeline, chosen by the
//! `output` setting:
//!
//! - `file` (default): JSON Lines in `<data-dir>/<dir>/<prefix>.jsonl`
//!   (the `spread sub --json` fields plus `node`), rotated by size and age
//!   with a cap on kept files ([`files`]), for Vector, Fluent Bit, Promtail
//!   or Filebeat to pick up;
//! - `syslog`: RFC 5424 over UDP, TCP (octet-counted) or a Unix socket
//!   ([`syslog`]);
//! - `stdout`: JSON Lines on standard output, for containers.
//!
//! Delivery is the host's: at least once from its checkpoint, with backoff
//! while the destination fails; every line carries the event id.

pub mod files;
mod line;
pub mod syslog;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use spread_plugin::{Error, Event, OpenContext, Result, Sink};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_output")]
    output: String,
    // file
    #[serde(default = "default_dir")]
    dir: PathBuf,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    max_age_secs: Option<u64>,
    #[serde(default = "default_keep")]
    keep: usize,
    // syslog
    #[serde(default = "default_transport")]
    transport: String,
    address: Option<String>,
    #[serde(default = "default_facility")]
    facility: String,
    #[serde(default = "default_app_name")]
    app_name: String,
    #[serde(default = "default_max_payload")]
    max_payload: usize,
}

fn default_output() -> String {
    "file".into()
}
fn default_dir() -> PathBuf {
    "events".into()
}
fn default_prefix() -> String {
    "events".into()
}
fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_keep() -> usize {
    10
}
fn default_transport() -> String {
    "udp".into()
}
fn default_facility() -> String {
    "local0".into()
}
fn default_app_name() -> String {
    "spread".into()
}
fn default_max_payload() -> usize {
    2048
}

enum Output {
    Files(files::Files),
    Syslog(syslog::Syslog),
    Stdout(Vec<u8>),
}

/// The sink.
pub struct LogSink {
    out: Output,
}

impl Sink for LogSink {
    fn open(ctx: &OpenContext<'_>) -> Result<Self> {
        let s: Settings = ctx.config()?;
        let out = match s.output.as_str() {
            "file" => {
                if s.max_bytes < 4096 {
                    return Err(Error::fatal("max_bytes must be at least 4096"));
                }
                Output::Files(files::Files::open(
                    &ctx.data_dir.join(&s.dir),
                    &s.prefix,
                    files::Rotation {
                        max_bytes: s.max_bytes,
                        max_age: s.max_age_secs.map(Duration::from_secs),
                        keep: s.keep,
                    },
                )?)
            }
            "syslog" => {
                let facility = syslog::facility(&s.facility).ok_or_else(|| {
                    Error::fatal(format!("unknown syslog facility {:?}", s.facility))
                })?;
                let transport = match (s.transport.as_str(), s.address) {
                    ("udp", address) => {
                        let socket = std::net::UdpSocket::bind("0.0.0.0:0")
                            .map_err(|e| Error::fatal(format!("syslog udp: {e}")))?;
                        syslog::Transport::Udp(
                            socket,
                            address.unwrap_or_else(|| "127.0.0.1:514".into()),
                        )
                    }
                    ("tcp", address) => syslog::Transport::Tcp(
                        None,
                        address.unwrap_or_else(|| "127.0.0.1:514".into()),
                    ),
                    ("unix", address) => {
                        let socket = std::os::unix::net::UnixDatagram::unbound()
                            .map_err(|e| Error::fatal(format!("syslog unix: {e}")))?;
                        // A receiver that stops reading fills its queue: fail
                        // (and retry) rather than block forever.
                        let _ = socket.set_write_timeout(Some(Duration::from_secs(10)));
                        syslog::Transport::Unix(
                            socket,
                            address.unwrap_or_else(|| "/dev/log".into()).into(),
                        )
                    }
                    (other, _) => {
                        return Err(Error::fatal(format!(
                            "unknown syslog transport {other:?}: udp, tcp or unix"
                        )))
                    }
                };
                Output::Syslog(syslog::Syslog::new(
                    transport,
                    facility,
                    &s.app_name,
                    s.max_payload,
                ))
            }
            "stdout" => Output::Stdout(Vec::with_capacity(1 << 20)),
            other => {
                return Err(Error::fatal(format!(
                    "unknown output {other:?}: file, syslog or stdout"
                )))
            }
        };
        Ok(LogSink { out })
    }

    fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()> {
        match &mut self.out {
            Output::Files(f) => f.write(events),
            Output::Syslog(s) => s.write(events),
            Output::Stdout(buf) => {
                buf.clear();
                for e in events {
                    line::write_json(buf, e);
                }
                std::io::stdout()
                    .lock()
                    .write_all(buf)
                    .map_err(|e| Error::retry(format!("stdout: {e}")))
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        match &mut self.out {
            Output::Files(f) => f.flush(),
            Output::Syslog(s) => s.flush(),
            Output::Stdout(_) => std::io::stdout()
                .lock()
                .flush()
                .map_err(|e| Error::retry(format!("stdout: {e}"))),
        }
    }
}
