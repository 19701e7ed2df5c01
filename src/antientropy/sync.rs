//! Merkle anti-entropy with one peer: digests, then the differing children level by level,
//! then the differing leaves' keys pushed and pulled (see the module doc of
//! [`crate::antientropy`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tracing::debug;

use super::*;
use crate::error::{Error, Result};
use crate::merkle::{NodeRef, differing_children};
use crate::replica::set_size;
use crate::ring::NodeId;
use crate::rpc::{Request, Response};
use crate::stats::Stats;
use crate::store::SegmentId;
use crate::version::VersionSet;

pub(super) fn digest_of(roots: &[u64]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for r in roots {
        h.update(&r.to_le_bytes());
    }
    h.digest()
}

pub(super) fn wire_size<T: Serialize>(msg: &T) -> u64 {
    rmp_serde::to_vec(msg).map_or(0, |v| v.len() as u64)
}

/// Runs one anti-entropy exchange with `peer` now, outside the worker's schedule (tests,
/// measurements and the start-up catch-up use it), and returns the keys it moved. Fails if
/// the peer is unknown, down, or has another ring.
pub async fn exchange_once(ae: &Arc<AntiEntropy>, peer: &str) -> Result<usize> {
    let segs = ae.segments();
    let (id, addr) = peers_of(ae, &segs)
        .into_iter()
        .find(|(id, _)| &**id == peer)
        .ok_or_else(|| Error::Unreachable(format!("{peer} is not a live peer sharing data")))?;
    let mut pacer = Pacer::new(ae.system.config().anti_entropy_rate);
    exchange(ae, &segs, &id, addr, &mut pacer).await
}

/// One anti-entropy exchange with `peer`.
pub(super) async fn exchange(
    ae: &Arc<AntiEntropy>,
    segs: &Segments,
    peer: &NodeId,
    addr: SocketAddr,
    pacer: &mut Pacer,
) -> Result<usize> {
    Stats::incr(&ae.system.stats.ae_rounds);
    let store = &ae.replica.store;
    let shared = segs.shared(ae.system.id(), peer);
    let roots: Vec<u64> = shared
        .iter()
        .map(|&id| store.root(&segs.list[id as usize], id).unwrap_or(0))
        .collect();
    let req = Request::AeDigest {
        ring: segs.fingerprint,
        from: ae.system.id().to_string(),
        digest: digest_of(&roots),
    };
    let theirs = match call(ae, addr, req, pacer).await? {
        Response::AeSame => return Ok(0),
        Response::AeRoots(theirs) => theirs,
        other => return Err(unexpected(other)),
    };
    // Walk down the differing trees one level per round trip.
    let mut frontier: Vec<(SegmentId, NodeRef)> = shared
        .iter()
        .zip(roots.iter().zip(theirs.iter().chain(std::iter::repeat(&0))))
        .filter(|(_, (a, b))| a != b)
        .map(|(&id, _)| (id, NodeRef::ROOT))
        .collect();
    let depth = crate::merkle::DEFAULT_DEPTH;
    let mut leaves: Vec<(SegmentId, u32)> = Vec::new();
    while !frontier.is_empty() {
        let mut answers = Vec::with_capacity(frontier.len());
        for chunk in frontier.chunks(MAX_NODES_PER_REQUEST) {
            let req = Request::AeChildren {
                ring: segs.fingerprint,
                nodes: chunk.to_vec(),
            };
            match call(ae, addr, req, pacer).await? {
                Response::AeChildren(a) => answers.extend(a),
                other => return Err(unexpected(other)),
            }
        }
        let mut next = Vec::new();
        for ((id, n), theirs) in frontier.iter().zip(answers) {
            let seg = segs.get(*id)?;
            let ours = store.children(seg, *id, *n).unwrap_or_default();
            let theirs = theirs.unwrap_or_default();
            for child in differing_children(*n, &ours, &theirs) {
                if child.level >= depth {
                    leaves.push((*id, child.index));
                } else {
                    next.push((*id, child));
                }
            }
        }
        frontier = next;
    }
    // Compare the keys of the differing leaves.
    let grace = ae.system.config().tombstone_grace;
    let mut moved = 0usize;
    for chunk in leaves.chunks(LEAVES_PER_REQUEST) {
        let mut rest: &[(SegmentId, u32)] = chunk;
        while !rest.is_empty() && moved < MAX_KEYS_PER_ROUND {
            let req = Request::AeLeafKeys {
                ring: segs.fingerprint,
                leaves: rest.to_vec(),
            };
            let (covered, their_keys) = match call(ae, addr, req, pacer).await? {
                Response::AeKeys { covered, keys } => (covered.clamp(1, rest.len()), keys),
                other => return Err(unexpected(other)),
            };
            let theirs: HashMap<Bytes, Listed> = their_keys
                .into_iter()
                .map(|(k, fp, expired)| (k, Listed { fp, expired }))
                .collect();
            let mut ours: HashMap<Bytes, Listed> = HashMap::new();
            for (id, leaf) in &rest[..covered] {
                let listed = store.leaf_keys(segs.get(*id)?, *id, *leaf, grace);
                ours.extend(
                    listed
                        .into_iter()
                        .map(|(k, fp, expired)| (k, Listed { fp, expired })),
                );
            }
            let push = to_send(&ours, &theirs);
            let pull = to_send(&theirs, &ours);
            moved += push.len() + pull.len();
            push_keys(ae, addr, &push, pacer).await?;
            pull_keys(ae, addr, pull, pacer).await?;
            rest = &rest[covered..];
        }
    }
    if moved > 0 {
        debug!(%peer, keys = moved, "anti-entropy repaired keys");
    }
    Ok(moved)
}

/// One key of a leaf listing.
pub(super) struct Listed {
    fp: u64,
    /// Only tombstones, older than the grace period: about to be purged.
    expired: bool,
}

/// The keys `from` should send to `to`: those whose fingerprints differ, except expired
/// tombstones for a side that has no copy at all. That side most likely purged the key
/// already; sending it back would restart its grace period, and two replicas could pass a
/// tombstone back and forth forever. A side holding an *older value* still gets the
/// tombstone, since only the fingerprints differ there.
/// In key order, so that batches and messages do not depend on a hash map's random state.
pub(super) fn to_send(from: &HashMap<Bytes, Listed>, to: &HashMap<Bytes, Listed>) -> Vec<Bytes> {
    let mut keys: Vec<Bytes> = from
        .iter()
        .filter(|(k, ours)| match to.get(*k) {
            None => !ours.expired,
            Some(theirs) => theirs.fp != ours.fp,
        })
        .map(|(k, _)| k.clone())
        .collect();
    keys.sort_unstable();
    keys
}

/// Sends our versions of `keys` to the peer, in byte-bounded batches.
pub(super) async fn push_keys(
    ae: &AntiEntropy,
    addr: SocketAddr,
    keys: &[Bytes],
    pacer: &mut Pacer,
) -> Result<()> {
    let budget = ae.replica.transfer_budget();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for key in keys {
        let Some(vs) = ae.replica.store.get(key) else {
            continue;
        };
        let size = set_size(key, &vs);
        if !batch.is_empty() && bytes + size > budget {
            send_batch(ae, addr, std::mem::take(&mut batch), pacer).await?;
            bytes = 0;
        }
        bytes += size;
        batch.push((key.clone(), vs));
    }
    if !batch.is_empty() {
        send_batch(ae, addr, batch, pacer).await?;
    }
    Ok(())
}

pub(super) async fn send_batch(
    ae: &AntiEntropy,
    addr: SocketAddr,
    items: Vec<(Bytes, VersionSet)>,
    pacer: &mut Pacer,
) -> Result<()> {
    let n = items.len() as u64;
    let answer = call(ae, addr, Request::ReplicateMany { items }, pacer).await;
    if let Err(err) = &answer
        && crate::memory::is_refusal(err)
    {
        // The peer is full: it takes these again next round, once it has room.
        Stats::incr(&ae.system.stats.copies_paused_memory);
    }
    match answer? {
        Response::Replicated => {
            Stats::add(&ae.system.stats.ae_keys_repaired, n);
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

/// Fetches the peer's versions of `keys` and merges them here.
pub(super) async fn pull_keys(
    ae: &AntiEntropy,
    addr: SocketAddr,
    keys: Vec<Bytes>,
    pacer: &mut Pacer,
) -> Result<()> {
    let mut rest: &[Bytes] = &keys;
    while !rest.is_empty() {
        // What is pulled is merged here: wait for the next round while this node is full.
        if ae.system.memory.is_full() {
            Stats::incr(&ae.system.stats.copies_paused_memory);
            debug!("anti-entropy pull paused: this node is over its memory limit");
            return Ok(());
        }
        let req = Request::ReadMany {
            keys: rest.to_vec(),
        };
        let sets = match call(ae, addr, req, pacer).await? {
            Response::VersionsMany(sets) if !sets.is_empty() => sets,
            other => return Err(unexpected(other)),
        };
        let n = sets.len().min(rest.len());
        for (key, vs) in rest[..n].iter().zip(sets) {
            if ae.replica.store.merge_owned(key, vs) {
                Stats::incr(&ae.system.stats.ae_keys_repaired);
            }
        }
        rest = &rest[n..];
    }
    Ok(())
}
