//! Collects one engine round's items per connection, then hands each
//! connection its items in one push.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::connection::outbound::{Conn, Outbound};

/// Per-round staging of outbound items, keyed by connection.
#[derive(Default)]
pub struct Fanout {
    slots: Vec<(Arc<Conn>, Vec<Outbound>)>,
    index: HashMap<u64, usize>,
    /// Emptied vectors kept for the next round, so steady state allocates nothing.
    spare: Vec<Vec<Outbound>>,
}

impl Fanout {
    /// Stages `item` for `conn`.
    pub fn push(&mut self, conn: &Arc<Conn>, item: Outbound) {
        let Fanout {
            slots,
            index,
            spare,
        } = self;
        let slot = *index.entry(conn.id).or_insert_with(|| {
            slots.push((conn.clone(), spare.pop().unwrap_or_default()));
            slots.len() - 1
        });
        slots[slot].1.push(item);
    }

    /// Hands every connection its staged items.
    pub fn flush(&mut self) {
        for (conn, mut items) in self.slots.drain(..) {
            conn.push_batch(&mut items);
            self.spare.push(items);
        }
        self.index.clear();
    }
}
