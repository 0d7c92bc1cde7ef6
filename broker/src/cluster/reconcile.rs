//! The digest exchange (docs/cluster.md, resync level 3): find what a peer
//! holds under a prefix that this node lacks, by walking both topic trees
//! from the prefix down only where their digests differ, and apply the
//! peer's events found there through the conflict rule.
//!
//! Two nodes that differ in k topics exchange digests along k paths, never
//! the whole state. The walk asks the peer for many nodes at once (up to
//! [`IN_FLIGHT`]), so its time is a few round trips per tree level.

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use spread_client::Client;
use spread_protocol::digest::{self, DigestReport};
use spread_protocol::{Event, Topic, TopicRules};
use tokio::sync::oneshot;

use super::Local;
use crate::engine::Command;

/// Digest requests outstanding at once.
const IN_FLIGHT: usize = 32;

/// Events applied at once.
const BATCH: usize = 4096;

/// What one exchange did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Reconciled {
    /// Digest requests sent to the peer.
    pub requests: u64,
    /// The peer's events fetched (those that differ from this node's).
    pub fetched: u64,
    /// Of those, new here.
    pub applied: u64,
    /// Of those, refused here (clock skew, topic limit).
    pub refused: u64,
    /// The local iteration after the last event applied: the log must
    /// commit it before a cursor past the exchange is recorded.
    pub local_iteration: u64,
}

/// Why an exchange stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error("peer: {0}")]
    Peer(#[from] spread_client::Error),
    #[error("the engine stopped")]
    EngineGone,
}

/// One node of the walk: a tree node and a bucket of its children.
struct Query {
    path: String,
    bucket: Vec<u8>,
}

/// Compares the trees under `prefix` with the peer behind `client` and
/// applies the peer's events where they differ.
pub(crate) async fn reconcile(
    client: &Client,
    local: &Local,
    prefix: &Topic,
) -> Result<Reconciled, ReconcileError> {
    let mut done = Reconciled::default();
    let mut level = vec![Query {
        path: prefix.as_str().to_owned(),
        bucket: Vec::new(),
    }];
    let mut fetched: Vec<Event> = Vec::new();
    while !level.is_empty() {
        done.requests += level.len() as u64;
        let answers: Vec<(Query, DigestReport, DigestReport)> = stream::iter(level)
            .map(|q| async move {
                let remote = client.digest(&q.path, &q.bucket).await?;
                let mine = local_digest(local, &q.path, &q.bucket).await?;
                Ok::<_, ReconcileError>((q, remote, mine))
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        let mut next = Vec::new();
        for (q, remote, mine) in answers {
            if remote.digest == mine.digest && !q.bucket.is_empty() {
                continue;
            }
            if q.bucket.is_empty() {
                if let Some(own) = &remote.own {
                    if mine.own.as_ref().map(Event::id) != Some(own.id()) {
                        fetched.push(own.clone());
                    }
                }
                if remote.digest == mine.digest {
                    continue;
                }
            }
            differing_children(&q, &remote, &mine, &mut next);
        }
        while fetched.len() >= BATCH {
            let rest = fetched.split_off(BATCH);
            apply(local, std::mem::replace(&mut fetched, rest), &mut done).await?;
        }
        level = next;
    }
    apply(local, fetched, &mut done).await?;
    Ok(done)
}

/// Queues the children (or sub-buckets) of `q` whose digests differ.
fn differing_children(
    q: &Query,
    remote: &DigestReport,
    mine: &DigestReport,
    next: &mut Vec<Query>,
) {
    let listed = |r: &DigestReport| r.buckets.is_empty();
    if listed(remote) && listed(mine) {
        for entry in &remote.entries {
            let here = mine
                .entries
                .iter()
                .find(|e| e.name == entry.name)
                .map_or(0, |e| e.digest);
            // A subtree of only tombstones sums to 0: absent here, it
            // deletes nothing here.
            if here != entry.digest {
                next.push(Query {
                    path: child_path(&q.path, &entry.name),
                    bucket: Vec::new(),
                });
            }
        }
        return;
    }
    let depth = q.bucket.len();
    let (theirs, ours) = (
        digest::sub_buckets(remote, depth),
        digest::sub_buckets(mine, depth),
    );
    for nibble in 0..16u8 {
        if theirs[nibble as usize] != ours[nibble as usize] {
            let mut bucket = q.bucket.clone();
            bucket.push(nibble);
            next.push(Query {
                path: q.path.clone(),
                bucket,
            });
        }
    }
}

fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

async fn local_digest(
    local: &Local,
    path: &str,
    bucket: &[u8],
) -> Result<DigestReport, ReconcileError> {
    // The peer validated the path; a name this node's rules refuse has
    // nothing here to compare.
    let rules = TopicRules {
        max_len: usize::MAX,
        max_depth: usize::MAX,
    };
    let Ok(prefix) = Topic::prefix(path, &rules) else {
        return Ok(DigestReport {
            req_id: 0,
            digest: 0,
            own: None,
            entries: Vec::new(),
            buckets: Vec::new(),
        });
    };
    let (reply, answer) = oneshot::channel();
    local
        .engine
        .send(Command::Digest {
            prefix,
            bucket: Bytes::copy_from_slice(bucket),
            reply,
        })
        .await
        .map_err(|_| ReconcileError::EngineGone)?;
    answer.await.map_err(|_| ReconcileError::EngineGone)
}

async fn apply(
    local: &Local,
    events: Vec<Event>,
    done: &mut Reconciled,
) -> Result<(), ReconcileError> {
    if events.is_empty() {
        return Ok(());
    }
    done.fetched += events.len() as u64;
    let (reply, applied) = oneshot::channel();
    local
        .engine
        .send(Command::ApplyRemote { events, reply })
        .await
        .map_err(|_| ReconcileError::EngineGone)?;
    let applied = applied.await.map_err(|_| ReconcileError::EngineGone)?;
    done.applied += applied.new;
    done.refused += applied.refused;
    done.local_iteration = done.local_iteration.max(applied.iteration);
    Ok(())
}
