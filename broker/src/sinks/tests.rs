//! The runner with sinks linked in: retries, checkpoints, resumption,
//! panics. (Loaded libraries are exercised end to end in `tests/`.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spread_plugin::{Error, Event, OpenContext, Result, Sink};
use spread_protocol::{EventId, EventKind, EventParts};

use super::config::SinkConfig;
use super::driver::{Factory, Native};
use super::status::SinkState;
use super::Prepared;
use crate::log::committed::Committed;
use crate::log::{Durability, Log, LogOptions};

/// What each test sink received, by sink name.
static RECEIVED: Mutex<Option<HashMap<String, Vec<u64>>>> = Mutex::new(None);

fn received(name: &str) -> Vec<u64> {
    let guard = RECEIVED.lock().unwrap();
    guard
        .as_ref()
        .and_then(|m| m.get(name).cloned())
        .unwrap_or_default()
}

/// Fails `fail` writes with a retryable error, panics on a batch holding
/// iteration `panic_at`, rejects any batch holding an iteration of
/// `reject`, records everything else.
struct TestSink {
    name: String,
    fail: u32,
    panic_at: u64,
    reject: Vec<u64>,
}

#[derive(serde::Deserialize)]
struct Settings {
    #[serde(default)]
    fail: u32,
    #[serde(default)]
    panic_at: u64,
    #[serde(default)]
    reject: Vec<u64>,
}

impl Sink for TestSink {
    fn open(ctx: &OpenContext<'_>) -> Result<Self> {
        let s: Settings = ctx.config()?;
        Ok(TestSink {
            name: ctx.name.to_owned(),
            fail: s.fail,
            panic_at: s.panic_at,
            reject: s.reject,
        })
    }

    fn write_batch(&mut self, events: &[Event<'_>]) -> Result<()> {
        if self.fail > 0 {
            self.fail -= 1;
            return Err(Error::retry("destination down"));
        }
        if let Some(e) = events.iter().find(|e| self.reject.contains(&e.iteration())) {
            return Err(Error::reject(format!("cannot store {}", e.iteration())));
        }
        if events.iter().any(|e| e.iteration() == self.panic_at) {
            panic!("boom at {}", self.panic_at);
        }
        let mut guard = RECEIVED.lock().unwrap();
        guard
            .get_or_insert_with(HashMap::new)
            .entry(self.name.clone())
            .or_default()
            .extend(events.iter().map(|e| e.iteration()));
        Ok(())
    }
}

fn write_log(dir: &Path, range: std::ops::RangeInclusive<u64>) {
    let opts = LogOptions {
        dir: dir.join("log"),
        segment_bytes: 8192,
        durability: Durability::Never,
        retention: Default::default(),
        repair: false,
    };
    let (mut log, _) = Log::open(opts, |_| {}).unwrap();
    for it in range {
        let event = EventParts {
            topic: "t/1",
            payload: b"payload",
            timestamp: it,
            origin: "o",
            id: EventId([it as u8; 16]),
            iteration: it,
            kind: EventKind::Value,
            source: 0,
        }
        .encode();
        log.append(&event);
        log.write().unwrap();
    }
}

fn config(name: &str, settings: &str) -> SinkConfig {
    let mut c: SinkConfig = toml::from_str(&format!(
        "name = \"{name}\"\nlibrary = \"built-in\"\nbatch_events = 16\nretry_min_ms = 1\nretry_max_ms = 4\ncheckpoint_ms = 0\n"
    ))
    .unwrap();
    c.settings = toml::from_str(settings).unwrap();
    c
}

fn run(dir: &Path, config: SinkConfig, last: u64) -> (super::Sinks, Arc<Committed>) {
    let prepared = Prepared::load_with(&[config], dir, "node".into(), |_| {
        Ok(Arc::new(Native::<TestSink>::new("test")) as Arc<dyn Factory>)
    })
    .unwrap();
    let committed = Arc::new(Committed::new(0));
    committed.advance(last);
    let sinks = prepared.start(committed.clone(), &dir.join("log")).unwrap();
    (sinks, committed)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn retries_then_delivers_everything_once_and_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=100);
    let (sinks, committed) = run(dir.path(), config("retry", "fail = 3"), 100);
    let board = sinks.board().clone();
    wait_for("checkpoint 100", || {
        board.reports(&committed)[0].checkpoint == 100
    });
    let report = &board.reports(&committed)[0];
    assert_eq!(report.errors, 3);
    assert_eq!(report.state, "running");
    assert_eq!(report.lag_events, 0);
    assert_eq!(
        report.last_error.as_deref(),
        Some("write: destination down")
    );
    sinks.stop(Duration::from_secs(5));
    assert_eq!(received("retry"), (1..=100).collect::<Vec<_>>());
    // Restarted over a longer log: only what follows the checkpoint.
    write_log(dir.path(), 101..=150);
    let (sinks, committed) = run(dir.path(), config("retry", "fail = 0"), 150);
    let board = sinks.board().clone();
    wait_for("checkpoint 150", || {
        board.reports(&committed)[0].checkpoint == 150
    });
    sinks.stop(Duration::from_secs(5));
    assert_eq!(received("retry"), (1..=150).collect::<Vec<_>>());
}

#[test]
fn a_panicking_sink_is_stopped_and_keeps_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=100);
    let (sinks, committed) = run(dir.path(), config("panics", "panic_at = 60"), 100);
    let board = sinks.board().clone();
    wait_for("failure", || board.reports(&committed)[0].state == "failed");
    let report = &board.reports(&committed)[0];
    assert!(report.lag_ms < 60_000, "{report:?}");
    assert!(
        report.last_error.as_deref().unwrap().contains("boom at 60"),
        "{report:?}"
    );
    // Everything before the failed batch was delivered; the checkpoint
    // does not claim the failed batch.
    let got = received("panics");
    assert!(report.checkpoint < 60 && got.len() as u64 >= report.checkpoint);
    assert_eq!(report.lag_events, 100 - report.checkpoint);
    sinks.stop(Duration::from_secs(5));
    assert_eq!(board.sinks()[0].live.lock().state, SinkState::Failed);
}

#[test]
fn rejected_events_are_dead_lettered_and_the_rest_is_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 1..=100);
    let (sinks, committed) = run(dir.path(), config("poison", "reject = [5, 6, 40]"), 100);
    let board = sinks.board().clone();
    wait_for("checkpoint 100", || {
        board.reports(&committed)[0].checkpoint == 100
    });
    let report = &board.reports(&committed)[0];
    assert_eq!(report.state, "running");
    assert_eq!(report.rejected, 3);
    assert!(
        report
            .last_error
            .as_deref()
            .unwrap()
            .contains("rejected iteration 40"),
        "{report:?}"
    );
    sinks.stop(Duration::from_secs(5));
    let expected: Vec<u64> = (1..=100).filter(|i| ![5, 6, 40].contains(i)).collect();
    assert_eq!(received("poison"), expected);
    let file = super::dead_letter::path(&super::checkpoints_dir(dir.path()), "poison");
    let letters: Vec<super::dead_letter::Letter> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let iterations: Vec<u64> = letters.iter().map(|l| l.iteration).collect();
    assert_eq!(iterations, [5, 6, 40]);
    assert_eq!(letters[0].error, "cannot store 5");
    assert_eq!(letters[0].topic, "t/1");
    // The count survives a restart.
    let (sinks, committed) = run(dir.path(), config("poison", "reject = []"), 100);
    let board = sinks.board().clone();
    wait_for("the count", || board.reports(&committed)[0].rejected == 3);
    sinks.stop(Duration::from_secs(5));
}
