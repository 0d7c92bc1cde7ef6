//! The glue `export_plugin!` generates, called through the C function
//! table exactly as a host would: sink calls, error messages, panics caught
//! at the boundary, and archive queries paged through a cursor.

#![allow(unsafe_code, clippy::unwrap_used)]

use std::ffi::{c_char, c_void, CStr};
use std::ptr;

use spread_plugin::ffi::{self, SpreadBytes, SpreadEvent, SpreadOpenArgs, SpreadQuery};
use spread_plugin::{
    export_plugin, Archive, Cursor, Error, Event, Kind, OpenContext, OwnedEvent, Query, Result,
    Sink,
};

/// Keeps what it gets; fails on topic `retry`, panics on topic `panic`.
struct Keeper(Vec<OwnedEvent>);

impl Sink for Keeper {
    fn open(ctx: &OpenContext<'_>) -> Result<Self> {
        if ctx.config_json.contains("refuse") {
            return Err(Error::fatal(format!("{} refuses", ctx.name)));
        }
        Ok(Keeper(Vec::new()))
    }

    fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()> {
        for e in events {
            match e.topic() {
                "retry" => return Err(Error::retry("try later")),
                "panic" => panic!("asked to"),
                _ => self.0.push(e.to_owned_event()),
            }
        }
        Ok(())
    }
}

/// Twenty events `a/0` .. `a/19`, served two per page.
struct Twenty;

struct Pages {
    matching: Vec<OwnedEvent>,
}

impl Archive for Twenty {
    type Cursor = Pages;

    fn open(_ctx: &OpenContext<'_>) -> Result<Self> {
        Ok(Twenty)
    }

    fn query(&self, query: &Query) -> Result<Pages> {
        let mut matching: Vec<OwnedEvent> = (0..20)
            .map(|i| event(i, &format!("a/{i}")).to_owned_event())
            .filter(|e| query.matches(&e.as_event()))
            .collect();
        matching.truncate(query.limit.unwrap_or(u64::MAX) as usize);
        matching.reverse();
        Ok(Pages { matching })
    }
}

impl Cursor for Pages {
    fn next_page(&mut self, page: &mut Vec<OwnedEvent>) -> Result<()> {
        for _ in 0..2 {
            page.extend(self.matching.pop());
        }
        Ok(())
    }
}

export_plugin!(name: "keeper", sink: Keeper, archive: Twenty);

fn event(i: u64, topic: &str) -> Event<'_> {
    Event::new(
        i + 1,
        1000 + i,
        topic,
        b"p",
        "o",
        "n",
        [i as u8; 16],
        Kind::Value,
    )
}

fn args(config: &'static str) -> SpreadOpenArgs {
    SpreadOpenArgs {
        name: SpreadBytes::new(b"k1"),
        config_json: SpreadBytes::new(config.as_bytes()),
        node: SpreadBytes::new(b"n"),
        data_dir: SpreadBytes::new(b"/tmp"),
    }
}

/// Takes an error message back as the host does.
fn take_error(table: &ffi::SpreadPlugin, message: *mut c_char) -> String {
    assert!(!message.is_null());
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { (table.free_error.unwrap())(message) };
    text
}

#[test]
fn sink_calls_errors_and_panics_cross_the_table() {
    let table = unsafe { &*spread_plugin_entry() };
    assert_eq!(table.abi_version, ffi::ABI_VERSION);
    let mut info = ffi::SpreadInfo {
        name: ptr::null(),
        version: ptr::null(),
        capabilities: 0,
    };
    unsafe { (table.describe.unwrap())(&mut info) };
    assert_eq!(
        unsafe { CStr::from_ptr(info.name) }.to_str().unwrap(),
        "keeper"
    );
    assert_eq!(info.capabilities, ffi::CAP_SINK | ffi::CAP_ARCHIVE);

    // Refused settings: fatal, with the plugin's message.
    let (mut instance, mut error): (*mut c_void, *mut c_char) = (ptr::null_mut(), ptr::null_mut());
    let status =
        unsafe { (table.sink_open.unwrap())(&args("{\"refuse\":1}"), &mut instance, &mut error) };
    assert_eq!(status, ffi::STATUS_FATAL);
    assert_eq!(take_error(table, error), "k1 refuses");

    let status = unsafe { (table.sink_open.unwrap())(&args("{}"), &mut instance, &mut error) };
    assert_eq!(status, ffi::STATUS_OK);
    let write = |topics: &[&'static str], error: &mut *mut c_char| {
        let views: Vec<SpreadEvent> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| *event(i as u64, t).as_ffi())
            .collect();
        unsafe { (table.sink_write.unwrap())(instance, views.as_ptr(), views.len(), error) }
    };
    assert_eq!(write(&["x/1", "x/2"], &mut error), ffi::STATUS_OK);
    assert_eq!(write(&["retry"], &mut error), ffi::STATUS_RETRY);
    assert_eq!(take_error(table, error), "try later");
    // A panic is caught at the boundary and reported as fatal.
    assert_eq!(write(&["panic"], &mut error), ffi::STATUS_FATAL);
    assert_eq!(take_error(table, error), "plugin panicked: asked to");
    // A host passing a topic that is not UTF-8 gets an error, and the sink
    // sees nothing of the batch.
    let mut bad = *event(9, "x/9").as_ffi();
    let invalid: &'static [u8] = b"x/\xff";
    bad.topic = SpreadBytes::new(invalid);
    let good = *event(10, "x/10").as_ffi();
    let status =
        unsafe { (table.sink_write.unwrap())(instance, [good, bad].as_ptr(), 2, &mut error) };
    assert_eq!(status, ffi::STATUS_FATAL);
    assert_eq!(
        take_error(table, error),
        "the host passed a non-UTF-8 topic"
    );
    assert_eq!(
        unsafe { (table.sink_flush.unwrap())(instance, &mut error) },
        ffi::STATUS_OK
    );
    let kept = unsafe { &*instance.cast::<Keeper>() };
    assert_eq!(kept.0.len(), 2);
    assert_eq!(kept.0[1].topic, "x/2");
    assert_eq!(kept.0[1].id, [1; 16]);
    unsafe { (table.sink_close.unwrap())(instance) };
}

#[test]
fn archive_queries_page_through_a_cursor() {
    let table = unsafe { &*spread_plugin_entry() };
    let (mut archive, mut error): (*mut c_void, *mut c_char) = (ptr::null_mut(), ptr::null_mut());
    let status = unsafe { (table.archive_open.unwrap())(&args("{}"), &mut archive, &mut error) };
    assert_eq!(status, ffi::STATUS_OK);
    let prefixes = [SpreadBytes::new(b"a")];
    let query = SpreadQuery {
        prefixes: prefixes.as_ptr(),
        prefix_count: 1,
        node: SpreadBytes::EMPTY,
        from_time: 1003,
        to_time: u64::MAX,
        from_iteration: 0,
        to_iteration: u64::MAX,
        limit: 5,
    };
    let mut cursor: *mut c_void = ptr::null_mut();
    let status =
        unsafe { (table.archive_query.unwrap())(archive, &query, &mut cursor, &mut error) };
    assert_eq!(status, ffi::STATUS_OK);
    let mut got = Vec::new();
    loop {
        let (mut events, mut count): (*const SpreadEvent, usize) = (ptr::null(), 0);
        let status =
            unsafe { (table.cursor_next.unwrap())(cursor, &mut events, &mut count, &mut error) };
        assert_eq!(status, ffi::STATUS_OK);
        if count == 0 {
            break;
        }
        assert!(count <= 2);
        for e in unsafe { std::slice::from_raw_parts(events, count) } {
            let e = unsafe { spread_plugin::export::event(e) }.unwrap();
            got.push((e.topic().to_string(), e.timestamp()));
        }
    }
    let want: Vec<(String, u64)> = (3..8).map(|i| (format!("a/{i}"), 1000 + i)).collect();
    assert_eq!(got, want);
    unsafe { (table.cursor_close.unwrap())(cursor) };
    unsafe { (table.archive_close.unwrap())(archive) };
}
