//! Feeds arbitrary bytes to both decoders, split at an arbitrary point, and
//! checks that whatever decodes re-encodes to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spread_protocol::{ClientCodec, ServerCodec};
use tokio_util::codec::Decoder;

fn check<D>(mut codec: D, data: &[u8], cut: usize)
where
    D: Decoder,
    D::Item: Reencode,
{
    let mut buf = BytesMut::from(&data[..cut]);
    let mut rest = &data[cut..];
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(item)) => item.check_round_trip(),
            Ok(None) if rest.is_empty() => return,
            Ok(None) => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Err(_) => return,
        }
    }
}

trait Reencode {
    fn check_round_trip(&self);
}

impl Reencode for spread_protocol::Request {
    fn check_round_trip(&self) {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        let again = ServerCodec::default().decode(&mut out).expect("re-decodes");
        assert_eq!(again.as_ref(), Some(self));
    }
}

impl Reencode for spread_protocol::Response {
    fn check_round_trip(&self) {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        let again = ClientCodec::default().decode(&mut out).expect("re-decodes");
        assert_eq!(again.as_ref(), Some(self));
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = usize::from(data[0]) % data.len();
    let data = &data[1..];
    let cut = cut.min(data.len());
    check(ServerCodec::default(), data, cut);
    check(ClientCodec::default(), data, cut);
});
