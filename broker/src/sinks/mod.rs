//! Sinks: plugins that receive every event of the durable log.
//!
//! Each configured sink is loaded at start (a library that cannot be loaded,
//! lacks the entry symbol or speaks another ABI version stops the start),
//! opened, and driven by its own thread ([`runner`]) from its checkpoint in
//! `<data-dir>/sinks/<name>.checkpoint`. Delivery is at least once: after a
//! crash, events since the last checkpoint come again, each with its unique
//! id. Retention keeps what a sink has not consumed unless the sink is
//! configured not to hold it, in which case the sink is told what it missed.
//! Operators see each sink's state, checkpoint, lag and errors in status
//! reports ([`status`]).

pub mod builtin;
pub mod config;
pub(crate) mod dead_letter;
pub mod driver;
pub mod library;
pub mod runner;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use config::SinkConfig;
use driver::{Driver, Factory};
use runner::{Runner, Stop};
use spread_plugin::OpenContext;
use status::{SinkBoard, SinkShared};

use crate::log::committed::Committed;
use crate::log::{retention, LogError};

/// Why the sinks could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A sink's configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// A plugin library could not be used.
    #[error("sink {name}: {source}")]
    Load {
        /// The sink.
        name: String,
        /// Why.
        source: library::LoadError,
    },
    /// The plugin refused its settings.
    #[error("sink {name}: cannot open: {message}")]
    Open {
        /// The sink.
        name: String,
        /// The plugin's message.
        message: String,
    },
    /// The checkpoint could not be read.
    #[error("sink {name}: {source}")]
    Checkpoint {
        /// The sink.
        name: String,
        /// Why.
        source: LogError,
    },
    /// A thread could not start.
    #[error("cannot start sink {name}: {source}")]
    Thread {
        /// The sink.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A sink loaded at start: its configuration, plugin, instance (unless
/// opening must be retried) and status.
type Loaded = (
    SinkConfig,
    Arc<dyn Factory>,
    Option<Box<dyn Driver>>,
    Arc<SinkShared>,
);

/// Sinks loaded and opened, not yet running.
pub struct Prepared {
    sinks: Vec<Loaded>,
    replay: Option<Arc<crate::replay::ReplaySource>>,
    board: Arc<SinkBoard>,
    data_dir: PathBuf,
    node: Arc<str>,
}

impl Prepared {
    /// Loads and opens every enabled sink of `configs`. A retryable open
    /// failure (a destination down) does not stop the start: the sink's
    /// thread retries. Everything else does.
    pub fn load(
        configs: &[SinkConfig],
        data_dir: &Path,
        node: Arc<str>,
    ) -> Result<Prepared, SinkError> {
        Self::load_with(configs, data_dir, node, |c| {
            if let Some(name) = &c.builtin {
                return builtin::factory(name).ok_or_else(|| {
                    SinkError::Config(format!(
                        "sink {}: no built-in sink {name:?} (built in: {})",
                        c.name,
                        builtin::NAMES.join(", ")
                    ))
                });
            }
            let path = c.library.clone().unwrap_or_default();
            library::Library::load(&path)
                .map(|lib| Arc::new(lib) as Arc<dyn Factory>)
                .map_err(|source| SinkError::Load {
                    name: c.name.clone(),
                    source,
                })
        })
    }

    /// As [`load`](Prepared::load), with plugins made by `factory`.
    pub fn load_with(
        configs: &[SinkConfig],
        data_dir: &Path,
        node: Arc<str>,
        mut factory: impl FnMut(&SinkConfig) -> Result<Arc<dyn Factory>, SinkError>,
    ) -> Result<Prepared, SinkError> {
        let dir = checkpoints_dir(data_dir);
        let mut sinks = Vec::new();
        let mut replay = None;
        for (i, c) in configs.iter().enumerate() {
            c.validate().map_err(SinkError::Config)?;
            if configs[..i].iter().any(|o| o.name == c.name) {
                return Err(SinkError::Config(format!("two sinks are named {}", c.name)));
            }
            if !c.enabled {
                tracing::info!(sink = c.name, "sink disabled");
                continue;
            }
            let plugin = factory(c)?;
            let checkpoint = retention::load_value(&dir, &runner::checkpoint_name(&c.name))
                .map_err(|source| SinkError::Checkpoint {
                    name: c.name.clone(),
                    source,
                })?
                .unwrap_or(0);
            let settings = c.settings_json();
            let args = OpenContext {
                name: &c.name,
                config_json: &settings,
                node: &node,
                data_dir,
            };
            let driver = match plugin.open(&args) {
                Ok(d) => Some(d),
                Err(spread_plugin::Error::Retryable(m)) => {
                    tracing::warn!(sink = c.name, "cannot open yet, will retry: {m}");
                    None
                }
                Err(
                    spread_plugin::Error::Fatal(message) | spread_plugin::Error::Rejected(message),
                ) => {
                    return Err(SinkError::Open {
                        name: c.name.clone(),
                        message,
                    })
                }
            };
            let shared = Arc::new(SinkShared::new(
                &c.name,
                plugin.describe(),
                c.hold_retention,
                checkpoint,
            ));
            tracing::info!(
                sink = c.name,
                plugin = shared.plugin,
                checkpoint,
                "sink loaded"
            );
            if replay.is_none() && plugin.has_archive() {
                tracing::info!(sink = c.name, "replays are served from this sink's archive");
                replay = Some(Arc::new(crate::replay::ReplaySource::new(
                    &c.name,
                    plugin.clone(),
                    settings.clone(),
                    node.clone(),
                    data_dir.to_owned(),
                )));
            }
            sinks.push((c.clone(), plugin, driver, shared));
        }
        if !sinks.is_empty() {
            std::fs::create_dir_all(&dir).map_err(|e| SinkError::Checkpoint {
                name: "*".into(),
                source: LogError::Io {
                    path: dir.clone(),
                    source: e,
                },
            })?;
        }
        let board = Arc::new(SinkBoard::new(
            sinks.iter().map(|(_, _, _, s)| s.clone()).collect(),
        ));
        Ok(Prepared {
            sinks,
            replay,
            board,
            data_dir: data_dir.to_owned(),
            node,
        })
    }

    /// Where replays are served from, if a sink has an archive.
    pub fn replay(&self) -> Option<Arc<crate::replay::ReplaySource>> {
        self.replay.clone()
    }

    /// The status board, shared with the engine.
    pub fn board(&self) -> Arc<SinkBoard> {
        self.board.clone()
    }

    /// Starts one thread per sink, reading the log in `log_dir` up to `committed`.
    pub fn start(self, committed: Arc<Committed>, log_dir: &Path) -> Result<Sinks, SinkError> {
        let stop = Arc::new(Stop::default());
        let (done_tx, done) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for (config, factory, driver, shared) in self.sinks {
            let name = config.name.clone();
            let runner = Runner {
                config,
                factory,
                driver,
                shared,
                log_dir: log_dir.to_owned(),
                checkpoints_dir: checkpoints_dir(&self.data_dir),
                data_dir: self.data_dir.clone(),
                node: self.node.clone(),
                committed: committed.clone(),
                stop: stop.clone(),
                delivered: 0,
            };
            let thread = std::thread::Builder::new()
                .name(format!("spread-sink-{name}"))
                .spawn({
                    let done = Done(name.clone(), done_tx.clone());
                    move || {
                        runner.run();
                        drop(done);
                    }
                })
                .map_err(|source| SinkError::Thread {
                    name: name.clone(),
                    source,
                })?;
            threads.push((name, thread));
        }
        Ok(Sinks {
            threads,
            done,
            stop,
            committed,
            #[cfg(test)]
            board: self.board,
        })
    }
}

/// Where sink checkpoints are kept.
pub fn checkpoints_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("sinks")
}

/// The running sinks.
pub struct Sinks {
    threads: Vec<(String, std::thread::JoinHandle<()>)>,
    /// One message per sink thread that ended (sent even if it panicked).
    done: std::sync::mpsc::Receiver<String>,
    stop: Arc<Stop>,
    committed: Arc<Committed>,
    #[cfg(test)]
    board: Arc<SinkBoard>,
}

impl Sinks {
    /// The status board.
    #[cfg(test)]
    pub fn board(&self) -> &Arc<SinkBoard> {
        &self.board
    }

    /// Stops every sink (each flushes and records its checkpoint) and waits
    /// up to `timeout`; a sink blocked inside its plugin is left behind.
    pub fn stop(self, timeout: Duration) {
        self.stop.request();
        self.committed.interrupt();
        let deadline = Instant::now() + timeout;
        let mut ended = Vec::new();
        while ended.len() < self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(name) => ended.push(name),
                Err(_) => break,
            }
        }
        for (name, thread) in self.threads {
            if !ended.contains(&name) {
                tracing::warn!(
                    sink = name,
                    "sink still inside its plugin after {timeout:?}; it resumes from its checkpoint at the next start"
                );
            } else if thread.join().is_err() {
                tracing::error!(sink = name, "sink thread panicked");
            }
        }
    }
}

/// Reports a sink thread's end when dropped, panics included.
struct Done(String, std::sync::mpsc::Sender<String>);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.1.send(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests;
