//! Log records: `[len: u32][crc32c: u32][iteration: u64][event]`, little
//! endian, where `len` counts the iteration and the event and the checksum
//! covers them both.

/// Bytes before the event.
pub const HEADER: usize = 16;

/// Largest record body (iteration + event) of the format. It is a property
/// of the files, not of the configuration: readers accept every record up
/// to it, whatever `--max-frame` is now, and the broker never writes a
/// larger one (the frame limit is validated against [`MAX_EVENT`]).
pub const MAX_LEN: usize = 1 << 30;

/// Largest event a record holds.
pub const MAX_EVENT: usize = MAX_LEN - 8;

/// Appends one record to `buf`.
pub fn append(buf: &mut Vec<u8>, iteration: u64, event: &[u8]) {
    let it = iteration.to_le_bytes();
    let mut crc = crc32c::crc32c(&it);
    crc = crc32c::crc32c_append(crc, event);
    buf.extend_from_slice(&((8 + event.len()) as u32).to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&it);
    buf.extend_from_slice(event);
}

/// What lies at a position of a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<'a> {
    /// A valid record; the next one starts at `next` (0 from a
    /// [`Reader`], which is positioned there already).
    Record {
        /// The record's iteration.
        iteration: u64,
        event: &'a [u8],
        /// Offset of the following record.
        next: usize,
    },
    /// Nothing more: the data ends exactly here.
    End,
    /// A torn or corrupt record starts here.
    Damaged(&'static str),
}

/// Reads the record at `pos` of `data`; a length beyond [`MAX_LEN`] or
/// beyond the data is damaged (a corrupt length must not make us trust
/// garbage).
pub fn read(data: &[u8], pos: usize) -> Read<'_> {
    let rest = &data[pos.min(data.len())..];
    if rest.is_empty() {
        return Read::End;
    }
    if rest.len() < HEADER {
        return Read::Damaged("torn record header");
    }
    let word = |at: usize| u32::from_le_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
    let len = word(0) as usize;
    let crc = word(4);
    if !(8..=MAX_LEN).contains(&len) {
        return Read::Damaged("implausible record length");
    }
    let Some(body) = rest.get(8..8 + len) else {
        return Read::Damaged("torn record body");
    };
    match check(crc, body) {
        Some((iteration, event)) => Read::Record {
            iteration,
            event,
            next: pos + 8 + len,
        },
        None => Read::Damaged("checksum mismatch"),
    }
}

/// The body length a record header declares, if plausible.
pub fn declared_len(header: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(header.get(..4)?.try_into().ok()?) as usize;
    (8..=MAX_LEN).contains(&len).then_some(len)
}

/// Verifies a record body (iteration + event) against its checksum.
pub fn check(crc: u32, body: &[u8]) -> Option<(u64, &[u8])> {
    if body.len() < 8 || crc32c::crc32c(body) != crc {
        return None;
    }
    let mut it = [0u8; 8];
    it.copy_from_slice(&body[..8]);
    Some((u64::from_le_bytes(it), &body[8..]))
}

/// Reads records one after another from a stream (a segment from an
/// offset, a checkpoint), reusing one buffer: what the readers of the log
/// share. [`read`] is the same for bytes already in memory (recovery).
pub struct Reader<R> {
    inner: R,
    body: Vec<u8>,
}

impl<R: std::io::Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            body: Vec::new(),
        }
    }

    /// The next record. `End` when no whole header follows (the end of what
    /// is written, or a record still being appended), `Damaged` when one
    /// does but its body is missing or wrong.
    pub fn next_record(&mut self) -> Read<'_> {
        let mut header = [0u8; HEADER];
        if self.inner.read_exact(&mut header).is_err() {
            return Read::End;
        }
        let Some(len) = declared_len(&header) else {
            return Read::Damaged("implausible record length");
        };
        self.body.resize(len, 0);
        self.body[..8].copy_from_slice(&header[8..]);
        if self.inner.read_exact(&mut self.body[8..]).is_err() {
            return Read::Damaged("torn record body");
        }
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        match check(crc, &self.body) {
            Some((iteration, event)) => Read::Record {
                iteration,
                event,
                next: 0,
            },
            None => Read::Damaged("checksum mismatch"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_reader_reads_what_append_wrote_and_stops_at_damage() {
        let mut buf = Vec::new();
        append(&mut buf, 7, b"hello");
        append(&mut buf, 8, b"world!");
        let mut r = Reader::new(&buf[..]);
        assert!(matches!(
            r.next_record(),
            Read::Record {
                iteration: 7,
                event: b"hello",
                ..
            }
        ));
        assert!(matches!(
            r.next_record(),
            Read::Record {
                iteration: 8,
                event: b"world!",
                ..
            }
        ));
        assert_eq!(r.next_record(), Read::End);
        let mut torn = Reader::new(&buf[..buf.len() - 2]);
        torn.next_record();
        assert_eq!(torn.next_record(), Read::Damaged("torn record body"));
        let mut bad = buf.clone();
        bad[20] ^= 1;
        assert_eq!(
            Reader::new(&bad[..]).next_record(),
            Read::Damaged("checksum mismatch")
        );
    }

    #[test]
    fn round_trip_and_damage() {
        let mut buf = Vec::new();
        append(&mut buf, 7, b"hello");
        append(&mut buf, 8, b"world!");
        let first = read(&buf, 0);
        let Read::Record {
            iteration,
            event,
            next,
        } = first
        else {
            panic!("{first:?}")
        };
        assert_eq!((iteration, event), (7, &b"hello"[..]));
        assert!(matches!(
            read(&buf, next),
            Read::Record { iteration: 8, .. }
        ));
        assert_eq!(read(&buf, buf.len()), Read::End);
        // Cut anywhere inside the second record: damaged, never a record.
        for cut in next + 1..buf.len() {
            assert!(
                matches!(read(&buf[..cut], next), Read::Damaged(_)),
                "cut {cut}"
            );
        }
        // Any flipped bit is caught.
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            let r0 = read(&bad, 0);
            let ok0 = matches!(
                r0,
                Read::Record {
                    iteration: 7,
                    event: b"hello",
                    ..
                }
            );
            if i < next {
                assert!(!ok0, "flip at {i} undetected");
            }
        }
    }
}
