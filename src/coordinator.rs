//! The coordinator: how one node turns a client PUT, GET or DELETE into quorum calls.
//!
//! **Writes.** A write is coordinated by the first *live* node of the key's preference list.
//! Any other node forwards it there (one RPC hop). The coordinator applies the write to its
//! own store first, which mints the new version's dot from its own actor, then sends the
//! key's resulting versions to every other live home replica and answers after W
//! acknowledgements (its own included). Replication to the remaining replicas carries on in
//! the background after the answer. Because one node mints all dots for a key while it is
//! up, sequential writes without a context never make siblings.
//!
//! **Reads.** A read goes to every live home replica and is answered after R replies, merged
//! by the version algebra. The remaining replies are still collected in the background, and
//! every replica whose versions differ from the merge is sent the merge (read repair).
//!
//! **Failures.** Dead replicas (per gossip) are not contacted. A replica that fails or times
//! out counts against the quorum, and the call ends as soon as the quorum can no longer be
//! met. A failed write may still have been applied on some replicas, as in every Dynamo-style
//! store: the client sees 503 and may retry with the same context.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::quorum::{QuorumStatus, QuorumTracker};
use crate::ring::NodeId;
use crate::rpc::{Request, Response};
use crate::stats::Stats;
use crate::version::{Context, VersionSet};

/// Where a replica lives: this node, or a peer's RPC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replica {
    Local,
    Remote(SocketAddr),
}

impl Node {
    /// The key's home replicas, in preference order, dead or alive.
    pub fn replicas_of(&self, key: &[u8]) -> Vec<NodeId> {
        self.view().ring.preference_list(key, self.config.replicas)
    }

    /// Live home replicas of `key`, in preference order.
    fn live_replicas(&self, key: &[u8]) -> Vec<(NodeId, Replica)> {
        let view = self.view();
        view.ring
            .preference_list(key, self.config.replicas)
            .into_iter()
            .filter(|id| *id == self.id || view.is_alive(id))
            .filter_map(|id| {
                if id == self.id {
                    Some((id, Replica::Local))
                } else {
                    let addr = view.member(&id)?.rpc?;
                    Some((id, Replica::Remote(addr)))
                }
            })
            .collect()
    }

    /// Writes `value` (`None` deletes) under `key`, after `context` if given, waiting for `w`
    /// acknowledgements (default W). Returns the context of the new version.
    pub async fn put(
        self: &Arc<Self>,
        key: Bytes,
        value: Option<Bytes>,
        context: Option<Context>,
        w: Option<usize>,
    ) -> Result<Context> {
        let w = w.unwrap_or(self.config.write_quorum);
        self.check_quorum(w, "w")?;
        for (id, replica) in self.live_replicas(&key) {
            let addr = match replica {
                Replica::Local => return self.coordinate_write(key, value, context, w).await,
                Replica::Remote(addr) => addr,
            };
            Stats::incr(&self.stats.writes_forwarded);
            let req = Request::Coordinate {
                key: key.clone(),
                value: value.clone(),
                context: context.clone(),
                w,
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
                // Timeouts are not retried elsewhere: the write may have been applied, and a
                // second coordinator would turn one client write into two siblings.
                Err(err) => return Err(err),
            }
        }
        Stats::incr(&self.stats.quorum_failures);
        Err(Error::Unavailable {
            replied: 0,
            required: w,
        })
    }

    /// Coordinates a write on this node: mint the version locally, replicate, count acks.
    pub(crate) async fn coordinate_write(
        self: &Arc<Self>,
        key: Bytes,
        value: Option<Bytes>,
        context: Option<Context>,
        w: usize,
    ) -> Result<Context> {
        Stats::incr(&self.stats.writes_coordinated);
        let replicas = self.live_replicas(&key);
        let (new_ctx, versions) = self.store.write(&key, &self.actor, context.as_ref(), value);
        let local_is_home = replicas.iter().any(|(_, r)| *r == Replica::Local);
        let remotes: Vec<SocketAddr> = replicas
            .iter()
            .filter_map(|(_, r)| match r {
                Replica::Remote(addr) => Some(*addr),
                Replica::Local => None,
            })
            .collect();

        let mut quorum = QuorumTracker::new(remotes.len() + local_is_home as usize, w);
        if local_is_home {
            quorum.success();
        }
        let (ack_tx, mut ack_rx) = mpsc::channel(remotes.len().max(1));
        let versions = Arc::new(versions);
        for addr in remotes {
            let node = self.clone();
            let ack_tx = ack_tx.clone();
            let req = Request::Replicate {
                key: key.clone(),
                versions: VersionSet::clone(&versions),
            };
            // Every replica gets the write even after the quorum is met, so these tasks run
            // to completion (bounded by the RPC timeout) independently of the client.
            self.tracker.spawn(async move {
                let ok = matches!(node.pool.call(addr, req).await, Ok(Response::Replicated));
                let _ = ack_tx.send(ok).await;
            });
        }
        drop(ack_tx);
        while !quorum.is_done() {
            match ack_rx.recv().await {
                Some(true) => quorum.success(),
                Some(false) => quorum.failure(),
                None => break,
            };
        }
        if quorum.status() == QuorumStatus::Met {
            Ok(new_ctx)
        } else {
            Stats::incr(&self.stats.quorum_failures);
            Err(Error::Unavailable {
                replied: quorum.successes(),
                required: w,
            })
        }
    }

    /// Reads `key` from `r` replicas (default R) and returns their merged versions (empty if
    /// none has the key). Stale replicas are repaired in the background.
    pub async fn get(self: &Arc<Self>, key: Bytes, r: Option<usize>) -> Result<VersionSet> {
        let r = r.unwrap_or(self.config.read_quorum);
        self.check_quorum(r, "r")?;
        Stats::incr(&self.stats.reads_coordinated);
        let replicas = self.live_replicas(&key);
        let mut quorum = QuorumTracker::new(replicas.len(), r);
        let (reply_tx, mut reply_rx) = mpsc::channel(replicas.len().max(1));
        let mut replies: Vec<(Replica, VersionSet)> = Vec::with_capacity(replicas.len());
        let mut merged = VersionSet::new();
        for (_, replica) in replicas {
            match replica {
                Replica::Local => {
                    let vs = self.store.get(&key).unwrap_or_default();
                    merged.merge(&vs);
                    replies.push((Replica::Local, vs));
                    quorum.success();
                }
                Replica::Remote(addr) => {
                    let node = self.clone();
                    let reply_tx = reply_tx.clone();
                    let key = key.clone();
                    self.tracker.spawn(async move {
                        let res = node.pool.call(addr, Request::Read { key }).await;
                        let vs = match res {
                            Ok(Response::Versions(vs)) => Some(vs),
                            _ => None,
                        };
                        let _ = reply_tx.send((replica, vs)).await;
                    });
                }
            }
        }
        drop(reply_tx);
        while !quorum.is_done() {
            match reply_rx.recv().await {
                Some((replica, Some(vs))) => {
                    merged.merge(&vs);
                    replies.push((replica, vs));
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
            while let Some((replica, vs)) = reply_rx.recv().await {
                if let Some(vs) = vs {
                    merged.merge(&vs);
                    replies.push((replica, vs));
                }
            }
            node.read_repair(key, merged, replies).await;
        });
        Ok(result)
    }

    /// Sends `merged` to every replica whose reply differed from it.
    async fn read_repair(
        &self,
        key: Bytes,
        merged: VersionSet,
        replies: Vec<(Replica, VersionSet)>,
    ) {
        if merged.is_empty() {
            return;
        }
        for (replica, vs) in replies {
            if vs == merged {
                continue;
            }
            Stats::incr(&self.stats.read_repairs);
            match replica {
                Replica::Local => {
                    self.store.merge(&key, &merged);
                }
                Replica::Remote(addr) => {
                    let req = Request::Replicate {
                        key: key.clone(),
                        versions: merged.clone(),
                    };
                    if let Err(err) = self.pool.call(addr, req).await {
                        debug!(%addr, %err, "read repair failed");
                    }
                }
            }
        }
    }
}
