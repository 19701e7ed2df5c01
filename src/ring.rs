//! The consistent-hash ring: which nodes hold a key.
//!
//! Each node owns `vnodes` tokens on a 64-bit circle. A key hashes to a point on the circle,
//! and its replicas are the first N *distinct* nodes met walking clockwise from that point:
//! its preference list, as in Dynamo.
//!
//! **Zones.** Each node is in a failure domain, its zone (a rack, an availability zone;
//! [`DEFAULT_ZONE`] unless told). A key's homes are the first nodes clockwise such that no
//! zone is used twice while unused zones remain: with at least N zones, every key's N homes
//! are in N distinct zones, so losing a whole zone costs every key at most one home. With
//! fewer zones the homes are spread as evenly as possible: the first node of every zone
//! first, then a second node of every zone, and so on, each round in clockwise order. With
//! one zone this is the plain rule above.
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

/// A failure domain: a rack, an availability zone (`--zone`).
pub type Zone = Arc<str>;

/// The zone of a node that names none.
pub const DEFAULT_ZONE: &str = "default";

/// An immutable ring; rebuild it when membership changes.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// Sorted by (token, node index) so ties are broken the same way everywhere.
    tokens: Vec<(u64, u32)>,
    /// Member node ids, sorted.
    nodes: Vec<NodeId>,
    /// Each node's zone, as an index into `zones`, parallel to `nodes`.
    zone_of: Vec<u32>,
    /// The zones, sorted.
    zones: Vec<Zone>,
    vnodes: usize,
}

impl Ring {
    /// Builds the ring of `nodes` with `vnodes` tokens each, all in one zone: placement by
    /// position alone. Duplicate ids count once.
    pub fn new(nodes: impl IntoIterator<Item = NodeId>, vnodes: usize) -> Ring {
        let zone = Zone::from(DEFAULT_ZONE);
        Ring::with_zones(nodes.into_iter().map(|n| (n, zone.clone())), vnodes)
    }

    /// Builds the ring of `nodes`, each in its zone, with `vnodes` tokens each. A duplicate
    /// id counts once, in the zone given first.
    pub fn with_zones(nodes: impl IntoIterator<Item = (NodeId, Zone)>, vnodes: usize) -> Ring {
        let mut layout: Vec<(NodeId, Zone)> = nodes.into_iter().collect();
        layout.sort_by(|a, b| a.0.cmp(&b.0));
        layout.dedup_by(|b, a| a.0 == b.0);
        let mut zones: Vec<Zone> = layout.iter().map(|(_, z)| z.clone()).collect();
        zones.sort();
        zones.dedup();
        let zone_of = layout
            .iter()
            .map(|(_, z)| zones.binary_search(z).unwrap_or(0) as u32)
            .collect();
        let nodes: Vec<NodeId> = layout.into_iter().map(|(n, _)| n).collect();
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
            zone_of,
            zones,
            vnodes,
        }
    }

    /// The member node ids, sorted.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The zones of the ring's nodes, sorted.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// The zone of `node`, if it is a member.
    pub fn zone(&self, node: &str) -> Option<&Zone> {
        let i = self.nodes.binary_search_by(|n| (**n).cmp(node)).ok()?;
        self.zones.get(self.zone_of[i] as usize)
    }

    /// Whether `a` and `b` are members of one zone.
    pub fn same_zone(&self, a: &str, b: &str) -> bool {
        matches!((self.zone(a), self.zone(b)), (Some(x), Some(y)) if x == y)
    }

    /// Every member with its zone, in id order: two rings with the same layout and vnodes
    /// are the same ring.
    pub fn layout(&self) -> impl Iterator<Item = (&NodeId, &Zone)> {
        self.nodes
            .iter()
            .zip(&self.zone_of)
            .map(|(n, z)| (n, &self.zones[*z as usize]))
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
        let clockwise = (0..len).map(|i| self.tokens[(start + i) % len].1 as usize);
        if self.zones.len() <= 1 {
            for idx in clockwise {
                let node = &self.nodes[idx];
                if !out.contains(node) {
                    out.push(node.clone());
                    if out.len() == want {
                        break;
                    }
                }
            }
            return out;
        }
        // Distinct nodes in clockwise order: until `want` zones are seen when the ring has
        // that many (the homes are then the first node of each), else all of them.
        let enough_zones = if self.zones.len() >= want {
            want
        } else {
            usize::MAX
        };
        let mut seen = vec![false; self.nodes.len()];
        let mut zone_seen = vec![false; self.zones.len()];
        let (mut order, mut zones_seen) = (Vec::new(), 0);
        for idx in clockwise {
            if std::mem::replace(&mut seen[idx], true) {
                continue;
            }
            order.push(idx);
            let z = self.zone_of[idx] as usize;
            if !std::mem::replace(&mut zone_seen[z], true) {
                zones_seen += 1;
            }
            if zones_seen == enough_zones || order.len() == self.nodes.len() {
                break;
            }
        }
        // Rounds: in round r, each zone's next node in clockwise order, while it has r homes.
        let mut used = vec![0usize; self.zones.len()];
        let mut taken = vec![false; order.len()];
        let mut round = 0;
        while out.len() < want {
            for (j, &idx) in order.iter().enumerate() {
                let z = self.zone_of[idx] as usize;
                if !taken[j] && used[z] == round {
                    taken[j] = true;
                    used[z] += 1;
                    out.push(self.nodes[idx].clone());
                    if out.len() == want {
                        break;
                    }
                }
            }
            round += 1;
        }
        out
    }

    /// Each node's share of the keys' copies: the fraction of the circle whose keys have it
    /// among their `n` homes, divided by `n` (so the shares add up to 1). Equal shares mean
    /// equal load; zones of unequal size make them unequal.
    pub fn shares(&self, n: usize) -> Vec<(NodeId, f64)> {
        const CIRCLE: f64 = 18_446_744_073_709_551_616.0; // 2^64
        let mut share = vec![0f64; self.nodes.len()];
        let n = n.min(self.nodes.len()).max(1);
        let len = self.tokens.len();
        for i in 0..len {
            // The arc (previous token, this token] has the homes of this token's hash.
            let (prev, end) = (self.tokens[(i + len - 1) % len].0, self.tokens[i].0);
            let arc = if len == 1 {
                CIRCLE
            } else {
                end.wrapping_sub(prev) as f64
            };
            for home in self.preference_list_for_hash(end, n) {
                if let Ok(idx) = self.nodes.binary_search(&home) {
                    share[idx] += arc / CIRCLE / n as f64;
                }
            }
        }
        self.nodes.iter().cloned().zip(share).collect()
    }

    /// A digest of the ring's shape: equal on two nodes iff their rings are equal.
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(self.vnodes as u64).to_le_bytes());
        for n in &self.nodes {
            h.update(&(n.len() as u64).to_le_bytes());
            h.update(n.as_bytes());
        }
        // Zones change placement; a ring of one zone hashes as before zones existed.
        if self.zones.len() > 1 {
            for (_, zone) in self.layout() {
                h.update(&(zone.len() as u64).to_le_bytes());
                h.update(zone.as_bytes());
            }
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
/// each dead one is replaced by a live node past the homes that is not already used, which
/// keeps the copy with a hint naming the home: the first such node in the dead home's zone
/// (`same_zone`), else the first one, so that the copies stay spread over zones. If the ring
/// runs out of live nodes, the remaining dead homes simply get no copy.
pub fn sloppy_targets(
    walk: &[NodeId],
    n: usize,
    alive: impl Fn(&NodeId) -> bool,
    same_zone: impl Fn(&NodeId, &NodeId) -> bool,
) -> Vec<Target> {
    let homes = &walk[..n.min(walk.len())];
    let mut fallbacks: Vec<&NodeId> = walk[homes.len()..].iter().filter(|id| alive(id)).collect();
    let mut out = Vec::with_capacity(homes.len());
    for home in homes {
        if alive(home) {
            out.push(Target {
                node: home.clone(),
                hint_for: None,
            });
            continue;
        }
        let pick = fallbacks
            .iter()
            .position(|fb| same_zone(fb, home))
            .or((!fallbacks.is_empty()).then_some(0));
        if let Some(i) = pick {
            out.push(Target {
                node: fallbacks.remove(i).clone(),
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

    fn no_zones(_: &NodeId, _: &NodeId) -> bool {
        false
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
            sloppy_targets(&walk, 3, alive_except(&[]), no_zones),
            vec![t("a", None), t("b", None), t("c", None)]
        );
        assert_eq!(
            sloppy_targets(&walk, 3, alive_except(&["b"]), no_zones),
            vec![t("a", None), t("d", Some("b")), t("c", None)]
        );
        assert_eq!(
            sloppy_targets(&walk, 3, alive_except(&["a", "c", "d"]), no_zones),
            vec![t("e", Some("a")), t("b", None)]
        );
        // No live node left to stand in: the dead homes get nothing.
        assert_eq!(
            sloppy_targets(&walk, 3, alive_except(&["a", "b", "c", "d", "e"]), no_zones),
            vec![]
        );
        // Never more targets than homes, never a node twice.
        for mask in 0u32..32 {
            let alive = |id: &NodeId| mask & (1 << (id.as_bytes()[0] - b'a')) != 0;
            let targets = sloppy_targets(&walk, 3, alive, no_zones);
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

    // ---- zones ----

    /// Nodes by name, each in the zone its name starts with (`a1` in `a`).
    fn named(names: &[&str]) -> Vec<(NodeId, Zone)> {
        names
            .iter()
            .map(|n| (NodeId::from(*n), Zone::from(&n[..1])))
            .collect()
    }

    /// `count` nodes named `n0..`, node i in zone `z{i % zones}`.
    fn zoned(count: usize, zones: usize) -> Vec<(NodeId, Zone)> {
        (0..count)
            .map(|i| {
                (
                    NodeId::from(format!("n{i}")),
                    Zone::from(format!("z{}", i % zones)),
                )
            })
            .collect()
    }

    /// The rule, checked for one key's homes on one ring: distinct nodes; distinct zones while
    /// the ring has at least N zones; otherwise every zone's count within one of the others'
    /// (as even as the zones' sizes allow).
    fn check_homes(ring: &Ring, homes: &[NodeId], n: usize) {
        let want = n.min(ring.nodes().len());
        assert_eq!(homes.len(), want);
        let mut distinct = homes.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), want, "distinct nodes: {homes:?}");
        let mut per_zone: HashMap<&Zone, usize> = HashMap::new();
        for h in homes {
            *per_zone.entry(ring.zone(h).expect("a member")).or_default() += 1;
        }
        if ring.zones().len() >= want {
            assert!(
                per_zone.values().all(|c| *c == 1),
                "distinct zones: {homes:?}"
            );
        } else {
            // A zone below the most used one must have run out of nodes.
            let most = per_zone.values().copied().max().unwrap_or(0);
            for zone in ring.zones() {
                let used = per_zone.get(zone).copied().unwrap_or(0);
                let size = ring.layout().filter(|(_, z)| *z == zone).count();
                assert!(
                    used + 1 >= most || used == size,
                    "zone {zone} has {used} of {homes:?}, another {most}"
                );
            }
        }
    }

    #[test]
    fn homes_are_distinct_nodes_in_distinct_zones_on_every_small_ring() {
        // Every ring of 1..=7 nodes over 1..=4 zones, N = 1..=5, many keys.
        for count in 1..=7 {
            for zones in 1..=4usize.min(count) {
                let ring = Ring::with_zones(zoned(count, zones), 16);
                for n in 1..=5 {
                    for key in keys(300) {
                        check_homes(&ring, &ring.preference_list(&key, n), n);
                    }
                }
            }
        }
    }

    #[test]
    fn uneven_zones_are_used_evenly_then_filled() {
        // Zones of 3, 1 and 1 nodes, N = 5: every key has all five, the small zones once each.
        let layout = named(&["a1", "a2", "a3", "b1", "c1"]);
        let ring = Ring::with_zones(layout, 16);
        for key in keys(500) {
            let homes = ring.preference_list(&key, 3);
            check_homes(&ring, &homes, 3);
            let zones: Vec<&str> = homes.iter().map(|h| &**ring.zone(h).unwrap()).collect();
            let mut sorted = zones.clone();
            sorted.sort();
            assert_eq!(sorted, ["a", "b", "c"], "{homes:?}");
            check_homes(&ring, &ring.preference_list(&key, 5), 5);
        }
    }

    #[test]
    fn one_zone_is_the_plain_ring() {
        let plain = Ring::new(ids(&["a", "b", "c", "d"]), 16);
        let one = Ring::with_zones(
            ids(&["a", "b", "c", "d"])
                .into_iter()
                .map(|n| (n, Zone::from("rack-1"))),
            16,
        );
        assert_eq!(plain.fingerprint(), one.fingerprint());
        for key in keys(500) {
            assert_eq!(plain.preference_list(&key, 3), one.preference_list(&key, 3));
        }
        // Zones that change placement change the fingerprint.
        let two = Ring::with_zones(zoned(4, 2), 16);
        let also_plain = Ring::new(two.nodes().to_vec(), 16);
        assert_ne!(two.fingerprint(), also_plain.fingerprint());
    }

    /// A whole zone down leaves every key at least N - 1 homes when the ring has N zones or
    /// more, on rings up to 1,000 nodes.
    #[test]
    fn losing_a_zone_costs_every_key_at_most_one_home() {
        for (count, zones, vnodes) in [
            (6, 3, 256),
            (9, 3, 64),
            (10, 5, 64),
            (1000, 3, 16),
            (1000, 5, 16),
        ] {
            let ring = Ring::with_zones(zoned(count, zones), vnodes);
            for key in keys(if count > 100 { 300 } else { 2000 }) {
                let homes = ring.preference_list(&key, 3);
                check_homes(&ring, &homes, 3);
                for lost in ring.zones() {
                    let left = homes.iter().filter(|h| ring.zone(h) != Some(lost)).count();
                    assert!(left >= 2, "{count} nodes, zone {lost} down: {homes:?}");
                }
            }
        }
    }

    /// A join moves only keys that the newcomer becomes a home of, each by one home.
    #[test]
    fn a_join_in_a_zone_moves_only_keys_to_the_newcomer() {
        for (zones, n) in [(3, 3), (2, 3), (3, 2), (4, 3)] {
            let before = Ring::with_zones(zoned(6, zones), DEFAULT_VNODES);
            let mut layout = zoned(6, zones);
            layout.push((NodeId::from("new"), Zone::from("z1")));
            let after = Ring::with_zones(layout, DEFAULT_VNODES);
            let total = 20_000;
            let mut moved = 0;
            for key in keys(total) {
                let old = before.preference_list(&key, n);
                let new = after.preference_list(&key, n);
                let lost: Vec<_> = old.iter().filter(|h| !new.contains(h)).collect();
                assert!(lost.len() <= 1, "{old:?} -> {new:?}");
                if !lost.is_empty() {
                    moved += 1;
                    assert!(new.iter().any(|h| &**h == "new"), "{old:?} -> {new:?}");
                }
            }
            // About N/7 of the keys gain the newcomer; never a reshuffle.
            let frac = moved as f64 / total as f64;
            assert!(frac < 0.6, "{zones} zones, N={n}: {frac:.3} of keys moved");
        }
    }

    #[test]
    fn fallbacks_prefer_the_dead_homes_zone() {
        let layout = named(&["a1", "b1", "c1", "a2", "b2", "c2"]);
        let ring = Ring::with_zones(layout, 16);
        let same = |x: &NodeId, y: &NodeId| ring.same_zone(x, y);
        for key in keys(500) {
            let walk = ring.preference_list(&key, 6);
            let homes = &walk[..3];
            for dead in homes {
                let alive = |id: &NodeId| id != dead;
                let targets = sloppy_targets(&walk, 3, alive, same);
                let fb = targets.iter().find(|t| t.hint_for.as_ref() == Some(dead));
                let fb = fb.expect("a stand-in");
                assert!(
                    ring.same_zone(&fb.node, dead),
                    "{walk:?}: {fb:?} for {dead}"
                );
                // The copies stay in three zones.
                let mut zones: Vec<&Zone> = targets
                    .iter()
                    .map(|t| ring.zone(&t.node).unwrap())
                    .collect();
                zones.sort();
                zones.dedup();
                assert_eq!(zones.len(), 3);
            }
        }
    }

    #[test]
    fn shares_add_up_and_show_unequal_zones() {
        let even = Ring::with_zones(zoned(6, 3), DEFAULT_VNODES);
        let shares = even.shares(3);
        let total: f64 = shares.iter().map(|(_, s)| s).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let (min, max) = min_max(&shares);
        assert!(
            max / min < 1.5,
            "6 nodes in 3 equal zones: {max:.3}/{min:.3}"
        );
        // 2, 2, 1: the lone node holds a copy of every key, 1/3 of all copies.
        let layout = named(&["a1", "a2", "b1", "b2", "c1"]);
        let uneven = Ring::with_zones(layout, DEFAULT_VNODES);
        let lone = uneven
            .shares(3)
            .into_iter()
            .find(|(n, _)| &**n == "c1")
            .unwrap()
            .1;
        assert!((lone - 1.0 / 3.0).abs() < 1e-9, "{lone}");
        // The figures the README and the closing note quote (`-- --nocapture`).
        for (label, ring) in [
            (
                "6 nodes, no zones",
                Ring::new(even.nodes().to_vec(), DEFAULT_VNODES),
            ),
            ("6 nodes in 3 zones of 2", even),
            (
                "5 nodes, no zones",
                Ring::new(uneven.nodes().to_vec(), DEFAULT_VNODES),
            ),
            ("5 nodes in zones of 2, 2, 1", uneven),
        ] {
            let (min, max) = min_max(&ring.shares(3));
            println!(
                "{label}: shares of the copies {min:.3} .. {max:.3}, max/min {:.2}",
                max / min
            );
        }
    }

    fn min_max(shares: &[(NodeId, f64)]) -> (f64, f64) {
        let min = shares.iter().map(|(_, s)| *s).fold(f64::MAX, f64::min);
        let max = shares.iter().map(|(_, s)| *s).fold(0.0, f64::max);
        (min, max)
    }
}
