//! Events from peers: applied by the conflict rule like publishes, with
//! their own id, timestamp and origin (see docs/cluster.md).

use spread_protocol::Event;

use super::tree::Applied;
use super::Engine;

/// What a batch of peer events did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteApplied {
    /// This node's iteration after the batch: the puller's cursor may move
    /// once the log is committed up to here.
    pub iteration: u64,
    /// Events new here (logged, delivered, forwarded to other peers).
    pub new: u64,
    /// Events refused because they are stamped too far ahead of this
    /// node's clock, or because the topic table is full.
    pub refused: u64,
}

impl Engine {
    /// Applies `events` from a peer. An event seen before is `existing` or
    /// `too_late` and changes nothing, so a peer that resends after a
    /// reconnect, or an event that went round a ring, is applied once.
    pub(super) fn apply_remote(&mut self, events: Vec<Event>) -> RemoteApplied {
        let mut out = RemoteApplied::default();
        for event in events {
            let ahead = self.tree.now().saturating_add(self.max_clock_skew);
            if event.timestamp() > ahead {
                tracing::warn!(
                    topic = event.topic(),
                    timestamp = event.timestamp(),
                    "a peer's event is stamped more than the allowed skew ahead of this node's clock; not applied"
                );
                out.refused += 1;
                continue;
            }
            if self.tree.topics() >= self.max_topics && !self.tree.holds(event.topic()) {
                tracing::warn!(
                    topic = event.topic(),
                    "a peer's event would add a topic past --max-topics; not applied"
                );
                out.refused += 1;
                continue;
            }
            let Engine {
                tree,
                fanout,
                snapshots,
                persist,
                history,
                ..
            } = self;
            let applied = tree.apply(&event, |s, event| {
                super::deliver(fanout, snapshots, s, event);
            });
            if let Applied::New { event, .. } = &applied {
                super::record(persist, history, event);
                out.new += 1;
            }
        }
        out.iteration = self.tree.iteration();
        out
    }
}
