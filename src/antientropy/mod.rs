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

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::error::{Error, Result};
use crate::merkle::NodeRef;
use crate::replica::Replica;
use crate::ring::{NodeId, Ring, Segment};
use crate::rpc::{ANSWER_BUDGET, Request, Response};
use crate::stats::Stats;
use crate::store::SegmentId;
use crate::system::System;

mod catchup;
mod gc;
mod handoff;
mod sync;

pub(crate) use catchup::catch_up;
use gc::collect_tombstones;
use handoff::handoff_orphans;
pub use sync::exchange_once;
use sync::{digest_of, exchange, wire_size};

/// Most keys one round transfers (both directions), so a round stays short and the next
/// round can pick another peer; the remainder is found again by the next comparison.
pub const MAX_KEYS_PER_ROUND: usize = 100_000;

/// Leaves asked for per `AeLeafKeys` request.
const LEAVES_PER_REQUEST: usize = 512;

/// Most tree nodes one `AeChildren` request may ask about: a full level of every shared
/// segment of a large ring fits, and a peer cannot make one answer arbitrarily large.
const MAX_NODES_PER_REQUEST: usize = 1 << 16;

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
