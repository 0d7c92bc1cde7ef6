//! A sink plugin for the end-to-end tests, driven by marker files so a test
//! can change its behaviour while the broker runs:
//!
//! - `fail_file`: while it exists, every write fails with a retryable error;
//! - `block_file`: while it exists, a write blocks (as a hung destination);
//! - `panic_file`: if it exists at a write, it is removed and the plugin
//!   panics (so the next start works again).
//!
//! Events that are accepted are appended to `path` (if set) in the example
//! sinks' line format: `iteration timestamp id-hex kind origin topic
//! payload-hex`, tab-separated, and ranges deleted before delivery as
//! `missed first last`. Without `path` the sink accepts and drops events.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use spread_plugin::{export_plugin, Error, Event, OpenContext, Result, Sink};

#[derive(serde::Deserialize)]
struct Settings {
    path: Option<PathBuf>,
    fail_file: Option<PathBuf>,
    block_file: Option<PathBuf>,
    panic_file: Option<PathBuf>,
}

struct Chaos {
    settings: Settings,
    out: Option<BufWriter<File>>,
    line: String,
}

impl Sink for Chaos {
    fn open(ctx: &OpenContext<'_>) -> Result<Self> {
        let settings: Settings = ctx.config()?;
        let out = match &settings.path {
            Some(p) => {
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .read(true)
                    .open(p)
                    .map_err(|e| Error::fatal(format!("{}: {e}", p.display())))?;
                spread_plugin::files::cut_torn_line(&mut f).map_err(Error::fatal)?;
                Some(BufWriter::new(f))
            }
            None => None,
        };
        Ok(Chaos {
            settings,
            out,
            line: String::new(),
        })
    }

    fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()> {
        if let Some(f) = &self.settings.panic_file {
            if f.exists() {
                let _ = std::fs::remove_file(f);
                panic!("chaos: asked to panic");
            }
        }
        if let Some(f) = &self.settings.block_file {
            // A hung destination: the test removes the file to release it.
            while f.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(f) = &self.settings.fail_file {
            if f.exists() {
                return Err(Error::retry("chaos: destination down"));
            }
        }
        let Some(out) = &mut self.out else {
            return Ok(());
        };
        for e in events {
            self.line.clear();
            let _ = writeln!(
                self.line,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                e.iteration(),
                e.timestamp(),
                hex(&e.id()),
                e.kind().as_str(),
                e.origin(),
                e.topic(),
                hex(e.payload())
            );
            out.write_all(self.line.as_bytes()).map_err(Error::retry)?;
        }
        Ok(())
    }

    fn missed(&mut self, first: u64, last: u64) -> Result<()> {
        if let Some(out) = &mut self.out {
            writeln!(out, "missed\t{first}\t{last}").map_err(Error::retry)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(out) = &mut self.out {
            out.flush().map_err(Error::retry)?;
            out.get_ref().sync_data().map_err(Error::retry)?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

export_plugin!(name: "chaos", sink: Chaos);
