//! Hints: the copies a fallback node keeps for a home replica that is down.
//!
//! Under a sloppy quorum (Dynamo §4.6) a write whose home replica is dead goes to the next
//! live node clockwise instead, with a hint naming the home. That node keeps the copy here,
//! apart from its own data, and hands it to the home when gossip shows the home alive again;
//! the hint is dropped once the home acknowledges it.
//!
//! The store is bounded, as Cassandra's is:
//! - in count and bytes ([`HintLimits::max_hints`], [`HintLimits::max_bytes`]): past a bound
//!   a new hint is refused, and the write counts that replica as failed;
//! - by a hint *window* ([`HintLimits::window`], Cassandra's `max_hint_window`): no new hints
//!   for a node that has been dead longer, since it is more likely gone for good and
//!   anti-entropy will have to rebuild it anyway;
//! - by age ([`HintLimits::ttl`]): a hint older than the tombstone grace period is dropped,
//!   so a hint can never carry a value back after its tombstone was purged.
//!
//! Whatever is refused or dropped is counted by the caller and left to anti-entropy.
//!
//! This module is pure: time is passed in, as tokio's `Instant` so that a paused test runtime
//! ages hints like the rest of the node ([`crate::clock`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::ring::NodeId;
use crate::store::{Log, Record};
use crate::version::VersionSet;

/// Bounds of a node's hint store.
#[derive(Debug, Clone, Copy)]
pub struct HintLimits {
    /// Most hinted keys held, over all targets.
    pub max_hints: usize,
    /// Most bytes held (keys, values and a fixed per-version overhead).
    pub max_bytes: usize,
    /// No new hints for a node dead for longer than this.
    pub window: Duration,
    /// Hints older than this are dropped. Must not exceed the tombstone grace period.
    pub ttl: Duration,
}

/// Default cap on hinted keys.
pub const DEFAULT_MAX_HINTS: usize = 100_000;
/// Default cap on hint bytes: 256 MiB.
pub const DEFAULT_MAX_HINT_BYTES: usize = 256 * 1024 * 1024;
/// Default hint window: 3 hours, Cassandra's `max_hint_window` default.
pub const DEFAULT_HINT_WINDOW: Duration = Duration::from_secs(3 * 3600);

/// Bytes charged per version on top of its key and value, for the clock and bookkeeping.
const VERSION_OVERHEAD: usize = 64;

/// Why a hint was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintRejected {
    /// The count or byte bound is reached.
    Full,
    /// The target has been dead for longer than the hint window.
    WindowExpired,
}

#[derive(Debug)]
struct Hint {
    versions: VersionSet,
    /// When the oldest write in this hint arrived; merged hints keep the oldest time, so
    /// the age bound errs on the side of dropping early.
    created: Instant,
    bytes: usize,
}

/// Hinted copies, by target node, then by key. Ordered maps: hints go out in an order that
/// depends only on what was hinted, so one simulation seed replays one run.
#[derive(Debug)]
pub struct HintStore {
    limits: HintLimits,
    targets: BTreeMap<NodeId, BTreeMap<Bytes, Hint>>,
    count: usize,
    bytes: usize,
    /// Where every change is logged when the node has a data dir ([`crate::durable`]).
    log: Option<Arc<dyn Log>>,
}

fn size_of(key: &[u8], versions: &VersionSet) -> usize {
    key.len()
        + versions
            .versions()
            .iter()
            .map(|v| VERSION_OVERHEAD + v.value.as_ref().map_or(0, |b| b.len()))
            .sum::<usize>()
}

impl HintStore {
    /// An empty store with these bounds.
    pub fn new(limits: HintLimits) -> HintStore {
        HintStore {
            limits,
            targets: BTreeMap::new(),
            count: 0,
            bytes: 0,
            log: None,
        }
    }

    /// An empty store that logs every change to `log`.
    pub fn with_log(limits: HintLimits, log: Option<Arc<dyn Log>>) -> HintStore {
        HintStore {
            log,
            ..HintStore::new(limits)
        }
    }

    /// Attaches the log, after recovery filled the store.
    pub fn set_log(&mut self, log: Arc<dyn Log>) {
        self.log = Some(log);
    }

    fn logged(&self, target: &NodeId, key: &Bytes, versions: VersionSet) {
        if let Some(log) = &self.log {
            log.append(&Record::Hint {
                home: target.to_string(),
                key: key.clone(),
                versions,
            });
        }
    }

    /// Puts back a hint recovery read from the log (not logged again; limits still apply).
    pub fn restore(&mut self, target: &NodeId, key: Bytes, versions: VersionSet, now: Instant) {
        if let Some(h) = self.targets.get_mut(target).and_then(|m| m.remove(&key)) {
            self.count -= 1;
            self.bytes -= h.bytes;
        }
        if !versions.is_empty() {
            let log = self.log.take();
            let _ = self.add(target, key, &versions, None, now);
            self.log = log;
        }
    }

    /// Every hint, for a snapshot.
    pub fn records(&self) -> Vec<Record> {
        self.targets
            .iter()
            .flat_map(|(target, m)| {
                m.iter().map(move |(key, h)| Record::Hint {
                    home: target.to_string(),
                    key: key.clone(),
                    versions: h.versions.clone(),
                })
            })
            .collect()
    }

    /// Keeps `versions` of `key` for `target`, merged with any hint already held.
    /// `target_dead_for` is how long this node has seen the target dead, if it has.
    pub fn add(
        &mut self,
        target: &NodeId,
        key: Bytes,
        versions: &VersionSet,
        target_dead_for: Option<Duration>,
        now: Instant,
    ) -> Result<(), HintRejected> {
        if target_dead_for.is_some_and(|d| d > self.limits.window) {
            return Err(HintRejected::WindowExpired);
        }
        let existing = self.targets.get(target).and_then(|m| m.get(&key));
        let old_bytes = existing.map_or(0, |h| h.bytes);
        let mut merged = existing.map(|h| h.versions.clone()).unwrap_or_default();
        merged.merge(versions);
        let new_bytes = size_of(&key, &merged);
        let new_count = self.count + existing.is_none() as usize;
        if new_count > self.limits.max_hints
            || self.bytes - old_bytes + new_bytes > self.limits.max_bytes
        {
            return Err(HintRejected::Full);
        }
        let created = existing.map_or(now, |h| h.created);
        self.count = new_count;
        self.bytes = self.bytes - old_bytes + new_bytes;
        if self.log.is_some() {
            self.logged(target, &key, merged.clone());
        }
        self.targets.entry(target.clone()).or_default().insert(
            key,
            Hint {
                versions: merged,
                created,
                bytes: new_bytes,
            },
        );
        Ok(())
    }

    /// Up to `max` hints for `target`, to deliver.
    pub fn batch(&self, target: &NodeId, max: usize) -> Vec<(Bytes, VersionSet)> {
        self.targets.get(target).map_or_else(Vec::new, |m| {
            m.iter()
                .take(max)
                .map(|(k, h)| (k.clone(), h.versions.clone()))
                .collect()
        })
    }

    /// The target acknowledged `sent` for `key`: drop the hint unless it changed meanwhile
    /// (a newer write arrived after the batch was taken; it will go in the next one).
    pub fn delivered(&mut self, target: &NodeId, key: &Bytes, sent: &VersionSet) -> bool {
        let Some(m) = self.targets.get_mut(target) else {
            return false;
        };
        if m.get(key).is_none_or(|h| &h.versions != sent) {
            return false;
        }
        if let Some(h) = m.remove(key) {
            self.count -= 1;
            self.bytes -= h.bytes;
        }
        if m.is_empty() {
            self.targets.remove(target);
        }
        self.logged(target, key, VersionSet::new());
        true
    }

    /// Every version of `key` held for any target, merged (for reads that reach a fallback).
    pub fn get(&self, key: &[u8]) -> Option<VersionSet> {
        let mut out: Option<VersionSet> = None;
        for m in self.targets.values() {
            if let Some(h) = m.get(key) {
                out.get_or_insert_with(VersionSet::new).merge(&h.versions);
            }
        }
        out
    }

    /// Drops hints older than the TTL; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.limits.ttl;
        let mut dropped = 0;
        let (mut count, mut bytes) = (self.count, self.bytes);
        let mut gone = Vec::new();
        let logging = self.log.is_some();
        self.targets.retain(|target, m| {
            m.retain(|key, h| {
                let keep = now.saturating_duration_since(h.created) <= ttl;
                if !keep {
                    dropped += 1;
                    count -= 1;
                    bytes -= h.bytes;
                    if logging {
                        gone.push((target.clone(), key.clone()));
                    }
                }
                keep
            });
            !m.is_empty()
        });
        self.count = count;
        self.bytes = bytes;
        for (target, key) in gone {
            self.logged(&target, &key, VersionSet::new());
        }
        dropped
    }

    /// Targets with pending hints.
    pub fn targets(&self) -> Vec<NodeId> {
        self.targets.keys().cloned().collect()
    }

    /// Hinted keys held, over all targets.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if no hint is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::version::Actor;

    fn limits() -> HintLimits {
        HintLimits {
            max_hints: 3,
            max_bytes: 10_000,
            window: Duration::from_secs(60),
            ttl: Duration::from_secs(600),
        }
    }

    fn write(value: &str) -> VersionSet {
        let mut vs = VersionSet::new();
        vs.write(
            &Actor::new(Arc::<str>::from("n1"), 1),
            None,
            Some(Bytes::from(value.to_string())),
        );
        vs
    }

    fn id(s: &str) -> NodeId {
        NodeId::from(s)
    }

    #[test]
    fn add_deliver_and_account() {
        let now = Instant::now();
        let mut h = HintStore::new(limits());
        let v = write("x");
        h.add(&id("b"), Bytes::from("k"), &v, None, now).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h.bytes(), 1 + 64 + 1);
        assert_eq!(h.get(b"k"), Some(v.clone()));
        assert_eq!(h.targets(), vec![id("b")]);
        let batch = h.batch(&id("b"), 10);
        assert_eq!(batch.len(), 1);
        assert!(h.delivered(&id("b"), &batch[0].0, &batch[0].1));
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
        assert!(h.targets().is_empty());
    }

    #[test]
    fn a_hint_changed_after_its_batch_is_kept() {
        let now = Instant::now();
        let mut h = HintStore::new(limits());
        let key = Bytes::from("k");
        h.add(&id("b"), key.clone(), &write("one"), None, now)
            .unwrap();
        let batch = h.batch(&id("b"), 10);
        // A concurrent write for the same key arrives before the ack.
        let mut newer = write("one");
        newer.write(
            &Actor::new(Arc::<str>::from("n1"), 1),
            None,
            Some(Bytes::from("two")),
        );
        h.add(&id("b"), key.clone(), &newer, None, now).unwrap();
        assert!(!h.delivered(&id("b"), &key, &batch[0].1));
        assert_eq!(h.len(), 1, "the newer write is still to deliver");
        assert_eq!(h.get(&key), Some(newer));
    }

    #[test]
    fn bounds_are_enforced() {
        let now = Instant::now();
        let mut h = HintStore::new(limits());
        for k in ["a", "b", "c"] {
            h.add(&id("t"), Bytes::from(k), &write("v"), None, now)
                .unwrap();
        }
        assert_eq!(
            h.add(&id("t"), Bytes::from("d"), &write("v"), None, now),
            Err(HintRejected::Full)
        );
        // Updating an existing hint does not count as a new one.
        h.add(&id("t"), Bytes::from("a"), &write("w"), None, now)
            .unwrap();
        assert_eq!(h.len(), 3);

        let mut small = HintStore::new(HintLimits {
            max_bytes: 100,
            ..limits()
        });
        small
            .add(
                &id("t"),
                Bytes::from("a"),
                &write(&"x".repeat(30)),
                None,
                now,
            )
            .unwrap();
        assert_eq!(
            small.add(
                &id("t"),
                Bytes::from("b"),
                &write(&"x".repeat(30)),
                None,
                now
            ),
            Err(HintRejected::Full)
        );
    }

    #[test]
    fn the_window_stops_hints_for_long_dead_nodes() {
        let now = Instant::now();
        let mut h = HintStore::new(limits());
        let v = write("v");
        h.add(
            &id("t"),
            Bytes::from("a"),
            &v,
            Some(Duration::from_secs(59)),
            now,
        )
        .unwrap();
        assert_eq!(
            h.add(
                &id("t"),
                Bytes::from("b"),
                &v,
                Some(Duration::from_secs(61)),
                now
            ),
            Err(HintRejected::WindowExpired)
        );
    }

    #[test]
    fn hints_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut h = HintStore::new(limits());
        h.add(&id("t"), Bytes::from("old"), &write("v"), None, t0)
            .unwrap();
        let t1 = t0 + Duration::from_secs(300);
        h.add(&id("u"), Bytes::from("new"), &write("v"), None, t1)
            .unwrap();
        // Merging into the old hint keeps its age.
        h.add(&id("t"), Bytes::from("old"), &write("w"), None, t1)
            .unwrap();
        assert_eq!(h.expire(t0 + Duration::from_secs(601)), 1);
        assert_eq!(h.len(), 1);
        assert!(h.get(b"old").is_none());
        assert!(h.get(b"new").is_some());
        assert_eq!(h.bytes(), 3 + 64 + 1);
    }

    #[test]
    fn reads_merge_hints_for_every_target() {
        let now = Instant::now();
        let mut h = HintStore::new(limits());
        let a = write("a");
        let mut b = VersionSet::new();
        b.write(
            &Actor::new(Arc::<str>::from("n2"), 1),
            None,
            Some(Bytes::from("b")),
        );
        h.add(&id("t1"), Bytes::from("k"), &a, None, now).unwrap();
        h.add(&id("t2"), Bytes::from("k"), &b, None, now).unwrap();
        assert_eq!(h.get(b"k").unwrap().len(), 2);
        assert!(h.get(b"other").is_none());
    }
}
