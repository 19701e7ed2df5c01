//! The store's log seam: the change records a node's store and hints append, and the trait
//! the data dir's write-ahead log ([`crate::durable`]) and the simulator's disk implement.
//! Pure: the store and the hints depend on this, never on the files.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::version::VersionSet;

/// One logged change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A key's versions after a change; empty when the key is gone.
    Key { key: Bytes, versions: VersionSet },
    /// A hinted copy held for `home`; empty when it is gone.
    Hint {
        home: String,
        key: Bytes,
        versions: VersionSet,
    },
}

/// Counters of the log, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct WalStats {
    pub records: AtomicU64,
    pub bytes_written: AtomicU64,
    pub fsyncs: AtomicU64,
    pub write_errors: AtomicU64,
    pub snapshots: AtomicU64,
    /// Bytes in log segments since the last snapshot began.
    pub log_bytes_since_snapshot: AtomicU64,
    /// Files (or tails of files) recovery set aside as damaged.
    pub corrupt_files: AtomicU64,
    /// The longest a snapshot held one shard's lock (writes to that shard wait that long).
    pub snapshot_max_lock_us: AtomicU64,
}

/// Where a node's store and hints log their changes: the write-ahead log of a data dir
/// ([`crate::durable::Wal`]), or the deterministic simulator's disk (`tests/sim`), which has no files and no
/// threads.
pub trait Log: std::fmt::Debug + Send + Sync + 'static {
    /// Appends `record`. Called under the key's shard lock, so a key's records keep the order
    /// of its changes; cheap.
    fn append(&self, record: &Record);
    /// Resolves once everything appended before the call is durable. Fails if the log could
    /// not be written: the caller must not acknowledge.
    fn barrier(&self) -> futures_util::future::BoxFuture<'_, Result<()>>;
    /// Why the log cannot be written right now, if it cannot (a full disk).
    fn error(&self) -> Option<String>;
    /// The log's counters, for `/metrics`.
    fn stats(&self) -> &WalStats;
    /// The log as `Any`, so that the data dir's log can be recognised
    /// ([`crate::durable::Wal::of`]): snapshots and the orderly close need its files.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// A disk other than a data dir, for the simulator: what a node finds at start, and where it
/// logs from then on ([`crate::Config::disk`]).
pub trait Disk: std::fmt::Debug + Send + Sync + 'static {
    /// Every record a restart finds, oldest first: what was durable when the node stopped.
    fn recover(&self) -> Vec<Record>;
    /// The log of this start.
    fn open(&self) -> Arc<dyn Log>;
}

/// Replays `records` into a map the way recovery applies them to a store (for tests and
/// tools): the last state of each key wins; an empty one removes it.
pub fn replay_into(map: &mut HashMap<Bytes, VersionSet>, record: Record) {
    if let Record::Key { key, versions } = record {
        if versions.is_empty() {
            map.remove(&key);
        } else {
            map.insert(key, versions);
        }
    }
}
