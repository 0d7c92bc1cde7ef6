//! The topic tree: the latest event of every topic and the subscriptions of
//! every prefix, in one structure keyed by path segment.
//!
//! Invariants:
//! - each topic holds the greatest event applied to it by
//!   (timestamp, origin, id): a last-writer-wins register;
//! - each applied event takes the next iteration, strictly increasing;
//! - `max_iteration` of a node is the greatest iteration in its subtree, so a
//!   snapshot "since N" skips untouched subtrees;
//! - `digest` of a node is the digest of the live values in its subtree
//!   (`spread_protocol::digest`), kept by adding each change's difference
//!   along its path;
//! - a publish visits only the nodes on its topic's path: O(depth), whatever
//!   the number of subscriptions.

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use smallvec::SmallVec;
use spread_protocol::digest::{self, DigestEntry, DigestReport};
use spread_protocol::{Counts, Event, EventId, EventKind, EventParts, PublishMode, Topic};

use super::clock::{Clock, IdGen};

/// A node's children, by segment: no map at all for a leaf (most nodes:
/// an empty map still takes 40 bytes, a box of one 8). Each child is boxed,
/// so that the table's empty slots (up to half of them, at hashbrown's load
/// factor) cost a pointer each rather than a whole node.
struct Children<S>(Option<Box<ChildMap<S>>>);

type ChildMap<S> = HashMap<Box<str>, Box<Node<S>>>;

impl<S> Children<S> {
    fn get(&self, seg: &str) -> Option<&Node<S>> {
        self.0.as_ref()?.get(seg).map(|c| &**c)
    }

    fn get_mut(&mut self, seg: &str) -> Option<&mut Node<S>> {
        self.0.as_mut()?.get_mut(seg).map(|c| &mut **c)
    }

    /// The child at `seg`, created (with the map) if missing.
    fn get_or_insert(&mut self, seg: &str) -> &mut Node<S> {
        // One lookup, by reference: the key is allocated only when the
        // segment is new.
        match self.0.get_or_insert_default().entry_ref(seg) {
            EntryRef::Occupied(child) => child.into_mut(),
            EntryRef::Vacant(slot) => {
                let child = Node {
                    hash: digest::segment_hash(seg),
                    ..Node::default()
                };
                slot.insert_with_key(seg.into(), Box::new(child))
            }
        }
    }

    /// Removes the child at `seg`, and the map with the last one.
    fn remove(&mut self, seg: &str) {
        if let Some(map) = &mut self.0 {
            map.remove(seg);
            if map.is_empty() {
                self.0 = None;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }

    fn iter(&self) -> impl Iterator<Item = (&Box<str>, &Node<S>)> {
        self.0.iter().flat_map(|m| m.iter().map(|(k, c)| (k, &**c)))
    }

    fn values(&self) -> impl Iterator<Item = &Node<S>> {
        self.iter().map(|(_, n)| n)
    }

    fn keys(&self) -> impl Iterator<Item = &Box<str>> {
        self.iter().map(|(k, _)| k)
    }
}

/// The subscriptions of one prefix: none at most nodes, so a box of a
/// vector (8 bytes) rather than a vector (24).
// The extra allocation is the point: it exists only where there are
// subscriptions, and the node stays 16 bytes smaller everywhere else.
#[allow(clippy::box_collection)]
struct Subs<S>(Option<Box<Vec<S>>>);

impl<S> Subs<S> {
    fn as_slice(&self) -> &[S] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn push(&mut self, sub: S) {
        self.0.get_or_insert_default().push(sub);
    }

    fn retain(&mut self, keep: impl FnMut(&S) -> bool) {
        if let Some(subs) = &mut self.0 {
            subs.retain(keep);
            if subs.is_empty() {
                self.0 = None;
            }
        }
    }

    /// Removes the first matching `pred` (in any order of the rest).
    fn remove_first(&mut self, pred: impl FnMut(&S) -> bool) -> Option<S> {
        let subs = self.0.as_mut()?;
        let pos = subs.iter().position(pred)?;
        let sub = subs.swap_remove(pos);
        if subs.is_empty() {
            self.0 = None;
        }
        Some(sub)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut S> {
        self.0.iter_mut().flat_map(|subs| subs.iter_mut())
    }
}

struct Node<S> {
    children: Children<S>,
    value: Option<Event>,
    max_iteration: u64,
    /// The digest of the live values in this subtree.
    digest: u64,
    /// What `value` adds to it (kept, so that a replaced value is not
    /// hashed again).
    own_digest: u64,
    /// `digest::segment_hash` of this node's segment: which bucket of its
    /// parent's children it is in.
    hash: u64,
    subs: Subs<S>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Node {
            children: Children(None),
            value: None,
            max_iteration: 0,
            digest: 0,
            own_digest: 0,
            hash: 0,
            subs: Subs(None),
        }
    }
}

impl<S> Node<S> {
    fn is_empty(&self) -> bool {
        self.value.is_none() && self.subs.is_empty() && self.children.is_empty()
    }

    fn descend_mut(&mut self, topic: &str) -> &mut Node<S> {
        let mut node = self;
        for seg in segments(topic) {
            node = node.children.get_or_insert(seg);
        }
        node
    }

    fn descend(&self, topic: &str) -> Option<&Node<S>> {
        let mut node = self;
        for seg in segments(topic) {
            node = node.children.get(seg)?;
        }
        Some(node)
    }

    /// The node at `topic`, if there is one.
    fn descend_existing_mut(&mut self, topic: &str) -> Option<&mut Node<S>> {
        let mut node = self;
        for seg in segments(topic) {
            node = node.children.get_mut(seg)?;
        }
        Some(node)
    }

    fn collect(&self, since: u64, tombstones: bool, out: &mut Vec<Event>) {
        if self.max_iteration <= since {
            return;
        }
        if let Some(v) = &self.value {
            if v.iteration() > since && (tombstones || !v.is_tombstone()) {
                out.push(v.clone());
            }
        }
        for child in self.children.values() {
            child.collect(since, tombstones, out);
        }
    }

    /// Removes the nodes on the path of `segs` that are empty, deepest
    /// first.
    fn prune(&mut self, segs: &[&str]) {
        if let Some((first, rest)) = segs.split_first() {
            if let Some(child) = self.children.get_mut(first) {
                child.prune(rest);
                if child.is_empty() {
                    self.children.remove(first);
                }
            }
        }
    }

    /// Removes every subscriber matching `pred` at the node of `segs`, then
    /// prunes nodes left empty.
    fn unsubscribe_all(&mut self, segs: &[&str], pred: &mut impl FnMut(&S) -> bool) {
        match segs.split_first() {
            None => self.subs.retain(|s| !pred(s)),
            Some((first, rest)) => {
                let Some(child) = self.children.get_mut(first) else {
                    return;
                };
                child.unsubscribe_all(rest, pred);
                if child.is_empty() {
                    self.children.remove(first);
                }
            }
        }
    }

    /// Removes the first subscriber matching `pred` at the node of `segs`,
    /// then prunes nodes left empty. Returns the subscriber.
    fn unsubscribe(&mut self, segs: &[&str], pred: &mut impl FnMut(&S) -> bool) -> Option<S> {
        match segs.split_first() {
            None => self.subs.remove_first(&mut *pred),
            Some((first, rest)) => {
                let child = self.children.get_mut(first)?;
                let found = child.unsubscribe(rest, pred);
                if child.is_empty() {
                    self.children.remove(first);
                }
                found
            }
        }
    }
}

/// A walk over the subtree of a prefix that resumes where it stopped, one
/// slice per engine round, so that a snapshot of any size never holds the
/// engine for long. It holds paths, not references: the tree changes
/// between slices. A node added, changed or pruned after the walk began is
/// seen live by the subscription instead (its event is newer than the
/// walk's `until`).
pub struct Walk {
    /// Nodes still to visit: a parent path and its children's names.
    stack: Vec<(String, Vec<Box<str>>)>,
}

impl Walk {
    /// Whether every node was visited.
    pub fn is_done(&self) -> bool {
        self.stack.is_empty()
    }
}

/// The segments of a validated topic (none for the root).
fn segments(topic: &str) -> impl Iterator<Item = &str> {
    topic.split('/').filter(move |_| !topic.is_empty())
}

/// What a publish proposes; unset fields are filled by the tree.
#[derive(Debug, Clone, Copy)]
pub struct Draft<'a> {
    /// Topic to change, already validated.
    pub topic: &'a str,
    /// New value (ignored for deletes).
    pub payload: &'a [u8],
    /// Event time; stamped by the tree's clock when absent.
    pub timestamp: Option<u64>,
    /// Event id; generated when absent.
    pub id: Option<EventId>,
    /// Who wrote it (the token's subject, or the client's name).
    pub origin: &'a str,
    /// Set, set-if-absent or delete.
    pub mode: PublishMode,
    /// The run of the node that accepted it (see `Event::source`).
    pub source: u64,
}

/// What applying a publish did, holding the events themselves (the report
/// is encoded from them without copying).
#[derive(Debug)]
pub enum Applied {
    /// The event is now the topic's latest.
    New {
        event: Event,
        /// The event it replaced.
        previous: Option<Event>,
        /// Subscriptions notified per level, root first.
        notified: Counts,
    },
    /// This exact event was applied before.
    Existing { event: Event },
    /// A later event is already there.
    TooLate {
        /// The event not applied (iteration 0).
        rejected: Event,
        current: Event,
    },
    /// Publish-if-absent found a live value.
    Present { current: Event },
}

impl Applied {
    /// The topic's current event, for `too_late` and `present`.
    pub fn current(&self) -> Option<&Event> {
        match self {
            Applied::TooLate { current, .. } | Applied::Present { current } => Some(current),
            Applied::New { .. } | Applied::Existing { .. } => None,
        }
    }
}

/// Latest values and subscriptions, with the node's iteration counter.
pub struct Tree<S> {
    root: Node<S>,
    iteration: u64,
    clock: Clock,
    ids: IdGen,
    topics: usize,
}

impl<S> Tree<S> {
    /// An empty tree whose first applied event takes `last_iteration + 1`.
    pub fn new(clock: Clock, ids: IdGen, last_iteration: u64) -> Self {
        Tree {
            root: Node::default(),
            iteration: last_iteration,
            clock,
            ids,
            topics: 0,
        }
    }

    /// Makes the next iteration at least `floor + 1`.
    pub fn advance_iteration_to(&mut self, floor: u64) {
        self.iteration = self.iteration.max(floor);
    }

    /// Reads the system time for the stamps of the coming round.
    pub fn refresh_clock(&mut self) {
        self.clock.refresh();
    }

    /// The system time read at the last refresh, in microseconds.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The iteration of the last applied event.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// Number of topics holding an event (tombstones included).
    pub fn topics(&self) -> usize {
        self.topics
    }

    /// Applies a publish, calling `deliver` for every subscription whose
    /// prefix covers the topic when the event is new.
    pub fn publish(&mut self, d: Draft<'_>, mut deliver: impl FnMut(&S, &Event)) -> Applied {
        let Tree {
            root,
            iteration,
            clock,
            ids,
            topics,
        } = self;
        let leaf = root.descend_mut(d.topic);
        let current = leaf.value.as_ref();
        if d.mode == PublishMode::IfAbsent {
            if let Some(c) = current.filter(|c| !c.is_tombstone()) {
                return Applied::Present { current: c.clone() };
            }
        }
        let (kind, payload) = if d.mode == PublishMode::Delete {
            (EventKind::Tombstone, &[][..])
        } else {
            (EventKind::Value, d.payload)
        };
        let timestamp = match d.timestamp {
            Some(t) => {
                clock.observe(t);
                t
            }
            None => clock.stamp(current.map(Event::timestamp)),
        };
        let parts = EventParts {
            topic: d.topic,
            payload,
            timestamp,
            origin: d.origin,
            id: d.id.unwrap_or_else(|| ids.next_id()),
            iteration: 0,
            kind,
            source: d.source,
        };
        if let Some(c) = current {
            match parts.order_key().cmp(&c.order_key()) {
                std::cmp::Ordering::Equal => return Applied::Existing { event: c.clone() },
                std::cmp::Ordering::Less => {
                    return Applied::TooLate {
                        rejected: parts.encode(),
                        current: c.clone(),
                    }
                }
                std::cmp::Ordering::Greater => {}
            }
        }
        *iteration += 1;
        let event = EventParts {
            iteration: *iteration,
            ..parts
        }
        .encode();
        let previous = leaf.value.replace(event.clone());
        if previous.is_none() {
            *topics += 1;
        }
        let own = digest::value_digest(Some(&event));
        let change = own.wrapping_sub(std::mem::replace(&mut leaf.own_digest, own));
        let notified = Self::fan_out(root, d.topic, &event, change, &mut deliver);
        Applied::New {
            event,
            previous,
            notified,
        }
    }

    /// Puts back an event read from the log at start, keeping its iteration.
    /// Later events win by the same rule as publishes, so replaying a log
    /// (or a checkpoint plus the log after it) rebuilds the same table.
    pub fn restore(&mut self, event: Event) {
        let iteration = event.iteration();
        self.iteration = self.iteration.max(iteration);
        let topic = event.topic().to_owned();
        let node = self.root.descend_mut(&topic);
        match &node.value {
            Some(current) if current.cmp_order(&event) != std::cmp::Ordering::Less => {}
            Some(_) => node.value = Some(event),
            None => {
                node.value = Some(event);
                self.topics += 1;
            }
        }
        let own = digest::value_digest(node.value.as_ref());
        let change = own.wrapping_sub(std::mem::replace(&mut node.own_digest, own));
        let mut node = &mut self.root;
        node.max_iteration = node.max_iteration.max(iteration);
        node.digest = node.digest.wrapping_add(change);
        for seg in segments(&topic) {
            let Some(child) = node.children.get_mut(seg) else {
                break;
            };
            node = child;
            node.max_iteration = node.max_iteration.max(iteration);
            node.digest = node.digest.wrapping_add(change);
        }
    }

    /// Applies a complete event (from a peer) by the same rule, keeping
    /// its id, timestamp and origin; it gets this node's next iteration.
    pub fn apply(&mut self, event: &Event, deliver: impl FnMut(&S, &Event)) -> Applied {
        let draft = Draft {
            topic: event.topic(),
            payload: event.payload_bytes(),
            timestamp: Some(event.timestamp()),
            id: Some(event.id()),
            origin: event.origin(),
            mode: if event.is_tombstone() {
                PublishMode::Delete
            } else {
                PublishMode::Set
            },
            source: event.source(),
        };
        self.publish(draft, deliver)
    }

    fn fan_out(
        root: &mut Node<S>,
        topic: &str,
        event: &Event,
        digest_change: u64,
        deliver: &mut impl FnMut(&S, &Event),
    ) -> Counts {
        let mut counts = Counts::new();
        let mut node = root;
        let mut segs = segments(topic);
        loop {
            node.max_iteration = event.iteration();
            node.digest = node.digest.wrapping_add(digest_change);
            counts.push(node.subs.len() as u32);
            for s in node.subs.as_slice() {
                deliver(s, event);
            }
            let Some(seg) = segs.next() else { break };
            node = match node.children.get_mut(seg) {
                Some(child) => child,
                None => break, // unreachable: publish created the path
            };
        }
        counts
    }

    /// The digest of every live value.
    pub fn root_digest(&self) -> u64 {
        self.root.digest
    }

    /// The digests under `prefix` (see `spread_protocol::digest`): of the
    /// node's subtree when `bucket` is empty, else of its children in that
    /// bucket; the children listed when at most `digest::LIST_AT_MOST`, else
    /// the 16 sub-bucket digests. Costs a pass over the node's children,
    /// on the engine thread (see docs/cluster.md on wide nodes).
    pub fn digest(&self, prefix: &str, bucket: &[u8], req_id: u64) -> DigestReport {
        let mut report = DigestReport {
            req_id,
            digest: 0,
            own: None,
            entries: Vec::new(),
            buckets: Vec::new(),
        };
        let Some(node) = self.root.descend(prefix) else {
            return report;
        };
        if bucket.is_empty() {
            report.digest = node.digest;
            report.own = node.value.clone();
        }
        let depth = bucket.len();
        let mut count = 0;
        let mut sums = [0u64; 16];
        for child in node.children.values() {
            if digest::in_bucket(child.hash, bucket) {
                count += 1;
                if depth < digest::MAX_BUCKET_DEPTH {
                    let n = digest::nibble_at(child.hash, depth) as usize;
                    sums[n] = sums[n].wrapping_add(child.digest);
                }
                if !bucket.is_empty() {
                    report.digest = report.digest.wrapping_add(child.digest);
                }
            }
        }
        // Past the last nibble every child left has the same hash: listed.
        if count > digest::LIST_AT_MOST && depth < digest::MAX_BUCKET_DEPTH {
            report.buckets = sums.to_vec();
        } else {
            report.entries = node
                .children
                .iter()
                .filter(|(_, c)| digest::in_bucket(c.hash, bucket))
                .take(digest::MAX_LISTED)
                .map(|(name, c)| DigestEntry {
                    name: name.to_string(),
                    digest: c.digest,
                })
                .collect();
        }
        report
    }

    /// Whether `topic` holds an event, a tombstone included.
    pub fn holds(&self, topic: &str) -> bool {
        self.root.descend(topic).is_some_and(|n| n.value.is_some())
    }

    /// The latest live event of `topic` (not a tombstone).
    pub fn get(&self, topic: &str) -> Option<&Event> {
        self.root
            .descend(topic)?
            .value
            .as_ref()
            .filter(|e| !e.is_tombstone())
    }

    /// Registers `sub` on `prefix` and returns the snapshot: the latest event
    /// of every topic under it changed after `since` (tombstones only when
    /// `since > 0`), in no particular order.
    pub fn subscribe(&mut self, prefix: &Topic, since: u64, sub: S) -> Vec<Event> {
        self.register(prefix, sub);
        let Some(node) = self.root.descend(prefix.as_str()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        node.collect(since, since > 0, &mut out);
        out
    }

    /// Starts a walk of the subtree of `prefix`.
    pub fn walk(&self, prefix: &Topic) -> Walk {
        let stack = if prefix.is_root() {
            vec![(String::new(), self.root.children.keys().cloned().collect())]
        } else {
            vec![(String::new(), vec![prefix.as_str().into()])]
        };
        Walk { stack }
    }

    /// Visits up to `*budget` nodes of `walk` (counting them off), adding
    /// to `out` the events changed in `since + 1 ..= until` (tombstones
    /// too when `tombstones`), and skipping subtrees untouched since.
    pub fn walk_step(
        &self,
        walk: &mut Walk,
        since: u64,
        until: u64,
        tombstones: bool,
        budget: &mut usize,
        out: &mut Vec<Event>,
    ) {
        while *budget > 0 {
            let Some((parent, names)) = walk.stack.last_mut() else {
                return;
            };
            let Some(name) = names.pop() else {
                walk.stack.pop();
                continue;
            };
            let path = if parent.is_empty() {
                name.into_string()
            } else {
                format!("{parent}/{name}")
            };
            *budget -= 1;
            // Gone since the walk began: nothing of it predates the walk.
            let Some(node) = self.root.descend(&path) else {
                continue;
            };
            if node.max_iteration <= since {
                continue;
            }
            if let Some(v) = &node.value {
                let it = v.iteration();
                if it > since && it <= until && (tombstones || !v.is_tombstone()) {
                    out.push(v.clone());
                }
            }
            if !node.children.is_empty() {
                let names = node.children.keys().cloned().collect();
                walk.stack.push((path, names));
            }
        }
    }

    /// Visits up to `*budget` nodes of `walk` (a walk of the root) for a
    /// checkpoint: forgets the deletes below `cutoff` it meets (pruning the
    /// nodes they leave empty) and adds every other latest event to `out`.
    /// Returns the greatest iteration forgotten (0 if none).
    ///
    /// Between steps the tree changes, so the events gathered are each
    /// topic's latest *when visited*: restoring them and then the log after
    /// the iteration at which the walk began rebuilds the same table, since
    /// restoring keeps the greater event whatever the order.
    pub fn checkpoint_step(
        &mut self,
        walk: &mut Walk,
        cutoff: u64,
        budget: &mut usize,
        out: &mut Vec<Event>,
    ) -> u64 {
        let mut forgotten = 0;
        while *budget > 0 {
            let Some((parent, names)) = walk.stack.last_mut() else {
                break;
            };
            let Some(name) = names.pop() else {
                walk.stack.pop();
                continue;
            };
            let parent = parent.clone();
            *budget -= 1;
            // Gone since the walk began: its events are in the log after.
            let Some(parent_node) = self.root.descend_existing_mut(&parent) else {
                continue;
            };
            let Some(node) = parent_node.children.get_mut(&name) else {
                continue;
            };
            if node
                .value
                .as_ref()
                .is_some_and(|v| v.is_tombstone() && v.iteration() < cutoff)
            {
                if let Some(v) = node.value.take() {
                    forgotten = forgotten.max(v.iteration());
                    self.topics -= 1;
                }
            }
            if let Some(v) = &node.value {
                out.push(v.clone());
            }
            if node.is_empty() {
                parent_node.children.remove(&name);
                if parent_node.is_empty() {
                    // Ancestors emptied by the deletes forgotten below them.
                    let segs: SmallVec<[&str; 16]> = segments(&parent).collect();
                    self.root.prune(&segs);
                }
                continue;
            }
            if !node.children.is_empty() {
                let names = node.children.keys().cloned().collect();
                let path = if parent.is_empty() {
                    name.into_string()
                } else {
                    format!("{parent}/{name}")
                };
                walk.stack.push((path, names));
            }
        }
        forgotten
    }

    /// The subscription on `prefix` matching `pred`, to change it in place.
    pub fn subscriber_mut(
        &mut self,
        prefix: &Topic,
        pred: impl FnMut(&&mut S) -> bool,
    ) -> Option<&mut S> {
        let mut node = &mut self.root;
        for seg in prefix.segments() {
            node = node.children.get_mut(seg)?;
        }
        node.subs.iter_mut().find(pred)
    }

    /// Registers `sub` on `prefix` without a snapshot.
    pub fn register(&mut self, prefix: &Topic, sub: S) {
        self.root.descend_mut(prefix.as_str()).subs.push(sub);
    }

    /// Removes every subscription on `prefix` matching `pred`, in one pass
    /// over the prefix's subscriptions (closing a connection with many of
    /// them costs each prefix one pass, not one per subscription).
    pub fn unsubscribe_all(&mut self, prefix: &Topic, mut pred: impl FnMut(&S) -> bool) {
        let segs: SmallVec<[&str; 16]> = prefix.segments().collect();
        self.root.unsubscribe_all(&segs, &mut pred);
    }

    /// Removes the first subscription on `prefix` matching `pred`.
    pub fn unsubscribe(&mut self, prefix: &Topic, mut pred: impl FnMut(&S) -> bool) -> Option<S> {
        let segs: SmallVec<[&str; 16]> = prefix.segments().collect();
        self.root.unsubscribe(&segs, &mut pred)
    }

    /// Number of subscriptions registered exactly at `prefix`.
    #[cfg(test)]
    pub fn subscriptions_at(&self, prefix: &str) -> usize {
        self.root.descend(prefix).map_or(0, |n| n.subs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spread_protocol::TopicRules;

    /// A whole checkpoint walk: (events gathered, greatest forgotten).
    fn checkpoint(tr: &mut Tree<u32>, cutoff: u64) -> (usize, u64) {
        let mut walk = tr.walk(&Topic::root());
        let mut out = Vec::new();
        let forgotten = tr.checkpoint_step(&mut walk, cutoff, &mut usize::MAX.clone(), &mut out);
        assert!(walk.is_done());
        (out.len(), forgotten)
    }

    #[test]
    fn a_checkpoint_gathered_while_the_tree_changes_restores_the_same_table() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let mut x = seed | 1;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..20 {
            let mut tr = tree();
            let topic = |i: u64| format!("t/{}/{}", i % 7, i % 40);
            for i in 0..200 {
                tr.publish(set(&topic(i * 13), format!("a{i}").as_bytes()), |_, _| {});
            }
            let start = tr.iteration();
            let mut walk = tr.walk(&Topic::root());
            let mut gathered = Vec::new();
            let mut after = Vec::new();
            while !walk.is_done() {
                let mut budget = 1 + next(8) as usize;
                tr.checkpoint_step(&mut walk, 0, &mut budget, &mut gathered);
                for _ in 0..next(4) {
                    let mut d = set("", b"");
                    let name = topic(next(60));
                    let payload = format!("b{}", next(1000));
                    d.topic = &name;
                    d.payload = payload.as_bytes();
                    if next(4) == 0 {
                        d.mode = PublishMode::Delete;
                    }
                    if let Applied::New { event, .. } = tr.publish(d, |_, _| {}) {
                        after.push(event);
                    }
                }
            }
            // Recovery: the checkpoint, then the log after its iteration.
            let mut restored = tree();
            for e in gathered {
                restored.restore(e);
            }
            for e in after.into_iter().filter(|e| e.iteration() > start) {
                restored.restore(e);
            }
            assert_eq!(state(&restored), state(&tr), "seed {seed}");
        }
    }

    fn tree() -> Tree<u32> {
        Tree::new(
            Clock::with_source(|| 1_000),
            IdGen::with_prefix([9; 8]),
            100,
        )
    }

    fn t(s: &str) -> Topic {
        Topic::prefix(s, &TopicRules::default()).unwrap()
    }

    fn set<'a>(topic: &'a str, payload: &'a [u8]) -> Draft<'a> {
        Draft {
            topic,
            payload,
            timestamp: None,
            id: None,
            origin: "n1",
            mode: PublishMode::Set,
            source: 1,
        }
    }

    #[test]
    fn publish_assigns_iterations_and_reports_levels() {
        let mut tr = tree();
        tr.subscribe(&t(""), 0, 1);
        tr.subscribe(&t("a"), 0, 2);
        tr.subscribe(&t("a"), 0, 3);
        let mut got = Vec::new();
        let out = tr.publish(set("a/b", b"x"), |s, e| got.push((*s, e.iteration())));
        match out {
            Applied::New {
                event,
                previous,
                notified,
            } => {
                assert_eq!(event.iteration(), 101);
                assert!(previous.is_none());
                assert_eq!(&notified[..], &[1, 2, 0]);
            }
            other => panic!("{other:?}"),
        }
        got.sort();
        assert_eq!(got, [(1, 101), (2, 101), (3, 101)]);
    }

    #[test]
    fn a_walk_in_slices_finds_what_the_tree_held_when_it_began() {
        let mut tr = tree();
        for i in 0..300 {
            tr.publish(set(&format!("w/{}/{}", i % 7, i), b"v"), |_, _| {});
        }
        tr.publish(set("w", b"top"), |_, _| {});
        tr.publish(set("x/outside", b"v"), |_, _| {});
        let until = tr.iteration();
        let rewritten = tr.get("w/3/3").map(Event::iteration);
        let mut expected: Vec<u64> = tr
            .subscribe(&t("w"), 0, 0)
            .iter()
            .map(Event::iteration)
            .collect();
        expected.sort_unstable();
        let mut walk = tr.walk(&t("w"));
        let mut got = Vec::new();
        let mut slices = 0;
        while !walk.is_done() {
            let mut budget = 5;
            tr.walk_step(&mut walk, 0, until, false, &mut budget, &mut got);
            slices += 1;
            // Between slices the tree moves on: new topics, rewrites.
            tr.publish(set(&format!("w/new/{slices}"), b"n"), |_, _| {});
            tr.publish(set("w/3/3", b"again"), |_, _| {});
        }
        assert!(slices > 20);
        let mut iterations: Vec<u64> = got.iter().map(Event::iteration).collect();
        iterations.sort_unstable();
        // What changed after `until` is live's business, not the walk's:
        // the rewritten topic's old value is found only if the walk passed
        // it before the rewrite.
        expected.retain(|it| *it <= until);
        let missing: Vec<u64> = expected
            .iter()
            .copied()
            .filter(|it| !iterations.contains(it))
            .collect();
        assert!(
            missing.is_empty() || missing == [rewritten.unwrap()],
            "{missing:?}"
        );
        assert!(iterations.iter().all(|it| expected.contains(it)));
        // The root walks every topic.
        let mut all = Vec::new();
        let mut walk = tr.walk(&t(""));
        tr.walk_step(
            &mut walk,
            0,
            u64::MAX,
            false,
            &mut usize::MAX.clone(),
            &mut all,
        );
        assert!(walk.is_done());
        assert_eq!(all.len(), checkpoint(&mut tr, 0).0);
    }

    #[test]
    fn whole_segment_subscriptions_only() {
        let mut tr = tree();
        tr.subscribe(&t("a/b"), 0, 1);
        let mut hits = 0;
        tr.publish(set("a/bc", b"x"), |_, _| hits += 1);
        tr.publish(set("a", b"x"), |_, _| hits += 1);
        assert_eq!(hits, 0);
        tr.publish(set("a/b/c", b"x"), |_, _| hits += 1);
        assert_eq!(hits, 1);
    }

    #[test]
    fn if_absent_and_delete() {
        let mut tr = tree();
        let mut d = set("k", b"1");
        d.mode = PublishMode::IfAbsent;
        assert!(matches!(tr.publish(d, |_, _| {}), Applied::New { .. }));
        let mut d2 = set("k", b"2");
        d2.mode = PublishMode::IfAbsent;
        match tr.publish(d2, |_, _| {}) {
            Applied::Present { current } => assert_eq!(current.payload_bytes(), b"1"),
            other => panic!("{other:?}"),
        }
        let mut del = set("k", b"");
        del.mode = PublishMode::Delete;
        assert!(matches!(tr.publish(del, |_, _| {}), Applied::New { .. }));
        assert!(tr.get("k").is_none());
        // A deleted topic has no live value: if-absent applies again.
        assert!(matches!(tr.publish(d2, |_, _| {}), Applied::New { .. }));
        assert_eq!(tr.get("k").unwrap().payload_bytes(), b"2");
    }

    #[test]
    fn too_late_and_existing() {
        let mut tr = tree();
        let mut late = set("k", b"new");
        late.timestamp = Some(5_000);
        late.id = Some(EventId([1; 16]));
        assert!(matches!(tr.publish(late, |_, _| {}), Applied::New { .. }));
        assert!(matches!(
            tr.publish(late, |_, _| {}),
            Applied::Existing { .. }
        ));
        let mut early = set("k", b"old");
        early.timestamp = Some(4_000);
        match tr.publish(early, |_, _| {}) {
            Applied::TooLate { rejected, current } => {
                assert_eq!(rejected.iteration(), 0);
                assert_eq!(rejected.timestamp(), 4_000);
                assert_eq!(current.payload_bytes(), b"new");
            }
            other => panic!("{other:?}"),
        }
        // A stamped write follows the topic's (future) timestamp and wins.
        match tr.publish(set("k", b"now"), |_, _| {}) {
            Applied::New { event, .. } => assert_eq!(event.timestamp(), 5_001),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn snapshot_since_and_tombstones() {
        let mut tr = tree();
        tr.publish(set("a/x", b"1"), |_, _| {});
        tr.publish(set("a/y", b"2"), |_, _| {});
        tr.publish(set("b/z", b"3"), |_, _| {});
        let mut del = set("a/x", b"");
        del.mode = PublishMode::Delete;
        tr.publish(del, |_, _| {});
        let full = tr.subscribe(&t("a"), 0, 1);
        assert_eq!(full.len(), 1, "tombstones are not part of a fresh snapshot");
        assert_eq!(full[0].topic(), "a/y");
        let resumed = tr.subscribe(&t("a"), 102, 2);
        assert_eq!(resumed.len(), 1);
        assert!(
            resumed[0].is_tombstone(),
            "a resuming client learns of deletes"
        );
        assert_eq!(tr.subscribe(&t("a"), tr.iteration(), 3).len(), 0);
    }

    #[test]
    fn restore_keeps_iterations_and_the_winner() {
        let mut tr = tree();
        let ev = |it: u64, ts: u64, payload: &[u8]| {
            EventParts {
                topic: "r/s",
                payload,
                timestamp: ts,
                origin: "n1",
                id: EventId([it as u8; 16]),
                iteration: it,
                kind: EventKind::Value,
                source: 0,
            }
            .encode()
        };
        tr.restore(ev(500, 10, b"a"));
        tr.restore(ev(501, 20, b"b"));
        tr.restore(ev(502, 15, b"older"));
        let got = tr.get("r/s").unwrap();
        assert_eq!((got.iteration(), got.payload_bytes()), (501, &b"b"[..]));
        assert_eq!(tr.iteration(), 502);
        assert_eq!(tr.topics(), 1);
        // Snapshots since an iteration see restored events.
        assert_eq!(tr.subscribe(&t("r"), 500, 1).len(), 1);
        assert_eq!(tr.subscribe(&t("r"), 501, 2).len(), 0);
    }

    #[test]
    fn purging_old_tombstones_forgets_them_and_prunes() {
        let mut tr = tree();
        tr.publish(set("p/keep", b"v"), |_, _| {});
        tr.publish(set("p/gone/deep", b"v"), |_, _| {});
        let mut del = set("p/gone/deep", b"");
        del.mode = PublishMode::Delete;
        // A client-chosen timestamp from long ago does not make the delete
        // old: it was applied now, and is kept until the cutoff passes it.
        del.timestamp = Some(2_000);
        del.id = Some(EventId([7; 16]));
        tr.publish(del, |_, _| {});
        let tomb_it = tr.iteration();
        assert_eq!(tr.topics(), 2);
        // A cutoff before the delete keeps it.
        assert_eq!(checkpoint(&mut tr, 1), (2, 0));
        assert_eq!(checkpoint(&mut tr, tomb_it).1, 0);
        assert_eq!(checkpoint(&mut tr, u64::MAX), (1, tomb_it));
        assert_eq!(tr.topics(), 1);
        assert!(tr
            .root
            .children
            .get("p")
            .unwrap()
            .children
            .get("gone")
            .is_none());
        assert_eq!(checkpoint(&mut tr, 0).0, 1);
    }

    #[test]
    fn unsubscribe_prunes_empty_nodes() {
        let mut tr = tree();
        tr.subscribe(&t("x/y/z"), 0, 7);
        assert_eq!(tr.subscriptions_at("x/y/z"), 1);
        assert_eq!(tr.unsubscribe(&t("x/y/z"), |s| *s == 7), Some(7));
        assert!(tr.root.children.is_empty());
        assert_eq!(tr.unsubscribe(&t("x/y/z"), |s| *s == 7), None);
    }

    #[test]
    fn unsubscribing_all_of_a_connection_takes_one_pass_per_prefix() {
        let mut tr = tree();
        for i in 0..1_000 {
            // Subscriptions of "connections" 0 to 9 on the root and on x/y.
            tr.register(&t(""), i);
            tr.register(&t("x/y"), i);
        }
        tr.unsubscribe_all(&t(""), |s| s % 10 == 3);
        tr.unsubscribe_all(&t("x/y"), |s| s % 10 == 3);
        assert_eq!(tr.subscriptions_at(""), 900);
        assert_eq!(tr.subscriptions_at("x/y"), 900);
        tr.unsubscribe_all(&t("x/y"), |_| true);
        assert!(tr.root.children.is_empty(), "emptied nodes are pruned");
    }

    #[test]
    fn a_wide_node_answers_in_buckets_that_add_up() {
        let mut tr = tree();
        for i in 0..1_000 {
            let topic = format!("w/{i}");
            let applied = tr.publish(set(&topic, b"v"), |_, _| {});
            // A tree rebuilt from the log holds the same digests.
            if let Applied::New { event, .. } = applied {
                let mut again = tree();
                again.restore(event.clone());
                assert_eq!(
                    again.root_digest(),
                    digest::event_digest(&topic, &event.id())
                );
            }
        }
        let whole = tr.digest("w", b"", 0);
        assert_eq!(whole.digest, tr.root_digest());
        assert!(whole.entries.is_empty(), "1,000 children are not listed");
        assert_eq!(whole.buckets.len(), 16);
        let sum = whole.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b));
        assert_eq!(sum, whole.digest);
        // About 62 children per nibble: split again, then listed.
        let mut listed = 0;
        for n in 0..16u8 {
            let one = tr.digest("w", &[n], 0);
            assert_eq!(one.digest, whole.buckets[n as usize]);
            assert!(one.own.is_none());
            if one.buckets.is_empty() {
                listed += one.entries.len();
            } else {
                for m in 0..16u8 {
                    listed += tr.digest("w", &[n, m], 0).entries.len();
                }
            }
        }
        assert_eq!(listed, 1_000);
        // A delete takes its value out of every digest on its path.
        let before = tr.root_digest();
        let gone = tr.get("w/7").cloned().unwrap();
        let del = Draft {
            mode: PublishMode::Delete,
            ..set("w/7", b"")
        };
        tr.publish(del, |_, _| {});
        assert_eq!(
            before.wrapping_sub(tr.root_digest()),
            digest::event_digest("w/7", &gone.id())
        );
        assert!(tr.digest("w/7", b"", 0).own.unwrap().is_tombstone());
    }

    /// Every topic's state, iteration aside: what must converge.
    fn state(tr: &Tree<u32>) -> Vec<(String, u64, String, EventId, Vec<u8>, bool)> {
        let mut all = Vec::new();
        tr.root.collect(0, true, &mut all);
        let mut out: Vec<_> = all
            .iter()
            .map(|e| {
                (
                    e.topic().to_string(),
                    e.timestamp(),
                    e.origin().to_string(),
                    e.id(),
                    e.payload_bytes().to_vec(),
                    e.is_tombstone(),
                )
            })
            .collect();
        out.sort();
        out
    }

    mod convergence {
        use super::*;
        use proptest::prelude::*;

        /// Fully specified events, as peers and offline clients produce them.
        fn events() -> impl Strategy<Value = Vec<Event>> {
            proptest::collection::vec(
                (0..4usize, 0..6u64, 0..3usize, any::<u8>(), any::<bool>()),
                1..40,
            )
            .prop_map(|specs| {
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(n, (topic, ts, origin, byte, tomb))| {
                        spread_protocol::EventParts {
                            topic: ["a", "a/b", "a/b/c", "z"][topic],
                            payload: if tomb {
                                &[][..]
                            } else {
                                std::slice::from_ref(&byte)
                            },
                            timestamp: ts,
                            origin: ["n1", "n2", "n3"][origin],
                            id: EventId([n as u8; 16]),
                            iteration: 0,
                            kind: if tomb {
                                EventKind::Tombstone
                            } else {
                                EventKind::Value
                            },
                            source: origin as u64 + 1,
                        }
                        .encode()
                    })
                    .collect()
            })
        }

        proptest! {
            #[test]
            fn any_order_with_duplicates_converges(
                evs in events(),
                seed_a in any::<u64>(),
                seed_b in any::<u64>(),
                dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            ) {
                let mut with_dups = evs.clone();
                for d in &dups {
                    with_dups.push(d.get(&evs).clone());
                }
                let order = |seed: u64| {
                    let mut v = with_dups.clone();
                    // Deterministic shuffle from the seed.
                    let mut x = seed | 1;
                    for i in (1..v.len()).rev() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        v.swap(i, (x % (i as u64 + 1)) as usize);
                    }
                    v
                };
                let mut a = tree();
                let mut b = tree();
                let mut delivered_a = 0;
                for e in order(seed_a) {
                    if let Applied::New { .. } = a.apply(&e, |_, _| {}) {
                        delivered_a += 1;
                    }
                }
                for e in order(seed_b) {
                    b.apply(&e, |_, _| {});
                }
                prop_assert_eq!(state(&a), state(&b));
                // Same live values, same digests, however they arrived;
                // and each node's digest is the sum of the live values
                // under it, as if computed from scratch.
                prop_assert_eq!(a.root_digest(), b.root_digest());
                for prefix in ["", "a", "a/b", "a/b/c", "z"] {
                    let want = state(&a)
                        .iter()
                        .filter(|(topic, ..)| t(prefix).covers(topic))
                        .filter(|(.., tomb)| !tomb)
                        .fold(0u64, |sum, (topic, _, _, id, _, _)| {
                            sum.wrapping_add(digest::event_digest(topic, id))
                        });
                    prop_assert_eq!(a.digest(prefix, b"", 0).digest, want);
                    prop_assert_eq!(b.digest(prefix, b"", 0).digest, want);
                }
                // Each event is applied at most once per node.
                prop_assert!(delivered_a <= evs.len());
                // Iterations are strictly increasing and never reused.
                prop_assert_eq!(a.iteration(), 100 + delivered_a as u64);
            }
        }
    }
}
