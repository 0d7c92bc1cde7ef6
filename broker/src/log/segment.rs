//! Segment files: a 16-byte header (`SPREADLG`, format version, reserved),
//! then records in increasing iteration order. A segment is named after the
//! first iteration it may hold: `00000000000000000042.log`.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::record::{self, Read};
use super::LogError;

/// File magic.
pub const MAGIC: &[u8; 8] = b"SPREADLG";
/// On-disk format version.
pub const VERSION: u32 = 1;
/// Header length.
pub const HEADER_LEN: usize = 16;
/// A sparse index entry is kept every this many bytes of records.
pub const INDEX_EVERY: u64 = 256 * 1024;

/// The file name of the segment starting at `first`.
pub fn file_name(first: u64) -> String {
    format!("{first:020}.log")
}

/// The first iteration from a segment's file name.
pub fn parse_name(name: &str) -> Option<u64> {
    name.strip_suffix(".log")?.parse().ok()
}

/// The header bytes.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Suffix of a segment being created.
pub const TMP_SUFFIX: &str = ".tmp";

/// Creates a new, empty segment with its header, synced: written under a
/// temporary name and renamed into place, so a failure (a full disk at the
/// roll, a crash) leaves no half-made segment behind and a retry starts
/// afresh. The caller syncs the directory.
pub fn create(path: &Path) -> Result<File, LogError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let made = (|| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(LogError::io(&tmp))?;
        f.write_all(&header()).map_err(LogError::io(&tmp))?;
        f.sync_all().map_err(LogError::io(&tmp))?;
        drop(f);
        if std::fs::metadata(path).is_ok_and(|m| m.len() > HEADER_LEN as u64) {
            // Never replace records (iterations are never reused).
            return Err(LogError::Corrupt {
                path: path.to_owned(),
                offset: 0,
                reason: "a segment with records already has this name",
            });
        }
        std::fs::rename(&tmp, path).map_err(LogError::io(path))?;
        std::fs::OpenOptions::new()
            .append(true)
            .read(true)
            .open(path)
            .map_err(LogError::io(path))
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// What a scan found in one segment.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Bytes of the file that hold valid records (header included).
    pub valid_len: u64,
    /// Valid records.
    pub records: u64,
    /// Iteration of the last valid record.
    pub last: Option<u64>,
    /// Sparse index: (iteration, offset) every [`INDEX_EVERY`] bytes.
    pub index: Vec<(u64, u64)>,
    /// Bytes after the valid records, and why they were not valid.
    pub damaged: Option<(u64, &'static str)>,
    /// Offset of a valid record after the damage, if there is one: then the
    /// damage is not a torn write at the end but corruption in the middle.
    pub valid_after_damage: Option<u64>,
}

/// The first offset after `from` where a whole valid record with an
/// iteration above `last` starts.
fn valid_record_after(data: &[u8], from: usize, last: Option<u64>) -> Option<u64> {
    (from + 1..data.len().saturating_sub(record::HEADER - 1)).find_map(|pos| {
        match record::read(data, pos) {
            Read::Record { iteration, .. } if last.is_none_or(|l| iteration > l) => {
                Some(pos as u64)
            }
            _ => None,
        }
    })
}

/// Reads a whole segment, calling `each` for every valid record in order,
/// and stops at the first damaged one.
pub fn scan(
    path: &Path,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), LogError>,
) -> Result<Scanned, LogError> {
    let io = LogError::io(path);
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(&io)?;
    if data.len() < HEADER_LEN || &data[..8] != MAGIC {
        return Err(LogError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            reason: "not a Spread log segment (bad header)",
        });
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != VERSION {
        return Err(LogError::Corrupt {
            path: path.to_owned(),
            offset: 8,
            reason: "unsupported segment format version",
        });
    }
    let mut out = Scanned::default();
    let mut pos = HEADER_LEN;
    let mut next_index = 0u64;
    loop {
        match record::read(&data, pos) {
            Read::Record {
                iteration,
                event,
                next,
            } => {
                if out.last.is_some_and(|l| iteration <= l) {
                    out.damaged = Some(((data.len() - pos) as u64, "iteration out of order"));
                    break;
                }
                if pos as u64 >= next_index {
                    out.index.push((iteration, pos as u64));
                    next_index = pos as u64 + INDEX_EVERY;
                }
                each(iteration, event)?;
                out.records += 1;
                out.last = Some(iteration);
                pos = next;
            }
            Read::End => break,
            Read::Damaged(why) => {
                out.damaged = Some(((data.len() - pos) as u64, why));
                out.valid_after_damage = valid_record_after(&data, pos, out.last);
                break;
            }
        }
    }
    out.valid_len = pos as u64;
    Ok(out)
}

/// Segment files of `dir` at start, after removing what an interrupted
/// roll left: a segment still under its temporary name, or a last segment
/// without a whole header (made by a crash in an older version), which
/// cannot hold a record.
pub fn list_recovering(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    for entry in std::fs::read_dir(dir).map_err(LogError::io(dir))? {
        let entry = entry.map_err(LogError::io(dir))?;
        let name = entry.file_name();
        if name
            .to_str()
            .and_then(|n| n.strip_suffix(TMP_SUFFIX))
            .and_then(parse_name)
            .is_some()
        {
            std::fs::remove_file(entry.path()).map_err(LogError::io(&entry.path()))?;
        }
    }
    let mut files = list(dir)?;
    if let Some((_, last)) = files.last() {
        let len = std::fs::metadata(last).map_err(LogError::io(last))?.len();
        if len < HEADER_LEN as u64 {
            tracing::warn!(segment = %last.display(), len, "removing a segment left half-created");
            std::fs::remove_file(last).map_err(LogError::io(last))?;
            files.pop();
        }
    }
    Ok(files)
}

/// Segment files of `dir`, sorted by first iteration.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(LogError::io(dir))? {
        let entry = entry.map_err(LogError::io(dir))?;
        let name = entry.file_name();
        if let Some(first) = name.to_str().and_then(parse_name) {
            out.push((first, entry.path()));
        }
    }
    out.sort_unstable();
    Ok(out)
}
