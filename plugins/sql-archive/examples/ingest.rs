//! Raw archive ingest, without a broker: `cargo run --release -p
//! spread-sql-archive --example ingest -- URL EVENTS BATCH SIZE`. Inserts
//! EVENTS events of SIZE payload bytes in batches of BATCH into a scratch
//! table, prints events/s, and drops the table.

use std::time::Instant;

use spread_plugin::{Event, Kind, OpenContext, OwnedEvent, Sink};
use spread_sql_archive::SqlSink;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "sqlite:///tmp/ingest.db".into());
    let n: u64 = args.get(2).map_or(Ok(200_000), |s| s.parse())?;
    let batch: usize = args.get(3).map_or(Ok(4096), |s| s.parse())?;
    let size: usize = args.get(4).map_or(Ok(128), |s| s.parse())?;
    let table = format!("ingest_{}", std::process::id());
    let config = format!(r#"{{"url": "{url}", "table": "{table}"}}"#);
    let dir = std::env::temp_dir();
    let ctx = OpenContext {
        name: "ingest",
        config_json: &config,
        node: "node-x",
        data_dir: &dir,
    };
    let mut sink = SqlSink::open(&ctx)?;
    let payload = vec![0x5au8; size];
    let events: Vec<OwnedEvent> = (0..n)
        .map(|i| {
            let mut id = [7u8; 16];
            id[8..].copy_from_slice(&i.to_be_bytes());
            OwnedEvent {
                iteration: i + 1,
                timestamp: 1_700_000_000_000_000 + i,
                topic: format!("bench/{}/{}", i % 10, i % 100),
                payload: payload.clone(),
                origin: "node-x".into(),
                node: "node-x".into(),
                id,
                kind: Kind::Value,
            }
        })
        .collect();
    let views: Vec<Event<'_>> = events.iter().map(OwnedEvent::as_event).collect();
    let started = Instant::now();
    for chunk in views.chunks(batch) {
        sink.insert(chunk)?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{url}: {n} events of {size} B in batches of {batch}: {:.0} events/s",
        n as f64 / secs
    );
    sink.drop_table()?;
    Ok(())
}
