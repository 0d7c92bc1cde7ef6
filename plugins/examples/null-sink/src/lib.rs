//! The smallest sink plugin: accepts every event and discards it. A
//! template to start from, and the no-op sink the benchmarks attach to
//! measure what the host itself costs.

use spread_plugin::{export_plugin, Event, OpenContext, Result, Sink};

/// Counts what it discards.
struct NullSink {
    events: u64,
}

impl Sink for NullSink {
    fn open(_ctx: &OpenContext<'_>) -> Result<Self> {
        Ok(NullSink { events: 0 })
    }

    fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()> {
        self.events += events.len() as u64;
        Ok(())
    }
}

export_plugin!(name: "null-sink", sink: NullSink);
