//! Tombstone GC: a tombstone older than the grace period is purged once every member reports
//! the same tombstone or nothing.

use std::sync::Arc;

use bytes::Bytes;
use tracing::debug;

use super::*;
use crate::ring::NodeId;
use crate::rpc::{Request, Response};
use crate::stats::Stats;

/// Tombstones examined per GC pass.
pub(super) const GC_BATCH: usize = 1000;

/// Purges tombstones older than the grace period that every home replica agrees on.
pub(super) async fn collect_tombstones(ae: &Arc<AntiEntropy>, segs: &Segments) {
    let grace = ae.system.config().tombstone_grace;
    let candidates = ae.replica.store.old_tombstones(grace, GC_BATCH);
    if candidates.is_empty() {
        return;
    }
    let view = ae.system.view();
    // Every other ring member is asked, not only the homes: a node that lost ownership of
    // the key may still hold an older value it has yet to hand over, and purging before it
    // did would let that value come back. So one unreachable member blocks every purge.
    let mut by_peer: std::collections::BTreeMap<NodeId, Vec<usize>> = Default::default();
    let mut blocked = vec![false; candidates.len()];
    for (i, (key, _)) in candidates.iter().enumerate() {
        let homes = segs.ring.preference_list(key, ae.system.config().replicas);
        if !homes.iter().any(|h| h == ae.system.id()) {
            blocked[i] = true; // not ours: ownership handoff moves it instead
            continue;
        }
        for peer in segs.ring.nodes().iter().filter(|h| *h != ae.system.id()) {
            by_peer.entry(peer.clone()).or_default().push(i);
        }
    }
    for (peer, idxs) in by_peer {
        let Some(addr) = view.is_up(&peer).then(|| view.member(&peer)?.rpc).flatten() else {
            idxs.iter().for_each(|&i| blocked[i] = true);
            continue;
        };
        let keys: Vec<Bytes> = idxs.iter().map(|&i| candidates[i].0.clone()).collect();
        match ae
            .system
            .pool
            .call(addr, Request::Fingerprints { keys })
            .await
        {
            Ok(Response::Fingerprints(fps)) if fps.len() == idxs.len() => {
                for (&i, fp) in idxs.iter().zip(fps) {
                    if fp != 0 && fp != candidates[i].1 {
                        blocked[i] = true;
                    }
                }
            }
            _ => idxs.iter().for_each(|&i| blocked[i] = true),
        }
    }
    let mut purged = 0;
    let mut everywhere = Vec::new();
    for (i, (key, fp)) in candidates.iter().enumerate() {
        if !blocked[i] && ae.replica.store.remove_if(key, *fp) {
            purged += 1;
            everywhere.push((key.clone(), *fp));
        }
    }
    if purged > 0 {
        Stats::add(&ae.system.stats.tombstones_purged, purged);
        debug!(purged, "tombstones purged");
    }
    // Every member holds these tombstones or nothing: have them drop theirs now too. A
    // replica whose grace period started later (it got the tombstone later) would otherwise
    // keep it, anti-entropy would hand it back to the members that purged it, restarting
    // their grace periods, and two replicas could pass it back and forth for ever. The
    // peers drop only the same tombstone, never anything written since.
    if !everywhere.is_empty() {
        for peer in segs.ring.nodes().iter().filter(|h| *h != ae.system.id()) {
            let Some(addr) = view.member(peer).and_then(|m| m.rpc) else {
                continue;
            };
            let req = Request::Purge {
                items: everywhere.clone(),
            };
            if let Err(err) = ae.system.pool.call(addr, req).await {
                debug!(%peer, %err, "tombstone purge not delivered");
            }
        }
    }
}
