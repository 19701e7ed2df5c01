//! Background convergence: Merkle-tree anti-entropy, ownership handoff and tombstone GC.
//!
//! One worker per node runs a round every `anti_entropy_interval`, and rebuilds the store's
//! trees whenever the ring changes. A round does three things.
//!
//! **Anti-entropy with one peer** (round-robin over the peers that share segments with this
//! node). Both sides derive the same list of *shared segments* (segments whose home replicas
//! include both) from the ring, so the exchange is:
//!
//! 1. `AeDigest`: one hash of all shared roots. Identical replicas stop here: one request and
//!    one answer of a few dozen bytes, however many keys they hold.
//! 2. Otherwise the peer returns its roots; the initiator compares them with its own and, one
//!    tree level per round trip, asks only for the children of nodes that differ
//!    (`AeChildren`), down to the leaves.
//! 3. `AeLeafKeys` lists the keys and fingerprints of the differing leaves; the initiator
//!    pushes its versions of the keys that differ (`ReplicateMany`) and pulls the peer's
//!    (`ReadMany`), so both sides end with the merge. d differing keys cost
//!    O(d · depth) hashes, not O(keys).
//!
//! **Ownership handoff.** Segments for which this node is not a home replica (after a join,
//! a leave or a removal) are pushed to every home replica of the segment; a key is dropped
//! locally only after *all* of them acknowledged it, and only if it did not change meanwhile.
//!
//! **Tombstone GC.** A key that has been only tombstones for longer than the grace period is
//! purged once every other ring member reports the same tombstones or nothing (it purged them
//! already, or never held the key). A member that still has an older value (a home that
//! missed the delete, or a former owner yet to hand the key over), or is unreachable, blocks
//! the purge, so a delete is never undone by a node's return. The node that purges tells
//! every member to drop the same tombstone too, so that a replica whose grace period began
//! later does not hand it back and restart the others' grace periods.
//!
//! All transfers are batched by [`ANSWER_BUDGET`] and paced to `anti_entropy_rate` bytes per
//! second, so repair never starves clients.
//!
//! Caveat: a node that lost ownership of a key and is cut off from its new homes for longer
//! than the tombstone grace period could, on return, hand back a value whose tombstone was
//! purged meanwhile (the same contract as Cassandra's `gc_grace_seconds`): keep the grace
//! period longer than any partition you expect to heal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::merkle::{NodeRef, differing_children};
use crate::readiness::Startup;
use crate::replica::{Replica, fit, set_size};
use crate::ring::{NodeId, Ring, Segment};
use crate::rpc::{ANSWER_BUDGET, Request, Response};
use crate::stats::Stats;
use crate::store::SegmentId;
use crate::system::System;
use crate::version::VersionSet;

/// Most keys one round transfers (both directions), so a round stays short and the next
/// round can pick another peer; the remainder is found again by the next comparison.
pub const MAX_KEYS_PER_ROUND: usize = 100_000;

/// Leaves asked for per `AeLeafKeys` request.
const LEAVES_PER_REQUEST: usize = 512;

/// Most tree nodes one `AeChildren` request may ask about: a full level of every shared
/// segment of a large ring fits, and a peer cannot make one answer arbitrarily large.
const MAX_NODES_PER_REQUEST: usize = 1 << 16;

/// Tombstones examined per GC pass.
const GC_BATCH: usize = 1000;

/// The ring's segments as this node sees them.
#[derive(Debug, Default)]
pub struct Segments {
    pub ring: Arc<Ring>,
    pub fingerprint: u64,
    pub list: Vec<Segment>,
}

impl Segments {
    fn new(ring: Arc<Ring>, n: usize) -> Segments {
        Segments {
            fingerprint: ring.fingerprint(),
            list: ring.segments(n),
            ring,
        }
    }

    /// Segments whose home replicas include both `a` and `b`, in order.
    pub fn shared(&self, a: &str, b: &str) -> Vec<SegmentId> {
        self.list
            .iter()
            .enumerate()
            .filter(|(_, s)| s.homes.iter().any(|h| &**h == a) && s.homes.iter().any(|h| &**h == b))
            .map(|(i, _)| i as SegmentId)
            .collect()
    }

    fn get(&self, id: SegmentId) -> Result<&Segment> {
        self.list
            .get(id as usize)
            .ok_or_else(|| Error::invalid(format!("no segment {id}")))
    }
}

/// The anti-entropy part of a node: its view of the ring's segments, and the worker and
/// RPCs that compare and repair them.
pub struct AntiEntropy {
    pub(crate) system: Arc<System>,
    pub(crate) replica: Arc<Replica>,
    /// The ring's segments, swapped by the worker when the ring changes.
    segments: RwLock<Arc<Segments>>,
}

impl AntiEntropy {
    pub(crate) fn new(system: Arc<System>, replica: Arc<Replica>) -> AntiEntropy {
        AntiEntropy {
            system,
            replica,
            segments: RwLock::default(),
        }
    }

    /// The ring segments the store's Merkle trees follow.
    pub fn segments(&self) -> Arc<Segments> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_segments(&self, segs: Segments) {
        *self.segments.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(segs);
    }
}

fn digest_of(roots: &[u64]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for r in roots {
        h.update(&r.to_le_bytes());
    }
    h.digest()
}

fn wire_size<T: Serialize>(msg: &T) -> u64 {
    rmp_serde::to_vec(msg).map_or(0, |v| v.len() as u64)
}

/// Runs the worker until `shutdown` fires.
pub async fn run(ae: Arc<AntiEntropy>, shutdown: CancellationToken) {
    let mut views = ae.system.subscribe_view();
    let mut tick = tokio::time::interval(ae.system.config().anti_entropy_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_peer = 0usize;
    refresh_segments(&ae);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            res = views.changed() => {
                if res.is_err() { return }
                refresh_segments(&ae);
                continue;
            }
            _ = tick.tick() => {}
        }
        let mut pacer = Pacer::new(ae.system.config().anti_entropy_rate);
        let segs = ae.segments();
        let peers = peers_of(&ae, &segs);
        if !peers.is_empty() {
            let (peer, addr) = &peers[next_peer % peers.len()];
            next_peer = next_peer.wrapping_add(1);
            let started = std::time::Instant::now();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                res = exchange(&ae, &segs, peer, *addr, &mut pacer) => if let Err(err) = res.map(drop) {
                    debug!(%peer, %err, "anti-entropy round ended early");
                },
            }
            let stages = &ae.system.stats.stages;
            stages.record(crate::timings::Stage::AntiEntropy, started);
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = handoff_orphans(&ae, &segs, &mut pacer) => {}
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = collect_tombstones(&ae, &segs) => {}
        }
    }
}

/// Rebuilds the trees if the ring changed.
fn refresh_segments(ae: &Arc<AntiEntropy>) {
    let ring = ae.system.view().ring.clone();
    if ae.segments().fingerprint == ring.fingerprint() && !ae.segments().list.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let segs = Segments::new(ring, ae.system.config().replicas);
    let me = ae.system.id();
    ae.replica
        .store
        .set_segments(&segs.list, |s| s.homes.iter().any(|h| h == me));
    info!(
        members = segs.ring.nodes().len(),
        segments = segs.list.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "ring changed; Merkle trees rebuilt"
    );
    ae.set_segments(segs);
}

/// Alive peers that share at least one segment with this node, with their RPC addresses.
fn peers_of(ae: &AntiEntropy, segs: &Segments) -> Vec<(NodeId, SocketAddr)> {
    let view = ae.system.view();
    segs.ring
        .nodes()
        .iter()
        .filter(|id| **id != *ae.system.id() && view.is_alive(id))
        .filter(|id| !segs.shared(ae.system.id(), id).is_empty())
        .filter_map(|id| Some((id.clone(), view.member(id)?.rpc?)))
        .collect()
}

/// Limits bytes per second by sleeping after each transfer. It measures with tokio's clock,
/// the one its sleeps run on, so the two agree under a paused test runtime.
struct Pacer {
    rate: u64,
    started: Instant,
    sent: u64,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            rate: rate.max(1),
            started: Instant::now(),
            sent: 0,
        }
    }

    async fn sent(&mut self, bytes: u64) {
        self.sent += bytes;
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

async fn call(
    ae: &AntiEntropy,
    addr: SocketAddr,
    req: Request,
    pacer: &mut Pacer,
) -> Result<Response> {
    let size = wire_size(&req);
    Stats::add(&ae.system.stats.ae_bytes_sent, size);
    pacer.sent(size).await;
    let resp = ae.system.pool.call(addr, req).await?;
    Stats::add(&ae.system.stats.ae_bytes_received, wire_size(&resp));
    Ok(resp)
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

/// How long the catch-up waits before it tries a peer again after a failed exchange (most
/// often the two rings differ for a gossip round while the new member spreads).
const CATCH_UP_RETRY: Duration = Duration::from_millis(200);

/// How long the catch-up keeps trying one peer whose exchanges fail before it moves on with
/// a warning: the peer's copies are also on other replicas and anti-entropy keeps running,
/// while a node stuck in `joining` for ever would serve nobody.
const CATCH_UP_PEER_PATIENCE: Duration = Duration::from_secs(30);

/// A node's start-up catch-up ([`crate::readiness`]): once it has heard a seed and sees a
/// quorum, and `settle` says its view of who serves agrees with its peers' (a node that just
/// started sees its peers serving a gossip round or two late, and a catch-up that skipped a
/// peer it did not see yet would miss the copies only that peer holds: a rolling restart
/// under load lost a write that way), it runs one full exchange with every serving peer it
/// shares segments with (more while an exchange hits [`MAX_KEYS_PER_ROUND`]). The node
/// announces `alive` after it, so a
/// node restarted empty has its copies back before peers route requests to it. Peers that
/// stop serving meanwhile are skipped: their copies are on the other replicas. Returns false
/// if the node shut down first. `progress` hears how far it got.
pub(crate) async fn catch_up(
    ae: &Arc<AntiEntropy>,
    shutdown: &CancellationToken,
    progress: impl Fn(Startup),
    settle: impl std::future::Future<Output = bool>,
) -> bool {
    let mut views = ae.system.subscribe_view();
    loop {
        let view = ae.system.view();
        let q = ae.system.quorums();
        let quorum = crate::readiness::quorum(
            &view,
            ae.system.id(),
            true,
            q,
            crate::readiness::Counting::Up,
        );
        if view.heard_seed && quorum.ok {
            break;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return false,
            res = views.changed() => if res.is_err() { return false },
        }
    }
    if !settle.await {
        return false;
    }
    // The worker rebuilds the trees on a ring change; make sure they follow this view's ring
    // before comparing them with anyone.
    refresh_segments(ae);
    let segs = ae.segments();
    let peers: Vec<NodeId> = peers_of(ae, &segs).into_iter().map(|(id, _)| id).collect();
    let total = peers.len();
    let started = std::time::Instant::now();
    let mut moved = 0usize;
    for (done, peer) in peers.iter().enumerate() {
        progress(Startup::CatchingUp { done, of: total });
        let first_try = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            if !ae.system.view().is_alive(peer) {
                debug!(%peer, "catch-up: peer stopped serving; its replicas cover it");
                break;
            }
            refresh_segments(ae);
            match exchange_once(ae, peer).await {
                Ok(n) => {
                    moved += n;
                    if n < MAX_KEYS_PER_ROUND {
                        break;
                    }
                }
                Err(err) if first_try.elapsed() > CATCH_UP_PEER_PATIENCE => {
                    warn!(%peer, %err, "catch-up: giving up on this peer; anti-entropy goes on");
                    break;
                }
                Err(err) => {
                    debug!(%peer, %err, "catch-up exchange failed; retrying");
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(CATCH_UP_RETRY) => {}
                    }
                }
            }
        }
    }
    info!(
        peers = total,
        keys = moved,
        took_ms = started.elapsed().as_millis() as u64,
        "caught up with peers"
    );
    true
}

/// One anti-entropy exchange with `peer`.
async fn exchange(
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
struct Listed {
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
fn to_send(from: &HashMap<Bytes, Listed>, to: &HashMap<Bytes, Listed>) -> Vec<Bytes> {
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
async fn push_keys(
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

async fn send_batch(
    ae: &AntiEntropy,
    addr: SocketAddr,
    items: Vec<(Bytes, VersionSet)>,
    pacer: &mut Pacer,
) -> Result<()> {
    let n = items.len() as u64;
    match call(ae, addr, Request::ReplicateMany { items }, pacer).await? {
        Response::Replicated => {
            Stats::add(&ae.system.stats.ae_keys_repaired, n);
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

/// Fetches the peer's versions of `keys` and merges them here.
async fn pull_keys(
    ae: &AntiEntropy,
    addr: SocketAddr,
    keys: Vec<Bytes>,
    pacer: &mut Pacer,
) -> Result<()> {
    let mut rest: &[Bytes] = &keys;
    while !rest.is_empty() {
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

/// Pushes keys of segments this node no longer owns to their homes, then drops them.
async fn handoff_orphans(ae: &Arc<AntiEntropy>, segs: &Segments, pacer: &mut Pacer) {
    let view = ae.system.view();
    let me = ae.system.id();
    let mut handed = 0usize;
    for seg in &segs.list {
        if seg.homes.is_empty() || seg.homes.iter().any(|h| h == me) {
            continue;
        }
        // No tree here (this node is no home of it): look for a key in the range instead.
        if ae.replica.store.segment_batch(seg, None, 1).is_empty() {
            continue;
        }
        // Every home must be up to confirm; otherwise keep the keys for a later round.
        let Some(addrs): Option<Vec<SocketAddr>> = seg
            .homes
            .iter()
            .map(|h| view.is_up(h).then(|| view.member(h)?.rpc).flatten())
            .collect()
        else {
            continue;
        };
        let mut after = None;
        loop {
            let mut batch = ae.replica.store.segment_batch(seg, after.as_ref(), 256);
            let fits = fit(&batch, ae.replica.transfer_budget(), |((_, k), vs)| {
                set_size(k, vs)
            });
            batch.truncate(fits);
            let Some((last, _)) = batch.last() else {
                break;
            };
            after = Some(last.clone());
            let items: Vec<(Bytes, VersionSet)> =
                batch.into_iter().map(|((_, k), vs)| (k, vs)).collect();
            let mut all_acked = true;
            for addr in &addrs {
                let req = Request::ReplicateMany {
                    items: items.clone(),
                };
                if !matches!(call(ae, *addr, req, pacer).await, Ok(Response::Replicated)) {
                    all_acked = false;
                    break;
                }
            }
            if !all_acked {
                break;
            }
            for (key, vs) in &items {
                if ae.replica.store.remove_if(key, vs.fingerprint(key)) {
                    handed += 1;
                }
            }
            if handed >= MAX_KEYS_PER_ROUND {
                break;
            }
        }
    }
    if handed > 0 {
        Stats::add(&ae.system.stats.ae_keys_handed_off, handed as u64);
        info!(keys = handed, "handed off keys this node no longer owns");
    }
}

/// Purges tombstones older than the grace period that every home replica agrees on.
async fn collect_tombstones(ae: &Arc<AntiEntropy>, segs: &Segments) {
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

fn unexpected(resp: Response) -> Error {
    Error::Protocol(format!("unexpected anti-entropy answer: {resp:?}"))
}

impl AntiEntropy {
    /// Serves [`Request::AeDigest`]: `AeSame` if our roots of the segments shared with
    /// `from` hash to `digest`, else those roots.
    pub(crate) fn serve_ae_digest(&self, ring: u64, from: String, digest: u64) -> Result<Response> {
        let segs = self.checked_segments(ring)?;
        let roots: Vec<u64> = segs
            .shared(self.system.id(), &from)
            .iter()
            .map(|&id| {
                self.replica
                    .store
                    .root(&segs.list[id as usize], id)
                    .unwrap_or(0)
            })
            .collect();
        Ok(if digest_of(&roots) == digest {
            Response::AeSame
        } else {
            Response::AeRoots(roots)
        })
    }

    /// Serves [`Request::AeChildren`]: the children hashes of these tree nodes.
    pub(crate) fn serve_ae_children(
        &self,
        ring: u64,
        nodes: Vec<(SegmentId, NodeRef)>,
    ) -> Result<Response> {
        let segs = self.checked_segments(ring)?;
        if nodes.len() > MAX_NODES_PER_REQUEST {
            return Err(Error::invalid("too many tree nodes in one request"));
        }
        let mut out = Vec::with_capacity(nodes.len());
        for (id, n) in nodes {
            out.push(self.replica.store.children(segs.get(id)?, id, n));
        }
        Ok(Response::AeChildren(out))
    }

    /// Serves [`Request::AeLeafKeys`]: the keys in these leaves, up to [`ANSWER_BUDGET`].
    pub(crate) fn serve_ae_leaf_keys(
        &self,
        ring: u64,
        leaves: Vec<(SegmentId, u32)>,
    ) -> Result<Response> {
        let segs = self.checked_segments(ring)?;
        let mut keys = Vec::new();
        let mut bytes = 0;
        let mut covered = 0;
        for (id, leaf) in leaves {
            let grace = self.system.config().tombstone_grace;
            let listed = self.replica.store.leaf_keys(segs.get(id)?, id, leaf, grace);
            bytes += listed.iter().map(|(k, _, _)| k.len() + 9).sum::<usize>();
            keys.extend(listed);
            covered += 1;
            if bytes >= ANSWER_BUDGET {
                break;
            }
        }
        Ok(Response::AeKeys { covered, keys })
    }

    fn checked_segments(&self, ring: u64) -> Result<Arc<Segments>> {
        let segs = self.segments();
        if segs.fingerprint != ring {
            return Err(Error::Rejected("our rings differ; try again later".into()));
        }
        Ok(segs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pacer measures and sleeps on tokio's clock: paused, a transfer is held exactly as
    /// long as the rate asks, in virtual time.
    #[tokio::test(start_paused = true)]
    async fn the_pacer_holds_transfers_to_the_rate() {
        let start = Instant::now();
        let mut pacer = Pacer::new(1000);
        let within = |from: Duration| {
            let took = start.elapsed();
            took >= from && took <= from + Duration::from_millis(2)
        };
        pacer.sent(500).await;
        assert!(within(Duration::from_millis(500)), "{:?}", start.elapsed());
        pacer.sent(1500).await;
        assert!(within(Duration::from_secs(2)), "{:?}", start.elapsed());
    }
}
