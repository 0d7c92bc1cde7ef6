//! The Spread broker: a pub/sub server where every topic keeps its latest
//! value.
//!
//! Data path: [`connection`] tasks decode requests off TLS and send them in
//! batches to the [`engine`] thread, which applies them to the topic tree in
//! one total order and stages answers and deliveries per connection; each
//! connection's writer encodes what it takes into one buffer per TLS write.
//! See `docs/architecture.md`.

#![deny(missing_docs)]
// The settings! muncher takes a few steps per setting.
#![recursion_limit = "256"]
#![deny(clippy::unwrap_used, clippy::expect_used)]

// The crate's surface is what the binary, the fuzz target and the tests
// start a broker with; every module is private, so the compiler sees dead
// code and the docs needed are those of that surface.
mod auth;
mod cluster;
mod config;
mod connection;
mod durable;
mod engine;
mod fds;
mod limits;
mod log;
mod node;
mod reads;
mod replay;
mod server;
mod session;
mod sinks;
mod tls;

/// The topic tree, for `benches/tree.rs` only (`--features
/// bench-internals`): not a stable API.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod bench_internals {
    pub use crate::engine::clock::{Clock, IdGen};
    pub use crate::engine::tree::{Draft, Tree};
}

use std::net::SocketAddr;
use std::path::PathBuf;

pub use auth::AuthConfigError;
pub use config::{Args, Config, ConfigError};
pub use engine::EngineError;
pub use server::Server;
pub use sinks::config::SinkConfig;
pub use sinks::SinkError;
pub use tls::{load_certs, TlsError, TlsSource};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The data directory could not be used.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The engine could not start (log recovery included).
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// The authentication keys are unusable.
    #[error("authentication: {0}")]
    Auth(#[from] auth::AuthConfigError),
    /// The read pool's threads could not start.
    #[error("cannot start the read threads: {0}")]
    ReadThreads(std::io::Error),
    /// The system's random number source failed.
    #[error("no randomness from the system: {0}")]
    Random(String),
    /// A sink plugin could not be loaded or opened.
    #[error(transparent)]
    Sinks(#[from] sinks::SinkError),
}
