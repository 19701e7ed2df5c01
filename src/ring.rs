//! The consistent-hash ring: which nodes hold a key.
//!
//! Each node owns `vnodes` tokens on a 64-bit circle. A key hashes to a point on the circle,
//! and its replicas are the first N *distinct* nodes met walking clockwise from that point:
//! its preference list, as in Dynamo.
//!
//! The hash is XXH3-64 with seed 0, which is specified and stable across processes, machines
//! and releases (std's `DefaultHasher` is none of those). A node's tokens are the hashes of
//! `"{node_id}#{i}"`, so every node computes the same ring from the same member set with no
//! coordination.
//!
//! A ring is built from *membership*, not liveness: a node that is down keeps its tokens,
//! because a failure is usually temporary and moving data on every blip would be costly.
//! Liveness is applied on top of the preference list by the coordinator.
//!
//! This module is pure: no I/O, no clocks.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

/// A node's stable identity in the ring: its `--id`.
pub type NodeId = Arc<str>;

/// Default number of virtual nodes per node. A node's share of the circle deviates from fair
/// by about 1/sqrt(vnodes): 256 keeps it within about 6% (64 gave a node 1.3x its share on a
/// five-node ring), while a lookup stays a binary search over a few thousand tokens.
pub const DEFAULT_VNODES: usize = 256;

/// Hashes a key onto the ring.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

fn token(node: &str, vnode: usize) -> u64 {
    xxh3_64(format!("{node}#{vnode}").as_bytes())
}

/// An immutable ring; rebuild it when membership changes.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// Sorted by (token, node index) so ties are broken the same way everywhere.
    tokens: Vec<(u64, u32)>,
    /// Member node ids, sorted.
    nodes: Vec<NodeId>,
    vnodes: usize,
}

impl Ring {
    /// Builds the ring of `nodes` with `vnodes` tokens each. Duplicate ids count once.
    pub fn new(nodes: impl IntoIterator<Item = NodeId>, vnodes: usize) -> Ring {
        let mut nodes: Vec<NodeId> = nodes.into_iter().collect();
        nodes.sort();
        nodes.dedup();
        let vnodes = vnodes.max(1);
        let mut tokens = Vec::with_capacity(nodes.len() * vnodes);
        for (idx, node) in nodes.iter().enumerate() {
            for v in 0..vnodes {
                tokens.push((token(node, v), idx as u32));
            }
        }
        tokens.sort_unstable();
        Ring {
            tokens,
            nodes,
            vnodes,
        }
    }

    /// The member node ids, sorted.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Virtual nodes per node.
    pub fn vnodes(&self) -> usize {
        self.vnodes
    }

    /// True if the ring has no members.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The tokens of `node` on this ring (its `vnodes` points on the circle), sorted.
    pub fn tokens_of(&self, node: &str) -> Vec<u64> {
        let mut t: Vec<u64> = (0..self.vnodes).map(|v| token(node, v)).collect();
        t.sort_unstable();
        t
    }

    /// The first `n` distinct nodes clockwise from the key's hash (fewer if the ring is smaller).
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.preference_list_for_hash(key_hash(key), n)
    }

    /// As [`Ring::preference_list`], for an already hashed point on the circle.
    pub fn preference_list_for_hash(&self, hash: u64, n: usize) -> Vec<NodeId> {
        let want = n.min(self.nodes.len());
        let mut out: Vec<NodeId> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        // First token at or after the hash; wrap to the start of the circle.
        let start = self.tokens.partition_point(|&(t, _)| t < hash);
        let len = self.tokens.len();
        for i in 0..len {
            let (_, idx) = self.tokens[(start + i) % len];
            let node = &self.nodes[idx as usize];
            if !out.contains(node) {
                out.push(node.clone());
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// A digest of the ring's shape: equal on two nodes iff their rings are equal.
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(self.vnodes as u64).to_le_bytes());
        for n in &self.nodes {
            h.update(&(n.len() as u64).to_le_bytes());
            h.update(n.as_bytes());
        }
        h.digest()
    }

    /// The circle cut at every token and every shard boundary, in order of `end`, with each
    /// segment's `n` home replicas. The segments cover every hash exactly once.
    pub fn segments(&self, n: usize) -> Vec<Segment> {
        let shard_ends = (1..=(1u64 << SHARD_BITS)).map(|i| {
            // The last hash of shard i-1; for the last shard this is u64::MAX.
            (i << (64 - SHARD_BITS)).wrapping_sub(1)
        });
        let mut cuts: Vec<u64> = self
            .tokens
            .iter()
            .map(|&(t, _)| t)
            .chain(shard_ends)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        // u64::MAX is always a cut, so the segment before the first cut starts right after it.
        let mut prev = u64::MAX;
        cuts.into_iter()
            .map(|end| {
                let seg = Segment {
                    start: prev,
                    end,
                    homes: self.preference_list_for_hash(end, n),
                };
                prev = end;
                seg
            })
            .collect()
    }

    /// The vnode arcs of the ring as `(start_exclusive, end_inclusive, owner)`, in token order.
    /// The first arc wraps around zero. Used for status pages and range-based repair.
    pub fn arcs(&self) -> Vec<(u64, u64, NodeId)> {
        let len = self.tokens.len();
        (0..len)
            .map(|i| {
                let prev = self.tokens[(i + len - 1) % len].0;
                let (tok, idx) = self.tokens[i];
                (prev, tok, self.nodes[idx as usize].clone())
            })
            .collect()
    }
}

/// Bits of a key's hash that choose its store shard (64 shards). Segments are cut at shard
/// boundaries so that each one lives in exactly one shard.
pub const SHARD_BITS: u32 = 6;

/// The shard of a key hash.
pub fn shard_of(hash: u64) -> usize {
    (hash >> (64 - SHARD_BITS)) as usize
}

/// A stretch of the circle whose keys all have the same home replicas and live in the same
/// store shard: the unit that anti-entropy compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Exclusive start; a segment with `start > end` wraps past zero.
    pub start: u64,
    /// Inclusive end.
    pub end: u64,
    /// The home replicas of every key in the segment, in preference order.
    pub homes: Vec<NodeId>,
}

/// One destination of a write: a node, and the home replica it stands in for if it is a
/// fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: NodeId,
    /// `Some(home)` when `node` holds the copy only until `home` is back (a hinted copy).
    pub hint_for: Option<NodeId>,
}

/// Where a write goes under a sloppy quorum (Dynamo §4.6).
///
/// `walk` is every node clockwise from the key (`preference_list` with n = ring size), so its
/// first `n` entries are the key's home replicas. Each live home replica gets its own copy;
/// each dead one is replaced by the next live node past the homes that is not already used,
/// which keeps the copy with a hint naming the home. If the ring runs out of live nodes, the
/// remaining dead homes simply get no copy.
pub fn sloppy_targets(walk: &[NodeId], n: usize, alive: impl Fn(&NodeId) -> bool) -> Vec<Target> {
    let homes = &walk[..n.min(walk.len())];
    let mut fallbacks = walk[homes.len()..].iter().filter(|id| alive(id));
    let mut out = Vec::with_capacity(homes.len());
    for home in homes {
        if alive(home) {
            out.push(Target {
                node: home.clone(),
                hint_for: None,
            });
        } else if let Some(fb) = fallbacks.next() {
            out.push(Target {
                node: fb.clone(),
                hint_for: Some(home.clone()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::from(*n)).collect()
    }

    fn keys(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| format!("key-{i}").into_bytes())
            .collect()
    }

    #[test]
    fn hash_is_stable_across_releases() {
        // Pinned values: if these change, every deployed ring would reshuffle.
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
        assert_eq!(key_hash(b"hello"), 0x9555e8555c62dcfd);
    }

    #[test]
    fn preference_list_is_distinct_and_deterministic() {
        let ring = Ring::new(ids(&["n1", "n2", "n3", "n4", "n5"]), 16);
        for key in keys(1000) {
            let list = ring.preference_list(&key, 3);
            assert_eq!(list.len(), 3);
            let mut dedup = list.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), 3, "replicas must be distinct nodes");
            // Same members in another order give the same ring.
            let other = Ring::new(ids(&["n5", "n3", "n1", "n4", "n2", "n1"]), 16);
            assert_eq!(other.preference_list(&key, 3), list);
        }
    }

    #[test]
    fn small_rings_and_empty_rings() {
        let empty = Ring::new(Vec::new(), 8);
        assert!(empty.is_empty());
        assert!(empty.preference_list(b"k", 3).is_empty());
        let two = Ring::new(ids(&["a", "b"]), 8);
        let list = two.preference_list(b"k", 3);
        assert_eq!(list.len(), 2);
        assert_ne!(list[0], list[1]);
        assert!(two.preference_list(b"k", 0).is_empty());
    }

    #[test]
    fn first_replica_owns_the_clockwise_token() {
        let ring = Ring::new(ids(&["a", "b", "c"]), 4);
        for key in keys(200) {
            let h = key_hash(&key);
            // Brute force: the smallest token >= h, else the smallest token overall.
            let mut all: Vec<(u64, NodeId)> = ring
                .nodes()
                .iter()
                .flat_map(|n| (0..4).map(move |v| (token(n, v), n.clone())))
                .collect();
            all.sort();
            let owner = all
                .iter()
                .find(|(t, _)| *t >= h)
                .unwrap_or(&all[0])
                .1
                .clone();
            assert_eq!(ring.preference_list(&key, 1), vec![owner]);
        }
    }

    #[test]
    fn load_is_balanced_across_nodes() {
        let nodes = ids(&["n1", "n2", "n3", "n4", "n5"]);
        let ring = Ring::new(nodes.clone(), DEFAULT_VNODES);
        let total = 100_000;
        let mut primaries: HashMap<NodeId, usize> = HashMap::new();
        let mut replicas: HashMap<NodeId, usize> = HashMap::new();
        for key in keys(total) {
            let list = ring.preference_list(&key, 3);
            *primaries.entry(list[0].clone()).or_default() += 1;
            for n in list {
                *replicas.entry(n).or_default() += 1;
            }
        }
        let fair = total as f64 / nodes.len() as f64;
        for n in &nodes {
            let share = primaries[n] as f64 / fair;
            assert!(
                (0.8..1.2).contains(&share),
                "{n} owns {share:.2}x its fair share"
            );
            let rshare = replicas[n] as f64 / (fair * 3.0);
            assert!((0.9..1.1).contains(&rshare), "{n} replicates {rshare:.2}x");
        }
    }

    #[test]
    fn a_join_moves_few_keys() {
        let before = Ring::new(ids(&["n1", "n2", "n3", "n4", "n5"]), DEFAULT_VNODES);
        let after = Ring::new(ids(&["n1", "n2", "n3", "n4", "n5", "n6"]), DEFAULT_VNODES);
        let total = 50_000;
        let mut moved_primary = 0;
        for key in keys(total) {
            let old = before.preference_list(&key, 3);
            let new = after.preference_list(&key, 3);
            if old[0] != new[0] {
                moved_primary += 1;
                // A key only ever moves *to* the newcomer.
                assert_eq!(&*new[0], "n6");
            }
            // Every replica set changes by at most the newcomer replacing one old node.
            let lost: Vec<_> = old.iter().filter(|n| !new.contains(n)).collect();
            assert!(lost.len() <= 1);
            if lost.len() == 1 {
                assert!(new.iter().any(|n| &**n == "n6"));
            }
        }
        // Ideal is 1/6 of the keys; consistent hashing must stay near that, far below a rehash.
        let frac = moved_primary as f64 / total as f64;
        assert!((0.10..0.24).contains(&frac), "moved {frac:.3} of keys");
    }

    #[test]
    fn sloppy_targets_replace_dead_homes_in_ring_order() {
        let walk = ids(&["a", "b", "c", "d", "e"]);
        let alive_except =
            |dead: &'static [&'static str]| move |id: &NodeId| !dead.contains(&&**id);
        let t = |node: &str, hint: Option<&str>| Target {
            node: NodeId::from(node),
            hint_for: hint.map(NodeId::from),
        };
        assert_eq!(
            sloppy_targets(&walk, 3, alive_except(&[])),
            vec![t("a", None), t("b", None), t("c", None)]
        );
        assert_eq!(
            sloppy_targets(&walk, 3, alive_except(&["b"])),
            vec![t("a", None), t("d", Some("b")), t("c", None)]
        );
        assert_eq!(
            sloppy_targets(&walk, 3, alive_except(&["a", "c", "d"])),
            vec![t("e", Some("a")), t("b", None)]
        );
        // No live node left to stand in: the dead homes get nothing.
        assert_eq!(
            sloppy_targets(&walk, 3, alive_except(&["a", "b", "c", "d", "e"])),
            vec![]
        );
        // Never more targets than homes, never a node twice.
        for mask in 0u32..32 {
            let alive = |id: &NodeId| mask & (1 << (id.as_bytes()[0] - b'a')) != 0;
            let targets = sloppy_targets(&walk, 3, alive);
            assert!(targets.len() <= 3);
            let mut nodes: Vec<_> = targets.iter().map(|t| t.node.clone()).collect();
            nodes.sort();
            nodes.dedup();
            assert_eq!(nodes.len(), targets.len());
            assert!(targets.iter().all(|t| alive(&t.node)));
            let live = walk.iter().filter(|id| alive(id)).count();
            assert_eq!(targets.len(), live.min(3));
        }
    }

    #[test]
    fn segments_cover_the_circle_within_shards() {
        let ring = Ring::new(ids(&["a", "b", "c", "d"]), 8);
        let segs = ring.segments(3);
        assert_eq!(
            segs.len(),
            4 * 8 + 64,
            "one cut per token and per shard boundary"
        );
        assert_eq!(segs[0].start, u64::MAX);
        assert_eq!(segs.last().unwrap().end, u64::MAX);
        for w in segs.windows(2) {
            assert_eq!(w[0].end, w[1].start, "contiguous");
        }
        for seg in &segs {
            let first = seg.start.wrapping_add(1);
            assert_eq!(shard_of(first), shard_of(seg.end), "inside one shard");
            assert_eq!(seg.homes, ring.preference_list_for_hash(first, 3));
            assert_eq!(seg.homes, ring.preference_list_for_hash(seg.end, 3));
        }
        // Random keys fall in the segment whose homes are their preference list.
        for key in keys(2000) {
            let h = key_hash(&key);
            let i = segs.partition_point(|s| s.end < h);
            assert!(segs[i].start < h || (segs[i].start == u64::MAX && i == 0));
            assert_eq!(segs[i].homes, ring.preference_list(&key, 3));
        }
        let empty = Ring::new(Vec::new(), 8).segments(3);
        assert_eq!(empty.len(), 64);
        assert!(empty.iter().all(|s| s.homes.is_empty()));
    }

    #[test]
    fn fingerprints_tell_rings_apart() {
        let a = Ring::new(ids(&["a", "b"]), 8);
        assert_eq!(
            a.fingerprint(),
            Ring::new(ids(&["b", "a"]), 8).fingerprint()
        );
        assert_ne!(
            a.fingerprint(),
            Ring::new(ids(&["a", "b", "c"]), 8).fingerprint()
        );
        assert_ne!(
            a.fingerprint(),
            Ring::new(ids(&["a", "b"]), 9).fingerprint()
        );
    }

    #[test]
    fn arcs_cover_the_circle() {
        let ring = Ring::new(ids(&["a", "b"]), 3);
        let arcs = ring.arcs();
        assert_eq!(arcs.len(), 6);
        for w in arcs.windows(2) {
            assert_eq!(w[0].1, w[1].0);
        }
        assert_eq!(arcs[0].0, arcs[5].1);
    }
}
