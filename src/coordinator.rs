//! The coordinator: how one node turns a client PUT, GET or DELETE into quorum calls.
//!
//! **Where copies go.** A key's home replicas are the first N distinct nodes clockwise from
//! its hash. Under a sloppy quorum (Dynamo §4.6) each *dead* home is replaced by the next live
//! node past the homes, which keeps the copy as a hint for that home
//! ([`crate::ring::sloppy_targets`], [`crate::hints`]). Hinted copies count toward W once the
//! live homes alone can no longer make W ([`crate::quorum::WriteTracker`]: a read of R homes
//! must meet the write); `pw` (Riak's primary write quorum) demands that at least that many
//! acknowledgements come from home replicas.
//!
//! **Writes.** A write is coordinated by the first *live home* replica of the key. Any other
//! node forwards it there (one RPC hop). The coordinator applies the write to its own store
//! first, which mints the new version's dot from its own actor, then sends the key's
//! resulting versions to the other targets and answers after W acknowledgements (its own
//! included). Replication to the remaining targets carries on in the background after the
//! answer. Because one node mints all dots for a key while it is up, sequential writes
//! without a context never make siblings. If no home replica is alive the write fails (503):
//! only a home replica may mint versions, see [`crate::version`].
//!
//! **Reads.** A read asks R replicas, not all N (Cassandra's choice; Dynamo and Riak ask all
//! N): the coordinator's own copy first if it is a home, then the other live homes, taking
//! turns, and fallbacks only when fewer than R homes are alive (they may hold hinted copies).
//! R + W > N still puts every acknowledged write on one of them, and a read costs one or two
//! round trips fewer. A replica that fails is replaced by the next candidate at once, one that
//! is slow after [`SPECULATIVE_READ_DELAY`]. The answer is the merge of the R replies; every
//! *home* replica asked whose versions differ from it is sent the merge (read repair). Homes
//! that were not asked are compared on later reads (the turns rotate) and by anti-entropy.
//!
//! **Conditional writes.** A write with a [`Condition`] is checked by the coordinator against
//! its own copy, after it merged in a quorum read (R replicas), and applied under the same
//! shard lock as the check. Since every write to a key goes through the key's first live home,
//! two conditional writes racing in a healthy cluster meet on one node and exactly one wins.
//! The check is best-effort, as Riak's conditional requests are: when nodes disagree on who is
//! first (a partition, a node just declared dead or back), two coordinators can each see the
//! condition hold, and both writes then survive as siblings.
//!
//! **Listing.** A listing asks every live node for its next keys in key order, merges the
//! answers per key with the version algebra (so a replica that missed a delete cannot bring a
//! key back), and keeps only what is live at the coordinator's clock. It requires that every
//! ring range was covered by at least R answering home replicas. A node's answer holds at most
//! `limit` keys, so a page costs bounded memory however many keys match.
//!
//! **Failures.** Dead replicas (per gossip) are not contacted. A replica that fails or times
//! out counts against the quorum, and the call ends as soon as the quorum can no longer be
//! met. A failed write may still have been applied on some replicas, as in every Dynamo-style
//! store: the client sees 503 and may retry with the same context.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::membership::View;
use crate::memory::Need;
use crate::quorum::{QuorumStatus, ReadTracker, WriteTracker};
use crate::replica::Replica;
use crate::ring::{NodeId, Target, sloppy_targets};
use crate::rpc::{Request, Response, WriteQuorum};
use crate::stats::Stats;
use crate::store::{ListPage, WriteOp};
use crate::system::System;
use crate::timings::Stage;
use crate::version::{Condition, Context, VersionSet};
use crate::watch::Watches;
use crate::watch::{Event, Op};

// A client write crosses the wire when it is forwarded to its coordinator: it is defined with
// the protocol.
pub use crate::rpc::Write;

/// How long a GET waits for the R replicas it asked before it also asks the next candidate.
/// Far above a healthy replica's answer (well under a millisecond on a LAN), so it costs
/// nothing in the common case, and far below the RPC timeout, so one slow replica (a full
/// socket buffer, a paused process) does not hold reads for seconds.
pub const SPECULATIVE_READ_DELAY: Duration = Duration::from_millis(20);

/// The coordinator of one node: runs the client requests this node receives.
pub struct Coordinator {
    system: Arc<System>,
    replica: Arc<Replica>,
    /// Acknowledged writes are announced to watchers.
    watches: Arc<Watches>,
    /// Turns of the remote homes a GET asks (see [`Coordinator::get`]).
    read_turn: AtomicUsize,
}

/// Where a copy lives: this node, or a peer's RPC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Local,
    Remote(SocketAddr),
}

/// One destination of a quorum call.
#[derive(Debug, Clone)]
struct Dest {
    place: Place,
    /// The home this copy stands in for, if it is a fallback.
    hint_for: Option<NodeId>,
}

impl Dest {
    fn is_home(&self) -> bool {
        self.hint_for.is_none()
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Live keys, sorted.
    pub keys: Vec<Bytes>,
    /// Where the next page starts (exclusive), if keys may follow.
    pub next: Option<Bytes>,
}

impl Coordinator {
    pub(crate) fn new(system: Arc<System>, replica: Arc<Replica>, watches: Arc<Watches>) -> Self {
        Coordinator {
            system,
            replica,
            watches,
            read_turn: AtomicUsize::new(0),
        }
    }

    /// The sloppy-quorum destinations of `key` in `view`, resolved to addresses, taking the
    /// nodes for which `usable` holds as alive.
    fn destinations(&self, view: &View, key: &[u8], usable: impl Fn(&NodeId) -> bool) -> Vec<Dest> {
        let walk = view.ring.preference_list(key, view.ring.nodes().len());
        let same_zone = |a: &NodeId, b: &NodeId| view.ring.same_zone(a, b);
        sloppy_targets(&walk, self.system.config.replicas, usable, same_zone)
            .into_iter()
            .filter_map(|Target { node, hint_for }| {
                let place = if node == self.system.id {
                    Place::Local
                } else {
                    Place::Remote(view.member(&node)?.rpc?)
                };
                Some(Dest { place, hint_for })
            })
            .collect()
    }

    /// Writes `value` (`None` deletes) under `key`, after `context` if given, waiting for `w`
    /// acknowledgements (default W) of which `pw` (default 0) from home replicas. Returns the
    /// context of the new version.
    pub async fn put(
        self: &Arc<Self>,
        key: Bytes,
        value: Option<Bytes>,
        context: Option<Context>,
        w: Option<usize>,
        pw: Option<usize>,
    ) -> Result<Context> {
        self.write(Write {
            key,
            value,
            context,
            w,
            pw,
            ..Write::default()
        })
        .await
    }

    /// Runs a client write (see [`Write`]): on this node if it is the key's first live home,
    /// else forwarded there. Returns the context of the new version.
    pub async fn write(self: &Arc<Self>, write: Write) -> Result<Context> {
        let quorum = WriteQuorum {
            w: write.w.unwrap_or(self.system.config.write_quorum),
            pw: write.pw.unwrap_or(0),
        };
        self.system.check_write_quorum(quorum)?;
        let view = self.system.view();
        let homes = view
            .ring
            .preference_list(&write.key, self.system.config.replicas);
        // Serving homes first; joining ones (up, still catching up) only when no home serves,
        // which happens only while a whole ring starts: better they coordinate than nobody.
        let serving = homes.iter().filter(|id| view.is_alive(id));
        let joining = homes
            .iter()
            .filter(|id| (**id == self.system.id || view.is_up(id)) && !view.is_alive(id));
        for id in serving.chain(joining) {
            if *id == self.system.id {
                return self.coordinate_write(write, quorum).await;
            }
            let Some(addr) = view.member(id).and_then(|m| m.rpc) else {
                continue;
            };
            Stats::incr(&self.system.stats.writes_forwarded);
            let req = Request::Coordinate {
                write: write.clone(),
                quorum,
            };
            // The coordinator itself waits up to one RPC timeout for its replicas.
            let timeout = self.system.pool.timeout() * 2;
            let started = std::time::Instant::now();
            let answer = self.system.pool.call_with_timeout(addr, req, timeout).await;
            self.system.stats.stages.record(Stage::Forward, started);
            match answer {
                Ok(Response::Written(ctx)) => return Ok(ctx),
                Ok(other) => {
                    return Err(Error::Protocol(format!(
                        "unexpected answer to a forwarded write: {other:?}"
                    )));
                }
                // Never reached the peer: safe to try the next replica.
                Err(Error::Unreachable(err)) => {
                    debug!(node = %id, %err, "coordinator unreachable, trying the next replica");
                }
                // Timeouts and broken connections are not retried elsewhere: the write may
                // have been applied, and a second coordinator would turn one client write
                // into two siblings.
                Err(err) => return Err(err),
            }
        }
        Stats::incr(&self.system.stats.quorum_failures);
        Err(Error::Unavailable {
            replied: 0,
            required: quorum.w,
        })
    }

    /// Serves [`Request::Coordinate`]: a peer forwarded this client write because this node
    /// is the key's first live home in its view. It runs here and is never forwarded again,
    /// inside the request's trace with this node named as coordinator.
    pub(crate) async fn serve_coordinate(
        self: &Arc<Self>,
        write: Write,
        quorum: WriteQuorum,
    ) -> Result<Response> {
        self.system.check_write_quorum(quorum)?;
        // This node coordinates: the replicas' logs name it.
        let trace = crate::rpc::current_trace().map(|t| crate::rpc::Trace {
            coordinator: self.system.actor.node.clone(),
            ..t
        });
        let run = self.coordinate_write(write, quorum);
        match trace {
            Some(t) => crate::rpc::TRACE.scope(t, run).await,
            None => run.await,
        }
        .map(Response::Written)
    }

    /// Coordinates a write on this node: mint the version locally, replicate, count acks.
    pub(crate) async fn coordinate_write(
        self: &Arc<Self>,
        write: Write,
        quorum: WriteQuorum,
    ) -> Result<Context> {
        Stats::incr(&self.system.stats.writes_coordinated);
        let Write {
            key,
            value,
            meta,
            context,
            condition,
            ..
        } = write;
        // A node over its memory limit mints no new value (a delete's tombstone frees one).
        let need = if value.is_some() {
            Need::Values
        } else {
            Need::Tombstones
        };
        self.system.memory.admit(0, need)?;
        // Only this node mints this actor's counters: a context claiming one it never minted
        // is forged or corrupt, and would push every later counter out of range.
        let claims_unminted =
            |ctx: &Context| ctx.max_counter(&self.system.actor) > self.replica.store.minted();
        let if_match = match &condition {
            Condition::IfMatch(ctx) => Some(ctx),
            _ => None,
        };
        if context.iter().chain(if_match).any(claims_unminted) {
            return Err(Error::invalid(
                "malformed context: it names versions this node never wrote",
            ));
        }
        if condition != Condition::None {
            // Check the condition against what a quorum holds, not only this replica's copy
            // (it may have just restarted empty, or missed a write).
            let read = self.get(key.clone(), None).await?;
            self.replica.store.merge_owned(&key, read);
        }
        let view = self.system.view();
        // Copies go to joining nodes too: they take writes while they catch up.
        let dests = self.destinations(&view, &key, |id| *id == self.system.id || view.is_up(id));
        let op = WriteOp {
            context: context.as_ref().or(if_match),
            value,
            meta,
            condition: &condition,
            now_ms: self.system.clock().now_ms(),
        };
        let started = std::time::Instant::now();
        let (new_ctx, versions) = self
            .replica
            .store
            .write_with(&key, &self.system.actor, op)
            .map_err(|current| Error::PreconditionFailed {
                context: current.encode(),
            })?;
        let stages = &self.system.stats.stages;
        stages.record(Stage::Apply, started);
        let applied = std::time::Instant::now();

        let homes_total = dests.iter().filter(|d| d.is_home()).count();
        let mut acks =
            WriteTracker::new(homes_total, dests.len() - homes_total, quorum.w, quorum.pw);
        // Each call answers (is a home, acknowledged, refused for memory).
        let mut calls: FuturesUnordered<BoxFuture<'static, (bool, bool, Option<Error>)>> =
            FuturesUnordered::new();
        for dest in dests {
            let addr = match dest.place {
                // The coordinator is always a home replica, and has stored the write. With a
                // data dir its own copy counts once logged, like any replica's; meanwhile
                // the copies go out, so the fsync and the round trips overlap.
                Place::Local if self.replica.store.log().is_none() => {
                    acks.reply(true, true);
                    continue;
                }
                Place::Local => {
                    let node = self.clone();
                    calls.push(Box::pin(async move {
                        let res = node.replica.sync().await;
                        if let Err(err) = &res {
                            warn!(%err, "a write was not acknowledged here: it could not be logged");
                        }
                        (true, res.is_ok(), None)
                    }));
                    continue;
                }
                Place::Remote(addr) => addr,
            };
            let node = self.clone();
            let is_home = dest.is_home();
            let req = Request::Replicate {
                key: key.clone(),
                versions: versions.clone(),
                hint_for: dest.hint_for.map(|h| h.to_string()),
            };
            calls.push(Box::pin(async move {
                match node.system.pool.call(addr, req).await {
                    Ok(Response::Replicated) => (is_home, true, None),
                    Err(err) if crate::memory::is_refusal(&err) => (is_home, false, Some(err)),
                    _ => (is_home, false, None),
                }
            }));
        }
        // One task drives every replica call, so each target gets the write even after the
        // quorum is met or the client went away (each call is bounded by the RPC timeout).
        let (ack_tx, mut ack_rx) = mpsc::channel(calls.len().max(1));
        if !calls.is_empty() {
            self.system
                .tracker
                .spawn(crate::rpc::in_current_trace(async move {
                    while let Some(ack) = calls.next().await {
                        let _ = ack_tx.send(ack).await;
                    }
                }));
        }
        let mut memory_refusals: Vec<Error> = Vec::new();
        while !acks.is_done() {
            let Some((is_home, ok, refusal)) = ack_rx.recv().await else {
                break;
            };
            acks.reply(is_home, ok);
            memory_refusals.extend(refusal);
        }
        if acks.status() == QuorumStatus::Met {
            stages.record(Stage::Replicate, applied);
            // Built only if someone watches the key.
            self.watches.emit_with(&key, || {
                let value = versions
                    .versions()
                    .iter()
                    .find(|v| v.history == new_ctx)
                    .and_then(|v| v.value.clone());
                Event {
                    op: if value.is_some() { Op::Put } else { Op::Delete },
                    key: key.clone(),
                    value,
                    context: new_ctx.encode(),
                }
            });
            return Ok(new_ctx);
        }
        Stats::incr(&self.system.stats.quorum_failures);
        // A coordinator that cannot log says so: that is what an operator must fix.
        if let Some(why) = self.replica.store.log().and_then(|log| log.error()) {
            return Err(Error::Storage(why));
        }
        // Replicas that refused for memory made the difference: say so (507), so the client
        // knows to free memory or add nodes rather than wait for a node to come back.
        let full = memory_refusals.len();
        if full > 0 && acks.acknowledged() + full >= quorum.w {
            let (used, limit) = memory_refusals
                .iter()
                .find_map(|e| match e {
                    Error::MemoryFull { used, limit } => Some((*used, *limit)),
                    _ => None,
                })
                .unwrap_or((0, 0));
            return Err(Error::MemoryFull { used, limit });
        }
        Err(if acks.missed_w() {
            Error::Unavailable {
                replied: acks.acknowledged(),
                required: quorum.w,
            }
        } else {
            Error::Unavailable {
                replied: acks.home_acks(),
                required: quorum.pw,
            }
        })
    }

    /// Reads `key` from `r` replicas (default R) and returns their merged versions (empty if
    /// none has the key). Stale home replicas are repaired in the background.
    pub async fn get(self: &Arc<Self>, key: Bytes, r: Option<usize>) -> Result<VersionSet> {
        self.read(key, r, 0).await
    }

    /// As [`Coordinator::get`], needing `pr` of the `r` replies from home replicas (Riak's
    /// primary read quorum, [`crate::quorum::ReadTracker`]): 503 if fewer homes answer.
    pub async fn read(
        self: &Arc<Self>,
        key: Bytes,
        r: Option<usize>,
        pr: usize,
    ) -> Result<VersionSet> {
        let r = r.unwrap_or(self.system.config.read_quorum);
        self.system.check_quorum(r, "r")?;
        if pr > r {
            return Err(Error::InvalidInput(format!(
                "pr must be between 0 and r ({r})"
            )));
        }
        Stats::incr(&self.system.stats.reads_coordinated);
        let view = self.system.view();
        // Live homes first; fallbacks only to make up for missing homes, since a fallback
        // that holds no hint for this key answers "nothing" and would count toward R.
        // Only serving replicas answer reads: a joining one may still be catching up.
        let (mut homes, fallbacks): (Vec<Dest>, Vec<Dest>) = self
            .destinations(&view, &key, |id| view.is_alive(id))
            .into_iter()
            .partition(Dest::is_home);
        // Our own copy is asked first: it costs no round trip. The remote homes take turns
        // coming next, so that reads spread over them and, over repeated reads, every home's
        // copy is compared (and repaired) even though each read asks only R of them.
        let local = homes.iter().position(|d| d.place == Place::Local);
        if let Some(i) = local {
            homes.swap(0, i);
        }
        let first_remote = usize::from(local.is_some());
        if homes.len() > first_remote + 1 {
            let turn = self.read_turn.fetch_add(1, Ordering::Relaxed);
            let len = homes.len() - first_remote;
            homes[first_remote..].rotate_left(turn % len);
        }
        let missing = r.saturating_sub(homes.len());
        homes.extend(fallbacks.into_iter().take(missing));
        // Joining homes come last, as reserves: asked only if the others cannot make R.
        let asked: Vec<Place> = homes.iter().map(|d| d.place).collect();
        homes.extend(
            self.destinations(&view, &key, |id| *id == self.system.id || view.is_up(id))
                .into_iter()
                .filter(|d| d.is_home() && !asked.contains(&d.place)),
        );
        let home_count = homes.iter().filter(|d| d.is_home()).count();
        let mut candidates = homes.into_iter();
        let total = candidates.len();
        let mut quorum = ReadTracker::new(home_count, total - home_count, r, pr);
        let mut replies: Vec<(Dest, VersionSet)> = Vec::with_capacity(total);
        let mut merged = VersionSet::new();
        // Remote reads are driven right here, not spawned: a read has no effect to finish
        // if the client goes away. What is still outstanding at the quorum moves to the
        // read-repair task below.
        let mut calls = FuturesUnordered::new();
        let ask = |dest: Dest,
                   calls: &mut FuturesUnordered<_>,
                   quorum: &mut ReadTracker,
                   merged: &mut VersionSet,
                   replies: &mut Vec<(Dest, VersionSet)>| {
            match dest.place {
                Place::Local => {
                    let vs = self.replica.local_read(&key);
                    merged.merge(&vs);
                    quorum.reply(dest.is_home(), true);
                    replies.push((dest, vs));
                }
                Place::Remote(addr) => {
                    let node = self.clone();
                    let key = key.clone();
                    calls.push(async move {
                        let res = node.system.pool.call(addr, Request::Read { key }).await;
                        let vs = match res {
                            Ok(Response::Versions(vs)) => Some(vs),
                            _ => None,
                        };
                        (dest, vs)
                    });
                }
            }
        };
        // R at first (see the module docs); everyone if fewer than R can answer, so that the
        // error says how many replied.
        let first = r.min(total);
        let started = std::time::Instant::now();
        for dest in candidates.by_ref().take(first) {
            ask(dest, &mut calls, &mut quorum, &mut merged, &mut replies);
        }
        let speculate = tokio::time::sleep(SPECULATIVE_READ_DELAY);
        tokio::pin!(speculate);
        let mut speculated = false;
        while !quorum.is_done() {
            tokio::select! {
                biased;
                reply = calls.next() => match reply {
                    Some((dest, Some(vs))) => {
                        merged.merge(&vs);
                        quorum.reply(dest.is_home(), true);
                        replies.push((dest, vs));
                    }
                    Some((dest, None)) => {
                        quorum.reply(dest.is_home(), false);
                        if let Some(dest) = candidates.next() {
                            ask(dest, &mut calls, &mut quorum, &mut merged, &mut replies);
                        }
                    }
                    None => match candidates.next() {
                        Some(dest) => ask(dest, &mut calls, &mut quorum, &mut merged, &mut replies),
                        None => break,
                    },
                },
                () = &mut speculate, if !speculated && candidates.len() > 0 && !calls.is_empty() => {
                    speculated = true;
                    if let Some(dest) = candidates.next() {
                        ask(dest, &mut calls, &mut quorum, &mut merged, &mut replies);
                    }
                }
            }
        }
        self.system.stats.stages.record(Stage::ReadQuorum, started);
        if quorum.status() != QuorumStatus::Met {
            Stats::incr(&self.system.stats.quorum_failures);
            return Err(if quorum.met_r() {
                Error::Unavailable {
                    replied: quorum.home_replies(),
                    required: pr,
                }
            } else {
                Error::Unavailable {
                    replied: quorum.successes(),
                    required: r,
                }
            });
        }
        if calls.is_empty() && !needs_repair(&key, &merged, &replies) {
            // The common case: everyone asked has answered, and they agree.
            return Ok(merged);
        }
        let node = self.clone();
        let result = merged.clone();
        self.system
            .tracker
            .spawn(crate::rpc::in_current_trace(async move {
                // Wait for the stragglers (each bounded by the RPC timeout), then repair.
                while let Some((dest, vs)) = calls.next().await {
                    if let Some(vs) = vs {
                        merged.merge(&vs);
                        replies.push((dest, vs));
                    }
                }
                node.read_repair(key, merged, replies).await;
            }));
        Ok(result)
    }

    /// Sends `merged` to every home replica whose reply differed from it. Fallbacks are
    /// left alone: their copies are hints, which handoff delivers to the homes.
    async fn read_repair(&self, key: Bytes, merged: VersionSet, replies: Vec<(Dest, VersionSet)>) {
        if merged.is_empty() {
            return;
        }
        let fp = merged.fingerprint(&key);
        for (dest, vs) in replies {
            if !is_stale(&key, fp, &dest, &vs) {
                continue;
            }
            Stats::incr(&self.system.stats.read_repairs);
            match dest.place {
                Place::Local => {
                    self.replica.store.merge(&key, &merged);
                }
                Place::Remote(addr) => {
                    let req = Request::Replicate {
                        key: key.clone(),
                        versions: merged.clone(),
                        hint_for: None,
                    };
                    if let Err(err) = self.system.pool.call(addr, req).await {
                        debug!(%addr, %err, "read repair failed");
                    }
                }
            }
        }
    }
}

/// True if some home replica's reply differs from the merge of all replies, so that a read
/// repair has work to do.
fn needs_repair(key: &[u8], merged: &VersionSet, replies: &[(Dest, VersionSet)]) -> bool {
    if merged.is_empty() || replies.len() < 2 {
        return false;
    }
    let fp = merged.fingerprint(key);
    replies.iter().any(|(dest, vs)| is_stale(key, fp, dest, vs))
}

/// True if `dest` is a home whose reply `vs` lacks something of the merge (fingerprint
/// `merged_fp`). Fingerprints, not equality: a replica that has not yet dropped an expired
/// value holds the same writes as one that has. Fallbacks are never stale: their copies are
/// hints, which handoff delivers.
fn is_stale(key: &[u8], merged_fp: u64, dest: &Dest, vs: &VersionSet) -> bool {
    dest.is_home() && vs.fingerprint(key) != merged_fp
}

impl Coordinator {
    /// Lists live keys starting with `prefix`, after `after`, at most `limit`, merging every
    /// live node's answer; every ring range must be covered by `r` (default R) answering home
    /// replicas.
    pub async fn list(
        self: &Arc<Self>,
        prefix: Bytes,
        after: Option<Bytes>,
        limit: usize,
        r: Option<usize>,
    ) -> Result<Listing> {
        let r = r.unwrap_or(self.system.config.read_quorum);
        self.system.check_quorum(r, "r")?;
        let view = self.system.view();
        let now = self.system.clock().now_ms();
        let nodes: Vec<(NodeId, Place)> = view
            .ring
            .nodes()
            .iter()
            .filter_map(|id| {
                if *id == self.system.id {
                    Some((id.clone(), Place::Local))
                } else if view.is_alive(id) {
                    Some((id.clone(), Place::Remote(view.member(id)?.rpc?)))
                } else {
                    None
                }
            })
            .collect();
        let mut keys = Vec::new();
        let mut cursor = after;
        loop {
            let want = limit - keys.len();
            let calls = nodes.iter().map(|(id, replica)| {
                let (prefix, cursor) = (prefix.clone(), cursor.clone());
                async move {
                    let page = match replica {
                        Place::Local => {
                            Ok(self.replica.store.list(&prefix, cursor.as_deref(), want))
                        }
                        Place::Remote(addr) => {
                            let req = Request::List {
                                prefix,
                                after: cursor,
                                limit: want as u32,
                            };
                            match self.system.pool.call(*addr, req).await {
                                Ok(Response::Listed(page)) => Ok(page),
                                Ok(other) => Err(Error::Protocol(format!(
                                    "unexpected answer to a listing: {other:?}"
                                ))),
                                Err(err) => Err(err),
                            }
                        }
                    };
                    (id.clone(), page)
                }
            });
            let answers = futures_util::future::join_all(calls).await;
            let answered: std::collections::HashSet<&NodeId> = answers
                .iter()
                .filter(|(_, page)| page.is_ok())
                .map(|(id, _)| id)
                .collect();
            let covered = min_coverage(&view, self.system.config.replicas, &answered);
            if covered < r {
                Stats::incr(&self.system.stats.quorum_failures);
                return Err(Error::Unavailable {
                    replied: covered,
                    required: r,
                });
            }
            let pages: Vec<(usize, ListPage)> = answers
                .into_iter()
                .enumerate()
                .filter_map(|(i, (_, p))| p.ok().map(|p| (i, p)))
                .collect();
            // Every key up to the frontier is in every answer that could hold it: past the
            // last key of an answer that was cut short, that node may hold more.
            let frontier = pages
                .iter()
                .filter(|(_, p)| p.more)
                .filter_map(|(_, p)| p.entries.last().map(|e| e.key.clone()))
                .min();
            let mut merged: std::collections::BTreeMap<Bytes, Seen> = Default::default();
            for (i, page) in pages {
                for e in page.entries {
                    if frontier.as_ref().is_some_and(|f| e.key > *f) {
                        break;
                    }
                    let seen = merged.entry(e.key).or_insert(Seen {
                        fingerprint: e.fingerprint,
                        agree: true,
                        live: false,
                        holders: Vec::new(),
                    });
                    seen.agree &= seen.fingerprint == e.fingerprint;
                    seen.live |= e.live_until > now;
                    seen.holders.push(i);
                }
            }
            // Replicas that hold the same writes agree on liveness. Where they differ (one
            // missed a write or a delete), merge their versions to decide.
            self.settle_disagreements(&nodes, &mut merged, now).await?;
            let mut live = merged
                .into_iter()
                .filter(|(_, seen)| seen.live)
                .map(|(key, _)| key);
            for key in live.by_ref() {
                keys.push(key);
                if keys.len() == limit {
                    break;
                }
            }
            if keys.len() == limit {
                // Say "no more" when it is known: nothing live left in this round, and no
                // node cut short. Otherwise the next page may turn out empty.
                let more = live.next().is_some() || frontier.is_some();
                let next = more.then(|| keys.last().cloned()).flatten();
                return Ok(Listing { keys, next });
            }
            match frontier {
                Some(f) => cursor = Some(f),
                None => return Ok(Listing { keys, next: None }),
            }
        }
    }
}

/// What a listing learned of one key from the nodes' answers.
struct Seen {
    /// The first answer's fingerprint.
    fingerprint: u64,
    /// Whether every answer had that fingerprint.
    agree: bool,
    /// Whether the key has a live value (decided by merging when answers disagree).
    live: bool,
    /// The nodes (indexes into the listing's node list) that hold the key.
    holders: Vec<usize>,
}

impl Coordinator {
    /// Decides liveness for the keys whose holders disagree, by reading their versions from
    /// every holder and merging them.
    async fn settle_disagreements(
        self: &Arc<Self>,
        nodes: &[(NodeId, Place)],
        merged: &mut std::collections::BTreeMap<Bytes, Seen>,
        now: u64,
    ) -> Result<()> {
        let mut per_node: Vec<Vec<Bytes>> = vec![Vec::new(); nodes.len()];
        for (key, seen) in merged.iter().filter(|(_, s)| !s.agree) {
            for &i in &seen.holders {
                per_node[i].push(key.clone());
            }
        }
        let mut sets: std::collections::HashMap<Bytes, VersionSet> = Default::default();
        for (i, mut keys) in per_node.into_iter().enumerate() {
            while !keys.is_empty() {
                let got: Vec<VersionSet> = match nodes[i].1 {
                    Place::Local => keys
                        .iter()
                        .map(|k| self.replica.store.get(k).unwrap_or_default())
                        .collect(),
                    Place::Remote(addr) => {
                        let req = Request::ReadMany { keys: keys.clone() };
                        match self.system.pool.call(addr, req).await? {
                            Response::VersionsMany(v) if !v.is_empty() => v,
                            other => {
                                return Err(Error::Protocol(format!(
                                    "unexpected answer to a listing read: {other:?}"
                                )));
                            }
                        }
                    }
                };
                let answered = got.len().min(keys.len());
                for (key, vs) in keys.drain(..answered).zip(got) {
                    sets.entry(key).or_default().merge(&vs);
                }
            }
        }
        for (key, vs) in sets {
            if let Some(seen) = merged.get_mut(&key) {
                seen.live = vs.live(now).next().is_some();
            }
        }
        Ok(())
    }
}

/// The fewest answering home replicas of any ring range: a listing that heard from `answered`
/// saw every range through at least this many of its homes.
fn min_coverage(view: &View, n: usize, answered: &std::collections::HashSet<&NodeId>) -> usize {
    view.ring
        .arcs()
        .iter()
        .map(|(_, end, _)| {
            view.ring
                .preference_list_for_hash(*end, n)
                .iter()
                .filter(|id| answered.contains(id))
                .count()
        })
        .min()
        .unwrap_or(0)
}
