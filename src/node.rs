//! A node, composed of its parts, and the one RPC dispatch.
//!
//! Each part owns one concern and holds only the handles it needs:
//!
//! | part | owns | holds |
//! |---|---|---|
//! | [`System`] | identity, config, the membership view, the RPC pool, counters, the task set | — |
//! | [`Replica`] | the store, the hints, the replica side of reads and writes | cluster |
//! | [`Watches`] | this node's watchers, peers' interest, the event fan-out | cluster |
//! | [`Coordinator`] | client reads, writes and listings | cluster, replica, watches |
//! | [`AntiEntropy`] | the ring's segments, Merkle exchanges, ownership handoff, tombstone GC | cluster, replica |
//! | [`Lifecycle`] | the gossiped status, start-up, readiness, decommission | cluster, replica |
//!
//! Workers (hinted handoff, the TTL sweep, anti-entropy rounds) get the parts they use, not
//! the node. [`Node`] itself only puts the parts together, dispatches RPCs to them and
//! reports the node's status; the HTTP API ([`crate::api`]) sits above it, and
//! [`crate::server::NodeHandle`] starts and stops everything.
//!
//! Adding an RPC touches:
//! - [`crate::rpc::Request`] (and [`crate::rpc::Response`] if it answers something new): the
//!   variant, and its data in `rpc/types.rs`;
//! - [`crate::compat`]: a new variant is a new protocol version (the previous release cannot
//!   decode it), so `PROTOCOL_MAX` goes up and callers send it only on connections that
//!   negotiated that version ([`crate::rpc::client::Pool::protocol`]);
//! - its handler (`serve_*`) in the part that owns it, and one line in the dispatch below;
//! - `tests/protocol.rs`, whose exhaustive match fails to compile until the variant is named;
//! - a new [`crate::Error`] variant in answers goes through [`crate::rpc::answer_for`], which
//!   turns it into one an older connection reads (`MemoryFull` → `Rejected` before protocol 6).
//!
//! Adding an HTTP route touches `api/routes.rs` (one arm: path, label, methods, roles, query
//! parameters), one arm in `api::dispatch`, and its handler in `api/kv.rs` or `api/cluster.rs`.

use std::sync::Arc;

use crate::antientropy::AntiEntropy;
use crate::coordinator::Coordinator;
use crate::error::Result;
use crate::lifecycle::Lifecycle;
use crate::replica::Replica;
use crate::rpc::{Request, Response, Service};
use crate::stats::{NodeStatus, Stats};
use crate::store::Store;
use crate::system::System;
use crate::watch::Watches;

/// One node's parts.
pub struct Node {
    pub(crate) system: Arc<System>,
    pub(crate) replica: Arc<Replica>,
    pub(crate) watches: Arc<Watches>,
    pub(crate) coordinator: Arc<Coordinator>,
    pub(crate) anti_entropy: Arc<AntiEntropy>,
    pub(crate) lifecycle: Arc<Lifecycle>,
}

impl Node {
    /// Identity, view, peers and counters.
    pub fn system(&self) -> &Arc<System> {
        &self.system
    }

    /// The copies this node holds.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// Watchers and event fan-out.
    pub fn watches(&self) -> &Arc<Watches> {
        &self.watches
    }

    /// Client reads, writes and listings.
    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// Segments and Merkle exchanges.
    pub fn anti_entropy(&self) -> &Arc<AntiEntropy> {
        &self.anti_entropy
    }

    /// Status, start-up, readiness, decommission.
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The local store (the replica's).
    pub fn store(&self) -> &Store {
        &self.replica.store
    }

    /// The node's counters.
    pub fn stats(&self) -> &Stats {
        &self.system.stats
    }

    /// What the status page shows of this node, and what a peer that just started asks for
    /// ([`Request::Status`]).
    pub fn status(&self) -> NodeStatus {
        let store = self.replica.store.stats();
        let c = self.system.stats.snapshot();
        let view = self.system.view();
        NodeStatus {
            keys: store.keys,
            tombstones: store.tombstones,
            bytes: store.bytes,
            hints_pending: self.replica.hints_pending() as u64,
            ae_rounds: c.ae_rounds,
            ae_keys_repaired: c.ae_keys_repaired,
            ae_bytes_sent: c.ae_bytes_sent,
            ae_bytes_received: c.ae_bytes_received,
            requests: c.http_requests,
            watchers: self.watches.watchers.count() as u64,
            serving: view
                .members
                .values()
                .filter(|m| view.is_alive(&m.id))
                .map(|m| (m.id.to_string(), m.generation))
                .collect(),
        }
    }
}

/// The one RPC dispatch: each request goes to its handler, `serve_*`, in the part that owns
/// it.
impl Service for Node {
    /// Forwarded writes wait on other replicas; with a data dir, copies wait for their log
    /// record to be durable (`--fsync always`), which must not serialise a connection: the
    /// writes behind it join the same fsync instead (group commit).
    fn may_wait(&self, req: &Request) -> bool {
        match req {
            Request::Coordinate { .. } => true,
            Request::Replicate { .. } | Request::ReplicateMany { .. } => {
                self.replica.store.log().is_some()
            }
            _ => false,
        }
    }

    async fn call(self: Arc<Self>, req: Request) -> Result<Response> {
        let (replica, ae) = (&self.replica, &self.anti_entropy);
        match req {
            Request::Replicate {
                key,
                versions,
                hint_for,
            } => replica.serve_replicate(key, versions, hint_for).await,
            Request::ReplicateMany { items } => replica.serve_replicate_many(items).await,
            Request::Read { key } => replica.serve_read(key),
            Request::List {
                prefix,
                after,
                limit,
            } => replica.serve_list(prefix, after, limit),
            Request::ReadMany { keys } => replica.serve_read_many(keys),
            Request::Fingerprints { keys } => replica.serve_fingerprints(keys),
            Request::Purge { items } => replica.serve_purge(items),
            Request::Coordinate { write, quorum } => {
                self.coordinator.serve_coordinate(write, quorum).await
            }
            Request::AeDigest { ring, from, digest } => ae.serve_ae_digest(ring, from, digest),
            Request::AeChildren { ring, nodes } => ae.serve_ae_children(ring, nodes),
            Request::AeLeafKeys { ring, leaves } => ae.serve_ae_leaf_keys(ring, leaves),
            Request::Events { events } => self.watches.serve_events(events),
            Request::Watching { node, announcement } => {
                self.watches.serve_watching(node, announcement)
            }
            Request::Status => Ok(Response::Status(self.status())),
        }
    }
}
