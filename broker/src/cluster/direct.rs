//! Which peers this node pulls from directly right now, so that a pull
//! from one peer can leave out what another peer's own pull delivers
//! (docs/cluster.md, "each event crosses each link once").
//!
//! A pull joins once its peer said `synced` on the current connection and
//! leaves when that connection or the pull ends. Any other pull under a
//! covered prefix may then skip the events whose source is the joined
//! peer's run: that peer's own pull delivers every one of them, from its
//! log after the cursor. When a pull leaves, the others stop skipping its
//! peer and run a digest exchange, to take what they left out while that
//! peer was in reach but did not receive from it.

use std::collections::BTreeMap;

use spread_protocol::{Sources, Topic};
use tokio::sync::watch;

/// A live pull: its prefix and the run of the peer it pulls from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    prefix: Topic,
    incarnation: u64,
}

/// The live pulls, by board entry.
pub(crate) struct Direct {
    links: watch::Sender<BTreeMap<usize, Link>>,
}

impl Default for Direct {
    fn default() -> Direct {
        Direct {
            links: watch::Sender::new(BTreeMap::new()),
        }
    }
}

/// A pull's membership; dropping it leaves.
pub(crate) struct Joined<'a> {
    direct: &'a Direct,
    entry: usize,
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.direct
            .links
            .send_if_modified(|links| links.remove(&self.entry).is_some());
    }
}

impl Direct {
    /// Pull `entry` delivers every event of run `incarnation` under
    /// `prefix` from now until the guard is dropped.
    pub(crate) fn join(&self, entry: usize, prefix: &Topic, incarnation: u64) -> Joined<'_> {
        let link = Link {
            prefix: prefix.clone(),
            incarnation,
        };
        self.links
            .send_if_modified(|links| links.insert(entry, link.clone()) != Some(link));
        Joined {
            direct: self,
            entry,
        }
    }

    /// Notified whenever a pull joins or leaves.
    pub(crate) fn watch(&self) -> watch::Receiver<BTreeMap<usize, Link>> {
        self.links.subscribe()
    }
}

/// What pull `entry` (under `prefix`, from the peer whose run is `peer`)
/// leaves out: this node's run `own`, then the runs of the other live
/// pulls whose prefix covers `prefix` (at most [`Sources::MAX`] in all).
pub(crate) fn skips(
    links: &BTreeMap<usize, Link>,
    entry: usize,
    prefix: &Topic,
    peer: u64,
    own: u64,
) -> Sources {
    let others = links
        .iter()
        .filter(|(e, link)| {
            **e != entry
                && link.incarnation != peer
                && link.incarnation != 0
                && link.prefix.covers(prefix.as_str())
        })
        .map(|(_, link)| link.incarnation);
    Sources::of(std::iter::once(own).chain(others))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> Topic {
        Topic::prefix(p, &Default::default()).unwrap()
    }

    #[test]
    fn a_pull_skips_the_runs_of_the_other_live_pulls_that_cover_its_prefix() {
        let direct = Direct::default();
        let all = prefix("");
        let site = prefix("site/7");
        let mut watch = direct.watch();
        let a = direct.join(0, &all, 0xa);
        let _b = direct.join(1, &all, 0xb);
        let _narrow = direct.join(2, &prefix("site/70"), 0xc);
        assert!(watch.has_changed().unwrap());
        let links = watch.borrow_and_update().clone();
        // Pull 1 (from b) skips this node's run and a's; pull 2 does not
        // cover `site/7`, nor is it covered by "".
        assert_eq!(skips(&links, 1, &all, 0xb, 1).as_slice(), &[1, 0xa]);
        assert_eq!(skips(&links, 3, &site, 0xd, 1).as_slice(), &[1, 0xa, 0xb]);
        assert_eq!(
            skips(&links, 2, &prefix("site/70"), 0xc, 1).as_slice(),
            &[1, 0xa, 0xb]
        );
        // A second pull from the same peer's run is not skipped by it.
        assert_eq!(skips(&links, 4, &all, 0xa, 1).as_slice(), &[1, 0xb]);
        drop(a);
        assert!(watch.has_changed().unwrap(), "leaving is announced");
        let links = watch.borrow_and_update().clone();
        assert_eq!(skips(&links, 1, &all, 0xb, 1).as_slice(), &[1]);
    }
}
