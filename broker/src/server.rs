//! The listener: accepts connections, caps their number, and shuts down
//! gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection;
use crate::engine::{CheckpointPolicy, EngineHandle, RecentLimits, Services};
use crate::session::Stats;
use crate::sinks::{self, Prepared, Sinks};
use crate::tls::{self, TlsSource};
use crate::{node, BrokerError};

/// What every connection shares.
pub struct Shared {
    pub config: Config,
    /// Every configured bound, from `config`.
    pub limits: crate::limits::Limits,
    /// TLS acceptor; replaced when the certificate is reloaded.
    pub tls: parking_lot::RwLock<TlsAcceptor>,
    /// This node's id, also the origin of anonymous publishes.
    pub node_id: Arc<str>,
    /// This run of the node (the source of the events it accepts).
    pub incarnation: u64,
    /// Delivery counters.
    pub stats: Arc<Stats>,
    /// What the subscribers' queues may hold, together and each.
    pub subscriber_memory: Arc<crate::session::Budget>,
    /// Verifies client tokens.
    pub auth: crate::auth::Authenticator,
    /// What is durable under the policy: the iteration a welcome gives
    /// (never one a crash could take back and a restart reuse).
    committed: Arc<crate::log::committed::Committed>,
}

impl Shared {
    /// The current TLS acceptor.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.tls.read().clone()
    }

    /// Reads the certificate and key again; new connections use them,
    /// established ones keep theirs. On error the old ones stay.
    pub fn reload_tls(&self) {
        match tls::server_config(
            self.config.tls_files.as_ref(),
            &self.config.data_dir,
            self.config.tls_client_ca.as_deref(),
        ) {
            Ok((config, _)) => {
                *self.tls.write() = TlsAcceptor::from(config);
                tracing::info!("TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!("cannot reload the TLS certificate, keeping the old one: {e}")
            }
        }
    }

    /// The broker's iteration as far as it is durable.
    pub fn iteration(&self) -> u64 {
        self.committed.get()
    }
}

/// SIGHUP: reload the TLS certificate and key.
struct Reload {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Reload {
    fn new() -> Reload {
        #[cfg(unix)]
        {
            let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| {
                    tracing::warn!("cannot listen for SIGHUP (no certificate reload): {e}")
                })
                .ok();
            Reload { hup }
        }
        #[cfg(not(unix))]
        Reload {}
    }

    /// Completes at each SIGHUP.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(hup) = &mut self.hup {
            if hup.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// Accepts on the plain listener, or never when there is none.
async fn accept_plain(
    plain: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match plain {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// One connection counted against its address's limit while it lives.
struct PerIp {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

/// The address a connection counts against: IPv4 addresses as they are
/// (IPv4-mapped IPv6 ones too), IPv6 by their /64, the block one host is
/// usually given, so that a host cannot take every slot by rotating through
/// its own addresses.
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

impl PerIp {
    /// Counts a connection from `ip`, unless its address (see [`limit_key`])
    /// already has `max`.
    fn enter(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<PerIp> {
        let ip = limit_key(ip);
        let mut map = counts.lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIp {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A bound, not yet serving, broker.
pub struct Server {
    listener: TcpListener,
    /// The unencrypted loopback listener, when explicitly enabled.
    plain: Option<TcpListener>,
    shared: Arc<Shared>,
    engine: EngineHandle,
    sinks: Sinks,
    /// The pulls' status board, shared with the engine.
    peers: Arc<crate::cluster::board::PeerBoard>,
    tls_source: TlsSource,
}

use crate::limits::REFUSALS_AT_ONCE;

/// Refuses a connection over a limit: with an error frame while few
/// refusals are running, else by closing it at once.
fn refuse(
    tracker: &TaskTracker,
    refusals: &Arc<Semaphore>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    max: usize,
) {
    match refusals.clone().try_acquire_owned() {
        Ok(slot) => {
            let shared = shared.clone();
            tracker.spawn(async move {
                connection::refuse_busy(stream, peer, shared, max).await;
                drop(slot);
            });
        }
        Err(_) => {
            shared
                .stats
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
        }
    }
}

impl Server {
    /// Prepares the data dir, TLS and the engine, and binds the listener.
    pub async fn bind(config: Config) -> Result<Server, BrokerError> {
        // Only the broker's user may enter the data dir: it holds every
        // payload and the keys, which topic rights cannot protect on disk.
        std::fs::create_dir_all(&config.data_dir)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|source| BrokerError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        let node_id: Arc<str> = match &config.node_id {
            Some(id) => id.as_str().into(),
            None => node::load_or_create(&config.data_dir)?.into(),
        };
        // Anonymous clients write as the node.
        spread_protocol::check_origin(&node_id).map_err(|e| {
            crate::config::ConfigError::Invalid {
                name: "node_id",
                reason: e.to_string(),
            }
        })?;
        let incarnation = node::incarnation()?;
        let (tls_config, tls_source) = tls::server_config(
            config.tls_files.as_ref(),
            &config.data_dir,
            config.tls_client_ca.as_deref(),
        )?;
        let recent = RecentLimits {
            events: config.recent_events,
            bytes: 64 * 1024 * 1024,
        };
        let checkpoints = CheckpointPolicy {
            every: config.checkpoint_every,
            tombstone_grace: config.tombstone_grace,
        };
        // Plugins may run their own async runtimes, which cannot start on a
        // thread of this one: open them on a plain thread.
        let sinks = std::thread::scope(|s| {
            s.spawn(|| Prepared::load(&config.sinks, &config.data_dir, node_id.clone()))
                .join()
        })
        .map_err(|_| sinks::SinkError::Config("a sink plugin panicked while loading".into()))??;
        let peers = Arc::new(crate::cluster::board::PeerBoard::default());
        let log_options = config.log_options();
        let log_dir = log_options.dir.clone();
        let limits = crate::limits::Limits::of(&config);
        let reads =
            Arc::new(crate::reads::Reads::start(limits.reads).map_err(BrokerError::ReadThreads)?);
        let started = EngineHandle::start(
            log_options,
            recent,
            checkpoints,
            Services {
                sinks: sinks.board(),
                peers: peers.clone(),
                replay: sinks.replay(),
                node_id: node_id.clone(),
                incarnation,
                limits: limits.clone(),
                reads,
            },
        );
        let (engine, recovery) = match started {
            Ok(started) => started,
            Err(e) => {
                // Plugins may own runtimes, which cannot be dropped on a
                // thread of this one: the start fails with its error, not
                // with a panic.
                let _ = std::thread::spawn(move || drop(sinks)).join();
                return Err(e.into());
            }
        };
        let sinks = sinks.start(engine.committed(), &log_dir)?;
        tracing::info!(
            checkpoint = recovery.checkpoint,
            skipped_segments = recovery.skipped_segments,
            segments = recovery.segments,
            events = recovery.records,
            last_iteration = recovery.last_iteration,
            elapsed_ms = recovery.elapsed.as_millis() as u64,
            durability = ?config.durability,
            "event log recovered"
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let plain = match config.plain_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| BrokerError::Bind { addr, source })?;
                tracing::warn!(
                    addr = %l.local_addr().unwrap_or(addr),
                    "PLAIN TCP LISTENER ENABLED: traffic on it is unencrypted (loopback benchmarking only)"
                );
                Some(l)
            }
            None => None,
        };
        let auth = crate::auth::Authenticator::new(&config.auth)?;
        if !auth.has_keys() {
            tracing::warn!(
                "no authentication configured: accepting anonymous clients (--jwt-secret, --jwt-public-key or --jwks-file to require tokens)"
            );
        }
        let shared = Arc::new(Shared {
            auth,
            tls: parking_lot::RwLock::new(TlsAcceptor::from(tls_config)),
            node_id,
            incarnation,
            stats: Arc::default(),
            subscriber_memory: Arc::new(crate::session::Budget::new(
                limits.subscriber_buffer,
                limits.subscriber_memory,
            )),
            committed: engine.committed(),
            limits,
            config,
        });
        Ok(Server {
            listener,
            plain,
            shared,
            engine,
            sinks,
            peers,
            tls_source,
        })
    }

    /// The plain-TCP loopback listener's address, when enabled.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the TLS certificate came from.
    pub fn tls_source(&self) -> &TlsSource {
        &self.tls_source
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Serves until `signal` completes, then closes every connection with a
    /// `shutting_down` error and waits (up to 10 s) for them to finish.
    pub async fn run(self, signal: impl Future<Output = ()>) {
        let Server {
            listener,
            plain,
            shared,
            engine,
            sinks,
            peers,
            ..
        } = self;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(crate::fds::connections_allowed(
            shared.limits.connections,
        )));
        // Telling a client it is one too many costs a TLS handshake: only a
        // few at once; beyond, the connection is simply closed.
        let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
        let per_ip_counts: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        let mut reload = Reload::new();
        let sender = engine.sender();
        // Pullers stop with the connections: a stopping node takes nothing
        // more from its peers.
        crate::cluster::start(
            &shared.config.cluster,
            &shared.config.data_dir,
            crate::cluster::Local {
                node_id: shared.node_id.clone(),
                incarnation: shared.incarnation,
                engine: sender.clone(),
                committed: shared.committed.clone(),
                board: peers.clone(),
                direct: Default::default(),
            },
            &tracker,
            shutdown_rx.clone(),
        );
        tokio::pin!(signal);
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                _ = reload.recv() => {
                    shared.reload_tls();
                    continue;
                }
                a = listener.accept() => a.map(|(s, p)| (s, p, true)),
                a = accept_plain(plain.as_ref()) => a.map(|(s, p)| (s, p, false)),
                _ = &mut signal => break,
            };
            let (stream, peer, tls) = match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(5);
                    a
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, then retry.
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            // Over the broker-wide limit: told so, not left hanging.
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                let max = shared.limits.connections;
                refuse(&tracker, &refusals, stream, peer, &shared, max);
                continue;
            };
            let max_per_ip = shared.limits.connections_per_ip;
            let Some(per_ip) = PerIp::enter(&per_ip_counts, peer.ip(), max_per_ip) else {
                refuse(&tracker, &refusals, stream, peer, &shared, max_per_ip);
                continue;
            };
            let (shared, sender, shutdown) = (shared.clone(), sender.clone(), shutdown_rx.clone());
            tracker.spawn(async move {
                connection::serve(stream, peer, tls, shared, sender, shutdown).await;
                drop(per_ip);
                drop(permit);
            });
        }
        tracing::info!("shutting down: closing {} connections", tracker.len());
        drop(listener);
        drop(plain);
        let _ = shutdown_tx.send(true);
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within 10 s");
        }
        drop(sender);
        let stats = shared.stats.clone();
        drop(shared);
        // Stopped even if a connection task that timed out still holds a
        // sender: the shutdown checkpoint is written either way.
        let _ = tokio::task::spawn_blocking(move || engine.join()).await;
        // Sinks flush and record their checkpoints; one stuck in its plugin
        // resumes from its checkpoint at the next start.
        let _ = tokio::task::spawn_blocking(move || sinks.stop(Duration::from_secs(5))).await;
        tracing::info!(
            delivered = stats.delivered.load(Ordering::Relaxed),
            conflated = stats.conflated.load(Ordering::Relaxed),
            closed_slow_history = stats.closed_slow.load(Ordering::Relaxed),
            refused_connections = stats.refused_connections.load(Ordering::Relaxed),
            closed_for_bad_input = stats.closed_for_bad_input.load(Ordering::Relaxed),
            refused_subscriptions = stats.refused_subscriptions.load(Ordering::Relaxed),
            rate_limited = stats.rate_limited.load(Ordering::Relaxed),
            idle_closed = stats.idle_closed.load(Ordering::Relaxed),
            "stopped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_count_by_their_64_block() {
        let counts = Arc::default();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let first = PerIp::enter(&counts, a, 2).unwrap();
        let _second = PerIp::enter(&counts, b, 2).unwrap();
        assert!(PerIp::enter(&counts, b, 2).is_none(), "same /64");
        assert!(PerIp::enter(&counts, other, 2).is_some());
        drop(first);
        assert!(PerIp::enter(&counts, a, 2).is_some());
        // IPv4, plain or mapped, is one address.
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(limit_key(mapped), v4);
        assert_eq!(
            limit_key("192.0.2.8".parse().unwrap()),
            "192.0.2.8".parse::<IpAddr>().unwrap()
        );
    }
}
