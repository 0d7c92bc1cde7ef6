//! JSON Lines files with rotation: events are appended to
//! `<dir>/<prefix>.jsonl`; when the next line would take it past
//! `max_bytes`, or it is older than `max_age`, it is renamed to
//! `<prefix>-<µs since the epoch, 20 digits>.jsonl` (sortable by name) and a
//! new one starts, so a line is never split across files. At most `keep`
//! rotated files are kept. Log shippers (Vector, Fluent Bit, Promtail)
//! follow the active file through renames.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spread_plugin::{Error, Event};

use crate::line::write_json;

/// Rotation limits.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// Rotate before a line would make the file larger than this.
    pub max_bytes: u64,
    /// Rotate a file older than this (checked when events arrive).
    pub max_age: Option<Duration>,
    /// Rotated files kept; older ones are deleted.
    pub keep: usize,
}

/// The writer.
pub struct Files {
    dir: PathBuf,
    prefix: String,
    rotation: Rotation,
    file: File,
    len: u64,
    opened: Instant,
    pending: Vec<u8>,
    line: Vec<u8>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::retry(format!("{}: {e}", path.display()))
}

/// Drops a line a crash left torn at the end of `file` (its event comes
/// again: it is after the host's checkpoint). Returns the length kept.
fn drop_torn_tail(file: &mut File, path: &Path) -> Result<u64, Error> {
    let len = file.metadata().map_err(io(path))?.len();
    let window = len.min(1 << 20);
    let mut tail = vec![0u8; window as usize];
    file.seek(SeekFrom::Start(len - window)).map_err(io(path))?;
    file.read_exact(&mut tail).map_err(io(path))?;
    if tail.last().is_none_or(|b| *b == b'\n') {
        return Ok(len);
    }
    let keep = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => len - window + i as u64 + 1,
        None if window == len => 0,
        None => {
            return Err(Error::fatal(format!(
                "{}: a last line over 1 MiB",
                path.display()
            )))
        }
    };
    file.set_len(keep).map_err(io(path))?;
    Ok(keep)
}

impl Files {
    /// Opens (or continues) the active file in `dir`.
    pub fn open(dir: &Path, prefix: &str, rotation: Rotation) -> Result<Files, Error> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(format!("{prefix}.jsonl"));
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::fatal(format!("{}: {e}", path.display())))?;
        let len = drop_torn_tail(&mut file, &path)?;
        Ok(Files {
            dir: dir.to_owned(),
            prefix: prefix.to_owned(),
            rotation,
            file,
            len,
            opened: Instant::now(),
            pending: Vec::with_capacity(1 << 20),
            line: Vec::with_capacity(4096),
        })
    }

    fn active(&self) -> PathBuf {
        self.dir.join(format!("{}.jsonl", self.prefix))
    }

    /// Appends the events, rotating between lines as the limits require.
    pub fn write(&mut self, events: &[Event<'_>]) -> Result<(), Error> {
        if let Some(age) = self.rotation.max_age {
            if self.len > 0 && self.opened.elapsed() >= age {
                self.rotate()?;
            }
        }
        for e in events {
            self.line.clear();
            write_json(&mut self.line, e);
            let size = (self.pending.len() + self.line.len()) as u64;
            if self.len + size > self.rotation.max_bytes && self.len + self.pending.len() as u64 > 0
            {
                self.rotate()?;
            }
            self.pending.extend_from_slice(&self.line);
        }
        self.write_pending()
    }

    fn write_pending(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.active();
        if let Err(e) = self.file.write_all(&self.pending) {
            // Leave no partial line behind; the batch is retried.
            let _ = self.file.set_len(self.len);
            return Err(io(&path)(e));
        }
        self.len += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Makes everything written durable.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.write_pending()?;
        self.file.sync_data().map_err(io(&self.active()))
    }

    /// Closes the active file under a rotated name and starts a new one.
    fn rotate(&mut self) -> Result<(), Error> {
        self.flush()?;
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut target = self.dir.join(format!("{}-{micros:020}.jsonl", self.prefix));
        let mut n = 1;
        while target.exists() {
            target = self
                .dir
                .join(format!("{}-{micros:020}.{n}.jsonl", self.prefix));
            n += 1;
        }
        let active = self.active();
        std::fs::rename(&active, &target).map_err(io(&active))?;
        self.file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&active)
            .map_err(io(&active))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        self.len = 0;
        self.opened = Instant::now();
        self.prune()
    }

    /// Rotated files, oldest first.
    pub fn rotated(&self) -> Result<Vec<PathBuf>, Error> {
        let head = format!("{}-", self.prefix);
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&head) && n.ends_with(".jsonl"))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn prune(&mut self) -> Result<(), Error> {
        let rotated = self.rotated()?;
        let excess = rotated.len().saturating_sub(self.rotation.keep);
        for old in &rotated[..excess] {
            std::fs::remove_file(old).map_err(io(old))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spread_plugin::{Kind, OwnedEvent};

    fn events(from: u64, n: u64) -> Vec<OwnedEvent> {
        (from..from + n)
            .map(|i| OwnedEvent {
                iteration: i,
                timestamp: i,
                topic: format!("t/{}", i % 7),
                payload: format!("payload {i} {}", "x".repeat((i % 50) as usize)).into_bytes(),
                origin: "o".into(),
                node: "n".into(),
                id: [(i % 256) as u8; 16],
                kind: Kind::Value,
            })
            .collect()
    }

    fn read_all(dir: &Path, files: &Files) -> Vec<u64> {
        let mut paths = files.rotated().unwrap();
        paths.push(dir.join("events.jsonl"));
        let mut out = Vec::new();
        for p in paths {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'), "{}", p.display());
            assert!(
                text.len() as u64 <= 4096,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("a whole JSON line");
                out.push(v["iteration"].as_u64().unwrap());
            }
        }
        out
    }

    #[test]
    fn rotation_by_size_keeps_every_event_once_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_bytes: 4096,
            max_age: None,
            keep: 1000,
        };
        let mut files = Files::open(dir.path(), "events", rotation).unwrap();
        for batch in 0..50 {
            let owned = events(batch * 40, 40);
            let views: Vec<Event<'_>> = owned.iter().map(OwnedEvent::as_event).collect();
            files.write(&views).unwrap();
        }
        files.flush().unwrap();
        assert!(files.rotated().unwrap().len() > 10);
        assert_eq!(read_all(dir.path(), &files), (0..2000).collect::<Vec<_>>());
    }

    #[test]
    fn old_files_are_pruned_and_age_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_bytes: 4096,
            max_age: Some(Duration::ZERO),
            keep: 3,
        };
        let mut files = Files::open(dir.path(), "events", rotation).unwrap();
        for batch in 0..10 {
            let owned = events(batch * 5, 5);
            let views: Vec<Event<'_>> = owned.iter().map(OwnedEvent::as_event).collect();
            files.write(&views).unwrap();
        }
        // Every batch started a new file (age 0); three rotated ones remain.
        assert_eq!(files.rotated().unwrap().len(), 3);
        let kept = read_all(dir.path(), &files);
        assert_eq!(kept, (30..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_last_line_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"iteration\":1}\n{\"iterat").unwrap();
        let rotation = Rotation {
            max_bytes: 1 << 20,
            max_age: None,
            keep: 1,
        };
        let mut files = Files::open(dir.path(), "events", rotation).unwrap();
        let owned = events(2, 1);
        files.write(&[owned[0].as_event()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"iteration\":1}\n{\"topic\""), "{text}");
        assert_eq!(text.lines().count(), 2);
    }
}
