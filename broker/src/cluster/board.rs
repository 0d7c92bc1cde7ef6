//! What the pullers report, for `peers` requests: each puller updates its
//! own entry; the engine copies them into the answer.

use parking_lot::Mutex;
use spread_protocol::PeerStatus;

/// One pull's entry.
struct Entry {
    status: PeerStatus,
    /// The timestamp of the last event applied from the peer (µs; 0:
    /// none yet), from which a pull that is not live reports its lag.
    last_event_us: u64,
}

/// The state of every pull.
#[derive(Default)]
pub(crate) struct PeerBoard {
    entries: Mutex<Vec<Entry>>,
}

impl PeerBoard {
    /// Adds a pull (state `connecting`) and returns its index.
    pub(crate) fn add(&self, address: &str, prefix: &str) -> usize {
        let mut entries = self.entries.lock();
        entries.push(Entry {
            status: PeerStatus {
                address: address.to_owned(),
                prefix: prefix.to_owned(),
                state: "connecting".into(),
                cursor: 0,
                peer_iteration: 0,
                applied: 0,
                refused: 0,
                last_error: None,
                received: 0,
                peer_node: String::new(),
                peer_incarnation: 0,
                exchanges: 0,
                exchange_requests: 0,
                lag_ms: 0,
                skipping: Vec::new(),
            },
            last_event_us: 0,
        });
        entries.len() - 1
    }

    /// Changes pull `i`'s entry.
    pub(crate) fn update(&self, i: usize, change: impl FnOnce(&mut PeerStatus)) {
        if let Some(entry) = self.entries.lock().get_mut(i) {
            change(&mut entry.status);
        }
    }

    /// Notes that pull `i` applied events up to one stamped `timestamp`
    /// (µs), `now` being this node's clock.
    pub(crate) fn applied_up_to(&self, i: usize, timestamp: u64, now: u64) {
        if let Some(entry) = self.entries.lock().get_mut(i) {
            entry.last_event_us = entry.last_event_us.max(timestamp);
            entry.status.lag_ms = now.saturating_sub(timestamp) / 1000;
        }
    }

    /// Every entry, in the order the pulls were started.
    pub(crate) fn report(&self) -> Vec<PeerStatus> {
        let now = crate::engine::clock::now_micros();
        self.entries
            .lock()
            .iter()
            .map(|e| {
                let mut status = e.status.clone();
                if status.state != "live" && e.last_event_us > 0 {
                    status.lag_ms = now.saturating_sub(e.last_event_us) / 1000;
                }
                status
            })
            .collect()
    }
}
