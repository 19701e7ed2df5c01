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
//!                                                       │ 2. Replicate to the live homes, and to a
//!                                                       │    fallback (with a hint) per dead home
//!                                                       │ 3. answer after W acks (quorum)
//!                                                       ▼
//!      reads: the receiving node asks R live homes (its own copy first; fallbacks only for
//!      missing homes; the next one if one fails or is slow), merges the replies, and
//!      repairs the stale ones among them (read repair)
//!
//!      background, per node: hinted handoff (hints → their homes once alive), Merkle
//!      anti-entropy with one peer per round, ownership handoff after ring changes,
//!      tombstone GC
//! ```
//!
//! The code is layered so that everything with a rule to get right is pure and tested on its
//! own, and I/O sits at the edges:
//!
//! | pure core | what it decides |
//! |---|---|
//! | [`ring`] | which N nodes hold a key; sloppy-quorum fallbacks; ring segments |
//! | [`version`] | causality: dotted version vectors, siblings, contexts, tombstones |
//! | [`quorum`] | when a call has met (or can no longer meet) its quorum |
//! | [`merkle`] | incremental Merkle trees and their diff |
//! | [`hints`] | the bounded store of hinted copies |
//! | [`codec`] | bytes ↔ RPC frames (length, CRC32, MessagePack) |
//!
//! | edge | what it does |
//! |---|---|
//! | [`membership`] | chitchat gossip: members, addresses, phi-accrual liveness, the [`membership::View`] |
//! | [`rpc`] | persistent multiplexed TCP connections between nodes; handshake, timeouts |
//! | [`coordinator`] | turns a client request into quorum calls; forwarding; read repair |
//! | [`handoff`] | delivers hints when their home replica is back |
//! | [`antientropy`] | Merkle exchanges, ownership handoff, tombstone GC |
//! | [`api`] | the HTTP API (hyper 1); the one place HTTP status codes are chosen |
//! | [`metrics`] | `GET /metrics` in the Prometheus / OpenMetrics text format |
//! | [`store`] | the sharded in-memory map of key → versions, with per-segment Merkle trees and key-order and expiry indexes |
//! | [`ttl`] | the clock expiry is judged by, and the sweep that frees expired values |
//! | [`watch`] | watchers, who watches what across the ring, and the event fan-out |
//! | [`node`] | starts all of the above, decommissions, and shuts every task down in order |
//!
//! Around the node: [`client::Client`] (an async client of the HTTP API), [`cli`] (the
//! `get`/`put`/`del`/`ls`/`watch`/`members`/`replicas`/`leave` verbs of the binary) and
//! [`bench`](mod@bench) (the `ringkv bench` load generator, and `--watch` for watch latency).
//! `GET /` on any node is a status page ([`api`]), fed by `GET /cluster/status`.
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
//! ## Convergence
//!
//! - **Sloppy quorum.** A dead home replica's copy goes to the next live node clockwise, as a
//!   hint that counts toward W; `pw` demands home acknowledgements. Hints are bounded in count
//!   and bytes, refused for nodes dead longer than the hint window, and expire after the
//!   tombstone grace period.
//! - **Anti-entropy.** The ring is cut into segments (vnode arcs split at shard boundaries);
//!   each node keeps a Merkle tree per segment, updated on every store change. Each round, a
//!   node compares the segments it shares with one peer: one digest when identical (39 bytes
//!   per round measured at 1M keys), then only the differing subtrees, then only the differing
//!   keys, pushed and pulled in byte-bounded, rate-limited batches.
//! - **Membership changes.** The ring holds every member that is not leaving. When it changes,
//!   trees are rebuilt, new owners fill up by anti-entropy, and a node that no longer owns a
//!   segment pushes it to all of its homes and drops each key only after every home
//!   acknowledged it. `POST /cluster/leave` takes a node out of the ring at once; it exits
//!   when its store is empty. A *dead* node keeps its place in the ring (its data is served
//!   by the other replicas and fallbacks) until chitchat forgets it after
//!   `--dead-node-grace-secs` (24 h by default); then the ring rebuilds without it.
//! - **Tombstone GC.** A key that has been only tombstones for the grace period is purged once
//!   every other ring member reports the same tombstones or nothing (a former owner may still
//!   hold an older value to hand over). A node never reuses a version counter, even for a key
//!   it purged: its store remembers the highest counter it minted.
//! - **Graceful stop.** On SIGTERM a node announces `stopping` (peers stop routing to it but
//!   keep it in the ring), drains its HTTP connections, pushes its hints and exits 0
//!   ([`node::NodeHandle::shutdown_gracefully`]).
//!
//! ## TTL, listing, watches, conditional writes
//!
//! - **TTL.** A write may carry an absolute expiry (the receiving node's clock + TTL). Reads
//!   filter by the answering node's clock, so expiry is immediate everywhere (modulo clock
//!   skew, see [`ttl`]); each replica's sweep then drops the value and keeps the version as a
//!   tombstone, which [`version::VersionSet::fingerprint`] hashes exactly as before, so expiry
//!   never causes anti-entropy traffic.
//! - **Listing.** Every store keeps a key-ordered index; a listing asks every live node for
//!   its next `limit` keys, merges them per key with the version algebra and keeps the live
//!   ones up to the point every answer covers. Every range must be covered by R answering
//!   homes.
//! - **Watches.** The coordinator of a write (the sweep's first live home, for an expiry)
//!   sends one event to every node with a matching watcher, once the write met its quorum;
//!   at most once, while connected; a slow watcher gets `lagged` instead of blocking writes
//!   (see [`watch`]).
//! - **Conditional writes** are checked by the key's first live home after a quorum read and
//!   applied under the same lock: exactly one of racing conditional writes wins in a healthy
//!   ring, best-effort under partitions (both survive as siblings).
//!
//! ## Operations
//!
//! - `GET /metrics` (Prometheus / OpenMetrics), `GET /` (a status page drawing the ring,
//!   fed by `GET /cluster/status`), `GET /admin/stats`.
//! - Every HTTP request has an id (`x-request-id`, given or made up, and echoed); every RPC
//!   it causes carries the id and the coordinating node ([`rpc::Trace`]). At debug level
//!   (`RUST_LOG=ringkv=debug`) the request runs in a `request` span with that id and the
//!   replicas log their part under it. The span is debug, not info, because building and
//!   entering it on every request cost 10-15% of a quorum request's CPU.
//! - A forwarded call that times out resets its connection: a request the peer has not
//!   received is discarded rather than delivered late, when a cut link heals.
//! - Once a node's store has shrunk by 16 MiB and settled (a TTL sweep and tombstone purge,
//!   a handoff), it returns the free heap to the OS ([`ttl::release_free_memory`]).
//!
//! ## Guarantees
//!
//! - A write acknowledged with W = w is stored in memory on at least w replicas (homes, or
//!   fallbacks holding hints for dead homes; `pw` bounds how many must be homes).
//! - A read with R + W > N sees every write acknowledged before it started, as long as the
//!   replicas that acknowledged it are alive (in-memory data dies with its process).
//! - Concurrent writes are never silently dropped: they become siblings.
//! - Replicas converge without client reads: hints, anti-entropy and ownership handoff.
//! - A delete is never undone by a replica that missed it: tombstones outlive the purge check.
//!
//! ## Caveats
//!
//! - In memory only: a replica that restarts comes back empty and refills from its peers
//!   (seconds for a million keys on loopback).
//! - A failed write (503) may still have been applied on some replicas, as in every
//!   Dynamo-style store; a retry with the same context is safe.
//! - The failure detector is tuned for fast detection (about 1–2 s). On a saturated machine
//!   it can briefly suspect a live node; writes then go to fallbacks as hints, which is safe.
//! - A node that lost ownership of keys and stays cut off from the new owners for longer than
//!   the tombstone grace period could hand back a value whose tombstone was purged meanwhile
//!   (Cassandra's `gc_grace_seconds` contract): keep the grace period longer than partitions.
//! - Writes need at least one live home replica (only homes mint versions).
//! - A node that handed a key over and later owns it again claims, in its next write's
//!   history, its own earlier versions of that key, which it no longer holds: a concurrent
//!   sibling it wrote before the handover can be superseded without a client having seen it.
//!   This needs the ring to change twice around one key; the fix is a new actor per
//!   ownership epoch (not done).
//! - Tombstones wait while any member is down (the purge asks every member).
//! - Contexts are checksummed, not authenticated: a client can forge one for keys it may
//!   write anyway.
//! - Expiry is wall-clock time: nodes with skewed clocks disagree about when a value
//!   expires by the skew.
//! - Conditional writes (`if_absent`, `if-match`) are best-effort under partitions.
//! - Memory: a key with one version and a value of at most 4 KiB costs about 120 bytes per
//!   replica beyond its key and value (one packed allocation, a 16-byte handle in the
//!   hash-ordered map, a 24-byte slot in the key-order index; `tests/memory.rs` measures it).
//!   Siblings, values over 4 KiB, keys over 22 bytes, expiring keys and tombstones cost more
//!   (see [`store`]). Reads copy packed values (≤ 4 KiB) out of the store.

pub mod antientropy;
pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod handoff;
pub mod hints;
pub mod membership;
pub mod merkle;
pub mod metrics;
pub mod node;
pub mod quorum;
pub mod ring;
pub mod rpc;
pub mod stats;
pub mod store;
pub mod ttl;
pub mod version;
pub mod watch;

pub use client::Client;
pub use config::Config;
pub use error::{Error, Result};
pub use membership::GossipTransport;
pub use node::{Node, NodeHandle};
