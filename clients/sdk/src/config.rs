//! How to reach and trust a broker.

use std::path::PathBuf;
use std::time::Duration;

/// Which certificates the client trusts.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// The operating system's root certificates.
    #[default]
    System,
    /// A PEM file of CA certificates (for example `<data-dir>/tls/ca.pem`).
    CaFile(PathBuf),
    /// The operating system's root certificates and those of a PEM file
    /// (how a cluster node trusts peers by default: certificates from a
    /// public CA, or from the cluster's own).
    SystemAndCaFile(PathBuf),
    /// Accept any certificate. For development only: it gives no protection
    /// against an attacker on the network.
    Insecure,
}

/// Supplies a fresh token at every (re)connection.
pub type TokenRefresher = std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Connection settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port` of the broker.
    pub server: String,
    /// Other brokers of the same cluster, tried in order after `server`
    /// when it cannot be reached (see [`ClientConfig::servers`]).
    pub failover: Vec<String>,
    /// Name to verify in the certificate (default: the host of `server`).
    pub server_name: Option<String>,
    /// Trusted certificates.
    pub trust: Trust,
    /// Bearer token sent in the handshake.
    pub token: Option<String>,
    /// Called at every (re)connection for the token to send, instead of
    /// `token`: a connection closed because its token expired reconnects
    /// with a fresh one.
    pub token_refresher: Option<TokenRefresher>,
    /// A client certificate chain and its key (PEM files), for brokers
    /// that require mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name reported to the broker, for its logs.
    pub client_name: String,
    /// Reconnect automatically after a lost connection.
    pub reconnect: bool,
    /// First reconnection delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnection delay.
    pub max_backoff: Duration,
    /// Time allowed for TCP, TLS and protocol handshakes together.
    pub connect_timeout: Duration,
    /// Events buffered per subscription before the client stops reading
    /// (and the broker starts conflating).
    pub subscription_buffer: usize,
    /// Ping the broker this often, so that a broker with an idle timeout
    /// keeps a quiet connection (a subscriber that only listens) open.
    pub keepalive: Option<Duration>,
    /// The topic rules checked before sending (the broker checks its own
    /// again): set them to a broker's `--max-topic-len` and
    /// `--max-topic-depth` when those are raised.
    pub topic_rules: spread_protocol::TopicRules,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_refresher", &self.token_refresher.is_some())
            .field("client_name", &self.client_name)
            .field("reconnect", &self.reconnect)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// Settings for `server` with defaults for everything else.
    pub fn new(server: impl Into<String>) -> Self {
        ClientConfig {
            server: server.into(),
            failover: Vec::new(),
            server_name: None,
            trust: Trust::System,
            token: None,
            token_refresher: None,
            client_cert: None,
            client_name: format!("spread-client/{}", env!("CARGO_PKG_VERSION")),
            reconnect: true,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            subscription_buffer: 8192,
            keepalive: Some(Duration::from_secs(30)),
            topic_rules: spread_protocol::TopicRules::default(),
        }
    }

    /// Brokers of one cluster (docs/cluster.md), the first preferred. The
    /// client connects to one and, when it is lost, to the next that
    /// answers. A subscription resumes on another node from the latest
    /// values and delivers only events later (in the conflict order) than
    /// what it delivered for their topic: no duplicate, never backwards.
    /// Iterations are per node: compare them only within one node.
    pub fn servers<S: Into<String>>(mut self, servers: impl IntoIterator<Item = S>) -> Self {
        let mut all = servers.into_iter().map(Into::into);
        if let Some(first) = all.next() {
            self.server = first;
        }
        self.failover = all.collect();
        self
    }

    /// `server`, then the failover brokers.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.server.as_str()).chain(self.failover.iter().map(String::as_str))
    }

    /// Trusts the CA certificates in `path`.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trust = Trust::CaFile(path.into());
        self
    }

    /// Trusts the system's roots and the CA certificates in `path`.
    pub fn system_roots_and_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trust = Trust::SystemAndCaFile(path.into());
        self
    }

    /// Accepts any certificate (development only).
    pub fn insecure(mut self) -> Self {
        self.trust = Trust::Insecure;
        self
    }

    /// Sends `token` in the handshake.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Presents the certificate chain in `cert` and the key in `key` (PEM).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Asks `refresh` for the token at every (re)connection.
    pub fn token_refresher(
        mut self,
        refresh: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.token_refresher = Some(std::sync::Arc::new(refresh));
        self
    }

    /// The token for the next connection.
    pub(crate) fn current_token(&self) -> Option<String> {
        match &self.token_refresher {
            Some(refresh) => refresh(),
            None => self.token.clone(),
        }
    }
}

/// The host part of `host:port` (without brackets for IPv6).
pub(crate) fn host_of(s: &str) -> &str {
    let host = match s.rfind(':') {
        Some(i) if !s[..i].contains(':') || s.starts_with('[') => &s[..i],
        _ => s,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_server() {
        assert_eq!(host_of("localhost:7411"), "localhost");
        assert_eq!(host_of("127.0.0.1:7411"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7411"), "::1");
    }

    #[test]
    fn servers_are_the_first_then_the_failover_ones() {
        let c = ClientConfig::new("unused:1").servers(["a:1", "b:2", "c:3"]);
        assert_eq!(c.server, "a:1");
        assert_eq!(c.candidates().collect::<Vec<_>>(), ["a:1", "b:2", "c:3"]);
        let one = ClientConfig::new("x:1");
        assert_eq!(one.candidates().collect::<Vec<_>>(), ["x:1"]);
    }
}
