//! What the pullers report, for `peers` requests: each puller updates its
//! own entry; the engine copies them into the answer.

use parking_lot::Mutex;
use spread_protocol::PeerStatus;

/// The state of every pull.
#[derive(Default)]
pub(crate) struct PeerBoard {
    entries: Mutex<Vec<PeerStatus>>,
}

impl PeerBoard {
    /// Adds a pull (state `connecting`) and returns its index.
    pub(crate) fn add(&self, address: &str, prefix: &str) -> usize {
        let mut entries = self.entries.lock();
        entries.push(PeerStatus {
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
        });
        entries.len() - 1
    }

    /// Changes pull `i`'s entry.
    pub(crate) fn update(&self, i: usize, change: impl FnOnce(&mut PeerStatus)) {
        if let Some(entry) = self.entries.lock().get_mut(i) {
            change(entry);
        }
    }

    /// Every entry, in the order the pulls were started.
    pub(crate) fn report(&self) -> Vec<PeerStatus> {
        self.entries.lock().clone()
    }
}
