//! The connection driver: establishes connections, runs the reader and the
//! writer, routes answers and deliveries, and reconnects with backoff,
//! resuming every subscription from the last iteration it delivered.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use spread_protocol::{
    ClientCodec, ErrorFrame, Hello, PeersReport, Request, Response, StatusReport, SubscribeMode,
    Topic, TopicRules, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::FramedRead;

use crate::config::ClientConfig;
use crate::replay::ReplayItem;
use crate::subscription::Item;
use crate::Error;

type Reader = FramedRead<ReadHalf<TlsStream<TcpStream>>, ClientCodec>;
type Writer = WriteHalf<TlsStream<TcpStream>>;

/// Bytes queued for the writer past which publishes without a report wait.
pub(crate) const QUEUED_AT_MOST: usize = 4 << 20;

/// A subscription as the driver tracks it.
pub(crate) struct SubState {
    pub prefix: Topic,
    pub mode: SubscribeMode,
    /// Events of this source are left out by the broker (0: none).
    pub skip_source: spread_protocol::Sources,
    /// Last iteration handed to the application; resume point.
    pub last: u64,
    /// With failover brokers: the conflict-order key of the last event
    /// delivered per topic, so that a resume on another node (whose
    /// iterations mean nothing here) delivers nothing older or equal.
    pub seen: Option<HashMap<String, OrderKeyOwned>>,
    pub tx: mpsc::Sender<Result<Item, Error>>,
}

/// An event's place in the conflict order (timestamp, origin, id), owned.
pub(crate) type OrderKeyOwned = (u64, Bytes, spread_protocol::EventId);

/// Bytes waiting to be written, and whether a connection is up.
pub(crate) struct Out {
    pub buf: BytesMut,
    pub connected: bool,
}

/// State shared by the client handles and the driver.
pub(crate) struct Shared {
    pub config: ClientConfig,
    pub rules: TopicRules,
    tls: TlsConnector,
    next_id: AtomicU64,
    pub out: Mutex<Out>,
    out_ready: Notify,
    /// Signalled each time the writer takes the queued bytes: publishers
    /// waiting for room in [`Out::buf`] try again.
    pub drained: Notify,
    /// Publishes sent without a report that the broker refused.
    pub unreported_refusals: AtomicU64,
    pub pending: Mutex<HashMap<u64, oneshot::Sender<Result<Response, Error>>>>,
    pub subs: Mutex<HashMap<u64, SubState>>,
    /// Running replays, by request id.
    pub replays: Mutex<HashMap<u64, mpsc::Sender<Result<ReplayItem, Error>>>>,
    pub node_id: Mutex<String>,
    /// The connected broker's incarnation (from its welcome).
    pub incarnation: std::sync::atomic::AtomicU64,
    /// Index in the candidates of the broker last connected to.
    current: AtomicUsize,
    /// The last connection reached another node than the one before:
    /// subscriptions resume from the latest values, not an iteration.
    moved: AtomicBool,
    pub shutdown: watch::Sender<bool>,
    /// Whether a connection is up; observers await changes.
    pub state: watch::Sender<bool>,
}

impl Shared {
    pub fn new(config: ClientConfig, tls: TlsConnector) -> Self {
        Shared {
            rules: config.topic_rules,
            config,
            tls,
            next_id: AtomicU64::new(1),
            out: Mutex::new(Out {
                buf: BytesMut::with_capacity(64 * 1024),
                connected: false,
            }),
            out_ready: Notify::new(),
            drained: Notify::new(),
            unreported_refusals: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            replays: Mutex::new(HashMap::new()),
            node_id: Mutex::new(String::new()),
            incarnation: Default::default(),
            current: AtomicUsize::new(0),
            moved: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            state: watch::channel(false).0,
        }
    }

    /// A fresh request id (also used as subscription id).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues `req` for the writer; its answer arrives on the returned channel.
    pub fn send(&self, req: &Request) -> Result<oneshot::Receiver<Result<Response, Error>>, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut out = self.out.lock();
            if !out.connected {
                return Err(Error::NotConnected);
            }
            if let Some(id) = req.req_id() {
                self.pending.lock().insert(id, tx);
            }
            req.encode(&mut out.buf);
        }
        self.out_ready.notify_one();
        Ok(rx)
    }

    /// Appends a publish that asks for no report, waiting while more than
    /// [`QUEUED_AT_MOST`] bytes are queued for the writer (the broker's own
    /// limit on requests in flight then holds the writer back).
    pub async fn publish_unreported(&self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        loop {
            {
                let mut out = self.out.lock();
                if !out.connected {
                    return Err(Error::NotConnected);
                }
                if out.buf.len() < QUEUED_AT_MOST {
                    spread_protocol::request::encode_publish(
                        &mut out.buf,
                        spread_protocol::NO_REPORT,
                        topic,
                        payload,
                        None,
                        None,
                        spread_protocol::PublishMode::Set,
                    );
                    drop(out);
                    self.out_ready.notify_one();
                    return Ok(());
                }
            }
            // Full: wait for the writer, registered before checking again
            // so that a drain in between still wakes this (and only now,
            // not on every publish: registering takes the Notify's lock).
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            let full = {
                let out = self.out.lock();
                out.connected && out.buf.len() >= QUEUED_AT_MOST
            };
            if full {
                drained.await;
            }
        }
    }

    /// Queues `req`, whose answers arrive on a stream (a subscription or a
    /// replay) rather than as one pending answer.
    pub fn send_streamed(&self, req: &Request) -> Result<(), Error> {
        let mut out = self.out.lock();
        if !out.connected {
            return Err(Error::NotConnected);
        }
        req.encode(&mut out.buf);
        drop(out);
        self.out_ready.notify_one();
        Ok(())
    }

    /// Queues `req` without waiting for an answer (its answer is ignored).
    pub fn send_and_forget(&self, req: &Request) {
        let mut out = self.out.lock();
        if out.connected {
            req.encode(&mut out.buf);
            drop(out);
            self.out_ready.notify_one();
        }
    }

    /// Marks the connection lost: unsent bytes are dropped and every pending
    /// request fails with [`Error::Disconnected`].
    fn disconnected(&self) {
        let mut out = self.out.lock();
        out.connected = false;
        out.buf.clear();
        let pending: Vec<_> = self.pending.lock().drain().collect();
        let replays: Vec<_> = self.replays.lock().drain().collect();
        drop(out);
        for (_, tx) in pending {
            let _ = tx.send(Err(Error::Disconnected));
        }
        // A replay cannot resume by itself: its stream ends with the error.
        for (_, tx) in replays {
            let _ = tx.try_send(Err(Error::Disconnected));
        }
        self.state.send_replace(false);
    }

    /// Marks a new connection up (the first one is marked by `Client::connect`
    /// before the driver starts) and queues a resuming subscribe for every
    /// live subscription, ahead of any new request.
    pub fn connected(&self) {
        let mut out = self.out.lock();
        out.connected = true;
        out.buf.clear();
        let moved = self.moved.swap(false, Ordering::AcqRel);
        for (id, sub) in self.subs.lock().iter_mut() {
            if moved {
                // Everything after iteration 1 of the new node: the latest
                // value of every topic, deletes included (a snapshot since
                // 0 would leave them out).
                sub.last = 1;
            }
            Request::Subscribe {
                req_id: *id,
                prefix: sub.prefix.clone(),
                since: sub.last,
                mode: sub.mode,
                skip_source: sub.skip_source,
            }
            .encode(&mut out.buf);
        }
        drop(out);
        self.out_ready.notify_one();
        self.state.send_replace(true);
    }
}

/// Connects to the first broker that answers, from the one last used on,
/// handshakes and returns the split stream.
pub(crate) async fn establish(shared: &Shared) -> Result<(Reader, Writer), Error> {
    let candidates: Vec<&str> = shared.config.candidates().collect();
    let start = shared.current.load(Ordering::Acquire);
    let mut last = None;
    for k in 0..candidates.len() {
        let i = (start + k) % candidates.len();
        match establish_with(shared, candidates[i]).await {
            Ok(conn) => {
                shared.current.store(i, Ordering::Release);
                return Ok(conn);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(Error::Unexpected("no broker to connect to")))
}

/// Connects to `server` and handshakes.
async fn establish_with(shared: &Shared, server: &str) -> Result<(Reader, Writer), Error> {
    let cfg = &shared.config;
    let fut = async {
        let tcp = TcpStream::connect(server)
            .await
            .map_err(|source| Error::Connect {
                addr: server.to_owned(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let name = cfg
            .server_name
            .clone()
            .unwrap_or_else(|| crate::config::host_of(server).to_string());
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|_| Error::Tls(format!("invalid server name {name:?}")))?;
        let tls = shared
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| Error::Tls(e.to_string()))?;
        let (rd, mut wr) = tokio::io::split(tls);
        let mut buf = BytesMut::new();
        Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_name: cfg.client_name.clone(),
            token: cfg.current_token(),
        })
        .encode(&mut buf);
        wr.write_all(&buf).await.map_err(|source| Error::Connect {
            addr: server.to_owned(),
            source,
        })?;
        wr.flush().await.map_err(|source| Error::Connect {
            addr: server.to_owned(),
            source,
        })?;
        let mut framed = FramedRead::with_capacity(rd, ClientCodec::default(), 64 * 1024);
        match framed.next().await {
            Some(Ok(Response::Welcome {
                node_id,
                incarnation,
                ..
            })) => {
                shared.incarnation.store(incarnation, Ordering::Release);
                let previous = std::mem::replace(&mut *shared.node_id.lock(), node_id.clone());
                if !previous.is_empty() && previous != node_id {
                    shared.moved.store(true, Ordering::Release);
                }
                Ok((framed, wr))
            }
            Some(Ok(Response::Error(e))) => Err(Error::Server {
                code: e.code,
                message: e.message,
            }),
            Some(Ok(_)) => Err(Error::Unexpected("expected welcome")),
            Some(Err(e)) => Err(e.into()),
            None => Err(Error::Connect {
                addr: server.to_owned(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
        }
    };
    tokio::time::timeout(cfg.connect_timeout, fut)
        .await
        .map_err(|_| Error::Timeout("connecting to the broker"))?
}

/// Runs connections until the client shuts down.
pub(crate) async fn drive(shared: Arc<Shared>, first: (Reader, Writer)) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut conn = first;
    loop {
        let fatal = tokio::select! {
            f = serve(&shared, conn) => f,
            _ = shutdown.changed() => None,
        };
        shared.disconnected();
        if *shutdown.borrow() {
            break;
        }
        if let Some(e) = &fatal {
            tracing::warn!(code = %e.code, "broker closed the connection: {}", e.message);
        }
        if !shared.config.reconnect {
            end_subscriptions(&shared);
            break;
        }
        let mut delay = shared.config.min_backoff;
        conn = loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            match establish(&shared).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::debug!("reconnect failed: {e}; next try in {delay:?}");
                    delay = (delay * 2).min(shared.config.max_backoff);
                }
            }
        };
        tracing::info!("reconnected to {}", shared.config.server);
        shared.connected();
    }
}

/// Ends every subscription stream with [`Error::Disconnected`].
fn end_subscriptions(shared: &Shared) {
    let subs: Vec<_> = shared.subs.lock().drain().collect();
    for (_, sub) in subs {
        let _ = sub.tx.try_send(Err(Error::Disconnected));
    }
}

/// Serves one connection until it fails; returns the broker's fatal error
/// frame if it sent one.
async fn serve(shared: &Shared, (mut reader, mut writer): (Reader, Writer)) -> Option<ErrorFrame> {
    let write = async {
        let mut local = BytesMut::with_capacity(64 * 1024);
        loop {
            shared.out_ready.notified().await;
            std::mem::swap(&mut shared.out.lock().buf, &mut local);
            shared.drained.notify_waiters();
            if local.is_empty() {
                continue;
            }
            if writer.write_all(&local).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            local.clear();
        }
    };
    let read = async {
        while let Some(frame) = reader.next().await {
            match frame {
                Ok(resp) => {
                    if let Err(fatal) = route(shared, resp).await {
                        return Some(fatal);
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot decode a frame from the broker: {e}");
                    return None;
                }
            }
        }
        None
    };
    // Keepalive pings, for brokers that close idle connections.
    let keepalive = async {
        match shared.config.keepalive {
            Some(every) => loop {
                tokio::time::sleep(every).await;
                shared.send_and_forget(&Request::Ping {
                    req_id: shared.next_id(),
                });
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        f = read => f,
        _ = write => None,
        _ = keepalive => None,
    }
}

/// Delivers one broker message; a connection-level error frame is `Err`.
async fn route(shared: &Shared, resp: Response) -> Result<(), ErrorFrame> {
    let (sub_id, item) = match resp {
        Response::Event { sub_id, event } if shared.replays.lock().contains_key(&sub_id) => {
            let tx = shared.replays.lock().get(&sub_id).cloned();
            if let Some(tx) = tx {
                // A full buffer makes the reader wait: backpressure to the broker.
                if tx.send(Ok(ReplayItem::Event(event))).await.is_err() {
                    shared.replays.lock().remove(&sub_id);
                }
            }
            return Ok(());
        }
        Response::ReplayComplete { req_id, count } => {
            let tx = shared.replays.lock().remove(&req_id);
            if let Some(tx) = tx {
                let _ = tx.send(Ok(ReplayItem::Complete(count))).await;
            }
            return Ok(());
        }
        Response::Event { sub_id, event } => {
            let mut subs = shared.subs.lock();
            let Some(sub) = subs.get_mut(&sub_id) else {
                return Ok(());
            };
            // Iterations of one subscription strictly increase: anything at or
            // below the resume point was delivered already.
            if event.iteration() <= sub.last {
                return Ok(());
            }
            if let Some(seen) = &mut sub.seen {
                let key = (event.timestamp(), event.origin_bytes(), event.id());
                match seen.get_mut(event.topic()) {
                    // Delivered already, or older than what was.
                    Some(prev) if *prev >= key => return Ok(()),
                    Some(prev) => *prev = key,
                    None => {
                        seen.insert(event.topic().to_owned(), key);
                    }
                }
            }
            sub.last = event.iteration();
            (sub_id, Item::Event(event))
        }
        Response::SnapshotComplete { sub_id, iteration } => {
            if let Some(sub) = shared.subs.lock().get_mut(&sub_id) {
                sub.last = sub.last.max(iteration);
            }
            (sub_id, Item::Synced { iteration })
        }
        Response::Conflated { sub_id, skipped } => (sub_id, Item::Conflated { skipped }),
        Response::HistoryTruncated { sub_id, oldest } => {
            // A full snapshot follows, older events included: accept them.
            if let Some(sub) = shared.subs.lock().get_mut(&sub_id) {
                sub.last = 0;
            }
            (sub_id, Item::Truncated { oldest })
        }
        Response::Error(e) => {
            let Some(id) = e.req_id else {
                return Err(e);
            };
            if id == spread_protocol::NO_REPORT {
                shared.unreported_refusals.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(code = ?e.code, "a publish sent without a report was refused: {}", e.message);
                return Ok(());
            }
            let err = Error::Server {
                code: e.code,
                message: e.message,
            };
            if let Some(tx) = shared.pending.lock().remove(&id) {
                let _ = tx.send(Err(err));
                return Ok(());
            }
            // A refused subscription or replay: end its stream with the error.
            let refused = shared.subs.lock().remove(&id);
            if let Some(sub) = refused {
                let _ = sub.tx.send(Err(err)).await;
                return Ok(());
            }
            let replay = shared.replays.lock().remove(&id);
            if let Some(tx) = replay {
                let _ = tx.send(Err(err)).await;
            }
            return Ok(());
        }
        Response::Report { req_id, .. }
        | Response::Value { req_id, .. }
        | Response::Pong { req_id }
        | Response::Unsubscribed { req_id }
        | Response::Status(StatusReport { req_id, .. })
        | Response::Peers(PeersReport { req_id, .. })
        | Response::Digest(spread_protocol::DigestReport { req_id, .. }) => {
            if let Some(tx) = shared.pending.lock().remove(&req_id) {
                let _ = tx.send(Ok(resp));
            }
            return Ok(());
        }
        Response::Welcome { .. } => return Ok(()),
    };
    let tx = shared.subs.lock().get(&sub_id).map(|s| s.tx.clone());
    if let Some(tx) = tx {
        // A full buffer makes the reader wait: the application's pace
        // propagates to the broker, which conflates instead of queueing.
        if tx.send(Ok(item)).await.is_err() {
            shared.subs.lock().remove(&sub_id);
        }
    }
    Ok(())
}
