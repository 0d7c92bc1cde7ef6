//! Topic rules: `/`-separated UTF-8 paths matched by whole segments.
//!
//! Invariants of a [`Topic`]: valid UTF-8, no empty segment (so no leading,
//! trailing or doubled `/`), at most [`TopicRules::max_len`] bytes and
//! [`TopicRules::max_depth`] segments. The empty path is the root; it is a
//! valid *prefix* (every topic) but not a topic one can publish to. Control
//! characters are refused.

use std::fmt;

use bytes::Bytes;

/// Default maximum topic length in bytes.
pub const DEFAULT_MAX_TOPIC_LEN: usize = 1024;
/// Default maximum number of segments.
pub const DEFAULT_MAX_TOPIC_DEPTH: usize = 32;

/// Limits applied to every topic and prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicRules {
    /// Maximum length in bytes.
    pub max_len: usize,
    /// Maximum number of segments.
    pub max_depth: usize,
}

impl Default for TopicRules {
    fn default() -> Self {
        TopicRules {
            max_len: DEFAULT_MAX_TOPIC_LEN,
            max_depth: DEFAULT_MAX_TOPIC_DEPTH,
        }
    }
}

/// Why a string is not a valid topic or prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// A topic must have at least one segment.
    #[error("a topic cannot be empty (only a prefix can be the root)")]
    Empty,
    /// Two `/` in a row, or a leading or trailing `/`.
    #[error("empty segment at byte {0} (no leading, trailing or doubled '/')")]
    EmptySegment(usize),
    /// Longer than the configured maximum.
    #[error("topic is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// Actual length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// More segments than the configured maximum.
    #[error("topic has {depth} segments, the maximum is {max}")]
    TooDeep {
        /// Actual number of segments.
        depth: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Not UTF-8.
    #[error("topic is not valid UTF-8")]
    NotUtf8,
    /// A control character (U+0000 to U+001F, U+007F), which archives and
    /// terminals cannot carry faithfully.
    #[error("control character at byte {0}")]
    ControlChar(usize),
}

impl TopicRules {
    /// Checks `s` as a topic (root not allowed) or as a prefix (root allowed).
    pub fn check(&self, s: &str, allow_root: bool) -> Result<(), TopicError> {
        if s.is_empty() {
            return if allow_root {
                Ok(())
            } else {
                Err(TopicError::Empty)
            };
        }
        if s.len() > self.max_len {
            return Err(TopicError::TooLong {
                len: s.len(),
                max: self.max_len,
            });
        }
        let bytes = s.as_bytes();
        let mut depth = 1;
        let mut seg_start = 0;
        for (i, b) in bytes.iter().enumerate() {
            if *b < 0x20 || *b == 0x7f {
                return Err(TopicError::ControlChar(i));
            }
            if *b == b'/' {
                if i == seg_start {
                    return Err(TopicError::EmptySegment(i));
                }
                depth += 1;
                seg_start = i + 1;
            }
        }
        if seg_start == bytes.len() {
            return Err(TopicError::EmptySegment(bytes.len()));
        }
        if depth > self.max_depth {
            return Err(TopicError::TooDeep {
                depth,
                max: self.max_depth,
            });
        }
        Ok(())
    }
}

/// A validated topic or prefix, sharing its bytes with the frame it came from.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Bytes);

impl Topic {
    /// The root prefix, which covers every topic.
    pub const fn root() -> Topic {
        Topic(Bytes::new())
    }

    /// Validates `s` as a topic to publish to.
    pub fn new(s: &str, rules: &TopicRules) -> Result<Topic, TopicError> {
        rules.check(s, false)?;
        Ok(Topic(Bytes::copy_from_slice(s.as_bytes())))
    }

    /// Validates `s` as a subscription prefix (the empty string is the root).
    pub fn prefix(s: &str, rules: &TopicRules) -> Result<Topic, TopicError> {
        rules.check(s, true)?;
        Ok(Topic(Bytes::copy_from_slice(s.as_bytes())))
    }

    /// Validates bytes received from the wire without copying them.
    pub fn from_bytes(b: Bytes, rules: &TopicRules, allow_root: bool) -> Result<Topic, TopicError> {
        let s = std::str::from_utf8(&b).map_err(|_| TopicError::NotUtf8)?;
        rules.check(s, allow_root)?;
        Ok(Topic(b))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checked that the bytes are UTF-8, and
        // `Bytes` is immutable.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(&self.0)
        }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Whether this is the root prefix.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The segments, outermost first (none for the root).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        let s = self.as_str();
        s.split('/').filter(move |_| !s.is_empty())
    }

    /// Number of segments (0 for the root).
    pub fn depth(&self) -> usize {
        if self.is_root() {
            0
        } else {
            1 + self.0.iter().filter(|b| **b == b'/').count()
        }
    }

    /// Whether this prefix covers `topic`: equal to it, or one of its
    /// ancestors by whole segments (`a/b` covers `a/b/c`, never `a/bc`).
    pub fn covers(&self, topic: &str) -> bool {
        covers(self.as_str(), topic)
    }
}

/// Whether `prefix` covers `topic` by whole segments.
pub fn covers(prefix: &str, topic: &str) -> bool {
    prefix.is_empty()
        || (topic.starts_with(prefix)
            && (topic.len() == prefix.len() || topic.as_bytes()[prefix.len()] == b'/'))
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", self.as_str())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> TopicRules {
        TopicRules::default()
    }

    #[test]
    fn valid_topics() {
        for t in ["a", "a/b", "fleet/eu/truck-7", "é/ü/日本"] {
            Topic::new(t, &rules()).unwrap();
        }
    }

    #[test]
    fn invalid_topics() {
        assert_eq!(Topic::new("", &rules()), Err(TopicError::Empty));
        assert_eq!(Topic::new("/a", &rules()), Err(TopicError::EmptySegment(0)));
        assert_eq!(Topic::new("a/", &rules()), Err(TopicError::EmptySegment(2)));
        assert_eq!(
            Topic::new("a//b", &rules()),
            Err(TopicError::EmptySegment(2))
        );
        assert_eq!(
            Topic::new("a\0b", &rules()),
            Err(TopicError::ControlChar(1))
        );
        assert_eq!(
            Topic::new("a/\n", &rules()),
            Err(TopicError::ControlChar(2))
        );
        assert_eq!(
            Topic::new("a\x7f", &rules()),
            Err(TopicError::ControlChar(1))
        );
        let long = "x".repeat(1025);
        assert!(matches!(
            Topic::new(&long, &rules()),
            Err(TopicError::TooLong {
                len: 1025,
                max: 1024
            })
        ));
        let deep = vec!["s"; 33].join("/");
        assert!(matches!(
            Topic::new(&deep, &rules()),
            Err(TopicError::TooDeep { depth: 33, max: 32 })
        ));
        assert_eq!(
            Topic::from_bytes(Bytes::from_static(&[0xff]), &rules(), false),
            Err(TopicError::NotUtf8)
        );
    }

    #[test]
    fn root_is_a_prefix_only() {
        assert!(Topic::prefix("", &rules()).unwrap().is_root());
        assert_eq!(Topic::root().depth(), 0);
        assert_eq!(Topic::root().segments().count(), 0);
    }

    #[test]
    fn whole_segment_matching() {
        let p = Topic::prefix("a/b", &rules()).unwrap();
        assert!(p.covers("a/b"));
        assert!(p.covers("a/b/c"));
        assert!(!p.covers("a/bc"));
        assert!(!p.covers("a"));
        assert!(Topic::root().covers("anything/at/all"));
    }

    #[test]
    fn segments_and_depth() {
        let t = Topic::new("a/bb/c", &rules()).unwrap();
        assert_eq!(t.segments().collect::<Vec<_>>(), ["a", "bb", "c"]);
        assert_eq!(t.depth(), 3);
    }
}
