//! The engine: one thread that owns the topic tree and applies every request
//! in one total order.
//!
//! Connections send batches of decoded requests over a bounded channel. The
//! engine drains whatever is queued, applies it, and hands each touched
//! connection its answers and deliveries in one push (one lock, one wake-up
//! per connection per round), so costs are shared by the batch rather than
//! paid per message. Because one thread applies everything, every subscriber
//! sees the events of a topic in the same order, and a subscription's
//! snapshot and its live stream meet with no gap and no duplicate.
//!
//! Every applied event is appended to the durable [`log`](crate::log); a
//! round's answers and deliveries leave the broker only after the round's
//! records are written (and, with `always`, synced), so nothing is
//! acknowledged or seen by a subscriber that a crash could take back.

pub mod clock;
mod fanout;
mod history;
mod persist;
mod remote;
mod report;
mod snapshot;
pub mod tree;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;

use hashbrown::HashMap;
use spread_protocol::{
    ErrorCode, ErrorFrame, Publish, PublishMode, Request, Response, StatusReport, SubscribeMode,
    Topic,
};
use tokio::sync::mpsc;

use crate::log::committed::Committed;
use crate::log::sync::{GroupCommit, IntervalSync};
use crate::log::{Durability, Log, LogError, LogOptions, Recovery};
use crate::replay::ReplaySource;
use crate::session::{Conn, Outbound};
use crate::sinks::status::SinkBoard;
use clock::{Clock, IdGen};
use fanout::Fanout;
use tree::{Applied, Draft, Tree};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The log could not be opened or recovered.
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// A thread or the id generator could not start.
    #[error("cannot start the engine: {0}")]
    Start(#[from] std::io::Error),
}

/// How the engine releases a round's output.
enum Release {
    /// After the group-commit thread synced the round's records.
    AfterSync(GroupCommit),
    /// At once; with `interval`, a thread (stopped on drop) syncs periodically.
    Now { _periodic: Option<IntervalSync> },
}

/// Commands the engine executes.
#[derive(Debug)]
pub enum Command {
    /// Requests of one connection, in the order they arrived.
    Requests {
        conn: Arc<Conn>,
        requests: Vec<Request>,
    },
    /// A history catch-up job read the log up to `after` and asks to go live.
    Attach {
        conn: Arc<Conn>,
        sub_id: u64,
        /// Everything up to this iteration was delivered.
        after: u64,
        /// Retention deleted the events up to here before the job read them.
        deleted_through: Option<u64>,
        /// The job's cancellation flag, which names it: a job of an earlier
        /// subscription with the same id is not this one.
        job: Arc<std::sync::atomic::AtomicBool>,
        /// The subscription's `skip_source`.
        skip_source: spread_protocol::Sources,
        /// `true`: read on (the ring does not reach back); `false`: attached
        /// or gone.
        reply: std::sync::mpsc::Sender<bool>,
    },
    /// Events pulled from a peer; the answer says how far the log must be
    /// committed before the puller records its cursor.
    ApplyRemote {
        events: Vec<spread_protocol::Event>,
        reply: tokio::sync::oneshot::Sender<remote::RemoteApplied>,
    },
    /// This node's digests under a prefix, for a puller comparing them
    /// with its peer's (docs/cluster.md, resync).
    Digest {
        prefix: Topic,
        bucket: bytes::Bytes,
        reply: tokio::sync::oneshot::Sender<spread_protocol::DigestReport>,
    },
    /// The broker is stopping: the engine ends after this command.
    Stop,
    /// The connection's reader stopped: answer what came before, drop its
    /// subscriptions, then close it (with `error` last, if any).
    Closed {
        conn: Arc<Conn>,
        /// A fatal error to send before closing.
        error: Option<ErrorFrame>,
    },
}

/// Appends an event new here to the log and the ring of recent events.
fn record(
    persist: &mut persist::Persist,
    history: &mut history::History,
    event: &spread_protocol::Event,
) {
    persist.log.append(event);
    history.recent.push(event.clone());
    persist.since_checkpoint += 1;
    persist.round_records += 1;
}

/// Hands a new event to one subscription: held while its snapshot is in
/// progress, queued on its connection otherwise; dropped for a connection
/// whose rights do not cover the topic.
fn deliver(
    fanout: &mut Fanout,
    snapshots: &mut snapshot::Snapshots,
    s: &Subscriber,
    event: &spread_protocol::Event,
) {
    if s.filtered && !s.conn.may_read(event.topic()) {
        return;
    }
    if s.skip_source.contains(event.source()) {
        return;
    }
    if s.pending {
        if let Some(p) = snapshots.pending.get_mut(&(s.conn.id, s.sub_id)) {
            p.hold(event);
        }
    } else {
        fanout.deliver(&s.conn, s.sub_id, event, s.exact)
    }
}

/// A subscription registered in the tree.
struct Subscriber {
    conn: Arc<Conn>,
    sub_id: u64,
    /// A history subscription: every event, never conflated.
    exact: bool,
    /// Its snapshot is still being walked: live events are held.
    pending: bool,
    /// Its token may not read every topic under its prefix: events are
    /// checked before they are queued, so that what it may not read never
    /// takes its queue's room nor counts as skipped when it is conflated.
    filtered: bool,
    /// Live events of these sources are left out; see subscribe's
    /// `skip_source` in docs/protocol.md.
    skip_source: spread_protocol::Sources,
}

/// What the engine shares with the rest of the broker.
pub struct Services {
    /// Sink status, and how much history sinks still need.
    pub sinks: Arc<SinkBoard>,
    /// How the pulls from peers are doing.
    pub peers: Arc<crate::cluster::board::PeerBoard>,
    /// Where replays are served from.
    pub replay: Option<Arc<ReplaySource>>,
    /// This node's id.
    pub node_id: Arc<str>,
    /// This run of the node: the source of the events it accepts.
    pub incarnation: u64,
    /// The configured bounds (subscriptions, topics, clock skew).
    pub limits: crate::limits::Limits,
    /// Where catch-ups and replays run.
    pub reads: Arc<crate::reads::Reads>,
}

/// When the engine writes a checkpoint of the latest-value table.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// After this many applied events (and always at shutdown).
    pub every: u64,
    /// Deletes older than this are forgotten at checkpoints (`None`: kept).
    pub tombstone_grace: Option<std::time::Duration>,
}

/// Limits of the in-memory ring of recent events that serves history
/// subscriptions without reading the log.
#[derive(Debug, Clone, Copy)]
pub struct RecentLimits {
    /// Most events kept.
    pub events: usize,
    /// Most bytes kept.
    pub bytes: usize,
}

/// Most commands applied before answers are flushed to connections.
const MAX_ROUND: usize = 256;

/// Iterations reserved durably ahead of use: one small synced file write
/// per this many applied events.
const ITERATIONS_RESERVED_AHEAD: u64 = 1 << 24;

/// A handle to the engine thread.
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    committed: Arc<Committed>,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Recovers the log into the topic tree and starts the engine thread.
    /// Iterations continue above both the log's last one and the clock in
    /// microseconds, so they keep growing even if the log was removed.
    pub fn start(
        log_options: LogOptions,
        recent: RecentLimits,
        checkpoints: CheckpointPolicy,
        services: Services,
    ) -> Result<(Self, Recovery), EngineError> {
        let Services {
            sinks,
            peers,
            replay,
            node_id,
            incarnation,
            limits,
            reads,
        } = services;
        let ids = IdGen::random().map_err(std::io::Error::other)?;
        let mut tree = Tree::new(Clock::system(), ids, 0);
        let (log, recovery) = Log::open(log_options, |event| tree.restore(event))?;
        // Above the clock, and above every number a previous run may have
        // handed out (its events may be lost under interval or never).
        let reserved = crate::log::retention::load_value(
            log.dir(),
            crate::log::retention::ITERATIONS_RESERVED,
        )?
        .unwrap_or(0);
        tree.advance_iteration_to(clock::now_micros().max(reserved));
        let reserved_through = tree.iteration().saturating_add(ITERATIONS_RESERVED_AHEAD);
        crate::log::retention::store_value(
            log.dir(),
            crate::log::retention::ITERATIONS_RESERVED,
            reserved_through,
        )?;
        let release = match log.durability() {
            Durability::Always => Release::AfterSync(GroupCommit::start()?),
            Durability::Interval(period) => Release::Now {
                _periodic: Some(IntervalSync::start(log.shared_active(), period)?),
            },
            Durability::Never => Release::Now { _periodic: None },
        };
        let forgotten_deletes =
            crate::log::retention::load_value(log.dir(), crate::log::retention::FORGOTTEN_DELETES)?
                .unwrap_or(0);
        let (tx, rx) = mpsc::channel(1024);
        let start = tree.iteration();
        sinks.set_numbering_gap(recovery.last_iteration.unwrap_or(0), start);
        let committed = Arc::new(Committed::new(start));
        let engine = Engine {
            tree,
            subs: HashMap::new(),
            fanout: Fanout::default(),
            persist: persist::Persist {
                log,
                release,
                held: Vec::new(),
                durable: committed.clone(),
                checkpoints,
                since_checkpoint: 0,
                checkpointing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                checkpointed: Arc::new(AtomicU64::new(recovery.checkpoint.unwrap_or(0))),
                retained_up_to: 0,
                storage_failure: None,
                round_records: 0,
                forgotten_deletes,
                applied_by: recovered_times(&recovery, start),
                checkpoint_walk: None,
                checkpoint_writer: None,
                reserved_through,
            },
            history: history::History {
                recent: history::Recent::new(start, recent.events, recent.bytes),
                catchups: HashMap::new(),
            },
            snapshots: snapshot::Snapshots::default(),
            sinks,
            peers,
            replay,
            node_id,
            incarnation,
            max_subscriptions: limits.subscriptions,
            max_topics: limits.topics,
            max_clock_skew: limits.clock_skew.as_micros().try_into().unwrap_or(u64::MAX),
            reads,
            me: tx.downgrade(),
            stopping: false,
        };
        let thread = std::thread::Builder::new()
            .name("spread-engine".into())
            .spawn(move || {
                // A broker whose engine died would accept connections and
                // answer none: stop, so that a supervisor restarts it.
                let run = std::panic::AssertUnwindSafe(|| engine.run(rx));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("the engine thread panicked; stopping the broker");
                    std::process::exit(70);
                }
            })?;
        Ok((
            EngineHandle {
                tx,
                committed,
                thread: Some(thread),
            },
            recovery,
        ))
    }

    /// A sender for connections.
    pub fn sender(&self) -> mpsc::Sender<Command> {
        self.tx.clone()
    }

    /// The committed iteration: how far readers of the log may read.
    pub fn committed(&self) -> Arc<Committed> {
        self.committed.clone()
    }

    /// Stops the engine after the commands already queued (writing the
    /// shutdown checkpoint) and waits for it, even if a connection that did
    /// not close still holds a sender: its later commands are dropped.
    pub fn join(self) {
        let EngineHandle { tx, thread, .. } = self;
        if tx.blocking_send(Command::Stop).is_err() {
            tracing::debug!("the engine had stopped already");
        }
        drop(tx);
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("engine thread panicked");
            }
        }
    }
}

/// What start knows of when the recovered iterations were applied: those of
/// the checkpoint by the time it was written, the rest by now.
fn recovered_times(
    recovery: &Recovery,
    start: u64,
) -> std::collections::VecDeque<(u64, std::time::SystemTime)> {
    let now = std::time::SystemTime::now();
    let mut times = std::collections::VecDeque::new();
    if let (Some(it), Some(at)) = (recovery.checkpoint, recovery.checkpoint_written) {
        times.push_back((it, at.min(now)));
    }
    times.push_back((start, now));
    times
}

struct Engine {
    tree: Tree<Subscriber>,
    /// Live subscriptions per connection: sub id → prefix.
    subs: HashMap<u64, HashMap<u64, Topic>>,
    fanout: Fanout,
    /// The log, what waits for it, checkpoints and retention.
    persist: persist::Persist,
    /// Recent events and the catch-ups reading older ones from the log.
    history: history::History,
    /// Snapshots being walked over several rounds.
    snapshots: snapshot::Snapshots,
    /// Sink status, and how much history they still need.
    sinks: Arc<SinkBoard>,
    /// The pulls' status, for peers requests.
    peers: Arc<crate::cluster::board::PeerBoard>,
    /// This node's id, for status reports.
    node_id: Arc<str>,
    /// The source of the events this node's clients publish.
    incarnation: u64,
    /// Where replays are served from.
    replay: Option<Arc<ReplaySource>>,
    /// Live subscriptions allowed per connection.
    max_subscriptions: usize,
    max_topics: usize,
    /// How far ahead of the clock a client timestamp may be, in µs.
    max_clock_skew: u64,
    /// Where catch-ups and replays run.
    reads: Arc<crate::reads::Reads>,
    /// The engine's own queue, for catch-up jobs (weak: it must not keep
    /// the engine alive).
    me: mpsc::WeakSender<Command>,
    /// A stop was asked: the loop ends after this round.
    stopping: bool,
}

impl Engine {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            // Snapshots in progress go on even when no command comes.
            let first =
                if self.snapshots.pending.is_empty() && self.persist.checkpoint_walk.is_none() {
                    match rx.blocking_recv() {
                        Some(cmd) => Some(cmd),
                        None => break,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(cmd) => Some(cmd),
                        Err(mpsc::error::TryRecvError::Empty) => None,
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                    }
                };
            self.tree.refresh_clock();
            if let Some(cmd) = first {
                self.execute(cmd);
                for _ in 1..MAX_ROUND {
                    if self.stopping {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(cmd) => self.execute(cmd),
                        Err(_) => break,
                    }
                }
            }
            if !self.snapshots.pending.is_empty() {
                self.advance_snapshots();
            }
            self.reserve_iterations();
            self.end_round();
            if self.persist.checkpoint_walk.is_some() {
                self.advance_checkpoint(persist::CHECKPOINT_NODES_PER_ROUND, false);
            } else if self.persist.since_checkpoint >= self.persist.checkpoints.every {
                self.checkpoint(false);
            }
            self.enforce_retention();
            if self.stopping {
                break;
            }
        }
        // A checkpoint at shutdown makes the next start replay nothing:
        // needed also when no event followed a periodic one still being
        // gathered (which would be dropped) or written (by a thread the
        // process would not wait for).
        if self.persist.since_checkpoint > 0 || self.persist.checkpoint_walk.is_some() {
            self.checkpoint(true);
        } else if let Some(writer) = self.persist.checkpoint_writer.take() {
            if writer.join().is_err() {
                tracing::error!("the checkpoint writer panicked");
            }
        }
        tracing::debug!("engine stopped");
    }

    /// Extends the durable reservation of iterations before the round's
    /// numbers could pass it (before the round is written: a restart never
    /// numbers below what this round hands out).
    fn reserve_iterations(&mut self) {
        let it = self.tree.iteration();
        if it.saturating_add(ITERATIONS_RESERVED_AHEAD / 2) < self.persist.reserved_through {
            return;
        }
        let through = it.saturating_add(ITERATIONS_RESERVED_AHEAD);
        match crate::log::retention::store_value(
            self.persist.log.dir(),
            crate::log::retention::ITERATIONS_RESERVED,
            through,
        ) {
            Ok(()) => self.persist.reserved_through = through,
            Err(e) => tracing::error!("cannot reserve iterations: {e}"),
        }
    }

    fn execute(&mut self, cmd: Command) {
        match cmd {
            Command::Requests { conn, requests } => {
                for req in requests {
                    self.request(&conn, req);
                }
            }
            Command::Attach {
                conn,
                sub_id,
                after,
                deleted_through,
                job,
                skip_source,
                reply,
            } => {
                let caught_up = history::CaughtUp {
                    after,
                    deleted_through,
                    skip_source,
                };
                self.attach_caught_up(&conn, sub_id, caught_up, &job, reply)
            }
            Command::ApplyRemote { events, reply } => {
                let _ = reply.send(self.apply_remote(events));
            }
            Command::Digest {
                prefix,
                bucket,
                reply,
            } => {
                let _ = reply.send(self.tree.digest(prefix.as_str(), &bucket, 0));
            }
            Command::Stop => self.stopping = true,
            Command::Closed { conn, error } => {
                if let Some(subs) = self.subs.remove(&conn.id) {
                    let mut prefixes = hashbrown::HashSet::new();
                    for (sub_id, prefix) in subs {
                        self.cancel_catch_up(&conn, sub_id);
                        self.cancel_snapshot(&conn, sub_id);
                        prefixes.insert(prefix);
                    }
                    for prefix in prefixes {
                        self.tree.unsubscribe_all(&prefix, |s| s.conn.id == conn.id);
                    }
                }
                self.fanout.push(&conn, Outbound::Close(error));
            }
        }
    }

    fn request(&mut self, conn: &Arc<Conn>, req: Request) {
        if let Err(reason) = crate::auth::rights::authorize(conn.rights.as_ref(), &req) {
            if let Some(req_id) = req.req_id() {
                return self.error(conn, req_id, ErrorCode::Forbidden, reason);
            }
        }
        match req {
            Request::Publish(p) => self.change(conn, p, PublishMode::Set),
            Request::PublishIfAbsent(p) => self.change(conn, p, PublishMode::IfAbsent),
            Request::Delete(d) => self.change(conn, d.into(), PublishMode::Delete),
            Request::Get { req_id, topic } => {
                let event = self.tree.get(topic.as_str()).cloned();
                let carried = event.as_ref().map_or(0, |e| e.encoded().len());
                self.fanout
                    .answer_response(conn, Response::Value { req_id, event }, carried);
            }
            Request::Subscribe {
                req_id,
                prefix,
                since,
                mode,
                skip_source,
            } => self.subscribe(conn, req_id, prefix, since, mode, skip_source),
            Request::Digest(q) => {
                let report = self.tree.digest(q.prefix.as_str(), &q.bucket, q.req_id);
                let carried = report.own.as_ref().map_or(0, |e| e.encoded().len());
                self.fanout
                    .answer_response(conn, Response::Digest(report), carried);
            }
            Request::Unsubscribe { req_id, sub_id } => {
                let prefix = self
                    .subs
                    .get_mut(&conn.id)
                    .and_then(|subs| subs.remove(&sub_id));
                match prefix {
                    Some(prefix) => {
                        self.cancel_catch_up(conn, sub_id);
                        self.cancel_snapshot(conn, sub_id);
                        self.tree
                            .unsubscribe(&prefix, |s| s.conn.id == conn.id && s.sub_id == sub_id);
                        self.fanout
                            .push(conn, Outbound::Unsubscribed { req_id, sub_id });
                    }
                    None => self.error(
                        conn,
                        req_id,
                        ErrorCode::UnknownSubscription,
                        format!("no subscription {sub_id} on this connection"),
                    ),
                }
            }
            Request::Ping { req_id } => self.answer(conn, Response::Pong { req_id }),
            Request::Status { req_id } => {
                let mut report = self.status(req_id);
                if conn.rights.is_some() {
                    // Plugin paths and database errors are for operators,
                    // not for every token that may connect.
                    for sink in &mut report.sinks {
                        if let Some((plugin, _path)) = sink.plugin.split_once(" (") {
                            sink.plugin = plugin.to_owned();
                        }
                        sink.last_error = None;
                    }
                }
                self.answer(conn, Response::Status(report));
            }
            Request::Peers { req_id } => {
                let mut peers = self.peers.report();
                if conn.rights.is_some() {
                    // Errors may name hosts and files: for operators.
                    for peer in &mut peers {
                        peer.last_error = None;
                    }
                }
                let report = spread_protocol::PeersReport { req_id, peers };
                self.answer(conn, Response::Peers(report));
            }
            Request::Replay { req_id, query } => match &self.replay {
                // The archive is read on the read pool, never here.
                Some(source) => match self.reads.admit(conn, crate::reads::Kind::Replay) {
                    Ok(permit) => {
                        let task = self
                            .reads
                            .task(source.job(conn, req_id, query), Some(permit));
                        self.fanout.start_after(conn, task);
                    }
                    Err(refused) => {
                        self.error(conn, req_id, ErrorCode::TooManyReads, refused.to_string())
                    }
                },
                None => self.error(
                    conn,
                    req_id,
                    ErrorCode::ArchiveUnavailable,
                    "this broker has no archive to replay from (see the sinks configuration)"
                        .into(),
                ),
            },
            Request::Hello(_) => self.fanout.push(
                conn,
                Outbound::Close(Some(ErrorFrame {
                    req_id: None,
                    code: ErrorCode::HandshakeRequired,
                    message: "hello is only valid as the first frame".into(),
                })),
            ),
        }
    }

    /// A publish, publish-if-absent or delete: refused here when the log
    /// cannot be written, the timestamp is too far ahead or the topic table
    /// is full, applied otherwise.
    fn change(&mut self, conn: &Arc<Conn>, p: Publish, mode: PublishMode) {
        match &self.persist.storage_failure {
            // Refused at once, not held behind the rounds waiting for
            // the disk: the client gets a clear error, not a hang.
            Some(reason) => conn.answer_now(&Response::Error(ErrorFrame {
                req_id: Some(p.req_id),
                code: ErrorCode::StorageUnavailable,
                message: format!("the event log cannot be written: {reason}"),
            })),
            None => match p.timestamp {
                // A far-future timestamp would win every later write.
                Some(t) if t > self.tree.now().saturating_add(self.max_clock_skew) => self.error(
                    conn,
                    p.req_id,
                    ErrorCode::TimestampOutOfRange,
                    format!(
                        "timestamp {t} is more than {} µs ahead of the broker's clock",
                        self.max_clock_skew
                    ),
                ),
                // A delete of an unknown topic adds one too (its
                // tombstone must outlive older writes elsewhere).
                _ if self.tree.topics() >= self.max_topics
                    && !self.tree.holds(p.topic.as_str()) =>
                {
                    let max = self.max_topics;
                    self.error(
                        conn,
                        p.req_id,
                        ErrorCode::TooManyTopics,
                        format!("the broker already holds {max} topics, the most allowed"),
                    )
                }
                _ => self.publish(conn, p, mode),
            },
        }
    }

    fn publish(&mut self, conn: &Arc<Conn>, p: Publish, mode: PublishMode) {
        let Engine {
            tree,
            fanout,
            snapshots,
            persist,
            history,
            incarnation,
            ..
        } = self;
        let draft = Draft {
            topic: p.topic.as_str(),
            payload: &p.payload,
            timestamp: p.timestamp,
            id: p.id,
            origin: &conn.origin,
            mode,
            source: *incarnation,
        };
        let applied = tree.publish(draft, |s, event| deliver(fanout, snapshots, s, event));
        if let Applied::New { event, .. } = &applied {
            record(persist, history, event);
        }
        if p.req_id == spread_protocol::NO_REPORT {
            // No report asked: the answer is only the request's credit,
            // given back with the round (after its sync), as a report's is.
            return fanout.answer(conn, |_| {});
        }
        // A publish-only token must not read values through its reports.
        let readable = conn.may_read(draft.topic);
        match applied.current() {
            Some(current) if readable && current.encoded().len() > fanout::SPLICE_AT => {
                let carried = current.encoded().len();
                fanout.answer_response(conn, applied.into_response(p.req_id), carried)
            }
            _ => fanout.answer(conn, |dst| {
                applied.encode_report(dst, p.req_id, &draft, readable)
            }),
        }
    }

    fn subscribe(
        &mut self,
        conn: &Arc<Conn>,
        req_id: u64,
        prefix: Topic,
        since: u64,
        mode: SubscribeMode,
        skip_source: spread_protocol::Sources,
    ) {
        let subs = self.subs.entry(conn.id).or_default();
        if subs.len() >= self.max_subscriptions {
            conn.count_refused_subscription();
            let max = self.max_subscriptions;
            return self.error(
                conn,
                req_id,
                ErrorCode::TooManySubscriptions,
                format!("this connection already has {max} subscriptions, the most allowed"),
            );
        }
        if subs.contains_key(&req_id) {
            return self.error(
                conn,
                req_id,
                ErrorCode::DuplicateSubscription,
                format!("subscription {req_id} already exists on this connection"),
            );
        }
        subs.insert(req_id, prefix.clone());
        if mode == SubscribeMode::History {
            return self.subscribe_history(conn, req_id, prefix, since, skip_source);
        }
        // Deletes since `since` may have been forgotten: the client must
        // replace its state with a full snapshot, and is told so.
        let since = if since > 0 && since < self.persist.forgotten_deletes {
            self.fanout.push(
                conn,
                Outbound::Truncated {
                    sub_id: req_id,
                    oldest: self.persist.forgotten_deletes,
                },
            );
            0
        } else {
            since
        };
        self.start_snapshot(conn, req_id, prefix, since, skip_source);
    }

    fn status(&self, req_id: u64) -> StatusReport {
        let committed = self.persist.durable.get();
        StatusReport {
            req_id,
            node_id: self.node_id.to_string(),
            iteration: self.tree.iteration(),
            committed,
            retained_from: self.persist.log.retained_from(),
            sinks: self.sinks.reports(&self.persist.durable),
            digest: self.tree.root_digest(),
        }
    }

    fn answer(&mut self, conn: &Arc<Conn>, resp: Response) {
        self.fanout.answer(conn, |dst| resp.encode(dst));
    }

    fn error(&mut self, conn: &Arc<Conn>, req_id: u64, code: ErrorCode, message: String) {
        self.answer(
            conn,
            Response::Error(ErrorFrame {
                req_id: Some(req_id),
                code,
                message,
            }),
        );
    }
}
