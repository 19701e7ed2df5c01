//! The in-memory storage engine: for each key, its set of non-dominated versions.
//!
//! The map is split into [`SHARDS`] shards, each behind its own `std::sync::Mutex`, chosen by
//! the key's ring hash. A std mutex and not a tokio one: no critical section awaits anything,
//! each is a hash-map operation plus a version merge, so the lock is held for nanoseconds and
//! never across an `.await`. Sharding keeps the two cores (HTTP and RPC tasks) from contending
//! on one lock.
//!
//! The store never decides *what* to keep: that is the version algebra's job
//! ([`crate::version`]). It only applies merges and coordinated writes atomically per key.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use serde::Serialize;

use crate::ring::key_hash;
use crate::version::{Actor, Context, VersionSet};

/// Number of independently locked shards. A power of two well above the core count, so that
/// two hot keys rarely share a lock.
pub const SHARDS: usize = 64;

type Shard = HashMap<Bytes, VersionSet>;

/// The versions this node stores, by key.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
}

/// Counts of what a store holds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct StoreStats {
    /// Keys with at least one version.
    pub keys: u64,
    /// Keys whose every version is a tombstone.
    pub tombstones: u64,
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
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let idx = (key_hash(key) as usize) % SHARDS;
        // Poisoning means a panic mid-merge; merges build the new set before swapping it in,
        // so the map itself is intact and serving on is the right call.
        self.shards[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the versions stored for `key`.
    pub fn get(&self, key: &[u8]) -> Option<VersionSet> {
        self.shard(key).get(key).cloned()
    }

    /// Merges `incoming` into the versions of `key`. Returns true if anything changed.
    pub fn merge(&self, key: &Bytes, incoming: &VersionSet) -> bool {
        if incoming.is_empty() {
            return false;
        }
        let mut shard = self.shard(key);
        match shard.get_mut(key) {
            Some(current) => current.merge(incoming),
            None => {
                shard.insert(key.clone(), incoming.clone());
                true
            }
        }
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
        let mut shard = self.shard(key);
        let set = shard.entry(key.clone()).or_default();
        let ctx = set.write(actor, context, value);
        (ctx, set.clone())
    }

    /// Counts keys and tombstones. Walks every shard; meant for stats, not hot paths.
    pub fn stats(&self) -> StoreStats {
        let mut stats = StoreStats::default();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            stats.keys += shard.len() as u64;
            stats.tombstones += shard.values().filter(|s| s.is_deleted()).count() as u64;
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

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
                tombstones: 0
            }
        );

        let (_, set) = a.write(&key, &actor("n1"), Some(&ctx), None);
        b.merge(&key, &set);
        assert_eq!(
            b.stats(),
            StoreStats {
                keys: 1,
                tombstones: 1
            }
        );
        assert!(b.get(b"other").is_none());
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
}
