//! The JSON form of an event: `spread sub --json`'s fields plus `node`.

use base64::Engine as _;
use serde::Serialize;
use spread_plugin::Event;

#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    iteration: u64,
    timestamp: u64,
    origin: &'a str,
    id: String,
    kind: &'static str,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Appends `e` as one JSON line (with its newline) to `out`.
pub fn write_json(out: &mut Vec<u8>, e: &Event<'_>) {
    let text = std::str::from_utf8(e.payload()).ok();
    let line = Line {
        topic: e.topic(),
        iteration: e.iteration(),
        timestamp: e.timestamp(),
        origin: e.origin(),
        id: hex(&e.id()),
        kind: e.kind().as_str(),
        node: e.node(),
        payload: text,
        payload_base64: match text {
            Some(_) => None,
            None => Some(base64::engine::general_purpose::STANDARD.encode(e.payload())),
        },
    };
    // Serializing borrowed strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use spread_plugin::Kind;

    #[test]
    fn text_and_binary_payloads() {
        let mut out = Vec::new();
        write_json(
            &mut out,
            &Event::new(7, 9, "a/b", b"hi \"x\"", "o", "n", [1; 16], Kind::Value),
        );
        write_json(
            &mut out,
            &Event::new(8, 10, "a/b", &[0xff, 0], "o", "n", [2; 16], Kind::Tombstone),
        );
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["payload"], "hi \"x\"");
        assert_eq!(lines[0]["id"], "01".repeat(16));
        assert_eq!(lines[0]["node"], "n");
        assert_eq!(lines[1]["payload_base64"], "/wA=");
        assert_eq!(lines[1]["kind"], "tombstone");
    }
}
