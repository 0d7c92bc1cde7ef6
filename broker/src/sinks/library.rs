//! Loading a sink plugin from a shared library and calling it through its
//! C function table.
//!
//! At load the entry symbol is resolved, the table's ABI version checked
//! before any other field is read, its size checked, and the functions the
//! sink capability needs checked for presence; any failure is an error
//! naming the library and the reason. The library stays loaded as long as
//! any instance of it is open.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use spread_plugin::ffi::{self, SpreadBytes, SpreadEvent, SpreadPlugin};
use spread_plugin::{Error, Event, OwnedEvent, Query};

use super::driver::{ArchiveDriver, CursorDriver, Driver, Factory};
use spread_plugin::OpenContext;

/// Why a plugin library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be loaded as a shared library.
    #[error("cannot load {path}: {reason}")]
    Open {
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// The library lacks the entry symbol.
    #[error("{path} is not a Spread plugin: no symbol spread_plugin_entry ({reason})")]
    NoEntry {
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// The plugin speaks another ABI version.
    #[error("{path} speaks plugin ABI version {found}; this broker speaks version {expected}")]
    Version {
        path: PathBuf,
        /// The plugin's version.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The table is malformed or lacks a function.
    #[error("{path}: {reason}")]
    Table { path: PathBuf, reason: String },
}

/// A loaded plugin library.
pub struct Library {
    path: PathBuf,
    table: &'static SpreadPlugin,
    name: String,
    version: String,
    /// Whether the archive functions are all there.
    archive: bool,
    /// Dropped last: the table and every function point into it.
    _lib: libloading::Library,
}

// SAFETY: the table is immutable and its functions follow the ABI's
// threading rules, which the host obeys (one thread per sink instance).
unsafe impl Send for Library {}
// SAFETY: as above; `describe` and `free_error` may be called from any thread.
unsafe impl Sync for Library {}

impl Library {
    /// Loads `path` and validates its function table.
    pub fn load(path: &Path) -> Result<Arc<Library>, LoadError> {
        let path = path.to_path_buf();
        // SAFETY: loading runs the library's initialisers; operators load
        // only libraries they trust, as with any native plugin.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| LoadError::Open {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // SAFETY: the symbol's type is fixed by the ABI.
        let entry: ffi::EntryFn = unsafe { lib.get::<ffi::EntryFn>(ffi::ENTRY_SYMBOL) }
            .map(|sym| *sym)
            .map_err(|e| LoadError::NoEntry {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        // SAFETY: the entry point takes no arguments and returns a pointer
        // to a table that lives as long as the library.
        let raw = unsafe { entry() };
        if raw.is_null() {
            return Err(LoadError::Table {
                path,
                reason: "spread_plugin_entry returned NULL".into(),
            });
        }
        // The version is the first field of every ABI version: read it
        // alone before trusting the rest of the layout.
        // SAFETY: non-null, and every version's table starts with it.
        let found = unsafe { std::ptr::read(raw.cast::<u32>()) };
        if found != ffi::ABI_VERSION {
            return Err(LoadError::Version {
                path,
                found,
                expected: ffi::ABI_VERSION,
            });
        }
        // SAFETY: version 1 tables start with abi_version then size.
        let size = unsafe { std::ptr::read(raw.cast::<u32>().add(1)) };
        if (size as usize) < std::mem::size_of::<SpreadPlugin>() {
            return Err(LoadError::Table {
                path,
                reason: format!(
                    "function table of {size} bytes, expected at least {}",
                    std::mem::size_of::<SpreadPlugin>()
                ),
            });
        }
        // SAFETY: a version-1 table of at least our size, living as long as
        // `lib`, which this struct keeps loaded (and drops last).
        let table: &'static SpreadPlugin = unsafe { &*raw };
        let (name, version, caps) = describe(table);
        let missing = [
            ("free_error", table.free_error.is_some()),
            ("sink_open", table.sink_open.is_some()),
            ("sink_write", table.sink_write.is_some()),
            ("sink_flush", table.sink_flush.is_some()),
            ("sink_close", table.sink_close.is_some()),
        ]
        .into_iter()
        .filter(|(_, present)| !present)
        .map(|(f, _)| f)
        .collect::<Vec<_>>();
        if caps & ffi::CAP_SINK == 0 || !missing.is_empty() {
            return Err(LoadError::Table {
                path,
                reason: format!(
                    "plugin {name} is not a usable sink (capabilities {caps}, missing: {})",
                    missing.join(", ")
                ),
            });
        }
        let archive = caps & ffi::CAP_ARCHIVE != 0
            && table.archive_open.is_some()
            && table.archive_query.is_some()
            && table.cursor_next.is_some()
            && table.cursor_close.is_some()
            && table.archive_close.is_some();
        Ok(Arc::new(Library {
            path,
            table,
            name,
            version,
            archive,
            _lib: lib,
        }))
    }

    /// Takes the error message a failed call returned.
    fn error(&self, status: i32, message: *mut c_char, call: &str) -> Error {
        let text = if message.is_null() {
            format!("{call} failed without a message")
        } else {
            // SAFETY: the plugin returned a NUL-terminated string it owns
            // until free_error.
            let text = unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned();
            if let Some(free) = self.table.free_error {
                // SAFETY: handing back the plugin's own allocation, once.
                unsafe { free(message) };
            }
            text
        };
        match status {
            ffi::STATUS_RETRY => Error::Retryable(text),
            ffi::STATUS_FATAL => Error::Fatal(text),
            ffi::STATUS_REJECTED if call == "sink_write" => Error::Rejected(text),
            other => Error::Fatal(format!("{call} returned unknown status {other}: {text}")),
        }
    }
}

/// Name, version and capabilities from `describe` (placeholders when absent).
fn describe(table: &SpreadPlugin) -> (String, String, u32) {
    let mut info = ffi::SpreadInfo {
        name: std::ptr::null(),
        version: std::ptr::null(),
        capabilities: 0,
    };
    if let Some(f) = table.describe {
        // SAFETY: `info` is a valid out-pointer for the call.
        unsafe { f(&mut info) };
    }
    let text = |p: *const c_char| {
        if p.is_null() {
            "unnamed".to_string()
        } else {
            // SAFETY: the ABI promises static NUL-terminated strings.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    (text(info.name), text(info.version), info.capabilities)
}

impl Library {
    /// Calls an open function (sink or archive) with `args`.
    fn open_with(
        &self,
        open: Option<ffi::OpenFn>,
        args: &OpenContext<'_>,
        call: &str,
    ) -> Result<*mut c_void, Error> {
        let Some(open) = open else {
            return Err(Error::Fatal(format!("no {call}")));
        };
        let data_dir = args.data_dir.to_string_lossy();
        let open_args = ffi::SpreadOpenArgs {
            name: SpreadBytes::new(args.name.as_bytes()),
            config_json: SpreadBytes::new(args.config_json.as_bytes()),
            node: SpreadBytes::new(args.node.as_bytes()),
            data_dir: SpreadBytes::new(data_dir.as_bytes()),
        };
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut message: *mut c_char = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the views borrow
        // locals that outlive it.
        let status = unsafe { open(&open_args, &mut instance, &mut message) };
        if status != ffi::STATUS_OK {
            return Err(self.error(status, message, call));
        }
        Ok(instance)
    }
}

impl Factory for Arc<Library> {
    fn describe(&self) -> String {
        format!("{} {} ({})", self.name, self.version, self.path.display())
    }

    fn open(&self, args: &OpenContext<'_>) -> Result<Box<dyn Driver>, Error> {
        let instance = self.open_with(self.table.sink_open, args, "sink_open")?;
        Ok(Box::new(Instance {
            lib: self.clone(),
            instance,
        }))
    }

    fn has_archive(&self) -> bool {
        self.archive
    }

    fn open_archive(&self, args: &OpenContext<'_>) -> Result<Box<dyn ArchiveDriver>, Error> {
        if !self.archive {
            return Err(Error::Fatal(format!("{} cannot answer queries", self.name)));
        }
        let instance = self.open_with(self.table.archive_open, args, "archive_open")?;
        Ok(Box::new(DynArchive {
            lib: self.clone(),
            instance,
        }))
    }
}

/// An open archive instance of a library.
struct DynArchive {
    lib: Arc<Library>,
    instance: *mut c_void,
}

// SAFETY: the ABI lets archive_query run on several threads at once.
unsafe impl Send for DynArchive {}
// SAFETY: as above.
unsafe impl Sync for DynArchive {}

impl ArchiveDriver for DynArchive {
    fn query(&self, q: &Query) -> Result<Box<dyn CursorDriver>, Error> {
        let Some(query) = self.lib.table.archive_query else {
            return Err(Error::Fatal("no archive_query".into()));
        };
        let prefixes: Vec<SpreadBytes> = q
            .prefixes
            .iter()
            .map(|p| SpreadBytes::new(p.as_bytes()))
            .collect();
        let raw = ffi::SpreadQuery {
            prefixes: prefixes.as_ptr(),
            prefix_count: prefixes.len(),
            node: q
                .node
                .as_deref()
                .map_or(SpreadBytes::EMPTY, |n| SpreadBytes::new(n.as_bytes())),
            from_time: q.from_time.unwrap_or(0),
            to_time: q.to_time.unwrap_or(u64::MAX),
            from_iteration: q.from_iteration.unwrap_or(0),
            to_iteration: q.to_iteration.unwrap_or(u64::MAX),
            limit: q.limit.unwrap_or(0),
        };
        let mut cursor: *mut c_void = std::ptr::null_mut();
        let mut message = std::ptr::null_mut();
        // SAFETY: the query's views borrow `q` and `prefixes`, alive for the call.
        let status = unsafe { query(self.instance, &raw, &mut cursor, &mut message) };
        if status != ffi::STATUS_OK {
            return Err(self.lib.error(status, message, "archive_query"));
        }
        Ok(Box::new(DynCursor {
            lib: self.lib.clone(),
            cursor,
        }))
    }
}

impl Drop for DynArchive {
    fn drop(&mut self) {
        if let Some(close) = self.lib.table.archive_close {
            // SAFETY: closed exactly once, after every cursor (they hold the library, not this).
            unsafe { close(self.instance) };
        }
    }
}

/// A running query of a library's archive.
struct DynCursor {
    lib: Arc<Library>,
    cursor: *mut c_void,
}

// SAFETY: a cursor is used by one thread at a time (`&mut self`).
unsafe impl Send for DynCursor {}

impl CursorDriver for DynCursor {
    fn next_page(&mut self, page: &mut Vec<OwnedEvent>) -> Result<(), Error> {
        let Some(next) = self.lib.table.cursor_next else {
            return Err(Error::Fatal("no cursor_next".into()));
        };
        let (mut events, mut count): (*const SpreadEvent, usize) = (std::ptr::null(), 0);
        let mut message = std::ptr::null_mut();
        // SAFETY: valid out-pointers; the cursor is live.
        let status = unsafe { next(self.cursor, &mut events, &mut count, &mut message) };
        if status != ffi::STATUS_OK {
            return Err(self.lib.error(status, message, "cursor_next"));
        }
        if count == 0 || events.is_null() {
            return Ok(());
        }
        // SAFETY: the plugin returned `count` views valid until the next call.
        let views = unsafe { std::slice::from_raw_parts(events, count) };
        for view in views {
            // SAFETY: as above; text is checked for UTF-8 here.
            let event = unsafe { spread_plugin::export::event(view) }?;
            page.push(event.to_owned_event());
        }
        Ok(())
    }
}

impl Drop for DynCursor {
    fn drop(&mut self) {
        if let Some(close) = self.lib.table.cursor_close {
            // SAFETY: closed exactly once.
            unsafe { close(self.cursor) };
        }
    }
}

/// An open instance of a library's sink.
struct Instance {
    lib: Arc<Library>,
    instance: *mut c_void,
}

// SAFETY: the ABI lets a sink instance move between threads as long as one
// thread at a time calls it, which `&mut self` guarantees.
unsafe impl Send for Instance {}

impl Instance {
    fn status(&self, status: i32, message: *mut c_char, call: &str) -> Result<(), Error> {
        if status == ffi::STATUS_OK {
            Ok(())
        } else {
            Err(self.lib.error(status, message, call))
        }
    }
}

impl Driver for Instance {
    fn write(&mut self, events: &[Event<'_>]) -> Result<(), Error> {
        let Some(write) = self.lib.table.sink_write else {
            return Err(Error::Fatal("no sink_write".into()));
        };
        let mut message = std::ptr::null_mut();
        // An `Event` is a transparent `SpreadEvent`: the batch is passed as
        // it is. SAFETY: the views borrow `events`, alive for the call.
        let status = unsafe {
            write(
                self.instance,
                events.as_ptr().cast::<SpreadEvent>(),
                events.len(),
                &mut message,
            )
        };
        self.status(status, message, "sink_write")
    }

    fn flush(&mut self) -> Result<(), Error> {
        let Some(flush) = self.lib.table.sink_flush else {
            return Ok(());
        };
        let mut message = std::ptr::null_mut();
        // SAFETY: a live instance and a valid out-pointer.
        let status = unsafe { flush(self.instance, &mut message) };
        self.status(status, message, "sink_flush")
    }

    fn missed(&mut self, first: u64, last: u64) -> Result<(), Error> {
        let Some(missed) = self.lib.table.sink_missed else {
            return Ok(());
        };
        let mut message = std::ptr::null_mut();
        // SAFETY: a live instance and a valid out-pointer.
        let status = unsafe { missed(self.instance, first, last, &mut message) };
        self.status(status, message, "sink_missed")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(close) = self.lib.table.sink_close {
            // SAFETY: the instance is live and closed exactly once.
            unsafe { close(self.instance) };
        }
    }
}
