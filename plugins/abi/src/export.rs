//! The glue behind [`export_plugin!`](crate::export_plugin): generic
//! `extern "C"` functions that turn ABI calls into trait calls.
//!
//! Every function catches panics, so a panicking plugin returns
//! [`STATUS_FATAL`](crate::ffi::STATUS_FATAL) with the panic message instead
//! of unwinding into the host (which would abort it).

#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::api::{Archive, Cursor, Error, Event, OpenContext, OwnedEvent, Query, Result, Sink};
use crate::ffi::{self, SpreadBytes, SpreadEvent, SpreadOpenArgs, SpreadPlugin, SpreadQuery};

/// The sink half of a function table.
#[derive(Clone, Copy)]
pub struct SinkFns {
    open: ffi::OpenFn,
    write: ffi::WriteBatchFn,
    flush: ffi::FlushFn,
    missed: ffi::MissedFn,
    close: ffi::CloseFn,
}

/// The archive half of a function table.
#[derive(Clone, Copy)]
pub struct ArchiveFns {
    open: ffi::OpenFn,
    query: ffi::QueryFn,
    next: ffi::NextFn,
    cursor_close: ffi::CloseFn,
    close: ffi::CloseFn,
}

/// The sink functions of `S`.
pub const fn sink_fns<S: Sink>() -> SinkFns {
    SinkFns {
        open: sink_open::<S>,
        write: sink_write::<S>,
        flush: sink_flush::<S>,
        missed: sink_missed::<S>,
        close: sink_close::<S>,
    }
}

/// The archive functions of `A`.
pub const fn archive_fns<A: Archive>() -> ArchiveFns {
    ArchiveFns {
        open: archive_open::<A>,
        query: archive_query::<A>,
        next: cursor_next::<A::Cursor>,
        cursor_close: cursor_close::<A::Cursor>,
        close: archive_close::<A>,
    }
}

/// Assembles the table the entry point returns.
pub const fn table(
    describe: ffi::DescribeFn,
    sink: Option<SinkFns>,
    archive: Option<ArchiveFns>,
) -> SpreadPlugin {
    let mut t = SpreadPlugin {
        abi_version: ffi::ABI_VERSION,
        size: std::mem::size_of::<SpreadPlugin>() as u32,
        describe: Some(describe),
        free_error: Some(free_error),
        sink_open: None,
        sink_write: None,
        sink_flush: None,
        sink_missed: None,
        sink_close: None,
        archive_open: None,
        archive_query: None,
        cursor_next: None,
        cursor_close: None,
        archive_close: None,
    };
    if let Some(s) = sink {
        t.sink_open = Some(s.open);
        t.sink_write = Some(s.write);
        t.sink_flush = Some(s.flush);
        t.sink_missed = Some(s.missed);
        t.sink_close = Some(s.close);
    }
    if let Some(a) = archive {
        t.archive_open = Some(a.open);
        t.archive_query = Some(a.query);
        t.cursor_next = Some(a.next);
        t.cursor_close = Some(a.cursor_close);
        t.archive_close = Some(a.close);
    }
    t
}

/// Fills `info` (called by the generated `describe`).
///
/// # Safety
/// `info` is null or points to a writable `SpreadInfo`; `name` and `version`
/// are NUL-terminated and static.
pub unsafe fn describe_into(
    info: *mut ffi::SpreadInfo,
    name: &'static [u8],
    version: &'static [u8],
    capabilities: u32,
) {
    if let Some(info) = info.as_mut() {
        *info = ffi::SpreadInfo {
            name: name.as_ptr().cast(),
            version: version.as_ptr().cast(),
            capabilities,
        };
    }
}

/// Frees an error message made by [`guard`].
unsafe extern "C" fn free_error(error: *mut c_char) {
    if !error.is_null() {
        drop(CString::from_raw(error));
    }
}

/// Runs `f`, turning errors and panics into a status and an error message.
fn guard(error: *mut *mut c_char, f: impl FnOnce() -> Result<()>) -> i32 {
    let (status, message) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return ffi::STATUS_OK,
        Ok(Err(e)) => (e.status(), e.message().to_owned()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".into());
            (ffi::STATUS_FATAL, format!("plugin panicked: {what}"))
        }
    };
    if !error.is_null() {
        let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: the host passes a valid out-pointer (or null, checked).
        unsafe { *error = text.into_raw() };
    }
    status
}

/// The bytes behind a view.
///
/// # Safety
/// `b` describes `len` readable bytes that outlive `'a` (or `len` is 0).
pub unsafe fn bytes<'a>(b: SpreadBytes) -> &'a [u8] {
    if b.len == 0 || b.ptr.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(b.ptr, b.len)
    }
}

/// A view as UTF-8 text, or a fatal error naming `what`.
///
/// # Safety
/// As for [`bytes`].
pub unsafe fn text<'a>(b: SpreadBytes, what: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes(b))
        .map_err(|_| Error::Fatal(format!("the host passed a non-UTF-8 {what}")))
}

/// A safe event from its ABI view, its text fields checked for UTF-8.
///
/// # Safety
/// Every view in `e` is valid for `'a`.
pub unsafe fn event<'a>(e: &'a SpreadEvent) -> Result<Event<'a>> {
    text(e.topic, "topic")?;
    text(e.origin, "origin")?;
    text(e.node, "node")?;
    Ok(Event::from_ffi_slice(std::slice::from_ref(e))[0])
}

unsafe fn open_with<T>(
    args: *const SpreadOpenArgs,
    instance: *mut *mut c_void,
    error: *mut *mut c_char,
    open: impl FnOnce(&OpenContext<'_>) -> Result<T>,
) -> i32 {
    guard(error, || {
        let args = args
            .as_ref()
            .ok_or_else(|| Error::Fatal("no open arguments".into()))?;
        let ctx = OpenContext {
            name: text(args.name, "name")?,
            config_json: text(args.config_json, "configuration")?,
            node: text(args.node, "node id")?,
            data_dir: Path::new(text(args.data_dir, "data dir")?),
        };
        let value = open(&ctx)?;
        if instance.is_null() {
            return Err(Error::Fatal("no instance out-pointer".into()));
        }
        *instance = Box::into_raw(Box::new(value)).cast();
        Ok(())
    })
}

unsafe extern "C" fn sink_open<S: Sink>(
    args: *const SpreadOpenArgs,
    instance: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32 {
    open_with(args, instance, error, S::open)
}

unsafe extern "C" fn sink_write<S: Sink>(
    instance: *mut c_void,
    events: *const SpreadEvent,
    count: usize,
    error: *mut *mut c_char,
) -> i32 {
    guard(error, || {
        let sink = instance
            .cast::<S>()
            .as_mut()
            .ok_or_else(|| Error::Fatal("null instance".into()))?;
        let views: &[SpreadEvent] = if count == 0 || events.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(events, count)
        };
        // Checked in place, then used as it is: no copy of the batch.
        for e in views {
            event(e)?;
        }
        sink.write_batch(Event::from_ffi_slice(views))
    })
}

unsafe extern "C" fn sink_flush<S: Sink>(instance: *mut c_void, error: *mut *mut c_char) -> i32 {
    guard(error, || match instance.cast::<S>().as_mut() {
        Some(sink) => sink.flush(),
        None => Err(Error::Fatal("null instance".into())),
    })
}

unsafe extern "C" fn sink_missed<S: Sink>(
    instance: *mut c_void,
    first: u64,
    last: u64,
    error: *mut *mut c_char,
) -> i32 {
    guard(error, || match instance.cast::<S>().as_mut() {
        Some(sink) => sink.missed(first, last),
        None => Err(Error::Fatal("null instance".into())),
    })
}

unsafe extern "C" fn sink_close<S: Sink>(instance: *mut c_void) {
    if !instance.is_null() {
        let sink = Box::from_raw(instance.cast::<S>());
        // A panic in close (or drop) must not unwind into the host either.
        let _ = catch_unwind(AssertUnwindSafe(move || sink.close()));
    }
}

unsafe extern "C" fn archive_open<A: Archive>(
    args: *const SpreadOpenArgs,
    instance: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32 {
    open_with(args, instance, error, A::open)
}

unsafe extern "C" fn archive_close<A: Archive>(instance: *mut c_void) {
    if !instance.is_null() {
        let archive = Box::from_raw(instance.cast::<A>());
        let _ = catch_unwind(AssertUnwindSafe(move || drop(archive)));
    }
}

/// A query in progress: the plugin's cursor and the page it last returned.
struct CursorState<C> {
    cursor: C,
    page: Vec<OwnedEvent>,
    views: Vec<SpreadEvent>,
}

/// A safe query from its ABI form.
///
/// # Safety
/// Every view in `q` is valid for the call.
pub unsafe fn query(q: &SpreadQuery) -> Result<Query> {
    let prefixes: &[SpreadBytes] = if q.prefix_count == 0 || q.prefixes.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(q.prefixes, q.prefix_count)
    };
    let node = text(q.node, "node")?;
    Ok(Query {
        prefixes: prefixes
            .iter()
            .map(|p| text(*p, "prefix").map(str::to_owned))
            .collect::<Result<_>>()?,
        node: (!node.is_empty()).then(|| node.to_owned()),
        from_time: (q.from_time > 0).then_some(q.from_time),
        to_time: (q.to_time < u64::MAX).then_some(q.to_time),
        from_iteration: (q.from_iteration > 0).then_some(q.from_iteration),
        to_iteration: (q.to_iteration < u64::MAX).then_some(q.to_iteration),
        limit: (q.limit > 0).then_some(q.limit),
    })
}

unsafe extern "C" fn archive_query<A: Archive>(
    instance: *mut c_void,
    q: *const SpreadQuery,
    cursor: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32 {
    guard(error, || {
        let archive = instance
            .cast::<A>()
            .as_ref()
            .ok_or_else(|| Error::Fatal("null archive".into()))?;
        let q = query(
            q.as_ref()
                .ok_or_else(|| Error::Fatal("null query".into()))?,
        )?;
        let state = CursorState {
            cursor: archive.query(&q)?,
            page: Vec::new(),
            views: Vec::new(),
        };
        if cursor.is_null() {
            return Err(Error::Fatal("no cursor out-pointer".into()));
        }
        *cursor = Box::into_raw(Box::new(state)).cast();
        Ok(())
    })
}

unsafe extern "C" fn cursor_next<C: Cursor>(
    cursor: *mut c_void,
    events: *mut *const SpreadEvent,
    count: *mut usize,
    error: *mut *mut c_char,
) -> i32 {
    guard(error, || {
        let state = cursor
            .cast::<CursorState<C>>()
            .as_mut()
            .ok_or_else(|| Error::Fatal("null cursor".into()))?;
        if events.is_null() || count.is_null() {
            return Err(Error::Fatal("null out-pointer".into()));
        }
        state.views.clear();
        state.page.clear();
        state.cursor.next_page(&mut state.page)?;
        state
            .views
            .extend(state.page.iter().map(|e| *e.as_event().as_ffi()));
        *events = state.views.as_ptr();
        *count = state.views.len();
        Ok(())
    })
}

unsafe extern "C" fn cursor_close<C: Cursor>(cursor: *mut c_void) {
    if !cursor.is_null() {
        let state = Box::from_raw(cursor.cast::<CursorState<C>>());
        let _ = catch_unwind(AssertUnwindSafe(move || drop(state)));
    }
}
