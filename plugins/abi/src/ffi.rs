//! The C ABI, mirrored by `include/spread_plugin.h` (a test keeps the two
//! in sync).
//!
//! Only `#[repr(C)]` types and `extern "C"` functions cross the boundary, so
//! a plugin built by any compiler (any Rust version, or C) works with any
//! broker that speaks the same [`ABI_VERSION`]. The host resolves one
//! symbol, [`ENTRY_SYMBOL`], calls it, and reads the returned table's
//! `abi_version` before anything else.

use std::ffi::{c_char, c_void};

/// The ABI version this crate speaks; the host refuses any other.
pub const ABI_VERSION: u32 = 1;

/// The symbol every plugin exports: `const SpreadPlugin *spread_plugin_entry(void)`.
pub const ENTRY_SYMBOL: &[u8] = b"spread_plugin_entry\0";

/// The call succeeded.
pub const STATUS_OK: i32 = 0;
/// The call failed but may succeed if repeated later (the host backs off).
pub const STATUS_RETRY: i32 = 1;
/// The call failed for good: the host stops the sink.
pub const STATUS_FATAL: i32 = 2;
/// `sink_write` only: the batch holds at least one event this sink can never
/// store (the destination refuses the value itself, so retrying cannot
/// help). The host splits the batch until it finds the events rejected
/// alone, records each in the sink's dead-letter file, counts it in the
/// status and delivers the rest. From any other call it is fatal, and hosts
/// older than this status treat it as fatal too.
pub const STATUS_REJECTED: i32 = 3;

/// The plugin can receive the event log (`sink_*` functions).
pub const CAP_SINK: u32 = 1;
/// The plugin can answer archive queries (`archive_*`, `cursor_*` functions).
pub const CAP_ARCHIVE: u32 = 2;

/// An event that sets a value.
pub const KIND_VALUE: u8 = 0;
/// An event that deletes its topic.
pub const KIND_TOMBSTONE: u8 = 1;

/// A borrowed byte string (not NUL-terminated); `ptr` may be null when `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SpreadBytes {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl SpreadBytes {
    /// A view of `s`, valid as long as `s` is.
    pub fn new(s: &[u8]) -> SpreadBytes {
        SpreadBytes {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// The empty string.
    pub const EMPTY: SpreadBytes = SpreadBytes {
        ptr: std::ptr::null(),
        len: 0,
    };
}

/// A borrowed view of one event, valid for the duration of the call that
/// passes it (or, from a cursor, until the next call on that cursor).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SpreadEvent {
    /// Position in the log of the node that applied it.
    pub iteration: u64,
    /// Microseconds since the Unix epoch (the CmRDT timestamp).
    pub timestamp: u64,
    /// The topic, UTF-8.
    pub topic: SpreadBytes,
    /// The payload (empty for a tombstone).
    pub payload: SpreadBytes,
    /// Who published it, UTF-8.
    pub origin: SpreadBytes,
    /// The node that applied it, UTF-8.
    pub node: SpreadBytes,
    /// Globally unique event id.
    pub id: [u8; 16],
    /// [`KIND_VALUE`] or [`KIND_TOMBSTONE`].
    pub kind: u8,
    /// Zero.
    pub reserved: [u8; 7],
}

/// What the host tells a plugin instance when it opens it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SpreadOpenArgs {
    /// The instance's name in the broker configuration, UTF-8.
    pub name: SpreadBytes,
    /// The plugin's own settings as JSON text (an object, `{}` when none).
    pub config_json: SpreadBytes,
    /// The broker's node id, UTF-8.
    pub node: SpreadBytes,
    /// The broker's data directory, for files the plugin keeps.
    pub data_dir: SpreadBytes,
}

/// An archive query. Unbounded limits are 0 (from) and `UINT64_MAX` (to).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SpreadQuery {
    /// Topic prefixes (whole segments); none means every topic.
    pub prefixes: *const SpreadBytes,
    /// Number of prefixes.
    pub prefix_count: usize,
    /// Only events applied by this node; empty means any node.
    pub node: SpreadBytes,
    /// Earliest timestamp, inclusive.
    pub from_time: u64,
    /// Latest timestamp, exclusive.
    pub to_time: u64,
    /// Lowest iteration, inclusive.
    pub from_iteration: u64,
    /// Highest iteration, exclusive.
    pub to_iteration: u64,
    /// Most events returned; 0 means no limit.
    pub limit: u64,
}

/// What a plugin is, filled by `describe`. Strings are static, NUL-terminated.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SpreadInfo {
    /// Plugin name.
    pub name: *const c_char,
    /// Plugin version.
    pub version: *const c_char,
    /// [`CAP_SINK`] and/or [`CAP_ARCHIVE`].
    pub capabilities: u32,
}

/// Opens an instance: `args` → `*instance`, or a status with `*error` set.
pub type OpenFn = unsafe extern "C" fn(
    args: *const SpreadOpenArgs,
    instance: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32;
/// Writes events to a sink instance.
pub type WriteBatchFn = unsafe extern "C" fn(
    instance: *mut c_void,
    events: *const SpreadEvent,
    count: usize,
    error: *mut *mut c_char,
) -> i32;
/// Makes everything written so far durable.
pub type FlushFn = unsafe extern "C" fn(instance: *mut c_void, error: *mut *mut c_char) -> i32;
/// Tells a sink that iterations `first..=last` were deleted before it got them.
pub type MissedFn = unsafe extern "C" fn(
    instance: *mut c_void,
    first: u64,
    last: u64,
    error: *mut *mut c_char,
) -> i32;
/// Closes an instance, a query cursor or an archive.
pub type CloseFn = unsafe extern "C" fn(instance: *mut c_void);
/// Starts a query on an archive instance.
pub type QueryFn = unsafe extern "C" fn(
    archive: *mut c_void,
    query: *const SpreadQuery,
    cursor: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32;
/// Fetches the next page of a query: `*count == 0` ends it.
pub type NextFn = unsafe extern "C" fn(
    cursor: *mut c_void,
    events: *mut *const SpreadEvent,
    count: *mut usize,
    error: *mut *mut c_char,
) -> i32;
/// Frees an error message the plugin returned.
pub type FreeErrorFn = unsafe extern "C" fn(error: *mut c_char);
/// Fills in what the plugin is.
pub type DescribeFn = unsafe extern "C" fn(info: *mut SpreadInfo);

/// The table of functions a plugin exports through [`ENTRY_SYMBOL`].
///
/// `abi_version` comes first and stays first in every version; `size` is
/// `sizeof(SpreadPlugin)` as the plugin was built, so later minor versions
/// can append functions. Functions of a capability the plugin lacks are null.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SpreadPlugin {
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Size of this table in bytes.
    pub size: u32,
    /// Name, version and capabilities.
    pub describe: Option<DescribeFn>,
    /// Frees an error message.
    pub free_error: Option<FreeErrorFn>,
    /// Opens a sink instance.
    pub sink_open: Option<OpenFn>,
    /// Writes a batch.
    pub sink_write: Option<WriteBatchFn>,
    /// Makes written events durable.
    pub sink_flush: Option<FlushFn>,
    /// Reports deleted history (optional even for sinks).
    pub sink_missed: Option<MissedFn>,
    /// Closes a sink instance.
    pub sink_close: Option<CloseFn>,
    /// Opens an archive instance.
    pub archive_open: Option<OpenFn>,
    /// Starts a query.
    pub archive_query: Option<QueryFn>,
    /// Next page of a query.
    pub cursor_next: Option<NextFn>,
    /// Ends a query.
    pub cursor_close: Option<CloseFn>,
    /// Closes an archive instance.
    pub archive_close: Option<CloseFn>,
}

/// The entry point's type.
pub type EntryFn = unsafe extern "C" fn() -> *const SpreadPlugin;
