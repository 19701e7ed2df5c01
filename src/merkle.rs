//! Incremental Merkle trees over ring arcs, for anti-entropy.
//!
//! ## What this module owns
//!
//! One [`MerkleTree`] summarizes the keys of one *ring arc*: the hash range between two
//! consecutive ring tokens, whose keys all share one replica set. Every store mutation of a
//! key (write, merge, expiry, GC) changes that key's *digest*, a `u64` that is 0 when the key
//! is absent, and the store reports the change with [`MerkleTree::update`] in O(depth). Two
//! replicas of an arc then compare roots, descend only into the children that differ
//! ([`differing_children`]), and finally exchange the keys of the differing leaves
//! ([`MerkleTree::leaf_range`]). [`diff`] simulates that whole walk between two local trees;
//! tests and the cost figures below use it. This module decides only *which* leaves differ:
//! the messages, the key listing and the repair belong to the caller. It is pure: no I/O, no
//! clocks.
//!
//! ## Design
//!
//! The shape is fixed: every internal node has [`FANOUT`] = 16 children and the tree has
//! `depth` levels below the root, so `16^depth` leaves. Level `l` is one flat `Vec<u64>` of
//! `16^l` nodes; node `i` of level `l` has children `16 i .. 16 i + 16` of level `l + 1`.
//! A tree covers the arc `(start_exclusive, end_inclusive]` of the 64-bit circle, or the whole
//! circle when `start == end` (a one-token ring). A key hash `h` sits at offset
//! `h - start - 1` (wrapping) into the arc, and its leaf is `offset * leaves / arc_length`
//! computed in `u128`: leaves split the arc into ranges whose lengths differ by at most one,
//! and when the arc is shorter than the number of leaves some leaves are simply empty.
//!
//! ## Why additive hashing
//!
//! A leaf's value is the wrapping sum of the digests of its keys, and an internal node's value
//! is the wrapping sum of its children (hence of every digest below it). Changing a key's
//! digest from `old` to `new` adds `new - old` (wrapping) to the `depth + 1` nodes on its path:
//! no hashing, no list of a leaf's keys, nothing to rebuild, ever. And because addition
//! commutes, two replicas that applied the same mutations in different orders hold
//! bit-identical trees, which is what makes maintaining trees incrementally sound. A classic
//! Merkle tree (node = hash of its children) must instead rehash 16 children at every level
//! of the path, and hash each leaf's keys in a canonical order, so real systems rebuild it by
//! scanning (Cassandra) or mark dirty leaves and rehash before each exchange (Riak).
//! A sum rather than an XOR because an XOR cancels equal digests pairwise: two keys with the
//! same digest in a leaf would look exactly like two absent keys.
//!
//! The price is collision resistance against an adversary: sums are linear, so chosen inputs
//! can make different key sets sum alike. Replicas trust each other, though, and the digests
//! are XXH3 outputs, so two different leaves (or subtrees) sum to the same value with
//! probability about 2^-64 per comparison; over 800 arcs compared every second that is one
//! missed difference per ~7 * 10^8 years, and even then the key is only stale until its next
//! write, read repair, or any other change in its leaf.
//!
//! ## Costs
//!
//! A tree of depth `d` holds `(16^(d+1) - 1) / 15` nodes of 8 bytes:
//!
//! | depth | leaves | memory per tree | for 800 arcs |
//! |---|---|---|---|
//! | 1 | 16 | 136 B | 106 KiB |
//! | **2** (default) | 256 | 2.1 KiB | 1.7 MiB |
//! | 3 | 4096 | 34 KiB | 27 MiB |
//! | 4 | 65536 | 546 KiB | 427 MiB |
//! | 6 ([`MAX_DEPTH`]) | 16.7 M | 137 MiB | – |
//!
//! An update is one `u128` division plus `depth + 1` additions. Comparing an arc costs one
//! round trip carrying one hash when the replicas agree, whatever the number of keys: all ~800
//! arcs of a node cost ~6.3 KiB of roots per round. With `k` differing keys, the walk takes
//! `depth + 1` round trips and at most `1 + 16 k depth` hashes, then the caller lists the keys
//! of at most `k` leaves. [`diff`] counts exactly this, and a test checks the figures on 1M
//! keys.
//!
//! [`DEFAULT_DEPTH`] is 2. A node with ~1M keys over ~800 arcs has ~1.3k keys per arc: ~5 keys
//! per leaf at depth 2, ~0.3 at depth 3. Repairing one key at depth 2 costs 33 hashes (264 B),
//! three round trips, and the listing of ~5 keys (~200 B at ~40 B per key and digest); at
//! depth 3, 49 hashes (392 B), four round trips, and ~1.3 keys (~50 B). The bytes come out
//! even, so depth 3 would buy nothing for one more round trip per repair and 16x the memory
//! (27 MiB per node instead of 1.7 MiB), three quarters of it empty leaves. Depth 3 is worth
//! it once depth-2 leaves hold tens of keys: ~10k keys per arc, ~8M keys per node.
//!
//! ## Caveats
//!
//! - A tree is exactly as right as the `(old, new)` digests it is given: the caller must read
//!   `old` and compute `new` atomically with the mutation (under the key's shard lock). Since
//!   updates commute, applying them to the tree may happen later and in any order, but a lost
//!   or doubled update skews the tree until it is rebuilt from the store.
//! - A key's digest must depend on the key itself, not only on its value: with
//!   `digest = hash(value)`, two keys of one leaf swapping values would leave the sum intact.
//! - Keys must be placed with the ring's hash ([`crate::ring::key_hash`]) so that leaf ranges
//!   are ranges of the ring.
//! - A tree cannot be split or merged when the ring changes (leaf boundaries move with the
//!   arc), and two trees compare only when their arc and depth are equal: the shape belongs in
//!   the message that carries the root. [`diff`] treats a shape mismatch as "every leaf
//!   differs".
//! - A real walk is not atomic: a write landing between two round trips can make a node
//!   differ, or stop differing, midway. That is harmless: the key exchange compares keys
//!   directly, and the next round picks up whatever this one missed.
//! - [`MerkleTree::leaf_range`] returns `(x, x)` for an empty leaf. Unlike the tree's own arc,
//!   that never means the whole circle, since a tree has at least 16 leaves.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Children per internal node. 16 keeps the tree shallow (few round trips) while a reply
/// carrying one node's children stays at 128 bytes.
pub const FANOUT: usize = 16;

/// log2([`FANOUT`]): level `l` has `1 << (FANOUT_BITS * l)` nodes.
const FANOUT_BITS: u32 = 4;

/// Default levels below the root: 256 leaves, ~5 keys per leaf for ~1.3k keys per arc. See
/// the module docs for the reasoning and when to raise it.
pub const DEFAULT_DEPTH: u32 = 2;

/// Deepest tree allowed: 16^6 = 2^24 leaves (137 MiB per tree), so leaf indices fit a `u32`
/// with room to spare. [`MerkleTree::new`] clamps to `1..=MAX_DEPTH`.
pub const MAX_DEPTH: u32 = 6;

/// A node of a tree: `level` 0 is the root, level `depth` holds the leaves, and `index`
/// counts from 0 within the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeRef {
    /// Distance from the root: 0 for the root, `depth` for a leaf.
    pub level: u32,
    /// Position within the level, `0..16^level`; for a leaf, its leaf number.
    pub index: u32,
}

impl NodeRef {
    /// The root of every tree, where a comparison starts.
    pub const ROOT: NodeRef = NodeRef { level: 0, index: 0 };
}

/// The additive Merkle tree of one ring arc. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct MerkleTree {
    start: u64,
    end: u64,
    /// Number of hashes in the arc, `1..=2^64`; never 0, so it is always a safe divisor.
    len: u128,
    depth: u32,
    /// `levels[l]` holds the `16^l` nodes of level `l`; `levels[depth]` are the leaves.
    levels: Vec<Vec<u64>>,
    /// Keys with a non-zero digest, according to the updates. Wrapping, like the sums, so it
    /// too is independent of the order of updates.
    keys: u64,
}

impl fmt::Debug for MerkleTree {
    /// Leaves out the nodes: thousands of numbers would bury the fields that matter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerkleTree")
            .field("start_exclusive", &self.start)
            .field("end_inclusive", &self.end)
            .field("depth", &self.depth)
            .field("keys", &self.keys)
            .field("root", &format_args!("{:#018x}", self.root()))
            .finish_non_exhaustive()
    }
}

impl MerkleTree {
    /// An empty tree over the arc `(start_exclusive, end_inclusive]`, or over the whole circle
    /// when the two are equal. `depth` is clamped to `1..=MAX_DEPTH`.
    pub fn new(start_exclusive: u64, end_inclusive: u64, depth: u32) -> MerkleTree {
        let depth = depth.clamp(1, MAX_DEPTH);
        let len = match end_inclusive.wrapping_sub(start_exclusive) {
            0 => 1u128 << 64,
            n => u128::from(n),
        };
        MerkleTree {
            start: start_exclusive,
            end: end_inclusive,
            len,
            depth,
            levels: (0..=depth)
                .map(|level| vec![0; 1 << (FANOUT_BITS * level)])
                .collect(),
            keys: 0,
        }
    }

    /// The arc covered, as `(start_exclusive, end_inclusive)`.
    pub fn arc(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    /// Levels below the root.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Number of leaves, `16^depth`.
    pub fn leaves(&self) -> usize {
        1 << (FANOUT_BITS * self.depth)
    }

    /// True if `hash` lies in the tree's arc.
    pub fn contains(&self, hash: u64) -> bool {
        self.offset_of(hash).is_some()
    }

    /// The leaf holding `hash`, or `None` if the hash is outside the arc.
    pub fn leaf_of(&self, hash: u64) -> Option<u32> {
        let offset = self.offset_of(hash)?;
        // offset < len, so the quotient is < leaves <= 2^24 and always fits.
        u32::try_from(u128::from(offset) * self.leaves() as u128 / self.len).ok()
    }

    /// Records that the key at `hash` changed digest from `old_digest` to `new_digest` (0 for
    /// an absent key): O(depth). Returns false, changing nothing, if `hash` is outside the arc,
    /// which is a caller bug.
    pub fn update(&mut self, hash: u64, old_digest: u64, new_digest: u64) -> bool {
        let Some(leaf) = self.leaf_of(hash) else {
            return false;
        };
        match (old_digest, new_digest) {
            (0, 0) => {}
            (0, _) => self.keys = self.keys.wrapping_add(1),
            (_, 0) => self.keys = self.keys.wrapping_sub(1),
            _ => {}
        }
        let delta = new_digest.wrapping_sub(old_digest);
        if delta != 0 {
            for (level, nodes) in (0..=self.depth).zip(self.levels.iter_mut()) {
                // The ancestor of `leaf` at `level` drops one base-16 digit per level up.
                let index = leaf >> (FANOUT_BITS * (self.depth - level));
                if let Some(node) = nodes.get_mut(index as usize) {
                    *node = node.wrapping_add(delta);
                }
            }
        }
        true
    }

    /// The root: the wrapping sum of every digest in the arc.
    pub fn root(&self) -> u64 {
        self.get(NodeRef::ROOT).unwrap_or(0)
    }

    /// The value of `node`, or `None` if the tree has no such node.
    pub fn get(&self, node: NodeRef) -> Option<u64> {
        self.levels
            .get(node.level as usize)?
            .get(node.index as usize)
            .copied()
    }

    /// The [`FANOUT`] children values of `node`, what a peer sends back when asked about it.
    /// `None` for leaves and for nodes the tree does not have.
    pub fn children(&self, node: NodeRef) -> Option<&[u64]> {
        if node.level >= self.depth {
            return None;
        }
        let below = self.levels.get(node.level as usize + 1)?;
        // An index past its level maps past the level below, so `get` rejects it too.
        let first = (node.index as usize).checked_mul(FANOUT)?;
        below.get(first..first.checked_add(FANOUT)?)
    }

    /// Keys with a non-zero digest, according to the updates (exact only if every update
    /// passed the key's true previous digest).
    pub fn key_count(&self) -> u64 {
        self.keys
    }

    /// True if the tree is probably empty: no key counted and a zero root. "Probably" because
    /// both only reflect the updates: a caller passing wrong old digests can skew them.
    pub fn is_empty(&self) -> bool {
        self.keys == 0 && self.root() == 0
    }

    /// The hash range `(start_exclusive, end_inclusive]` covered by a leaf, so a peer can list
    /// the keys in it. The leaves partition the arc in order. An empty leaf (in arcs shorter
    /// than [`MerkleTree::leaves`]) and an index past the last leaf give `(x, x)`, which here
    /// means empty, never the whole circle.
    pub fn leaf_range(&self, leaf: u32) -> (u64, u64) {
        if leaf as usize >= self.leaves() {
            return (self.end, self.end);
        }
        let first = self.leaf_boundary(leaf);
        let past = self.leaf_boundary(leaf + 1);
        // Offset `o` is hash `start + 1 + o`, so offsets `first..past` are the hashes
        // `(start + first, start + past]`. `past` may be 2^64 (whole circle): truncating it
        // wraps back to `start`, which is then also `end`.
        (
            self.start.wrapping_add(first as u64),
            self.start.wrapping_add(past as u64),
        )
    }

    /// The first offset whose leaf is `leaf` or later: the least `o` with
    /// `o * leaves / len >= leaf`, i.e. `ceil(leaf * len / leaves)`. Equal boundaries for two
    /// consecutive leaves mean the first of them is empty.
    fn leaf_boundary(&self, leaf: u32) -> u128 {
        (u128::from(leaf) * self.len).div_ceil(self.leaves() as u128)
    }

    /// The offset of `hash` into the arc, if it lies in it.
    fn offset_of(&self, hash: u64) -> Option<u64> {
        let offset = hash.wrapping_sub(self.start).wrapping_sub(1);
        (u128::from(offset) < self.len).then_some(offset)
    }

    fn same_shape(&self, other: &MerkleTree) -> bool {
        (self.start, self.end, self.depth) == (other.start, other.end, other.depth)
    }
}

/// One step of the comparison walk, done by whichever side holds both answers:
/// given the children hashes of `node` on both sides, the children that differ.
///
/// `theirs` comes off the network, so a malformed reply must not panic: only the first
/// [`FANOUT`] positions are read, a position present on one side only counts as differing,
/// and children whose level or index would overflow a `u32` are dropped.
pub fn differing_children(node: NodeRef, ours: &[u64], theirs: &[u64]) -> Vec<NodeRef> {
    let Some(level) = node.level.checked_add(1) else {
        return Vec::new();
    };
    (0..FANOUT)
        .filter(|&i| ours.get(i) != theirs.get(i))
        .filter_map(|i| {
            let index = node
                .index
                .checked_mul(FANOUT as u32)?
                .checked_add(i as u32)?;
            Some(NodeRef { level, index })
        })
        .collect()
}

/// What a comparison of two trees found, and what it cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffOutcome {
    /// The differing leaves, ascending: the ranges whose keys the replicas must exchange.
    pub leaves: Vec<u32>,
    /// Request/response round trips of the walk, the root comparison included and the final
    /// key exchange excluded: 1 if the roots agree, `depth + 1` otherwise.
    pub round_trips: u32,
    /// Node hashes sent: 1 for the root, then [`FANOUT`] per differing internal node
    /// (node references in requests are not counted).
    pub hashes_sent: u64,
}

/// Simulates the whole exchange between two trees over the same arc: starting at the roots, each round
/// batches all differing nodes of one level into one request; returns the differing leaves and the number of
/// request/response round trips and hashes transferred. Used by tests and by the docs' cost figures.
///
/// Trees of different arcs or depths cannot be compared node by node. The first message (which
/// carries the root and the shape) reveals that, and the only safe answer is then that every
/// leaf of `a` differs: one round trip, one hash.
pub fn diff(a: &MerkleTree, b: &MerkleTree) -> DiffOutcome {
    let mut out = DiffOutcome {
        leaves: Vec::new(),
        round_trips: 1,
        hashes_sent: 1,
    };
    if !a.same_shape(b) {
        out.leaves = (0..a.leaves() as u32).collect();
        return out;
    }
    if a.root() == b.root() {
        return out;
    }
    // The differing nodes of the current level, in index order; children are appended in
    // index order too, so the leaves come out sorted.
    let mut frontier = vec![NodeRef::ROOT];
    for _ in 0..a.depth() {
        out.round_trips += 1;
        let mut next = Vec::new();
        for node in frontier {
            if let (Some(ours), Some(theirs)) = (a.children(node), b.children(node)) {
                out.hashes_sent += FANOUT as u64;
                next.extend(differing_children(node, ours, theirs));
            }
        }
        frontier = next;
    }
    out.leaves = frontier.into_iter().map(|node| node.index).collect();
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use rand::rngs::Xoshiro256PlusPlus as TestRng;
    use rand::seq::SliceRandom;
    use rand::{RngExt, SeedableRng};
    use xxhash_rust::xxh3::xxh3_64;

    use super::*;

    const SEEDS: u64 = 8;

    /// Hashes in the arc: length 2^64 when start == end.
    fn arc_len(start: u64, end: u64) -> u128 {
        match end.wrapping_sub(start) {
            0 => 1 << 64,
            n => u128::from(n),
        }
    }

    /// True if `hash` lies in the range `(s, e]`, where `s == e` means *empty*, as
    /// `leaf_range` returns it.
    fn in_range(hash: u64, (s, e): (u64, u64)) -> bool {
        hash.wrapping_sub(s).wrapping_sub(1) < e.wrapping_sub(s)
    }

    fn hash_in(rng: &mut TestRng, (start, end): (u64, u64)) -> u64 {
        match end.wrapping_sub(start) {
            0 => rng.random(),
            len => start.wrapping_add(1).wrapping_add(rng.random_range(0..len)),
        }
    }

    /// A hash outside the arc, or `None` for the whole circle.
    fn hash_out(rng: &mut TestRng, (start, end): (u64, u64)) -> Option<u64> {
        match start.wrapping_sub(end) {
            0 => None,
            outside => Some(
                end.wrapping_add(1)
                    .wrapping_add(rng.random_range(0..outside)),
            ),
        }
    }

    fn digest(rng: &mut TestRng) -> u64 {
        rng.random::<u64>().max(1)
    }

    /// Random, wrap-around, whole-circle, tiny and edge arcs.
    fn arcs(rng: &mut TestRng) -> Vec<(u64, u64)> {
        let (a, b) = (rng.random::<u64>(), rng.random::<u64>());
        let s = rng.random::<u64>();
        let mut out = vec![
            (a, b),
            (a.max(b), a.min(b)),
            (a.min(b), a.max(b)),
            (s, s),
            (0, 0),
            (u64::MAX, u64::MAX),
            (0, u64::MAX),
            (u64::MAX, 0),
            (u64::MAX - 5, 10),
            (s, s.wrapping_add(1 << 40)),
        ];
        for len in [1, 2, 15, 17, 255, 257] {
            out.push((s, s.wrapping_add(len)));
            out.push((u64::MAX - 3, (u64::MAX - 3).wrapping_add(len)));
        }
        out
    }

    fn all_nodes(t: &MerkleTree) -> Vec<u64> {
        let mut out = Vec::new();
        for level in 0..=t.depth() {
            for index in 0..1u32 << (4 * level) {
                let value = t.get(NodeRef { level, index });
                out.push(value.expect("every node of every level exists"));
            }
        }
        out
    }

    fn build(arc: (u64, u64), depth: u32, model: &HashMap<u64, u64>) -> MerkleTree {
        let mut t = MerkleTree::new(arc.0, arc.1, depth);
        for (&h, &d) in model {
            assert!(t.update(h, 0, d));
        }
        t
    }

    /// Every internal node is the wrapping sum of its children.
    fn assert_sums(t: &MerkleTree, ctx: &str) {
        for level in 0..t.depth() {
            for index in 0..1u32 << (4 * level) {
                let node = NodeRef { level, index };
                let kids = t.children(node).expect("internal node");
                let sum = kids.iter().fold(0u64, |acc, &x| acc.wrapping_add(x));
                assert_eq!(t.get(node), Some(sum), "{ctx} {node:?}");
            }
        }
    }

    #[test]
    fn incremental_equals_from_scratch() {
        for seed in 0..SEEDS {
            let mut rng = TestRng::seed_from_u64(seed);
            for arc in arcs(&mut rng) {
                for depth in 1..=3 {
                    let ctx = format!("seed={seed} arc={arc:?} depth={depth}");
                    let mut t = MerkleTree::new(arc.0, arc.1, depth);
                    let mut model: HashMap<u64, u64> = HashMap::new();
                    let mut seen: Vec<u64> = Vec::new();
                    let mut log: Vec<(u64, u64, u64)> = Vec::new();
                    for _ in 0..400 {
                        let roll = rng.random_range(0..10);
                        let h = if roll < 4 || seen.is_empty() {
                            let h = hash_in(&mut rng, arc);
                            seen.push(h);
                            h
                        } else {
                            seen[rng.random_range(0..seen.len())]
                        };
                        let old = model.get(&h).copied().unwrap_or(0);
                        let new = match roll {
                            0..=6 => digest(&mut rng),
                            7 | 8 => 0,
                            _ => old, // a rewrite that does not change the digest
                        };
                        assert!(t.update(h, old, new), "{ctx} h={h}");
                        log.push((h, old, new));
                        if new == 0 {
                            model.remove(&h);
                        } else {
                            model.insert(h, new);
                        }
                        if let Some(out) = hash_out(&mut rng, arc) {
                            let before = t.clone();
                            assert!(!t.update(out, 0, digest(&mut rng)), "{ctx} out={out}");
                            assert!(t == before, "{ctx} out-of-arc update changed the tree");
                        }
                    }
                    let scratch = build(arc, depth, &model);
                    assert_eq!(all_nodes(&t), all_nodes(&scratch), "{ctx}");
                    assert!(t == scratch, "{ctx}");
                    assert_eq!(t.key_count(), model.len() as u64, "{ctx}");
                    assert_eq!(t.is_empty(), model.is_empty(), "{ctx}");
                    assert_sums(&t, &ctx);

                    // The same mutations in any order give the same tree, and so does
                    // inserting the final keys in any order.
                    log.shuffle(&mut rng);
                    let mut shuffled = MerkleTree::new(arc.0, arc.1, depth);
                    for &(h, old, new) in &log {
                        assert!(shuffled.update(h, old, new), "{ctx}");
                    }
                    assert!(shuffled == t, "{ctx} shuffled log");
                    let mut entries: Vec<(u64, u64)> = model.into_iter().collect();
                    entries.sort_unstable(); // HashMap order is random; the seed must decide
                    entries.shuffle(&mut rng);
                    let mut reordered = MerkleTree::new(arc.0, arc.1, depth);
                    for (h, d) in entries {
                        assert!(reordered.update(h, 0, d), "{ctx}");
                    }
                    assert!(reordered == t, "{ctx} shuffled inserts");
                }
            }
        }
    }

    #[test]
    fn deleting_everything_empties_the_tree() {
        let mut rng = TestRng::seed_from_u64(7);
        let mut t = MerkleTree::new(10, 5, DEFAULT_DEPTH);
        assert!(t.is_empty());
        let keys: Vec<(u64, u64)> = (0..1000)
            .map(|_| (hash_in(&mut rng, (10, 5)), digest(&mut rng)))
            .collect::<HashMap<_, _>>()
            .into_iter()
            .collect();
        for &(h, d) in &keys {
            assert!(t.update(h, 0, d));
        }
        assert!(!t.is_empty());
        assert_eq!(t.key_count(), keys.len() as u64);
        for &(h, d) in &keys {
            assert!(t.update(h, d, 0));
        }
        assert!(t.is_empty());
        assert_eq!(t, MerkleTree::new(10, 5, DEFAULT_DEPTH));
    }

    /// Two replicas of one key set, then `b` diverges in `d` keys: changed, deleted or added.
    fn diverge(
        rng: &mut TestRng,
        arc: (u64, u64),
        base: usize,
        d: usize,
    ) -> (HashMap<u64, u64>, HashMap<u64, u64>) {
        let a: HashMap<u64, u64> = (0..base)
            .map(|_| (hash_in(rng, arc), digest(rng)))
            .collect();
        let mut b = a.clone();
        let mut keys: Vec<u64> = a.keys().copied().collect();
        keys.sort_unstable(); // HashMap order is random per process; the seed must decide
        keys.shuffle(rng);
        let mut changed = 0;
        let mut guard = 0;
        while changed < d && guard < 100 * (d + 1) {
            guard += 1;
            let existing = if rng.random_range(0..3) < 2 {
                keys.pop()
            } else {
                None
            };
            if let Some(h) = existing {
                if rng.random_bool(0.5) {
                    b.insert(h, digest(rng));
                } else {
                    b.remove(&h);
                }
                changed += 1;
            } else {
                let h = hash_in(rng, arc);
                if !a.contains_key(&h) && !b.contains_key(&h) {
                    b.insert(h, digest(rng));
                    changed += 1;
                }
            }
        }
        (a, b)
    }

    fn brute_force_leaves(
        t: &MerkleTree,
        a: &HashMap<u64, u64>,
        b: &HashMap<u64, u64>,
    ) -> (Vec<u32>, u64) {
        let mut leaves = BTreeSet::new();
        let mut differing = 0;
        for h in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
            if a.get(h) != b.get(h) {
                differing += 1;
                leaves.insert(t.leaf_of(*h).expect("model keys are in the arc"));
            }
        }
        (leaves.into_iter().collect(), differing)
    }

    #[test]
    fn diff_matches_brute_force() {
        for seed in 0..SEEDS {
            let mut rng = TestRng::seed_from_u64(1000 + seed);
            for arc in arcs(&mut rng) {
                for depth in 1..=3 {
                    for d in [0, 1, 5, 100, usize::MAX] {
                        let ctx = format!("seed={} arc={arc:?} depth={depth} d={d}", 1000 + seed);
                        let (a, b) = if d == usize::MAX {
                            // Fully different: two independent key sets.
                            let a = diverge(&mut rng, arc, 300, 0).0;
                            let b = diverge(&mut rng, arc, 300, 0).0;
                            (a, b)
                        } else {
                            diverge(&mut rng, arc, 1000, d)
                        };
                        let (ta, tb) = (build(arc, depth, &a), build(arc, depth, &b));
                        let (expected, differing) = brute_force_leaves(&ta, &a, &b);
                        let out = diff(&ta, &tb);
                        assert_eq!(out.leaves, expected, "{ctx}");
                        assert_eq!(diff(&tb, &ta).leaves, expected, "{ctx} reversed");
                        if differing == 0 {
                            assert_eq!(
                                out,
                                DiffOutcome {
                                    leaves: vec![],
                                    round_trips: 1,
                                    hashes_sent: 1
                                },
                                "{ctx}"
                            );
                        } else {
                            assert_eq!(out.round_trips, depth + 1, "{ctx}");
                            let bound = 1 + FANOUT as u64 * differing * u64::from(depth);
                            assert!(out.hashes_sent <= bound, "{ctx} {out:?} > {bound}");
                        }
                        // Listing the reported leaf ranges finds every differing key.
                        let ranges: Vec<(u64, u64)> =
                            out.leaves.iter().map(|&l| ta.leaf_range(l)).collect();
                        for h in a.keys().chain(b.keys()) {
                            if a.get(h) != b.get(h) {
                                assert!(ranges.iter().any(|&r| in_range(*h, r)), "{ctx} h={h}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn diff_of_different_shapes_reports_every_leaf() {
        let a = MerkleTree::new(1, 100, 2);
        for b in [
            MerkleTree::new(1, 101, 2),
            MerkleTree::new(0, 100, 2),
            MerkleTree::new(1, 100, 3),
        ] {
            let out = diff(&a, &b);
            assert_eq!(out.leaves, (0..256).collect::<Vec<u32>>(), "{b:?}");
            assert_eq!((out.round_trips, out.hashes_sent), (1, 1));
        }
    }

    /// Checks that the leaf ranges partition the arc in order, with lengths that differ by at
    /// most one, and that the first and last hash of every leaf map back to it. Covers every
    /// leaf, so keep depth small.
    fn assert_partition(t: &MerkleTree, ctx: &str) {
        let (start, end) = t.arc();
        let len = arc_len(start, end);
        let leaves = t.leaves() as u32;
        let (small, big) = (len / leaves as u128, len.div_ceil(leaves as u128));
        let mut cursor = start;
        let mut total = 0u128;
        for leaf in 0..leaves {
            let (s, e) = t.leaf_range(leaf);
            assert_eq!(
                s, cursor,
                "{ctx} leaf {leaf} must start where the last ended"
            );
            let size = u128::from(e.wrapping_sub(s));
            // No leaf covers the whole circle (there are at least 16), so `e - s` is exact.
            assert!(
                size == small || size == big,
                "{ctx} leaf {leaf} size {size}"
            );
            if size > 0 {
                let first = s.wrapping_add(1);
                assert_eq!(t.leaf_of(first), Some(leaf), "{ctx} first hash of {leaf}");
                assert_eq!(t.leaf_of(e), Some(leaf), "{ctx} last hash of {leaf}");
                assert!(t.contains(first) && t.contains(e), "{ctx}");
            }
            total += size;
            cursor = e;
        }
        assert_eq!(cursor, end, "{ctx} the last leaf ends the arc");
        assert_eq!(total, len, "{ctx} sizes add up to the arc");
    }

    #[test]
    fn leaf_ranges_partition_every_arc() {
        for seed in 0..SEEDS {
            let mut rng = TestRng::seed_from_u64(2000 + seed);
            for arc in arcs(&mut rng) {
                for depth in 1..=3 {
                    let ctx = format!("seed={} arc={arc:?} depth={depth}", 2000 + seed);
                    let t = MerkleTree::new(arc.0, arc.1, depth);
                    assert_partition(&t, &ctx);
                    for _ in 0..200 {
                        let h = hash_in(&mut rng, arc);
                        let leaf = t.leaf_of(h).expect("hash in arc");
                        assert!(in_range(h, t.leaf_range(leaf)), "{ctx} h={h}");
                        assert!(t.contains(h), "{ctx} h={h}");
                        if let Some(out) = hash_out(&mut rng, arc) {
                            assert!(!t.contains(out), "{ctx} out={out}");
                            assert_eq!(t.leaf_of(out), None, "{ctx} out={out}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tiny_arcs_are_partitioned_exhaustively() {
        for start in [0, 1000, u64::MAX - 20, u64::MAX] {
            for len in [1u64, 2, 3, 15, 16, 17, 31, 255, 256, 257, 300] {
                for depth in 1..=2 {
                    let end = start.wrapping_add(len);
                    let ctx = format!("arc=({start}, {end}) len={len} depth={depth}");
                    let t = MerkleTree::new(start, end, depth);
                    assert_partition(&t, &ctx);
                    let ranges: Vec<(u64, u64)> =
                        (0..t.leaves() as u32).map(|l| t.leaf_range(l)).collect();
                    let mut last = 0;
                    for o in 0..len {
                        let h = start.wrapping_add(1).wrapping_add(o);
                        let leaf = t.leaf_of(h).expect("in arc");
                        assert!(leaf >= last, "{ctx} leaves ascend along the arc");
                        last = leaf;
                        let holders: Vec<usize> = ranges
                            .iter()
                            .enumerate()
                            .filter(|(_, r)| in_range(h, **r))
                            .map(|(i, _)| i)
                            .collect();
                        assert_eq!(holders, vec![leaf as usize], "{ctx} h={h}");
                    }
                    for outside in [start, end.wrapping_add(1), start.wrapping_sub(1)] {
                        assert_eq!(t.leaf_of(outside), None, "{ctx} outside={outside}");
                        assert!(!t.contains(outside), "{ctx} outside={outside}");
                        assert!(!t.clone().update(outside, 0, 1), "{ctx}");
                    }
                    if len < t.leaves() as u64 {
                        let empty = ranges.iter().filter(|(s, e)| s == e).count();
                        assert_eq!(empty as u64, t.leaves() as u64 - len, "{ctx}");
                    }
                }
            }
        }
    }

    #[test]
    fn whole_circle() {
        for start in [0, 1, 0x8000_0000_0000_0000, u64::MAX] {
            for depth in 1..=MAX_DEPTH {
                let t = MerkleTree::new(start, start, depth);
                let ctx = format!("start={start} depth={depth}");
                let shift = 64 - 4 * depth;
                for h in [
                    0,
                    1,
                    start,
                    start.wrapping_add(1),
                    u64::MAX,
                    0x1234_5678_9abc_def0,
                ] {
                    assert!(t.contains(h), "{ctx}");
                    // Offsets split evenly: the leaf is the offset's top 4 * depth bits.
                    let offset = h.wrapping_sub(start).wrapping_sub(1);
                    assert_eq!(t.leaf_of(h), Some((offset >> shift) as u32), "{ctx} h={h}");
                }
                let last = t.leaves() as u32 - 1;
                assert_eq!(t.leaf_of(start.wrapping_add(1)), Some(0), "{ctx}");
                assert_eq!(t.leaf_of(start), Some(last), "{ctx}");
                assert_eq!(t.leaf_range(0).0, start, "{ctx}");
                assert_eq!(t.leaf_range(last).1, start, "{ctx}");
                for leaf in [0, 1, last / 2, last - 1, last] {
                    let (s, e) = t.leaf_range(leaf);
                    assert_eq!(e.wrapping_sub(s), 1 << shift, "{ctx} leaf={leaf}");
                    if leaf < last {
                        assert_eq!(t.leaf_range(leaf + 1).0, e, "{ctx} leaf={leaf}");
                    }
                }
                if depth <= 3 {
                    assert_partition(&t, &ctx);
                }
            }
        }
    }

    #[test]
    fn bad_refs_and_bad_leaves_are_rejected() {
        let t = MerkleTree::new(5, 500, 2);
        assert_eq!(t.children(NodeRef::ROOT).map(<[u64]>::len), Some(FANOUT));
        assert_eq!(
            t.children(NodeRef {
                level: 1,
                index: 15
            })
            .map(<[u64]>::len),
            Some(FANOUT)
        );
        for bad in [
            NodeRef { level: 2, index: 0 }, // a leaf
            NodeRef {
                level: 1,
                index: 16,
            }, // past its level
            NodeRef { level: 0, index: 1 },
            NodeRef { level: 3, index: 0 }, // below the leaves
            NodeRef {
                level: u32::MAX,
                index: u32::MAX,
            },
            NodeRef {
                level: 1,
                index: u32::MAX,
            },
        ] {
            assert_eq!(t.children(bad), None, "{bad:?}");
        }
        assert_eq!(
            t.get(NodeRef {
                level: 2,
                index: 255
            }),
            Some(0)
        );
        assert_eq!(
            t.get(NodeRef {
                level: 2,
                index: 256
            }),
            None
        );
        assert_eq!(t.get(NodeRef { level: 3, index: 0 }), None);
        assert_eq!(
            t.get(NodeRef {
                level: u32::MAX,
                index: u32::MAX
            }),
            None
        );
        // A leaf past the end is an empty range, never the whole circle.
        assert_eq!(t.leaf_range(256), (500, 500));
        assert_eq!(t.leaf_range(u32::MAX), (500, 500));
    }

    #[test]
    fn depth_is_clamped() {
        assert_eq!(MerkleTree::new(0, 9, 0).depth(), 1);
        assert_eq!(MerkleTree::new(0, 9, 1).leaves(), 16);
        assert_eq!(MerkleTree::new(0, 9, DEFAULT_DEPTH).leaves(), 256);
        assert_eq!(MerkleTree::new(0, 9, u32::MAX).depth(), MAX_DEPTH);
        assert_eq!(MerkleTree::new(0, 9, MAX_DEPTH).leaves(), 1 << 24);
    }

    #[test]
    fn differing_children_survives_malformed_replies() {
        let node = NodeRef { level: 1, index: 3 };
        let ours = [7u64; FANOUT];
        let mut theirs = ours;
        assert!(differing_children(node, &ours, &theirs).is_empty());
        theirs[0] = 1;
        theirs[15] = 1;
        assert_eq!(
            differing_children(node, &ours, &theirs),
            vec![
                NodeRef {
                    level: 2,
                    index: 48
                },
                NodeRef {
                    level: 2,
                    index: 63
                }
            ]
        );
        // Short, empty and long replies: missing positions differ, extra ones are ignored.
        assert_eq!(differing_children(node, &ours, &ours[..14]).len(), 2);
        assert_eq!(differing_children(node, &ours, &[]).len(), FANOUT);
        assert!(differing_children(node, &ours, &[7; 40]).is_empty());
        assert!(differing_children(node, &[], &[]).is_empty());
        // Refs that would overflow produce nothing rather than a wrong or panicking index.
        assert!(
            differing_children(
                NodeRef {
                    level: u32::MAX,
                    index: 0
                },
                &ours,
                &[]
            )
            .is_empty()
        );
        let huge = NodeRef {
            level: 1,
            index: u32::MAX / 16,
        };
        let kids = differing_children(huge, &ours, &[]);
        assert_eq!(kids.len(), FANOUT, "u32::MAX / 16 * 16 + 15 still fits");
        let over = NodeRef {
            level: 1,
            index: u32::MAX / 16 + 1,
        };
        assert!(differing_children(over, &ours, &[]).is_empty());
    }

    /// The cost figure for identical replicas: 1M keys over ~800 arcs, one root per arc; then
    /// ten changed keys. Under a second even in debug.
    #[test]
    fn scale_identical_replicas_exchange_a_few_kib() {
        let keys: u64 = 1_000_000;
        let mut rng = TestRng::seed_from_u64(42);
        let mut tokens: Vec<u64> = (0..800).map(|_| rng.random()).collect();
        tokens.sort_unstable();
        tokens.dedup();
        let arcs: Vec<(u64, u64)> = (0..tokens.len())
            .map(|i| (tokens[(i + tokens.len() - 1) % tokens.len()], tokens[i]))
            .collect();
        let mut a: Vec<MerkleTree> = arcs
            .iter()
            .map(|&(s, e)| MerkleTree::new(s, e, DEFAULT_DEPTH))
            .collect();
        // The arc holding a hash: the first token at or after it, wrapping to the first arc.
        let arc_of = |h: u64| tokens.partition_point(|&t| t < h) % tokens.len();
        let mut whole = MerkleTree::new(0, 0, DEFAULT_DEPTH);
        for i in 0..keys {
            let h = xxh3_64(&i.to_le_bytes());
            let d = xxh3_64(format!("{i}@v1").as_bytes());
            assert!(a[arc_of(h)].update(h, 0, d));
            assert!(whole.update(h, 0, d));
        }
        let mut b = a.clone();
        let whole_b = whole.clone();
        assert_eq!(
            diff(&whole, &whole_b),
            DiffOutcome {
                leaves: vec![],
                round_trips: 1,
                hashes_sent: 1
            }
        );

        let (mut trips, mut hashes) = (0, 0);
        for (ta, tb) in a.iter().zip(&b) {
            let out = diff(ta, tb);
            assert!(out.leaves.is_empty());
            trips += out.round_trips;
            hashes += out.hashes_sent;
        }
        let bytes = hashes * 8;
        eprintln!(
            "{keys} keys, {} arcs, identical: {trips} round trips, {bytes} bytes",
            arcs.len()
        );
        assert_eq!(hashes, arcs.len() as u64);
        assert!(bytes <= 8 * 1024, "{bytes} bytes");

        let changed = 10;
        let mut expected: BTreeSet<(usize, u32)> = BTreeSet::new();
        for i in (0..keys).step_by((keys / changed) as usize) {
            let h = xxh3_64(&i.to_le_bytes());
            let old = xxh3_64(format!("{i}@v1").as_bytes());
            let arc = arc_of(h);
            assert!(b[arc].update(h, old, xxh3_64(format!("{i}@v2").as_bytes())));
            expected.insert((arc, b[arc].leaf_of(h).expect("in its arc")));
        }
        let mut found = BTreeSet::new();
        let mut hashes = 0;
        for (arc, (ta, tb)) in a.iter().zip(&b).enumerate() {
            let out = diff(ta, tb);
            hashes += out.hashes_sent;
            found.extend(out.leaves.iter().map(|&l| (arc, l)));
        }
        assert_eq!(found, expected);
        let bound = arcs.len() as u64 + changed * FANOUT as u64 * u64::from(DEFAULT_DEPTH);
        eprintln!("{changed} changed keys: {hashes} hashes (bound {bound})");
        assert!(hashes <= bound);
    }
}
