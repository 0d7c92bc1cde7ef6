//! What the engine and a connection share: the connection's state
//! ([`Conn`]: identity, rights, request credits), its outbound queue with
//! conflation ([`queue`]) and the broker-wide counters ([`Stats`]). The
//! engine and the read pool push to a connection only through `Conn`; the
//! connection's tasks (`crate::connection`) take from it.
//!
//! Most output reaches a connection once per engine round, staged in the
//! engine's fanout and pushed when the round is durable. A few paths push
//! at once, each for a reason: history catch-ups and replays stream from
//! the read pool as they read ([`Conn::push_history`]); a publish refused
//! while the log cannot be written, and a publish over the rate limit, are
//! answered at once ([`Conn::answer_now`]) so that they do not wait behind
//! the rounds held for the disk.

mod budget;
mod conn;
pub(crate) mod queue;
mod stats;

pub(crate) use budget::Budget;
pub(crate) use conn::Conn;
pub(crate) use queue::{Batch, Outbound};
pub(crate) use stats::Stats;

#[cfg(test)]
mod tests;
