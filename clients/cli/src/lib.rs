//! The `spread` command line: publish, get, delete and subscribe.
//!
//! This crate backs the `spread` binary; its library exists so the
//! end-to-end tests build the very same binary.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use spread_client::{Client, ClientConfig, Event, Item, Outcome, PeerStatus, StatusReport};

mod replay;
mod tail;
mod time;
mod token;

/// The `spread` command line.
#[derive(Debug, Parser)]
#[command(
    name = "spread",
    version,
    about = "Command line client for the Spread broker"
)]
pub struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConnArgs {
    /// Broker address; several, comma-separated, are brokers of one
    /// cluster tried in order (the client fails over between them).
    #[arg(
        long,
        global = true,
        env = "SPREAD_SERVER",
        default_value = "127.0.0.1:7411"
    )]
    server: String,
    /// CA certificate file to trust [default: ./spread-data/tls/ca.pem if present, else the system roots].
    #[arg(long, global = true, env = "SPREAD_CA")]
    ca: Option<PathBuf>,
    /// Bearer token (JWT).
    #[arg(long, global = true, env = "SPREAD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Accept any server certificate (development only).
    #[arg(long, global = true)]
    insecure: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a value (from PAYLOAD or standard input) and print the report.
    Pub {
        /// Topic to set.
        topic: String,
        /// Payload; read from standard input when absent.
        payload: Option<String>,
        /// Only set the topic if it has no value.
        #[arg(long)]
        if_absent: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the latest payload of a topic to standard output.
    Get {
        /// Topic to read.
        topic: String,
        /// Print the whole event as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic.
    Del {
        /// Topic to delete.
        topic: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the latest event of every topic under PREFIX, then every change.
    Sub {
        /// Prefix to follow ("" for everything).
        #[arg(default_value = "")]
        prefix: String,
        /// Only what changed after this iteration.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Every event after --since, in order (from the broker's log), not
        /// just the latest value of each topic.
        #[arg(long)]
        history: bool,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Measure the round-trip time to the broker.
    Ping,
    /// Print archived events under PREFIX (from the broker's SQL archive),
    /// republish them elsewhere, or roll the live state back to a moment.
    Replay {
        /// Prefixes to replay ("" for everything).
        #[arg(default_value = "")]
        prefixes: Vec<String>,
        /// Earliest event time: RFC 3339, -15m (relative), now, or µs.
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        /// Latest event time (exclusive), same forms.
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Print one JSON object per line (the `sub --json` format).
        #[arg(long)]
        json: bool,
        /// Republish the events under this prefix instead (in their order).
        #[arg(long, value_name = "OTHER_PREFIX")]
        to_topic: Option<String>,
        /// With --restore: the moment to roll back to.
        #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
        as_of: Option<String>,
        /// Republish, for every topic under the prefixes, its value at
        /// --as-of (or delete it), so the live state is as it was then.
        #[arg(long)]
        restore: bool,
    },
    /// Follow events live; with --since, from the past first (the log, or
    /// the archive), then live with no gap and no duplicate.
    Tail {
        /// Prefixes to follow (none: everything).
        prefixes: Vec<String>,
        /// Start at an ITERATION (a bare number), a TIME (RFC 3339) or a
        /// DURATION ago (15m or -15m, 2h).
        #[arg(long, allow_hyphen_values = true)]
        since: Option<String>,
        /// Stop at an ITERATION, TIME, DURATION ago, or `now` (what existed
        /// when the tail started) instead of following.
        #[arg(long, allow_hyphen_values = true)]
        until: Option<String>,
        /// Only events from these origins (repeatable).
        #[arg(long)]
        origin: Vec<String>,
        /// Only events whose payload matches this regular expression.
        #[arg(long)]
        grep: Option<String>,
        /// Only `value` or `tombstone` events.
        #[arg(long, value_parser = ["value", "tombstone"])]
        kind: Option<String>,
        /// One JSON object per line (the `sub --json` format).
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// Payloads only, one per line.
        #[arg(long)]
        raw: bool,
        /// A line per second: events/s and bytes/s per top-level prefix, and sink lags.
        #[arg(long)]
        stats: bool,
    },
    /// Mint an HS256 token for development (no broker needed).
    Token(token::Args),
    /// Print the broker's status: iterations, retention and every sink.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code of a `get` that found nothing.
const NOT_FOUND: u8 = 1;
/// Exit code of any other failure.
const FAILURE: u8 = 2;

/// Parses the command line, runs it and returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(FAILURE);
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(FAILURE)
        }
    }
}

fn client_config(args: &ConnArgs) -> ClientConfig {
    // `--server a,b,c`: brokers of one cluster, the first preferred.
    let servers: Vec<&str> = args
        .server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut cfg = ClientConfig::new(args.server.clone()).servers(servers);
    cfg.client_name = format!("spread-cli/{}", env!("CARGO_PKG_VERSION"));
    // One-shot commands fail fast instead of retrying; `sub` reconnects.
    cfg.token = args.token.clone();
    if args.insecure {
        cfg.insecure()
    } else if let Some(ca) = &args.ca {
        cfg.ca_file(ca)
    } else {
        let local = PathBuf::from("spread-data/tls/ca.pem");
        if local.exists() {
            cfg.ca_file(local)
        } else {
            cfg
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Token(args) = &cli.command {
        println!("{}", token::mint(args)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut cfg = client_config(&cli.conn);
    cfg.reconnect = matches!(cli.command, Command::Sub { .. } | Command::Tail { .. });
    let client = Client::connect(cfg)
        .await
        .with_context(|| format!("cannot reach the broker at {}", cli.conn.server))?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Pub {
            topic,
            payload,
            if_absent,
            json,
        } => {
            let payload = bytes::Bytes::from(match payload {
                Some(p) => p.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("cannot read the payload from standard input")?;
                    buf
                }
            });
            let outcome = if if_absent {
                client.publish_if_absent(&topic, payload.clone()).await?
            } else {
                client.publish(&topic, payload.clone()).await?
            };
            print_report(&mut out, &topic, &payload, &outcome, json)?;
        }
        Command::Del { topic, json } => {
            let outcome = client.delete(&topic).await?;
            print_report(&mut out, &topic, &[], &outcome, json)?;
        }
        Command::Get { topic, json } => match client.get(&topic).await? {
            Some(event) if json => writeln!(out, "{}", event_json(&event, None))?,
            Some(event) => out.write_all(event.payload_bytes())?,
            None => {
                eprintln!("not found: {topic}");
                return Ok(ExitCode::from(NOT_FOUND));
            }
        },
        Command::Sub {
            prefix,
            since,
            count,
            history,
            json,
        } => {
            let mut sub = if history {
                client.subscribe_history(&prefix, since).await?
            } else {
                client.subscribe_since(&prefix, since).await?
            };
            let mut seen = 0u64;
            if count == Some(0) {
                return Ok(ExitCode::SUCCESS);
            }
            loop {
                let item = tokio::select! {
                    item = sub.next() => item,
                    _ = tokio::signal::ctrl_c() => break,
                };
                match item {
                    None => bail!("the subscription ended"),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Item::Event(e))) => {
                        if json {
                            writeln!(out, "{}", event_json(&e, None))?;
                        } else {
                            writeln!(out, "{}", event_line(&e))?;
                        }
                        out.flush()?;
                        seen += 1;
                        if count.is_some_and(|c| seen >= c) {
                            break;
                        }
                    }
                    Some(Ok(Item::Synced { iteration })) => {
                        eprintln!("-- snapshot complete at iteration {iteration}");
                    }
                    Some(Ok(Item::Conflated { skipped })) => {
                        eprintln!("-- too slow: {skipped} intermediate events skipped");
                    }
                    Some(Ok(Item::Truncated { oldest })) => {
                        eprintln!("-- changes before iteration {oldest} are no longer known exactly; the full latest state follows");
                    }
                }
            }
        }
        Command::Ping => {
            let rtt = client.ping().await?;
            writeln!(out, "pong from {} in {:?}", client.node_id(), rtt)?;
        }
        Command::Replay {
            prefixes,
            from,
            to,
            limit,
            json,
            to_topic,
            as_of,
            restore,
        } => {
            let args = replay::Args {
                replay: spread_client::Replay {
                    prefixes: prefixes.into_iter().filter(|p| !p.is_empty()).collect(),
                    from_time: from.as_deref().map(time::parse).transpose()?,
                    to_time: to.as_deref().map(time::parse).transpose()?,
                    limit,
                    ..spread_client::Replay::default()
                },
                json,
                to_topic,
                as_of: as_of.as_deref().map(time::parse).transpose()?,
                restore,
            };
            replay::run(&client, args, &mut out).await?;
        }
        Command::Tail {
            prefixes,
            since,
            until,
            origin,
            grep,
            kind,
            json,
            raw,
            stats,
        } => {
            use std::io::IsTerminal;
            let format = if json {
                tail::Format::Json
            } else if raw {
                tail::Format::Raw
            } else {
                tail::Format::Human {
                    color: std::io::stdout().is_terminal(),
                }
            };
            let args = tail::Args {
                prefixes: prefixes.into_iter().filter(|p| !p.is_empty()).collect(),
                since: since.as_deref().map(tail::Point::parse).transpose()?,
                until: until.as_deref().map(tail::Point::parse).transpose()?,
                origins: origin,
                grep: grep
                    .as_deref()
                    .map(regex::bytes::Regex::new)
                    .transpose()
                    .context("--grep")?,
                kind,
                format,
                stats,
            };
            tail::run(&client, args, &mut out).await?;
        }
        Command::Token(_) => bail!("spread token does not connect to a broker"),
        Command::Status { json } => {
            let report = client.status().await?;
            // Brokers before the cluster do not know the request (it is the
            // last one sent on this connection).
            let peers = client.peers().await.map(|p| p.peers).unwrap_or_default();
            print_status(&mut out, &report, &peers, json)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The pulls from peers, as a table (nothing for a node without peers).
fn print_peers(out: &mut impl Write, peers: &[PeerStatus]) -> anyhow::Result<()> {
    if peers.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<18} {:<16} {:<12} {:>20} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "PEER",
        "NODE",
        "PREFIX",
        "STATE",
        "CURSOR",
        "LAG",
        "LAG MS",
        "RECEIVED",
        "APPLIED",
        "REFUSED"
    )?;
    for p in peers {
        let prefix = if p.prefix.is_empty() {
            "(all)"
        } else {
            &p.prefix
        };
        writeln!(
            out,
            "{:<24} {:<18} {:<16} {:<12} {:>20} {:>10} {:>10} {:>10} {:>10} {:>8}",
            p.address,
            p.peer_node,
            prefix,
            p.state,
            p.cursor,
            p.peer_iteration.saturating_sub(p.cursor),
            p.lag_ms,
            p.received,
            p.applied,
            p.refused
        )?;
        if let Some(e) = &p.last_error {
            writeln!(out, "{:<24} last error: {e}", "")?;
        }
    }
    Ok(())
}

fn print_status(
    out: &mut impl Write,
    r: &StatusReport,
    peers: &[PeerStatus],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let sinks: Vec<serde_json::Value> = r
            .sinks
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "plugin": s.plugin,
                    "state": s.state,
                    "checkpoint": s.checkpoint,
                    "lag_events": s.lag_events,
                    "lag_ms": s.lag_ms,
                    "delivered": s.delivered,
                    "errors": s.errors,
                    "last_error": s.last_error,
                    "rejected": s.rejected,
                })
            })
            .collect();
        let v = serde_json::json!({
            "node": r.node_id,
            "iteration": r.iteration,
            "committed": r.committed,
            "retained_from": r.retained_from,
            "digest": format!("{:016x}", r.digest),
            "sinks": sinks,
            "peers": peers.iter().map(|p| serde_json::json!({
                "address": p.address,
                "prefix": p.prefix,
                "state": p.state,
                "cursor": p.cursor,
                "peer_iteration": p.peer_iteration,
                "lag_events": p.peer_iteration.saturating_sub(p.cursor),
                "lag_ms": p.lag_ms,
                "received": p.received,
                "applied": p.applied,
                "refused": p.refused,
                "last_error": p.last_error,
                "peer_node": p.peer_node,
                "peer_incarnation": format!("{:016x}", p.peer_incarnation),
                "exchanges": p.exchanges,
                "exchange_requests": p.exchange_requests,
                "skipping": p.skipping.iter().map(|s| format!("{s:016x}")).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(out, "node       {}", r.node_id)?;
    writeln!(
        out,
        "iteration  {} (committed {})",
        r.iteration, r.committed
    )?;
    match r.retained_from {
        Some(it) => writeln!(out, "log from   iteration {it}")?,
        None => writeln!(out, "log from   the beginning")?,
    }
    // Equal on nodes that hold the same latest values.
    writeln!(out, "digest     {:016x}", r.digest)?;
    print_peers(out, peers)?;
    if r.sinks.is_empty() {
        writeln!(out, "sinks      none configured")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<16} {:<9} {:>20} {:>10} {:>9} {:>12} {:>7} {:>8}  PLUGIN",
        "SINK", "STATE", "CHECKPOINT", "LAG", "LAG(s)", "DELIVERED", "ERRORS", "REJECTED"
    )?;
    for s in &r.sinks {
        writeln!(
            out,
            "{:<16} {:<9} {:>20} {:>10} {:>9.1} {:>12} {:>7} {:>8}  {}",
            s.name,
            s.state,
            s.checkpoint,
            s.lag_events,
            s.lag_ms as f64 / 1000.0,
            s.delivered,
            s.errors,
            s.rejected,
            s.plugin
        )?;
        if let Some(e) = &s.last_error {
            writeln!(out, "{:<16} last error: {e}", "")?;
        }
    }
    Ok(())
}

fn print_report(
    out: &mut impl Write,
    topic: &str,
    payload: &[u8],
    outcome: &Outcome,
    json: bool,
) -> anyhow::Result<()> {
    let status = outcome.status().as_str();
    let summary = outcome.summary();
    let notified: Vec<(&str, u32)> = match outcome {
        Outcome::New { notified, .. } => spread_client::prefix_levels(topic)
            .into_iter()
            .zip(notified.iter().copied())
            .collect(),
        _ => Vec::new(),
    };
    if json {
        let mut v = serde_json::json!({
            "topic": topic,
            "iteration": summary.iteration(),
            "timestamp": summary.timestamp(),
            "origin": summary.origin(),
            "id": summary.id().to_string(),
            "kind": summary.kind().as_str(),
            "status": status,
        });
        set_payload(
            &mut v,
            outcome.current().map_or(payload, |c| c.payload_bytes()),
        );
        if let Outcome::New { previous, .. } = outcome {
            v["notified"] = notified
                .iter()
                .map(|(p, n)| ((*p).to_string(), serde_json::Value::from(*n)))
                .collect::<serde_json::Map<_, _>>()
                .into();
            if let Some(p) = previous {
                v["previous"] = serde_json::json!({
                    "iteration": p.iteration(),
                    "timestamp": p.timestamp(),
                    "origin": p.origin(),
                    "id": p.id().to_string(),
                    "kind": p.kind().as_str(),
                });
            }
        }
        if let Some(c) = outcome.current() {
            v["current"] = event_json(c, None);
        }
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{status} {topic} iteration={} id={}",
        summary.iteration(),
        summary.id()
    )?;
    match outcome {
        Outcome::New { previous, .. } => {
            let levels: Vec<String> = notified
                .iter()
                .map(|(p, n)| format!("{}={n}", if p.is_empty() { "(root)" } else { p }))
                .collect();
            writeln!(out, "notified: {}", levels.join(" "))?;
            if let Some(p) = previous {
                writeln!(out, "previous: iteration={} id={}", p.iteration(), p.id())?;
            }
        }
        Outcome::TooLate {
            current: Some(current),
            ..
        } => writeln!(
            out,
            "current: iteration={} id={}",
            current.iteration(),
            current.id()
        )?,
        Outcome::TooLate { current: None, .. } => {
            writeln!(out, "current: (not readable with this token)")?
        }
        Outcome::Existing { .. } | Outcome::Present { .. } => {}
    }
    Ok(())
}

/// Sets `payload` (UTF-8) or `payload_base64` on a JSON object.
pub(crate) fn set_payload(v: &mut serde_json::Value, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(s) => v["payload"] = s.into(),
        Err(_) => {
            v["payload_base64"] = base64::engine::general_purpose::STANDARD
                .encode(payload)
                .into()
        }
    }
}

/// The `--json` form of an event: `topic`, `iteration`, `timestamp`,
/// `origin`, `id`, `kind`, `source` (16 hex digits: a JSON number would
/// lose precision in JavaScript), `status` (when given) and `payload`
/// (UTF-8) or `payload_base64`.
pub fn event_json(e: &Event, status: Option<&str>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "topic": e.topic(),
        "iteration": e.iteration(),
        "timestamp": e.timestamp(),
        "origin": e.origin(),
        "id": e.id().to_string(),
        "kind": e.kind().as_str(),
        "source": format!("{:016x}", e.source()),
    });
    if let Some(s) = status {
        v["status"] = s.into();
    }
    match std::str::from_utf8(e.payload_bytes()) {
        Ok(s) => v["payload"] = s.into(),
        Err(_) => {
            v["payload_base64"] = base64::engine::general_purpose::STANDARD
                .encode(e.payload_bytes())
                .into()
        }
    }
    v
}

/// One human-readable line for an event.
pub(crate) fn event_line(e: &Event) -> String {
    if e.is_tombstone() {
        return format!(
            "[{}] {} deleted (by {})",
            e.iteration(),
            e.topic(),
            e.origin()
        );
    }
    let payload = match std::str::from_utf8(e.payload_bytes()) {
        Ok(s) => s.escape_debug().to_string(),
        Err(_) => format!("<{} bytes>", e.payload_bytes().len()),
    };
    format!(
        "[{}] {} = {} (by {})",
        e.iteration(),
        e.topic(),
        payload,
        e.origin()
    )
}
