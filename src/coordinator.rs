//! The coordinator: how one node turns a client PUT, GET or DELETE into quorum calls.
//!
//! **Where copies go.** A key's home replicas are the first N distinct nodes clockwise from
//! its hash. Under a sloppy quorum (Dynamo §4.6) each *dead* home is replaced by the next live
//! node past the homes, which keeps the copy as a hint for that home
//! ([`crate::ring::sloppy_targets`], [`crate::hints`]). Hinted copies count toward W; `pw`
//! (Riak's primary write quorum) demands that at least that many acknowledgements come from
//! home replicas.
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
//! **Reads.** A read goes to every live home replica and, when fewer than R homes are alive,
//! to as many fallbacks as are missing (they may hold hinted copies). It is answered after R
//! replies, merged by the version algebra. The remaining
//! replies are still collected in the background, and every *home* replica whose versions
//! differ from the merge is sent the merge (read repair).
//!
//! **Failures.** Dead replicas (per gossip) are not contacted. A replica that fails or times
//! out counts against the quorum, and the call ends as soon as the quorum can no longer be
//! met. A failed write may still have been applied on some replicas, as in every Dynamo-style
//! store: the client sees 503 and may retry with the same context.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::{Error, Result};
use crate::membership::View;
use crate::node::Node;
use crate::quorum::{QuorumStatus, QuorumTracker};
use crate::ring::{NodeId, Target, sloppy_targets};
use crate::rpc::{Request, Response, WriteQuorum};
use crate::stats::Stats;
use crate::version::{Context, VersionSet};

/// Where a copy lives: this node, or a peer's RPC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replica {
    Local,
    Remote(SocketAddr),
}

/// One destination of a quorum call.
#[derive(Debug, Clone)]
struct Dest {
    replica: Replica,
    /// The home this copy stands in for, if it is a fallback.
    hint_for: Option<NodeId>,
}

impl Dest {
    fn is_home(&self) -> bool {
        self.hint_for.is_none()
    }
}

impl Node {
    /// The key's home replicas, in preference order, dead or alive.
    pub fn replicas_of(&self, key: &[u8]) -> Vec<NodeId> {
        self.view().ring.preference_list(key, self.config.replicas)
    }

    /// The sloppy-quorum destinations of `key` in `view`, resolved to addresses.
    fn destinations(&self, view: &View, key: &[u8]) -> Vec<Dest> {
        let walk = view.ring.preference_list(key, view.ring.nodes().len());
        let alive = |id: &NodeId| *id == self.id || view.is_alive(id);
        sloppy_targets(&walk, self.config.replicas, alive)
            .into_iter()
            .filter_map(|Target { node, hint_for }| {
                let replica = if node == self.id {
                    Replica::Local
                } else {
                    Replica::Remote(view.member(&node)?.rpc?)
                };
                Some(Dest { replica, hint_for })
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
        let quorum = WriteQuorum {
            w: w.unwrap_or(self.config.write_quorum),
            pw: pw.unwrap_or(0),
        };
        self.check_write_quorum(quorum)?;
        let view = self.view();
        let homes = view.ring.preference_list(&key, self.config.replicas);
        for id in homes
            .iter()
            .filter(|id| **id == self.id || view.is_alive(id))
        {
            if *id == self.id {
                return self.coordinate_write(key, value, context, quorum).await;
            }
            let Some(addr) = view.member(id).and_then(|m| m.rpc) else {
                continue;
            };
            Stats::incr(&self.stats.writes_forwarded);
            let req = Request::Coordinate {
                key: key.clone(),
                value: value.clone(),
                context: context.clone(),
                quorum,
            };
            // The coordinator itself waits up to one RPC timeout for its replicas.
            let timeout = self.pool.timeout() * 2;
            match self.pool.call_with_timeout(addr, req, timeout).await {
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
        Stats::incr(&self.stats.quorum_failures);
        Err(Error::Unavailable {
            replied: 0,
            required: quorum.w,
        })
    }

    /// Coordinates a write on this node: mint the version locally, replicate, count acks.
    pub(crate) async fn coordinate_write(
        self: &Arc<Self>,
        key: Bytes,
        value: Option<Bytes>,
        context: Option<Context>,
        quorum: WriteQuorum,
    ) -> Result<Context> {
        Stats::incr(&self.stats.writes_coordinated);
        // Only this node mints this actor's counters: a context claiming one it never minted
        // is forged or corrupt, and would push every later counter out of range.
        if let Some(ctx) = &context
            && ctx.max_counter(&self.actor) > self.store.minted()
        {
            return Err(Error::invalid(
                "malformed context: it names versions this node never wrote",
            ));
        }
        let view = self.view();
        let dests = self.destinations(&view, &key);
        let (new_ctx, versions) = self.store.write(&key, &self.actor, context.as_ref(), value);

        let homes_total = dests.iter().filter(|d| d.is_home()).count();
        let mut all = QuorumTracker::new(dests.len(), quorum.w);
        let mut homes = QuorumTracker::new(homes_total, quorum.pw);
        let mut calls = FuturesUnordered::new();
        for dest in dests {
            let addr = match dest.replica {
                // The coordinator is always a home replica, and has stored the write.
                Replica::Local => {
                    all.success();
                    homes.success();
                    continue;
                }
                Replica::Remote(addr) => addr,
            };
            let node = self.clone();
            let is_home = dest.is_home();
            let req = Request::Replicate {
                key: key.clone(),
                versions: versions.clone(),
                hint_for: dest.hint_for.map(|h| h.to_string()),
            };
            calls.push(async move {
                let ok = matches!(node.pool.call(addr, req).await, Ok(Response::Replicated));
                (is_home, ok)
            });
        }
        // One task drives every replica call, so each target gets the write even after the
        // quorum is met or the client went away (each call is bounded by the RPC timeout).
        let (ack_tx, mut ack_rx) = mpsc::channel(calls.len().max(1));
        if !calls.is_empty() {
            self.tracker.spawn(async move {
                while let Some(ack) = calls.next().await {
                    let _ = ack_tx.send(ack).await;
                }
            });
        }
        while !settled(&all, &homes) {
            let Some((is_home, ok)) = ack_rx.recv().await else {
                break;
            };
            if ok {
                all.success();
                if is_home {
                    homes.success();
                }
            } else {
                all.failure();
                if is_home {
                    homes.failure();
                }
            }
        }
        if all.status() == QuorumStatus::Met && homes.status() == QuorumStatus::Met {
            return Ok(new_ctx);
        }
        Stats::incr(&self.stats.quorum_failures);
        Err(if all.status() != QuorumStatus::Met {
            Error::Unavailable {
                replied: all.successes(),
                required: quorum.w,
            }
        } else {
            Error::Unavailable {
                replied: homes.successes(),
                required: quorum.pw,
            }
        })
    }

    /// Reads `key` from `r` replicas (default R) and returns their merged versions (empty if
    /// none has the key). Stale home replicas are repaired in the background.
    pub async fn get(self: &Arc<Self>, key: Bytes, r: Option<usize>) -> Result<VersionSet> {
        let r = r.unwrap_or(self.config.read_quorum);
        self.check_quorum(r, "r")?;
        Stats::incr(&self.stats.reads_coordinated);
        let view = self.view();
        // Live homes first; fallbacks only to make up for missing homes, since a fallback
        // that holds no hint for this key answers "nothing" and would count toward R.
        let (homes, fallbacks): (Vec<Dest>, Vec<Dest>) = self
            .destinations(&view, &key)
            .into_iter()
            .partition(Dest::is_home);
        let missing = r.saturating_sub(homes.len());
        let dests: Vec<Dest> = homes
            .into_iter()
            .chain(fallbacks.into_iter().take(missing))
            .collect();
        let mut quorum = QuorumTracker::new(dests.len(), r);
        let mut replies: Vec<(Dest, VersionSet)> = Vec::with_capacity(dests.len());
        let mut merged = VersionSet::new();
        // Remote reads are driven right here, not spawned: a read has no effect to finish
        // if the client goes away. What is still outstanding at the quorum moves to the
        // read-repair task below.
        let mut calls = FuturesUnordered::new();
        for dest in dests {
            match dest.replica {
                Replica::Local => {
                    let vs = self.local_read(&key);
                    merged.merge(&vs);
                    replies.push((dest, vs));
                    quorum.success();
                }
                Replica::Remote(addr) => {
                    let node = self.clone();
                    let key = key.clone();
                    calls.push(async move {
                        let res = node.pool.call(addr, Request::Read { key }).await;
                        let vs = match res {
                            Ok(Response::Versions(vs)) => Some(vs),
                            _ => None,
                        };
                        (dest, vs)
                    });
                }
            }
        }
        while !quorum.is_done() {
            match calls.next().await {
                Some((dest, Some(vs))) => {
                    merged.merge(&vs);
                    replies.push((dest, vs));
                    quorum.success();
                }
                Some((_, None)) => {
                    quorum.failure();
                }
                None => break,
            }
        }
        if quorum.status() != QuorumStatus::Met {
            Stats::incr(&self.stats.quorum_failures);
            return Err(Error::Unavailable {
                replied: quorum.successes(),
                required: r,
            });
        }
        let node = self.clone();
        let result = merged.clone();
        self.tracker.spawn(async move {
            // Wait for the stragglers (each bounded by the RPC timeout), then repair.
            while let Some((dest, vs)) = calls.next().await {
                if let Some(vs) = vs {
                    merged.merge(&vs);
                    replies.push((dest, vs));
                }
            }
            node.read_repair(key, merged, replies).await;
        });
        Ok(result)
    }

    /// Sends `merged` to every home replica whose reply differed from it. Fallbacks are
    /// left alone: their copies are hints, which handoff delivers to the homes.
    async fn read_repair(&self, key: Bytes, merged: VersionSet, replies: Vec<(Dest, VersionSet)>) {
        if merged.is_empty() {
            return;
        }
        for (dest, vs) in replies {
            if vs == merged || !dest.is_home() {
                continue;
            }
            Stats::incr(&self.stats.read_repairs);
            match dest.replica {
                Replica::Local => {
                    self.store.merge(&key, &merged);
                }
                Replica::Remote(addr) => {
                    let req = Request::Replicate {
                        key: key.clone(),
                        versions: merged.clone(),
                        hint_for: None,
                    };
                    if let Err(err) = self.pool.call(addr, req).await {
                        debug!(%addr, %err, "read repair failed");
                    }
                }
            }
        }
    }
}

/// True when a write can stop waiting: both quorums met, or either can no longer be met.
fn settled(all: &QuorumTracker, homes: &QuorumTracker) -> bool {
    let met = |q: &QuorumTracker| q.status() == QuorumStatus::Met;
    (met(all) && met(homes)) || (all.is_done() && !met(all)) || (homes.is_done() && !met(homes))
}
