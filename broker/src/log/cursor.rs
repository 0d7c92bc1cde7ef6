//! The one reader of the log besides recovery: a cursor that follows the
//! log as it grows. Sinks consume the log through it, and history catch-ups
//! read the past through it (starting at the sparse-index entry before
//! their position, see [`super::Log::cursor`]).
//!
//! The cursor reads only records at or below the committed iteration the
//! caller passes (those are complete and durable under the policy), in
//! chunks with positioned reads, and hands out events that share each
//! chunk's buffer (no copy per event). It moves to the next segment once the
//! current one is exhausted and a later one exists: the engine creates a new
//! segment only after the previous one's last write.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use spread_protocol::Event;

use super::record::{self, Read};
use super::{retention, segment, LogError};

/// Bytes read per positioned read (more when one record is larger).
pub(crate) const CHUNK: usize = 1024 * 1024;

struct Open {
    first: u64,
    path: PathBuf,
    file: File,
    /// Offset of the next record to read.
    pos: u64,
}

/// What a read produced besides events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Nothing was missed.
    None,
    /// Iterations `first..=last` were deleted by retention before the
    /// cursor reached them; the cursor moved past them.
    Range {
        /// First missing iteration.
        first: u64,
        /// Last missing iteration.
        last: u64,
    },
}

/// Reads events after a position, following appends and segment rolls.
pub struct LogCursor {
    dir: PathBuf,
    after: u64,
    open: Option<Open>,
    /// Where to start in the first segment opened, if it is this one:
    /// (segment's first iteration, offset of a record at or before `after`).
    seek: Option<(u64, u64)>,
}

impl LogCursor {
    /// A cursor over the log in `dir` that starts after iteration `after`.
    pub fn new(dir: &Path, after: u64) -> LogCursor {
        LogCursor {
            dir: dir.to_owned(),
            after,
            open: None,
            seek: None,
        }
    }

    /// Starts reading segment `first` at `offset` (a record boundary at or
    /// before the position) instead of at its beginning.
    pub(super) fn seek(mut self, first: u64, offset: u64) -> LogCursor {
        self.seek = Some((first, offset));
        self
    }

    /// The last iteration read (or skipped as missed).
    pub fn position(&self) -> u64 {
        self.after
    }

    /// Appends to `out` the events after the position up to `until`, at most
    /// `max_events` and stopping once `max_bytes` are reached. Returns the
    /// range skipped when retention deleted events the cursor had not read
    /// (then nothing is appended; call again to read on).
    pub fn read(
        &mut self,
        until: u64,
        max_events: usize,
        max_bytes: usize,
        out: &mut Vec<Event>,
    ) -> Result<Missed, LogError> {
        if self.after >= until {
            return Ok(Missed::None);
        }
        if self.open.is_none() {
            let missed = self.position_at_start()?;
            if missed != Missed::None || self.open.is_none() {
                return Ok(missed);
            }
        }
        let (mut events, mut bytes) = (0, 0);
        while events < max_events && bytes < max_bytes {
            let (e, b, stop) =
                self.read_chunk(until, max_events - events, max_bytes - bytes, out)?;
            events += e;
            bytes += b;
            match stop {
                Stop::Limit => break,
                Stop::More => {}
                Stop::End if e > 0 => {}
                Stop::End => {
                    if self.after >= until {
                        break;
                    }
                    // Committed events not in this segment: they are in a
                    // later one, which exists only once this one is complete.
                    let Some((first, path)) = self.later_segment()? else {
                        break;
                    };
                    // Records may have landed between the read and the listing.
                    let (e, b, stop) =
                        self.read_chunk(until, max_events - events, max_bytes - bytes, out)?;
                    events += e;
                    bytes += b;
                    if e == 0 && stop == Stop::End {
                        // Segments between may have been deleted unread.
                        let missed = self.check_deleted()?;
                        self.open_segment(first, path)?;
                        if missed != Missed::None {
                            return Ok(missed);
                        }
                    }
                }
            }
        }
        Ok(Missed::None)
    }

    /// Opens the segment holding the iteration after the position.
    fn position_at_start(&mut self) -> Result<Missed, LogError> {
        let segments = segment::list(&self.dir)?;
        let Some(first_seg) = segments.first() else {
            return Ok(Missed::None);
        };
        let missed = self.check_deleted()?;
        if missed != Missed::None {
            return Ok(missed);
        }
        let wanted = self.after.saturating_add(1);
        let at = segments.partition_point(|(first, _)| *first <= wanted);
        let (first, path) = segments.get(at.saturating_sub(1)).unwrap_or(first_seg);
        self.open_segment(*first, path.clone())?;
        if let (Some((seg, offset)), Some(open)) = (self.seek.take(), self.open.as_mut()) {
            if seg == open.first {
                open.pos = offset;
            }
        }
        Ok(Missed::None)
    }

    fn open_segment(&mut self, first: u64, path: PathBuf) -> Result<(), LogError> {
        let file = File::open(&path).map_err(LogError::io(&path))?;
        self.open = Some(Open {
            first,
            path,
            file,
            pos: segment::HEADER_LEN as u64,
        });
        Ok(())
    }

    /// Whether retention deleted events after the position; if so, moves
    /// past them and says which.
    fn check_deleted(&mut self) -> Result<Missed, LogError> {
        match retention::load_value(&self.dir, retention::DELETED_THROUGH)? {
            Some(through) if through > self.after => {
                let missed = Missed::Range {
                    first: self.after + 1,
                    last: through,
                };
                self.after = through;
                Ok(missed)
            }
            _ => Ok(Missed::None),
        }
    }

    /// The segment after the open one, if any.
    fn later_segment(&self) -> Result<Option<(u64, PathBuf)>, LogError> {
        let Some(open) = &self.open else {
            return Ok(None);
        };
        Ok(segment::list(&self.dir)?
            .into_iter()
            .find(|(first, _)| *first > open.first))
    }

    /// One positioned read and the records in it: (events, bytes, why it
    /// stopped).
    fn read_chunk(
        &mut self,
        until: u64,
        max_events: usize,
        max_bytes: usize,
        out: &mut Vec<Event>,
    ) -> Result<(usize, usize, Stop), LogError> {
        let Some(open) = self.open.as_mut() else {
            return Ok((0, 0, Stop::End));
        };
        let mut want = CHUNK;
        loop {
            let mut buf = BytesMut::zeroed(want);
            let n =
                read_at_most(&open.file, &mut buf, open.pos).map_err(LogError::io(&open.path))?;
            buf.truncate(n);
            let data = buf.freeze();
            let (mut pos, mut events, mut bytes) = (0usize, 0usize, 0usize);
            loop {
                if events >= max_events || bytes >= max_bytes {
                    open.pos += pos as u64;
                    return Ok((events, bytes, Stop::Limit));
                }
                match record::read(&data, pos) {
                    Read::Record {
                        iteration,
                        event,
                        next,
                    } => {
                        if iteration > until {
                            open.pos += pos as u64;
                            return Ok((events, bytes, Stop::Limit));
                        }
                        if iteration > self.after {
                            let start = event.as_ptr() as usize - data.as_ptr() as usize;
                            let raw = data.slice(start..start + event.len());
                            let decoded =
                                Event::decode(raw).map_err(|source| LogError::Decode {
                                    path: open.path.clone(),
                                    source,
                                })?;
                            self.after = iteration;
                            out.push(decoded);
                            events += 1;
                            bytes += event.len();
                        }
                        pos = next;
                    }
                    Read::End | Read::Damaged(_) => {
                        // The chunk ends at the end of what is written or
                        // inside a record: read on from this record.
                        open.pos += pos as u64;
                        let full = n == want;
                        if pos == 0 && full {
                            // One record larger than the chunk: read it whole.
                            // (Unless it is not all written yet.)
                            let written = open
                                .file
                                .metadata()
                                .map_err(LogError::io(&open.path))?
                                .len()
                                .saturating_sub(open.pos);
                            if let Some(len) = record::declared_len(&data) {
                                if len + 8 > want && (len + 8) as u64 <= written {
                                    want = len + 8;
                                    break;
                                }
                            }
                        }
                        let stop = if full && pos > 0 {
                            Stop::More
                        } else {
                            Stop::End
                        };
                        return Ok((events, bytes, stop));
                    }
                }
            }
        }
    }
}

/// Why a chunk read stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// At `until` or a limit.
    Limit,
    /// At the end of a full chunk: more may follow in this segment.
    More,
    /// At the end of what this segment holds now.
    End,
}

/// Reads up to `buf.len()` bytes at `offset`; fewer at the end of the file.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
