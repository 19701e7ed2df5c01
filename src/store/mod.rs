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
mod tests;
