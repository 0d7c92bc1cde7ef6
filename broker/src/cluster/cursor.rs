//! A puller's resume point: the last iteration of the peer whose events
//! are committed in this node's log, kept in `<data-dir>/peers/` as a
//! durable file per (peer, prefix).

use std::path::{Path, PathBuf};

/// One durable cursor.
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

    /// The iteration to resume after (0 the first time).
    pub(crate) fn load(&self) -> std::io::Result<u64> {
        Ok(crate::durable::read_u64(&self.path)?.unwrap_or(0))
    }

    /// Records `iteration` durably.
    pub(crate) fn store(&self, iteration: u64) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::durable::write_u64(&self.path, iteration).map_err(|f| f.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_starts_at_zero_and_keeps_what_it_stored() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = spread_protocol::Topic::prefix("site/7", &Default::default()).unwrap();
        let cursor = Cursor::new(dir.path(), "10.0.0.1:7411", &prefix);
        assert_eq!(cursor.load().unwrap(), 0);
        cursor.store(42).unwrap();
        assert_eq!(
            Cursor::new(dir.path(), "10.0.0.1:7411", &prefix)
                .load()
                .unwrap(),
            42
        );
        let other = Cursor::new(dir.path(), "10.0.0.2:7411", &prefix);
        assert_eq!(other.load().unwrap(), 0, "one cursor per peer");
    }
}
