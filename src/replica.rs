//! The replica side of a node: the copies it holds (its [`Store`] and the hints it keeps for
//! dead homes), and the RPCs that read and change them for peers.
//!
//! Every copy a peer sends counts toward its quorum only once it is logged, so with a data
//! dir the answers wait for the log ([`Replica::sync`], `--fsync`). A node that is stopping
//! refuses replica reads (`Replica::refuse_reads_if_stopping`) but keeps taking writes
//! until it exits.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::time::Instant;
use tracing::warn;

use crate::error::{Error, Result};
use crate::hints::HintStore;
use crate::lock;
use crate::memory::Need;
use crate::ring::NodeId;
use crate::rpc::{ANSWER_BUDGET, Response};
use crate::stats::Stats;
use crate::store::Record;
use crate::store::Store;
use crate::system::System;
use crate::version::VersionSet;

/// The copies this node holds, and the peers' view of them.
pub struct Replica {
    pub(crate) system: Arc<System>,
    pub(crate) store: Store,
    /// Copies kept for dead home replicas. A std mutex: every operation is a map update.
    pub(crate) hints: Mutex<HintStore>,
    /// Set when a graceful stop begins: replica reads are refused from then on.
    stopping: AtomicBool,
}

impl Replica {
    pub(crate) fn new(system: Arc<System>, store: Store, hints: HintStore) -> Replica {
        Replica {
            system,
            store,
            hints: Mutex::new(hints),
            stopping: AtomicBool::new(false),
        }
    }

    /// The local store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Hinted keys held for dead home replicas.
    pub fn hints_pending(&self) -> usize {
        lock(&self.hints).len()
    }

    /// What this node holds for `key`: its own copy merged with any hinted copy.
    pub(crate) fn local_read(&self, key: &Bytes) -> VersionSet {
        let mut vs = self.store.get(key).unwrap_or_default();
        if let Some(hinted) = lock(&self.hints).get(key) {
            vs.merge(&hinted);
        }
        vs
    }

    /// Keeps a copy for a dead home replica (this node is its fallback).
    pub(crate) fn store_hint(&self, home: NodeId, key: Bytes, versions: &VersionSet) -> Result<()> {
        let stats = &self.system.stats;
        let dead_for = self.system.view().dead_for(&home);
        let res = lock(&self.hints).add(&home, key, versions, dead_for, Instant::now());
        match res {
            Ok(()) => {
                Stats::incr(&stats.hints_stored);
                Ok(())
            }
            Err(why) => {
                Stats::incr(&stats.hints_dropped);
                warn!(home = %home, ?why, "hint refused");
                Err(Error::Rejected(format!("hint for {home}: {why:?}")))
            }
        }
    }

    /// Resolves once every change made so far is durable per `--fsync` (at once without a
    /// data dir). Fails if the log cannot be written: the change must not be acknowledged.
    pub async fn sync(&self) -> Result<()> {
        match self.store.log() {
            Some(log) => log.barrier().await,
            None => Ok(()),
        }
    }

    /// Streams the whole state (store, shard by shard, then hints) as log records.
    pub(crate) fn snapshot_into(&self, put: &mut dyn FnMut(&Record) -> Result<()>) -> Result<()> {
        for shard in 0..crate::store::SHARDS {
            self.store.snapshot_shard(shard, put)?;
        }
        let hints = lock(&self.hints).records();
        hints.iter().try_for_each(put)
    }

    /// Takes a snapshot of the data dir now, whatever the log's size (tests, and operators
    /// before a backup). Fails without a data dir.
    pub async fn snapshot_now(self: &Arc<Self>) -> Result<()> {
        let replica = self.clone();
        tokio::task::spawn_blocking(move || {
            let log = replica
                .store
                .log()
                .cloned()
                .and_then(crate::durable::Wal::of)
                .ok_or_else(|| Error::invalid("this node has no --data-dir"))?;
            log.snapshot(|put| replica.snapshot_into(put))
        })
        .await
        .map_err(|e| Error::Io(Arc::new(std::io::Error::other(e.to_string()))))?
    }

    /// From now on, refuse replica reads: this node is stopping.
    pub(crate) fn stop_serving_reads(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether [`Replica::stop_serving_reads`] was called.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Fails with [`Error::Shutdown`] while this node stops: the replica side of reads and
    /// listings calls it first. Peers that have not heard this node is stopping still ask it,
    /// but since it announced `stopping` the coordinators send its share of new writes to
    /// fallbacks, so its copy may be stale. Refused, the reader asks the next replica at once.
    /// Writes it still takes: it is up until it exits.
    fn refuse_reads_if_stopping(&self) -> Result<()> {
        if self.is_stopping() {
            return Err(Error::Shutdown);
        }
        Ok(())
    }

    /// Serves [`Request::Replicate`](crate::rpc::Request::Replicate): merges a coordinator's
    /// copy (or a read repair) into the store, or keeps it as a hint if this node stands in
    /// for the dead home `hint_for`. A copy counts toward W only once it is logged (with
    /// `--fsync always`, on disk), so the answer waits for the log.
    pub(crate) async fn serve_replicate(
        &self,
        key: Bytes,
        versions: VersionSet,
        hint_for: Option<String>,
    ) -> Result<Response> {
        let started = std::time::Instant::now();
        self.system.memory.admit(0, Need::of(&versions))?;
        match hint_for {
            Some(home) if *home != *self.system.id => {
                self.store_hint(NodeId::from(home), key, &versions)?;
            }
            _ => {
                self.store.merge_owned(&key, versions);
            }
        }
        self.sync().await?;
        let stages = &self.system.stats.stages;
        stages.record(crate::timings::Stage::ReplicaApply, started);
        Ok(Response::Replicated)
    }

    /// Serves `ReplicateMany` (hint delivery, handoff, anti-entropy): merges every copy, and
    /// answers once they are logged.
    pub(crate) async fn serve_replicate_many(
        &self,
        items: Vec<(Bytes, VersionSet)>,
    ) -> Result<Response> {
        let need = Need::of_all(items.iter().map(|(_, vs)| vs));
        self.system.memory.admit(0, need)?;
        for (key, versions) in items {
            self.store.merge_owned(&key, versions);
        }
        self.sync().await?;
        Ok(Response::Replicated)
    }

    /// Serves `Read`: this node's copy of the key, hinted copies included.
    pub(crate) fn serve_read(&self, key: Bytes) -> Result<Response> {
        self.refuse_reads_if_stopping()?;
        Ok(Response::Versions(self.local_read(&key)))
    }

    /// Serves `List`: this node's next keys under the prefix, in key order, with
    /// fingerprints instead of values.
    pub(crate) fn serve_list(
        &self,
        prefix: Bytes,
        after: Option<Bytes>,
        limit: u32,
    ) -> Result<Response> {
        self.refuse_reads_if_stopping()?;
        let limit = (limit as usize).clamp(1, crate::config::MAX_LIST_LIMIT);
        Ok(Response::Listed(self.store.list(
            &prefix,
            after.as_deref(),
            limit,
        )))
    }

    /// Serves `ReadMany`: our versions of these keys, in order, up to the transfer budget
    /// (at least one key).
    pub(crate) fn serve_read_many(&self, keys: Vec<Bytes>) -> Result<Response> {
        let budget = self.transfer_budget();
        let mut out = Vec::new();
        let mut bytes = 0;
        for key in &keys {
            let vs = self.store.get(key).unwrap_or_default();
            let size = set_size(key, &vs);
            if !out.is_empty() && bytes + size > budget {
                break;
            }
            bytes += size;
            out.push(vs);
        }
        Ok(Response::VersionsMany(out))
    }

    /// Serves `Fingerprints`: the fingerprint of each key, 0 if absent.
    pub(crate) fn serve_fingerprints(&self, keys: Vec<Bytes>) -> Result<Response> {
        Ok(Response::Fingerprints(
            keys.iter()
                .map(|k| self.store.get(k).map_or(0, |vs| vs.fingerprint(k)))
                .collect(),
        ))
    }

    /// Serves `Purge`: drops each of these tombstones still held with that fingerprint.
    pub(crate) fn serve_purge(&self, items: Vec<(Bytes, u64)>) -> Result<Response> {
        let purged = items
            .iter()
            .filter(|(key, fp)| self.store.remove_if(key, *fp))
            .count();
        Stats::add(&self.system.stats.tombstones_purged, purged as u64);
        Ok(Response::Replicated)
    }

    /// Most bytes of keys and values one transfer message carries: the answer budget, but
    /// never more than one maximum value, so any batch fits the frame limit (a value plus
    /// 128 KiB). A single item is always sent, alone if need be.
    pub(crate) fn transfer_budget(&self) -> usize {
        ANSWER_BUDGET.min(self.system.config.max_value_bytes)
    }
}

/// The longest prefix of `items` within `budget` bytes, at least one item.
pub(crate) fn fit<T>(items: &[T], budget: usize, size: impl Fn(&T) -> usize) -> usize {
    let mut total = 0;
    items
        .iter()
        .position(|item| {
            total += size(item);
            total > budget
        })
        .map_or(items.len(), |i| i.max(1))
}

/// Roughly what a key and its versions take in a transfer message.
pub(crate) fn set_size(key: &[u8], vs: &VersionSet) -> usize {
    key.len()
        + vs.versions()
            .iter()
            .map(|v| 64 + v.value.as_ref().map_or(0, |b| b.len()))
            .sum::<usize>()
}
