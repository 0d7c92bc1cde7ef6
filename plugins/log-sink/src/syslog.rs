//! Syslog (RFC 5424): one message per event, over UDP, TCP (octet-counted
//! framing, RFC 6587) or a Unix datagram socket.
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [spread@32473 topic="…" iteration="…" origin="…" id="…"] MSG
//! ```
//!
//! PRI is the facility × 8 + 6 (informational); TIMESTAMP the event's time
//! (UTC, microseconds); HOSTNAME the broker's node id; MSGID the kind
//! (`value` or `tombstone`); MSG the payload as UTF-8 with control
//! characters escaped and cut to `max_payload` bytes (binary payloads are
//! shown as `base64:` + their base64).

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use spread_plugin::{Error, Event};

use crate::line::hex;

/// Where messages go.
pub enum Transport {
    /// A UDP destination.
    Udp(UdpSocket, String),
    /// A TCP destination; connected on demand, reconnected after an error.
    Tcp(Option<TcpStream>, String),
    /// A Unix datagram socket, such as `/dev/log`.
    Unix(UnixDatagram, PathBuf),
}

/// The facilities by name.
pub fn facility(name: &str) -> Option<u8> {
    let f = match name {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        "lpr" => 6,
        "news" => 7,
        "uucp" => 8,
        "cron" => 9,
        "authpriv" => 10,
        "ftp" => 11,
        _ => {
            let n: u8 = name.strip_prefix("local")?.parse().ok()?;
            if n > 7 {
                return None;
            }
            16 + n
        }
    };
    Some(f)
}

/// A syslog writer.
pub struct Syslog {
    transport: Transport,
    facility: u8,
    app_name: String,
    max_payload: usize,
    msg: Vec<u8>,
    batch: Vec<u8>,
}

fn rfc3339(micros: u64) -> String {
    // Days since the epoch to a civil date (proleptic Gregorian).
    let secs = micros / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        micros % 1_000_000
    )
}

/// A structured-data parameter value: `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn param(out: &mut Vec<u8>, value: &str) {
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push(b'\\');
        }
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

/// A header field: printable US-ASCII without spaces, at most `max`, or `-`.
fn field(value: &str, max: usize) -> String {
    let v: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

impl Syslog {
    /// A writer to `transport`.
    pub fn new(transport: Transport, facility: u8, app_name: &str, max_payload: usize) -> Syslog {
        Syslog {
            transport,
            facility,
            app_name: field(app_name, 48),
            max_payload,
            msg: Vec::with_capacity(2048),
            batch: Vec::with_capacity(1 << 20),
        }
    }

    /// Formats `e` as one RFC 5424 message into `self.msg`.
    fn format(&mut self, e: &Event<'_>) {
        let out = &mut self.msg;
        out.clear();
        let pri = u16::from(self.facility) * 8 + 6;
        let _ = write!(
            out,
            "<{pri}>1 {} {} {} - {} [spread@32473 topic=\"",
            rfc3339(e.timestamp()),
            field(e.node(), 255),
            self.app_name,
            e.kind().as_str()
        );
        param(out, e.topic());
        let _ = write!(out, "\" iteration=\"{}\" origin=\"", e.iteration());
        param(out, e.origin());
        let _ = write!(out, "\" id=\"{}\"] ", hex(&e.id()));
        match std::str::from_utf8(e.payload()) {
            Ok(text) => {
                let mut used = 0;
                for c in text.chars() {
                    let escaped: String = if c.is_control() {
                        c.escape_default().collect()
                    } else {
                        c.to_string()
                    };
                    if used + escaped.len() > self.max_payload {
                        out.extend_from_slice("…".as_bytes());
                        break;
                    }
                    used += escaped.len();
                    out.extend_from_slice(escaped.as_bytes());
                }
            }
            Err(_) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(e.payload());
                out.extend_from_slice(b"base64:");
                let cut = b64.len().min(self.max_payload);
                out.extend_from_slice(&b64.as_bytes()[..cut]);
            }
        }
    }

    /// Sends every event; a failure is retryable (the batch comes again).
    pub fn write(&mut self, events: &[Event<'_>]) -> Result<(), Error> {
        self.batch.clear();
        for e in events {
            self.format(e);
            match &mut self.transport {
                Transport::Udp(socket, addr) => {
                    socket
                        .send_to(&self.msg, addr.as_str())
                        .map_err(|err| Error::retry(format!("syslog udp {addr}: {err}")))?;
                }
                Transport::Unix(socket, path) => {
                    socket
                        .send_to(&self.msg, &*path)
                        .map_err(|err| Error::retry(format!("syslog {}: {err}", path.display())))?;
                }
                Transport::Tcp(..) => {
                    let _ = write!(self.batch, "{} ", self.msg.len());
                    self.batch.extend_from_slice(&self.msg);
                }
            }
        }
        if let Transport::Tcp(stream, addr) = &mut self.transport {
            let sent = match stream {
                Some(s) => s.write_all(&self.batch),
                None => {
                    let connected = connect(addr)?;
                    stream.insert(connected).write_all(&self.batch)
                }
            };
            if let Err(err) = sent {
                *stream = None;
                return Err(Error::retry(format!("syslog tcp {addr}: {err}")));
            }
        }
        Ok(())
    }

    /// Flushes a TCP stream.
    pub fn flush(&mut self) -> Result<(), Error> {
        if let Transport::Tcp(Some(s), addr) = &mut self.transport {
            if let Err(err) = s.flush() {
                self.transport = Transport::Tcp(None, addr.clone());
                return Err(Error::retry(format!("syslog tcp: {err}")));
            }
        }
        Ok(())
    }
}

/// Connects to a TCP syslog receiver.
pub fn connect(addr: &str) -> Result<TcpStream, Error> {
    let stream =
        TcpStream::connect(addr).map_err(|e| Error::retry(format!("syslog tcp {addr}: {e}")))?;
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spread_plugin::Kind;

    #[test]
    fn timestamps_and_facilities() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_795_694_400_500_001),
            "2026-11-26T12:00:00.500001Z"
        );
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(facility("local0"), Some(16));
        assert_eq!(facility("daemon"), Some(3));
        assert_eq!(facility("local9"), None);
    }

    #[test]
    fn messages_escape_structured_data_and_cut_payloads() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap().to_string();
        let mut s = Syslog::new(
            Transport::Udp(UdpSocket::bind("127.0.0.1:0").unwrap(), addr),
            16,
            "spread test",
            8,
        );
        let e = Event::new(
            5,
            1_795_694_400_000_000,
            "a/\"b\"]",
            b"line1\nline2 and more",
            "o\\x",
            "node-1",
            [0xab; 16],
            Kind::Value,
        );
        s.format(&e);
        let msg = String::from_utf8(s.msg.clone()).unwrap();
        assert_eq!(
            msg,
            format!(
                "<134>1 2026-11-26T12:00:00.000000Z node-1 spreadtest - value \
                 [spread@32473 topic=\"a/\\\"b\\\"\\]\" iteration=\"5\" origin=\"o\\\\x\" id=\"{}\"] line1\\nl…",
                "ab".repeat(16)
            )
        );
    }
}
