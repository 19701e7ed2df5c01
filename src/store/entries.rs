//! The storage engine of a shard: each key's versions, by `(hash, key)`.
//!
//! An [`Entry`] is one key and its versions, packed when it can be ([`Packer`]). [`Entries`]
//! maps the bare hash to the entry of its key; keys are compared only once the hash matched.
//! Keys whose 64-bit hashes are equal (vanishingly rare, but nothing prevents it) keep the
//! smallest key in the map and the others beside it, in key order, so an entry is always one
//! key and no code path has to tell a key from a shared slot.
//!
//! The engine knows nothing of Merkle trees or indexes: each change returns the key's
//! [`Summary`] before and after, which the caller feeds to the shard's index
//! ([`super::shard::Index::apply`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, btree_map};
use std::ops::RangeBounds;

use super::packed::{Packer, View};
use super::shard::Summary;
use crate::version::VersionSet;

/// Every key's versions in a shard, by hash and then key.
#[derive(Default)]
pub(super) struct Entries {
    /// The smallest key of each hash.
    pub(super) map: BTreeMap<u64, Entry>,
    /// The other keys of a hash whose smallest key is in `map`, in key order.
    collided: BTreeMap<u64, Vec<Entry>>,
    /// Keys held.
    len: usize,
}

impl Entries {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn get(&self, hash: u64, key: &[u8]) -> Option<&Entry> {
        let first = self.map.get(&hash)?;
        if first.key() == key {
            return Some(first);
        }
        self.collided.get(&hash)?.iter().find(|e| e.key() == key)
    }

    pub(super) fn get_mut(&mut self, hash: u64, key: &[u8]) -> Option<&mut Entry> {
        let first = self.map.get_mut(&hash)?;
        if first.key() == key {
            return Some(first);
        }
        self.collided
            .get_mut(&hash)?
            .iter_mut()
            .find(|e| e.key() == key)
    }

    /// Adds the entry of a key not held yet.
    pub(super) fn insert(&mut self, hash: u64, entry: Entry) {
        self.len += 1;
        let first = match self.map.entry(hash) {
            btree_map::Entry::Vacant(v) => {
                v.insert(entry);
                return;
            }
            btree_map::Entry::Occupied(o) => o.into_mut(),
        };
        // The map keeps the smallest key of the hash.
        let other = if entry.key() < first.key() {
            std::mem::replace(first, entry)
        } else {
            entry
        };
        let rest = self.collided.entry(hash).or_default();
        let at = rest.partition_point(|e| e.key() < other.key());
        rest.insert(at, other);
    }

    pub(super) fn remove(&mut self, hash: u64, key: &[u8]) -> Option<Entry> {
        let btree_map::Entry::Occupied(mut first) = self.map.entry(hash) else {
            return None;
        };
        let removed = if first.get().key() == key {
            match self.collided.get_mut(&hash) {
                // The next key of the hash takes the map's place.
                Some(rest) => {
                    let next = rest.remove(0);
                    if rest.is_empty() {
                        self.collided.remove(&hash);
                    }
                    std::mem::replace(first.get_mut(), next)
                }
                None => first.remove(),
            }
        } else {
            let rest = self.collided.get_mut(&hash)?;
            let i = rest.iter().position(|e| e.key() == key)?;
            let removed = rest.remove(i);
            if rest.is_empty() {
                self.collided.remove(&hash);
            }
            removed
        };
        self.len -= 1;
        Some(removed)
    }

    /// The entries whose hashes are in `hashes`, in `(hash, key)` order.
    pub(super) fn range(
        &self,
        hashes: impl RangeBounds<u64>,
    ) -> impl Iterator<Item = (u64, &Entry)> {
        self.map.range(hashes).flat_map(move |(hash, first)| {
            let rest = self.collided.get(hash).map_or(&[][..], Vec::as_slice);
            std::iter::once(first).chain(rest).map(move |e| (*hash, e))
        })
    }
}

/// One key and its versions. 16 bytes, so that a B-tree slot is 24.
pub(super) enum Entry {
    /// One version, packed with its key (see [`Packer`]).
    Packed(Box<[u8]>),
    /// Siblings, or a value over [`super::PACKED_VALUE_MAX`]: the key and its versions as
    /// they are.
    Versions(Box<KeyVersions>),
}

/// An unpacked entry.
pub(super) struct KeyVersions {
    key: Box<[u8]>,
    versions: VersionSet,
}

impl Entry {
    /// The entry of `key` holding `set`: packed if it can be.
    pub(super) fn new(key: &[u8], set: Cow<'_, VersionSet>, packer: &mut Packer) -> Entry {
        match packer.pack(key, &set) {
            Some(packed) => Entry::Packed(packed),
            None => Entry::Versions(Box::new(KeyVersions {
                key: key.into(),
                versions: set.into_owned(),
            })),
        }
    }

    pub(super) fn key(&self) -> &[u8] {
        match self {
            Entry::Packed(packed) => View::key(packed),
            Entry::Versions(kv) => &kv.key,
        }
    }

    /// The entry's versions as a set of their own.
    pub(super) fn versions(&self, packer: &Packer) -> VersionSet {
        match self {
            Entry::Packed(packed) => packer.unpack(packed),
            Entry::Versions(kv) => kv.versions.clone(),
        }
    }

    pub(super) fn summary(&self, packer: &Packer) -> Summary {
        match self {
            Entry::Packed(packed) => {
                let v = View::parse(packed);
                Summary {
                    fp: v.fingerprint(packer),
                    deleted: v.value.is_none(),
                    bytes: (v.key.len() + v.value.map_or(0, <[u8]>::len)) as u64,
                    expires: v.value.and(v.expires),
                }
            }
            Entry::Versions(kv) => Summary::of(&kv.key, &kv.versions),
        }
    }

    /// [`VersionSet::fingerprint`].
    pub(super) fn fingerprint(&self, packer: &Packer) -> u64 {
        match self {
            Entry::Packed(packed) => View::parse(packed).fingerprint(packer),
            Entry::Versions(kv) => kv.versions.fingerprint(&kv.key),
        }
    }

    /// [`VersionSet::live_until`].
    pub(super) fn live_until(&self) -> u64 {
        match self {
            Entry::Packed(packed) => {
                let v = View::parse(packed);
                v.value.map_or(0, |_| v.expires.unwrap_or(u64::MAX))
            }
            Entry::Versions(kv) => kv.versions.live_until(),
        }
    }

    /// [`VersionSet::merge`] of `incoming` into this entry of `key`: the summary afterwards
    /// if anything changed.
    pub(super) fn merge(
        &mut self,
        key: &[u8],
        incoming: Cow<'_, VersionSet>,
        packer: &mut Packer,
    ) -> Option<Summary> {
        let packed = match self {
            Entry::Packed(packed) => packed,
            Entry::Versions(kv) => {
                if !kv.versions.merge(&incoming) {
                    return None;
                }
                let new = Summary::of(key, &kv.versions);
                if let Some(packed) = packer.pack(key, &kv.versions) {
                    *self = Entry::Packed(packed);
                }
                return Some(new);
            }
        };
        // A replica mostly receives one version that it already holds, or that supersedes
        // or is superseded by the one it holds. Decided here on the packed form by the
        // algebra's rule (`v` is superseded by `w` iff `w`'s history holds `v`'s dot and the
        // dots differ), without unpacking; siblings take the general merge.
        if let [theirs] = incoming.versions() {
            let ours = View::parse(packed);
            if ours.is_dot(packer, &theirs.dot) {
                return None;
            }
            let ours_seen = theirs
                .history
                .contains_counter(packer.actor(ours.actor), ours.counter);
            let theirs_seen = ours.history_contains(packer, &theirs.dot);
            match (ours_seen, theirs_seen) {
                (false, true) => return None,
                (true, false) => {
                    let new = Summary::of(key, &incoming);
                    *self = Entry::new(key, incoming, packer);
                    return Some(new);
                }
                // Concurrent, or (only with forged histories) each superseding the other.
                _ => {}
            }
        }
        let mut set = packer.unpack(packed);
        if !set.merge(&incoming) {
            return None;
        }
        let new = Summary::of(key, &set);
        *self = Entry::new(key, Cow::Owned(set), packer);
        Some(new)
    }
}
