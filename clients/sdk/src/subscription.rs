//! A subscription: the snapshot of a prefix, then its live changes, as a
//! `Stream`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use spread_protocol::{Event, Request, Response};
use tokio::sync::mpsc;

use crate::client::Guard;
use crate::driver::Shared;
use crate::Error;

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The latest event of a topic (snapshot) or a change (live).
    Event(Event),
    /// Everything up to `iteration` has been delivered: the snapshot is
    /// complete. Sent again after each reconnection.
    Synced {
        /// The broker iteration covered.
        iteration: u64,
    },
    /// The subscription fell behind and `skipped` intermediate events were
    /// replaced by later ones; the latest value of every topic was delivered.
    Conflated {
        /// Events skipped.
        skipped: u64,
    },
    /// The broker cannot tell exactly what changed since the iteration asked
    /// for (the history was deleted by retention, or deletes were forgotten
    /// after their grace period): the latest value of every topic follows
    /// instead — replace your state with it — then live events.
    Truncated {
        /// The oldest iteration from which the broker could have answered
        /// exactly.
        oldest: u64,
    },
}

/// A live subscription. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Result<Item, Error>>,
    shared: Arc<Shared>,
    active: bool,
    /// Keeps the connection open while the subscription lives.
    _guard: Arc<Guard>,
}

impl Subscription {
    pub(crate) fn new(
        id: u64,
        rx: mpsc::Receiver<Result<Item, Error>>,
        shared: Arc<Shared>,
        guard: Arc<Guard>,
    ) -> Self {
        Subscription {
            id,
            rx,
            shared,
            active: true,
            _guard: guard,
        }
    }

    /// The subscription id (unique within its client).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The last iteration delivered: resuming from it misses nothing.
    pub fn last_iteration(&self) -> Option<u64> {
        self.shared.subs.lock().get(&self.id).map(|s| s.last)
    }

    /// The next item, or `None` when the subscription ended.
    pub async fn next_item(&mut self) -> Option<Result<Item, Error>> {
        self.rx.recv().await
    }

    /// The next event, skipping markers.
    pub async fn next_event(&mut self) -> Option<Result<Event, Error>> {
        loop {
            match self.rx.recv().await? {
                Ok(Item::Event(e)) => return Some(Ok(e)),
                Ok(_) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Ends the subscription and waits for the broker to confirm.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.active = false;
        self.shared.subs.lock().remove(&self.id);
        let req = Request::Unsubscribe {
            req_id: self.shared.next_id(),
            sub_id: self.id,
        };
        match self
            .shared
            .send(&req)?
            .await
            .map_err(|_| Error::Disconnected)??
        {
            Response::Unsubscribed { .. } => Ok(()),
            _ => Err(Error::Unexpected("expected unsubscribed")),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Item, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active && self.shared.subs.lock().remove(&self.id).is_some() {
            self.shared.send_and_forget(&Request::Unsubscribe {
                req_id: self.shared.next_id(),
                sub_id: self.id,
            });
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}
