//! Checkpoints of the latest-value table, so that a restart replays only the
//! log written after the last checkpoint instead of the whole history.
//!
//! A checkpoint is `<log-dir>/checkpoint`: a 24-byte header (`SPREADCP`,
//! format version u32, reserved u32, the iteration it covers u64), then one
//! log record per topic (its latest event, tombstones included), then a
//! trailer record whose "iteration" is the number of topic records and
//! whose event is empty. It is written to a temporary file, synced, and
//! renamed over the previous one, so a crash leaves either checkpoint whole.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use spread_protocol::Event;

use super::{record, LogError};

const MAGIC: &[u8; 8] = b"SPREADCP";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
const FILE: &str = "checkpoint";

/// The checkpoint's path in a log directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes a checkpoint of `events` covering every iteration up to
/// `iteration`, atomically replacing the previous one.
pub fn write(dir: &Path, iteration: u64, events: &[Event]) -> Result<(), LogError> {
    Ok(crate::durable::write_with(&path(dir), 0o600, |file| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[16..24].copy_from_slice(&iteration.to_le_bytes());
        w.write_all(&header)?;
        let mut buf = Vec::with_capacity(64 * 1024);
        for e in events {
            record::append(&mut buf, e.iteration(), e.encoded());
            if buf.len() >= 60 * 1024 {
                w.write_all(&buf)?;
                buf.clear();
            }
        }
        record::append(&mut buf, events.len() as u64, &[]);
        w.write_all(&buf)?;
        w.flush()
    })?)
}

/// Loads the checkpoint, if there is a valid one, handing every event to
/// `restore`; returns the iteration it covers. A damaged or incomplete
/// checkpoint is ignored (with a warning) so that the log alone is
/// replayed, unless retention already deleted history it replaced: the log
/// alone would then silently lack topics, so the start is refused.
pub fn load(dir: &Path, mut restore: impl FnMut(Event)) -> Result<Option<u64>, LogError> {
    let target = path(dir);
    let file = match File::open(&target) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(&target)(e)),
    };
    // Decode everything first: a checkpoint is used whole or not at all.
    match read_all(file) {
        Ok((iteration, events)) => {
            events.into_iter().for_each(&mut restore);
            Ok(Some(iteration))
        }
        Err(reason) if super::retention::load(dir)?.is_some() => {
            Err(LogError::UnusableCheckpoint {
                path: target,
                reason,
            })
        }
        Err(reason) => {
            tracing::warn!(
                checkpoint = %target.display(),
                reason,
                "ignoring an unusable checkpoint; replaying the whole log"
            );
            Ok(None)
        }
    }
}

fn read_all(file: File) -> Result<(u64, Vec<Event>), &'static str> {
    let mut rd = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN];
    rd.read_exact(&mut header).map_err(|_| "short header")?;
    if &header[..8] != MAGIC {
        return Err("bad magic");
    }
    if u32::from_le_bytes([header[8], header[9], header[10], header[11]]) != VERSION {
        return Err("unsupported version");
    }
    let mut it = [0u8; 8];
    it.copy_from_slice(&header[16..24]);
    let iteration = u64::from_le_bytes(it);
    let mut events = Vec::new();
    let mut records = record::Reader::new(rd);
    loop {
        let (n, event) = match records.next_record() {
            record::Read::Record {
                iteration, event, ..
            } => (iteration, event),
            record::Read::End => return Err("missing trailer"),
            record::Read::Damaged(why) => return Err(why),
        };
        if event.is_empty() {
            // The trailer: the number of topic records.
            return if n == events.len() as u64 {
                Ok((iteration, events))
            } else {
                Err("trailer count mismatch")
            };
        }
        let event =
            Event::decode(Bytes::copy_from_slice(event)).map_err(|_| "undecodable event")?;
        events.push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spread_protocol::{EventId, EventKind, EventParts};

    fn ev(i: u64) -> Event {
        EventParts {
            topic: &format!("t/{i}"),
            payload: &i.to_le_bytes(),
            timestamp: i,
            origin: "n",
            id: EventId([i as u8; 16]),
            iteration: i,
            kind: EventKind::Value,
            source: 0,
        }
        .encode()
    }

    #[test]
    fn round_trip_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let events: Vec<Event> = (1..=100).map(ev).collect();
        write(dir.path(), 150, &events).unwrap();
        let mut back = Vec::new();
        let it = load(dir.path(), |e| back.push(e)).unwrap();
        assert_eq!(it, Some(150));
        assert_eq!(back, events);

        // Cut off the trailer: the checkpoint is not used at all.
        let p = path(dir.path());
        let len = std::fs::metadata(&p).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 3).unwrap();
        let mut back = Vec::new();
        assert_eq!(load(dir.path(), |e| back.push(e)).unwrap(), None);
        assert!(back.is_empty());

        // No checkpoint at all.
        std::fs::remove_file(&p).unwrap();
        assert_eq!(load(dir.path(), |_| {}).unwrap(), None);
    }
}
