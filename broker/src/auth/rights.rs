//! Per-prefix rights from a token's `rights` claim.
//!
//! `{"pub": ["sensors/site-7"], "sub": ["sensors", "users/{sub}"], "deny":
//! ["config/secrets"]}`: `pub` prefixes may be published to (and deleted),
//! `sub` prefixes read (subscribe, get, replay), and `deny` prefixes are
//! refused for both, winning over allow entries. Prefixes match whole
//! segments (`sensors/a` never covers `sensors/ab`); `{sub}` stands for the
//! token's subject; `""` covers everything.

use spread_plugin::covers;

/// What a `rights` claim says.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RightsClaim {
    /// Prefixes the subject may publish to.
    #[serde(default, rename = "pub")]
    pub publish: Vec<String>,
    /// Prefixes the subject may read.
    #[serde(default, rename = "sub")]
    pub read: Vec<String>,
    /// Prefixes refused whatever the allow lists say.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Rights of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    publish: Vec<String>,
    read: Vec<String>,
    deny: Vec<String>,
}

fn expand(list: &[String], subject: &str) -> Vec<String> {
    list.iter()
        .map(|p| p.replace("{sub}", subject).trim_end_matches('/').to_owned())
        .collect()
}

impl Rights {
    /// The rights `claim` grants `subject`.
    pub fn new(claim: &RightsClaim, subject: &str) -> Rights {
        Rights {
            publish: expand(&claim.publish, subject),
            read: expand(&claim.read, subject),
            deny: expand(&claim.deny, subject),
        }
    }

    fn denied(&self, topic: &str) -> bool {
        self.deny.iter().any(|d| covers(d, topic))
    }

    /// Whether `topic` may be published to or deleted.
    pub fn can_publish(&self, topic: &str) -> bool {
        !self.denied(topic) && self.publish.iter().any(|p| covers(p, topic))
    }

    /// Whether `topic` may be read.
    pub fn can_read(&self, topic: &str) -> bool {
        !self.denied(topic) && self.read.iter().any(|p| covers(p, topic))
    }

    /// Whether a subscription (or replay) of `prefix` may reach any topic:
    /// it overlaps a readable prefix and is not wholly denied. Its events
    /// are still filtered one by one with [`can_read`](Rights::can_read).
    pub fn may_read_under(&self, prefix: &str) -> bool {
        !self.denied(prefix)
            && self
                .read
                .iter()
                .any(|p| covers(p, prefix) || covers(prefix, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rights() -> Rights {
        let claim: RightsClaim = serde_json::from_str(
            r#"{"pub": ["sensors/site-7", "users/{sub}"], "sub": ["sensors", "config"], "deny": ["config/secrets"]}"#,
        )
        .unwrap();
        Rights::new(&claim, "alice")
    }

    #[test]
    fn allow_lists_deny_wins_and_whole_segments() {
        let r = rights();
        assert!(r.can_publish("sensors/site-7/t1"));
        assert!(!r.can_publish("sensors/site-70"));
        assert!(!r.can_publish("sensors/site-8/t1"));
        assert!(r.can_publish("users/alice/prefs"));
        assert!(!r.can_publish("users/bob/prefs"));
        assert!(r.can_read("sensors/anything"));
        assert!(r.can_read("config/app"));
        assert!(!r.can_read("config/secrets/db"));
        assert!(!r.can_read("users/alice/prefs"));
        // Subscribing to a broader prefix is allowed, filtered per event.
        assert!(r.may_read_under(""));
        assert!(r.may_read_under("config"));
        assert!(!r.may_read_under("config/secrets"));
        assert!(!r.may_read_under("billing"));
    }
}
