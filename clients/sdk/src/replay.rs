//! A replay: archived events, in CmRDT order, as a `Stream` that ends after
//! the last one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use spread_protocol::{Event, Topic, TopicRules};
use tokio::sync::mpsc;

use crate::client::Guard;
use crate::Error;

/// Which archived events to replay; unset bounds are open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Topic prefixes (whole segments); none means every topic.
    pub prefixes: Vec<String>,
    /// Earliest timestamp (µs since the epoch), inclusive.
    pub from_time: Option<u64>,
    /// Latest timestamp (µs), exclusive.
    pub to_time: Option<u64>,
    /// Lowest iteration (of the node that applied the events), inclusive.
    pub from_iteration: Option<u64>,
    /// Highest iteration, exclusive.
    pub to_iteration: Option<u64>,
    /// Most events.
    pub limit: Option<u64>,
}

impl Replay {
    /// Everything under `prefix`.
    pub fn prefix(prefix: &str) -> Replay {
        Replay {
            prefixes: vec![prefix.to_owned()],
            ..Replay::default()
        }
    }

    pub(crate) fn to_query(
        &self,
        rules: &TopicRules,
    ) -> Result<spread_protocol::ReplayQuery, Error> {
        Ok(spread_protocol::ReplayQuery {
            prefixes: self
                .prefixes
                .iter()
                .map(|p| Topic::prefix(p, rules))
                .collect::<Result<_, _>>()?,
            from_time: self.from_time,
            to_time: self.to_time,
            from_iteration: self.from_iteration,
            to_iteration: self.to_iteration,
            limit: self.limit,
        })
    }
}

/// What the driver sends a replay stream.
#[derive(Debug)]
pub(crate) enum ReplayItem {
    Event(Event),
    Complete(u64),
}

/// A running replay: yields the events, then ends. A lost connection ends
/// it with [`Error::Disconnected`] (replays do not resume by themselves:
/// start again from the last event's timestamp).
pub struct ReplayStream {
    rx: mpsc::Receiver<Result<ReplayItem, Error>>,
    count: Option<u64>,
    _guard: Arc<Guard>,
}

impl ReplayStream {
    pub(crate) fn new(rx: mpsc::Receiver<Result<ReplayItem, Error>>, guard: Arc<Guard>) -> Self {
        ReplayStream {
            rx,
            count: None,
            _guard: guard,
        }
    }

    /// The number of events the broker sent, once the stream has ended.
    pub fn count(&self) -> Option<u64> {
        self.count
    }
}

impl Stream for ReplayStream {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.count.is_some() {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(ReplayItem::Event(e)))) => Poll::Ready(Some(Ok(e))),
            Poll::Ready(Some(Ok(ReplayItem::Complete(n)))) => {
                self.count = Some(n);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(Error::Disconnected))),
            Poll::Pending => Poll::Pending,
        }
    }
}
