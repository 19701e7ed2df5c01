//! This node's place in the cluster: who it is, what it sees of the ring, and how it reaches
//! its peers.
//!
//! [`System`] is the handle every part of a node shares ([`crate::node`]): the store side
//! ([`crate::replica`]), the coordinator, anti-entropy, handoff, watches and the lifecycle.
//! It holds no data of its own beyond the configuration and the counters: the membership
//! view comes from gossip ([`crate::membership`]), the peers are reached through the RPC
//! pool ([`crate::rpc::client`]), and background work is spawned on its task tracker so
//! that a node's shutdown waits for it.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::membership::View;
use crate::readiness::Quorums;
use crate::ring::NodeId;
use crate::rpc::WriteQuorum;
use crate::rpc::client::Pool;
use crate::stats::Stats;
use crate::version::Actor;

/// The handle to this node's identity, view, peers, counters and task set.
pub struct System {
    pub(crate) config: Config,
    pub(crate) id: NodeId,
    /// This process's writer identity: the node id and this start's generation.
    pub(crate) actor: Actor,
    pub(crate) pool: Pool,
    pub(crate) stats: Arc<Stats>,
    /// Every task a part of the node spawns, so that shutdown waits for them.
    pub(crate) tracker: TaskTracker,
    /// Fires when the node shuts down.
    pub(crate) shutdown: CancellationToken,
    view_rx: watch::Receiver<Arc<View>>,
    /// The next generated request id's number (`<node>-<n>`); per node, not per process,
    /// so a simulation run does not depend on the runs before it.
    pub(crate) request_ids: std::sync::atomic::AtomicU64,
    /// This node's memory limit and its use against it (`--max-memory`).
    pub(crate) memory: Arc<crate::memory::Meter>,
}

impl System {
    /// A handle over a started membership (`view_rx`) and RPC pool.
    pub(crate) fn new(
        config: Config,
        actor: Actor,
        pool: Pool,
        stats: Arc<Stats>,
        view_rx: watch::Receiver<Arc<View>>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> System {
        let memory = Arc::new(crate::memory::Meter::new(
            config.max_memory,
            config.memory_gauge.clone(),
            stats.counters.writes_refused_memory.clone(),
        ));
        System {
            id: actor.node.clone(),
            memory,
            config,
            actor,
            pool,
            stats,
            tracker,
            shutdown,
            view_rx,
            request_ids: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// This node's memory limit and its use against it.
    pub fn memory(&self) -> &crate::memory::Meter {
        &self.memory
    }

    /// The current membership view.
    pub fn view(&self) -> Arc<View> {
        self.view_rx.borrow().clone()
    }

    /// A receiver that wakes on every new membership view.
    pub fn subscribe_view(&self) -> watch::Receiver<Arc<View>> {
        self.view_rx.clone()
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// This node's writer identity.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// This node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The wall clock this node judges TTL expiry by ([`crate::clock`]).
    pub fn clock(&self) -> &Clock {
        &self.config.clock
    }

    /// N, R and W.
    pub fn quorums(&self) -> Quorums {
        Quorums {
            replicas: self.config.replicas,
            read: self.config.read_quorum,
            write: self.config.write_quorum,
        }
    }

    /// The key's home replicas, in preference order, dead or alive.
    pub fn replicas_of(&self, key: &[u8]) -> Vec<NodeId> {
        self.view().ring.preference_list(key, self.config.replicas)
    }

    /// Checks a write quorum against N.
    pub(crate) fn check_write_quorum(&self, q: WriteQuorum) -> Result<()> {
        self.check_quorum(q.w, "w")?;
        if q.pw > q.w {
            return Err(Error::InvalidInput(format!(
                "pw must be between 0 and w ({})",
                q.w
            )));
        }
        Ok(())
    }

    /// Checks a per-request quorum value against N.
    pub(crate) fn check_quorum(&self, q: usize, name: &str) -> Result<()> {
        if q == 0 || q > self.config.replicas {
            return Err(Error::InvalidInput(format!(
                "{name} must be between 1 and {} (N)",
                self.config.replicas
            )));
        }
        Ok(())
    }
}
