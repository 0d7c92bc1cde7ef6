//! One pull: a history subscription to a peer from the durable cursor,
//! applied in batches, the cursor recorded once the batch is committed.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::FutureExt;
use spread_client::{Client, ClientConfig, Item, Subscription};
use spread_protocol::{Event, Topic};
use tokio::sync::{oneshot, watch};

use super::cursor::{Cursor, Position};
use crate::engine::Command;

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
    pub secret: String,
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
            let attempt = tokio::select! {
                r = self.pull() => r,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
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
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn pull(&self) -> Result<(), PullError> {
        let (secret, node) = (self.secret.clone(), self.local.node_id.clone());
        let config = ClientConfig::new(self.address.clone())
            .ca_file(&self.ca)
            .token_refresher(move || super::peer_token(&secret, &node));
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
        let client = Client::connect(config).await?;
        let mut state = Progress {
            last: at.iteration,
            last_id: at.id,
            snapshot: false,
            synced: false,
            connected: true,
        };
        let mut sub = self.resume(&client, at, &mut state).await?;
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
        // The SDK reconnects and resumes by itself; the board says so.
        let mut connection = client.connection_state();
        loop {
            // Wait for one item, then take what is already there.
            let item = tokio::select! {
                item = sub.next_item() => item,
                changed = connection.changed() => {
                    if changed.is_err() {
                        return Err(PullError::Ended);
                    }
                    let up = *connection.borrow_and_update();
                    // After a reconnection the peer says `synced` again.
                    state.connected = up;
                    state.synced = false;
                    self.local.board.update(self.entry, |p| {
                        if up {
                            p.state = "catching-up".into();
                        } else {
                            p.state = "retrying".into();
                            p.last_error = Some("lost the connection to the peer; reconnecting".into());
                        }
                    });
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
            self.apply(std::mem::take(&mut batch), &state).await?;
        }
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
    ) -> Result<Subscription, PullError> {
        let prefix = self.prefix.as_str();
        let Some(id) = at.id.filter(|_| at.iteration > 0) else {
            return Ok(client.subscribe_history(prefix, at.iteration).await?);
        };
        let mut sub = client.subscribe_history(prefix, at.iteration - 1).await?;
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
                    "the peer's history differs from what this node applied (restored or reset?): pulling all of it again"
                );
                drop(sub);
                *state = Progress {
                    last: 0,
                    last_id: None,
                    ..*state
                };
                Ok(client.subscribe_history(prefix, 0).await?)
            }
        }
    }

    /// Applies `events`, waits until the log holds them durably, then
    /// records how far the peer's history is applied.
    async fn apply(&self, events: Vec<Event>, state: &Progress) -> Result<(), PullError> {
        let (reply, applied) = oneshot::channel();
        if !events.is_empty() {
            self.local
                .engine
                .send(Command::ApplyRemote { events, reply })
                .await
                .map_err(|_| PullError::EngineGone)?;
            let applied = applied.await.map_err(|_| PullError::EngineGone)?;
            self.local.board.update(self.entry, |p| {
                p.applied += applied.new;
                p.refused += applied.refused;
            });
            tracing::debug!(
                peer = %self.address,
                new = applied.new,
                refused = applied.refused,
                "applied a batch from a peer"
            );
            let committed = self.local.committed.clone();
            let target = applied.iteration;
            // The committed iteration moves once per engine round.
            tokio::task::spawn_blocking(move || {
                let mut seen = committed.get();
                while seen < target {
                    seen = committed.wait_beyond(seen, Duration::from_millis(100), || false);
                }
            })
            .await
            .map_err(|_| PullError::EngineGone)?;
        }
        // During a snapshot (history the peer no longer has) the events
        // come in no order: the cursor moves only when it completes.
        if !state.snapshot {
            self.cursor.store(Position {
                iteration: state.last,
                id: state.last_id,
            })?;
        }
        self.local.board.update(self.entry, |p| {
            if !state.snapshot {
                p.cursor = state.last;
            }
            p.peer_iteration = p.peer_iteration.max(state.last);
            if state.synced && state.connected {
                p.state = "live".into();
            }
        });
        Ok(())
    }
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

/// The next item if one is ready now.
fn next_ready(sub: &mut Subscription) -> Option<Result<Item, spread_client::Error>> {
    sub.next_item().now_or_never().flatten()
}
