//! A node's own lifetime as the ring sees it: the status it gossips (`joining`, `alive`,
//! `stopping`, `leaving`), its start-up, its readiness, and a decommission.
//!
//! The rules of readiness are pure and live in [`crate::readiness`]; this part feeds them the
//! node's state and runs the start-up and the leave, which talk to peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::antientropy::AntiEntropy;
use crate::membership::{KEY_STATUS, SelfKeys, Status};
use crate::readiness::{Phase, Readiness, Startup};
use crate::replica::Replica;
use crate::rpc::{NodeStatus, Request, Response};
use crate::system::System;

/// How often a node that announced `alive` asks its peers whether they route to it yet. About
/// one gossip round: that is how fast the news can spread.
const ANNOUNCE_POLL: Duration = Duration::from_millis(100);

/// How long a node waits for every serving peer to route to it before it says ready anyway: a
/// peer that cannot see it (a one-way partition) must not keep it unready for ever; it is
/// logged instead.
const ANNOUNCE_PATIENCE: Duration = Duration::from_secs(30);

/// How long a leaving node waits for undeliverable hints (their targets are down) once its
/// own data is handed over, before it exits anyway; anti-entropy covers what they held.
const LEAVE_HINT_PATIENCE: Duration = Duration::from_secs(30);

/// How long a stopping or leaving node keeps serving after it announced itself down, in
/// gossip rounds, so that gossip tells every peer to stop routing to it before it goes.
pub const STOP_ANNOUNCE_ROUNDS: u32 = 5;

/// Progress of a decommission (`POST /cluster/leave`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveState {
    /// Serving normally.
    Member,
    /// Out of the ring, handing data to the new owners.
    Leaving,
    /// Every key handed over: the process may exit.
    Left,
}

/// The lifecycle part of a node.
pub struct Lifecycle {
    system: Arc<System>,
    replica: Arc<Replica>,
    /// Sets this node's gossiped status.
    self_keys: SelfKeys,
    /// The status this node announces through gossip. A tokio mutex held across the gossip
    /// update, so that a late `alive` can never overwrite `stopping` or `leaving`.
    status: tokio::sync::Mutex<Status>,
    /// Set once this node announced `alive` (readable without the lock).
    announced: AtomicBool,
    /// Where the start-up stands ([`crate::readiness`]).
    startup: watch::Sender<Startup>,
    /// Where a decommission stands.
    leave_tx: watch::Sender<LeaveState>,
}

impl Lifecycle {
    pub(crate) fn new(system: Arc<System>, replica: Arc<Replica>, self_keys: SelfKeys) -> Self {
        Lifecycle {
            system,
            replica,
            self_keys,
            status: tokio::sync::Mutex::new(Status::Joining),
            announced: AtomicBool::new(false),
            startup: watch::channel(Startup::Waiting).0,
            leave_tx: watch::channel(LeaveState::Member).0,
        }
    }

    /// Where a decommission stands.
    pub fn leave_state(&self) -> LeaveState {
        *self.leave_tx.borrow()
    }

    /// Resolves once a decommission has handed every key over.
    pub async fn left(&self) {
        let mut rx = self.leave_tx.subscribe();
        let _ = rx.wait_for(|s| *s == LeaveState::Left).await;
    }

    /// Whether this node is running, stopping or leaving.
    pub fn phase(&self) -> Phase {
        if self.leave_state() != LeaveState::Member {
            Phase::Leaving
        } else if self.replica.is_stopping() {
            Phase::Stopping
        } else {
            Phase::Running
        }
    }

    /// Whether this node can serve requests at its default quorums (`GET /ready`).
    pub fn readiness(&self) -> Readiness {
        crate::readiness::evaluate(
            &self.system.view(),
            &self.system.id,
            self.system.quorums(),
            *self.startup.borrow(),
            self.phase(),
            self.announced.load(Ordering::Acquire),
        )
    }

    /// Resolves once [`Lifecycle::readiness`] holds (re-checked on every view or start-up
    /// change, and at least every 100 ms).
    pub async fn wait_ready(&self) {
        let mut views = self.system.subscribe_view();
        let mut startup = self.startup.subscribe();
        while !self.readiness().is_ready() {
            tokio::select! {
                biased;
                _ = views.changed() => {}
                _ = startup.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn set_startup(&self, state: Startup) {
        self.startup.send_replace(state);
    }

    /// The start-up ([`crate::readiness`]): catch up with the peers, announce `alive`, then
    /// wait until every serving peer routes to this node.
    pub(crate) async fn start_up(
        self: Arc<Self>,
        ae: Arc<AntiEntropy>,
        shutdown: CancellationToken,
    ) {
        let progress = |state| self.set_startup(state);
        let settle = self.learn_who_serves(&shutdown);
        if !crate::antientropy::catch_up(&ae, &shutdown, progress, settle).await {
            return;
        }
        self.set_startup(Startup::Announcing { seen_by: 0, of: 0 });
        self.announce(Status::Alive).await;
        let system = &self.system;
        warn_if_unbalanced(&system.view().ring, system.config.replicas);
        let began = Instant::now();
        loop {
            let answers = self.ask_serving_peers(&system.view()).await;
            let me = (system.id.to_string(), system.actor.generation);
            let seen_by = answers
                .iter()
                .filter(|s| s.as_ref().is_some_and(|s| s.serving.contains(&me)))
                .count();
            let of = answers.len();
            if seen_by == of {
                break;
            }
            if began.elapsed() > ANNOUNCE_PATIENCE {
                warn!(
                    seen_by,
                    of, "not every serving peer routes to this node yet; ready anyway"
                );
                break;
            }
            self.set_startup(Startup::Announcing { seen_by, of });
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ANNOUNCE_POLL) => {}
            }
        }
        info!(
            took_ms = began.elapsed().as_millis() as u64,
            "every serving peer routes to this node"
        );
        self.set_startup(Startup::Done);
    }

    /// The status of every peer `view` sees serving, asked over RPC (`None` where the call
    /// failed), one entry per such peer.
    async fn ask_serving_peers(&self, view: &crate::membership::View) -> Vec<Option<NodeStatus>> {
        let system = &self.system;
        let asks = view
            .members
            .values()
            .filter(|m| m.id != system.id && view.is_alive(&m.id))
            .filter_map(|m| m.rpc)
            .map(|addr| system.pool.call(addr, Request::Status));
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .map(|a| match a {
                Ok(Response::Status(s)) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// Before it catches up and announces `alive`, waits until this node sees serving every
    /// member its serving peers route to, at the generation they see. A node that just
    /// started learns liveness from gossip a round or two behind its peers. Catching up
    /// meanwhile, it would skip a peer it does not see yet, and miss the copies only that
    /// peer holds (a rolling restart under load lost a write that way); coordinating a write,
    /// it would take a live home for dead and acknowledge the write with a fallback's copy,
    /// so a read of the real homes right after would miss it (the upgrade test caught this).
    /// Returns false on shutdown.
    async fn learn_who_serves(&self, shutdown: &CancellationToken) -> bool {
        let system = &self.system;
        let began = Instant::now();
        loop {
            let view = system.view();
            let mut theirs: Vec<(String, u64)> = self
                .ask_serving_peers(&view)
                .await
                .into_iter()
                .flatten()
                .flat_map(|s| s.serving)
                .filter(|(id, _)| **id != *system.id)
                .collect();
            theirs.sort();
            theirs.dedup();
            let unseen = theirs
                .iter()
                .filter(|(id, generation)| {
                    let seen = view.member(id).map(|m| m.generation);
                    !view.is_alive(id) || seen != Some(*generation)
                })
                .count();
            if unseen == 0 {
                return true;
            }
            if began.elapsed() > ANNOUNCE_PATIENCE {
                warn!(
                    unseen,
                    "this node still does not see serving every member its peers route to; \
                     catching up anyway"
                );
                return true;
            }
            self.set_startup(Startup::Learning {
                seen: theirs.len() - unseen,
                of: theirs.len(),
            });
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(ANNOUNCE_POLL) => {}
            }
        }
    }

    /// Announces `status` through gossip, unless that would undo a later step
    /// ([`Status::may_become`]).
    pub(crate) async fn announce(&self, status: Status) {
        let mut current = self.status.lock().await;
        if !current.may_become(&status) {
            return;
        }
        self.self_keys.set(KEY_STATUS, status.as_str()).await;
        let serves = status.serves();
        *current = status;
        if serves {
            self.announced.store(true, Ordering::Release);
        }
    }

    /// Begins a graceful stop: replica reads are refused from now on, and the ring hears
    /// `stopping` (a node in the middle of a leave stays `leaving`: it is out for good).
    pub(crate) async fn begin_stop(&self) {
        self.replica.stop_serving_reads();
        self.announce(Status::Stopping).await;
    }

    /// Starts a decommission: announce `leaving` through gossip, which takes this node out of
    /// every ring at once; anti-entropy's ownership handoff then pushes every key to its new
    /// homes and drops it here after they acknowledge. Once the store has stayed empty for
    /// [`STOP_ANNOUNCE_ROUNDS`] gossip rounds (and hints are delivered, or
    /// `LEAVE_HINT_PATIENCE` passed) the state becomes [`LeaveState::Left`].
    ///
    /// Why wait with an empty store: a peer that has not heard `leaving` yet still counts this
    /// node as a home and sends it writes, which land here after the handover. Those writes
    /// refill the store, which restarts the wait and gets them handed over too; the node only
    /// leaves once gossip had the rounds a stop also gives it to reach every peer.
    pub async fn leave(self: &Arc<Self>) {
        if self.leave_state() != LeaveState::Member {
            return;
        }
        self.leave_tx.send_replace(LeaveState::Leaving);
        self.announce(Status::Leaving).await;
        let system = &self.system;
        info!(id = %system.id, "leaving the ring: handing data over");
        let this = self.clone();
        let shutdown = system.shutdown.clone();
        let settle = system.config.gossip_config.interval * STOP_ANNOUNCE_ROUNDS;
        system.tracker.spawn(async move {
            let mut emptied: Option<Instant> = None;
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                if this.replica.store.stats().keys > 0 {
                    emptied = None;
                    continue;
                }
                let since = *emptied.get_or_insert_with(Instant::now);
                if since.elapsed() < settle {
                    continue;
                }
                if this.replica.hints_pending() == 0 || since.elapsed() > LEAVE_HINT_PATIENCE {
                    info!(id = %this.system.id, "all data handed over; leaving");
                    this.leave_tx.send_replace(LeaveState::Left);
                    return;
                }
            }
        });
    }
}

/// Above this multiple of the mean share of the keys' copies, a node is overloaded by the
/// ring's layout: zones of unequal size (a zone of one node holds a copy of every key when N
/// equals the number of zones), not chance, which vnodes keep within about 1.4x.
pub const UNBALANCED_SHARE: f64 = 1.5;

/// Logs a warning, once a node has caught up and serves, if the ring's layout gives some node
/// more than [`UNBALANCED_SHARE`] times the mean share of the keys' copies.
fn warn_if_unbalanced(ring: &crate::ring::Ring, replicas: usize) {
    let shares = ring.shares(replicas);
    if shares.is_empty() {
        return;
    }
    let mean = 1.0 / shares.len() as f64;
    let worst = shares.iter().max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((node, share)) = worst.filter(|(_, s)| *s > UNBALANCED_SHARE * mean) {
        let zone = ring.zone(node).map(|z| z.to_string()).unwrap_or_default();
        tracing::warn!(
            %node,
            %zone,
            share = format!("{:.1}%", share * 100.0),
            mean = format!("{:.1}%", mean * 100.0),
            "the ring's layout gives a node {:.1}x the mean share of the keys: its zone has \
             fewer nodes than the others; give every zone the same number of nodes",
            share / mean
        );
    }
}
