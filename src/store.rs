//! The in-memory storage engine: for each key, its set of non-dominated versions, plus the
//! Merkle trees that summarise them for anti-entropy.
//!
//! The key space is split into [`SHARDS`] shards by the top bits of the key's ring hash, each
//! behind its own `std::sync::Mutex`. A std mutex and not a tokio one: no critical section
//! awaits anything, each is a map operation plus a version merge, so the lock is held for
//! nanoseconds and never across an `.await`. Sharding keeps the two cores from contending on
//! one lock.
//!
//! Within a shard, keys are ordered by `(hash, key)` in a B-tree, so that anti-entropy can
//! list the keys of any hash range (one Merkle leaf) without scanning the shard. Because a
//! shard is a contiguous hash range, every ring *segment* ([`crate::ring::Segment`]) lies in
//! one shard, and its [`MerkleTree`] is updated under the same lock as the keys: every write,
//! merge and removal adjusts the tree in O(depth) with the key's old and new fingerprints, so
//! a tree is only ever rebuilt when the ring itself changes.
//!
//! The store never decides *what* to keep: that is the version algebra's job
//! ([`crate::version`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::merkle::{DEFAULT_DEPTH, MerkleTree, NodeRef};
use crate::ring::{SHARD_BITS, Segment, key_hash, shard_of};
use crate::version::{Actor, Context, VersionSet};

/// Number of independently locked shards.
pub const SHARDS: usize = 1 << SHARD_BITS;

/// A segment's position in the ring's segment list ([`crate::ring::Ring::segments`]): the
/// same on every node with the same ring.
pub type SegmentId = u32;

/// Keys are ordered by ring hash first, so a hash range is a B-tree range.
type Slot = (u64, Bytes);

struct SegTree {
    id: SegmentId,
    tree: MerkleTree,
}

#[derive(Default)]
struct Shard {
    map: BTreeMap<Slot, VersionSet>,
    /// This shard's segments, ordered by end. Empty until the ring is known.
    trees: Vec<SegTree>,
    /// When each key whose versions are all tombstones became so, for tombstone GC.
    tombstones: HashMap<Bytes, Instant>,
    /// Bytes of keys and values held.
    bytes: u64,
}

impl Shard {
    fn tree_mut(&mut self, hash: u64) -> Option<&mut MerkleTree> {
        let i = self.trees.partition_point(|t| t.tree.arc().1 < hash);
        self.trees.get_mut(i).map(|t| &mut t.tree)
    }

    fn tree(&self, id: SegmentId) -> Option<&MerkleTree> {
        self.trees.iter().find(|t| t.id == id).map(|t| &t.tree)
    }

    /// Records that `key` went from `old` to `new` (fingerprints, and whether each was
    /// only tombstones).
    fn changed(&mut self, hash: u64, key: &Bytes, old: Summary, new: Summary) {
        if old.fp != new.fp
            && let Some(tree) = self.tree_mut(hash)
        {
            tree.update(hash, old.fp, new.fp);
        }
        self.bytes = (self.bytes + new.bytes).saturating_sub(old.bytes);
        if new.deleted && !old.deleted {
            self.tombstones.insert(key.clone(), Instant::now());
        } else if old.deleted && !new.deleted {
            self.tombstones.remove(key);
        }
    }
}

/// What the trees and the tombstone index need to know of a key's state.
#[derive(Clone, Copy, Default)]
struct Summary {
    fp: u64,
    deleted: bool,
    /// Key and value bytes (0 for an empty set).
    bytes: u64,
}

impl Summary {
    fn of(key: &[u8], vs: &VersionSet) -> Summary {
        let values: usize = vs
            .versions()
            .iter()
            .map(|v| v.value.as_ref().map_or(0, |b| b.len()))
            .sum();
        Summary {
            fp: vs.fingerprint(key),
            deleted: vs.is_deleted(),
            bytes: if vs.is_empty() {
                0
            } else {
                (key.len() + values) as u64
            },
        }
    }
}

/// The versions this node stores, by key.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    /// The highest counter this node's actor has minted, for any key: new versions go above
    /// it, so a counter is never reused even for a key this store dropped meanwhile.
    minted: AtomicU64,
    /// Where the next tombstone-GC pass starts.
    gc_cursor: AtomicUsize,
}

/// Counts of what a store holds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct StoreStats {
    /// Keys with at least one version.
    pub keys: u64,
    /// Keys whose every version is a tombstone.
    pub tombstones: u64,
    /// Bytes of keys and values (not counting bookkeeping).
    pub bytes: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            minted: AtomicU64::new(0),
            gc_cursor: AtomicUsize::new(0),
        }
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_of(hash)])
    }

    /// A copy of the versions stored for `key`.
    pub fn get(&self, key: &Bytes) -> Option<VersionSet> {
        let hash = key_hash(key);
        find(&self.shard(hash).map, hash, key).cloned()
    }

    /// Merges `incoming` into the versions of `key`. Returns true if anything changed.
    pub fn merge(&self, key: &Bytes, incoming: &VersionSet) -> bool {
        self.merge_owned(key, incoming.clone())
    }

    /// As [`Store::merge`], taking the versions by value: a key new to this store then keeps
    /// the decoded set as it is, and its values keep sole ownership of their buffers (a
    /// cloned `Bytes` would allocate a shared header per stored value).
    pub fn merge_owned(&self, key: &Bytes, incoming: VersionSet) -> bool {
        if incoming.is_empty() {
            return false;
        }
        let hash = key_hash(key);
        let mut shard = self.shard(hash);
        let (old, new) = match find_mut(&mut shard.map, hash, key) {
            Some(current) => {
                let old = Summary::of(key, current);
                if !current.merge(&incoming) {
                    return false;
                }
                (old, Summary::of(key, current))
            }
            None => {
                // A private copy of the key, so the stored key does not share (and pin) the
                // buffer of the request it arrived in.
                let new = Summary::of(key, &incoming);
                shard
                    .map
                    .insert((hash, Bytes::copy_from_slice(key)), incoming);
                (Summary::default(), new)
            }
        };
        shard.changed(hash, key, old, new);
        true
    }

    /// Applies a client write coordinated by `actor` (see [`VersionSet::write`]).
    /// Returns the new version's context and a copy of the key's versions afterwards,
    /// which is what the coordinator replicates.
    pub fn write(
        &self,
        key: &Bytes,
        actor: &Actor,
        context: Option<&Context>,
        value: Option<Bytes>,
    ) -> (Context, VersionSet) {
        let hash = key_hash(key);
        let mut shard = self.shard(hash);
        let slot = (hash, key.clone());
        if !shard.map.contains_key(&slot) {
            shard
                .map
                .insert((hash, Bytes::copy_from_slice(key)), VersionSet::new());
        }
        let set = shard.map.entry(slot).or_default();
        let old = Summary::of(key, set);
        let floor = self.minted.load(Ordering::Relaxed);
        let ctx = set.write_above(actor, context, value, floor);
        // Keys in other shards may mint the same counter concurrently: harmless, a dot only
        // has to be unique within its key, which this shard's lock serialises.
        self.minted
            .fetch_max(ctx.max_counter(actor), Ordering::Relaxed);
        let after = set.clone();
        let new = Summary::of(key, &after);
        shard.changed(hash, key, old, new);
        (ctx, after)
    }

    /// The highest counter this node's actor has minted.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// Removes `key` if its fingerprint is still `expected` (nothing newer arrived since the
    /// caller looked). Returns true if it was removed.
    pub fn remove_if(&self, key: &Bytes, expected: u64) -> bool {
        let hash = key_hash(key);
        let mut shard = self.shard(hash);
        let slot = (hash, key.clone());
        match shard.map.get(&slot) {
            Some(vs) if vs.fingerprint(key) == expected => {
                let old = Summary::of(key, vs);
                shard.map.remove(&slot);
                shard.changed(hash, key, old, Summary::default());
                true
            }
            _ => false,
        }
    }

    /// Rebuilds the Merkle trees for a new ring. `segments` is the ring's whole segment list;
    /// segment ids are positions in it. Runs one shard at a time, so writes to other shards
    /// proceed meanwhile.
    pub fn set_segments(&self, segments: &[Segment]) {
        for (i, shard) in self.shards.iter().enumerate() {
            let mut shard = lock(shard);
            let mut trees: Vec<SegTree> = segments
                .iter()
                .enumerate()
                .filter(|(_, s)| shard_of(s.end) == i)
                .map(|(id, s)| SegTree {
                    id: id as SegmentId,
                    tree: MerkleTree::new(s.start, s.end, DEFAULT_DEPTH),
                })
                .collect();
            trees.sort_by_key(|t| t.tree.arc().1);
            shard.trees = trees;
            let digests: Vec<(u64, u64)> = shard
                .map
                .iter()
                .map(|((hash, key), vs)| (*hash, vs.fingerprint(key)))
                .collect();
            for (hash, fp) in digests {
                if let Some(tree) = shard.tree_mut(hash) {
                    tree.update(hash, 0, fp);
                }
            }
        }
    }

    /// The root of a segment's tree, or `None` if this store has no such segment.
    pub fn root(&self, seg: &Segment, id: SegmentId) -> Option<u64> {
        let shard = self.shard(seg.end);
        shard.tree(id).map(|t| t.root())
    }

    /// The children of one tree node, or `None` for a leaf or an unknown segment.
    pub fn children(&self, seg: &Segment, id: SegmentId, node: NodeRef) -> Option<Vec<u64>> {
        let shard = self.shard(seg.end);
        shard.tree(id)?.children(node).map(<[u64]>::to_vec)
    }

    /// The keys of one Merkle leaf with their fingerprints, and whether each has been only
    /// tombstones for at least `grace`.
    pub fn leaf_keys(
        &self,
        seg: &Segment,
        id: SegmentId,
        leaf: u32,
        grace: Duration,
    ) -> Vec<(Bytes, u64, bool)> {
        let shard = self.shard(seg.end);
        let Some(tree) = shard.tree(id) else {
            return Vec::new();
        };
        let (start, end) = tree.leaf_range(leaf);
        range(&shard.map, start, end)
            .map(|((_, k), vs)| {
                let expired = shard
                    .tombstones
                    .get(k)
                    .is_some_and(|since| since.elapsed() >= grace);
                (k.clone(), vs.fingerprint(k), expired)
            })
            .collect()
    }

    /// Up to `max` keys of a segment strictly after `after` (a `(hash, key)` position), with
    /// their versions; for handing a whole segment over.
    pub fn segment_batch(
        &self,
        seg: &Segment,
        after: Option<&(u64, Bytes)>,
        max: usize,
    ) -> Vec<((u64, Bytes), VersionSet)> {
        let shard = self.shard(seg.end);
        let start = match after {
            Some(pos) => Bound::Excluded(pos.clone()),
            None => Bound::Included((seg.start.wrapping_add(1), Bytes::new())),
        };
        shard
            .map
            .range((start, Bound::Unbounded))
            .take_while(|((h, _), _)| *h <= seg.end)
            .take(max)
            .map(|(slot, vs)| (slot.clone(), vs.clone()))
            .collect()
    }

    /// Keys whose versions have all been tombstones for longer than `grace`, with their
    /// fingerprints; at most `max`.
    pub fn old_tombstones(&self, grace: Duration, max: usize) -> Vec<(Bytes, u64)> {
        let mut out = Vec::new();
        // Start at a different shard each pass, so tombstones that cannot be purged yet (a
        // member is down) never starve the others.
        let start = self.gc_cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..SHARDS {
            let shard = lock(&self.shards[(start + i) % SHARDS]);
            for (key, since) in &shard.tombstones {
                if out.len() >= max {
                    return out;
                }
                if since.elapsed() >= grace {
                    let hash = key_hash(key);
                    if let Some(vs) = shard.map.get(&(hash, key.clone())) {
                        out.push((key.clone(), vs.fingerprint(key)));
                    }
                }
            }
        }
        out
    }

    /// Counts keys and tombstones.
    pub fn stats(&self) -> StoreStats {
        let mut stats = StoreStats::default();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            stats.keys += shard.map.len() as u64;
            stats.tombstones += shard.tombstones.len() as u64;
            stats.bytes += shard.bytes;
        }
        stats
    }
}

/// The versions of `key`, whose hash is `hash`. Looked up by range rather than by a
/// `(hash, key)` tuple, so the hot path never clones the caller's `Bytes` (a first clone of
/// a `Bytes` built from a `Vec` allocates a shared header).
fn find<'a>(map: &'a BTreeMap<Slot, VersionSet>, hash: u64, key: &[u8]) -> Option<&'a VersionSet> {
    map.range((hash, Bytes::new())..)
        .take_while(|((h, _), _)| *h == hash)
        .find(|((_, k), _)| k.as_ref() == key)
        .map(|(_, vs)| vs)
}

fn find_mut<'a>(
    map: &'a mut BTreeMap<Slot, VersionSet>,
    hash: u64,
    key: &[u8],
) -> Option<&'a mut VersionSet> {
    map.range_mut((hash, Bytes::new())..)
        .take_while(|((h, _), _)| *h == hash)
        .find(|((_, k), _)| k.as_ref() == key)
        .map(|(_, vs)| vs)
}

/// The entries with hash in `(start, end]` (a leaf range never wraps: leaves split a
/// segment, and a wrapping segment starts at u64::MAX, i.e. covers `[0, end]`).
fn range(
    map: &BTreeMap<Slot, VersionSet>,
    start: u64,
    end: u64,
) -> impl Iterator<Item = (&Slot, &VersionSet)> {
    // An empty leaf is `(x, x)`; without this, `(MAX, MAX)` would read as "from 0".
    let empty = start == end;
    let lower = if start == u64::MAX {
        Bound::Included((0, Bytes::new()))
    } else {
        Bound::Included((start + 1, Bytes::new()))
    };
    map.range((lower, Bound::Unbounded))
        .take_while(move |((h, _), _)| !empty && *h <= end)
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Poisoning means a panic mid-operation; every operation builds its new state before
    // swapping it in, so the shard is intact and serving on is the right call.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ring::{NodeId, Ring};

    fn actor(node: &str) -> Actor {
        Actor {
            node: Arc::from(node),
            generation: 1,
        }
    }

    #[test]
    fn write_then_get_and_merge_elsewhere() {
        let a = Store::new();
        let b = Store::new();
        let key = Bytes::from_static(b"k");
        let (ctx, set) = a.write(&key, &actor("n1"), None, Some(Bytes::from_static(b"v1")));
        assert!(!ctx.is_empty());
        assert!(b.merge(&key, &set));
        assert!(
            !b.merge(&key, &set),
            "merging the same versions twice changes nothing"
        );
        assert_eq!(a.get(&key), b.get(&key));
        assert_eq!(
            b.stats(),
            StoreStats {
                keys: 1,
                tombstones: 0,
                bytes: 3,
            }
        );

        let (_, set) = a.write(&key, &actor("n1"), Some(&ctx), None);
        b.merge(&key, &set);
        assert_eq!(
            b.stats(),
            StoreStats {
                keys: 1,
                tombstones: 1,
                bytes: 1,
            }
        );
        assert!(b.get(&Bytes::from_static(b"other")).is_none());
        let fp = set.fingerprint(&key);
        assert!(
            !b.remove_if(&key, fp ^ 1),
            "a stale fingerprint removes nothing"
        );
        assert!(b.remove_if(&key, fp));
        assert_eq!(b.stats(), StoreStats::default());
    }

    #[test]
    fn concurrent_writers_on_many_keys() {
        let store = Arc::new(Store::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let key = Bytes::from(format!("k{}", i % 100));
                        store.write(&key, &actor(&format!("n{t}")), None, Some(Bytes::new()));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.stats().keys, 100);
    }

    fn ring() -> Ring {
        Ring::new(["a", "b", "c"].map(NodeId::from), 8)
    }

    /// Trees maintained incrementally equal trees rebuilt from scratch, and equal stores
    /// have equal roots whatever order the writes arrived in.
    #[test]
    fn trees_follow_every_change() {
        let segs = ring().segments(3);
        let a = Store::new();
        let b = Store::new();
        a.set_segments(&segs);
        let mut sets = Vec::new();
        for i in 0..500 {
            let key = Bytes::from(format!("key-{i}"));
            let (_, vs) = a.write(&key, &actor("n1"), None, Some(Bytes::from("v")));
            sets.push((key, vs));
        }
        // Delete a few, and remove a few outright.
        for (key, _) in sets.iter().step_by(7) {
            a.write(key, &actor("n1"), None, None);
        }
        for (key, _) in sets.iter().skip(3).step_by(11) {
            let fp = a.get(key).unwrap().fingerprint(key);
            assert!(a.remove_if(key, fp));
        }
        // b gets the same final state in reverse order, and builds its trees afterwards.
        for (key, _) in sets.iter().rev() {
            if let Some(vs) = a.get(key) {
                b.merge(key, &vs);
            }
        }
        b.set_segments(&segs);
        for (id, seg) in segs.iter().enumerate() {
            let id = id as SegmentId;
            assert_eq!(a.root(seg, id), b.root(seg, id), "segment {id}");
            assert!(a.root(seg, id).is_some());
        }
        // Leaf listings find every key exactly once.
        let mut listed = 0;
        for (id, seg) in segs.iter().enumerate() {
            let tree_leaves = 1u32 << (4 * DEFAULT_DEPTH);
            for leaf in 0..tree_leaves {
                listed += a
                    .leaf_keys(seg, id as SegmentId, leaf, Duration::ZERO)
                    .len();
            }
        }
        assert_eq!(listed as u64, a.stats().keys);
        // And segment batches walk each segment's keys in order.
        let mut walked = 0;
        for seg in &segs {
            let mut after = None;
            loop {
                let batch = a.segment_batch(seg, after.as_ref(), 7);
                if batch.is_empty() {
                    break;
                }
                walked += batch.len();
                after = Some(batch.last().unwrap().0.clone());
            }
        }
        assert_eq!(walked as u64, a.stats().keys);
    }

    /// A write after this store purged the key's tombstone must not reuse a counter: the
    /// other replicas still holding the tombstone would discard it as already seen.
    #[test]
    fn a_write_after_a_purge_is_not_discarded_by_replicas_that_still_hold_the_tombstone() {
        let a = Store::new();
        let b = Store::new();
        let key = Bytes::from_static(b"k");
        for v in ["1", "2", "3"] {
            let (_, vs) = a.write(&key, &actor("n1"), None, Some(Bytes::from(v)));
            b.merge(&key, &vs);
        }
        let (_, tomb) = a.write(&key, &actor("n1"), None, None);
        b.merge(&key, &tomb);
        assert!(a.remove_if(&key, tomb.fingerprint(&key)), "a purges first");
        let (_, fresh) = a.write(&key, &actor("n1"), None, Some(Bytes::from("new")));
        assert!(b.merge(&key, &fresh), "b must accept the new write");
        let values: Vec<_> = b.get(&key).unwrap().live_values().cloned().collect();
        assert_eq!(values, vec![Bytes::from("new")]);
        assert_eq!(a.minted(), 5);
    }

    #[test]
    fn old_tombstones_are_listed_after_the_grace() {
        let s = Store::new();
        let key = Bytes::from_static(b"gone");
        s.write(&key, &actor("n1"), None, Some(Bytes::from_static(b"v")));
        assert!(s.old_tombstones(Duration::ZERO, 10).is_empty());
        let (_, vs) = s.write(&key, &actor("n1"), None, None);
        let listed = s.old_tombstones(Duration::ZERO, 10);
        assert_eq!(listed, vec![(key.clone(), vs.fingerprint(&key))]);
        assert!(s.old_tombstones(Duration::from_secs(3600), 10).is_empty());
        // A new value clears the tombstone mark.
        s.write(&key, &actor("n1"), None, Some(Bytes::from_static(b"back")));
        assert!(s.old_tombstones(Duration::ZERO, 10).is_empty());
    }
}
