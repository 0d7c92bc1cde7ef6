//! An example sink plugin: appends one line per event to a file.
//!
//! Line format (shared with the C example, `../c-file-sink`), tab-separated:
//! `iteration timestamp id-hex kind origin topic payload-hex`.
//!
//! Settings (JSON, from the broker's `[[sinks]]` entry):
//! - `path`: the file, relative to the broker's data dir unless absolute;
//! - `dedupe` (default false): read the events already in the file at open
//!   and skip events seen before, so redelivery after a crash writes each
//!   event once (effectively-once on top of the host's at-least-once). An
//!   event is its id *and* topic: a client may reuse an id on several
//!   topics, and those are several events.
//!
//! Build: `cargo build --release -p spread-example-file-sink`, then point a
//! `[[sinks]]` entry at `target/release/libspread_example_file_sink.so`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use spread_plugin::{export_plugin, Error, Event, OpenContext, Result, Sink};

#[derive(serde::Deserialize)]
struct Settings {
    path: PathBuf,
    #[serde(default)]
    dedupe: bool,
}

/// The sink: a buffered file and, when deduplicating, the ids it holds.
struct FileSink {
    out: BufWriter<File>,
    /// Topics seen per event id (almost always one).
    seen: Option<HashMap<[u8; 16], Vec<String>>>,
    line: String,
}

impl Sink for FileSink {
    fn open(ctx: &OpenContext<'_>) -> Result<Self> {
        let settings: Settings = ctx.config()?;
        let path = ctx.data_dir.join(settings.path);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| Error::fatal(format!("{}: {e}", path.display())))?;
        spread_plugin::files::cut_torn_line(&mut file)
            .map_err(|e| Error::fatal(format!("{}: {e}", path.display())))?;
        let seen = if settings.dedupe {
            Some(read_ids(&path)?)
        } else {
            None
        };
        Ok(FileSink {
            out: BufWriter::with_capacity(256 * 1024, file),
            seen,
            line: String::new(),
        })
    }

    fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()> {
        for e in events {
            if let Some(seen) = &mut self.seen {
                let topics = seen.entry(e.id()).or_default();
                if topics.iter().any(|t| t == e.topic()) {
                    continue;
                }
                topics.push(e.topic().to_owned());
            }
            self.line.clear();
            let _ = writeln!(
                self.line,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                e.iteration(),
                e.timestamp(),
                hex(&e.id()),
                e.kind().as_str(),
                e.origin(),
                e.topic(),
                hex(e.payload())
            );
            self.out
                .write_all(self.line.as_bytes())
                .map_err(Error::retry)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(Error::retry)?;
        self.out.get_ref().sync_data().map_err(Error::retry)
    }
}

/// The events already in the file, as topics per id (whole lines only, once
/// [`spread_plugin::files::cut_torn_line`] ran).
fn read_ids(path: &std::path::Path) -> Result<HashMap<[u8; 16], Vec<String>>> {
    let mut ids: HashMap<[u8; 16], Vec<String>> = HashMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(Error::fatal(format!("{}: {e}", path.display()))),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(Error::fatal)? == 0 {
            return Ok(ids);
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            continue;
        };
        let fields: Vec<&str> = text.trim_end_matches('\n').split('\t').collect();
        if let (Some(id), Some(topic)) = (fields.get(2).and_then(|f| parse_id(f)), fields.get(5)) {
            ids.entry(id).or_default().push((*topic).to_owned());
        }
    }
}

fn parse_id(s: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    if s.len() != 32 {
        return None;
    }
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

export_plugin!(name: "example-file-sink", sink: FileSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keeps_one_id_on_two_topics_and_skips_redeliveries_across_opens() {
        use spread_plugin::Kind;
        let dir =
            std::env::temp_dir().join(format!("spread-file-sink-dedupe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ctx = OpenContext {
            name: "f",
            config_json: r#"{"path": "out.txt", "dedupe": true}"#,
            node: "n",
            data_dir: &dir,
        };
        let _ = std::fs::remove_file(dir.join("out.txt"));
        let a = Event::new(1, 5, "a", b"1", "o", "n", [3; 16], Kind::Value);
        let b = Event::new(2, 5, "b", b"1", "o", "n", [3; 16], Kind::Value);
        let mut sink = FileSink::open(&ctx).unwrap();
        sink.write_batch(&[a, b]).unwrap();
        sink.write_batch(&[a]).unwrap();
        sink.flush().unwrap();
        drop(sink);
        let mut sink = FileSink::open(&ctx).unwrap();
        sink.write_batch(&[b, a]).unwrap();
        sink.flush().unwrap();
        drop(sink);
        let text = std::fs::read_to_string(dir.join("out.txt")).unwrap();
        let topics: Vec<&str> = text
            .lines()
            .map(|l| l.split('\t').nth(5).unwrap())
            .collect();
        assert_eq!(topics, ["a", "b"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
