//! A sink's dead letters: the events its plugin rejected (a value the
//! destination can never store), kept whole in `sinks/<name>.rejected` so an
//! operator can inspect them and store them by hand. One JSON object per
//! line, appended and synced before the sink moves past the event.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use spread_plugin::{Event, Kind};

/// The dead-letter file of sink `name` under `dir` (the checkpoints dir).
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.rejected"))
}

/// One line of the file.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Letter {
    pub iteration: u64,
    pub timestamp_us: u64,
    pub topic: String,
    pub origin: String,
    pub node: String,
    /// 32 hex digits.
    pub id: String,
    /// `value` or `tombstone`.
    pub kind: String,
    pub payload_base64: String,
    /// What the plugin said.
    pub error: String,
    pub rejected_at_us: u64,
}

impl Letter {
    fn of(e: &Event<'_>, error: &str, now_us: u64) -> Letter {
        Letter {
            iteration: e.iteration(),
            timestamp_us: e.timestamp(),
            topic: e.topic().to_owned(),
            origin: e.origin().to_owned(),
            node: e.node().to_owned(),
            id: e.id().iter().map(|b| format!("{b:02x}")).collect(),
            kind: match e.kind() {
                Kind::Value => "value",
                Kind::Tombstone => "tombstone",
            }
            .to_owned(),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(e.payload()),
            error: error.to_owned(),
            rejected_at_us: now_us,
        }
    }
}

/// Appends `event` and syncs the file, so that the sink may move past it.
pub fn append(path: &Path, event: &Event<'_>, error: &str, now_us: u64) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&Letter::of(event, error, now_us))?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&line)?;
    file.sync_data()
}

/// How many letters the file holds (0 when there is none). A torn last
/// line (a crash mid-append) is not counted: its event was not passed.
pub fn count(path: &Path) -> std::io::Result<u64> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut n = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(n);
        }
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = buf.len();
        reader.consume(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_hold_the_whole_event_and_are_counted() {
        let dir = std::env::temp_dir().join(format!("spread-dead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = path(&dir, "archive");
        let _ = std::fs::remove_file(&file);
        assert_eq!(count(&file).unwrap(), 0);
        let e = Event::new(
            7,
            9,
            "a/b",
            b"\0\xff",
            "alice",
            "n1",
            [0xab; 16],
            Kind::Value,
        );
        append(&file, &e, "too long", 11).unwrap();
        append(&file, &e, "again", 12).unwrap();
        assert_eq!(count(&file).unwrap(), 2);
        let text = std::fs::read_to_string(&file).unwrap();
        let first: Letter = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first.iteration, 7);
        assert_eq!(first.topic, "a/b");
        assert_eq!(first.id, "ab".repeat(16));
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&first.payload_base64)
                .unwrap(),
            b"\0\xff"
        );
        assert_eq!(first.error, "too long");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
