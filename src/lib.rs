//! # ringkv
//!
//! A gossip-based, leaderless, Dynamo-style distributed key-value store, served from memory
//! and, with `--data-dir`, made durable by a write-ahead log and snapshots ([`durable`]).
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
//! | [`ring`] | which N nodes hold a key, spread over zones; sloppy-quorum fallbacks; ring segments; each node's share |
//! | [`version`] | causality: dotted version vectors, siblings, contexts, tombstones |
//! | [`quorum`] | when a call has met (or can no longer meet) its quorum |
//! | [`merkle`] | incremental Merkle trees and their diff |
//! | [`hints`] | the bounded store of hinted copies |
//! | [`codec`] | bytes ↔ RPC frames (length, CRC32, MessagePack) |
//! | [`seal`] | sealing and opening gossip datagrams with the secret (HMAC tag, replay window) |
//! | [`store::log`] | the change records the store and hints append, and the log seam the WAL and the simulator's disk implement |
//! | [`api::routes`] | the route table: each route's metric label, and per method its role and query parameters |
//! | [`compat`] | which protocol versions two builds share; a member's build from gossip; the ring's active feature gates |
//!
//! | edge | what it does |
//! |---|---|
//! | [`membership`] | the [`membership::View`], members and their [`membership::Status`]; `membership/chitchat.rs` adapts chitchat gossip (phi-accrual liveness), `membership/sealed_udp.rs` is its sealed socket |
//! | [`rpc`] | persistent multiplexed TCP connections between nodes; handshake, timeouts |
//! | [`coordinator`] | turns a client request into quorum calls; forwarding; read repair |
//! | [`hinted`] | delivers hints when their home replica is back |
//! | [`antientropy`] | the background round: Merkle exchanges (`sync`), ownership handoff (`handoff`), tombstone GC (`gc`), and the start-up catch-up (`catchup`) |
//! | [`api`] | the HTTP API (hyper 1): the route table, then the handlers (`api/kv.rs`, `api/cluster.rs`) |
//! | [`http`] | the HTTP protocol both the server and [`client`] speak: headers, the one place status codes are chosen, the error body |
//! | [`metrics`] | `GET /metrics` in the Prometheus / OpenMetrics text format |
//! | [`store`] | the sharded in-memory map of key → versions, with per-segment Merkle trees and key-order and expiry indexes; every change goes to the log when there is one |
//! | [`net`] | the network seam: how HTTP and RPC listen and connect ([`net::Tcp`] for real; tests cut links in their own network) |
//! | [`durable`] | the data dir: its lock, the write-ahead log with group commit, snapshots, recovery. (Besides it, only start-up reads files: [`access`], [`secret`] and [`tls`] load what their flags name.) |
//! | [`readiness`] | the named conditions of `GET /ready` (pure) |
//! | [`clock`] | the wall clock a node judges expiry by (skewable per node in tests); elapsed time goes through tokio |
//! | [`ttl`] | expiry by the node's clock, and the sweep that frees expired values |
//! | [`heap`] | the allocator's count of live bytes (jemalloc), and handing freed memory back to the OS |
//! | [`memory`] | the memory ceiling (`--max-memory`): the node's use against its limit, what it refuses |
//! | [`watch`] | watchers, who watches what across the ring, and the event fan-out; `watch/ws.rs` streams them to WebSockets |
//! | [`secret`] | the cluster secret (`--cluster-secret-file`): loading it (mode 600), and the keys derived from it |
//! | [`rpc::auth`] | RPC handshake proofs of the secret, and a tag on every frame |
//! | [`client::ring`] | key-aware routing for clients: the ring from `GET /cluster/ring`, each key's serving homes |
//! | [`access`] | API tokens and the role each route needs (pure); `api` asks it before routing |
//! | [`system`] | the handle every part shares: identity, config, membership view, RPC pool, counters, task set |
//! | [`replica`] | the copies a node holds (store and hints) and the RPCs that read and change them |
//! | [`lifecycle`] | the gossiped status, start-up, readiness and decommission |
//! | [`node`] | a node composed of its parts ([`system`], [`replica`], [`coordinator`], [`antientropy`], [`watch`], [`lifecycle`]) and the one RPC dispatch |
//! | [`server`] | [`NodeHandle`]: binds, loads the data dir, composes a node, starts every worker with the parts it uses, and shuts every task down in order |
//!
//! Modules depend only downward: the pure cores and the wire types ([`rpc`]) on nothing above
//! them; each part on [`system`] and the parts below it; [`node`] on the parts; [`api`] and
//! [`metrics`] on [`node`]; [`server`] on everything. No module imports one that imports it
//! back.
//!
//! Around the node: [`client::Client`] (an async client of the HTTP API; how a call reaches a
//! node and its retry policy are `client/transport.rs`, its settings `client/builder.rs`, what it
//! hands out `client/types.rs`, watches `client/watch.rs`), [`cli`]
//! (the `get`/`put`/`del`/`ls`/`watch`/`members`/`replicas`/`leave`/`backup`/`restore` verbs
//! of the binary), [`backup`] (copying a live ring to a checksummed file and loading it into
//! any ring, keeping siblings and causality; the file format is in its docs) and
//! [`bench`](mod@bench) (the `ringkv bench` load generator, whose lean HTTP client is
//! `bench/conn.rs`, and `--watch` for watch latency).
//! `GET /` on any node is a status page ([`api`]), fed by `GET /cluster/status`.
//!
//! ### The parts in brief
//!
//! - **Ring** ([`ring`]). Each node owns 256 tokens (virtual nodes) on a 64-bit circle, the
//!   XXH3-64 hashes of `"{id}#{i}"`. A key's replicas (its *homes*) are the first N distinct
//!   nodes clockwise from the key's hash, skipping a node whose zone (`--zone`) is already
//!   used while an unused zone remains: with N zones or more, one home per zone, so a zone
//!   down costs every key one home at most. Zone placement is a feature gate ([`compat`]):
//!   until every member supports it, all nodes place by position alone, as 0.1.0 does. The ring is built from membership, not liveness: a
//!   node that is down keeps its tokens (a failure is assumed temporary, as in Dynamo), and
//!   coordinators skip it.
//! - **Membership** ([`membership`]). chitchat gossip carries each node's addresses and
//!   status. A node's identity is its `--id` plus a generation (its start time in ms): after a
//!   restart the newest generation wins. Addresses given as host names (`--advertise-*`,
//!   binds) are resolved once at start; seeds given as names are waited for until one
//!   resolves, then chitchat resolves them again every minute.
//! - **Writes** ([`coordinator`]). The node that receives a write forwards it to the key's
//!   first live home, which mints the new version with its own actor (node id + generation),
//!   stores it, sends the key's versions to the other live homes, and answers after W
//!   acknowledgements (its own included). Replication to the rest continues after the answer.
//! - **Reads.** The receiving node asks R live homes, its own copy first, the others taking
//!   turns. A replica that fails is replaced by the next at once, and one that has not
//!   answered within 20 ms ([`coordinator::SPECULATIVE_READ_DELAY`]) gets company from the
//!   next. The answer is the merge of the replies, and the replicas asked whose copy differed
//!   are repaired (read repair). The turns rotate, so repeated reads compare every replica,
//!   and anti-entropy catches the rest. Asking R rather than all N (Cassandra's choice; Dynamo
//!   and Riak ask N) saves one or two round trips per read.
//! - **RPC** ([`rpc`], [`codec`]). One persistent TCP connection per peer, multiplexed by
//!   request id. Frames are a `u32` length, a `u32` CRC32 and a MessagePack payload, at most
//!   `--max-value-bytes` + 128 KiB ([`codec::FRAME_OVERHEAD`]). A connection opens with a
//!   handshake carrying the cluster id, the range of protocol versions the sender speaks
//!   (the connection uses the highest both speak: [`compat`]), node id and generation; a client
//!   refuses a server that is not the node and generation its view places at that address
//!   (a stopped node's port may have passed to another process, whose "nothing here" would
//!   count toward a read quorum). A corrupt, oversized or unknown
//!   frame closes that connection and is counted (`/admin/stats`); every request has a
//!   timeout.
//! - **Storage** ([`store`]). An in-memory map sharded 64 ways by key hash (contiguous hash
//!   ranges), each shard behind its own lock and ordered by hash, with one Merkle tree per
//!   ring segment it is a home of (a vnode arc cut at shard boundaries), updated on every
//!   change. The common
//!   key (one version, a value of at most 4 KiB) is packed into one allocation; see the
//!   store's memory layout.
//! - **Large values.** A PUT body is read straight into one buffer sized from
//!   `content-length`, and that buffer is what the store keeps and what GETs send, without
//!   further copies. While a value is being written it also costs one encoded RPC frame per
//!   remote replica on the coordinator and one decoded copy on each replica: transiently about
//!   (N + 1) × its size, on top of its size on each of the N replicas.
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
//!   hint that counts toward W once the homes alone can no longer make W (a fallback that
//!   answers first never stands in for a live home, so a read of R homes meets every write
//!   acknowledged by W, even while nodes disagree on who is up); `pw` demands home
//!   acknowledgements. Hints are bounded in count
//!   and bytes, refused for nodes dead longer than the hint window, and expire after the
//!   tombstone grace period.
//! - **Anti-entropy.** The ring is cut into segments (vnode arcs split at shard boundaries);
//!   each node keeps a Merkle tree per segment it is a home of (trees for the whole ring
//!   cost 1.4 s per membership change at 64 nodes), updated on every store change. Keys it
//!   holds outside its segments (after a ring change) are found by range and handed over. Each round, a
//!   node compares the segments it shares with one peer: one digest when identical (39 bytes
//!   per round measured at 1M keys), then only the differing subtrees, then only the differing
//!   keys, pushed and pulled in byte-bounded, rate-limited batches.
//! - **Membership changes.** The ring holds every member that is not leaving. When it changes,
//!   trees are rebuilt, new owners fill up by anti-entropy, and a node that no longer owns a
//!   segment pushes it to all of its homes and drops each key only after every home
//!   acknowledged it. `POST /cluster/leave` takes a node out of the ring at once; it exits
//!   when its store is empty. A *dead* node keeps its place in the ring (its data is served
//!   by the other replicas and fallbacks) for `--dead-node-grace-secs` (24 h by default);
//!   then the ring rebuilds without it. chitchat itself forgets any dead generation after
//!   10 s, so that a node restarted many times does not grow every gossip digest by one
//!   entry per restart: the memory of down nodes is a *roster*, one entry per node id, that
//!   every node gossips and merges ([`membership`]'s `roster`), so nodes that join later
//!   learn of a down node too.
//! - **Tombstone GC.** A key that has been only tombstones for the grace period is purged once
//!   every other ring member reports the same tombstones or nothing (a former owner may still
//!   hold an older value to hand over). A member that is unreachable, or still holds an older
//!   value, blocks the purge, so tombstones wait while any member is down. The node that
//!   purges has every member drop the same tombstone at once, so that a replica whose grace
//!   period began later does not hand it back to the others. A node never reuses a version
//!   counter, even for a key it purged: its store remembers the highest counter it minted.
//! - **Graceful stop.** On SIGTERM a node announces `stopping` (peers stop routing to it but
//!   keep it in the ring), drains its HTTP connections, pushes its hints and exits 0
//!   ([`server::NodeHandle::shutdown_gracefully`]).
//! - **Readiness** ([`readiness`]). `GET /ready` is a list of named conditions (`gossip`,
//!   `quorum`, `caught_up`, `announced`, `serving`); `/health` is liveness only. A started
//!   node announces the member status `joining` until it has heard a seed, sees a quorum and
//!   has run one anti-entropy exchange with every serving peer it shares data with; peers
//!   keep it in the ring and send it copies but route no client requests to it, so a node
//!   restarted empty never coordinates or answers a read from a partial store. Then it
//!   announces `alive`, and says ready once every serving peer routes to it. A stopping node
//!   refuses replica reads, so a peer with a stale view asks the next replica. The member
//!   statuses are `alive`, `joining`, `stopping`, `leaving` and `dead`.
//!
//!   Why: in a rolling restart, peers forwarded writes to a node that had just restarted
//!   while its own view did not yet count its peers alive, so it could not find W replicas
//!   (503 "quorum not met: 1 replicas answered, 2 required"); and a reader that had not yet
//!   heard a node was stopping asked it, and it had missed the writes meanwhile sent to
//!   fallbacks. `tests/rolling.rs` runs the scenario.
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
//!   homes. The cursor is the last key of the page, in base64url: a position in key order, so
//!   keys written or deleted meanwhile never shift later pages.
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
//!   a handoff), it returns the free heap to the OS ([`heap::release_free_memory`]).
//! - A memory ceiling ([`memory`], `--max-memory`, by default 75% of the cgroup's limit or
//!   the RAM): the allocator (jemalloc) counts the node's live bytes; over the limit a node
//!   refuses new values with 507 `memory_full` (a PUT from its `Content-Length`, before its
//!   body is read; a copy a peer sends; a write its replicas refused), keeps serving reads
//!   and takes tombstones within a 2% reserve. Hints, handoff and anti-entropy pause for a
//!   full node and resume once it has room. Each node gossips its use and limit
//!   ([`membership::KEY_MEMORY`]). `tests/memory_cgroup.rs` fills a ring in 200 MiB cgroups:
//!   refusals, no kill, no loss.
//! - Backup and restore ([`backup`]): `ringkv backup` reads each ring segment from its
//!   serving homes (`GET /admin/backup`, admin role) and merges them as a read of every
//!   reachable home does; `ringkv restore` verifies the whole file, then merges batches into
//!   the target ring's homes (`POST /admin/restore`, over the `ReplicateMany` RPC every
//!   build speaks). Versions keep their dots, so a restore is idempotent, merges by causality
//!   into a live ring, and old contexts still resolve siblings.
//!
//! ## Guarantees
//!
//! - A write acknowledged with W = w is stored on at least w replicas (homes, or fallbacks
//!   holding hints for dead homes; `pw` bounds how many must be homes): in memory, and with
//!   `--data-dir --fsync always` in each one's log on disk before it counts.
//! - A read with R + W > N sees every write acknowledged before it started, as long as the
//!   replicas that acknowledged it are alive or, with a data dir, restart from it (in-memory
//!   data dies with its process).
//! - Primary quorums (Riak's `pr` and `pw`): a read at `pr = r` after a write acknowledged
//!   at `pw = w`, with r + w > N, returns that write or a successor of it (the r homes that
//!   answer and the w homes that acknowledged share one). Default reads are sloppy: while a
//!   home is down, a fallback asked in its place answers with what it holds (often nothing)
//!   and counts toward R, so such a read can miss a write the homes hold; `pr` turns that
//!   into a 503 ([`quorum::ReadTracker`]).
//! - Concurrent writes are never silently dropped: they become siblings.
//! - With at least N zones, a whole zone down leaves every key N − 1 of its homes
//!   (`tests/zones.rs`: six nodes in three zones, one zone killed, every key read at r=2 and
//!   every write at `pw=2` served).
//! - Replicas converge without client reads: hints, anti-entropy and ownership handoff.
//! - A delete is never undone by a replica that missed it: tombstones outlive the purge check.
//!
//! - Mixed builds: every build interoperates with the previous release (RPC, gossip, data
//!   dir), so a ring is upgraded, or rolled back, one node at a time ([`compat`];
//!   `tests/upgrade.rs` runs it against the previous release's binary, and
//!   `tests/protocol.rs` decodes frames that release recorded).
//!
//! ## Caveats
//!
//! - A placement change (the `zones` gate opening on a ring whose nodes name zones, a node
//!   restarted in another zone) moves keys to new homes by ownership handoff, as a join does,
//!   but no node waits in `joining` meanwhile: until a key has reached its new homes, a read
//!   at R that asks only new homes can miss it (404), and a blind write there becomes a
//!   sibling of the moved value once it arrives (nothing is lost). Start a ring in its zones, or
//!   change zones one node at a time and wait for anti-entropy to settle.
//! - Feature gates follow the current view: a node of an older build that joins a ring
//!   closes the gates its build lacks again, and the newer nodes go back to the old
//!   behaviour. Nothing stops an older build from joining. A member's features are unknown
//!   while only the roster remembers it (chitchat forgot its state): it then counts as
//!   supporting none, which keeps gates shut, the safe side.
//! - A copy held only as a hint lives at most the tombstone grace (a later hint could bring
//!   back a value whose delete was purged meanwhile). A write acknowledged by its coordinator
//!   and one fallback, whose coordinator then dies in memory while the homes stay
//!   unreachable for longer than the grace, is lost. The simulator found this with a 1 s
//!   grace; the default is an hour. `pw` (home acknowledgements) or a data dir closes it.
//! - Without `--data-dir`, in memory only: a replica that restarts comes back empty and
//!   refills from its peers (seconds for a million keys on loopback) before it says ready.
//!   With it ([`durable`]), `--fsync always` costs about half the PUT throughput on the
//!   2-core dev VM (0.41–0.48× of in memory, CPU-bound), `periodic` about 7%.
//! - A data dir's hints and tombstone grace clocks restart their ages when the node loads
//!   them: a tombstone is then kept longer (safe), and a hint could outlive a purge on its
//!   home by up to one grace period (needs a restart and a purge inside the hint window).
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
//! - Security is opt-in. Without `--cluster-secret-file` anyone who reaches the RPC or gossip
//!   port can join the ring; without `--api-tokens` anyone who reaches the HTTP port can
//!   read, write and decommission. With a secret, node-to-node traffic is authenticated but
//!   not encrypted. TLS (`--tls-cert`) covers the HTTP port only. Connections, watchers,
//!   header and body times, and RPC requests in flight per peer are capped (see the README's
//!   "Securing a ring").
//! - Contexts are checksummed, not authenticated: a client can forge one for keys it may
//!   write anyway.
//! - Expiry is wall-clock time: nodes with skewed clocks disagree about when a value
//!   expires by the skew.
//! - Conditional writes (`if_absent`, `if-match`) are best-effort under partitions.
//! - A backup is fuzzy: each segment is as it was when read, not one instant of the ring. A
//!   write held only as a hint (all its homes down) is missed until handoff delivers it, and
//!   a ring that changes shape during a backup may be read from homes that have not yet
//!   received a moved key. A restore needs W homes of every key up (it retries a batch, then
//!   fails); it keeps the backed-up versions' writer names, so contexts grow by those actors.
//!   A restore of an old file brings back keys deleted since, once their tombstones are
//!   purged (before that, the tombstone wins).
//! - The memory limit is on the allocator's live bytes, read at most 10 ms late
//!   ([`memory::REFRESH`]); RSS is larger by the allocator's spare pages, stacks and the
//!   binary, which is why the default leaves a quarter of the cgroup free. A write may be
//!   refused by one replica and taken by others (it then counts as a refused copy, like a
//!   dead replica's); a full ring answers 507 until memory is freed: ringkv refuses, it
//!   never evicts. Nodes sharing one process (`ringkv dev`) share one count, split evenly.
//! - Memory: a key with one version and a value of at most 4 KiB costs about 120 bytes per
//!   replica beyond its key and value (one packed allocation, a 16-byte handle in the
//!   hash-ordered map, a 24-byte slot in the key-order index; `tests/memory.rs` measures it).
//!   Siblings, values over 4 KiB, keys over 22 bytes, expiring keys and tombstones cost more
//!   (see [`store`]). Reads copy packed values (≤ 4 KiB) out of the store.
//!
//! ## Testing
//!
//! `cargo test` runs every level; a test that needs a tool the machine lacks shows as
//! `ignored`, never as `ok`.
//!
//! - Unit tests of the pure cores live in their modules.
//! - In-process clusters (`tests/common`) run several nodes in one test, with gossip over
//!   chitchat's in-memory transport and RPC over loopback TCP on port 0. They can kill,
//!   restart (empty, new generation), partition (both ways or one way), add and decommission
//!   nodes. `tests/convergence.rs` covers hinted handoff, anti-entropy, joins, leaves and
//!   tombstone GC. `tests/fault.rs` is the seeded randomized fault test on the real stack
//!   (chitchat, TCP, time, two threads), with the faults the simulator does not play (two
//!   nodes killed at once, a kill with a partition), judged by the simulator's checker:
//!   `RINGKV_FAULT_SEEDS=1,2,3` picks seeds, `RINGKV_SOAK_SECS=600` runs a longer soak.
//!   Every test speaks HTTP through one raw client, `tests/common/http.rs`.
//! - `tests/simulation.rs` is the deterministic simulator (`tests/sim`): a five-node ring
//!   and three HTTP clients on one thread under turmoil's simulated TCP, UDP and time, with
//!   seeded faults (kill, then restart empty or from a simulated disk behind the
//!   [`store::Log`] seam, which loses what was not synced; minority, majority, one-way
//!   and flapping partitions, flaky and slow links, clock skew of up to 2 s). The nodes run the real code
//!   with three seams swapped: the network ([`net`]), membership
//!   ([`membership::GossipTransport::Custom`], a heartbeat protocol, because chitchat seeds its
//!   peer choice from the OS and iterates `HashMap`s with random state) and the wall clock
//!   ([`clock::Clock::from_source`]), and half the runs give nodes a disk
//!   ([`store::Disk`]). One seed replays one run exactly: every delivered
//!   message is hashed, and a test runs seeds twice and compares. A checker judges each
//!   history against the healed ring: no lost acknowledged write, no phantom, no resurrected
//!   delete, siblings only of concurrent writes, converged replicas, drained hints, expired
//!   TTLs; and while it ran, that every read at `pr = r` after a write acknowledged at
//!   `pw = w` (r + w > N) returned it or a successor. `cargo test` runs 500 seeds (about 25 s on 2 cores); `RINGKV_SIM_SEEDS=N` runs
//!   more, and a failing seed prints the one command that replays it with a full trace.
//!   What this asks of the product: every `select!` is `biased;`, hints, anti-entropy
//!   batches, tombstone GC and failed calls iterate in a fixed order, request ids are per
//!   node, and the HTTP `Date` header is off under simulated time.
//! - `tests/process.rs` runs real `ringkv serve` processes.
//! - `tests/memory.rs` measures what the store costs per key (see [`store`]).
//! - `tests/status_page.rs` renders the status page in headless Chromium, so it needs
//!   Chromium.
//! - The README's Rust examples are compiled as doctests (`cargo test --doc`), so they cannot
//!   drift from the API.
//! - `compose/chaos.sh` is the container chaos test (`compose/README.md`). It needs a Docker
//!   engine.
//!
//! `.ci/run` is what CI runs: `cargo fmt --check`, `cargo clippy --all-targets -- -D
//! warnings` (which checks the benches too), `cargo test`, the ignored tests with their tools
//! (it installs Chromium and python3), the upgrade test against the previous release (built as
//! the chaos test's static binary is, sharing its dependencies), then the chaos test. It does
//! not install Docker: the CI machine is expected to have an engine.
//!
//! Benchmarks: `cargo bench --bench quorum` starts five nodes in one process (gossip in
//! memory, RPC and HTTP over loopback TCP) and measures one request at a time entering at
//! node 0: PUT at w=1,2,3 and GET at r=1,2,3, through the coordinator API
//! (`coordinator/put`, `coordinator/get`) and through HTTP (`http/put`, `http/get`). Each
//! takes about a minute; arguments after `--` filter by name
//! (`cargo bench --bench quorum -- http/get`). `cargo bench --bench micro` measures ring
//! lookup, version merge and write, contexts, RPC frames, Merkle trees and the store.
//! Criterion keeps the last run in `target/criterion` and reports the change against it. CI
//! builds the benches but does not run them.
//!
//! ## Measurements
//!
//! The figures the docs quote, with how each was taken. They come from the development
//! machine, a 2-core VM where the nodes (and the load generator, if any) share the two cores,
//! unless they say otherwise. On it, figures vary by up to 2× between runs. The README keeps
//! one short table of them.
//!
//! - **Build times.** The first `cargo run --release -- dev` compiles for about 4–5 minutes
//!   (4.5 min in one user's run). The first static build for compose (`compose/up.sh`) takes
//!   about 3–4 minutes (3 min 36 s in one user's run).
//! - **Readiness.** Before `/ready` existed, `/health` answered within 23–34 ms of a
//!   `ringkv dev` start, while every node seeing five alive members took 0.44–0.65 s, and
//!   writes failed with 503 for the first 0.25–0.5 s (5 launches, issue 11). That gap is what
//!   `/ready` and the `joining` status close.
//! - **Throughput**, `ringkv bench --duration 10s` against `ringkv dev` (closed loop, 16
//!   connections to node 1, 10,000 keys, 100-byte values, 50% reads): 8,685 ops/s in a user's
//!   run on the 2-core VM. The sample printed when the load generator was written (commit
//!   c16ba78, before the packed store; the machine was not recorded) showed 21,725 ops/s:
//!
//!   ```text
//!   ringkv bench: closed loop, 16 connections over 1 node, 10.00 s
//!     10000 keys (uniform), 100-byte values, 50% reads
//!
//!                 ops       ops/s    p50 ms    p90 ms    p99 ms  p99.9 ms    max ms
//!     all      217294     21725.5     0.689     1.092     1.465     2.385     8.935
//!     get      108666     10864.6     0.583     0.837     1.121     1.985     8.719
//!     put      108628     10860.8     0.851     1.204     1.557     2.649     8.935
//!
//!     GETs not found 9858, with siblings 0
//!     errors: none
//!   ```
//! - **Threads of `ringkv dev`.** Each node runs on a thread of its own, as `serve --threads 1`
//!   would: nodes talk over loopback TCP anyway, and on 2 cores that served about 30% more
//!   quorum requests than one shared work-stealing runtime, which pays for waking its idle
//!   threads across cores.
//! - **Watch latency**, `ringkv bench --watch` (writes through four nodes of `ringkv dev`, the
//!   watcher on the fifth, 200 writes/s): from each PUT's response to its event, p50 ≈ 0
//!   (most events arrive before the response), p99 0.7–1.9 ms, none missed.
//! - **Memory per key**: 123 bytes per key and replica beyond the key and value for the store
//!   alone (`cargo test --release --test memory -- --nocapture`), 222 bytes of RSS per replica
//!   copy in a `ringkv dev` ring; see [`store`].
//! - **Memory after expiry**: RSS back from 157 MB to 59 MB within 50 s once 100,000 expired
//!   keys' tombstones were purged; see [`ttl`].
//! - **Anti-entropy.** One round between identical replicas costs 39 bytes at a million keys
//!   (`RINGKV_AE_KEYS=1000000 cargo test --release --test convergence one_round --
//!   --nocapture`). A node restarted empty refilled 600k keys from its peers in about 10 s on
//!   loopback.
//! - **Failure detection.** With the defaults, a node killed with SIGKILL is reported dead by
//!   the others in about 1–2 s on loopback. In containers (`compose/chaos.sh`, 13 runs) it took
//!   0.6–1.0 s after a SIGKILL and 1.0–1.2 s after a network cut; `compose/README.md` has the
//!   chaos test's whole table.
//! - **Request spans** at info level cost 10–15% of a quorum request's CPU, which is why the
//!   `request` span is at debug level (see Operations above).

pub mod access;
pub mod antientropy;
pub mod api;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod client;
/// jemalloc, whose statistics the memory ceiling reads ([`memory`], [`heap`]).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod clock;
pub mod codec;
pub mod compat;
pub mod config;
pub mod coordinator;
pub mod durable;
pub mod error;
pub mod heap;
pub mod hinted;
pub mod hints;
pub mod http;
pub mod lifecycle;
pub mod membership;
pub mod memory;
pub mod merkle;
pub mod metrics;
pub mod net;
pub mod node;
pub mod quorum;
pub mod readiness;
pub mod replica;
pub mod ring;
pub mod rpc;
pub mod seal;
pub mod secret;
pub mod server;
pub mod stats;
pub mod store;
pub mod system;
pub mod timings;
pub mod tls;
pub mod ttl;
pub mod version;
pub mod watch;

/// Locks a std mutex, ignoring poisoning: every critical section in ringkv is a single map
/// update that leaves the data consistent even if a panic interrupts the caller afterwards.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub use client::Client;
pub use config::Config;
pub use error::{Error, Result};
pub use membership::GossipTransport;
pub use node::Node;
pub use server::NodeHandle;

/// The README's Rust examples, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
