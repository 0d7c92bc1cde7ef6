//! The syslog output against receivers in the test that parse RFC 5424
//! strictly: TCP with octet counting (and a receiver that is down, then
//! back), UDP and a Unix datagram socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::mpsc;

use spread_log_sink::LogSink;
use spread_plugin::{Error, Event, Kind, OpenContext, OwnedEvent, Sink};

/// One message, as parsed.
#[derive(Debug, PartialEq, Eq)]
struct Message {
    pri: u16,
    timestamp: String,
    host: String,
    app: String,
    msgid: String,
    params: Vec<(String, String)>,
    msg: String,
}

/// Parses one RFC 5424 message with one SD element, failing on anything
/// out of place.
fn parse(raw: &str) -> Message {
    let rest = raw.strip_prefix('<').expect("<PRI>");
    let (pri, rest) = rest.split_once('>').expect("PRI>");
    assert!(
        pri.len() <= 3 && pri.bytes().all(|b| b.is_ascii_digit()),
        "{raw}"
    );
    let rest = rest.strip_prefix("1 ").expect("version 1");
    let mut header = rest.splitn(6, ' ');
    let timestamp = header.next().unwrap().to_string();
    assert_eq!(timestamp.len(), 27, "{timestamp}");
    assert!(timestamp.ends_with('Z') && &timestamp[10..11] == "T" && &timestamp[19..20] == ".");
    let host = header.next().unwrap().to_string();
    let app = header.next().unwrap().to_string();
    assert_eq!(header.next().unwrap(), "-", "PROCID");
    let msgid = header.next().unwrap().to_string();
    for f in [&host, &app, &msgid] {
        assert!(f.bytes().all(|b| b.is_ascii_graphic()) && !f.is_empty());
    }
    let sd = header.next().unwrap();
    let sd = sd.strip_prefix("[spread@32473").expect("SD-ID");
    let mut params = Vec::new();
    let mut chars = sd.chars().peekable();
    loop {
        match chars.next() {
            Some(']') => break,
            Some(' ') => {}
            other => panic!("unexpected {other:?} in SD of {raw}"),
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        loop {
            match chars.next().expect("closing quote") {
                '\\' => value.push(chars.next().expect("escaped")),
                '"' => break,
                c => {
                    assert!(c != ']', "unescaped ] in {raw}");
                    value.push(c);
                }
            }
        }
        params.push((name, value));
        if chars.peek() == Some(&']') {
            chars.next();
            break;
        }
    }
    assert_eq!(chars.next(), Some(' '), "SP before MSG");
    Message {
        pri: pri.parse().unwrap(),
        timestamp,
        host,
        app,
        msgid,
        params,
        msg: chars.collect(),
    }
}

fn events(n: u64) -> Vec<OwnedEvent> {
    (0..n)
        .map(|i| OwnedEvent {
            iteration: 100 + i,
            timestamp: 1_795_694_400_000_000 + i,
            topic: format!("plant/\"line\"]{}", i % 3),
            payload: format!("reading {i}").into_bytes(),
            origin: "sensor\\7".into(),
            node: "node-1".into(),
            id: [(i % 256) as u8; 16],
            kind: if i % 10 == 9 {
                Kind::Tombstone
            } else {
                Kind::Value
            },
        })
        .collect()
}

fn open(settings: &str, dir: &Path) -> LogSink {
    LogSink::open(&OpenContext {
        name: "syslog",
        config_json: settings,
        node: "node-1",
        data_dir: dir,
    })
    .unwrap()
}

fn check(received: &[Message], sent: &[OwnedEvent]) {
    assert_eq!(received.len(), sent.len());
    for (m, e) in received.iter().zip(sent) {
        assert_eq!(m.pri, 16 * 8 + 6);
        assert_eq!(m.host, "node-1");
        assert_eq!(m.app, "spread");
        assert_eq!(m.msgid, e.kind.as_str());
        assert_eq!(m.params[0], ("topic".into(), e.topic.clone()));
        assert_eq!(m.params[1], ("iteration".into(), e.iteration.to_string()));
        assert_eq!(m.params[2], ("origin".into(), e.origin.clone()));
        assert_eq!(m.msg, String::from_utf8(e.payload.clone()).unwrap());
    }
}

/// Reads octet-counted frames until the peer closes.
fn tcp_receiver(listener: TcpListener, tx: mpsc::Sender<Message>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut rd = BufReader::new(stream.unwrap());
            loop {
                let mut len = Vec::new();
                if rd.read_until(b' ', &mut len).unwrap() == 0 {
                    break;
                }
                let n: usize = std::str::from_utf8(&len[..len.len() - 1])
                    .unwrap()
                    .parse()
                    .expect("octet count");
                let mut msg = vec![0; n];
                rd.read_exact(&mut msg).unwrap();
                if tx.send(parse(std::str::from_utf8(&msg).unwrap())).is_err() {
                    return;
                }
            }
        }
    });
}

#[test]
fn tcp_with_a_receiver_down_then_back() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on yet.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings =
        format!(r#"{{"output": "syslog", "transport": "tcp", "address": "127.0.0.1:{port}"}}"#);
    let mut sink = open(&settings, dir.path());
    let sent = events(500);
    let views: Vec<Event<'_>> = sent.iter().map(OwnedEvent::as_event).collect();
    assert!(matches!(sink.write_batch(&views), Err(Error::Retryable(_))));
    // The receiver comes up; the host retries the same batch.
    let (tx, rx) = mpsc::channel();
    tcp_receiver(TcpListener::bind(("127.0.0.1", port)).unwrap(), tx);
    sink.write_batch(&views).unwrap();
    sink.flush().unwrap();
    let received: Vec<Message> = (0..500).map(|_| rx.recv().unwrap()).collect();
    check(&received, &sent);
}

#[test]
fn udp_and_unix_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let sent = events(50);
    let views: Vec<Event<'_>> = sent.iter().map(OwnedEvent::as_event).collect();

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let settings = format!(
        r#"{{"output": "syslog", "transport": "udp", "address": "{}"}}"#,
        udp.local_addr().unwrap()
    );
    let mut sink = open(&settings, dir.path());
    sink.write_batch(&views).unwrap();
    let mut buf = vec![0u8; 65536];
    let received: Vec<Message> = (0..50)
        .map(|_| {
            let n = udp.recv(&mut buf).unwrap();
            parse(std::str::from_utf8(&buf[..n]).unwrap())
        })
        .collect();
    check(&received, &sent);

    let path = dir.path().join("log.sock");
    let unix = UnixDatagram::bind(&path).unwrap();
    unix.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let settings = format!(
        r#"{{"output": "syslog", "transport": "unix", "address": "{}"}}"#,
        path.display()
    );
    // A Unix datagram queue holds few messages: read while the sink writes.
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        (0..50)
            .map(|_| {
                let n = unix.recv(&mut buf).unwrap();
                parse(std::str::from_utf8(&buf[..n]).unwrap())
            })
            .collect::<Vec<Message>>()
    });
    let mut sink = open(&settings, dir.path());
    sink.write_batch(&views).unwrap();
    check(&reader.join().unwrap(), &sent);
}

#[test]
fn bad_settings_are_fatal() {
    let dir = tempfile::tempdir().unwrap();
    for settings in [
        r#"{"output": "kafka"}"#,
        r#"{"output": "syslog", "facility": "local9"}"#,
        r#"{"output": "syslog", "transport": "carrier-pigeon"}"#,
        r#"{"output": "file", "max_bytes": 10}"#,
    ] {
        match LogSink::open(&OpenContext {
            name: "x",
            config_json: settings,
            node: "n",
            data_dir: dir.path(),
        }) {
            Err(Error::Fatal(_)) => {}
            Err(e) => panic!("{settings}: {e}"),
            Ok(_) => panic!("{settings}: opened"),
        }
    }
}
