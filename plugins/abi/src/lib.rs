//! The Spread sink plugin ABI.
//!
//! A plugin is a shared library that exports one C function,
//! `spread_plugin_entry`, returning a table of `extern "C"` functions
//! ([`ffi::SpreadPlugin`]). The broker loads it at start, checks the table's
//! [`ffi::ABI_VERSION`], and streams its durable event log to it in batches
//! of borrowed [`ffi::SpreadEvent`] views. Plugins can be written in any
//! language that can export C functions: `include/spread_plugin.h` is the C
//! header, and `docs/plugins.md` the guide.
//!
//! Rust authors implement the safe [`Sink`] trait (and [`Archive`] for
//! replay) and export it with [`export_plugin!`], which catches panics at
//! the boundary so a panicking plugin is stopped, never unwound into the
//! broker:
//!
//! ```
//! use spread_plugin::{export_plugin, Event, OpenContext, Result, Sink};
//!
//! /// Counts events.
//! struct Counter(u64);
//!
//! impl Sink for Counter {
//!     fn open(_ctx: &OpenContext<'_>) -> Result<Self> {
//!         Ok(Counter(0))
//!     }
//!     fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()> {
//!         self.0 += events.len() as u64;
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(name: "counter", sink: Counter);
//! ```

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod api;
#[doc(hidden)]
pub mod export;
pub mod ffi;
pub mod files;

pub use api::{
    covers, Archive, Cursor, Error, Event, Kind, OpenContext, OwnedEvent, Query, Result, Sink,
};

/// Exports a [`Sink`] and/or an [`Archive`] as the plugin's entry point:
/// `export_plugin!(name: "my-sink", sink: MySink)`, or with
/// `archive: MyArchive` after (or instead of) the sink. The version
/// reported is the crate's `CARGO_PKG_VERSION`.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:literal, sink: $sink:ty $(,)?) => {
        $crate::export_plugin!(@table $name, $crate::ffi::CAP_SINK,
            ::core::option::Option::Some($crate::export::sink_fns::<$sink>()),
            ::core::option::Option::None);
    };
    (name: $name:literal, archive: $archive:ty $(,)?) => {
        $crate::export_plugin!(@table $name, $crate::ffi::CAP_ARCHIVE,
            ::core::option::Option::None,
            ::core::option::Option::Some($crate::export::archive_fns::<$archive>()));
    };
    (name: $name:literal, sink: $sink:ty, archive: $archive:ty $(,)?) => {
        $crate::export_plugin!(@table $name, $crate::ffi::CAP_SINK | $crate::ffi::CAP_ARCHIVE,
            ::core::option::Option::Some($crate::export::sink_fns::<$sink>()),
            ::core::option::Option::Some($crate::export::archive_fns::<$archive>()));
    };
    (@table $name:literal, $caps:expr, $sink:expr, $archive:expr) => {
        /// The plugin's entry point: its function table.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn spread_plugin_entry() -> *const $crate::ffi::SpreadPlugin {
            #[allow(unsafe_code)]
            unsafe extern "C" fn describe(info: *mut $crate::ffi::SpreadInfo) {
                // SAFETY: the host passes a writable info (or null); the
                // strings are static and NUL-terminated.
                unsafe {
                    $crate::export::describe_into(
                        info,
                        concat!($name, "\0").as_bytes(),
                        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
                        $caps,
                    )
                }
            }
            static TABLE: $crate::ffi::SpreadPlugin =
                $crate::export::table(describe, $sink, $archive);
            &TABLE
        }
    };
}
