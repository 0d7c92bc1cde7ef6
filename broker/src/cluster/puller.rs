//! One pull: a history subscription to a peer from the durable cursor,
//! applied in batches, the cursor recorded once the batch is committed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use spread_client::{Client, ClientConfig, Item, Subscription};
use spread_protocol::{Event, Sources, Topic};
use tokio::sync::{oneshot, watch};

use super::cursor::{Cursor, Position};
use super::direct;
use super::reconcile::{reconcile, ReconcileError, Reconciled};
use crate::engine::Command;

/// How often a pull records its cursor while events flow.
const CURSOR_EVERY: Duration = Duration::from_millis(100);

/// Events handed to the engine at once, at most.
const BATCH: usize = 4096;

/// Longest wait between attempts to reach a peer that is down: a healed
/// link is used again within about this long.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct Puller {
    /// This pull's entry on the board.
    pub entry: usize,
    pub address: String,
    pub prefix: Topic,
    pub cursor: Cursor,
    pub ca: PathBuf,
    /// Trust the system's roots as well as `ca`.
    pub system_roots: bool,
    /// Signs the peer token; without it the pull authenticates by its
    /// certificate alone.
    pub secret: Option<String>,
    /// The certificate chain and key presented to the peer (mutual TLS).
    pub peer_cert: Option<(PathBuf, PathBuf)>,
    /// How often to run a digest exchange while live.
    pub anti_entropy: Option<Duration>,
    pub local: super::Local,
}

/// Why a pull stopped (it starts again, from the cursor, unless the broker
/// is stopping).
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error("peer: {0}")]
    Peer(#[from] spread_client::Error),
    #[error("cursor: {0}")]
    Cursor(#[from] std::io::Error),
    #[error("digest exchange: {0}")]
    Reconcile(#[from] ReconcileError),
    #[error("the engine stopped")]
    EngineGone,
    #[error("the subscription ended")]
    Ended,
}

impl Puller {
    /// Pulls until `shutdown`, reconnecting with backoff.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            // The pull watches `shutdown` itself, to record its cursor.
            let began = Instant::now();
            let attempt = self.pull(shutdown.clone()).await;
            if began.elapsed() > MAX_BACKOFF {
                // It had been working: the next try comes soon.
                backoff = Duration::from_millis(50);
            }
            if *shutdown.borrow() {
                return;
            }
            match attempt {
                Err(PullError::EngineGone) => return,
                Err(e) => {
                    tracing::warn!(
                        peer = %self.address,
                        prefix = self.prefix.as_str(),
                        "replication interrupted: {e}; retrying in {backoff:?}"
                    );
                    let error = e.to_string();
                    self.local.board.update(self.entry, |p| {
                        p.state = "retrying".into();
                        p.last_error = Some(error);
                    });
                }
                Ok(()) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopping(&mut shutdown) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn pull(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), PullError> {
        let (secret, node) = (self.secret.clone(), self.local.node_id.clone());
        let config = ClientConfig::new(self.address.clone());
        let config = if self.system_roots {
            config.system_roots_and_ca_file(&self.ca)
        } else {
            config.ca_file(&self.ca)
        };
        let config = match secret {
            Some(secret) => config.token_refresher(move || super::peer_token(&secret, &node)),
            None => config,
        };
        let config = match &self.peer_cert {
            Some((cert, key)) => config.client_cert(cert, key),
            None => config,
        };
        let config = ClientConfig {
            client_name: format!("spread-peer/{}", self.local.node_id),
            // Each connection checks the cursor against the peer's history
            // (see `resume`): reconnections are this loop's, not the SDK's.
            reconnect: false,
            ..config
        };
        let at = self.cursor.load()?;
        self.local
            .board
            .update(self.entry, |p| p.cursor = at.iteration);
        let client = tokio::select! {
            c = Client::connect(config) => c?,
            _ = stopping(&mut shutdown) => return Ok(()),
        };
        let (peer_node, peer_incarnation) = (client.node_id(), client.incarnation());
        self.local.board.update(self.entry, |p| {
            p.peer_node = peer_node;
            p.peer_incarnation = peer_incarnation;
        });
        let mut state = Progress {
            last: at.iteration,
            last_id: at.id,
            snapshot: false,
            synced: false,
            connected: true,
            relied: at.relied,
        };
        let mut pending = Pending {
            queue: Default::default(),
            stored: Instant::now(),
        };
        let mine = Sources::from(self.local.incarnation);
        let mut sub = tokio::select! {
            s = self.resume(&client, at, &mut state, &mut pending) => s?,
            _ = stopping(&mut shutdown) => return Ok(()),
        };
        self.local
            .board
            .update(self.entry, |p| p.skipping = mine.as_slice().to_vec());
        if state.relied {
            // An earlier connection left events to other pulls that may
            // have ended before delivering them.
            drop(sub);
            sub = tokio::select! {
                s = self.exchange(&client, &mut state, &mut pending, mine) => s?,
                _ = stopping(&mut shutdown) => return Ok(()),
            };
        }
        tracing::info!(
            peer = %self.address,
            prefix = self.prefix.as_str(),
            after = state.last,
            "replicating from peer"
        );
        self.local
            .board
            .update(self.entry, |p| p.state = "catching-up".into());
        let mut batch = Vec::new();
        let period = self.anti_entropy.unwrap_or(Duration::MAX);
        let mut next_exchange = tokio::time::Instant::now().checked_add(period);
        // A lost connection shows on the board at once (the subscription
        // then ends, and `run` connects again through `resume`).
        let mut connection = client.connection_state();
        let mut direct = self.local.direct.watch();
        // Pulls that joined before this one count from the start.
        direct.mark_changed();
        let mut skip = mine;
        // In the set of live pulls from the first `synced` on this
        // connection until it is lost.
        let mut joined = None;
        // However the pull ends, what the log committed is recorded.
        let pulled: Result<(), PullError> = async {
            loop {
                // Wait for one item, then take what is already there.
                let idle = CURSOR_EVERY.saturating_sub(pending.stored.elapsed());
                let wake = tokio::select! {
                    item = sub.next_item() => Wake::Item(item),
                    // Quiet: record what the log committed meanwhile.
                    _ = tokio::time::sleep(idle), if !pending.queue.is_empty() => Wake::Idle,
                    _ = stopping(&mut shutdown) => return Ok(()),
                    // The safety net for what a link did not carry (an
                    // event refused for its clock, then superseded there).
                    _ = sleep_until(next_exchange) => Wake::Exchange,
                    changed = connection.changed() => match changed {
                        Ok(()) => Wake::Connection(*connection.borrow_and_update()),
                        Err(_) => return Err(PullError::Ended),
                    },
                    Ok(()) = direct.changed() => Wake::Direct,
                };
                let item = match wake {
                    Wake::Item(item) => item,
                    Wake::Idle => {
                        self.flush(&mut pending, true).await?;
                        continue;
                    }
                    Wake::Exchange => {
                        // Not with the subscription open: its events would
                        // fill the SDK's buffer and hold up the answers.
                        drop(sub);
                        sub = self
                            .exchange(&client, &mut state, &mut pending, skip)
                            .await?;
                        next_exchange = tokio::time::Instant::now().checked_add(period);
                        continue;
                    }
                    Wake::Connection(up) => {
                        // After a reconnection the peer says `synced` again.
                        state.connected = up;
                        state.synced = false;
                        if !up {
                            joined = None;
                        }
                        self.local.board.update(self.entry, |p| {
                            if up {
                                p.state = "catching-up".into();
                            } else {
                                p.state = "retrying".into();
                                p.last_error = Some("lost the connection to the peer".into());
                            }
                        });
                        continue;
                    }
                    Wake::Direct => {
                        let now = direct::skips(
                            &direct.borrow_and_update(),
                            self.entry,
                            &self.prefix,
                            peer_incarnation,
                            self.local.incarnation,
                        );
                        if now == skip {
                            continue;
                        }
                        // A pull that left took with it the promise to
                        // deliver its peer's events: take what it may not
                        // have delivered, and those events from here on.
                        let lost = skip.as_slice().iter().any(|s| !now.contains(*s));
                        skip = now;
                        drop(sub);
                        sub = if lost {
                            self.exchange(&client, &mut state, &mut pending, skip)
                                .await?
                        } else {
                            self.reopen(&client, &mut state, skip).await?
                        };
                        continue;
                    }
                };
                let Some(item) = item else {
                    return Err(PullError::Ended);
                };
                state.take(item?, &mut batch);
                while batch.len() < BATCH {
                    match next_ready(&mut sub) {
                        Some(item) => state.take(item?, &mut batch),
                        None => break,
                    }
                }
                self.apply(std::mem::take(&mut batch), &state, &mut pending)
                    .await?;
                if joined.is_none() && state.synced && state.connected {
                    joined = Some(self.local.direct.join(
                        self.entry,
                        &self.prefix,
                        peer_incarnation,
                    ));
                }
                self.flush(&mut pending, false).await?;
            }
        }
        .await;
        drop(joined);
        self.flush(&mut pending, true).await?;
        pulled
    }

    /// Subscribes again on the same connection from where the pull is,
    /// leaving out `skip` (which the board shows).
    async fn reopen(
        &self,
        client: &Client,
        state: &mut Progress,
        skip: Sources,
    ) -> Result<Subscription, PullError> {
        state.synced = false;
        // Leaving out others' events: positions from here on say so.
        state.relied |= skip.as_slice().len() > 1;
        self.local.board.update(self.entry, |p| {
            p.skipping = skip.as_slice().to_vec();
            p.state = "catching-up".into();
        });
        Ok(client
            .subscribe_history_skipping(self.prefix.as_str(), state.last, skip)
            .await?)
    }

    /// Runs a digest exchange (with no subscription open), which takes
    /// what the peer holds and this node lacks, then subscribes again from
    /// where the pull is, leaving out `skip`.
    async fn exchange(
        &self,
        client: &Client,
        state: &mut Progress,
        pending: &mut Pending,
        skip: Sources,
    ) -> Result<Subscription, PullError> {
        self.local
            .board
            .update(self.entry, |p| p.state = "digest".into());
        let done = reconcile(client, &self.local, &self.prefix).await?;
        self.report_exchange(&done);
        // What was left to others before is here now, once committed.
        state.relied = false;
        let position = Position {
            iteration: state.last,
            id: state.last_id,
            relied: false,
        };
        pending.queue.push_back((position, done.local_iteration));
        self.reopen(client, state, skip).await
    }

    /// Subscribes after the cursor. When the cursor names an event, the
    /// subscription starts one iteration before it and the peer's first
    /// event must be that one: otherwise the peer's history changed under
    /// the cursor (it was restored from an older copy, or its log reset,
    /// and it may have numbered other events the same), and the pull takes
    /// the peer's whole history again, which the conflict rule makes
    /// harmless.
    async fn resume(
        &self,
        client: &Client,
        at: Position,
        state: &mut Progress,
        pending: &mut Pending,
    ) -> Result<Subscription, PullError> {
        let prefix = self.prefix.as_str();
        // What this run accepted is not sent back; what an earlier run
        // accepted is (it may have been lost here with that run).
        let mine = self.local.incarnation;
        // Retention deleted the peer's history past the cursor: take the
        // latest value of what changed after it instead.
        let status = client.status().await?;
        if status
            .retained_from
            .is_some_and(|oldest| at.iteration.saturating_add(1) < oldest)
        {
            tracing::info!(
                peer = %self.address,
                prefix,
                cursor = at.iteration,
                "the peer's history no longer reaches this node's cursor: taking the latest values changed since"
            );
            return self
                .latest_since(client, at.iteration, status.iteration, state, pending)
                .await;
        }
        let Some(id) = at.id.filter(|_| at.iteration > 0) else {
            return Ok(client
                .subscribe_history_skipping(prefix, at.iteration, mine)
                .await?);
        };
        let mut sub = client
            .subscribe_history_skipping(prefix, at.iteration - 1, mine)
            .await?;
        match sub.next_item().await {
            Some(Ok(Item::Event(e))) if e.iteration() == at.iteration && e.id() == id => Ok(sub),
            // History gone: the peer's full state follows, as a reset would.
            Some(Ok(item @ Item::Truncated { .. })) => {
                state.take(item, &mut Vec::new());
                Ok(sub)
            }
            Some(Err(e)) => Err(e.into()),
            None => Err(PullError::Ended),
            Some(Ok(_)) => {
                tracing::warn!(
                    peer = %self.address,
                    prefix,
                    cursor = at.iteration,
                    "the peer's history differs from what this node applied (restored or reset?): exchanging digests"
                );
                drop(sub);
                let from = client.status().await?.iteration;
                self.resync(client, from, state, pending).await
            }
        }
    }

    /// Takes the latest value of every topic the peer changed after
    /// `since` (resync level 2: k events for k changed topics, however
    /// many writes they had), then pulls the peer's history after the
    /// iteration that snapshot covers. When the peer also forgot deletes
    /// after `since`, it would send its whole state: a digest exchange
    /// does better, from `peer_iteration` (the peer's before the snapshot).
    async fn latest_since(
        &self,
        client: &Client,
        since: u64,
        peer_iteration: u64,
        state: &mut Progress,
        pending: &mut Pending,
    ) -> Result<Subscription, PullError> {
        let prefix = self.prefix.as_str();
        let mut sub = client.subscribe_since(prefix, since).await?;
        // Events in no order until the snapshot completes: no position.
        state.snapshot = true;
        let mut batch = Vec::new();
        loop {
            let item = match sub.next_item().await {
                Some(item) => item?,
                None => return Err(PullError::Ended),
            };
            match item {
                Item::Truncated { .. } => {
                    drop(sub);
                    state.snapshot = false;
                    self.apply(std::mem::take(&mut batch), state, pending)
                        .await?;
                    return self.resync(client, peer_iteration, state, pending).await;
                }
                item @ Item::Synced { .. } => {
                    // Positions the pull at the iteration the snapshot covers.
                    state.take(item, &mut batch);
                    state.synced = false;
                    self.apply(std::mem::take(&mut batch), state, pending)
                        .await?;
                    break;
                }
                item => {
                    state.take(item, &mut batch);
                    if batch.len() >= BATCH {
                        self.apply(std::mem::take(&mut batch), state, pending)
                            .await?;
                    }
                }
            }
        }
        drop(sub);
        let mine = Sources::from(self.local.incarnation);
        self.reopen(client, state, mine).await
    }

    /// Takes what the peer holds and this node lacks by a digest exchange,
    /// then pulls the peer's history after `from`, its iteration before
    /// the exchange began (what came after is in that history).
    async fn resync(
        &self,
        client: &Client,
        from: u64,
        state: &mut Progress,
        pending: &mut Pending,
    ) -> Result<Subscription, PullError> {
        state.last = from;
        state.last_id = None;
        let mine = Sources::from(self.local.incarnation);
        self.exchange(client, state, pending, mine).await
    }

    fn report_exchange(&self, done: &Reconciled) {
        self.local.board.update(self.entry, |p| {
            p.received += done.fetched;
            p.applied += done.applied;
            p.refused += done.refused;
            p.exchanges += 1;
            p.exchange_requests += done.requests;
        });
        if done.fetched > 0 {
            tracing::info!(
                peer = %self.address,
                prefix = self.prefix.as_str(),
                requests = done.requests,
                fetched = done.fetched,
                applied = done.applied,
                "digest exchange took what differed"
            );
        }
    }

    /// Hands `events` to the engine (which answers once they are applied,
    /// not synced) and notes the position they bring the pull to, to be
    /// recorded once the log has committed them ([`Puller::flush`]).
    async fn apply(
        &self,
        events: Vec<Event>,
        state: &Progress,
        pending: &mut Pending,
    ) -> Result<(), PullError> {
        let mut local = None;
        if !events.is_empty() {
            let received = events.len() as u64;
            let newest = events.iter().map(Event::timestamp).max().unwrap_or(0);
            let (reply, applied) = oneshot::channel();
            self.local
                .engine
                .send(Command::ApplyRemote { events, reply })
                .await
                .map_err(|_| PullError::EngineGone)?;
            let applied = applied.await.map_err(|_| PullError::EngineGone)?;
            self.local.board.update(self.entry, |p| {
                p.received += received;
                p.applied += applied.new;
                p.refused += applied.refused;
            });
            let now = crate::engine::clock::now_micros();
            self.local.board.applied_up_to(self.entry, newest, now);
            local = Some(applied.iteration);
        }
        // During a snapshot (history the peer no longer has) the events
        // come in no order: the position moves only when it completes.
        if !state.snapshot {
            let position = Position {
                iteration: state.last,
                id: state.last_id,
                relied: state.relied,
            };
            // Nothing new here: due once what came before is.
            let local = local.or(pending.queue.back().map(|(_, l)| *l)).unwrap_or(0);
            pending.queue.push_back((position, local));
        }
        self.local.board.update(self.entry, |p| {
            p.peer_iteration = p.peer_iteration.max(state.last);
            if state.synced && state.connected {
                p.state = "live".into();
            }
        });
        Ok(())
    }

    /// Records the furthest noted position whose events the log has
    /// committed, at most every [`CURSOR_EVERY`] (a cursor that lags only
    /// makes a restart re-apply a few events, which are `existing`).
    async fn flush(&self, pending: &mut Pending, force: bool) -> Result<(), PullError> {
        if !force && pending.stored.elapsed() < CURSOR_EVERY {
            return Ok(());
        }
        let committed = self.local.committed.get();
        let mut due = None;
        while let Some((_, local)) = pending.queue.front() {
            if *local > committed {
                break;
            }
            due = pending.queue.pop_front().map(|(p, _)| p);
        }
        if let Some(position) = due {
            // Three fsyncs: on a blocking thread, not the runtime's.
            let cursor = self.cursor.clone();
            tokio::task::spawn_blocking(move || cursor.store(position))
                .await
                .map_err(|_| std::io::Error::other("the cursor write panicked"))??;
            self.local
                .board
                .update(self.entry, |p| p.cursor = position.iteration);
        }
        // Also when nothing was due yet: the next try is a period later.
        pending.stored = Instant::now();
        Ok(())
    }
}

/// Positions reached but not yet recorded, with the local iteration the
/// log must have committed first.
struct Pending {
    queue: std::collections::VecDeque<(Position, u64)>,
    stored: Instant,
}

/// Where a pull is in the peer's history.
#[derive(Clone, Copy)]
struct Progress {
    /// The peer iteration everything up to which is in the batch or applied.
    last: u64,
    /// The id of the event at `last`, when `last` is an event's.
    last_id: Option<spread_protocol::EventId>,
    /// Between a `truncated` marker and the end of the snapshot after it.
    snapshot: bool,
    /// The peer said `synced` on the current connection: what follows is
    /// live.
    synced: bool,
    /// Whether the SDK's connection is up (items received before it went
    /// down may still be applied after).
    connected: bool,
    /// Events before `last` were left to other pulls since the last digest
    /// exchange (see [`Position::relied`]).
    relied: bool,
}

/// What woke a pull.
enum Wake {
    Item(Option<Result<Item, spread_client::Error>>),
    /// Time to record the cursor.
    Idle,
    /// Time for the periodic digest exchange.
    Exchange,
    /// The SDK's connection went up (`true`) or down.
    Connection(bool),
    /// A pull joined or left the live set.
    Direct,
}

impl Progress {
    fn take(&mut self, item: Item, batch: &mut Vec<Event>) {
        match item {
            Item::Event(event) => {
                if !self.snapshot && event.iteration() > self.last {
                    self.last = event.iteration();
                    self.last_id = Some(event.id());
                }
                batch.push(event);
            }
            Item::Truncated { oldest } => {
                tracing::warn!(
                    oldest,
                    "the peer no longer has the history after this node's cursor: taking its latest values"
                );
                self.snapshot = true;
            }
            Item::Synced { iteration } => {
                // After a snapshot (events in no order), the position is
                // the iteration it covers, which names no event.
                if self.snapshot {
                    self.last = self.last.max(iteration);
                    self.last_id = None;
                }
                self.snapshot = false;
                self.synced = true;
            }
            // History subscriptions are never conflated.
            Item::Conflated { .. } => {}
        }
    }
}

/// Sleeps until `at`; never, for `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Completes when the broker is stopping (without holding the watch's
/// guard, so that it can be awaited next to other work).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The next item if one is ready now.
fn next_ready(sub: &mut Subscription) -> Option<Result<Item, spread_client::Error>> {
    sub.next_item().now_or_never().flatten()
}
