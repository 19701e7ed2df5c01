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
//! Each shard is its storage engine (`entries`: each key's versions, by `(hash, key)`) and an
//! index beside it (`shard`: the Merkle trees, the two secondary indexes, the tombstone marks
//! and the byte count). The engine knows nothing of the index: every change it makes is a
//! `Change` (the key's summary before and after) that the index applies, under the same lock.
//!
//! The store never decides *what* to keep: that is the version algebra's job
//! ([`crate::version`]).
//!
//! # Memory layout
//!
//! What a replica pays per key beyond the key and value bytes is the store's main cost, so
//! the common case (one version, a value of at most [`PACKED_VALUE_MAX`] bytes) is stored
//! *packed* (the `packed` submodule owns the encoding): the key, the version's dot, history,
//! metadata and value in one allocation of plain bytes, where each writer ([`Actor`], 24
//! bytes and named twice per version) is a number of a byte or two in a per-shard table. The
//! hash-ordered B-tree maps the bare hash to a 16-byte handle of that allocation, and the
//! key-order index holds the key inline when it has at most [`INLINE_KEY`] bytes. For a
//! million keys like `key00000001` with 100-byte values, `tests/memory.rs` measures 123 bytes
//! per key and replica beyond the key and value:
//!
//! - the packed allocation, about 125 bytes in a 144-byte malloc chunk: 33;
//! - the hash-ordered B-tree, a 24-byte slot in nodes about 70% full, and its inner nodes: 40;
//! - the key-order index, a 24-byte slot: 50 in the test, whose keys arrive in key order and
//!   leave B-tree nodes about 55% full, nearer 40 for keys arriving in random order.
//!
//! A `VersionSet` per key, `(hash, Bytes)` B-tree keys and a second `Bytes` copy of each key
//! in the key-order index cost 410 to 440 bytes.
//!
//! A whole node costs more than the store: measured on a `ringkv dev` ring holding a million
//! keys with 100-byte values (on the development machine, a 2-core VM), each replica copy took
//! 222 bytes of RSS, 111 bytes beyond the key and value. `tests/memory.rs` fails if the store
//! alone goes over 200 bytes per key beyond the key and value.
//!
//! The price is a copy: a read or a write unpacks the key's versions into a [`VersionSet`]
//! (copying the value out) and a change packs them again (copying it in). For values this
//! small the copies cost less than the allocations they replace (a shared `Bytes` header per
//! value, which a clone allocates, and a context vector per version), and larger values are
//! not packed. Neither are siblings: a set of several versions is kept as it is, and packed
//! again once it is down to one version.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::lock;
use crate::merkle::{DEFAULT_DEPTH, MerkleTree, NodeRef};
use crate::ring::{SHARD_BITS, Segment, key_hash, shard_of};
use crate::version::{Actor, Condition, Context, Meta, VersionSet};

// Segment ids and listing pages cross the wire: they are defined with the protocol.
pub use crate::rpc::{ListEntry, ListPage, SegmentId};

mod entries;
pub mod log;
mod packed;
mod shard;

use entries::Entry;
use shard::{Change, Key, SegTree, Shard, Summary};

pub use log::{Disk, Log, Record, WalStats};

/// Number of independently locked shards.
pub const SHARDS: usize = 1 << SHARD_BITS;

/// Largest value stored packed (see the module docs). A packed value is copied out on every
/// read, which stays a small part of a read up to a few KiB; a larger value is kept as the
/// `Bytes` it arrived in, shared by reads, and its key pays about 380 bytes of bookkeeping
/// instead of about 125: under 10% of such a value.
pub const PACKED_VALUE_MAX: usize = 4 * 1024;

/// Hash slots a snapshot encodes per hold of a shard's lock: well under a millisecond of work, so a
/// snapshot never stops a shard's writes for longer (a whole shard of a million-key store took
/// 20 ms).
const SNAPSHOT_CHUNK: usize = 256;

/// Longest key the key-order, tombstone and expiry indexes hold inline, without an
/// allocation of its own. With a length byte and a tag this makes a `Key` 24 bytes, the
/// size a boxed slice and its tag need anyway.
pub const INLINE_KEY: usize = 22;

/// The versions this node stores, by key.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    /// The highest counter this node's actor has minted, for any key: new versions go above
    /// it, so a counter is never reused even for a key this store dropped meanwhile.
    minted: AtomicU64,
    /// Where the next tombstone-GC pass starts.
    gc_cursor: AtomicUsize,
    /// The write-ahead log every change is appended to, under the key's shard lock, when the
    /// node has a data dir ([`crate::durable`]).
    log: Option<Arc<dyn Log>>,
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
            log: None,
        }
    }

    /// An empty store that appends every change to `log` (recovery fills it first, through
    /// [`Store::restore`], which logs nothing).
    pub fn with_log(log: Arc<dyn Log>) -> Store {
        Store {
            log: Some(log),
            ..Store::new()
        }
    }

    /// Attaches the log, after recovery filled the store.
    pub fn set_log(&mut self, log: Arc<dyn Log>) {
        self.log = Some(log);
    }

    /// The log, if this store has one.
    pub fn log(&self) -> Option<&Arc<dyn Log>> {
        self.log.as_ref()
    }

    /// Appends the key's state after a change; the caller holds the key's shard lock.
    fn logged(&self, key: &[u8], versions: impl FnOnce() -> VersionSet) {
        if let Some(log) = &self.log {
            log.append(&Record::Key {
                key: Bytes::copy_from_slice(key),
                versions: versions(),
            });
        }
    }

    /// Sets `key` to `versions` (removes it if empty), as recovery replays the log. Not
    /// logged.
    pub fn restore(&self, key: &[u8], versions: VersionSet) {
        let hash = key_hash(key);
        let mut guard = self.shard(hash);
        let shard = &mut *guard;
        let old = match shard.engine.entries.remove(hash, key) {
            Some(entry) => entry.summary(&shard.engine.packer),
            None => Summary::default(),
        };
        let new = Summary::of(key, &versions);
        if !versions.is_empty() {
            let entry = Entry::new(key, Cow::Owned(versions), &mut shard.engine.packer);
            shard.engine.entries.insert(hash, entry);
        }
        shard.index.apply(Change {
            hash,
            key,
            old,
            new,
        });
    }

    /// Streams every key of shard `i` with its versions to `put`, holding that shard's lock
    /// only while it is encoded (a snapshot: the store is never cloned).
    pub fn snapshot_shard(
        &self,
        i: usize,
        put: &mut dyn FnMut(&Record) -> crate::error::Result<()>,
    ) -> crate::error::Result<()> {
        // A chunk of hash slots per lock hold, not the whole shard: writes to the shard wait
        // for one chunk's encoding at most. Keys changed between chunks are in the log after
        // the snapshot's segment start, which recovery replays over it.
        let mut after: Option<u64> = None;
        loop {
            let locked = std::time::Instant::now();
            let (records, last) = {
                let shard = lock(&self.shards[i]);
                let from = match after {
                    Some(h) => Bound::Excluded(h),
                    None => Bound::Unbounded,
                };
                let mut last = None;
                let mut hashes = 0;
                let records: Vec<Record> = shard
                    .engine
                    .entries
                    .range((from, Bound::Unbounded))
                    // Whole hashes only: the next chunk starts after the last one.
                    .take_while(|(hash, _)| {
                        if last != Some(*hash) {
                            if hashes == SNAPSHOT_CHUNK {
                                return false;
                            }
                            hashes += 1;
                            last = Some(*hash);
                        }
                        true
                    })
                    .map(|(_, entry)| Record::Key {
                        key: Bytes::copy_from_slice(entry.key()),
                        versions: entry.versions(&shard.engine.packer),
                    })
                    .collect();
                (records, last)
            };
            if let Some(log) = &self.log {
                let held = locked.elapsed().as_micros() as u64;
                log.stats()
                    .snapshot_max_lock_us
                    .fetch_max(held, Ordering::Relaxed);
            }
            records.iter().try_for_each(&mut *put)?;
            match last {
                Some(h) => after = Some(h),
                None => return Ok(()),
            }
        }
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_of(hash)])
    }

    /// A copy of the versions stored for `key`.
    pub fn get(&self, key: &Bytes) -> Option<VersionSet> {
        let hash = key_hash(key);
        let shard = self.shard(hash);
        let entry = shard.engine.entries.get(hash, key)?;
        Some(entry.versions(&shard.engine.packer))
    }

    /// Merges `incoming` into the versions of `key`. Returns true if anything changed.
    pub fn merge(&self, key: &Bytes, incoming: &VersionSet) -> bool {
        self.merge_in(key, Cow::Borrowed(incoming))
    }

    /// As [`Store::merge`], taking the versions by value: a set the store does not pack
    /// (siblings, a large value) is then kept as it is rather than copied.
    pub fn merge_owned(&self, key: &Bytes, incoming: VersionSet) -> bool {
        self.merge_in(key, Cow::Owned(incoming))
    }

    fn merge_in(&self, key: &[u8], incoming: Cow<'_, VersionSet>) -> bool {
        if incoming.is_empty() {
            return false;
        }
        let hash = key_hash(key);
        let mut guard = self.shard(hash);
        let shard = &mut *guard;
        let Some(entry) = shard.engine.entries.get_mut(hash, key) else {
            let new = Summary::of(key, &incoming);
            self.logged(key, || incoming.clone().into_owned());
            let entry = Entry::new(key, incoming, &mut shard.engine.packer);
            shard.engine.entries.insert(hash, entry);
            shard.index.apply(Change {
                hash,
                key,
                old: Summary::default(),
                new,
            });
            return true;
        };
        let old = entry.summary(&shard.engine.packer);
        let Some(new) = entry.merge(key, incoming, &mut shard.engine.packer) else {
            return false;
        };
        self.logged(key, || entry.versions(&shard.engine.packer));
        shard.index.apply(Change {
            hash,
            key,
            old,
            new,
        });
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
        let mut guard = self.shard(hash);
        let shard = &mut *guard;
        let floor = self.minted.load(Ordering::Relaxed);
        // One lookup for a stored key; a new key is inserted only once its condition held.
        // The versions written are returned as they are (the stored copy is packed from
        // them), so the caller's value is moved, never shared with the store.
        let (old, ctx, after) = match shard.engine.entries.get_mut(hash, key) {
            Some(entry) => {
                let mut set = entry.versions(&shard.engine.packer);
                if !op.condition.holds(&set, op.now_ms) {
                    return Err(set.context());
                }
                let old = entry.summary(&shard.engine.packer);
                let ctx = set.write_above(actor, op.context, op.value, op.meta, floor);
                *entry = Entry::new(key, Cow::Borrowed(&set), &mut shard.engine.packer);
                (old, ctx, set)
            }
            None => {
                let mut set = VersionSet::new();
                if !op.condition.holds(&set, op.now_ms) {
                    return Err(Context::default());
                }
                let ctx = set.write_above(actor, op.context, op.value, op.meta, floor);
                let entry = Entry::new(key, Cow::Borrowed(&set), &mut shard.engine.packer);
                shard.engine.entries.insert(hash, entry);
                (Summary::default(), ctx, set)
            }
        };
        // Keys in other shards may mint the same counter concurrently: harmless, a dot only
        // has to be unique within its key, which this shard's lock serialises.
        self.minted
            .fetch_max(ctx.max_counter(actor), Ordering::Relaxed);
        let new = Summary::of(key, &after);
        self.logged(key, || after.clone());
        shard.index.apply(Change {
            hash,
            key,
            old,
            new,
        });
        Ok((ctx, after))
    }

    /// Drops the values that expired by `now_ms`, visiting at most `max` keys.
    pub fn expire_due(&self, now_ms: u64, max: usize) -> ExpireReport {
        let mut report = ExpireReport::default();
        for shard in self.shards.iter() {
            let mut guard = lock(shard);
            let shard = &mut *guard;
            while report.processed < max {
                let Some((t, hash, key)) = shard.index.expiry.first().cloned() else {
                    break;
                };
                if t > now_ms {
                    break;
                }
                report.processed += 1;
                // Taken out first, so the loop always advances; `changed` re-adds the key
                // if another of its values expires later.
                shard.index.expiry.pop_first();
                let key = key.as_bytes();
                let Some(entry) = shard.engine.entries.get_mut(hash, key) else {
                    continue;
                };
                let old = entry.summary(&shard.engine.packer);
                let mut after = entry.versions(&shard.engine.packer);
                let dropped = after.expire(now_ms);
                if dropped {
                    *entry = Entry::new(key, Cow::Borrowed(&after), &mut shard.engine.packer);
                }
                let new = Summary::of(key, &after);
                if dropped {
                    self.logged(key, || after.clone());
                }
                report.freed += old.bytes.saturating_sub(new.bytes);
                shard.index.apply(Change {
                    hash,
                    key,
                    old,
                    new,
                });
                if dropped && after.live(now_ms).next().is_none() {
                    report.expired.push((Bytes::copy_from_slice(key), after));
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
    /// the versions of the chosen keys are summarised, one lock per shard.
    pub fn list(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> ListPage {
        // Keys spread evenly over the shards: a little over a page's share per batch.
        let batch = (limit / SHARDS) * 3 / 2 + 4;
        let start: Bound<&[u8]> = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        // Per shard: the keys read but not yet merged, and whether the shard has more.
        let read = |i: usize, from: Bound<&[u8]>| -> (VecDeque<Key>, bool) {
            let shard = lock(&self.shards[i]);
            let keys: VecDeque<Key> = shard
                .index
                .by_key
                .range::<[u8], _>((from, Bound::Unbounded))
                .take_while(|k| k.as_bytes().starts_with(prefix))
                .take(batch)
                .cloned()
                .collect();
            let more = keys.len() == batch;
            (keys, more)
        };
        let mut runs: Vec<(VecDeque<Key>, bool)> = (0..SHARDS).map(|i| read(i, start)).collect();
        let mut heap: BinaryHeap<Reverse<(Key, usize)>> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, (keys, _))| keys.front().map(|k| Reverse((k.clone(), i))))
            .collect();
        let mut chosen: Vec<(usize, Key)> = Vec::with_capacity(limit.min(16 * 1024));
        while chosen.len() < limit {
            let Some(Reverse((_, i))) = heap.pop() else {
                break;
            };
            let run = &mut runs[i];
            let Some(key) = run.0.pop_front() else {
                continue;
            };
            if run.0.is_empty() && run.1 {
                *run = read(i, Bound::Excluded(key.as_bytes()));
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
                let key = chosen[j].1.as_bytes();
                if let Some(entry) = shard.engine.entries.get(key_hash(key), key) {
                    sums[j] = (entry.fingerprint(&shard.engine.packer), entry.live_until());
                }
            }
        }
        let entries = chosen
            .into_iter()
            .zip(sums)
            .map(|((_, key), (fingerprint, live_until))| ListEntry {
                key: Bytes::copy_from_slice(key.as_bytes()),
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
        let mut guard = self.shard(hash);
        let shard = &mut *guard;
        let old = match shard.engine.entries.get(hash, key) {
            Some(entry) if entry.fingerprint(&shard.engine.packer) == expected => {
                entry.summary(&shard.engine.packer)
            }
            _ => return false,
        };
        shard.engine.entries.remove(hash, key);
        self.logged(key, VersionSet::new);
        shard.index.apply(Change {
            hash,
            key,
            old,
            new: Summary::default(),
        });
        true
    }

    /// Rebuilds the Merkle trees for a new ring. `segments` is the ring's whole segment list;
    /// segment ids are positions in it. Only the segments `keep` accepts get a tree: a node
    /// keeps trees for the segments it is a home of, the only ones it compares with peers.
    /// (Trees for all of them cost memory and rebuild time in proportion to the whole ring:
    /// at 64 nodes, 16,448 segments of about 2 KB each, 1.7 s to rebuild on every membership
    /// change; a node is a home of about N/nodes of them.) Runs one shard at a time, so
    /// writes to other shards proceed meanwhile.
    pub fn set_segments(&self, segments: &[Segment], keep: impl Fn(&Segment) -> bool) {
        let mut by_shard: Vec<Vec<(usize, &Segment)>> = vec![Vec::new(); self.shards.len()];
        for (id, s) in segments.iter().enumerate() {
            if keep(s) {
                by_shard[shard_of(s.end)].push((id, s));
            }
        }
        for (shard, mine) in self.shards.iter().zip(by_shard) {
            let mut shard = lock(shard);
            let mut trees: Vec<SegTree> = mine
                .into_iter()
                .map(|(id, s)| SegTree {
                    id: id as SegmentId,
                    tree: MerkleTree::new(s.start, s.end, DEFAULT_DEPTH),
                })
                .collect();
            trees.sort_by_key(|t| t.tree.arc().1);
            shard.index.trees = trees;
            let digests: Vec<(u64, u64)> = shard
                .engine
                .entries
                .range(..)
                .map(|(hash, entry)| (hash, entry.fingerprint(&shard.engine.packer)))
                .collect();
            for (hash, fp) in digests {
                if let Some(tree) = shard.index.tree_mut(hash) {
                    tree.update(hash, 0, fp);
                }
            }
        }
    }

    /// The root of a segment's tree, or `None` if this store has no such segment.
    pub fn root(&self, seg: &Segment, id: SegmentId) -> Option<u64> {
        let shard = self.shard(seg.end);
        shard.index.tree(id).map(|t| t.root())
    }

    /// The children of one tree node, or `None` for a leaf or an unknown segment.
    pub fn children(&self, seg: &Segment, id: SegmentId, node: NodeRef) -> Option<Vec<u64>> {
        let shard = self.shard(seg.end);
        shard.index.tree(id)?.children(node).map(<[u64]>::to_vec)
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
        let Some(tree) = shard.index.tree(id) else {
            return Vec::new();
        };
        let Some(hashes) = leaf_hashes(tree.leaf_range(leaf)) else {
            return Vec::new();
        };
        shard
            .engine
            .entries
            .range(hashes)
            .map(|(_, entry)| {
                let key = entry.key();
                let expired = shard
                    .index
                    .tombstones
                    .get(key)
                    .is_some_and(|since| since.elapsed() >= grace);
                (
                    Bytes::copy_from_slice(key),
                    entry.fingerprint(&shard.engine.packer),
                    expired,
                )
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
        let from = after.map_or(seg.start.wrapping_add(1), |(hash, _)| *hash);
        shard
            .engine
            .entries
            .range(from..)
            .skip_while(|(hash, entry)| {
                after.is_some_and(|(h, k)| *hash == *h && entry.key() <= k.as_ref())
            })
            .take_while(|(hash, _)| *hash <= seg.end)
            .take(max)
            .map(|(hash, entry)| {
                let key = Bytes::copy_from_slice(entry.key());
                ((hash, key), entry.versions(&shard.engine.packer))
            })
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
            for (key, since) in &shard.index.tombstones {
                if out.len() >= max {
                    return out;
                }
                if since.elapsed() >= grace {
                    let key = key.as_bytes();
                    if let Some(entry) = shard.engine.entries.get(key_hash(key), key) {
                        let fp = entry.fingerprint(&shard.engine.packer);
                        out.push((Bytes::copy_from_slice(key), fp));
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
            stats.keys += shard.engine.entries.len() as u64;
            stats.tombstones += shard.index.tombstones.len() as u64;
            stats.bytes += shard.index.bytes;
        }
        stats
    }
}

/// The hashes of a Merkle leaf `(start, end]`, as a B-tree range. A leaf range never wraps
/// (leaves split a segment, and a wrapping segment starts at u64::MAX, i.e. covers
/// `[0, end]`); an empty leaf is `(x, x)`, which without this check would read as "from 0"
/// for `(MAX, MAX)`.
fn leaf_hashes((start, end): (u64, u64)) -> Option<std::ops::RangeInclusive<u64>> {
    let lower = start.wrapping_add(1);
    (start != end && lower <= end).then_some(lower..=end)
}

#[cfg(test)]
mod tests {
    use super::packed::Packer;
    use std::sync::Arc;

    use super::entries::Entries;
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
        a.set_segments(&segs, |_| true);
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
        b.set_segments(&segs, |_| true);
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

    /// Only kept segments get trees; a key in another segment is stored all the same, found
    /// by a range lookup, and counted in no tree.
    #[test]
    fn only_kept_segments_get_trees() {
        let five = Ring::new(["a", "b", "c", "d", "e"].map(NodeId::from), 8);
        let segs = five.segments(3);
        let s = Store::new();
        s.set_segments(&segs, |seg| seg.homes.iter().any(|h| &**h == "a"));
        for i in 0..500 {
            let op = WriteOp {
                context: None,
                value: Some(Bytes::from_static(b"v")),
                meta: Meta::default().boxed(),
                condition: &Condition::None,
                now_ms: 0,
            };
            s.write_with(&Bytes::from(format!("k{i}")), &actor("n1"), op)
                .unwrap();
        }
        let (mut kept, mut other) = (0, 0);
        for (i, seg) in segs.iter().enumerate() {
            let held = !s.segment_batch(seg, None, 1).is_empty();
            match s.root(seg, i as SegmentId) {
                Some(root) => {
                    assert!(seg.homes.iter().any(|h| &**h == "a"));
                    assert_eq!(root != 0, held, "a kept tree counts its keys");
                    kept += 1;
                }
                None => {
                    assert!(!seg.homes.iter().any(|h| &**h == "a"));
                    other += usize::from(held);
                }
            }
        }
        assert!(kept > 0 && kept < segs.len(), "{kept} of {}", segs.len());
        assert!(other > 0, "some keys lie in segments without a tree");
    }

    /// The sweep drops expired values (freeing their bytes) but keeps their versions as
    /// tombstones with unchanged fingerprints and trees, and leaves later expiries alone.
    #[test]
    fn expire_due_drops_values_and_keeps_fingerprints() {
        let segs = ring().segments(3);
        let s = Store::new();
        s.set_segments(&segs, |_| true);
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
    fn a_snapshot_streams_every_key_once_in_chunks() {
        let store = Store::new();
        let actor = Actor {
            node: "n1".into(),
            generation: 1,
        };
        // Enough keys that every shard is read in several chunks.
        let n = SHARDS * SNAPSHOT_CHUNK * 2 + 7;
        for i in 0..n {
            let key = Bytes::from(format!("k{i}"));
            store.write(&key, &actor, None, Some(Bytes::from_static(b"v")));
        }
        let mut seen = std::collections::HashSet::new();
        for shard in 0..SHARDS {
            store
                .snapshot_shard(shard, &mut |r| {
                    let Record::Key { key, versions } = r else {
                        panic!("a store snapshot holds keys only");
                    };
                    assert_eq!(versions.versions().len(), 1);
                    assert!(seen.insert(key.clone()), "{key:?} twice");
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(seen.len(), n);
    }

    /// Tombstones age by tokio's clock: a paused runtime moves them past the grace at once.
    #[tokio::test(start_paused = true)]
    async fn old_tombstones_are_listed_after_the_grace() {
        let grace = Duration::from_secs(3600);
        let s = Store::new();
        let key = Bytes::from_static(b"gone");
        s.write(&key, &actor("n1"), None, Some(Bytes::from_static(b"v")));
        assert!(s.old_tombstones(Duration::ZERO, 10).is_empty());
        let (_, vs) = s.write(&key, &actor("n1"), None, None);
        let listed = vec![(key.clone(), vs.fingerprint(&key))];
        assert_eq!(s.old_tombstones(Duration::ZERO, 10), listed);
        tokio::time::advance(grace - Duration::from_millis(1)).await;
        assert!(s.old_tombstones(grace, 10).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(s.old_tombstones(grace, 10), listed);
        // A new value clears the tombstone mark.
        s.write(&key, &actor("n1"), None, Some(Bytes::from_static(b"back")));
        assert!(s.old_tombstones(Duration::ZERO, 10).is_empty());
    }

    /// The sizes the memory figures in the module docs rest on.
    #[test]
    fn entries_and_index_keys_are_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }

    /// What the store reads of an entry in place (key, summary, fingerprint, expiry) agrees
    /// with its set, packed or not.
    #[test]
    fn entries_read_as_their_sets() {
        let mut packer = Packer::default();
        let packable = packed::tests::packable();
        assert!(packable.len() > 300);
        let unpackable = packed::tests::unpackable().into_iter();
        let samples = packable.into_iter().map(|(key, set)| (key, set, true));
        for (key, set, packs) in samples.chain(unpackable.map(|set| (b"k".to_vec(), set, false))) {
            assert_eq!(Key::new(&key).as_bytes(), &key[..]);
            let entry = Entry::new(&key, Cow::Borrowed(&set), &mut packer);
            assert_eq!(matches!(entry, Entry::Packed(_)), packs);
            assert_eq!(entry.key(), &key[..]);
            assert_eq!(entry.versions(&packer), set);
            assert_eq!(entry.summary(&packer), Summary::of(&key, &set));
            assert_eq!(entry.fingerprint(&packer), set.fingerprint(&key));
            assert_eq!(entry.live_until(), set.live_until());
        }
    }

    /// The store's merge, which decides the common cases on the packed form, agrees with
    /// the version algebra on every pair of simulated states, and keeps siblings and large
    /// values unpacked only as long as they need it.
    #[test]
    fn store_merges_agree_with_the_algebra() {
        let actors = [actor("n1"), actor("n2"), actor("n3")];
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut states: Vec<VersionSet> = vec![VersionSet::new()];
        let mut contexts: Vec<Context> = vec![Context::new()];
        for step in 0..300 {
            let mut set = states[rng.random_range(0..states.len())].clone();
            let ctx = contexts[rng.random_range(0..contexts.len())].clone();
            let who = &actors[rng.random_range(0..actors.len())];
            let value = match step % 5 {
                0 => None,
                1 => Some(Bytes::from(vec![1u8; PACKED_VALUE_MAX + 1])),
                _ => Some(Bytes::from(format!("v{step}"))),
            };
            let ctx = if rng.random_bool(0.5) {
                None
            } else {
                Some(&ctx)
            };
            contexts.push(set.write(who, ctx, value));
            states.push(set);
        }
        let key = Bytes::from_static(b"key");
        for x in states.iter().step_by(3) {
            for y in states.iter().step_by(4) {
                let store = Store::new();
                store.merge(&key, x);
                let mut want = x.clone();
                let changed = want.merge(y);
                // Merging an empty set stores nothing, so then `y` alone counts.
                let expected = if x.is_empty() { !y.is_empty() } else { changed };
                assert_eq!(store.merge_owned(&key, y.clone()), expected);
                let got = store.get(&key);
                assert_eq!(got.clone().unwrap_or_default(), want);
                let shard = store.shard(key_hash(&key));
                if let Some(entry) = shard.engine.entries.get(key_hash(&key), &key) {
                    let packable = want.len() == 1
                        && want.versions()[0]
                            .value
                            .as_ref()
                            .is_none_or(|v| v.len() <= PACKED_VALUE_MAX);
                    assert_eq!(matches!(entry, Entry::Packed(_)), packable, "{want:?}");
                }
            }
        }
    }

    /// Keys whose hashes collide share a slot, and every operation still finds each of them,
    /// in `(hash, key)` order.
    #[test]
    fn colliding_hashes_share_a_slot() {
        let mut packer = Packer::default();
        let mut entries = Entries::default();
        let set = |v: &str| {
            let mut s = VersionSet::new();
            s.write(&actor("n1"), None, Some(Bytes::from(v.to_string())));
            s
        };
        let mut siblings = set("s1");
        siblings.merge(&{
            let mut s = VersionSet::new();
            s.write(&actor("n2"), None, None);
            s
        });
        let mut insert = |entries: &mut Entries, hash, key: &str, s: &VersionSet| {
            let entry = Entry::new(key.as_bytes(), Cow::Borrowed(s), &mut packer);
            entries.insert(hash, entry);
        };
        insert(&mut entries, 7, "m", &set("m"));
        insert(&mut entries, 8, "a", &set("a"));
        insert(&mut entries, 7, "z", &siblings);
        insert(&mut entries, 7, "b", &set("b"));
        insert(&mut entries, 6, "q", &set("q"));
        assert_eq!(entries.len(), 5);
        assert_eq!(entries.map.len(), 3);
        let order = |entries: &Entries| -> Vec<(u64, Vec<u8>)> {
            entries
                .range(..)
                .map(|(h, e)| (h, e.key().to_vec()))
                .collect()
        };
        let want: Vec<(u64, Vec<u8>)> = [(6, "q"), (7, "b"), (7, "m"), (7, "z"), (8, "a")]
            .map(|(h, k)| (h, k.as_bytes().to_vec()))
            .to_vec();
        assert_eq!(order(&entries), want);
        assert!(
            entries
                .get(7, b"z")
                .is_some_and(|e| matches!(e, Entry::Versions(_)))
        );
        assert!(entries.get(7, b"a").is_none() && entries.get(8, b"z").is_none());
        let m = entries.get_mut(7, b"m").expect("held");
        assert!(
            m.merge(b"m", Cow::Owned(siblings.clone()), &mut packer)
                .is_some()
        );
        let mut want = set("m");
        want.merge(&siblings);
        assert_eq!(entries.get(7, b"m").expect("held").versions(&packer), want);
        assert!(entries.remove(7, b"x").is_none());
        assert!(entries.remove(7, b"m").is_some());
        assert!(entries.remove(7, b"z").is_some());
        assert!(
            matches!(entries.map.get(&7), Some(Entry::Packed(_))),
            "back to one key"
        );
        assert_eq!(entries.get(7, b"b").map(Entry::key), Some(&b"b"[..]));
        assert!(entries.remove(7, b"b").is_some());
        assert!(!entries.map.contains_key(&7));
        assert_eq!(entries.len(), 2);
        assert_eq!(order(&entries).len(), 2);
    }

    /// Siblings are kept unpacked while they last and packed again once resolved; the
    /// writes hand back the caller's value, not a copy shared with the store.
    #[test]
    fn siblings_unpack_and_pack_again() {
        let s = Store::new();
        let key = Bytes::from_static(b"k");
        let packed = |s: &Store| {
            let shard = s.shard(key_hash(&key));
            matches!(
                shard.engine.entries.get(key_hash(&key), &key),
                Some(Entry::Packed(_))
            )
        };
        let (c1, _) = s.write(&key, &actor("n1"), None, Some(Bytes::from_static(b"1")));
        assert!(packed(&s));
        s.write(
            &key,
            &actor("n1"),
            Some(&c1),
            Some(Bytes::from_static(b"2")),
        );
        let (_, both) = s.write(
            &key,
            &actor("n1"),
            Some(&c1),
            Some(Bytes::from_static(b"3")),
        );
        assert_eq!(both.len(), 2);
        assert!(!packed(&s));
        assert_eq!(s.get(&key), Some(both.clone()));
        let value = Bytes::from(vec![5u8; 64]);
        let ptr = value.as_ptr();
        let (_, one) = s.write(&key, &actor("n1"), Some(&both.context()), Some(value));
        assert_eq!(one.len(), 1);
        assert_eq!(
            one.versions()[0].value.as_ref().map(|v| v.as_ptr()),
            Some(ptr)
        );
        assert!(packed(&s));
        assert_eq!(s.get(&key), Some(one));
    }
}
