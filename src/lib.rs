//! # ringkv
//!
//! A gossip-based, leaderless, Dynamo-style distributed in-memory key-value store.
//! Every node serves the same HTTP API; any node accepts any request.
//!
//! ## Architecture
//!
//! ```text
//!  client ──HTTP──▶ any node (api) ──RPC Coordinate──▶ coordinator = first live home replica
//!                                                       │ 1. mint a version locally (version, store)
//!                                                       │ 2. Replicate to the other live home replicas
//!                                                       │ 3. answer after W acks (quorum)
//!                                                       ▼
//!                       reads: the receiving node asks every live home replica (RPC Read),
//!                       answers after R replies, merges them, and repairs stale replicas
//!                       in the background (read repair)
//! ```
//!
//! The code is layered so that everything with a rule to get right is pure and tested on its
//! own, and I/O sits at the edges:
//!
//! | pure core | what it decides |
//! |---|---|
//! | [`ring`] | which N nodes hold a key: consistent hashing, virtual nodes, XXH3-64 |
//! | [`version`] | causality: dotted version vectors, siblings, contexts, tombstones |
//! | [`quorum`] | when a call has met (or can no longer meet) its quorum |
//! | [`codec`] | bytes ↔ RPC frames (length, CRC32, MessagePack) |
//!
//! | edge | what it does |
//! |---|---|
//! | [`membership`] | chitchat gossip: members, addresses, phi-accrual liveness, the [`membership::View`] |
//! | [`rpc`] | persistent multiplexed TCP connections between nodes; handshake, timeouts |
//! | [`coordinator`] | turns a client request into quorum calls; forwarding; read repair |
//! | [`api`] | the HTTP API (hyper 1); the one place HTTP status codes are chosen |
//! | [`store`] | the sharded in-memory map of key → non-dominated versions |
//! | [`node`] | starts all of the above, and shuts every task down in order |
//!
//! ## Versions and siblings
//!
//! Each write gets a *dot* `(actor, counter)` where the actor is `(node id, generation)` and
//! the generation is the node's start time in milliseconds. A write carries its *history*, the
//! exact set of dots it follows. A replica keeps the versions no other version's history
//! covers; several such versions are *siblings*. A client resolves siblings by writing with
//! the context (the union of the histories) it read. See [`version`] for the algebra and why
//! it keeps siblings bounded by the number of concurrent writers (riak_test's
//! sibling_explosion) and never discards a write of a node restarted empty (Riak's kv679).
//!
//! A write without a context is taken to have seen everything its coordinator holds, and a
//! key's writes are coordinated by its first live home replica, so sequential context-free
//! writes never create siblings in a healthy cluster.
//!
//! ## Guarantees
//!
//! - A write acknowledged with W = w is stored in memory on at least w home replicas.
//! - A read with R + W > N sees every write acknowledged before it started, as long as the
//!   replicas that acknowledged it are alive (in-memory data dies with its process).
//! - Concurrent writes are never silently dropped: they become siblings.
//! - Deletes write tombstones, which supersede exactly the versions their context covers.
//!
//! ## Caveats
//!
//! - In memory only: a replica that restarts comes back empty. Until anti-entropy and hinted
//!   handoff exist, it regains a key only through read repair or a new write.
//! - A failed write (503) may still have been applied on some replicas, as in every
//!   Dynamo-style store; a retry with the same context is safe.
//! - Membership is by gossip. A dead node keeps its place in the ring (its share of keys is
//!   served by the remaining replicas) until chitchat forgets it after the dead-node grace
//!   period (24 h by default). There is no rebalancing yet.
//! - Tombstones are never purged yet.
//! - Contexts are checksummed, not authenticated: a client can forge one for keys it may
//!   write anyway.

pub mod antientropy;
pub mod api;
pub mod codec;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod handoff;
pub mod hints;
pub mod membership;
pub mod merkle;
pub mod node;
pub mod quorum;
pub mod ring;
pub mod rpc;
pub mod stats;
pub mod store;
pub mod version;

pub use config::Config;
pub use error::{Error, Result};
pub use membership::GossipTransport;
pub use node::{Node, NodeHandle};
