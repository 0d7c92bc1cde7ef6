//! `spread tail`: follow events live, optionally starting in the past
//! (from the broker's log, or from its archive for what the archive holds),
//! filtered and formatted for a terminal, a pipe, JSON or raw payloads.
//!
//! The seam between past and live has no gap and no duplicate: past events
//! up to the archive's checkpoint `A` come from the archive (by time), the
//! rest from a history subscription after `A`, which the broker continues
//! live; reconnections resume after the last iteration shown.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use spread_client::{Client, Event, Item, Replay};

use crate::{event_json, time};

/// Where `--since` / `--until` point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// An iteration (a bare integer).
    Iteration(u64),
    /// A time (µs since the epoch).
    Time(u64),
    /// The moment the tail starts (for `--until now`).
    Now,
}

impl Point {
    /// `12345` is an iteration; RFC 3339, `-15m` or `15m` (ago) and `now` are times.
    pub fn parse(s: &str) -> anyhow::Result<Point> {
        if s == "now" {
            return Ok(Point::Now);
        }
        if let Ok(it) = s.parse::<u64>() {
            return Ok(Point::Iteration(it));
        }
        let relative = if s.starts_with('-') || s.contains('T') {
            s.to_string()
        } else {
            format!("-{s}")
        };
        Ok(Point::Time(time::parse(&relative)?))
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns, colored on a terminal.
    Human {
        /// ANSI colors.
        color: bool,
    },
    /// `spread sub --json` objects.
    Json,
    /// Payloads only, one per line.
    Raw,
}

/// What `spread tail` was asked.
pub struct Args {
    /// Prefixes (none: everything).
    pub prefixes: Vec<String>,
    /// Start in the past.
    pub since: Option<Point>,
    /// Stop there (`now`: at the moment the tail started).
    pub until: Option<Point>,
    /// Only these origins.
    pub origins: Vec<String>,
    /// Only payloads matching.
    pub grep: Option<regex::bytes::Regex>,
    /// Only this kind (`value` or `tombstone`).
    pub kind: Option<String>,
    /// Output format.
    pub format: Format,
    /// Per-second statistics instead of events.
    pub stats: bool,
}

impl Args {
    fn matches(&self, e: &Event) -> bool {
        let under = |p: &String| {
            p.is_empty()
                || e.topic() == p
                || (e.topic().starts_with(p.as_str())
                    && e.topic().as_bytes().get(p.len()) == Some(&b'/'))
        };
        (self.prefixes.is_empty() || self.prefixes.iter().any(under))
            && (self.origins.is_empty() || self.origins.iter().any(|o| o == e.origin()))
            && self.kind.as_deref().is_none_or(|k| k == e.kind().as_str())
            && self
                .grep
                .as_ref()
                .is_none_or(|re| re.is_match(e.payload_bytes()))
    }
}

/// Escapes non-printable bytes of a payload preview.
fn preview(payload: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One event in `format`.
pub fn render(e: &Event, format: Format) -> Vec<u8> {
    match format {
        Format::Json => format!("{}\n", event_json(e, None)).into_bytes(),
        Format::Raw => {
            let mut v = e.payload_bytes().to_vec();
            v.push(b'\n');
            v
        }
        Format::Human { color } => {
            let clock = time::local_clock(e.timestamp());
            let (dim, bold, red, reset) = if color {
                ("\x1b[2m", "\x1b[1m", "\x1b[31m", "\x1b[0m")
            } else {
                ("", "", "", "")
            };
            let body = if e.is_tombstone() {
                format!("{red}deleted{reset}")
            } else {
                preview(e.payload_bytes(), 120)
            };
            format!(
                "{dim}{clock}{reset} {bold}{:<32}{reset} {dim}{:<16} {:>7}B{reset} {body}\n",
                e.topic(),
                e.origin(),
                e.payload_bytes().len()
            )
            .into_bytes()
        }
    }
}

/// Per-second counts by top-level prefix.
#[derive(Default)]
struct Stats {
    by_prefix: BTreeMap<String, (u64, u64)>,
}

impl Stats {
    fn add(&mut self, e: &Event) {
        let top = e.topic().split('/').next().unwrap_or("").to_string();
        let entry = self.by_prefix.entry(top).or_default();
        entry.0 += 1;
        entry.1 += e.payload_bytes().len() as u64;
    }
}

/// Runs `spread tail`.
pub async fn run(client: &Client, args: Args, out: &mut impl Write) -> anyhow::Result<()> {
    let status = client
        .status()
        .await
        .context("cannot read the broker's status")?;
    let start_iteration = status.iteration;
    // Stop conditions.
    let until_iteration = match args.until {
        Some(Point::Iteration(it)) => Some(it),
        Some(Point::Now) => Some(start_iteration),
        _ => None,
    };
    let until_time = match args.until {
        Some(Point::Time(t)) => Some(t),
        _ => None,
    };
    let done = |e: &Event| {
        until_iteration.is_some_and(|it| e.iteration() > it)
            || until_time.is_some_and(|t| e.timestamp() >= t)
    };
    let mut shown_past = false;
    // The past from the archive, up to its checkpoint, when asked by time.
    let mut after = start_iteration;
    match args.since {
        Some(Point::Iteration(it)) => after = it,
        Some(Point::Now) => {}
        Some(Point::Time(t)) => {
            let archive = status
                .sinks
                .iter()
                .find(|s| s.name == "archive")
                .map(|s| s.checkpoint)
                .filter(|c| *c > 0);
            match archive {
                Some(checkpoint) => {
                    let replay = Replay {
                        prefixes: args.prefixes.clone(),
                        from_time: Some(t),
                        to_iteration: Some(checkpoint + 1),
                        ..Replay::default()
                    };
                    let mut past = client.replay(&replay).await?;
                    while let Some(e) = past.next().await {
                        let e = e?;
                        if done(&e) {
                            return Ok(());
                        }
                        if args.matches(&e) && !args.stats {
                            out.write_all(&render(&e, args.format))?;
                        }
                    }
                    shown_past = true;
                    after = checkpoint;
                }
                // No archive: the log's retained history, by time.
                None => after = 0,
            }
        }
        None => {}
    }
    let since_time = match (args.since, shown_past) {
        (Some(Point::Time(t)), false) => Some(t),
        _ => None,
    };
    // One history subscription: every event after `after`, then live.
    let prefix = match args.prefixes.as_slice() {
        [one] => one.clone(),
        _ => String::new(),
    };
    let mut sub = client.subscribe_history(&prefix, after).await?;
    let mut state = client.connection_state();
    let mut stats = Stats::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_tick = Instant::now();
    // A time limit passes even when no event comes.
    let deadline = until_time.map(|t| {
        let now = time::parse("now").unwrap_or(t);
        tokio::time::Instant::now() + Duration::from_micros(t.saturating_sub(now))
    });
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    loop {
        tokio::select! {
            item = sub.next() => {
                let item = item.context("the subscription ended")??;
                match item {
                    Item::Event(e) => {
                        if done(&e) {
                            break;
                        }
                        if since_time.is_some_and(|t| e.timestamp() < t) || !args.matches(&e) {
                            continue;
                        }
                        if args.stats {
                            stats.add(&e);
                        } else {
                            out.write_all(&render(&e, args.format))?;
                            out.flush()?;
                        }
                    }
                    Item::Synced { iteration } => {
                        // Everything up to the limit was shown.
                        if until_iteration.is_some_and(|it| iteration >= it) {
                            break;
                        }
                    }
                    Item::Truncated { oldest } => {
                        eprintln!("-- the log no longer holds events before iteration {oldest}; the latest value of each topic follows");
                    }
                    Item::Conflated { .. } => {}
                }
            }
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                if *state.borrow() {
                    eprintln!("-- reconnected; resuming after the last event shown");
                } else {
                    eprintln!("-- connection lost; reconnecting");
                }
            }
            _ = tick.tick(), if args.stats => {
                let secs = last_tick.elapsed().as_secs_f64().max(0.001);
                last_tick = Instant::now();
                let mut line = String::new();
                for (prefix, (n, bytes)) in std::mem::take(&mut stats.by_prefix) {
                    line.push_str(&format!("{prefix}: {:.0} ev/s {:.0} B/s  ", n as f64 / secs, bytes as f64 / secs));
                }
                if let Ok(r) = client.status().await {
                    for s in r.sinks {
                        line.push_str(&format!("[{} lag {} ev, {:.1} s] ", s.name, s.lag_events, s.lag_ms as f64 / 1000.0));
                    }
                }
                if line.is_empty() {
                    line.push_str("no events");
                }
                writeln!(out, "{}", line.trim_end())?;
                out.flush()?;
            }
            _ = &mut expired => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    out.flush()?;
    Ok(())
}
