//! Digests of the latest-value table, for anti-entropy between cluster
//! nodes (`digest` request 0x19, `digest` answer 0x9a; docs/cluster.md).
//!
//! The digest of a set of topics is the wrapping sum of [`event_digest`]
//! over the live values among them (tombstones count 0, so forgetting an
//! old delete changes no digest). A sum is updated in O(1) when one value
//! replaces another, so a node keeps one per tree node for free, and two
//! nodes holding the same live values under a prefix have the same digest
//! whatever order they applied them in.
//!
//! A tree node's children are addressed in groups when there are many:
//! a *bucket* is a path of nibbles (each 0 to 15) of [`segment_hash`], and
//! the children in bucket `b` are those whose hash starts with `b`. An
//! answer lists the children of the bucket asked for when there are at
//! most [`LIST_AT_MOST`], else the digests of its 16 sub-buckets, so that
//! no answer is large, however flat the namespace.

use bytes::Bytes;

use crate::event::{Event, EventId};
use crate::message::{wire_struct, List};
use crate::topic::Topic;

/// Most children an answer may list (what a reader accepts).
pub const MAX_LISTED: usize = 64;

/// Most children this implementation lists; past it, the answer splits the
/// bucket. Smaller listings cost a request more per level but fewer bytes
/// per differing topic (a differing child is found among 16 names, not 64).
pub const LIST_AT_MOST: usize = 16;

/// Longest bucket path: the 16 nibbles of a 64-bit hash.
pub const MAX_BUCKET_DEPTH: usize = 16;

/// FNV-1a over `parts`, then the splitmix64 finalizer (FNV alone spreads
/// short inputs poorly over the high bits, which buckets use first).
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// What one live value adds to the digests of the sets holding it: a hash
/// of its topic, a zero byte and its 16-byte id.
pub fn event_digest(topic: &str, id: &EventId) -> u64 {
    hash(&[topic.as_bytes(), &[0], &id.0])
}

/// What an event adds to a digest: [`event_digest`] for a value, 0 for a
/// tombstone or no event.
pub fn value_digest(event: Option<&Event>) -> u64 {
    match event {
        Some(e) if !e.is_tombstone() => event_digest(e.topic(), &e.id()),
        _ => 0,
    }
}

/// The hash that places a child segment in buckets.
pub fn segment_hash(segment: &str) -> u64 {
    hash(&[segment.as_bytes()])
}

/// Whether a segment of hash `hash` is in bucket `bucket`.
pub fn in_bucket(hash: u64, bucket: &[u8]) -> bool {
    bucket
        .iter()
        .enumerate()
        .all(|(level, &nibble)| nibble_at(hash, level) == nibble)
}

/// The nibble of `hash` that chooses the sub-bucket at depth `level`.
pub fn nibble_at(hash: u64, level: usize) -> u8 {
    ((hash >> (60 - 4 * level)) & 0xf) as u8
}

fn check_bucket(q: &DigestQuery) -> Result<(), &'static str> {
    if q.bucket.len() > MAX_BUCKET_DEPTH {
        return Err("a bucket path has at most 16 nibbles");
    }
    if q.bucket.iter().any(|&n| n > 15) {
        return Err("a bucket path is made of nibbles, 0 to 15");
    }
    Ok(())
}

wire_struct! {
    /// A request for the digests under one prefix (a peer right, or read
    /// rights over the whole prefix, is needed).
    #[derive(Debug, Clone, PartialEq, Eq)]
    inline "digest"
    pub struct DigestQuery check check_bucket {
        /// Request id.
        pub req_id: u64,
        /// The tree node asked about (the root: everything).
        pub prefix: Topic as crate::message::Prefix,
        /// Which of its children (empty: the node and all its children).
        pub bucket: Bytes,
    }
}

wire_struct! {
    /// One child of the node asked about.
    #[derive(Debug, Clone, PartialEq, Eq)]
    nested "digest-entry"
    pub struct DigestEntry {
        /// The child's segment.
        pub name: String,
        /// The digest of the child's subtree (its own value included).
        pub digest: u64,
    }
}

wire_struct! {
    /// The answer to a digest request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    inline "digest"
    pub struct DigestReport {
        /// Request id.
        pub req_id: u64,
        /// The digest of what was asked: the node's subtree, or the
        /// children in the bucket.
        pub digest: u64,
        /// The node's own event, tombstones included (with an empty bucket
        /// only).
        pub own: Option<Event>,
        /// The children in the bucket, when there are at most
        /// [`MAX_LISTED`]; empty otherwise.
        pub entries: Vec<DigestEntry> as List<DigestEntry, MAX_LISTED>,
        /// Otherwise the digests of the bucket's 16 sub-buckets, in nibble
        /// order; empty when `entries` lists the children.
        pub buckets: Vec<u64> as List<u64, 16>,
    }
}

/// The children of an answer as 16 sub-bucket digests of `bucket`,
/// whichever form the answer took: a listing side can then be compared
/// with a splitting one.
pub fn sub_buckets(report: &DigestReport, depth: usize) -> [u64; 16] {
    let mut out = [0u64; 16];
    if report.buckets.len() == 16 {
        out.copy_from_slice(&report.buckets);
    } else {
        for e in &report.entries {
            let n = nibble_at(segment_hash(&e.name), depth.min(MAX_BUCKET_DEPTH - 1));
            out[n as usize] = out[n as usize].wrapping_add(e.digest);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vectors for other implementations (docs/protocol.md).
    #[test]
    fn the_hashes_are_fixed() {
        assert_eq!(segment_hash("fleet"), SEGMENT_FLEET);
        assert_eq!(event_digest("fleet/eu", &EventId([1; 16])), EVENT_FLEET_EU);
    }

    // Computed by a separate Python implementation of the definition.
    const SEGMENT_FLEET: u64 = 0x69d7_4bc6_61f0_de36;
    const EVENT_FLEET_EU: u64 = 0x5dc8_80f3_500d_2340;

    #[test]
    fn buckets_partition_by_leading_nibbles() {
        let h = 0xab00_0000_0000_0000u64;
        assert!(in_bucket(h, &[]));
        assert!(in_bucket(h, &[0xa]));
        assert!(in_bucket(h, &[0xa, 0xb]));
        assert!(!in_bucket(h, &[0xa, 0xc]));
        assert_eq!(nibble_at(h, 1), 0xb);
    }
}
