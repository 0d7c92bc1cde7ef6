//! `spread replay`: print archived events, republish them under another
//! prefix, or roll a topic tree back to how it was at a moment.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use spread_client::{Client, Event, Item, Replay};

use crate::{event_json, event_line};

/// What `spread replay` was asked.
pub struct Args {
    /// The archived events.
    pub replay: Replay,
    /// Print JSON lines.
    pub json: bool,
    /// Republish under this prefix instead of printing.
    pub to_topic: Option<String>,
    /// With `restore`: the moment to roll back to (µs).
    pub as_of: Option<u64>,
    /// Roll the live state back to `as_of`.
    pub restore: bool,
}

/// Publishes in flight while republishing.
const WINDOW: usize = 1024;

/// Runs `spread replay`.
pub async fn run(client: &Client, args: Args, out: &mut impl Write) -> anyhow::Result<()> {
    match (&args.to_topic, args.as_of, args.restore) {
        (Some(_), _, true) => bail!("--to-topic and --restore do not combine"),
        (None, Some(at), true) => restore(client, &args.replay, at, args.json, out).await,
        (None, None, true) => bail!("--restore needs --as-of TIME"),
        (_, Some(_), false) => bail!("--as-of is for --restore"),
        (Some(to), None, false) => republish(client, &args.replay, to, out).await,
        (None, None, false) => print(client, &args.replay, args.json, out).await,
    }
}

/// A progress bar on standard error while it is a terminal, by the position
/// of the events' timestamps in the requested range.
struct Progress {
    on: bool,
    range: Option<(u64, u64)>,
    count: u64,
    shown: Instant,
}

impl Progress {
    fn new(replay: &Replay) -> Progress {
        let now = crate::time::parse("now").unwrap_or(u64::MAX);
        Progress {
            on: std::io::stderr().is_terminal(),
            range: replay
                .from_time
                .map(|from| (from, replay.to_time.unwrap_or(now))),
            count: 0,
            shown: Instant::now(),
        }
    }

    fn event(&mut self, e: &Event) {
        self.count += 1;
        if !self.on || self.shown.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.shown = Instant::now();
        let (from, to) = *self.range.get_or_insert((e.timestamp(), u64::MAX));
        let done = if to > from && to != u64::MAX {
            (e.timestamp().saturating_sub(from) as f64 / (to - from) as f64).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let filled = (done * 30.0) as usize;
        eprint!(
            "\r[{}{}] {:>3.0}% {} events, at {}",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            done * 100.0,
            self.count,
            crate::time::format(e.timestamp())
        );
    }

    fn finish(&self) {
        if self.on && self.count > 0 {
            eprint!("\r{:80}\r", "");
        }
    }
}

async fn print(
    client: &Client,
    replay: &Replay,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut stream = client.replay(replay).await?;
    let mut progress = Progress::new(replay);
    while let Some(e) = stream.next().await {
        let e = e?;
        progress.event(&e);
        if json {
            writeln!(out, "{}", event_json(&e, None))?;
        } else {
            writeln!(out, "{}", event_line(&e))?;
        }
    }
    progress.finish();
    out.flush()?;
    Ok(())
}

/// Republishes every replayed event under `to`, in the replayed order.
async fn republish(
    client: &Client,
    replay: &Replay,
    to: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let [from] = replay.prefixes.as_slice() else {
        bail!("--to-topic needs exactly one PREFIX to replace");
    };
    let to = to.trim_end_matches('/').to_owned();
    let from = from.trim_end_matches('/').to_owned();
    let stream = client.replay(replay).await?;
    let mut progress = Progress::new(replay);
    // Publishes are issued in order on one connection, so the broker
    // applies them in the replayed order; a window keeps them pipelined.
    let published = stream
        .map_ok(|e| {
            progress.event(&e);
            let rest = &e.topic()[from.len()..];
            let topic = format!("{to}{rest}");
            let client = client.clone();
            async move {
                if e.is_tombstone() {
                    client.delete(&topic).await
                } else {
                    client.publish(&topic, e.payload()).await
                }
            }
        })
        .try_buffered(WINDOW)
        .try_fold(0u64, |n, _| async move { Ok(n + 1) })
        .await?;
    progress.finish();
    writeln!(out, "republished {published} events from {from} to {to}")?;
    Ok(())
}

/// Rolls every topic under the prefixes back to its value at `at`.
async fn restore(
    client: &Client,
    replay: &Replay,
    at: u64,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    // The state at `at`: the last archived event of each topic up to it.
    let upto = Replay {
        to_time: Some(at.saturating_add(1)),
        from_time: None,
        ..replay.clone()
    };
    let mut then: BTreeMap<String, Event> = BTreeMap::new();
    let mut stream = client.replay(&upto).await?;
    while let Some(e) = stream.next().await {
        let e = e?;
        then.insert(e.topic().to_owned(), e);
    }
    // The state now: the live values under each prefix.
    let mut now: BTreeMap<String, Bytes> = BTreeMap::new();
    let prefixes: Vec<String> = if replay.prefixes.is_empty() {
        vec![String::new()]
    } else {
        replay.prefixes.clone()
    };
    for prefix in &prefixes {
        let mut sub = client.subscribe(prefix).await?;
        loop {
            match sub.next().await.context("the subscription ended")?? {
                Item::Event(e) => {
                    now.insert(e.topic().to_owned(), e.payload());
                }
                Item::Synced { .. } => break,
                Item::Conflated { .. } | Item::Truncated { .. } => {}
            }
        }
    }
    let mut changed = 0;
    let topics: std::collections::BTreeSet<&String> = then.keys().chain(now.keys()).collect();
    for topic in topics {
        let want = then
            .get(topic)
            .filter(|e| !e.is_tombstone())
            .map(|e| e.payload());
        let have = now.get(topic);
        let action = match (&want, have) {
            (Some(w), Some(h)) if w == h => continue,
            (None, None) => continue,
            (Some(w), _) => {
                client.publish(topic, w.clone()).await?;
                "set"
            }
            (None, Some(_)) => {
                client.delete(topic).await?;
                "deleted"
            }
        };
        changed += 1;
        if json {
            let mut v = serde_json::json!({ "topic": topic, "action": action });
            if let Some(w) = &want {
                crate::set_payload(&mut v, w);
            }
            writeln!(out, "{v}")?;
        } else {
            match &want {
                Some(w) => writeln!(out, "set {topic} = {}", String::from_utf8_lossy(w))?,
                None => writeln!(out, "deleted {topic}")?,
            }
        }
    }
    if !json {
        writeln!(
            out,
            "restored {changed} topics to their state at {}",
            crate::time::format(at)
        )?;
    }
    Ok(())
}
