//! MessagePack primitives: a bounds-checked reader whose errors carry the
//! byte offset, and writers into a caller-owned `BytesMut`.
//!
//! Only the subset of MessagePack that Spread frames use is accepted:
//! arrays, unsigned integers, booleans, nil, strings and binaries.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// Largest array a frame may declare; anything larger is malformed, checked
/// before any allocation sized from the wire.
pub(crate) const MAX_ARRAY_LEN: usize = 1 << 16;

/// A cursor over one frame body.
pub(crate) struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `frame`.
    pub(crate) fn new(frame: &'a Bytes) -> Self {
        Reader { frame, pos: 0 }
    }

    /// Offset of the next byte to read.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Fails unless every byte of the frame was consumed.
    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.pos == self.frame.len() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes after the message"))
        }
    }

    pub(crate) fn malformed(&self, what: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            offset: self.pos,
            what,
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.frame.len())
            .ok_or_else(|| self.malformed(what))?;
        let frame: &'a Bytes = self.frame;
        let out = &frame[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    fn be(&mut self, n: usize, what: &'static str) -> Result<u64, ProtocolError> {
        let raw = self.take(n, what)?;
        Ok(raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// Peeks whether the next value is nil, consuming it if so.
    pub(crate) fn nil(&mut self) -> bool {
        if self.frame.get(self.pos) == Some(&0xc0) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Reads an array header and returns its length.
    pub(crate) fn array(&mut self, what: &'static str) -> Result<usize, ProtocolError> {
        let start = self.pos;
        let len = match self.byte(what)? {
            m @ 0x90..=0x9f => usize::from(m & 0x0f),
            0xdc => self.be(2, what)? as usize,
            0xdd => self.be(4, what)? as usize,
            _ => {
                self.pos = start;
                return Err(self.malformed(what));
            }
        };
        if len > MAX_ARRAY_LEN {
            self.pos = start;
            return Err(self.malformed("array longer than the protocol allows"));
        }
        Ok(len)
    }

    /// Reads an array header that must have exactly `n` elements.
    pub(crate) fn array_of(&mut self, n: usize, what: &'static str) -> Result<(), ProtocolError> {
        let start = self.pos;
        if self.array(what)? == n {
            Ok(())
        } else {
            self.pos = start;
            Err(self.malformed(what))
        }
    }

    /// Reads an array header with between `min` and `max` elements.
    pub(crate) fn array_between(
        &mut self,
        min: usize,
        max: usize,
        what: &'static str,
    ) -> Result<usize, ProtocolError> {
        let start = self.pos;
        let len = self.array(what)?;
        if (min..=max).contains(&len) {
            Ok(len)
        } else {
            self.pos = start;
            Err(self.malformed(what))
        }
    }

    /// Reads a non-negative integer of any MessagePack width.
    pub(crate) fn uint(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        let start = self.pos;
        let v = match self.byte(what)? {
            m @ 0x00..=0x7f => u64::from(m),
            0xcc => self.be(1, what)?,
            0xcd => self.be(2, what)?,
            0xce => self.be(4, what)?,
            0xcf => self.be(8, what)?,
            // Signed encodings are accepted when the value is not negative.
            0xd0 => self.signed(1, start, what)?,
            0xd1 => self.signed(2, start, what)?,
            0xd2 => self.signed(4, start, what)?,
            0xd3 => self.signed(8, start, what)?,
            _ => {
                self.pos = start;
                return Err(self.malformed(what));
            }
        };
        Ok(v)
    }

    fn signed(&mut self, n: usize, start: usize, what: &'static str) -> Result<u64, ProtocolError> {
        let raw = self.be(n, what)?;
        let bits = (n * 8) as u32;
        let negative = raw >> (bits - 1) & 1 == 1;
        if negative {
            self.pos = start;
            Err(self.malformed(what))
        } else {
            Ok(raw)
        }
    }

    /// Reads an integer that must fit in `u32`.
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let start = self.pos;
        let v = self.uint(what)?;
        u32::try_from(v).map_err(|_| {
            self.pos = start;
            self.malformed(what)
        })
    }

    /// Reads a string and returns it as a zero-copy slice of the frame.
    pub(crate) fn str_bytes(&mut self, what: &'static str) -> Result<Bytes, ProtocolError> {
        let span = self.str_span(what)?;
        Ok(self.frame.slice(span))
    }

    /// Reads a string and returns where its bytes lie in the frame.
    pub(crate) fn str_span(&mut self, what: &'static str) -> Result<Range<usize>, ProtocolError> {
        let start = self.pos;
        let len = match self.byte(what)? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => self.be(1, what)? as usize,
            0xda => self.be(2, what)? as usize,
            0xdb => self.be(4, what)? as usize,
            _ => {
                self.pos = start;
                return Err(self.malformed(what));
            }
        };
        let body = self.pos;
        let raw = self.take(len, what)?;
        if std::str::from_utf8(raw).is_err() {
            self.pos = start;
            return Err(self.malformed("string is not valid UTF-8"));
        }
        Ok(body..self.pos)
    }

    /// Reads a string into an owned `String`.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let raw = self.str_bytes(what)?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    /// Reads a binary as a zero-copy slice.
    pub(crate) fn bin(&mut self, what: &'static str) -> Result<Bytes, ProtocolError> {
        let span = self.bin_span(what)?;
        Ok(self.frame.slice(span))
    }

    /// Reads a binary and returns where its bytes lie in the frame.
    pub(crate) fn bin_span(&mut self, what: &'static str) -> Result<Range<usize>, ProtocolError> {
        let start = self.pos;
        let len = match self.byte(what)? {
            0xc4 => self.be(1, what)? as usize,
            0xc5 => self.be(2, what)? as usize,
            0xc6 => self.be(4, what)? as usize,
            _ => {
                self.pos = start;
                return Err(self.malformed(what));
            }
        };
        let body = self.pos;
        self.take(len, what)?;
        Ok(body..self.pos)
    }

    /// Returns the raw bytes of the value spanning `start..self.position()`.
    pub(crate) fn slice_from(&self, start: usize) -> Bytes {
        self.frame.slice(start..self.pos)
    }

    /// The frame bytes of `span`.
    pub(crate) fn bytes_of(&self, span: Range<usize>) -> &[u8] {
        &self.frame[span]
    }
}

/// Writes an array header.
pub(crate) fn put_array(buf: &mut BytesMut, len: usize) {
    if len < 16 {
        buf.put_u8(0x90 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        buf.put_u8(0xdc);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(0xdd);
        buf.put_u32(len as u32);
    }
}

/// Writes an unsigned integer in its shortest form.
pub(crate) fn put_uint(buf: &mut BytesMut, v: u64) {
    if v < 128 {
        buf.put_u8(v as u8);
    } else if v <= u64::from(u8::MAX) {
        buf.put_u8(0xcc);
        buf.put_u8(v as u8);
    } else if v <= u64::from(u16::MAX) {
        buf.put_u8(0xcd);
        buf.put_u16(v as u16);
    } else if v <= u64::from(u32::MAX) {
        buf.put_u8(0xce);
        buf.put_u32(v as u32);
    } else {
        buf.put_u8(0xcf);
        buf.put_u64(v);
    }
}

/// Writes nil.
pub(crate) fn put_nil(buf: &mut BytesMut) {
    buf.put_u8(0xc0);
}

/// Writes a string.
pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    let len = s.len();
    if len < 32 {
        buf.put_u8(0xa0 | len as u8);
    } else if len <= usize::from(u8::MAX) {
        buf.put_u8(0xd9);
        buf.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        buf.put_u8(0xda);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(0xdb);
        buf.put_u32(len as u32);
    }
    buf.put_slice(s.as_bytes());
}

/// Writes a binary.
pub(crate) fn put_bin(buf: &mut BytesMut, b: &[u8]) {
    let len = b.len();
    if len <= usize::from(u8::MAX) {
        buf.put_u8(0xc4);
        buf.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        buf.put_u8(0xc5);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(0xc6);
        buf.put_u32(len as u32);
    }
    buf.put_slice(b);
}

/// Upper bound of the bytes `put_str`/`put_bin` add around `len` bytes.
pub(crate) const fn header_len(len: usize) -> usize {
    len + 5
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_uint(v: u64) {
        let mut buf = BytesMut::new();
        put_uint(&mut buf, v);
        let frame = buf.freeze();
        let mut r = Reader::new(&frame);
        assert_eq!(r.uint("v").unwrap(), v);
        r.finish().unwrap();
    }

    #[test]
    fn uints_of_every_width() {
        for v in [
            0,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            roundtrip_uint(v);
        }
    }

    #[test]
    fn negative_int_is_malformed_with_offset() {
        let frame = Bytes::from_static(&[0x91, 0xd0, 0xff]);
        let mut r = Reader::new(&frame);
        r.array_of(1, "a").unwrap();
        match r.uint("n") {
            Err(ProtocolError::Malformed { offset, .. }) => assert_eq!(offset, 1),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn truncated_string_is_malformed() {
        let frame = Bytes::from_static(&[0xa5, b'a', b'b']);
        let mut r = Reader::new(&frame);
        assert!(matches!(
            r.str_bytes("s"),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn huge_array_len_is_rejected_before_allocating() {
        let frame = Bytes::from_static(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        let mut r = Reader::new(&frame);
        assert!(r.array("a").is_err());
    }

    #[test]
    fn strings_and_bins_roundtrip_zero_copy() {
        let mut buf = BytesMut::new();
        let long = "x".repeat(300);
        put_str(&mut buf, "héllo");
        put_str(&mut buf, &long);
        put_bin(&mut buf, &[1, 2, 3]);
        put_bin(&mut buf, &vec![7u8; 70_000]);
        let frame = buf.freeze();
        let mut r = Reader::new(&frame);
        assert_eq!(&r.str_bytes("a").unwrap()[..], "héllo".as_bytes());
        assert_eq!(r.str_bytes("b").unwrap().len(), 300);
        let bin = r.bin("c").unwrap();
        assert_eq!(&bin[..], &[1, 2, 3]);
        // The slice points into the frame: no copy was made.
        assert!(frame.as_ptr_range().contains(&bin.as_ptr()));
        assert_eq!(r.bin("d").unwrap().len(), 70_000);
        r.finish().unwrap();
    }
}
