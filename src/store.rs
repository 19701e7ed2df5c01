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
//! Two secondary indexes per shard serve the features that need another order: the keys in
//! key order (listing, [`Store::list`]), and the keys holding an expiring value by expiry
//! time (the TTL sweep, [`Store::expire_due`]). Both follow every change under the same lock.
//!
//! The store never decides *what* to keep: that is the version algebra's job
//! ([`crate::version`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::merkle::{DEFAULT_DEPTH, MerkleTree, NodeRef};
use crate::ring::{SHARD_BITS, Segment, key_hash, shard_of};
use crate::version::{Actor, Condition, Context, Meta, VersionSet};

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
    /// Every key of `map`, in key order.
    by_key: BTreeSet<Bytes>,
    /// `(expiry, hash, key)` of every key with an expiring value not yet dropped.
    expiry: BTreeSet<(u64, u64, Bytes)>,
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
        if old.fp == 0 && new.fp != 0 {
            self.by_key.insert(key.clone());
        } else if old.fp != 0 && new.fp == 0 {
            self.by_key.remove(key);
        }
        if old.expires != new.expires {
            if let Some(t) = old.expires {
                self.expiry.remove(&(t, hash, key.clone()));
            }
            if let Some(t) = new.expires {
                self.expiry.insert((t, hash, key.clone()));
            }
        }
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
    /// When the next value expires.
    expires: Option<u64>,
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
            expires: vs.next_expiry(),
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

/// A write as the coordinator applies it (see [`Store::write_with`]).
pub struct WriteOp<'a> {
    /// What the client has seen; `None` for everything this store holds.
    pub context: Option<&'a Context>,
    /// The value; `None` deletes.
    pub value: Option<Bytes>,
    pub meta: Option<Box<Meta>>,
    /// Checked on the stored versions before the write.
    pub condition: &'a Condition,
    /// The coordinator's clock, for conditions that look at expiry.
    pub now_ms: u64,
}

/// What one [`Store::expire_due`] pass did.
#[derive(Debug, Default)]
pub struct ExpireReport {
    /// Keys visited.
    pub processed: usize,
    /// Keys left without a live value, with their versions afterwards.
    pub expired: Vec<(Bytes, VersionSet)>,
    /// Value bytes freed.
    pub freed: u64,
}

/// One key of a listing page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListEntry {
    pub key: Bytes,
    /// [`VersionSet::fingerprint`]: replicas with equal fingerprints hold the same writes.
    pub fingerprint: u64,
    /// [`VersionSet::live_until`].
    pub live_until: u64,
}

/// One node's answer to a listing ([`Store::list`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListPage {
    /// Keys in order.
    pub entries: Vec<ListEntry>,
    /// Whether keys after the last entry may match.
    pub more: bool,
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
                // buffer of the request it arrived in; the indexes share it.
                let stored = Bytes::copy_from_slice(key);
                let new = Summary::of(key, &incoming);
                shard.map.insert((hash, stored.clone()), incoming);
                shard.changed(hash, &stored, Summary::default(), new);
                return true;
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
        let op = WriteOp {
            context,
            value,
            meta: None,
            condition: &Condition::None,
            now_ms: 0,
        };
        match self.write_with(key, actor, op) {
            Ok(done) => done,
            Err(_) => unreachable!("an unconditional write always applies"),
        }
    }

    /// As [`Store::write`], with metadata, and only if `op.condition` holds on the stored
    /// versions; checked and applied under one lock, so no other write to the key on this
    /// store comes between. Fails with the stored versions' context.
    pub fn write_with(
        &self,
        key: &Bytes,
        actor: &Actor,
        op: WriteOp<'_>,
    ) -> std::result::Result<(Context, VersionSet), Context> {
        let hash = key_hash(key);
        let mut shard = self.shard(hash);
        let floor = self.minted.load(Ordering::Relaxed);
        // One lookup for a stored key; a new key is inserted only once its condition held.
        let (stored, old, ctx, after) = match find_mut(&mut shard.map, hash, key) {
            Some(set) => {
                if !op.condition.holds(set, op.now_ms) {
                    return Err(set.context());
                }
                let old = Summary::of(key, set);
                let ctx = set.write_above(actor, op.context, op.value, op.meta, floor);
                (key.clone(), old, ctx, set.clone())
            }
            None => {
                let mut set = VersionSet::new();
                if !op.condition.holds(&set, op.now_ms) {
                    return Err(Context::default());
                }
                let ctx = set.write_above(actor, op.context, op.value, op.meta, floor);
                let stored = Bytes::copy_from_slice(key);
                shard.map.insert((hash, stored.clone()), set.clone());
                (stored, Summary::default(), ctx, set)
            }
        };
        // Keys in other shards may mint the same counter concurrently: harmless, a dot only
        // has to be unique within its key, which this shard's lock serialises.
        self.minted
            .fetch_max(ctx.max_counter(actor), Ordering::Relaxed);
        let new = Summary::of(key, &after);
        shard.changed(hash, &stored, old, new);
        Ok((ctx, after))
    }

    /// Drops the values that expired by `now_ms`, visiting at most `max` keys.
    pub fn expire_due(&self, now_ms: u64, max: usize) -> ExpireReport {
        let mut report = ExpireReport::default();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            while report.processed < max {
                let Some((t, hash, key)) = shard.expiry.first().cloned() else {
                    break;
                };
                if t > now_ms {
                    break;
                }
                report.processed += 1;
                // Taken out first, so the loop always advances; `changed` re-adds the key
                // if another of its values expires later.
                shard.expiry.pop_first();
                let Some(set) = find_mut(&mut shard.map, hash, &key) else {
                    continue;
                };
                let old = Summary::of(&key, set);
                let dropped = set.expire(now_ms);
                let after = set.clone();
                let new = Summary::of(&key, &after);
                report.freed += old.bytes.saturating_sub(new.bytes);
                shard.changed(hash, &key, old, new);
                if dropped && after.live(now_ms).next().is_none() {
                    report.expired.push((key, after));
                }
            }
        }
        report
    }

    /// One node's page of a listing: up to `limit` keys starting with `prefix` and after
    /// `after`, in key order, each with its fingerprint and until when it holds a live value
    /// ([`ListEntry`]); tombstones and expired values included, since the reader weighs them
    /// against other replicas' answers. `more` is false when no further key matches.
    ///
    /// Each shard's keys are read in small batches and the batches merged, so a page costs
    /// about `limit` key visits whatever the store holds, and no lock is held for long; then
    /// the versions of the chosen keys are copied, one lock per shard.
    pub fn list(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> ListPage {
        // Keys spread evenly over the shards: a little over a page's share per batch.
        let batch = (limit / SHARDS) * 3 / 2 + 4;
        let start: Bound<&[u8]> = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        // Per shard: the keys read but not yet merged, and whether the shard has more.
        let read = |i: usize, from: Bound<&[u8]>| -> (VecDeque<Bytes>, bool) {
            let shard = lock(&self.shards[i]);
            let keys: VecDeque<Bytes> = shard
                .by_key
                .range::<[u8], _>((from, Bound::Unbounded))
                .take_while(|k| k.starts_with(prefix))
                .take(batch)
                .cloned()
                .collect();
            let more = keys.len() == batch;
            (keys, more)
        };
        let mut runs: Vec<(VecDeque<Bytes>, bool)> = (0..SHARDS).map(|i| read(i, start)).collect();
        let mut heap: BinaryHeap<Reverse<(Bytes, usize)>> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, (keys, _))| keys.front().map(|k| Reverse((k.clone(), i))))
            .collect();
        let mut chosen: Vec<(usize, Bytes)> = Vec::with_capacity(limit.min(16 * 1024));
        while chosen.len() < limit {
            let Some(Reverse((_, i))) = heap.pop() else {
                break;
            };
            let run = &mut runs[i];
            let Some(key) = run.0.pop_front() else {
                continue;
            };
            if run.0.is_empty() && run.1 {
                *run = read(i, Bound::Excluded(&key));
            }
            if let Some(k) = runs[i].0.front() {
                heap.push(Reverse((k.clone(), i)));
            }
            chosen.push((i, key));
        }
        // The summaries, shard by shard. A key removed meanwhile is reported as absent
        // (fingerprint 0, not live) rather than left out, so the page still says how far it
        // got.
        let mut sums: Vec<(u64, u64)> = vec![(0, 0); chosen.len()];
        let mut order: Vec<usize> = (0..chosen.len()).collect();
        order.sort_by_key(|&j| chosen[j].0);
        for group in order.chunk_by(|&a, &b| chosen[a].0 == chosen[b].0) {
            let shard = lock(&self.shards[chosen[group[0]].0]);
            for &j in group {
                let key = &chosen[j].1;
                if let Some(vs) = find(&shard.map, key_hash(key), key) {
                    sums[j] = (vs.fingerprint(key), vs.live_until());
                }
            }
        }
        let entries = chosen
            .into_iter()
            .zip(sums)
            .map(|((_, key), (fingerprint, live_until))| ListEntry {
                key,
                fingerprint,
                live_until,
            })
            .collect();
        ListPage {
            more: !heap.is_empty(),
            entries,
        }
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

    fn keys_of(page: &ListPage) -> Vec<&[u8]> {
        page.entries.iter().map(|e| e.key.as_ref()).collect()
    }

    /// Listing merges the 64 shards into key order, pages by cursor, and respects the prefix,
    /// whatever the page size.
    #[test]
    fn list_walks_keys_in_order_by_pages() {
        let s = Store::new();
        let mut all: Vec<Bytes> = (0..1000)
            .map(|i| Bytes::from(format!("p/{:04}", (i * 7919) % 1000)))
            .collect();
        for k in &all {
            s.write(k, &actor("n1"), None, Some(Bytes::from_static(b"value")));
        }
        for k in ["o", "p", "q/1", "p0"] {
            s.write(&Bytes::from(k), &actor("n1"), None, Some(Bytes::new()));
        }
        let deleted = all[3].clone();
        s.write(&deleted, &actor("n1"), None, None); // tombstones are listed too
        all.sort();
        for limit in [1, 7, 64, 1000, 5000] {
            let mut seen: Vec<Bytes> = Vec::new();
            let mut after: Option<Bytes> = None;
            loop {
                let page = s.list(b"p/", after.as_deref(), limit);
                assert!(page.entries.len() <= limit);
                for e in &page.entries {
                    let live = e.key != deleted;
                    assert_eq!(e.live_until, if live { u64::MAX } else { 0 });
                    assert_eq!(e.fingerprint, s.get(&e.key).unwrap().fingerprint(&e.key));
                }
                seen.extend(page.entries.iter().map(|e| e.key.clone()));
                if !page.more {
                    break;
                }
                after = page.entries.last().map(|e| e.key.clone());
            }
            assert_eq!(seen, all, "limit {limit}");
        }
        // A cursor before the prefix starts at the prefix; one past it finds nothing.
        assert_eq!(keys_of(&s.list(b"p/", Some(b"a"), 1)), vec![b"p/0000"]);
        assert!(s.list(b"p/", Some(b"zz"), 10).entries.is_empty());
        assert_eq!(keys_of(&s.list(b"", None, 2)), vec![&b"o"[..], b"p"]);
        assert_eq!(keys_of(&s.list(b"q", None, 10)), vec![b"q/1"]);
    }

    /// The sweep drops expired values (freeing their bytes) but keeps their versions as
    /// tombstones with unchanged fingerprints and trees, and leaves later expiries alone.
    #[test]
    fn expire_due_drops_values_and_keeps_fingerprints() {
        let segs = ring().segments(3);
        let s = Store::new();
        s.set_segments(&segs);
        let write = |key: &str, expires: Option<u64>| {
            let op = WriteOp {
                context: None,
                value: Some(Bytes::from_static(b"0123456789")),
                meta: Meta {
                    content_type: None,
                    expires_at: expires,
                }
                .boxed(),
                condition: &Condition::None,
                now_ms: 0,
            };
            s.write_with(&Bytes::from(key.to_string()), &actor("n1"), op)
                .unwrap()
                .1
        };
        let soon = write("soon", Some(1_000));
        write("later", Some(5_000));
        write("never", None);
        let roots: Vec<_> = (0..segs.len())
            .map(|i| s.root(&segs[i], i as SegmentId))
            .collect();
        let before = s.stats();
        let report = s.expire_due(999, 100);
        assert_eq!(report.processed, 0, "nothing is due yet");
        let report = s.expire_due(1_000, 100);
        assert_eq!(report.processed, 1);
        assert_eq!(report.freed, 10);
        assert_eq!(report.expired.len(), 1);
        let (key, after) = &report.expired[0];
        assert_eq!(key, "soon");
        assert!(after.is_deleted() && after.live(0).next().is_none());
        assert_eq!(after.fingerprint(key), soon.fingerprint(key));
        let roots_after: Vec<_> = (0..segs.len())
            .map(|i| s.root(&segs[i], i as SegmentId))
            .collect();
        assert_eq!(roots, roots_after, "trees unchanged: no repair traffic");
        assert_eq!(s.stats().bytes, before.bytes - 10);
        assert_eq!(s.stats().tombstones, 1);
        assert_eq!(s.expire_due(4_999, 100).processed, 0, "done once");
        assert_eq!(
            s.expire_due(u64::MAX, 100).expired.len(),
            1,
            "later expires"
        );
        // A condition is checked under the lock against what is stored.
        fn op(cond: &Condition) -> WriteOp<'_> {
            WriteOp {
                context: None,
                value: Some(Bytes::new()),
                meta: None,
                condition: cond,
                now_ms: 10_000,
            }
        }
        let key = Bytes::from_static(b"never");
        let current = s.get(&key).unwrap().context();
        assert_eq!(
            s.write_with(&key, &actor("n1"), op(&Condition::IfAbsent))
                .unwrap_err(),
            current
        );
        let soon = Bytes::from_static(b"soon");
        assert!(
            s.write_with(&soon, &actor("n1"), op(&Condition::IfAbsent))
                .is_ok(),
            "an expired value is absent"
        );
        let stale = Condition::IfMatch(current.clone());
        assert!(s.write_with(&key, &actor("n1"), op(&stale)).is_ok());
        assert!(s.write_with(&key, &actor("n1"), op(&stale)).is_err());
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
