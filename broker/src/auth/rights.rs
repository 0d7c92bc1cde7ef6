//! Per-prefix rights from a token's `rights` claim.
//!
//! `{"pub": ["sensors/site-7"], "sub": ["sensors", "users/{sub}"], "deny":
//! ["config/secrets"]}`: `pub` prefixes may be published to (and deleted),
//! `sub` prefixes read (subscribe, get, replay), and `deny` prefixes are
//! refused for both, winning over allow entries. Prefixes match whole
//! segments (`sensors/a` never covers `sensors/ab`); `{sub}` stands for the
//! token's subject; `""` covers everything.

use spread_plugin::covers;
use spread_protocol::Request;

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

/// Substitutes the subject and checks each entry as a prefix: an entry
/// that could never match (a typo, `a//b`) must not silently weaken a deny.
fn expand(list: &[String], subject: &str) -> Result<Vec<String>, String> {
    // Only the syntax matters here, not the configured length limits.
    let rules = spread_protocol::TopicRules {
        max_len: usize::MAX,
        max_depth: usize::MAX,
    };
    list.iter()
        .map(|entry| {
            if entry.contains("{sub}") && (subject.contains('/') || subject.is_empty()) {
                return Err(format!(
                    "the subject {subject:?} is not one topic segment, so {entry:?} cannot use it"
                ));
            }
            let prefix = entry.replace("{sub}", subject);
            let prefix = prefix.strip_suffix('/').unwrap_or(&prefix);
            rules
                .check(prefix, true)
                .map_err(|e| format!("rights entry {entry:?} is not a valid prefix: {e}"))?;
            Ok(prefix.to_owned())
        })
        .collect()
}

impl Rights {
    /// The rights `claim` grants `subject`, or why the claim is unusable.
    pub fn new(claim: &RightsClaim, subject: &str) -> Result<Rights, String> {
        Ok(Rights {
            publish: expand(&claim.publish, subject)?,
            read: expand(&claim.read, subject)?,
            deny: expand(&claim.deny, subject)?,
        })
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

    /// Whether every topic under `prefix` may be read, so that its
    /// events need no check one by one.
    pub fn reads_all_under(&self, prefix: &str) -> bool {
        self.read.iter().any(|p| covers(p, prefix))
            && !self
                .deny
                .iter()
                .any(|d| covers(d, prefix) || covers(prefix, d))
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

/// Whether `rights` (`None`: every right) allow `request`; the reason
/// when they do not, for a `forbidden` answer. Every request is checked
/// here once, before the engine handles it; deliveries are checked again
/// one by one (see [`Rights::reads_all_under`]).
pub fn authorize(rights: Option<&Rights>, request: &Request) -> Result<(), String> {
    let Some(r) = rights else {
        return Ok(());
    };
    if let Some(topic) = request.written_topic() {
        if !r.can_publish(topic.as_str()) {
            return Err(format!("this token may not publish to {}", topic.as_str()));
        }
    }
    // Every request is named, so that a new one must decide what it reads.
    match request {
        Request::Get { topic, .. } if !r.can_read(topic.as_str()) => {
            Err(format!("this token may not read {}", topic.as_str()))
        }
        Request::Subscribe { prefix, .. } if !r.may_read_under(prefix.as_str()) => Err(format!(
            "this token may not read under {:?}",
            prefix.as_str()
        )),
        Request::Replay { query, .. }
            if !(if query.prefixes.is_empty() {
                r.may_read_under("")
            } else {
                query.prefixes.iter().all(|p| r.may_read_under(p.as_str()))
            }) =>
        {
            Err("this token may not read under every prefix of this replay".into())
        }
        // A digest sums every value under the prefix: all must be readable.
        Request::Digest(q) if !r.reads_all_under(q.prefix.as_str()) => Err(format!(
            "this token may not read everything under {:?}, which a digest covers",
            q.prefix.as_str()
        )),
        Request::Get { .. }
        | Request::Digest(_)
        | Request::Subscribe { .. }
        | Request::Replay { .. }
        | Request::Hello(_)
        | Request::Ping { .. }
        | Request::Publish(_)
        | Request::PublishIfAbsent(_)
        | Request::Delete(_)
        | Request::Unsubscribe { .. }
        | Request::Status { .. }
        | Request::Peers { .. } => Ok(()),
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
        Rights::new(&claim, "alice").unwrap()
    }

    fn claim(json: &str) -> RightsClaim {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn authorize_checks_each_request_kind_once() {
        use spread_protocol::{Delete, Publish, ReplayQuery, SubscribeMode, Topic};
        let r = rights();
        let rules = Default::default();
        let t = |s: &str| Topic::prefix(s, &rules).unwrap();
        let publish = |topic: &str| {
            Request::Publish(Publish {
                req_id: 1,
                topic: t(topic),
                payload: bytes::Bytes::new(),
                timestamp: None,
                id: None,
            })
        };
        assert!(authorize(Some(&r), &publish("sensors/site-7/t")).is_ok());
        assert!(authorize(Some(&r), &publish("sensors/site-70")).is_err());
        let if_absent = Request::PublishIfAbsent(Publish {
            req_id: 1,
            topic: t("sensors/site-70"),
            payload: bytes::Bytes::new(),
            timestamp: None,
            id: None,
        });
        assert!(authorize(Some(&r), &if_absent).is_err());
        let delete = |topic: &str| {
            Request::Delete(Delete {
                req_id: 1,
                topic: t(topic),
                timestamp: None,
                id: None,
            })
        };
        assert!(authorize(Some(&r), &delete("sensors/site-7/t")).is_ok());
        assert!(authorize(Some(&r), &delete("sensors/site-70")).is_err());
        assert!(authorize(None, &publish("anything")).is_ok());
        let get = |topic: &str| Request::Get {
            req_id: 2,
            topic: t(topic),
        };
        assert!(authorize(Some(&r), &get("config/public")).is_ok());
        assert!(authorize(Some(&r), &get("config/secrets/k")).is_err());
        let subscribe = |prefix: &str| Request::Subscribe {
            req_id: 3,
            prefix: t(prefix),
            since: 0,
            mode: SubscribeMode::Latest,
            skip_source: Default::default(),
        };
        assert!(
            authorize(Some(&r), &subscribe("")).is_ok(),
            "reaches sensors"
        );
        assert!(authorize(Some(&r), &subscribe("config/secrets")).is_err());
        let replay = |prefixes: Vec<Topic>| Request::Replay {
            req_id: 4,
            query: ReplayQuery {
                prefixes,
                ..ReplayQuery::default()
            },
        };
        assert!(authorize(Some(&r), &replay(vec![t("sensors")])).is_ok());
        assert!(authorize(Some(&r), &replay(vec![t("sensors"), t("config/secrets")])).is_err());
        assert!(authorize(Some(&r), &Request::Ping { req_id: 5 }).is_ok());
    }

    #[test]
    fn reads_all_under_needs_a_covering_right_and_no_deny_inside() {
        let r = rights();
        assert!(r.reads_all_under("sensors"));
        assert!(r.reads_all_under("sensors/a/b"));
        assert!(
            !r.reads_all_under(""),
            "only parts of the root are readable"
        );
        assert!(!r.reads_all_under("config"), "config/secrets is denied");
        assert!(!r.reads_all_under("config/secrets/x"));
        assert!(r.reads_all_under("config/public"));
        assert!(!r.reads_all_under("users"));
    }

    #[test]
    fn a_subject_cannot_widen_its_own_rights() {
        let own = claim(r#"{"pub": ["users/{sub}"]}"#);
        // "/" would make users/{sub} cover every user; "bob/x" reach into bob's.
        for subject in ["/", "bob/", "bob/x", ""] {
            assert!(Rights::new(&own, subject).is_err(), "{subject:?}");
        }
        // Without {sub}, such a subject is just a name.
        assert!(Rights::new(&claim(r#"{"pub": ["users"]}"#), "a/b").is_ok());
    }

    #[test]
    fn entries_that_could_never_match_are_refused() {
        for bad in ["a//b", "/a", r"a\u0000b"] {
            let json = format!(r#"{{"deny": ["{bad}"]}}"#);
            assert!(Rights::new(&claim(&json), "alice").is_err(), "{bad}");
        }
        // A trailing slash is forgiven; the root is a valid prefix.
        let ok = Rights::new(&claim(r#"{"sub": ["a/"], "deny": [""]}"#), "alice").unwrap();
        assert!(!ok.can_read("a/x"));
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
