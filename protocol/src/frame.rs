//! Framing: a 4-byte big-endian body length, then the MessagePack body.
//!
//! The length is checked against the maximum before any byte of the body is
//! buffered, so a hostile prefix cannot make the reader allocate.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Default maximum body length (8 MiB).
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

/// Splits the next complete frame body off `src`, or `None` when more bytes
/// are needed. Reserves room for the announced body so the next read fills it.
pub fn decode_frame(src: &mut BytesMut, max_frame: usize) -> Result<Option<Bytes>, ProtocolError> {
    if src.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len > max_frame {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    if src.len() < HEADER_LEN + len {
        src.reserve(HEADER_LEN + len - src.len());
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    Ok(Some(src.split_to(len).freeze()))
}

/// Starts a frame in `dst`; returns the offset to pass to [`end_frame`].
pub(crate) fn begin_frame(dst: &mut BytesMut) -> usize {
    let start = dst.len();
    dst.put_u32(0);
    start
}

/// Writes the body length of the frame started at `start`.
pub(crate) fn end_frame(dst: &mut BytesMut, start: usize) {
    let body = dst.len() - start - HEADER_LEN;
    dst[start..start + HEADER_LEN].copy_from_slice(&(body as u32).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_more_bytes_for_header_and_body() {
        let mut buf = BytesMut::from(&[0u8, 0][..]);
        assert!(decode_frame(&mut buf, 16).unwrap().is_none());
        buf.extend_from_slice(&[0, 3, b'a']);
        assert!(decode_frame(&mut buf, 16).unwrap().is_none());
        buf.extend_from_slice(b"bcX");
        assert_eq!(&decode_frame(&mut buf, 16).unwrap().unwrap()[..], b"abc");
        assert_eq!(&buf[..], b"X");
    }

    #[test]
    fn oversized_length_rejected_from_header_alone() {
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        match decode_frame(&mut buf, DEFAULT_MAX_FRAME) {
            Err(ProtocolError::FrameTooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, DEFAULT_MAX_FRAME);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(buf.capacity() < 1024, "must not reserve the announced size");
    }

    #[test]
    fn empty_body_is_a_frame() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut buf, 16).unwrap().unwrap().len(), 0);
    }
}
