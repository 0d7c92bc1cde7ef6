//! A puller's resume point: the peer's iteration up to which its events
//! are committed in this node's log, and the id of the event at that
//! iteration when there is one (so that a peer whose history changed under
//! the cursor, a node restored from an older copy, is recognised). Kept in
//! `<data-dir>/peers/` as a durable file per (peer, prefix): `ITERATION`,
//! then the id in hex if there is one, then `relied` if the pull left
//! events before the position to other links.

use std::path::{Path, PathBuf};

use spread_protocol::EventId;

/// Where a pull resumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Position {
    pub iteration: u64,
    /// The event the peer numbered `iteration`, if the position is one.
    pub id: Option<EventId>,
    /// Events before the position whose source another pull was
    /// delivering were left out (see `direct`): a pull resuming from here
    /// runs a digest exchange first, in case that other pull did not get
    /// them before it stopped.
    pub relied: bool,
}

/// One durable cursor.
#[derive(Clone)]
pub(crate) struct Cursor {
    path: PathBuf,
}

impl Cursor {
    /// The cursor of `prefix` pulled from `address`. The file name spells
    /// both out, with the characters a path cannot hold replaced.
    pub(crate) fn new(data_dir: &Path, address: &str, prefix: &spread_protocol::Topic) -> Cursor {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let name = format!("{}@{}", clean(prefix.as_str()), clean(address));
        Cursor {
            path: data_dir.join("peers").join(name),
        }
    }

    /// The position to resume from (the start the first time; a file
    /// that does not parse, which only a hand edit makes, also reads as
    /// the start: the pull then re-applies what it has, harmlessly).
    pub(crate) fn load(&self) -> std::io::Result<Position> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Position::default()),
            Err(e) => return Err(e),
        };
        let mut parts = text.split_whitespace();
        let Some(iteration) = parts.next().and_then(|n| n.parse().ok()) else {
            return Ok(Position::default());
        };
        let mut at = Position {
            iteration,
            ..Position::default()
        };
        for part in parts {
            match part {
                "relied" => at.relied = true,
                id => at.id = parse_id(id).or(at.id),
            }
        }
        Ok(at)
    }

    /// Records `position` durably.
    pub(crate) fn store(&self, position: Position) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = position.iteration.to_string();
        if let Some(id) = position.id {
            text.push_str(&format!(" {id}"));
        }
        if position.relied {
            text.push_str(" relied");
        }
        text.push('\n');
        crate::durable::write(&self.path, text.as_bytes(), 0o600).map_err(|f| f.source)
    }
}

/// An event id written as 32 hex digits.
fn parse_id(hex: &str) -> Option<EventId> {
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(EventId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_starts_at_zero_and_keeps_what_it_stored() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = spread_protocol::Topic::prefix("site/7", &Default::default()).unwrap();
        let cursor = Cursor::new(dir.path(), "10.0.0.1:7411", &prefix);
        assert_eq!(cursor.load().unwrap(), Position::default());
        let at = Position {
            iteration: 42,
            id: Some(EventId([0xa5; 16])),
            relied: false,
        };
        cursor.store(at).unwrap();
        assert_eq!(
            Cursor::new(dir.path(), "10.0.0.1:7411", &prefix)
                .load()
                .unwrap(),
            at
        );
        let bare = Position {
            iteration: 7,
            id: None,
            relied: false,
        };
        cursor.store(bare).unwrap();
        assert_eq!(cursor.load().unwrap(), bare);
        for id in [None, Some(EventId([7; 16]))] {
            let relied = Position {
                iteration: 9,
                id,
                relied: true,
            };
            cursor.store(relied).unwrap();
            assert_eq!(cursor.load().unwrap(), relied);
        }
        let other = Cursor::new(dir.path(), "10.0.0.2:7411", &prefix);
        assert_eq!(
            other.load().unwrap(),
            Position::default(),
            "one cursor per peer"
        );
    }
}
