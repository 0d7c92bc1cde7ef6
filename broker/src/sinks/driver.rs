//! What the host drives: a sink instance behind one interface, whether it
//! is a loaded shared library ([`super::library`]) or a Rust sink linked
//! into the broker ([`Native`]).

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use spread_plugin::{Archive, Cursor, Error, Event, OpenContext, OwnedEvent, Query, Sink};

/// Opens sink instances of one plugin.
pub trait Factory: Send + Sync {
    /// `name version` of the plugin, for status and logs.
    fn describe(&self) -> String;
    /// Opens an instance.
    fn open(&self, ctx: &OpenContext<'_>) -> Result<Box<dyn Driver>, Error>;
    /// Whether the plugin can answer archive queries.
    fn has_archive(&self) -> bool {
        false
    }
    /// Opens its query side, if it has one.
    fn open_archive(&self, ctx: &OpenContext<'_>) -> Result<Box<dyn ArchiveDriver>, Error> {
        let _ = ctx;
        Err(Error::Fatal(format!(
            "{} cannot answer queries",
            self.describe()
        )))
    }
}

/// The query side of an archive plugin; queried from several threads.
pub trait ArchiveDriver: Send + Sync {
    /// Starts a query.
    fn query(&self, query: &Query) -> Result<Box<dyn CursorDriver>, Error>;
}

/// A running archive query.
pub trait CursorDriver: Send {
    /// Replaces `page` with the next events; empty at the end.
    fn next_page(&mut self, page: &mut Vec<OwnedEvent>) -> Result<(), Error>;
}

/// One open sink instance; dropping it closes it.
pub trait Driver: Send {
    /// Hands over a batch.
    fn write(&mut self, events: &[Event<'_>]) -> Result<(), Error>;
    /// Makes what was written durable.
    fn flush(&mut self) -> Result<(), Error>;
    /// Reports deleted history the sink never received.
    fn missed(&mut self, first: u64, last: u64) -> Result<(), Error>;
}

/// A Rust [`Sink`] linked into the broker, behind the same panic barrier as
/// an exported plugin.
pub struct Native<S> {
    name: &'static str,
    archive: Option<OpenArchiveFn>,
    _sink: PhantomData<fn() -> S>,
}

type OpenArchiveFn = fn(&OpenContext<'_>) -> Result<Box<dyn ArchiveDriver>, Error>;

impl<S: Sink> Native<S> {
    /// A factory for `S`, reported as `name`.
    pub fn new(name: &'static str) -> Native<S> {
        Native {
            name,
            archive: None,
            _sink: PhantomData,
        }
    }

    /// The same, whose queries `A` answers.
    pub fn with_archive<A: Archive>(name: &'static str) -> Native<S> {
        Native {
            name,
            archive: Some(|ctx| {
                let archive = guarded(|| A::open(ctx))?;
                Ok(Box::new(NativeArchive(archive)) as Box<dyn ArchiveDriver>)
            }),
            _sink: PhantomData,
        }
    }
}

struct NativeArchive<A>(A);

impl<A: Archive> ArchiveDriver for NativeArchive<A> {
    fn query(&self, query: &Query) -> Result<Box<dyn CursorDriver>, Error> {
        let cursor = guarded(|| self.0.query(query))?;
        Ok(Box::new(NativeCursor(cursor)))
    }
}

struct NativeCursor<C>(C);

impl<C: Cursor> CursorDriver for NativeCursor<C> {
    fn next_page(&mut self, page: &mut Vec<OwnedEvent>) -> Result<(), Error> {
        Ok(guarded(|| self.0.next_page(page))?)
    }
}

/// How a guarded call into a native plugin failed.
enum Barrier {
    /// It panicked (with this message): its state is unknown.
    Panicked(String),
    /// It returned an error.
    Plugin(Error),
}

impl From<Barrier> for Error {
    fn from(b: Barrier) -> Error {
        match b {
            Barrier::Panicked(what) => Error::Fatal(format!("sink panicked: {what}")),
            Barrier::Plugin(e) => e,
        }
    }
}

/// Runs `f`, telling a panic from the errors it returns.
fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Barrier> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(Barrier::Plugin),
        Err(panic) => Err(Barrier::Panicked(
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".into()),
        )),
    }
}

impl<S: Sink> Factory for Native<S> {
    fn describe(&self) -> String {
        format!("{} (built in) {}", self.name, env!("CARGO_PKG_VERSION"))
    }

    fn open(&self, ctx: &OpenContext<'_>) -> Result<Box<dyn Driver>, Error> {
        let sink = guarded(|| S::open(ctx)).map_err(Error::from)?;
        Ok(Box::new(NativeSink(Some(sink))))
    }

    fn has_archive(&self) -> bool {
        self.archive.is_some()
    }

    fn open_archive(&self, ctx: &OpenContext<'_>) -> Result<Box<dyn ArchiveDriver>, Error> {
        match self.archive {
            Some(open) => open(ctx),
            None => Err(Error::Fatal(format!("{} cannot answer queries", self.name))),
        }
    }
}

/// An open native sink; `None` once a panic left it unusable.
struct NativeSink<S: Sink>(Option<S>);

impl<S: Sink> NativeSink<S> {
    fn call(&mut self, f: impl FnOnce(&mut S) -> Result<(), Error>) -> Result<(), Error> {
        let Some(sink) = self.0.as_mut() else {
            return Err(Error::Fatal("the sink panicked earlier".into()));
        };
        let result = guarded(|| f(sink));
        if let Err(Barrier::Panicked(_)) = &result {
            // Its state is unknown: never call it again, not even to close.
            std::mem::forget(self.0.take());
        }
        Ok(result?)
    }
}

impl<S: Sink> Driver for NativeSink<S> {
    fn write(&mut self, events: &[Event<'_>]) -> Result<(), Error> {
        self.call(|s| s.write_batch(events))
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.call(|s| s.flush())
    }

    fn missed(&mut self, first: u64, last: u64) -> Result<(), Error> {
        self.call(|s| s.missed(first, last))
    }
}

impl<S: Sink> Drop for NativeSink<S> {
    fn drop(&mut self) {
        if let Some(sink) = self.0.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || sink.close()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use spread_plugin::{OpenContext, Result, Sink};

    use super::*;

    static CLOSED: AtomicU32 = AtomicU32::new(0);

    /// Fails with a message that reads like a panic's, or panics.
    struct Mimic;

    impl Sink for Mimic {
        fn open(_: &OpenContext<'_>) -> Result<Self> {
            Ok(Mimic)
        }

        fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()> {
            if events.is_empty() {
                panic!("for real");
            }
            Err(Error::fatal("sink panicked: not really"))
        }

        fn close(self) {
            CLOSED.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn only_a_real_panic_makes_a_sink_unusable() {
        let dir = std::path::Path::new("/nonexistent");
        let ctx = OpenContext {
            name: "m",
            config_json: "{}",
            node: "n",
            data_dir: dir,
        };
        let factory = Native::<Mimic>::new("mimic");
        let event = Event::new(
            1,
            1,
            "t",
            b"",
            "o",
            "n",
            [0; 16],
            spread_plugin::Kind::Value,
        );
        // An error that reads like a panic is an error: the sink is closed.
        let mut driver = factory.open(&ctx).unwrap();
        assert!(driver.write(&[event]).is_err());
        assert!(driver.write(&[event]).is_err(), "still callable");
        drop(driver);
        assert_eq!(CLOSED.load(Ordering::SeqCst), 1);
        // A panic: never called again, not even to close.
        let mut driver = factory.open(&ctx).unwrap();
        let m = driver.write(&[]).unwrap_err();
        assert!(m.message().starts_with("sink panicked: for real"), "{m}");
        assert_eq!(
            driver.write(&[event]).unwrap_err().message(),
            "the sink panicked earlier"
        );
        drop(driver);
        assert_eq!(CLOSED.load(Ordering::SeqCst), 1);
    }
}
