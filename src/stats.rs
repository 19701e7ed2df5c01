//! Counters a node keeps about itself.
//!
//! Plain relaxed atomics: each is an independent tally read by `/admin/stats`-style endpoints
//! and logs, so no ordering between them is needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Per-node counters. Every field only ever grows.
#[derive(Debug, Default)]
pub struct Stats {
    /// RPC frames dropped for a bad checksum, size, encoding or handshake. Shared with the
    /// RPC client and server ([`crate::rpc`] does not know this struct).
    pub rpc_frames_rejected: Arc<AtomicU64>,
    /// RPC connections refused because the peer could not prove the cluster secret.
    pub rpc_handshakes_refused: Arc<AtomicU64>,
    /// RPC requests refused at once (busy) because `--max-rpc-in-flight` of their
    /// connection's requests were running. Shared with the RPC server.
    pub rpc_in_flight_refused: Arc<AtomicU64>,
    /// WebSocket watchers refused because `--max-watchers` were connected.
    pub watchers_refused: AtomicU64,
    /// HTTP connections closed at once: `--max-http-connections` were open.
    pub http_connections_refused: AtomicU64,
    /// TLS handshakes on the HTTP port that failed or timed out.
    pub tls_handshakes_failed: AtomicU64,
    /// Replicas brought up to date by read repair.
    pub read_repairs: AtomicU64,
    /// Client requests answered 503 because the quorum was not met.
    pub quorum_failures: AtomicU64,
    /// Writes this node coordinated.
    pub writes_coordinated: AtomicU64,
    /// Reads this node coordinated.
    pub reads_coordinated: AtomicU64,
    /// Writes forwarded to the key's first live replica.
    pub writes_forwarded: AtomicU64,
    /// Hinted copies this node accepted as a fallback.
    pub hints_stored: AtomicU64,
    /// Hinted copies delivered to their home replica.
    pub hints_delivered: AtomicU64,
    /// Hinted copies refused (store full, window passed) or expired.
    pub hints_dropped: AtomicU64,
    /// Anti-entropy exchanges started.
    pub ae_rounds: AtomicU64,
    /// Keys sent or received (and changed) by anti-entropy.
    pub ae_keys_repaired: AtomicU64,
    /// Bytes of anti-entropy and handoff requests this node sent (payload size).
    pub ae_bytes_sent: AtomicU64,
    /// Bytes of answers to this node's anti-entropy and handoff requests.
    pub ae_bytes_received: AtomicU64,
    /// Keys handed to their new owners and dropped here.
    pub ae_keys_handed_off: AtomicU64,
    /// Tombstones purged after the grace period.
    pub tombstones_purged: AtomicU64,
    /// HTTP requests answered.
    pub http_requests: AtomicU64,
    /// This node's gossip traffic and refusals, shared with its membership.
    pub gossip: Arc<crate::membership::GossipCounters>,
    /// Where requests' time goes, by stage (`GET /admin/stages`).
    pub stages: crate::timings::Stages,
    /// Values dropped by the TTL sweep once expired.
    pub ttl_values_expired: AtomicU64,
    /// Bytes of values the TTL sweep freed.
    pub ttl_bytes_freed: AtomicU64,
}

/// What the status page shows of one node: a wire type, defined with the protocol.
pub use crate::rpc::NodeStatus;

/// A point-in-time copy of [`Stats`], for JSON.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub rpc_frames_rejected: u64,
    pub rpc_handshakes_refused: u64,
    pub rpc_in_flight_refused: u64,
    pub watchers_refused: u64,
    pub http_connections_refused: u64,
    pub tls_handshakes_failed: u64,
    /// Gossip datagrams chitchat could not decode ([`crate::membership::garbage`]).
    pub gossip_datagrams_rejected: u64,
    /// Gossip datagrams dropped by the cluster secret's check ([`crate::seal`]).
    pub gossip_datagrams_refused: u64,
    /// Gossip traffic ([`crate::membership::GossipCounters`]).
    pub gossip_bytes_sent: u64,
    pub gossip_datagrams_sent: u64,
    pub gossip_bytes_received: u64,
    /// The largest gossip datagram sent so far, in bytes (chitchat's cap is 65,507).
    pub gossip_largest_datagram: u64,
    pub read_repairs: u64,
    pub quorum_failures: u64,
    pub writes_coordinated: u64,
    pub reads_coordinated: u64,
    pub writes_forwarded: u64,
    pub hints_stored: u64,
    pub hints_delivered: u64,
    pub hints_dropped: u64,
    pub ae_rounds: u64,
    pub ae_keys_repaired: u64,
    pub ae_bytes_sent: u64,
    pub ae_bytes_received: u64,
    pub ae_keys_handed_off: u64,
    pub tombstones_purged: u64,
    pub http_requests: u64,
    pub ttl_values_expired: u64,
    pub ttl_bytes_freed: u64,
}

impl Stats {
    /// Adds one to `counter`.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let gossip = &self.gossip;
        StatsSnapshot {
            rpc_frames_rejected: get(&self.rpc_frames_rejected),
            rpc_handshakes_refused: get(&self.rpc_handshakes_refused),
            rpc_in_flight_refused: get(&self.rpc_in_flight_refused),
            watchers_refused: get(&self.watchers_refused),
            http_connections_refused: get(&self.http_connections_refused),
            tls_handshakes_failed: get(&self.tls_handshakes_failed),
            gossip_datagrams_rejected: get(&gossip.rejected),
            gossip_datagrams_refused: get(&gossip.refused),
            gossip_bytes_sent: get(&gossip.bytes_sent),
            gossip_datagrams_sent: get(&gossip.datagrams_sent),
            gossip_bytes_received: get(&gossip.bytes_received),
            gossip_largest_datagram: get(&gossip.largest_sent),
            read_repairs: get(&self.read_repairs),
            quorum_failures: get(&self.quorum_failures),
            writes_coordinated: get(&self.writes_coordinated),
            reads_coordinated: get(&self.reads_coordinated),
            writes_forwarded: get(&self.writes_forwarded),
            hints_stored: get(&self.hints_stored),
            hints_delivered: get(&self.hints_delivered),
            hints_dropped: get(&self.hints_dropped),
            ae_rounds: get(&self.ae_rounds),
            ae_keys_repaired: get(&self.ae_keys_repaired),
            ae_bytes_sent: get(&self.ae_bytes_sent),
            ae_bytes_received: get(&self.ae_bytes_received),
            ae_keys_handed_off: get(&self.ae_keys_handed_off),
            tombstones_purged: get(&self.tombstones_purged),
            http_requests: get(&self.http_requests),
            ttl_values_expired: get(&self.ttl_values_expired),
            ttl_bytes_freed: get(&self.ttl_bytes_freed),
        }
    }
}
