//! Shared harness, by concern: brokers, as processes or in the test
//! process, set up by `Broker::builder()` (`broker`), raw frames
//! (`raw`), subscriptions (`subscriptions`), the CLI (`cli`), plugins
//! (`plugins`), bounded waits (`wait`), cuttable links (`proxy`) and a
//! test CA for mutual TLS (`certs`).

#![allow(dead_code)]

use std::time::Duration;

mod broker;
mod certs;
mod cli;
mod plugins;
mod proxy;
mod raw;
mod subscriptions;
mod wait;

// Each test binary uses part of the harness.
#[allow(unused_imports)]
pub use {broker::*, certs::*, cli::*, plugins::*, proxy::*, raw::*, subscriptions::*, wait::*};

/// Generous bound for conditions awaited in tests; a hang fails instead of
/// blocking CI forever.
pub const PATIENCE: Duration = Duration::from_secs(60);
