//! The checker: the history against the final state of the healed, quiet ring.
//!
//! - **Convergence**: every key's home replicas hold identical versions (equal
//!   fingerprints, so equal Merkle leaves and roots), and no node holds a hint.
//! - **No phantom values**: every value read, listed or left is one a client wrote.
//! - **No lost acknowledged write**: an acknowledged value is in the final state unless an
//!   applied write (acknowledged, seen by a read or in the final state, or a delete that may
//!   have been applied)
//!   may have superseded it: one whose
//!   context covered it, directly or through other applied writes, or a blind write that
//!   was still running after it started (its coordinator may have held it). With a node
//!   restarted empty, writes acknowledged by W = 1 are exempt: their one copy may have died
//!   with it.
//! - **No resurrection**: no value a delete acknowledged by all N replicas covered is in the
//!   final state, through tombstone GC.
//! - **Bounded siblings**: siblings are only concurrent writes: no value shows (in a read
//!   or the final state) beside one whose write's context covered it, and none shows twice.
//! - **Expired stays expired**: no TTL value is live at any replica, by its own (skewed)
//!   clock, once its expiry plus the largest skew has passed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use ringkv::Node;
use ringkv::version::VersionSet;

use super::workload::{History, TTL_SECS, Write};
use super::{MAX_SKEW_MS, Nodes};

/// Ok if every key's home replicas agree and no hints are pending; else what differs.
pub fn converged(nodes: &BTreeMap<String, Arc<Node>>) -> Result<(), String> {
    for (name, node) in nodes {
        let hints = node.replica().hints_pending();
        if hints > 0 {
            return Err(format!("{name} still holds {hints} hints"));
        }
    }
    let Some(ring) = nodes
        .values()
        .next()
        .map(|n| n.cluster().view().ring.clone())
    else {
        return Err("no node started".into());
    };
    if ring.nodes().len() < super::NODES {
        return Err(format!("the ring has {} nodes", ring.nodes().len()));
    }
    let mut keys = BTreeSet::new();
    for node in nodes.values() {
        for e in node.store().list(b"", None, usize::MAX).entries {
            keys.insert(e.key);
        }
    }
    for key in keys {
        let homes = ring.preference_list(&key, 3);
        let prints: BTreeSet<u64> = homes
            .iter()
            .map(|h| {
                nodes
                    .get(&**h)
                    .and_then(|n| n.store().get(&key))
                    .map_or(0, |vs| vs.fingerprint(&key))
            })
            .collect();
        if prints.len() > 1 {
            return Err(format!(
                "the homes of {} disagree",
                String::from_utf8_lossy(&key)
            ));
        }
    }
    Ok(())
}

/// Everything the history and the final state break.
pub fn check(
    history: &History,
    nodes: &Nodes,
    now_ms: u64,
    skews: &[i64],
    killed: bool,
) -> Vec<String> {
    let nodes = nodes.borrow();
    let mut out = history.anomalies.clone();
    let written: BTreeSet<&str> = history.writes.iter().map(|w| w.id.as_str()).collect();
    let by_key = final_state(&nodes);
    let final_values = |key: &str| -> Vec<String> {
        by_key
            .get(key)
            .map(|vs| {
                vs.versions()
                    .iter()
                    .filter_map(|v| v.value.as_ref())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };

    // Phantoms.
    for v in &history.observed {
        if !written.contains(v.as_str()) {
            out.push(format!("phantom value {v:?} was read"));
        }
    }
    for key in by_key.keys() {
        for v in final_values(key) {
            if !written.contains(v.as_str()) {
                out.push(format!(
                    "phantom value {v:?} is in the final state of {key}"
                ));
            }
        }
    }
    let keys_written: BTreeSet<&str> = history.writes.iter().map(|w| w.key.as_str()).collect();
    for k in &history.listed {
        if !keys_written.contains(k.as_str()) {
            out.push(format!("phantom key {k:?} was listed"));
        }
    }

    // Lost acknowledged writes.
    // A delete leaves no value a read could observe, so one whose outcome is unknown may
    // have been applied.
    let left: BTreeSet<String> = by_key.keys().flat_map(|k| final_values(k)).collect();
    let applied = |w: &Write| {
        w.acked()
            || history.observed.contains(&w.id)
            || left.contains(&w.id)
            || (w.delete && w.outcome == super::workload::Outcome::Unknown)
    };
    for w in history
        .writes
        .iter()
        .filter(|w| w.acked() && !w.delete && !w.ttl)
    {
        if killed && w.w == 1 {
            continue;
        }
        if final_values(&w.key).contains(&w.id) {
            continue;
        }
        let superseded = history.writes.iter().any(|x| {
            x.key == w.key
                && x.id != w.id
                && applied(x)
                && (covers(history, x, &w.id)
                    || (x.blind && x.completed.is_none_or(|c| c > w.invoked)))
        });
        if !superseded {
            out.push(format!(
                "lost acknowledged write {} on {} (W={}, acked at {:?}); final: {:?}",
                w.id,
                w.key,
                w.w,
                w.completed.unwrap_or_default(),
                final_values(&w.key)
            ));
        }
    }

    // Resurrection.
    for d in history
        .writes
        .iter()
        .filter(|d| d.delete && d.acked() && d.w == 3)
    {
        for v in final_values(&d.key) {
            if d.covers.contains(&v) {
                out.push(format!(
                    "{v} on {} came back after {} deleted it at all replicas",
                    d.key, d.id
                ));
            }
        }
    }

    // Siblings: only concurrent writes. No value shows beside one whose write's context
    // covered it, in a read or in the final state, and none shows twice; so siblings never
    // outnumber the writes that were concurrent.
    let finals = by_key.keys().map(|k| (k.clone(), final_values(k)));
    for (key, values) in history.reads.iter().cloned().chain(finals) {
        let distinct: BTreeSet<&String> = values.iter().collect();
        if distinct.len() < values.len() {
            out.push(format!("{key} showed one value twice: {values:?}"));
        }
        for a in &values {
            let Some(wa) = history.writes.iter().find(|w| w.id == *a) else {
                continue;
            };
            if let Some(b) = values.iter().find(|b| *b != a && covers(history, wa, b)) {
                out.push(format!(
                    "{key} showed {a} beside {b}, which {a}'s context covered: {values:?}"
                ));
            }
        }
    }

    // Expiry.
    let expired_by = now_ms.saturating_sub(TTL_SECS * 1000 + 2 * MAX_SKEW_MS as u64);
    for w in history.writes.iter().filter(|w| w.ttl) {
        let written_at = super::EPOCH_SECS * 1000 + w.invoked.as_millis() as u64;
        if written_at + 1_000 > expired_by {
            continue; // not surely expired yet
        }
        for (i, node) in nodes.values().enumerate() {
            let local_now = now_ms.saturating_add_signed(skews[i]);
            if let Some(vs) = node.store().get(&Bytes::from(w.key.clone()))
                && vs
                    .live(local_now)
                    .any(|v| v.value.as_deref() == Some(w.id.as_bytes()))
            {
                out.push(format!(
                    "{} on {} is live at {} after its TTL ran out",
                    w.id,
                    w.key,
                    super::node_name(i)
                ));
            }
        }
    }
    out
}

/// Whether `x`'s context covers `id`: its client read `id`, or read a value whose write
/// covered it, and so on.
fn covers(history: &History, x: &Write, id: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = x.covers.iter().map(String::as_str).collect();
    while let Some(v) = todo.pop() {
        if v == id {
            return true;
        }
        if !seen.insert(v) {
            continue;
        }
        if let Some(w) = history.writes.iter().find(|w| w.id == v) {
            todo.extend(w.covers.iter().map(String::as_str));
        }
    }
    false
}

/// Each key's versions at its first home: after convergence every home holds the same.
fn final_state(nodes: &BTreeMap<String, Arc<Node>>) -> BTreeMap<String, VersionSet> {
    let mut out = BTreeMap::new();
    let Some(ring) = nodes
        .values()
        .next()
        .map(|n| n.cluster().view().ring.clone())
    else {
        return out;
    };
    let mut keys = BTreeSet::new();
    for node in nodes.values() {
        for e in node.store().list(b"", None, usize::MAX).entries {
            keys.insert(e.key);
        }
    }
    for key in keys {
        let home = ring.preference_list(&key, 3).into_iter().next();
        if let Some(vs) = home
            .and_then(|h| nodes.get(&*h))
            .and_then(|n| n.store().get(&key))
        {
            out.insert(String::from_utf8_lossy(&key).into_owned(), vs);
        }
    }
    out
}
