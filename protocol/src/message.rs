//! How messages are declared: one table per direction ([`messages!`]) and
//! one declaration per composite field ([`wire_struct!`]) give each message
//! its type code, its fields in wire order and their encodings. Encode,
//! decode, the field list that docs/protocol.md must show and the
//! property-test strategy all come from that one declaration, so a message
//! cannot be encoded without being decodable.
//!
//! A field's Rust type picks its encoding through [`Wire`]; `name: T as W`
//! picks another one (`prefix: Topic as Prefix` is a topic that may be the
//! root). A field whose [`Wire::LEN`] is above 1 is inlined: its elements
//! sit in the message's own array (a status report's six fields follow the
//! type code directly).
//!
//! Three messages also have borrowed-parts encoders for the hot paths
//! (`encode_publish`, `encode_event`, `encode_report`); property tests pin
//! each of them to the declared layout.

use bytes::{Bytes, BytesMut};

use crate::error::{ErrorCode, ProtocolError};
use crate::event::{Event, EventId};
use crate::request::{Sources, SubscribeMode};
use crate::topic::{Topic, TopicRules};
use crate::wire::{self, Reader};

/// One field's encoding on the wire, for values of type `T`.
pub(crate) trait Wire<T> {
    /// Array elements the value takes in its enclosing array: 1, or the
    /// number of inlined fields.
    const LEN: usize = 1;

    /// Appends the value.
    fn put(v: &T, dst: &mut BytesMut);

    /// Reads the value; `label` names the field in errors.
    fn read(
        r: &mut Reader<'_>,
        rules: &TopicRules,
        label: &'static str,
    ) -> Result<T, ProtocolError>;

    /// How docs/protocol.md spells the type (`uint`, `str|nil`, `[str]`);
    /// read by the test that checks the docs' message tables.
    #[allow(dead_code)]
    fn doc_type() -> String;

    /// Appends the field list entries for a field called `name`: one
    /// `` `name: type` ``, or each inlined field's.
    #[allow(dead_code)]
    fn doc_fields(name: &str, out: &mut Vec<String>) {
        out.push(format!("`{name}: {}`", Self::doc_type()));
    }
}

/// A topic prefix: a topic that may also be the root (empty string).
pub(crate) struct Prefix;

/// A list of `W` values of at most `MAX` elements (more is malformed,
/// checked before anything is allocated from the announced length).
pub(crate) struct List<W, const MAX: usize>(std::marker::PhantomData<W>);

/// A type that is one MessagePack value read and written by one `wire`
/// function each.
macro_rules! scalar {
    ($t:ty, $doc:literal, |$v:ident, $dst:ident| $put:expr, |$r:ident, $label:ident| $read:expr) => {
        impl Wire<$t> for $t {
            fn put($v: &$t, $dst: &mut BytesMut) {
                $put
            }
            fn read(
                $r: &mut Reader<'_>,
                _: &TopicRules,
                $label: &'static str,
            ) -> Result<$t, ProtocolError> {
                $read
            }
            fn doc_type() -> String {
                $doc.into()
            }
        }
    };
}

scalar!(u64, "uint", |v, dst| wire::put_uint(dst, *v), |r, label| r
    .uint(label));
scalar!(String, "str", |v, dst| wire::put_str(dst, v), |r, label| r
    .string(label));
scalar!(Bytes, "bin", |v, dst| wire::put_bin(dst, v), |r, label| r
    .bin(label));

impl Wire<EventId> for EventId {
    fn put(v: &EventId, dst: &mut BytesMut) {
        wire::put_bin(dst, &v.0);
    }
    fn read(
        r: &mut Reader<'_>,
        _: &TopicRules,
        label: &'static str,
    ) -> Result<EventId, ProtocolError> {
        let start = r.position();
        let span = r.bin_span(label)?;
        match <[u8; 16]>::try_from(r.bytes_of(span)) {
            Ok(id) => Ok(EventId(id)),
            Err(_) => Err(ProtocolError::Malformed {
                offset: start,
                what: "an event id must be 16 bytes",
            }),
        }
    }
    fn doc_type() -> String {
        "bin16".into()
    }
}

/// Topics and prefixes differ only in whether the root (`""`) is valid.
macro_rules! path {
    ($w:ty, $allow_root:literal) => {
        impl Wire<Topic> for $w {
            fn put(v: &Topic, dst: &mut BytesMut) {
                wire::put_str(dst, v.as_str());
            }
            // Forced, like Option's: the compiler declined these small
            // generic reads inside the large generated decode (measured:
            // 8% more instructions per publish decoded).
            #[inline(always)]
            fn read(
                r: &mut Reader<'_>,
                rules: &TopicRules,
                label: &'static str,
            ) -> Result<Topic, ProtocolError> {
                Ok(Topic::from_bytes(r.str_bytes(label)?, rules, $allow_root)?)
            }
            fn doc_type() -> String {
                "str".into()
            }
        }
    };
}

path!(Topic, false);
path!(Prefix, true);

impl<T, W: Wire<T>> Wire<Option<T>> for Option<W> {
    fn put(v: &Option<T>, dst: &mut BytesMut) {
        match v {
            Some(v) => W::put(v, dst),
            None => wire::put_nil(dst),
        }
    }
    #[inline(always)]
    fn read(
        r: &mut Reader<'_>,
        rules: &TopicRules,
        label: &'static str,
    ) -> Result<Option<T>, ProtocolError> {
        if r.nil() {
            Ok(None)
        } else {
            W::read(r, rules, label).map(Some)
        }
    }
    fn doc_type() -> String {
        format!("{}|nil", W::doc_type())
    }
}

impl<T, W: Wire<T>, const MAX: usize> Wire<Vec<T>> for List<W, MAX> {
    fn put(v: &Vec<T>, dst: &mut BytesMut) {
        wire::put_array(dst, v.len());
        for item in v {
            W::put(item, dst);
        }
    }
    fn read(
        r: &mut Reader<'_>,
        rules: &TopicRules,
        label: &'static str,
    ) -> Result<Vec<T>, ProtocolError> {
        let start = r.position();
        let n = r.array(label)?;
        if n > MAX {
            return Err(ProtocolError::Malformed {
                offset: start,
                what: "list longer than its field allows",
            });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(W::read(r, rules, label)?);
        }
        Ok(out)
    }
    fn doc_type() -> String {
        format!("[{}]", W::doc_type())
    }
}

impl Wire<SubscribeMode> for SubscribeMode {
    fn put(v: &SubscribeMode, dst: &mut BytesMut) {
        wire::put_uint(dst, *v as u64);
    }
    fn read(
        r: &mut Reader<'_>,
        _: &TopicRules,
        label: &'static str,
    ) -> Result<SubscribeMode, ProtocolError> {
        match r.uint(label)? {
            0 => Ok(SubscribeMode::Latest),
            1 => Ok(SubscribeMode::History),
            _ => Err(r.malformed("subscribe: mode must be 0 or 1")),
        }
    }
    fn doc_type() -> String {
        "uint".into()
    }
}

/// One source as a uint (0: none, as version 2 first spelled it), several
/// as an array.
impl Wire<Sources> for Sources {
    fn put(v: &Sources, dst: &mut BytesMut) {
        match v.as_slice() {
            [] => wire::put_uint(dst, 0),
            [one] => wire::put_uint(dst, *one),
            many => {
                wire::put_array(dst, many.len());
                for id in many {
                    wire::put_uint(dst, *id);
                }
            }
        }
    }
    fn read(
        r: &mut Reader<'_>,
        _: &TopicRules,
        label: &'static str,
    ) -> Result<Sources, ProtocolError> {
        let Ok(n) = r.array(label) else {
            return r.uint(label).map(Sources::from);
        };
        if n > Sources::MAX {
            return Err(r.malformed("subscribe: skip_source names more than 8 sources"));
        }
        let mut ids = [0u64; Sources::MAX];
        for id in ids.iter_mut().take(n) {
            *id = r.uint(label)?;
        }
        Ok(Sources::of(ids.into_iter().take(n)))
    }
    fn doc_type() -> String {
        "uint|[uint]".into()
    }
}

impl Wire<ErrorCode> for ErrorCode {
    fn put(v: &ErrorCode, dst: &mut BytesMut) {
        wire::put_uint(dst, *v as u64);
    }
    fn read(
        r: &mut Reader<'_>,
        _: &TopicRules,
        label: &'static str,
    ) -> Result<ErrorCode, ProtocolError> {
        let raw = r.uint(label)?;
        ErrorCode::from_u64(raw).ok_or(ProtocolError::UnknownErrorCode(raw))
    }
    fn doc_type() -> String {
        "uint".into()
    }
}

impl Wire<Event> for Event {
    fn put(v: &Event, dst: &mut BytesMut) {
        bytes::BufMut::put_slice(dst, v.encoded());
    }
    fn read(
        r: &mut Reader<'_>,
        rules: &TopicRules,
        _: &'static str,
    ) -> Result<Event, ProtocolError> {
        Event::read(r, rules)
    }
    fn doc_type() -> String {
        "event".into()
    }
}

/// Field-by-field encoding of a struct whose fields are all declared with
/// their encodings; generates the struct, its [`Wire`] impl and, in tests,
/// its proptest strategy.
///
/// `inline "label"` puts the fields in the enclosing array ([`Wire::LEN`]
/// is the field count); `nested "label"` makes the struct an array of its
/// own, whose trailing fields after `;` may be absent (decoded as
/// `Default`, so that older writers stay readable). `check f` runs
/// `f(&value) -> Result<(), &'static str>` after decoding, for rules that
/// span fields; the strategy keeps only values that pass it.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        inline $label:literal
        pub struct $name:ident $(check $check:path)? {
            $( $(#[$fmeta:meta])* pub $f:ident : $fty:ty $(as $fw:ty)? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $f: $fty, )*
        }

        impl $crate::message::Wire<$name> for $name {
            const LEN: usize = 0 $( + <$crate::message::wire_ty!($fty $(, $fw)?) as $crate::message::Wire<$fty>>::LEN )*;

            fn put(v: &$name, dst: &mut bytes::BytesMut) {
                $( <$crate::message::wire_ty!($fty $(, $fw)?) as $crate::message::Wire<$fty>>::put(&v.$f, dst); )*
            }

            #[allow(unused_variables)]
            // Inlined into the decode of each message that holds it, so
            // that the struct is built in place, not moved out of a Result.
            #[inline(always)]
            fn read(
                r: &mut $crate::wire::Reader<'_>,
                rules: &$crate::topic::TopicRules,
                _: &'static str,
            ) -> Result<$name, $crate::error::ProtocolError> {
                let start = r.position();
                let v = $name {
                    $( $f: <$crate::message::wire_ty!($fty $(, $fw)?) as $crate::message::Wire<$fty>>::read(
                        r, rules, concat!($label, ": ", stringify!($f)),
                    )?, )*
                };
                $( $check(&v).map_err(|what| $crate::error::ProtocolError::Malformed { offset: start, what })?; )?
                Ok(v)
            }

            fn doc_type() -> String {
                $label.into()
            }

            fn doc_fields(_: &str, out: &mut Vec<String>) {
                $( <$crate::message::wire_ty!($fty $(, $fw)?) as $crate::message::Wire<$fty>>::doc_fields(stringify!($f), out); )*
            }
        }

        #[cfg(test)]
        impl $crate::message::Arb<$name> for $name {
            fn arb() -> proptest::strategy::BoxedStrategy<$name> {
                use proptest::strategy::Strategy;
                ( $( <$crate::message::wire_ty!($fty $(, $fw)?) as $crate::message::Arb<$fty>>::arb(), )* )
                    .prop_map(|( $($f,)* )| $name { $($f,)* })
                    $( .prop_filter(stringify!($check), |v| $check(v).is_ok()) )?
                    .boxed()
            }
        }
    };
    (
        $(#[$meta:meta])*
        nested $label:literal
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $f:ident : $fty:ty $(as $fw:ty)? ),* $(,)?
            $( ; $( $(#[$ometa:meta])* pub $of:ident : $oty:ty $(as $ow:ty)? ),* $(,)? )?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $f: $fty, )*
            $( $( $(#[$ometa])* pub $of: $oty, )* )?
        }

        impl $crate::message::Wire<$name> for $name {
            fn put(v: &$name, dst: &mut bytes::BytesMut) {
                $crate::wire::put_array(
                    dst,
                    0 $( + <$crate::message::wire_ty!($fty $(, $fw)?) as $crate::message::Wire<$fty>>::LEN )*
                      $( $( + <$crate::message::wire_ty!($oty $(, $ow)?) as $crate::message::Wire<$oty>>::LEN )* )?,
                );
                $( <$crate::message::wire_ty!($fty $(, $fw)?) as $crate::message::Wire<$fty>>::put(&v.$f, dst); )*
                $( $( <$crate::message::wire_ty!($oty $(, $ow)?) as $crate::message::Wire<$oty>>::put(&v.$of, dst); )* )?
            }

            #[allow(unused_mut, unused_variables, unused_assignments)]
            fn read(
                r: &mut $crate::wire::Reader<'_>,
                rules: &$crate::topic::TopicRules,
                _: &'static str,
            ) -> Result<$name, $crate::error::ProtocolError> {
                const REQUIRED: usize =
                    0 $( + <$crate::message::wire_ty!($fty $(, $fw)?) as $crate::message::Wire<$fty>>::LEN )*;
                const ALL: usize = REQUIRED
                    $( $( + <$crate::message::wire_ty!($oty $(, $ow)?) as $crate::message::Wire<$oty>>::LEN )* )?;
                let len = r.array_between(REQUIRED, ALL, concat!($label, ": array"))?;
                let mut left = len - REQUIRED;
                Ok($name {
                    $( $f: <$crate::message::wire_ty!($fty $(, $fw)?) as $crate::message::Wire<$fty>>::read(
                        r, rules, concat!($label, ": ", stringify!($f)),
                    )?, )*
                    $( $( $of: {
                        let n = <$crate::message::wire_ty!($oty $(, $ow)?) as $crate::message::Wire<$oty>>::LEN;
                        if left >= n {
                            left -= n;
                            <$crate::message::wire_ty!($oty $(, $ow)?) as $crate::message::Wire<$oty>>::read(
                                r, rules, concat!($label, ": ", stringify!($of)),
                            )?
                        } else {
                            Default::default()
                        }
                    }, )* )?
                })
            }

            fn doc_type() -> String {
                $label.into()
            }
        }

        #[cfg(test)]
        impl $crate::message::Arb<$name> for $name {
            fn arb() -> proptest::strategy::BoxedStrategy<$name> {
                use proptest::strategy::Strategy;
                // Two tuples: proptest's reach 12 elements each.
                (
                    ( $( <$crate::message::wire_ty!($fty $(, $fw)?) as $crate::message::Arb<$fty>>::arb(), )* ),
                    ( proptest::strategy::Just(()), $( $( <$crate::message::wire_ty!($oty $(, $ow)?) as $crate::message::Arb<$oty>>::arb(), )* )? ),
                )
                    .prop_map(|( ( $($f,)* ), ( (), $( $($of,)* )? ) )| $name { $($f,)* $( $($of,)* )? })
                    .boxed()
            }
        }
    };
}
pub(crate) use wire_struct;

/// The encoding of a declared field: its own type's, or the one after `as`.
macro_rules! wire_ty {
    ($t:ty) => {
        $t
    };
    ($t:ty, $w:ty) => {
        $w
    };
}
pub(crate) use wire_ty;

/// Expands to its first argument: names the binding of a one-value
/// variant from the caller's tokens, so that the pattern and the body of a
/// generated match arm see the same identifier.
macro_rules! first_ident {
    ($id:ident, $($ignored:tt)*) => {
        $id
    };
}
pub(crate) use first_ident;

/// Declares one direction's messages: the `kind` module of type codes, the
/// enum, and its `encode`, `decode`, `code` and `name`.
///
/// Each entry is `CODE_NAME = 0x.., "doc name" => Variant(Type)` (one
/// value, its fields inlined after the type code) or `=> Variant { field:
/// Type, ... ; optional: Type }` (fields after `;` may be absent from the
/// frame and decode as `Default`).
macro_rules! messages {
    (
        $(#[$meta:meta])*
        pub enum $enum:ident ($label:literal) {
            $(
                $(#[$vmeta:meta])*
                $kind:ident = $code:literal, $name:literal => $variant:ident
                $( ( $tw:ty ) )?
                $( {
                    $( $(#[$fmeta:meta])* $f:ident : $fty:ty $(as $fw:ty)? ),* $(,)?
                    $( ; $( $(#[$ometa:meta])* $of:ident : $oty:ty $(as $ow:ty)? ),* $(,)? )?
                } )?
            ),* $(,)?
        }
    ) => {
        /// Message type codes, the first element of every frame body.
        pub mod kind {
            $( $(#[$vmeta])* pub const $kind: u64 = $code; )*
        }

        $(#[$meta])*
        pub enum $enum {
            $(
                $(#[$vmeta])*
                $variant
                $( ( $tw ) )?
                $( {
                    $( $(#[$fmeta])* $f: $fty, )*
                    $( $( $(#[$ometa])* $of: $oty, )* )?
                } )?,
            )*
        }

        impl $enum {
            /// The message's type code.
            pub fn code(&self) -> u64 {
                match self {
                    $( Self::$variant { .. } => $code, )*
                }
            }

            /// The message's name in docs/protocol.md.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Self::$variant { .. } => $name, )*
                }
            }

            /// Appends this message as a complete frame to `dst`.
            pub fn encode(&self, dst: &mut bytes::BytesMut) {
                use $crate::message::Wire;
                let start = $crate::frame::begin_frame(dst);
                match self {
                    $(
                        Self::$variant
                        $( ( $crate::message::first_ident!(inner, $tw) ) )?
                        $( { $($f,)* $( $($of,)* )? } )? => {
                            $crate::wire::put_array(
                                dst,
                                1 $( + <$tw as Wire<$tw>>::LEN )?
                                  $( $( + <$crate::message::wire_ty!($fty $(, $fw)?) as Wire<$fty>>::LEN )*
                                     $( $( + <$crate::message::wire_ty!($oty $(, $ow)?) as Wire<$oty>>::LEN )* )? )?,
                            );
                            $crate::wire::put_uint(dst, $code);
                            $( <$tw as Wire<$tw>>::put($crate::message::first_ident!(inner, $tw), dst); )?
                            $(
                                $( <$crate::message::wire_ty!($fty $(, $fw)?) as Wire<$fty>>::put($f, dst); )*
                                $( $( <$crate::message::wire_ty!($oty $(, $ow)?) as Wire<$oty>>::put($of, dst); )* )?
                            )?
                        }
                    )*
                }
                $crate::frame::end_frame(dst, start);
            }

            /// Decodes one frame body, validating topics with `rules`.
            #[allow(unused_mut, unused_variables, unused_assignments)]
            pub fn decode(
                frame: &bytes::Bytes,
                rules: &$crate::topic::TopicRules,
            ) -> Result<$enum, $crate::error::ProtocolError> {
                use $crate::message::Wire;
                let mut r = $crate::wire::Reader::new(frame);
                let len = r.array_between(2, 16, concat!($label, ": array"))?;
                let code = r.uint(concat!($label, ": type code"))?;
                let msg = match code {
                    $(
                        $code => {
                            const REQUIRED: usize = 1
                                $( + <$tw as Wire<$tw>>::LEN )?
                                $( $( + <$crate::message::wire_ty!($fty $(, $fw)?) as Wire<$fty>>::LEN )* )?;
                            const ALL: usize = REQUIRED
                                $( $( $( + <$crate::message::wire_ty!($oty $(, $ow)?) as Wire<$oty>>::LEN )* )? )?;
                            if !(REQUIRED..=ALL).contains(&len) {
                                return Err(r.malformed(concat!(
                                    $name, ": wrong number of fields for this type"
                                )));
                            }
                            let mut left = len - REQUIRED;
                            $( Self::$variant(<$tw as Wire<$tw>>::read(&mut r, rules, $name)?) )?
                            $( Self::$variant {
                                $( $f: <$crate::message::wire_ty!($fty $(, $fw)?) as Wire<$fty>>::read(
                                    &mut r, rules, concat!($name, ": ", stringify!($f)),
                                )?, )*
                                $( $( $of: {
                                    let n = <$crate::message::wire_ty!($oty $(, $ow)?) as Wire<$oty>>::LEN;
                                    if left >= n {
                                        left -= n;
                                        <$crate::message::wire_ty!($oty $(, $ow)?) as Wire<$oty>>::read(
                                            &mut r, rules, concat!($name, ": ", stringify!($of)),
                                        )?
                                    } else {
                                        Default::default()
                                    }
                                }, )* )?
                            } )?
                        }
                    )*
                    other => return Err($crate::error::ProtocolError::UnknownMessage(other)),
                };
                r.finish()?;
                Ok(msg)
            }

            /// Every message as a row of docs/protocol.md's table: code,
            /// name and the fields after the code.
            #[cfg(test)]
            pub(crate) fn doc_rows() -> Vec<(u64, &'static str, String)> {
                use $crate::message::Wire;
                vec![
                    $( {
                        let mut fields: Vec<String> = Vec::new();
                        $( <$tw as Wire<$tw>>::doc_fields("", &mut fields); )?
                        $(
                            $( <$crate::message::wire_ty!($fty $(, $fw)?) as Wire<$fty>>::doc_fields(stringify!($f), &mut fields); )*
                            $( $( {
                                let mut optional = Vec::new();
                                <$crate::message::wire_ty!($oty $(, $ow)?) as Wire<$oty>>::doc_fields(stringify!($of), &mut optional);
                                fields.extend(optional.into_iter().map(|f| format!("{f} (optional)")));
                            } )* )?
                        )?
                        ($code, $name, fields.join(", "))
                    }, )*
                ]
            }

            /// Any message of this direction, for property tests.
            #[cfg(test)]
            pub(crate) fn arbitrary() -> proptest::strategy::BoxedStrategy<$enum> {
                use proptest::strategy::Strategy;
                use $crate::message::Arb;
                proptest::strategy::Union::new(vec![
                    $(
                        $( <$tw as Arb<$tw>>::arb().prop_map(Self::$variant).boxed() )?
                        $( (
                            $( <$crate::message::wire_ty!($fty $(, $fw)?) as Arb<$fty>>::arb(), )*
                            $( $( <$crate::message::wire_ty!($oty $(, $ow)?) as Arb<$oty>>::arb(), )* )?
                        )
                            .prop_map(|( $($f,)* $( $($of,)* )? )| Self::$variant {
                                $($f,)* $( $($of,)* )?
                            })
                            .boxed() )?,
                    )*
                ])
                .boxed()
            }
        }
    };
}
pub(crate) use messages;

/// A proptest strategy for values of `T` encoded as `Self` (test builds).
#[cfg(test)]
pub(crate) trait Arb<T: std::fmt::Debug> {
    fn arb() -> proptest::strategy::BoxedStrategy<T>;
}

#[cfg(test)]
mod arb {
    use proptest::prelude::*;

    use super::*;

    fn topic_str(allow_root: bool) -> impl Strategy<Value = String> {
        let min = usize::from(!allow_root);
        proptest::collection::vec("[a-z0-9é_-]{1,6}", min..5).prop_map(|segs| segs.join("/"))
    }

    impl Arb<u64> for u64 {
        fn arb() -> BoxedStrategy<u64> {
            any::<u64>().boxed()
        }
    }
    impl Arb<String> for String {
        fn arb() -> BoxedStrategy<String> {
            ".{0,20}".boxed()
        }
    }
    impl Arb<Bytes> for Bytes {
        fn arb() -> BoxedStrategy<Bytes> {
            proptest::collection::vec(any::<u8>(), 0..200)
                .prop_map(Bytes::from)
                .boxed()
        }
    }
    impl Arb<EventId> for EventId {
        fn arb() -> BoxedStrategy<EventId> {
            any::<[u8; 16]>().prop_map(EventId).boxed()
        }
    }
    impl Arb<Topic> for Topic {
        fn arb() -> BoxedStrategy<Topic> {
            topic_str(false)
                .prop_filter_map("valid topic", |s| {
                    Topic::new(&s, &TopicRules::default()).ok()
                })
                .boxed()
        }
    }
    impl Arb<Topic> for Prefix {
        fn arb() -> BoxedStrategy<Topic> {
            topic_str(true)
                .prop_filter_map("valid prefix", |s| {
                    Topic::prefix(&s, &TopicRules::default()).ok()
                })
                .boxed()
        }
    }
    impl<T: std::fmt::Debug + Clone + 'static, W: Arb<T>> Arb<Option<T>> for Option<W> {
        fn arb() -> BoxedStrategy<Option<T>> {
            proptest::option::of(W::arb()).boxed()
        }
    }
    impl<T: std::fmt::Debug + 'static, W: Arb<T>, const MAX: usize> Arb<Vec<T>> for List<W, MAX> {
        fn arb() -> BoxedStrategy<Vec<T>> {
            proptest::collection::vec(W::arb(), 0..MAX.min(4)).boxed()
        }
    }
    impl Arb<SubscribeMode> for SubscribeMode {
        fn arb() -> BoxedStrategy<SubscribeMode> {
            prop_oneof![Just(SubscribeMode::Latest), Just(SubscribeMode::History)].boxed()
        }
    }
    impl Arb<Sources> for Sources {
        fn arb() -> BoxedStrategy<Sources> {
            proptest::collection::vec(1..u64::MAX, 0..=Sources::MAX)
                .prop_map(Sources::of)
                .boxed()
        }
    }
    impl Arb<ErrorCode> for ErrorCode {
        fn arb() -> BoxedStrategy<ErrorCode> {
            proptest::sample::select(ErrorCode::ALL).boxed()
        }
    }
    impl Arb<Event> for Event {
        fn arb() -> BoxedStrategy<Event> {
            (
                topic_str(false),
                proptest::collection::vec(any::<u8>(), 0..300),
                any::<u64>(),
                "[a-z0-9-]{0,12}",
                any::<[u8; 16]>(),
                any::<u64>(),
                any::<bool>(),
                any::<u64>(),
            )
                .prop_map(
                    |(topic, payload, timestamp, origin, id, iteration, tomb, source)| {
                        crate::EventParts {
                            topic: &topic,
                            payload: &payload,
                            timestamp,
                            origin: &origin,
                            id: EventId(id),
                            iteration,
                            kind: if tomb {
                                crate::EventKind::Tombstone
                            } else {
                                crate::EventKind::Value
                            },
                            source,
                        }
                        .encode()
                    },
                )
                .boxed()
        }
    }
}
