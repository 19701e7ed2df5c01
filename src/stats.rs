//! Counters a node keeps about itself.
//!
//! Plain relaxed atomics: each is an independent tally read by `/admin/stats`-style endpoints
//! and logs, so no ordering between them is needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::membership::GossipCounters;

/// Declares the node's counters once: each becomes a field of [`Counters`] and of
/// [`StatsSnapshot`] (the JSON of `/admin/stats`), and, with a metric name, a line of
/// `/metrics` whose help text is its doc comment. The gossip counters live in the node's
/// [`GossipCounters`] (membership counts them) and are declared here by the field they are read
/// from.
macro_rules! counters {
    (
        own { $( $(#[doc = $doc:literal])+ $field:ident => $metric:expr, )* }
        gossip { $( $(#[doc = $gdoc:literal])+ $gfield:ident = $source:ident => $gmetric:expr, $gkind:ident, )* }
    ) => {
        /// The node's own counters. Every one only ever grows. Each is an `Arc` so that a part
        /// that does not know this struct (the RPC client and server) can share one.
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[doc = $doc])+ pub $field: Arc<AtomicU64>, )*
        }

        /// A point-in-time copy of the counters, for JSON.
        #[derive(Debug, Clone, Serialize, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( $(#[doc = $doc])+ pub $field: u64, )*
            $( $(#[doc = $gdoc])+ pub $gfield: u64, )*
        }

        impl Stats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                let gossip = &self.gossip;
                StatsSnapshot {
                    $( $field: self.counters.$field.load(Ordering::Relaxed), )*
                    $( $gfield: gossip.$source.load(Ordering::Relaxed), )*
                }
            }
        }

        impl StatsSnapshot {
            /// Each counter that has a metric: its name (after `ringkv_`), help, kind and value.
            pub fn metrics(&self) -> Vec<Metric> {
                let mut out = Vec::new();
                $( if let Some(name) = $metric {
                    out.push(Metric { name, help: concat!($($doc),+).trim_start(), kind: Kind::Counter, value: self.$field });
                } )*
                $( if let Some(name) = $gmetric {
                    out.push(Metric { name, help: concat!($($gdoc),+).trim_start(), kind: Kind::$gkind, value: self.$gfield });
                } )*
                out
            }
        }
    };
}

/// How a metric reads: a counter only grows, a gauge is a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric of [`StatsSnapshot::metrics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    /// Its doc comment's lines, joined (each starts with a space).
    pub help: &'static str,
    pub kind: Kind,
    pub value: u64,
}

counters! {
    own {
        /// RPC connections closed for a bad frame: checksum, size, encoding or handshake.
        rpc_frames_rejected => Some("rpc_frames_rejected"),
        /// RPC connections refused: the peer could not prove the cluster secret.
        rpc_handshakes_refused => Some("rpc_handshakes_refused"),
        /// RPC requests refused as busy: `--max-rpc-in-flight` of their connection's
        /// requests were running.
        rpc_in_flight_refused => Some("rpc_in_flight_refused"),
        /// WebSocket watchers refused with 503 because `--max-watchers` were connected.
        watchers_refused => Some("watchers_refused"),
        /// HTTP connections closed at once because `--max-http-connections` were open.
        http_connections_refused => Some("http_connections_refused"),
        /// TLS handshakes on the HTTP port that failed or timed out.
        tls_handshakes_failed => Some("tls_handshakes_failed"),
        /// Replicas updated by read repair.
        read_repairs => Some("read_repairs"),
        /// Client requests answered 503: quorum not met.
        quorum_failures => Some("quorum_failures"),
        /// Writes this node coordinated.
        writes_coordinated => Some("writes_coordinated"),
        /// Reads this node coordinated.
        reads_coordinated => Some("reads_coordinated"),
        /// Writes forwarded to the key's first live replica.
        writes_forwarded => Some("writes_forwarded"),
        /// Hinted copies accepted as a fallback.
        hints_stored => Some("hints_stored"),
        /// Hinted copies delivered to their home replica.
        hints_delivered => Some("hints_delivered"),
        /// Hinted copies refused (store full, window passed) or expired.
        hints_dropped => Some("hints_dropped"),
        /// Anti-entropy exchanges started.
        ae_rounds => Some("anti_entropy_rounds"),
        /// Keys sent or received (and changed) by anti-entropy.
        ae_keys_repaired => Some("anti_entropy_keys_repaired"),
        /// Bytes of anti-entropy and handoff requests sent (payload size).
        ae_bytes_sent => Some("anti_entropy_bytes_sent"),
        /// Bytes of answers to anti-entropy and handoff requests.
        ae_bytes_received => Some("anti_entropy_bytes_received"),
        /// Keys handed to new owners and dropped here.
        ae_keys_handed_off => Some("keys_handed_off"),
        /// Tombstones purged after the grace period.
        tombstones_purged => Some("tombstones_purged"),
        /// HTTP requests answered (`/metrics` counts them by route, method and status in
        /// `ringkv_http_requests_total`).
        http_requests => None::<&'static str>,
        /// Values dropped by the TTL sweep once expired.
        ttl_values_expired => Some("ttl_values_expired"),
        /// Value bytes freed by the TTL sweep.
        ttl_bytes_freed => Some("ttl_bytes_freed"),
        /// Writes refused because this node was over `--max-memory`: client writes and copies
        /// peers sent (`/metrics`: `ringkv_writes_refused_total{reason="memory"}`).
        writes_refused_memory => None::<&'static str>,
        /// Background copies (hint delivery, handoff, anti-entropy) paused because their
        /// target, or this node, was over its memory limit; they retry next round.
        copies_paused_memory => Some("copies_paused_for_memory"),
    }
    gossip {
        /// Gossip datagrams chitchat could not decode ([`crate::membership::garbage`]).
        gossip_datagrams_rejected = rejected => Some("gossip_datagrams_rejected"), Counter,
        /// Gossip datagrams dropped: forged, replayed or without the cluster secret
        /// ([`crate::seal`]).
        gossip_datagrams_refused = refused => Some("gossip_datagrams_refused"), Counter,
        /// Gossip bytes sent over UDP.
        gossip_bytes_sent = bytes_sent => Some("gossip_bytes_sent"), Counter,
        /// Gossip datagrams sent over UDP.
        gossip_datagrams_sent = datagrams_sent => Some("gossip_datagrams_sent"), Counter,
        /// Gossip bytes received over UDP.
        gossip_bytes_received = bytes_received => Some("gossip_bytes_received"), Counter,
        /// The largest gossip datagram sent so far, in bytes (chitchat caps them at 65,507).
        gossip_largest_datagram = largest_sent => Some("gossip_largest_datagram_bytes"), Gauge,
    }
}

/// A node's counters, its gossip counters and its request timings.
#[derive(Debug, Default)]
pub struct Stats {
    pub counters: Counters,
    /// This node's gossip traffic and refusals, shared with its membership.
    pub gossip: Arc<GossipCounters>,
    /// Where requests' time goes, by stage (`GET /admin/stages`).
    pub stages: crate::timings::Stages,
}

impl std::ops::Deref for Stats {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        &self.counters
    }
}

/// What the status page shows of one node: a wire type, defined with the protocol.
pub use crate::rpc::NodeStatus;

impl Stats {
    /// Adds one to `counter`.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
