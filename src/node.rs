//! A running ringkv node: its listeners, gossip, store and background tasks.
//!
//! [`NodeHandle::start`] binds the HTTP and RPC listeners (port 0 allowed), starts gossip with
//! the addresses it actually bound, and spawns the servers. Every task it spawns is tracked
//! and watches one cancellation token, so [`NodeHandle::shutdown`] stops them all and waits
//! for them: nothing outlives the handle. The shared state every task sees is [`Node`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;

use crate::net::{Listener, Network};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::antientropy::Segments;
use crate::config::Config;
use crate::durable::Record;
use crate::error::{Error, Result};
use crate::hints::{HintLimits, HintStore};
use crate::membership::{
    GossipTransport, KEY_STATUS, Membership, MembershipConfig, STATUS_ALIVE, STATUS_JOINING,
    STATUS_LEAVING, STATUS_STOPPING, SelfKeys, View,
};
use crate::metrics::HttpMetrics;
use crate::readiness::{Lifecycle, Quorums, Readiness, Startup};
use crate::ring::NodeId;
use crate::rpc::client::{Pool, PoolConfig};
use crate::rpc::server::ServerContext;
use crate::rpc::{self, Hello, Request, Response, Service, WriteQuorum};
use crate::stats::Stats;
use crate::store::Store;
use crate::version::{Actor, VersionSet};
use crate::watch::{Fanout, Interest, Watchers};

/// The state shared by every task of one node.
pub struct Node {
    pub(crate) config: Config,
    pub(crate) id: NodeId,
    /// This process's writer identity: the node id and this start's generation.
    pub(crate) actor: Actor,
    pub(crate) store: Store,
    /// Copies kept for dead home replicas. A std mutex: every operation is a map update.
    pub(crate) hints: Mutex<HintStore>,
    pub(crate) pool: Pool,
    pub(crate) stats: Arc<Stats>,
    pub(crate) tracker: TaskTracker,
    view_rx: watch::Receiver<Arc<View>>,
    /// The ring's segments, swapped by the anti-entropy worker when the ring changes.
    segments: RwLock<Arc<Segments>>,
    /// Sets this node's gossiped keys (status, watched prefixes).
    pub(crate) self_keys: SelfKeys,
    /// Where a decommission stands.
    leave_tx: watch::Sender<LeaveState>,
    /// HTTP request counts and latencies.
    http_metrics: HttpMetrics,
    /// Fires when the node shuts down, for tasks started after `start`.
    pub(crate) shutdown: CancellationToken,
    /// This node's WebSocket watchers.
    pub(crate) watchers: Arc<Watchers>,
    /// Which prefixes peers watch, as they told us directly.
    pub(crate) interest: Mutex<Interest>,
    /// Queues of events on their way to watching peers.
    pub(crate) fanout: Fanout,
    /// Turns of the remote homes a GET asks (see [`Node::get`]).
    pub(crate) read_turn: std::sync::atomic::AtomicUsize,
    /// The status this node announces through gossip. A tokio mutex held across the gossip
    /// update, so that a late `alive` can never overwrite `stopping` or `leaving`.
    status: tokio::sync::Mutex<&'static str>,
    /// Set once this node announced `alive` (readable without the lock).
    announced: AtomicBool,
    /// Set when a graceful stop begins.
    stopping: AtomicBool,
    /// Where the start-up stands ([`crate::readiness`]).
    startup: watch::Sender<Startup>,
}

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

impl Node {
    /// The current membership view.
    pub fn view(&self) -> Arc<View> {
        self.view_rx.borrow().clone()
    }

    /// A receiver that wakes on every new membership view.
    pub fn subscribe_view(&self) -> watch::Receiver<Arc<View>> {
        self.view_rx.clone()
    }

    /// HTTP request counts and latencies, for `/metrics`.
    pub fn http_metrics(&self) -> &HttpMetrics {
        &self.http_metrics
    }

    /// Where a decommission stands.
    pub fn leave_state(&self) -> LeaveState {
        *self.leave_tx.borrow()
    }

    /// Resolves once every change made so far is durable per `--fsync` (at once without a
    /// data dir). Fails if the log cannot be written: the change must not be acknowledged.
    pub async fn sync(&self) -> Result<()> {
        match self.store.log() {
            Some(log) => log.barrier().await,
            None => Ok(()),
        }
    }

    /// Streams the node's whole state (store, shard by shard, then hints) as log records.
    fn snapshot_into(&self, put: &mut dyn FnMut(&Record) -> Result<()>) -> Result<()> {
        for shard in 0..crate::store::SHARDS {
            self.store.snapshot_shard(shard, put)?;
        }
        let hints = lock(&self.hints).records();
        hints.iter().try_for_each(put)
    }

    /// Takes a snapshot of the data dir now, whatever the log's size (tests, and operators
    /// before a backup). Fails without a data dir.
    pub async fn snapshot_now(self: &Arc<Self>) -> Result<()> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let log = node
                .store
                .log()
                .ok_or_else(|| Error::invalid("this node has no --data-dir"))?;
            log.snapshot(|put| node.snapshot_into(put))
        })
        .await
        .map_err(|e| Error::Io(Arc::new(std::io::Error::other(e.to_string()))))?
    }

    /// N, R and W.
    pub fn quorums(&self) -> Quorums {
        Quorums {
            replicas: self.config.replicas,
            read: self.config.read_quorum,
            write: self.config.write_quorum,
        }
    }

    /// Whether this node is running, stopping or leaving.
    pub fn lifecycle(&self) -> Lifecycle {
        if self.leave_state() != LeaveState::Member {
            Lifecycle::Leaving
        } else if self.stopping.load(Ordering::Acquire) {
            Lifecycle::Stopping
        } else {
            Lifecycle::Running
        }
    }

    /// Fails with [`Error::Shutdown`] while this node stops: the replica side of reads and
    /// listings calls it first. Peers that have not heard this node is stopping still ask it,
    /// but since it announced `stopping` the coordinators send its share of new writes to
    /// fallbacks, so its copy may be stale. Refused, the reader asks the next replica at once.
    /// Writes it still takes: it is up until it exits.
    pub(crate) fn refuse_reads_if_stopping(&self) -> Result<()> {
        match self.lifecycle() {
            Lifecycle::Stopping => Err(Error::Shutdown),
            _ => Ok(()),
        }
    }

    /// Whether this node can serve requests at its default quorums (`GET /ready`).
    pub fn readiness(&self) -> Readiness {
        crate::readiness::evaluate(
            &self.view(),
            &self.id,
            self.quorums(),
            *self.startup.borrow(),
            self.lifecycle(),
            self.announced.load(Ordering::Acquire),
        )
    }

    /// Resolves once [`Node::readiness`] holds (re-checked on every view or start-up change,
    /// and at least every 100 ms).
    pub async fn wait_ready(&self) {
        let mut views = self.subscribe_view();
        let mut startup = self.startup.subscribe();
        while !self.readiness().is_ready() {
            tokio::select! {
                _ = views.changed() => {}
                _ = startup.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    pub(crate) fn set_startup(&self, state: Startup) {
        self.startup.send_replace(state);
    }

    /// The start-up ([`crate::readiness`]): catch up with the peers, announce `alive`, then
    /// wait until every serving peer routes to this node.
    async fn start_up(self: Arc<Self>, shutdown: CancellationToken) {
        if !crate::antientropy::catch_up(&self, &shutdown).await {
            return;
        }
        self.set_startup(Startup::Announcing { seen_by: 0, of: 0 });
        self.announce(STATUS_ALIVE).await;
        let began = Instant::now();
        loop {
            let view = self.view();
            let peers: Vec<(NodeId, SocketAddr)> = view
                .members
                .values()
                .filter(|m| m.id != self.id && view.is_alive(&m.id))
                .filter_map(|m| Some((m.id.clone(), m.rpc?)))
                .collect();
            let asks = peers
                .iter()
                .map(|(_, addr)| self.pool.call(*addr, Request::Status));
            let answers = futures_util::future::join_all(asks).await;
            let me = (self.id.to_string(), self.actor.generation);
            let seen_by = answers
                .iter()
                .filter(|a| matches!(a, Ok(Response::Status(s)) if s.serving.contains(&me)))
                .count();
            if seen_by == peers.len() {
                break;
            }
            if began.elapsed() > ANNOUNCE_PATIENCE {
                warn!(
                    seen_by,
                    of = peers.len(),
                    "not every serving peer routes to this node yet; ready anyway"
                );
                break;
            }
            self.set_startup(Startup::Announcing {
                seen_by,
                of: peers.len(),
            });
            tokio::select! {
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

    /// Announces `status` through gossip, unless that would undo a later step: `alive` only
    /// follows `joining`, and nothing follows `leaving` but `leaving`.
    pub(crate) async fn announce(&self, status: &'static str) {
        let mut current = self.status.lock().await;
        let allowed = match status {
            STATUS_ALIVE => *current == STATUS_JOINING,
            STATUS_STOPPING => *current == STATUS_JOINING || *current == STATUS_ALIVE,
            _ => true,
        };
        if !allowed {
            return;
        }
        self.self_keys.set(KEY_STATUS, status).await;
        *current = status;
        if status == STATUS_ALIVE {
            self.announced.store(true, Ordering::Release);
        }
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
        self.announce(STATUS_LEAVING).await;
        info!(id = %self.id, "leaving the ring: handing data over");
        let node = self.clone();
        let shutdown = self.shutdown.clone();
        let settle = self.config.gossip_config.interval * STOP_ANNOUNCE_ROUNDS;
        self.tracker.spawn(async move {
            let mut emptied: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                if node.store.stats().keys > 0 {
                    emptied = None;
                    continue;
                }
                let since = *emptied.get_or_insert_with(Instant::now);
                if since.elapsed() < settle {
                    continue;
                }
                if node.hints_pending() == 0 || since.elapsed() > LEAVE_HINT_PATIENCE {
                    info!(id = %node.id, "all data handed over; leaving");
                    node.leave_tx.send_replace(LeaveState::Left);
                    return;
                }
            }
        });
    }

    /// The ring segments the store's Merkle trees follow.
    pub fn segments(&self) -> Arc<Segments> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_segments(&self, segs: Segments) {
        *self.segments.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(segs);
    }

    /// Hinted keys held for dead home replicas.
    pub fn hints_pending(&self) -> usize {
        lock(&self.hints).len()
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// This node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The wall clock this node judges TTL expiry by ([`crate::clock`]).
    pub fn clock(&self) -> &crate::clock::Clock {
        &self.config.clock
    }

    /// This node's writer identity.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The local store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What the status page shows of this node.
    pub fn status(&self) -> crate::stats::NodeStatus {
        let store = self.store.stats();
        let c = self.stats.snapshot();
        crate::stats::NodeStatus {
            keys: store.keys,
            tombstones: store.tombstones,
            bytes: store.bytes,
            hints_pending: self.hints_pending() as u64,
            ae_rounds: c.ae_rounds,
            ae_keys_repaired: c.ae_keys_repaired,
            ae_bytes_sent: c.ae_bytes_sent,
            ae_bytes_received: c.ae_bytes_received,
            requests: c.http_requests,
            watchers: self.watchers.count() as u64,
            serving: {
                let view = self.view();
                view.members
                    .values()
                    .filter(|m| view.is_alive(&m.id))
                    .map(|m| (m.id.to_string(), m.generation))
                    .collect()
            },
        }
    }

    /// Serves [`Request::Status`]: [`Node::status`].
    pub(crate) fn serve_status(&self) -> Result<Response> {
        Ok(Response::Status(self.status()))
    }
}

/// The one RPC dispatch: each request goes to its handler, `serve_*`, in the module of the
/// feature that owns it.
impl Service for Node {
    /// Forwarded writes wait on other replicas; with a data dir, copies wait for their log
    /// record to be durable (`--fsync always`), which must not serialise a connection: the
    /// writes behind it join the same fsync instead (group commit).
    fn may_wait(&self, req: &Request) -> bool {
        match req {
            Request::Coordinate { .. } => true,
            Request::Replicate { .. } | Request::ReplicateMany { .. } => self.store.log().is_some(),
            _ => false,
        }
    }

    async fn call(self: Arc<Self>, req: Request) -> Result<Response> {
        match req {
            Request::Replicate {
                key,
                versions,
                hint_for,
            } => self.serve_replicate(key, versions, hint_for).await,
            Request::ReplicateMany { items } => self.serve_replicate_many(items).await,
            Request::Read { key } => self.serve_read(key),
            Request::Coordinate { write, quorum } => self.serve_coordinate(write, quorum).await,
            Request::List {
                prefix,
                after,
                limit,
            } => self.serve_list(prefix, after, limit),
            Request::ReadMany { keys } => self.serve_read_many(keys),
            Request::Fingerprints { keys } => self.serve_fingerprints(keys),
            Request::Purge { items } => self.serve_purge(items),
            Request::AeDigest { ring, from, digest } => self.serve_ae_digest(ring, from, digest),
            Request::AeChildren { ring, nodes } => self.serve_ae_children(ring, nodes),
            Request::AeLeafKeys { ring, leaves } => self.serve_ae_leaf_keys(ring, leaves),
            Request::Events { events } => self.serve_events(events),
            Request::Watching { node, announcement } => self.serve_watching(node, announcement),
            Request::Status => self.serve_status(),
        }
    }
}

/// A started node. Dropping it without [`NodeHandle::shutdown`] leaves its tasks running.
pub struct NodeHandle {
    node: Arc<Node>,
    membership: Membership,
    http_addr: SocketAddr,
    rpc_addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    http_stop: crate::api::Stop,
    /// HTTP connection tasks, tracked apart so a graceful stop can wait for them alone.
    http_tracker: TaskTracker,
    /// The snapshot thread, with its stop flag, when the node has a data dir.
    snapshots: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

/// How long a stopping node keeps serving after it announced itself down, so that gossip
/// tells every peer to stop routing to it before it closes its ports (a few gossip rounds).
pub const STOP_ANNOUNCE_ROUNDS: u32 = 5;

impl NodeHandle {
    /// Validates `config`, binds every listener and starts the node, on real TCP.
    pub async fn start(config: Config, transport: GossipTransport) -> Result<NodeHandle> {
        Self::start_with(config, transport, Arc::new(crate::net::Tcp)).await
    }

    /// As [`NodeHandle::start`], with HTTP and RPC on `net` ([`crate::net`]).
    pub async fn start_with(
        config: Config,
        transport: GossipTransport,
        net: Arc<dyn Network>,
    ) -> Result<NodeHandle> {
        config.validate()?;
        let http = net.bind(config.http).await?;
        let rpc_listener = net.bind(config.rpc).await?;
        let http_addr = http.local_addr()?;
        let rpc_addr = rpc_listener.local_addr()?;
        // The data dir is loaded before anything else starts: gossip and RPC wait, so no
        // peer sends copies into a half-loaded store; HTTP answers `/ready` with the progress.
        let (store, hints) = open_data(&config, http.as_ref()).await?;

        let generation = new_generation();
        let id: NodeId = NodeId::from(config.id.as_str());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stats = Arc::new(Stats::default());

        let membership = Membership::start(
            MembershipConfig {
                id: id.clone(),
                generation,
                cluster_id: config.cluster_id.clone(),
                gossip_addr: config.gossip,
                seeds: config.seeds.clone(),
                http_addr,
                rpc_addr,
                vnodes: config.vnodes,
                gossip: config.gossip_config.clone(),
            },
            transport,
            shutdown.clone(),
            &tracker,
        )
        .await?;

        let hello = Hello {
            cluster_id: config.cluster_id.clone(),
            protocol: rpc::PROTOCOL_VERSION,
            node: config.id.clone(),
        };
        let pool = Pool::new(PoolConfig {
            net,
            hello: hello.clone(),
            max_payload: config.max_frame_payload(),
            timeout: config.rpc_timeout,
            frames_rejected: stats.rpc_frames_rejected.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        });
        let node = Arc::new(Node {
            actor: Actor {
                node: id.clone(),
                generation,
            },
            id,
            store,
            hints: Mutex::new(hints),
            pool,
            stats: stats.clone(),
            tracker: tracker.clone(),
            view_rx: membership.subscribe(),
            segments: RwLock::default(),
            self_keys: membership.self_keys(),
            leave_tx: watch::channel(LeaveState::Member).0,
            http_metrics: HttpMetrics::default(),
            shutdown: shutdown.clone(),
            watchers: Arc::new(crate::watch::Watchers::starting_now()),
            interest: Mutex::default(),
            fanout: Fanout::default(),
            read_turn: Default::default(),
            status: tokio::sync::Mutex::new(STATUS_JOINING),
            announced: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            startup: watch::channel(Startup::Waiting).0,
            config,
        });

        let rpc_ctx = Arc::new(ServerContext {
            service: node.clone(),
            hello,
            max_payload: node.config.max_frame_payload(),
            frames_rejected: stats.rpc_frames_rejected.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        });
        tracker.spawn(rpc::server::serve(rpc_listener, rpc_ctx));
        tracker.spawn(crate::handoff::run(node.clone(), shutdown.clone()));
        tracker.spawn(crate::antientropy::run(node.clone(), shutdown.clone()));
        tracker.spawn(node.clone().start_up(shutdown.clone()));
        let snapshots = match node.store.log() {
            Some(log) => {
                let stop = Arc::new(AtomicBool::new(false));
                let (live, fill) = (node.clone(), node.clone());
                let thread = log.spawn_snapshots(
                    stop.clone(),
                    move || live.store.stats().bytes,
                    move |put| fill.snapshot_into(put),
                )?;
                Some((stop, thread))
            }
            None => None,
        };
        tracker.spawn(crate::ttl::run(node.clone(), shutdown.clone()));
        tracker.spawn(node.clone().run_watch_announcer());
        let http_stop = crate::api::Stop {
            drain: CancellationToken::new(),
            kill: shutdown.clone(),
        };
        let http_tracker = TaskTracker::new();
        tracker.spawn(crate::api::serve(
            http,
            node.clone(),
            http_stop.clone(),
            http_tracker.clone(),
        ));

        info!(
            id = %node.id,
            generation,
            http = %http_addr,
            rpc = %rpc_addr,
            gossip = %membership.gossip_addr(),
            "ringkv node listening"
        );
        Ok(NodeHandle {
            node,
            membership,
            http_addr,
            rpc_addr,
            shutdown,
            tracker,
            http_stop,
            http_tracker,
            snapshots,
        })
    }

    /// The shared node state.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The RPC address actually bound.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// The gossip address actually bound.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.membership.gossip_addr()
    }

    /// The current membership view.
    pub fn view(&self) -> Arc<View> {
        self.node.view()
    }

    /// Resolves once a decommission has handed every key over.
    pub async fn left(&self) {
        let mut rx = self.node.leave_tx.subscribe();
        let _ = rx.wait_for(|s| *s == LeaveState::Left).await;
    }

    /// Stops the node without failing any client request (SIGTERM, Ctrl-C):
    ///
    /// 1. announce `stopping` through gossip and keep serving for a few gossip rounds, so
    ///    peers stop routing to this node at once instead of waiting for the failure
    ///    detector (the node keeps its place in the ring: it is expected back);
    /// 2. stop accepting HTTP connections, and let open ones finish the request in flight,
    ///    within `deadline`;
    /// 3. push pending hints to their targets if they are reachable;
    /// 4. stop everything else.
    pub async fn shutdown_gracefully(self, deadline: Duration) {
        info!(id = %self.node.id, "stopping: announcing it to the ring");
        // A node in the middle of a leave stays `leaving`: it is out of the ring for good.
        self.node.stopping.store(true, Ordering::Release);
        self.node.announce(STATUS_STOPPING).await;
        let announce = self.node.config.gossip_config.interval * STOP_ANNOUNCE_ROUNDS;
        tokio::time::sleep(announce.min(deadline)).await;
        self.http_stop.drain.cancel();
        self.http_tracker.close();
        if tokio::time::timeout(deadline, self.http_tracker.wait())
            .await
            .is_err()
        {
            warn!(id = %self.node.id, "some HTTP requests did not finish before the deadline");
        }
        // Requests this node was coordinating for peers finish with the tracked tasks; hints
        // go now, while the process can still deliver them.
        let _ = tokio::time::timeout(deadline, crate::handoff::deliver(&self.node)).await;
        self.shutdown().await;
    }

    /// Stops every listener and task and waits for them. Connections are dropped, not
    /// drained: to peers this looks like the process died, which is what tests want from a
    /// kill.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.http_tracker.close();
        self.http_tracker.wait().await;
        self.membership.shutdown().await;
        self.tracker.close();
        self.tracker.wait().await;
        // Last, the log: everything the node did is written, and the data dir is unlocked
        // for the next process.
        if let Some((stop, thread)) = self.snapshots {
            stop.store(true, Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(log) = self.node.store.log().cloned() {
            let _ = tokio::task::spawn_blocking(move || log.close()).await;
        }
        info!(id = %self.node.id, "ringkv node stopped");
    }
}

/// The store and hints of a node: empty without a data dir; otherwise recovered from it
/// ([`crate::durable`]), with the log attached for every change from now on. While recovery
/// runs, `http` answers `/health`, and `/ready` with the progress.
async fn open_data(config: &Config, http: &dyn Listener) -> Result<(Store, HintStore)> {
    let limits = HintLimits {
        ttl: config.tombstone_grace,
        ..config.hint_limits
    };
    let Some(dir) = config.data_dir.clone() else {
        return Ok((Store::new(), HintStore::new(limits)));
    };
    let lock = crate::durable::lock_dir(&dir)?;
    let progress = Arc::new(crate::durable::Progress::default());
    let loading = progress.clone();
    let load_dir = dir.clone();
    let load = tokio::task::spawn_blocking(move || {
        let store = Store::new();
        let mut hints = HintStore::new(limits);
        let now = Instant::now();
        let report = crate::durable::recover(&load_dir, &loading, |record| match record {
            Record::Key { key, versions } => store.restore(&key, versions),
            Record::Hint {
                home,
                key,
                versions,
            } => hints.restore(&NodeId::from(home.as_str()), key, versions, now),
        })?;
        Ok::<_, Error>((store, hints, report))
    });
    let (store, hints, report) = tokio::select! {
        res = load => res.map_err(|e| Error::Io(Arc::new(std::io::Error::other(e.to_string()))))??,
        () = crate::api::serve_loading(http, progress) => unreachable!("serves until dropped"),
    };
    info!(
        dir = %dir.display(),
        snapshot = ?report.snapshot,
        records = report.records,
        bytes = report.bytes,
        keys = store.stats().keys,
        set_aside = report.set_aside.len(),
        torn_tail = report.torn_tail,
        took_ms = report.took.as_millis() as u64,
        "data dir loaded"
    );
    let wal = crate::durable::Wal::open(
        &crate::durable::DurableConfig {
            dir,
            fsync: config.fsync,
            interval: config.fsync_interval,
            snapshot_log_bytes: config.snapshot_log_bytes,
        },
        lock,
    )?;
    wal.stats
        .corrupt_files
        .fetch_add(report.set_aside.len() as u64, Ordering::Relaxed);
    let mut store = store;
    let mut hints = hints;
    store.set_log(wal.clone());
    hints.set_log(wal);
    Ok((store, hints))
}

/// Locks a std mutex, ignoring poisoning: every critical section in ringkv is a single map
/// update that leaves the data consistent even if a panic interrupts the caller afterwards.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A generation new at every start: the wall clock in milliseconds, bumped past the last one
/// handed out in this process so two nodes started in the same millisecond by one test still
/// differ. The system clock, not the node's [`crate::clock::Clock`]: a restart must get a
/// higher generation than the process it replaces even if a test set that node's clock back.
fn new_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::clock::system_ms();
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

impl Node {
    /// What this node holds for `key`: its own copy merged with any hinted copy.
    pub(crate) fn local_read(&self, key: &Bytes) -> VersionSet {
        let mut vs = self.store.get(key).unwrap_or_default();
        if let Some(hinted) = lock(&self.hints).get(key) {
            vs.merge(&hinted);
        }
        vs
    }

    /// Keeps a copy for a dead home replica (this node is its fallback).
    pub(crate) fn store_hint(&self, home: NodeId, key: Bytes, versions: &VersionSet) -> Result<()> {
        let dead_for = self.view().dead_for(&home);
        let res = lock(&self.hints).add(&home, key, versions, dead_for, Instant::now());
        match res {
            Ok(()) => {
                Stats::incr(&self.stats.hints_stored);
                Ok(())
            }
            Err(why) => {
                Stats::incr(&self.stats.hints_dropped);
                warn!(home = %home, ?why, "hint refused");
                Err(Error::Rejected(format!("hint for {home}: {why:?}")))
            }
        }
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
