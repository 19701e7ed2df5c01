//! The checker: the history against the final state of the healed, quiet ring. It judges
//! the simulator's runs and `tests/fault.rs`'s runs on the real stack alike.
//!
//! - **Convergence**: every key's home replicas hold identical versions (equal
//!   fingerprints, so equal Merkle leaves and roots), and no node holds a hint.
//! - **No phantom values**: every value read, listed or left is one a client wrote.
//! - **No lost acknowledged write**, judged by dots: a 2xx write
//!   returns its new version's context, whose counters past those of the context sent name
//!   the write's dot. A version is superseded exactly when a later version's history holds
//!   its dot, and histories are causally closed, so an acknowledged write is kept iff a final
//!   version (value or tombstone) is it or holds its dot, or a delete that may have been
//!   applied was sent with a context holding it (its tombstone may have been purged by GC
//!   since, with the evidence). Blind writes are judged exactly:
//!   what a blind write superseded at its coordinator is in its history. With a node
//!   restarted empty, writes acknowledged by W = 1 are exempt: their one copy may have died
//!   with it (a run kills at most one node).
//! - **No resurrection**: no live final version has a dot that an acknowledged delete's
//!   history holds, after the tombstones' grace ran out and GC purged them.
//! - **Bounded siblings**: siblings are only concurrent writes: no value shows (in a read
//!   or the final state) beside one whose write's context covered it, and none shows twice.
//! - **Fresh strict reads**: a read at `pr = r` invoked after a write acknowledged at
//!   `pw = w` (r + w > N) completed returns that write or a successor (its context holds the
//!   write's dot), unless a kill or a delete of the key came between them or the key's
//!   homes moved (a placement change is a documented caveat). Every third
//!   operation of the workload is strict. Sloppy reads and writes are not judged this way
//!   (a fallback's acknowledgement or empty reply may stand in for a home's).
//! - **Homes first**: a write acknowledged while its coordinator saw W of the key's homes
//!   up is held by W homes at that moment, judged for writes no fault touched.
//! - **Expired stays expired**: no TTL value is live at any replica, by its own (skewed)
//!   clock, once its expiry plus the largest skew has passed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use ringkv::Node;
use ringkv::version::{Context, Dot, VersionSet};

use super::MAX_SKEW_MS;
use super::workload::{History, Outcome, TTL_SECS, Write};

/// `vs` without the versions expired by any node's clock at `now_ms`.
fn unexpired(vs: &VersionSet, now_ms: u64) -> VersionSet {
    let horizon = now_ms + MAX_SKEW_MS as u64;
    VersionSet::from_versions(
        vs.versions()
            .iter()
            .filter(|v| v.expires_at().is_none_or(|e| e > horizon))
            .cloned()
            .collect(),
    )
}

/// Each key's versions, as its first home holds them.
pub type State = BTreeMap<String, VersionSet>;

/// Ok if every key's home replicas agree, only homes hold keys, and no hints are pending;
/// else what differs.
///
/// Versions whose TTL ran out by some node's clock (`now_ms` plus the largest skew) are left
/// out: each replica sweeps them by its own clock, so for a moment one may hold one that
/// another dropped, and neither serves it.
pub fn converged(nodes: &BTreeMap<String, Arc<Node>>, now_ms: u64) -> Result<(), String> {
    for (name, node) in nodes {
        let hints = node.replica().hints_pending();
        if hints > 0 {
            return Err(format!("{name} still holds {hints} hints"));
        }
    }
    let Some(ring) = nodes
        .values()
        .next()
        .map(|n| n.system().view().ring.clone())
    else {
        return Err("no node started".into());
    };
    if ring.nodes().len() < super::NODES {
        return Err(format!("the ring has {} nodes", ring.nodes().len()));
    }
    let mut keys = BTreeSet::new();
    for (name, node) in nodes {
        for e in node.store().list(b"", None, usize::MAX).entries {
            // A node that is not one of the key's homes still holds it: its handoff (of a
            // write it took while its view of the ring was only itself, say) has not run.
            if !ring
                .preference_list(&e.key, 3)
                .iter()
                .any(|h| **h == **name)
            {
                return Err(format!(
                    "{name} still holds {}, which it does not own",
                    String::from_utf8_lossy(&e.key)
                ));
            }
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
                    .map_or(0, |vs| unexpired(&vs, now_ms).fingerprint(&key))
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

/// What the history is judged against: the healed, quiet ring.
pub struct Ending<'a> {
    /// Each key's versions once the homes converged ([`final_state`]).
    pub by_key: &'a State,
    /// The same after tombstone GC ran (`by_key` again where it did not run).
    pub after_gc: &'a State,
    pub nodes: &'a BTreeMap<String, Arc<Node>>,
    /// The time of the end, ms since the Unix epoch.
    pub now_ms: u64,
    /// Each node's clock skew, ms, in the order of `nodes`.
    pub skews: &'a [i64],
    /// Whether an acknowledged write may have died with killed nodes: every node that held
    /// it (memory only) was killed after it started. Such a write is not judged lost, nor its
    /// delete resurrected. The simulator kills at most one node, so there it is exactly the
    /// writes acknowledged by W = 1 of a run that killed one; `tests/fault.rs` kills up to two
    /// and counts the kills and snapshots.
    pub at_risk: &'a dyn Fn(&Write) -> bool,
    /// When nodes were killed (their memory lost): a strict read is not judged against a
    /// strict write when a kill came between them.
    pub kills: &'a [std::time::Duration],
    /// Each fault's span and the nodes it touched ([`super::workload::fault_spans`]): the
    /// homes-first rule judges a write only if no fault touched its coordinator or a home of
    /// its key while it ran.
    pub faults: &'a [super::workload::FaultSpan],
}

/// Everything the history and the final state break.
pub fn check(history: &History, end: &Ending) -> Vec<String> {
    let Ending {
        by_key,
        after_gc,
        nodes,
        now_ms,
        skews,
        at_risk,
        kills,
        faults,
    } = *end;
    let mut out = history.anomalies.clone();
    let written: BTreeSet<&str> = history.writes.iter().map(|w| w.id.as_str()).collect();
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

    // Lost acknowledged writes, by dots: a write's version is superseded exactly when a
    // later version's history holds its dot, and histories are causally closed, so an
    // acknowledged write is kept iff some final version (value or tombstone) is it or holds
    // its dot. This judges blind writes exactly too: whatever a blind write superseded at its
    // coordinator is in its history.
    for w in history
        .writes
        .iter()
        .filter(|w| w.acked() && !w.delete && !w.ttl)
    {
        if at_risk(w) {
            continue;
        }
        let dots = candidate_dots(w);
        if dots.is_empty() {
            out.push(format!(
                "{} on {} was acknowledged without a context",
                w.id, w.key
            ));
            continue;
        }
        let versions = by_key
            .get(&w.key)
            .map(|vs| vs.versions())
            .unwrap_or_default();
        let kept = versions
            .iter()
            .any(|v| dots.iter().any(|d| v.dot == *d || v.history.contains(d)));
        // A tombstone GC purged holds no evidence any more; its delete's context does.
        let deleted = history.writes.iter().any(|d| {
            d.delete
                && d.key == w.key
                && d.outcome != Outcome::Failed
                && d.sent
                    .as_deref()
                    .and_then(|c| Context::decode(c).ok())
                    .is_some_and(|c| dots.iter().any(|x| c.contains(x)))
        });
        let kept = kept || deleted;
        if !kept {
            out.push(format!(
                "lost acknowledged write {} on {} (W={}, acked at {:?}, dots {}); final: {:?}; \
                 at the end, by node: {}",
                w.id,
                w.key,
                w.w,
                w.completed.unwrap_or_default(),
                dots.iter().map(show_dot).collect::<Vec<_>>().join(" "),
                final_values(&w.key),
                by_node(nodes, &w.key)
            ));
        }
    }

    // Resurrection: a live final version whose dot an acknowledged delete's history holds
    // came back after that delete (whose tombstone superseded it) reached its replicas.
    for d in history.writes.iter().filter(|d| d.delete && d.acked()) {
        if at_risk(d) {
            continue; // every copy may have died with killed nodes
        }
        let Some(deleted) = d.returned.as_deref().and_then(|c| Context::decode(c).ok()) else {
            continue;
        };
        let before = by_key
            .get(&d.key)
            .map(|vs| vs.versions())
            .unwrap_or_default();
        let after = after_gc
            .get(&d.key)
            .map(|vs| vs.versions())
            .unwrap_or_default();
        for v in before.iter().chain(after).filter(|v| v.value.is_some()) {
            if deleted.contains(&v.dot) {
                out.push(format!(
                    "{} on {} came back after {} deleted it (W={})",
                    String::from_utf8_lossy(v.value.as_deref().unwrap_or_default()),
                    d.key,
                    d.id,
                    d.w
                ));
            }
        }
    }

    // GC purges tombstones only: every live version before it is there after it.
    for (key, vs) in by_key {
        for v in vs.versions().iter().filter(|v| v.value.is_some()) {
            let kept = after_gc
                .get(key)
                .is_some_and(|a| a.versions().iter().any(|x| x.dot == v.dot));
            let expired = v.expires_at().is_some();
            if !kept && !expired {
                out.push(format!(
                    "{} on {key} was live before tombstone GC and gone after it",
                    String::from_utf8_lossy(v.value.as_deref().unwrap_or_default())
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

    // Homes first (`quorum::WriteTracker`): while its coordinator saw at least W of the key's
    // homes up, a write is acknowledged only once W homes hold it; a fallback's
    // acknowledgement stands in for a home only when the homes cannot make W. Else a read of
    // R homes right after it can miss it (R + W > N): the stale read CI once caught. Judged
    // for writes that no fault touched while they ran, counting the coordinator and the homes
    // it saw up (those it sent the write to and waited for): then none of them fails to
    // answer. A home it saw down may be the fault's own (a crash, a cut): that is when the
    // coordinator sends to a fallback, and the fallback must not stand in for a live home.
    let index = |name: &str| name[1..].parse::<usize>().ok().map(|i| i - 1);
    // A fault's aftermath outlasts it: a link cut and healed leaves connections to re-open,
    // and a call on one may fail (then a fallback's acknowledgement counts, rightly) for up
    // to an RPC timeout (2 s) after the heal.
    const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);
    for w in history.writes.iter().filter(|w| w.acked()) {
        let (Some(a), Some(done)) = (&w.at_ack, w.completed) else {
            continue;
        };
        let involved: Vec<usize> = std::iter::once(&a.coordinator)
            .chain(&a.up)
            .filter_map(|n| index(n))
            .collect();
        let quiet = faults.iter().all(|(from, to, touched)| {
            done < *from
                || to.is_some_and(|to| w.invoked > to + SETTLE)
                || !touched.iter().any(|t| involved.contains(t))
        });
        if quiet && a.homes_up >= w.w && a.homes_holding < w.w {
            out.push(format!(
                "{} on {} was acknowledged at W={} at {done:?} while {} of its homes held it, \
                 though its coordinator {} saw {} homes up",
                w.id, w.key, w.w, a.homes_holding, a.coordinator, a.homes_up
            ));
        }
    }

    // Fresh reads: a read at `pr = r` invoked after a write acknowledged at `pw = w`, with
    // r + w > N, completed returns that write or a successor: its context holds one of the
    // write's dots. Not judged across a kill (a home restarted empty is a home again), nor
    // once a delete of the key may have been applied (GC may purge its tombstone, and with
    // it the evidence).
    let r = history.read_quorum.unwrap_or(0);
    for read in &history.strict_reads {
        let seen = read
            .context
            .as_deref()
            .and_then(|c| Context::decode(c).ok())
            .unwrap_or_default();
        let deleted_before = |until: std::time::Duration| {
            history.writes.iter().any(|d| {
                d.delete && d.key == read.key && d.outcome != Outcome::Failed && d.invoked < until
            })
        };
        for w in history.writes.iter().filter(|w| {
            // Judged only when the reader's ring places the key where the writer's did: a
            // placement change (the zones gate opening or closing) moves keys by handoff,
            // and until then new homes may not have them (a documented caveat).
            w.at_ack.as_ref().is_some_and(|a| a.homes == read.homes)
                && w.strict
                && w.acked()
                && !w.delete
                && !w.ttl
                && w.key == read.key
                && r + w.w > ringkv::config::DEFAULT_REPLICAS
                && w.completed.is_some_and(|c| c < read.invoked)
        }) {
            let spans_kill = kills
                .iter()
                .any(|k| *k >= w.invoked && *k <= read.completed);
            if spans_kill || deleted_before(read.completed) {
                continue;
            }
            let dots = candidate_dots(w);
            if !dots.iter().any(|d| seen.contains(d)) {
                out.push(format!(
                    "stale read: a GET of {} at pr=r={r} via n{} (client c{}, {:?} to {:?}) \
                     returned {:?} after {} was acknowledged at pw=w={} at {:?}",
                    read.key,
                    read.node + 1,
                    read.client + 1,
                    read.invoked,
                    read.completed,
                    read.values,
                    w.id,
                    w.w,
                    w.completed.unwrap_or_default(),
                ));
            }
        }
    }

    // Monotonic reads: a client's next strict read of a key never returns a version its
    // previous one had superseded (the previous read's context holds its dot, and it did not
    // return it). Judged where ringkv promises it: when every value the previous read
    // returned was acknowledged at `pw = w` (r + w > N) before the next read started, with
    // the same homes, no kill and no delete of the key between them. Then the next read
    // returns each of those values or a successor (the fresh-read rule), and a successor's
    // history holds whatever they superseded, so a merge that keeps a superseded version
    // beside it is the bug this finds.
    let strict_write = |id: &str| {
        history.writes.iter().find(|w| {
            w.id == id
                && w.strict
                && w.acked()
                && !w.delete
                && r + w.w > ringkv::config::DEFAULT_REPLICAS
        })
    };
    for (i, a) in history.strict_reads.iter().enumerate() {
        let Some(b) = history.strict_reads[i + 1..]
            .iter()
            .find(|b| b.client == a.client && b.key == a.key)
        else {
            continue;
        };
        let Some(seen) = a.context.as_deref().and_then(|c| Context::decode(c).ok()) else {
            continue;
        };
        let vouched = !a.values.is_empty()
            && a.homes == b.homes
            && a.values.iter().all(|v| {
                strict_write(v).is_some_and(|w| {
                    w.completed.is_some_and(|c| c < b.invoked)
                        && w.at_ack.as_ref().is_some_and(|at| at.homes == a.homes)
                })
            });
        let disturbed = kills.iter().any(|k| *k >= a.invoked && *k <= b.completed)
            || history.writes.iter().any(|d| {
                d.delete
                    && d.key == a.key
                    && d.outcome != Outcome::Failed
                    && d.invoked < b.completed
            });
        if !vouched || disturbed {
            continue;
        }
        for v in b.values.iter().filter(|v| !a.values.contains(v)) {
            let Some(wv) = history.writes.iter().find(|w| w.id == *v) else {
                continue;
            };
            // Every candidate dot: a blind write's candidates include the dots of what it
            // superseded, and only one of them is its own.
            let dots = candidate_dots(wv);
            if !dots.is_empty() && dots.iter().all(|d| seen.contains(d)) {
                out.push(format!(
                    "non-monotonic read: client c{} read {} at pr=r={r} via n{} ({:?} to \
                     {:?}) and got {:?}, then via n{} ({:?} to {:?}) got {:?}: {v} came back \
                     after the first read's versions superseded it",
                    a.client + 1,
                    a.key,
                    a.node + 1,
                    a.invoked,
                    a.completed,
                    a.values,
                    b.node + 1,
                    b.invoked,
                    b.completed,
                    b.values,
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

fn show_dot(d: &Dot) -> String {
    format!(
        "{}.{}:{}",
        d.actor.node,
        d.actor.generation % 100_000,
        d.counter
    )
}

/// Each node's versions of `key` (dot=value), for failure messages.
fn by_node(nodes: &BTreeMap<String, Arc<Node>>, key: &str) -> String {
    nodes
        .iter()
        .map(|(name, n)| {
            let vs = n
                .store()
                .get(&Bytes::from(key.to_string()))
                .unwrap_or_default();
            let shown: Vec<String> = vs
                .versions()
                .iter()
                .map(|v| {
                    let value = v.value.as_deref().map(String::from_utf8_lossy);
                    format!(
                        "{}={}",
                        show_dot(&v.dot),
                        value.as_deref().unwrap_or("tombstone")
                    )
                })
                .collect();
            format!("{name}[{}]", shown.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The dots `w`'s version may have: each actor the returned context counts further than the
/// sent one did. The coordinator minted one of them; usually there is exactly one.
pub fn candidate_dots(w: &Write) -> Vec<Dot> {
    let Some(returned) = w.returned.as_deref().and_then(|c| Context::decode(c).ok()) else {
        return Vec::new();
    };
    let sent = w
        .sent
        .as_deref()
        .and_then(|c| Context::decode(c).ok())
        .unwrap_or_default();
    returned
        .entries()
        .filter(|(actor, max, _)| *max > sent.max_counter(actor))
        .map(|(actor, max, _)| Dot {
            actor: actor.clone(),
            counter: max,
        })
        .collect()
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
pub fn final_state(nodes: &BTreeMap<String, Arc<Node>>) -> State {
    let mut out = BTreeMap::new();
    let Some(ring) = nodes
        .values()
        .next()
        .map(|n| n.system().view().ring.clone())
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
