//! A shard: its storage engine ([`Engine`]) and the index kept beside it ([`Index`]): the
//! Merkle trees of its ring segments, the key-order and expiry indexes, the tombstone marks
//! and the byte count.
//!
//! The engine stores versions and nothing else. Every change it makes yields a [`Change`]
//! (the key's [`Summary`] before and after), and the index is fed those events
//! ([`Index::apply`]), as Garage's Merkle updater is fed its table's changes. Here the event is
//! applied at once, under the shard's lock, so a tree never lags its keys.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use tokio::time::Instant;

use super::INLINE_KEY;
use super::entries::Entries;
use super::packed::Packer;
use crate::merkle::MerkleTree;
use crate::rpc::SegmentId;
use crate::version::VersionSet;

/// The keys' versions of a shard.
#[derive(Default)]
pub(super) struct Engine {
    /// Every key's versions, ordered by `(hash, key)`.
    pub(super) entries: Entries,
    /// The writers packed entries name by number.
    pub(super) packer: Packer,
}

/// One key's change, as the index hears of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Change<'a> {
    pub(super) hash: u64,
    pub(super) key: &'a [u8],
    pub(super) old: Summary,
    pub(super) new: Summary,
}

/// A shard: its engine, and the index that follows it.
#[derive(Default)]
pub(super) struct Shard {
    pub(super) engine: Engine,
    pub(super) index: Index,
}

pub(super) struct SegTree {
    pub(super) id: SegmentId,
    pub(super) tree: MerkleTree,
}

/// What a shard keeps beside its keys, fed by [`Change`]s.
#[derive(Default)]
pub(super) struct Index {
    /// This shard's segments, ordered by end. Empty until the ring is known.
    pub(super) trees: Vec<SegTree>,
    /// When each key whose versions are all tombstones became so, for tombstone GC. Tokio's
    /// clock, so that a paused test runtime can age tombstones ([`crate::clock`]). A fixed
    /// hasher: which old tombstones a GC round picks must not depend on a random state.
    pub(super) tombstones: HashMap<Key, Instant, xxhash_rust::xxh3::Xxh3Builder>,
    /// Bytes of keys and values held.
    pub(super) bytes: u64,
    /// Every key of the engine, in key order.
    pub(super) by_key: BTreeSet<Key>,
    /// `(expiry, hash, key)` of every key with an expiring value not yet dropped.
    pub(super) expiry: BTreeSet<(u64, u64, Key)>,
}

impl Index {
    pub(super) fn tree_mut(&mut self, hash: u64) -> Option<&mut MerkleTree> {
        let i = self.trees.partition_point(|t| t.tree.arc().1 < hash);
        // Only some segments have trees: the first one ending at or after `hash` may not
        // hold it.
        self.trees
            .get_mut(i)
            .map(|t| &mut t.tree)
            .filter(|t| t.contains(hash))
    }

    pub(super) fn tree(&self, id: SegmentId) -> Option<&MerkleTree> {
        self.trees.iter().find(|t| t.id == id).map(|t| &t.tree)
    }

    /// Follows one change of the engine: fingerprints, bytes, key order, expiry and
    /// tombstone marks.
    pub(super) fn apply(&mut self, change: Change<'_>) {
        let Change {
            hash,
            key,
            old,
            new,
        } = change;
        if old.fp != new.fp
            && let Some(tree) = self.tree_mut(hash)
        {
            tree.update(hash, old.fp, new.fp);
        }
        self.bytes = (self.bytes + new.bytes).saturating_sub(old.bytes);
        if old.fp == 0 && new.fp != 0 {
            self.by_key.insert(Key::new(key));
        } else if old.fp != 0 && new.fp == 0 {
            self.by_key.remove(key);
        }
        if old.expires != new.expires {
            if let Some(t) = old.expires {
                self.expiry.remove(&(t, hash, Key::new(key)));
            }
            if let Some(t) = new.expires {
                self.expiry.insert((t, hash, Key::new(key)));
            }
        }
        if new.deleted && !old.deleted {
            self.tombstones.insert(Key::new(key), Instant::now());
        } else if old.deleted && !new.deleted {
            self.tombstones.remove(key);
        }
    }
}

/// What the trees and the tombstone index need to know of a key's state.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(super) struct Summary {
    pub(super) fp: u64,
    pub(super) deleted: bool,
    /// Key and value bytes (0 for an empty set).
    pub(super) bytes: u64,
    /// When the next value expires.
    pub(super) expires: Option<u64>,
}

impl Summary {
    pub(super) fn of(key: &[u8], vs: &VersionSet) -> Summary {
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

/// A key as the secondary indexes hold it: inline up to [`INLINE_KEY`] bytes. Ordered,
/// compared and hashed as its bytes, so the indexes can be searched with a `&[u8]`.
#[derive(Clone)]
pub(super) enum Key {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(Box<[u8]>),
}

impl Key {
    pub(super) fn new(key: &[u8]) -> Key {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline(key.len() as u8, bytes)
        } else {
            Key::Heap(key.into())
        }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline(len, bytes) => &bytes[..*len as usize],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, which `Borrow<[u8]>` requires.
        self.as_bytes().hash(state);
    }
}
