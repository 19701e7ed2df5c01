//! Time to live: expiry by the node's wall clock, and the sweep that frees expired values.
//!
//! A PUT with `?ttl=S` stores an absolute expiry, `now + S` by the clock of the node that
//! received the PUT ([`crate::version::Meta::expires_at`]). Every read filters by the clock of
//! the node answering it, so an expired value is a 404 through every node at once, without
//! waiting for a sweep. The sweep (every
//! [`crate::config::DEFAULT_TTL_SWEEP_INTERVAL`]) then drops the value on each replica, keeping its
//! dot and history as a tombstone so that the write still supersedes what it overwrote; the
//! tombstone is purged after the grace period like any other.
//!
//! "The clock" is always the node's [`crate::clock::Clock`]: the system clock, unless a test
//! skews it or moves it past an expiry instead of sleeping until it.
//!
//! **Clock skew.** Expiry is absolute wall-clock time, so nodes whose clocks differ by `d`
//! disagree about the moment a value expires by `d`: for that long, a read through one node
//! may return the value while a read through another returns 404. ringkv assumes NTP-level
//! synchronisation (milliseconds); skew never resurrects a value or loses a write, it only
//! moves the moment of expiry as seen through each node. A TTL much shorter than the skew
//! between nodes is not meaningful.
//!
//! **Giving memory back.** Once a node's store has shrunk by 16 MiB (`TRIM_AFTER_FREED`) or
//! more and stopped shrinking, the sweep asks glibc to return the free heap to the OS
//! ([`crate::heap::release_free_memory`], `malloc_trim`). Measured on `ringkv dev --tombstone-grace-secs 10`
//! (on the development machine, a 2-core VM): 100,000 keys written with `ttl=15` (300,000
//! copies) took RSS from 28 MB to 157 MB, and back to 59 MB within 50 s of their expiry, once
//! their tombstones were purged. Without the trim a process keeps its peak RSS.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::replica::Replica;
use crate::stats::Stats;
use crate::watch::{Event, Op, Watches};

/// Keys the sweep handles under one shard lock before it lets writers in.
const SWEEP_BATCH: usize = 4096;

/// How much the store must have shrunk since the last trim before the allocator is asked to
/// give free memory back to the OS ([`crate::heap::release_free_memory`]): trimming walks the whole heap,
/// so it is worth it only after a large drop.
const TRIM_AFTER_FREED: u64 = 16 * 1024 * 1024;

/// Sweep ticks without the store shrinking before a trim: longer than the pause between two
/// tombstone-purge passes, so a trim comes after a purge, not in the middle of it.
const TRIM_WHEN_STEADY_TICKS: u32 = 20;

/// Rough memory of one stored key beyond its key and value bytes (versions, index entries),
/// for estimating how much a drop in keys freed.
const BOOKKEEPING_PER_KEY: u64 = 300;

/// Sweeps expired values every `interval` until `shutdown`, and hands memory back to the OS
/// once the store shrank by [`TRIM_AFTER_FREED`] and stopped shrinking (after a sweep, a
/// tombstone purge, a handoff).
pub(crate) async fn run(replica: Arc<Replica>, watches: Arc<Watches>, shutdown: CancellationToken) {
    let system = &replica.system;
    let mut tick = tokio::time::interval(system.config.ttl_sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut peak, mut last, mut steady) = (0u64, 0u64, 0u32);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        sweep_expired(&replica, &watches);
        let stats = replica.store.stats();
        let size = stats.bytes + stats.keys * BOOKKEEPING_PER_KEY;
        peak = peak.max(size);
        // Trim once the store stopped shrinking for a while (a purge runs in passes for
        // minutes; trimming midway frees little, the pages still holding survivors).
        steady = if size < last {
            0
        } else {
            steady.saturating_add(1)
        };
        last = size;
        // Not under simulated time: the trim runs on a thread of its own, outside the
        // simulator's control.
        if peak - size >= TRIM_AFTER_FREED
            && steady >= TRIM_WHEN_STEADY_TICKS
            && !system.config.clock.is_simulated()
        {
            tracing::debug!(id = %system.id, shrunk = peak - size, "store shrank: trimming the heap");
            peak = size;
            system
                .tracker
                .spawn_blocking(crate::heap::release_free_memory);
        }
    }
}

/// Drops every value expired by now (by the node's clock), and announces each key whose last
/// live value expired, if this node is the key's first live home (one announcement per key
/// while views agree). Returns the number of values dropped.
pub fn sweep_expired(replica: &Replica, watches: &Arc<Watches>) -> usize {
    let system = &replica.system;
    let now = system.clock().now_ms();
    let mut total = 0;
    loop {
        let report = replica.store.expire_due(now, SWEEP_BATCH);
        total += report.processed;
        Stats::add(&system.stats.ttl_values_expired, report.processed as u64);
        Stats::add(&system.stats.ttl_bytes_freed, report.freed);
        if !report.expired.is_empty() {
            let view = system.view();
            for (key, versions) in report.expired {
                let first = view
                    .ring
                    .preference_list(&key, system.config.replicas)
                    .into_iter()
                    .find(|id| *id == system.id || view.is_alive(id));
                if first.as_ref() == Some(&system.id) {
                    watches.emit_with(&key, || Event {
                        op: Op::Expire,
                        key: key.clone(),
                        value: None,
                        context: versions.context().encode(),
                    });
                }
            }
        }
        if report.processed < SWEEP_BATCH {
            return total;
        }
    }
}

#[cfg(test)]
mod tests {}
