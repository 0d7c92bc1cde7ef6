//! The client handle: requests and subscriptions over one connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spread_protocol::{
    Delete, DigestQuery, DigestReport, Event, EventId, Outcome, PeersReport, Publish, Request,
    Response, Sources, StatusReport, SubscribeMode, Topic,
};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use crate::config::ClientConfig;
use crate::driver::{self, Shared, SubState};
use crate::replay::{Replay, ReplayStream};
use crate::subscription::Subscription;
use crate::{tls, Error};

/// Options of a publish beyond topic and payload.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOptions {
    /// Apply only if the topic has no live value.
    pub if_absent: bool,
    /// Event time in microseconds since the epoch (default: the broker's clock).
    pub timestamp: Option<u64>,
    /// Event id (requires `timestamp`): a retried publish with the same id
    /// and timestamp is reported `existing` instead of applied twice.
    pub id: Option<EventId>,
}

/// A connection to a Spread broker. Cheap to clone; all clones share the
/// connection. The connection closes when the last clone and the last
/// subscription are dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
}

/// Stops the driver when the last client handle and the last subscription
/// are dropped.
pub(crate) struct Guard(Arc<Shared>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.shutdown.send(true);
    }
}

impl Client {
    /// Connects and handshakes. Fails if the first attempt fails; later
    /// losses reconnect in the background when `config.reconnect` is set.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), spread_client::Error> {
    /// use spread_client::{Client, ClientConfig};
    /// let client = Client::connect(
    ///     ClientConfig::new("127.0.0.1:7411").ca_file("spread-data/tls/ca.pem"),
    /// )
    /// .await?;
    /// let report = client.publish("fleet/eu/truck-7", "42 km/h").await?;
    /// println!("{:?} at iteration {}", report.status(), report.summary().iteration());
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let tls = TlsConnector::from(tls::client_config(
            &config.trust,
            config.client_cert.as_ref(),
        )?);
        let shared = Arc::new(Shared::new(config, tls));
        let first = driver::establish(&shared).await?;
        shared.connected();
        tokio::spawn(driver::drive(shared.clone(), first));
        Ok(Client {
            _guard: Arc::new(Guard(shared.clone())),
            shared,
        })
    }

    /// The broker's node id, from the last handshake.
    pub fn node_id(&self) -> String {
        self.shared.node_id.lock().clone()
    }

    /// The connected broker's incarnation: the `source` of the events it
    /// accepts in its current run (drawn at every start).
    pub fn incarnation(&self) -> u64 {
        self.shared
            .incarnation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a connection is currently up.
    pub fn is_connected(&self) -> bool {
        self.shared.out.lock().connected
    }

    /// A watch of the connection state (`true` while connected), to await
    /// disconnections and reconnections.
    pub fn connection_state(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.state.subscribe()
    }

    fn topic(&self, s: &str) -> Result<Topic, Error> {
        Ok(Topic::new(s, &self.shared.rules)?)
    }

    async fn call(&self, req: Request) -> Result<Response, Error> {
        self.shared
            .send(&req)?
            .await
            .map_err(|_| Error::Disconnected)?
    }

    async fn publish_request(&self, req: Request) -> Result<Outcome, Error> {
        match self.call(req).await? {
            Response::Report { outcome, .. } => Ok(outcome),
            _ => Err(Error::Unexpected("expected a report")),
        }
    }

    /// Sets `topic` to `payload` (last writer wins).
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<Outcome, Error> {
        self.publish_with(topic, payload, PublishOptions::default())
            .await
    }

    /// Sets `topic` to `payload` without asking for a report, the way a
    /// telemetry producer uses NATS core or MQTT QoS 0: no answer comes
    /// back, so nothing is allocated or tracked per publish, and many
    /// publishes share each write. The broker still logs the event before
    /// it delivers it; a refusal is only counted
    /// ([`Client::unreported_refusals`]) and logged. It returns once the
    /// publish is queued for the connection (waiting while 4 MiB are
    /// queued already); [`Error::NotConnected`] when no connection is up,
    /// and nothing is resent after a reconnection.
    ///
    /// The broker handles a connection's requests in order and answers a
    /// publish once its round is logged, so the report of a
    /// [`Client::publish`] sent after these says they are logged too.
    pub async fn publish_nowait(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<(), Error> {
        self.shared.rules.check(topic, false)?;
        self.shared
            .publish_unreported(topic, payload.as_ref())
            .await
    }

    /// Publishes sent with [`Client::publish_nowait`] that the broker
    /// refused, since the client started.
    pub fn unreported_refusals(&self) -> u64 {
        self.shared
            .unreported_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets `topic` to `payload` only if it has no live value; otherwise the
    /// outcome is [`Outcome::Present`] with the current event.
    pub async fn publish_if_absent(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Outcome, Error> {
        let opts = PublishOptions {
            if_absent: true,
            ..PublishOptions::default()
        };
        self.publish_with(topic, payload, opts).await
    }

    /// Publishes with explicit options.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        opts: PublishOptions,
    ) -> Result<Outcome, Error> {
        let p = Publish {
            req_id: self.shared.next_id(),
            topic: self.topic(topic)?,
            payload: payload.into(),
            timestamp: opts.timestamp,
            id: opts.id.filter(|_| opts.timestamp.is_some()),
        };
        self.publish_request(if opts.if_absent {
            Request::PublishIfAbsent(p)
        } else {
            Request::Publish(p)
        })
        .await
    }

    /// Deletes `topic` (a tombstone event, ordered like any write).
    pub async fn delete(&self, topic: &str) -> Result<Outcome, Error> {
        let d = Delete {
            req_id: self.shared.next_id(),
            topic: self.topic(topic)?,
            timestamp: None,
            id: None,
        };
        self.publish_request(Request::Delete(d)).await
    }

    /// The latest event of `topic`, or `None` if it has no live value.
    pub async fn get(&self, topic: &str) -> Result<Option<Event>, Error> {
        let req = Request::Get {
            req_id: self.shared.next_id(),
            topic: self.topic(topic)?,
        };
        match self.call(req).await? {
            Response::Value { event, .. } => Ok(event),
            _ => Err(Error::Unexpected("expected a value")),
        }
    }

    /// Subscribes to every topic under `prefix` (`""` for all): the snapshot
    /// first, then live changes.
    ///
    /// ```no_run
    /// # async fn demo(client: spread_client::Client) -> Result<(), spread_client::Error> {
    /// use futures_util::StreamExt;
    /// use spread_client::Item;
    /// let mut sub = client.subscribe("fleet/eu").await?;
    /// while let Some(item) = sub.next().await {
    ///     match item? {
    ///         Item::Event(e) => println!("{} = {:?}", e.topic(), e.payload()),
    ///         Item::Synced { iteration } => println!("snapshot complete at {iteration}"),
    ///         Item::Conflated { skipped } => println!("fell behind, skipped {skipped}"),
    ///         Item::Truncated { oldest } => println!("history starts at {oldest}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, prefix: &str) -> Result<Subscription, Error> {
        self.subscribe_since(prefix, 0).await
    }

    /// Subscribes, receiving only what changed after iteration `since`
    /// (deletes included, so a resumed copy of the state stays exact).
    pub async fn subscribe_since(&self, prefix: &str, since: u64) -> Result<Subscription, Error> {
        self.open_subscription(prefix, since, SubscribeMode::Latest, Sources::default())
    }

    /// Subscribes in history mode: *every* event under `prefix` after
    /// iteration `since`, in iteration order (read back from the broker's
    /// log), then live events, with no gap and no duplicate. After a
    /// reconnection it resumes in the same mode from the last iteration
    /// delivered. This is how consumers that must see every change (sinks,
    /// audit tails) subscribe.
    pub async fn subscribe_history(&self, prefix: &str, since: u64) -> Result<Subscription, Error> {
        self.open_subscription(prefix, since, SubscribeMode::History, Sources::default())
    }

    /// [`Client::subscribe_history`], leaving out the events whose source
    /// is one of `sources` (a `u64` names one; see
    /// [`Event::source`](spread_protocol::Event::source)): how a cluster
    /// node pulls from a peer without getting back what it sent, nor what
    /// it receives from their sources directly. Snapshots (after
    /// `Item::Truncated`) are not filtered.
    pub async fn subscribe_history_skipping(
        &self,
        prefix: &str,
        since: u64,
        sources: impl Into<Sources>,
    ) -> Result<Subscription, Error> {
        self.open_subscription(prefix, since, SubscribeMode::History, sources.into())
    }

    fn open_subscription(
        &self,
        prefix: &str,
        since: u64,
        mode: SubscribeMode,
        skip_source: Sources,
    ) -> Result<Subscription, Error> {
        let prefix = Topic::prefix(prefix, &self.shared.rules)?;
        let id = self.shared.next_id();
        let (tx, rx) = mpsc::channel(self.shared.config.subscription_buffer.max(1));
        self.shared.subs.lock().insert(
            id,
            SubState {
                prefix: prefix.clone(),
                mode,
                skip_source,
                last: since,
                seen: (!self.shared.config.failover.is_empty()).then(Default::default),
                tx,
            },
        );
        let req = Request::Subscribe {
            req_id: id,
            prefix,
            since,
            mode,
            skip_source,
        };
        // Deliveries and a refusal both arrive on the subscription's stream.
        if let Err(e) = self.shared.send_streamed(&req) {
            self.shared.subs.lock().remove(&id);
            return Err(e);
        }
        Ok(Subscription::new(
            id,
            rx,
            self.shared.clone(),
            self._guard.clone(),
        ))
    }

    /// Round-trip time of a ping.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        match self
            .call(Request::Ping {
                req_id: self.shared.next_id(),
            })
            .await?
        {
            Response::Pong { .. } => Ok(start.elapsed()),
            _ => Err(Error::Unexpected("expected a pong")),
        }
    }

    /// Replays archived events (from the broker's SQL archive), in CmRDT
    /// order: timestamp, then origin, then id.
    pub async fn replay(&self, replay: &Replay) -> Result<ReplayStream, Error> {
        let query = replay.to_query(&self.shared.rules)?;
        let id = self.shared.next_id();
        let (tx, rx) = mpsc::channel(self.shared.config.subscription_buffer.max(1));
        self.shared.replays.lock().insert(id, tx);
        if let Err(e) = self
            .shared
            .send_streamed(&Request::Replay { req_id: id, query })
        {
            self.shared.replays.lock().remove(&id);
            return Err(e);
        }
        Ok(ReplayStream::new(rx, self._guard.clone()))
    }

    /// The broker's status: iterations, retention and every sink's state,
    /// checkpoint, lag and errors.
    pub async fn status(&self) -> Result<StatusReport, Error> {
        match self
            .call(Request::Status {
                req_id: self.shared.next_id(),
            })
            .await?
        {
            Response::Status(report) => Ok(report),
            _ => Err(Error::Unexpected("expected a status report")),
        }
    }

    /// How the broker's pulls from its peers are doing (docs/cluster.md).
    pub async fn peers(&self) -> Result<PeersReport, Error> {
        match self
            .call(Request::Peers {
                req_id: self.shared.next_id(),
            })
            .await?
        {
            Response::Peers(report) => Ok(report),
            _ => Err(Error::Unexpected("expected a peers report")),
        }
    }

    /// The digests of the latest values under `prefix`, for the children
    /// in `bucket` (a nibble path; empty: the node itself and all its
    /// children). See `spread_protocol::digest` and docs/cluster.md: this
    /// is how a cluster node finds what it lacks without the whole state.
    pub async fn digest(&self, prefix: &str, bucket: &[u8]) -> Result<DigestReport, Error> {
        let query = DigestQuery {
            req_id: self.shared.next_id(),
            prefix: Topic::prefix(prefix, &self.shared.rules)?,
            bucket: bytes::Bytes::copy_from_slice(bucket),
        };
        match self.call(Request::Digest(query)).await? {
            Response::Digest(report) => Ok(report),
            _ => Err(Error::Unexpected("expected a digest")),
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.shared.config.server)
            .finish()
    }
}
