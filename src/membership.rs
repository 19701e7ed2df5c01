//! Membership and failure detection over chitchat gossip.
//!
//! Every node runs a chitchat instance. Its identity is a `ChitchatId` whose `node_id` is the
//! node's `--id` and whose `generation_id` is the start time in milliseconds, new at every
//! start: chitchat never re-gossips a node restarted with an old generation, and the version
//! clocks use the same generation so a restarted node never reuses a counter.
//!
//! Gossip carries metadata only, as node-state keys: the node's HTTP address, RPC address,
//! status, zone and build (version, protocol range, features: [`crate::compat`]). Data never
//! goes through gossip (a value over ~64 KB would stall it).
//!
//! From chitchat's state this module derives a [`View`]: one [`Member`] per node id, where
//! the highest generation wins (right after a restart both generations can look alive), each
//! alive or dead according to chitchat's phi-accrual detector. The ring is rebuilt only when
//! the *set of node ids* changes, never when a node merely goes down: a down node keeps its
//! place in the ring (Dynamo), and the coordinator skips it.
//!
//! chitchat forgets every dead generation after [`FORGET_DEAD_GENERATION`] (10 s), so that a
//! node restarted many times does not grow every digest by one entry per restart. What keeps
//! a down node in the ring for [`GossipConfig::dead_node_grace`] is the roster (`roster`):
//! each node gossips, under [`KEY_DOWN`], the members it saw die, one entry per node id, and
//! merges its peers' rosters into its view.
//!
//! The view is published through a `watch` channel as an `Arc<View>`, so a request takes a
//! consistent snapshot with one atomic reference-count increment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, Socket, Transport, UdpSocket};
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::ring::{NodeId, Ring};
use crate::seal::SealedUdp;

mod roster;

/// Node-state key holding the node's HTTP address.
pub const KEY_HTTP: &str = "http";
/// Node-state key holding the node's RPC address.
pub const KEY_RPC: &str = "rpc";
/// Node-state key holding the node's status: [`STATUS_JOINING`], [`STATUS_ALIVE`],
/// [`STATUS_STOPPING`] or [`STATUS_LEAVING`].
pub const KEY_STATUS: &str = "status";
/// Node-state key holding the prefixes the node's watchers follow
/// ([`crate::rpc::Announcement`]).
pub const KEY_WATCH: &str = "watch";
/// Node-state key holding the members this node sees down ([`roster`]): how a dead node
/// keeps its place in the ring after chitchat forgot its generation.
pub const KEY_DOWN: &str = "down";
/// Node-state key holding the node's zone (`--zone`); [`crate::ring::DEFAULT_ZONE`] if absent.
pub const KEY_ZONE: &str = "zone";
/// A node that started but cannot serve yet: it has not heard a seed, does not see a quorum, or
/// has not caught up with its peers by anti-entropy ([`crate::readiness`]). Peers keep it in
/// the ring and send it copies and hints, but route no client request to it, so a node
/// restarted empty never coordinates a write or answers a read from a partial store.
pub const STATUS_JOINING: &str = "joining";
/// A node serving normally.
pub const STATUS_ALIVE: &str = "alive";
/// A node handing its data over before it exits. It is out of the ring at once.
pub const STATUS_LEAVING: &str = "leaving";
/// A node shutting down for now (SIGTERM): peers stop routing to it at once, but it keeps
/// its place in the ring, since it is expected back.
pub const STATUS_STOPPING: &str = "stopping";

/// How often the view is recomputed even without a change notification from chitchat. The
/// notifications cover joins, deaths and key changes; this is a safety net, so it is slow.
const VIEW_REFRESH: Duration = Duration::from_secs(1);

/// How long chitchat keeps the state of a dead generation, of any node, before forgetting it
/// (its `dead_node_grace_period`; digests stop listing it after half of this). Short, so
/// that the generations a restarting node leaves behind leave every digest within seconds
/// and a node restarted a thousand times costs gossip no more than one restarted once. The
/// ring's memory of down nodes is [`roster`], per node id, for [`GossipConfig::dead_node_grace`].
/// Long enough that a node that is merely slow, or briefly cut off, is rarely forgotten; when
/// it is, its next heartbeat recreates it.
pub const FORGET_DEAD_GENERATION: Duration = Duration::from_secs(10);

/// Gossip and failure-detector tunables.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// How often each node gossips with a few peers.
    pub interval: Duration,
    /// Phi-accrual threshold above which a silent node is declared dead.
    pub phi_threshold: f64,
    /// Assumed heartbeat interval before enough samples exist. Short, so that a node killed
    /// right after it joined is still detected within about two seconds.
    pub initial_interval: Duration,
    /// How long a dead node keeps its place in the ring ([`roster`]) unless a newer
    /// generation of it starts; then the ring rebuilds without it.
    pub dead_node_grace: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        // Measured on loopback: a SIGKILLed node is marked dead in about 1 s with these.
        GossipConfig {
            interval: Duration::from_millis(200),
            phi_threshold: 8.0,
            initial_interval: Duration::from_millis(200),
            dead_node_grace: Duration::from_secs(24 * 3600),
        }
    }
}

/// Which network gossip runs over, or which membership protocol replaces chitchat.
#[derive(Clone)]
pub enum GossipTransport {
    /// Real UDP, for `ringkv serve`.
    Udp,
    /// In-memory channels, for in-process test clusters; links can be cut.
    Channel(ChannelTransport),
    /// Another membership protocol: the deterministic simulator's (`tests/sim`), because
    /// chitchat seeds its peer choice from the OS and iterates `HashMap`s with random state,
    /// so one seed could not replay one run.
    Custom(Arc<dyn Gossip>),
}

/// A membership protocol other than chitchat ([`GossipTransport::Custom`]).
///
/// It publishes the same [`View`] chitchat's state is turned into, and carries the node's own
/// keys ([`KEY_HTTP`], [`KEY_RPC`], [`KEY_STATUS`], [`KEY_WATCH`]) to its peers. Its tasks run
/// on `tracker` and stop when `shutdown` is cancelled.
#[async_trait]
pub trait Gossip: Send + Sync + 'static {
    /// Starts membership for the node `cfg` describes.
    async fn start(
        &self,
        cfg: MembershipConfig,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Membership>;
}

/// Sets keys in a node's own gossiped state.
#[async_trait]
pub trait OwnKeys: Send + Sync + 'static {
    /// Sets `key` to `value`; peers learn it with the next gossip.
    async fn set(&self, key: &str, value: &str);
}

/// One node as seen through gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub generation: u64,
    /// Its gossip address, as it advertises it.
    pub gossip: SocketAddr,
    pub http: Option<SocketAddr>,
    pub rpc: Option<SocketAddr>,
    pub alive: bool,
    /// What the node says of itself: `alive`, or `leaving` during a shutdown.
    pub status: String,
    /// When this node first saw it dead (local observation, by tokio's clock; `None` while
    /// alive).
    pub dead_since: Option<Instant>,
    /// The key prefixes its watchers follow, as it last gossiped them.
    pub watch: Option<Arc<crate::rpc::Announcement>>,
    /// Its build: version, protocol range, features ([`crate::compat`]); the previous
    /// release's for a member that gossips none.
    pub build: Arc<crate::compat::Build>,
    /// Its zone (`--zone`), [`crate::ring::DEFAULT_ZONE`] if it names none.
    pub zone: crate::ring::Zone,
}

/// The zone a member gossips under [`KEY_ZONE`], or the default one.
pub fn zone_of(value: Option<&str>) -> crate::ring::Zone {
    match value.map(str::trim) {
        Some(z) if !z.is_empty() => crate::ring::Zone::from(z),
        _ => crate::ring::Zone::from(crate::ring::DEFAULT_ZONE),
    }
}

/// A consistent snapshot of the cluster: members and the ring built from them.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub members: BTreeMap<NodeId, Member>,
    pub ring: Arc<Ring>,
    /// This node has heard gossip from one of its seeds (always true without seeds other
    /// than itself): until then its view may be a partition of one.
    pub heard_seed: bool,
    /// Seeds whose gossip reached this node but failed authentication lately, while no seed
    /// was heard: the cluster secrets differ ([`crate::seal::RefusedSources`]).
    pub refused_seeds: Vec<SocketAddr>,
    /// [`View::routing_version`], computed once per view: every HTTP answer carries it.
    pub(crate) routing_version: std::sync::OnceLock<Arc<str>>,
}

impl View {
    /// A view of `members` routed by `ring`: what a [`Gossip`] protocol publishes.
    pub fn new(members: BTreeMap<NodeId, Member>, ring: Arc<Ring>, heard_seed: bool) -> View {
        View {
            members,
            ring,
            heard_seed,
            refused_seeds: Vec::new(),
            routing_version: Default::default(),
        }
    }

    /// The ring of `members`: every member that is not leaving, dead or alive, each in its
    /// zone once every one of them supports zone placement (the feature gate
    /// [`crate::compat::FEATURE_ZONES`]; until then all in one zone, as older builds place).
    /// Built only when that layout changed since `prev`; otherwise `prev`'s is shared.
    pub fn ring_of(
        members: &BTreeMap<NodeId, Member>,
        prev: Option<&View>,
        vnodes: usize,
    ) -> Arc<Ring> {
        let zoned = features_of(members).contains(crate::compat::FEATURE_ZONES);
        let default = crate::ring::Zone::from(crate::ring::DEFAULT_ZONE);
        let layout: Vec<(NodeId, crate::ring::Zone)> = in_ring(members)
            .map(|m| {
                let zone = if zoned { &m.zone } else { &default };
                (m.id.clone(), zone.clone())
            })
            .collect();
        match prev {
            Some(p) if p.ring.layout().eq(layout.iter().map(|(n, z)| (n, z))) => p.ring.clone(),
            _ => Arc::new(Ring::with_zones(layout, vnodes)),
        }
    }

    /// True if `id` serves client requests: up, and announcing `alive` (not joining,
    /// stopping or leaving). Only such nodes coordinate writes and answer reads.
    pub fn is_alive(&self, id: &str) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.alive && m.status == STATUS_ALIVE)
    }

    /// True if `id` is up and takes copies: serving, or still joining. Writes, hints and
    /// handoffs go to joining nodes too, so they catch up sooner.
    pub fn is_up(&self, id: &str) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.alive && (m.status == STATUS_ALIVE || m.status == STATUS_JOINING))
    }

    /// The member with this id.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    /// What clients route by (`GET /cluster/ring`, the `x-ringkv-ring` header): the ring and,
    /// for each of its nodes, whether it serves and where its HTTP API is. A client whose
    /// copy has another version fetches the ring again.
    /// 16 hex digits, as `x-ringkv-ring` carries it.
    pub fn routing_version(&self) -> &str {
        self.routing_version.get_or_init(|| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&self.ring.fingerprint().to_le_bytes());
            for id in self.ring.nodes() {
                h.update(id.as_bytes());
                h.update(&[u8::from(self.is_alive(id))]);
                let http = self.member(id).and_then(|m| m.http);
                h.update(http.map(|a| a.to_string()).unwrap_or_default().as_bytes());
            }
            Arc::from(format!("{:016x}", h.digest()))
        })
    }

    /// The ring's active features: those every member supports, dead members within their
    /// grace included, leaving members not ([`crate::compat::active`]).
    pub fn features(&self) -> std::collections::BTreeSet<Arc<str>> {
        features_of(&self.members)
    }

    /// Whether the feature gate `name` is open: every member supports it.
    pub fn feature_active(&self, name: &str) -> bool {
        self.features().contains(name)
    }

    /// How long this node has seen `id` dead, if it has.
    pub fn dead_for(&self, id: &str) -> Option<Duration> {
        self.members
            .get(id)
            .and_then(|m| m.dead_since)
            .map(|t| t.elapsed())
    }
}

/// The members that hold a place in the ring: all but those leaving, dead or alive.
fn in_ring(members: &BTreeMap<NodeId, Member>) -> impl Iterator<Item = &Member> {
    members.values().filter(|m| m.status != STATUS_LEAVING)
}

/// The features every member in the ring supports ([`crate::compat::active`]).
fn features_of(members: &BTreeMap<NodeId, Member>) -> std::collections::BTreeSet<Arc<str>> {
    crate::compat::active(in_ring(members).map(|m| &*m.build))
}

/// Why a node that hears its seeds cannot join them: their gossip fails authentication.
pub fn refused_seeds_reason(refused: &[SocketAddr]) -> String {
    let seeds: Vec<String> = refused.iter().map(SocketAddr::to_string).collect();
    let (s, verb) = if seeds.len() == 1 {
        ("seed", "answers")
    } else {
        ("seeds", "answer")
    };
    format!(
        "{s} {} {verb}, but {} datagrams fail authentication: check --cluster-secret-file \
         (every node needs the same secret)",
        seeds.join(", "),
        if seeds.len() == 1 { "its" } else { "their" }
    )
}

/// The keys a node gossips from its start: its addresses, its status (joining until
/// readiness says otherwise, see [`crate::readiness`]) and its build ([`crate::compat`]).
/// Every [`Gossip`] starts with these.
pub fn own_keys(cfg: &MembershipConfig) -> Vec<(String, String)> {
    let mut keys = vec![
        (KEY_HTTP.to_string(), cfg.http_addr.to_string()),
        (KEY_RPC.to_string(), cfg.rpc_addr.to_string()),
        (KEY_STATUS.to_string(), STATUS_JOINING.to_string()),
        (KEY_ZONE.to_string(), cfg.zone.to_string()),
    ];
    keys.extend(
        crate::compat::Build::own_keys()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    keys
}

/// The running gossip of one node.
pub struct Membership {
    /// chitchat's handle; `None` for a [`Gossip`] protocol, whose tasks stop with the node's.
    chitchat: Option<Arc<ChitchatHandle>>,
    keys: Arc<dyn OwnKeys>,
    view_rx: watch::Receiver<Arc<View>>,
    gossip_addr: SocketAddr,
    /// Gossip datagrams this node refused ([`crate::seal`]); stays 0 without a key.
    refused: Arc<AtomicU64>,
}

/// What [`Membership::start`] needs.
pub struct MembershipConfig {
    pub id: NodeId,
    pub generation: u64,
    pub cluster_id: String,
    pub gossip_addr: SocketAddr,
    pub seeds: Vec<String>,
    pub http_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    /// The node's zone (`--zone`).
    pub zone: crate::ring::Zone,
    /// The gossip address peers reach this node at (`--advertise-gossip`); the bound one if
    /// `None`.
    pub advertise_gossip: Option<SocketAddr>,
    pub vnodes: usize,
    pub gossip: GossipConfig,
    /// The key gossip datagrams are sealed with (`ClusterSecret::derive("gossip")`, see
    /// [`crate::seal`]); `None` gossips in the clear. Only [`GossipTransport::Udp`] can be
    /// sealed: [`Membership::start`] refuses a key with channel gossip rather than run
    /// unauthenticated.
    pub gossip_key: Option<[u8; 32]>,
}

impl Membership {
    /// Starts gossip and the task that keeps the view current.
    pub async fn start(
        cfg: MembershipConfig,
        transport: GossipTransport,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Membership> {
        if let GossipTransport::Custom(gossip) = transport {
            return gossip.start(cfg, shutdown, tracker).await;
        }
        let refused = Arc::new(AtomicU64::new(0));
        let refused_sources = cfg.gossip_key.map(|_| Arc::default());
        // Bind before building the identity, so that port 0 advertises the real port.
        let (transport, gossip_addr): (Box<dyn Transport>, SocketAddr) = match transport {
            GossipTransport::Udp => {
                // chitchat's errors are `anyhow`; `?` keeps them whole (see `Error::from`).
                let socket: Box<dyn Socket> = match &cfg.gossip_key {
                    Some(key) => {
                        let sources = refused_sources.clone().unwrap_or_default();
                        Box::new(
                            SealedUdp::bind(cfg.gossip_addr, key, refused.clone(), sources).await?,
                        )
                    }
                    None => Box::new(UdpSocket::open(cfg.gossip_addr).await?),
                };
                let addr = socket.local_addr()?;
                let socket: Box<dyn Socket> = Box::new(traffic::Counted(socket));
                (
                    Box::new(PreboundUdp(std::sync::Mutex::new(Some(socket)))),
                    addr,
                )
            }
            GossipTransport::Channel(_) if cfg.gossip_key.is_some() => {
                // Channel gossip passes envelopes, not bytes: there is nothing to seal.
                return Err(Error::invalid(
                    "a gossip key needs UDP gossip: in-process channel gossip cannot be \
                     authenticated",
                ));
            }
            GossipTransport::Channel(t) => (Box::new(t), cfg.gossip_addr),
            GossipTransport::Custom(_) => unreachable!("started above"),
        };
        let bound_gossip = gossip_addr;
        let gossip_addr = cfg.advertise_gossip.unwrap_or(bound_gossip);
        crate::net::check_advertised("--gossip", "--advertise-gossip", gossip_addr)?;
        let chitchat_id = ChitchatId::new(cfg.id.to_string(), cfg.generation, gossip_addr);
        let keys = own_keys(&cfg);
        let config = ChitchatConfig {
            chitchat_id,
            cluster_id: cfg.cluster_id,
            gossip_interval: cfg.gossip.interval,
            listen_addr: bound_gossip,
            seed_nodes: cfg.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: cfg.gossip.phi_threshold,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(10),
                initial_interval: cfg.gossip.initial_interval,
                dead_node_grace_period: FORGET_DEAD_GENERATION.min(cfg.gossip.dead_node_grace),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let chitchat = spawn_chitchat(config, keys, transport.as_ref()).await?;

        let chitchat = Arc::new(chitchat);
        let cc = chitchat.chitchat();
        let mut live_rx = cc.lock().await.live_nodes_watcher();
        // Seeds that are not this node itself: hearing one of them proves this node joined the
        // ring rather than sitting alone.
        let mut needs_seed = false;
        for seed in &cfg.seeds {
            // A name that does not resolve now may be another node's.
            let addrs = crate::net::resolve(seed).await.unwrap_or_default();
            needs_seed |= addrs.is_empty() || addrs.iter().any(|a| *a != gossip_addr);
        }
        let mut task = ViewTask {
            id: cfg.id.clone(),
            vnodes: cfg.vnodes,
            needs_seed,
            grace: cfg.gossip.dead_node_grace,
            roster: BTreeMap::new(),
            seen_alive: Default::default(),
            refused_sources,
            refused_logged: None,
        };
        let first = task.compute(&mut *cc.lock().await, None);
        let (view_tx, view_rx) = watch::channel(Arc::new(first));
        let probe = chitchat.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(VIEW_REFRESH);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    res = live_rx.changed() => if res.is_err() { return },
                    _ = tick.tick() => task.probe_forgotten(&probe),
                }
                let prev = view_tx.borrow().clone();
                let next = task.compute(&mut *cc.lock().await, Some(&prev));
                if next.members != prev.members
                    || next.heard_seed != prev.heard_seed
                    || next.refused_seeds != prev.refused_seeds
                {
                    log_changes(&prev, &next);
                    let _ = view_tx.send(Arc::new(next));
                }
            }
        });
        Ok(Membership {
            keys: Arc::new(ChitchatKeys(chitchat.chitchat())),
            chitchat: Some(chitchat),
            view_rx,
            gossip_addr,
            refused,
        })
    }

    /// The membership of a [`Gossip`] protocol: the views it publishes, the handle that sets
    /// the node's own keys, and the gossip address it advertises.
    pub fn custom(
        view_rx: watch::Receiver<Arc<View>>,
        keys: Arc<dyn OwnKeys>,
        gossip_addr: SocketAddr,
    ) -> Membership {
        Membership {
            chitchat: None,
            keys,
            view_rx,
            gossip_addr,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.view_rx.borrow().clone()
    }

    /// A receiver that sees every new view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.view_rx.clone()
    }

    /// The gossip address actually bound.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Gossip datagrams this node refused (forged, truncated, replayed, skewed, undecodable;
    /// see [`crate::seal`]). Always 0 without a gossip key. [`crate::seal::refused`] is the
    /// same count for the whole process.
    pub fn gossip_datagrams_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A handle that sets this node's own gossiped keys.
    pub fn self_keys(&self) -> SelfKeys {
        SelfKeys(self.keys.clone())
    }

    /// Stops gossiping.
    pub async fn shutdown(self) {
        // The view task holds the handle too (to probe forgotten members), so stop through
        // the shared handle rather than by taking it.
        if let Some(chitchat) = self.chitchat {
            let _ = chitchat.initiate_shutdown();
            if let Err(err) = chitchat.termination_watcher().await {
                warn!(%err, "gossip did not stop cleanly");
            }
        }
    }
}

/// Sets this node's own gossiped keys (status during a leave).
#[derive(Clone)]
pub struct SelfKeys(Arc<dyn OwnKeys>);

impl SelfKeys {
    /// Sets `key` to `value` in this node's gossiped state.
    pub async fn set(&self, key: &str, value: &str) {
        self.0.set(key, value).await;
    }
}

/// A node's own keys in chitchat's state.
struct ChitchatKeys(Arc<tokio::sync::Mutex<chitchat::Chitchat>>);

#[async_trait]
impl OwnKeys for ChitchatKeys {
    async fn set(&self, key: &str, value: &str) {
        self.0.lock().await.self_node_state().set(key, value);
    }
}

/// The view task's state: what it needs to turn chitchat's state into a [`View`], and the
/// roster it gossips.
struct ViewTask {
    id: NodeId,
    vnodes: usize,
    needs_seed: bool,
    grace: Duration,
    /// What this node gossips under [`KEY_DOWN`], as last set.
    roster: BTreeMap<NodeId, roster::Down>,
    /// The generations of current members this node has seen alive ([`roster::Merge`]).
    seen_alive: std::collections::HashSet<(NodeId, u64)>,
    /// Senders whose sealed gossip failed authentication, with a cluster secret.
    refused_sources: Option<Arc<crate::seal::RefusedSources>>,
    /// When the refused seeds were last logged ([`REFUSED_SEED_LOG_EVERY`]).
    refused_logged: Option<Instant>,
}

/// A seed whose datagrams failed authentication within this window counts as refused.
const REFUSED_SEED_WINDOW: Duration = Duration::from_secs(30);

/// The warning about refused seeds is logged at most this often.
const REFUSED_SEED_LOG_EVERY: Duration = Duration::from_secs(10);

impl ViewTask {
    /// The view of chitchat's state, completed with the down members peers' rosters name;
    /// sets this node's own roster key when the set of down members changed.
    fn compute(&mut self, cc: &mut chitchat::Chitchat, prev: Option<&Arc<View>>) -> View {
        let prev = prev.map(|p| &**p);
        let live: std::collections::HashSet<&ChitchatId> = cc.live_nodes().collect();
        let mut members: BTreeMap<NodeId, Member> = BTreeMap::new();
        for (cid, state) in cc.node_states() {
            let id: NodeId = NodeId::from(&*cid.node_id);
            if members
                .get(&id)
                .is_some_and(|m| m.generation >= cid.generation_id)
            {
                continue; // an older generation of a node we already have
            }
            let addr = |key: &str| state.get(key).and_then(|v| v.parse().ok());
            let alive = live.contains(cid);
            let dead_since = if alive {
                None
            } else {
                let before = prev.and_then(|p| p.members.get(&id));
                match before {
                    Some(m) if !m.alive && m.generation == cid.generation_id => m.dead_since,
                    _ => Some(Instant::now()),
                }
            };
            members.insert(
                id.clone(),
                Member {
                    id,
                    generation: cid.generation_id,
                    gossip: cid.gossip_advertise_addr,
                    http: addr(KEY_HTTP),
                    rpc: addr(KEY_RPC),
                    alive,
                    status: state.get(KEY_STATUS).unwrap_or(STATUS_ALIVE).to_string(),
                    dead_since,
                    watch: state
                        .get(KEY_WATCH)
                        .and_then(crate::rpc::Announcement::decode)
                        .map(Arc::new),
                    build: Arc::new(crate::compat::Build::from_keys(|k| state.get(k))),
                    zone: zone_of(state.get(KEY_ZONE)),
                },
            );
        }
        for m in members.values().filter(|m| m.alive) {
            self.seen_alive.insert((m.id.clone(), m.generation));
        }
        let rosters = cc.node_states().values().filter_map(|s| s.get(KEY_DOWN));
        let roster = roster::Merge {
            own: &self.id,
            prev,
            prev_roster: &self.roster,
            now_ms: crate::clock::system_ms(),
            now: Instant::now(),
            grace: self.grace,
            seen_alive: &self.seen_alive,
        }
        .apply(&mut members, rosters);
        self.seen_alive.retain(|(id, generation)| {
            members.get(id).is_some_and(|m| m.generation == *generation)
        });
        // Once heard, a seed stays heard: readiness must not flap when a seed later dies.
        let heard_seed = !self.needs_seed || prev.is_some_and(|p| p.heard_seed) || {
            let seeds = cc.seed_nodes();
            let me = cc.self_chitchat_id();
            live.iter()
                .any(|cid| *cid != me && seeds.contains(&cid.gossip_advertise_addr))
        };
        // An entry that still holds keeps its `since` (`roster::Merge`), so this changes
        // only when the down members do.
        if roster != self.roster {
            cc.self_node_state().set(KEY_DOWN, roster::encode(&roster));
        }
        self.roster = roster;
        let ring = View::ring_of(&members, prev, self.vnodes);
        let refused_seeds = match &self.refused_sources {
            Some(sources) if !heard_seed => {
                let seeds = cc.seed_nodes();
                let refused: Vec<SocketAddr> = sources
                    .recent(REFUSED_SEED_WINDOW)
                    .into_iter()
                    .filter(|a| seeds.contains(a))
                    .collect();
                self.log_refused(&refused);
                refused
            }
            _ => Vec::new(),
        };
        View {
            members,
            ring,
            heard_seed,
            refused_seeds,
            routing_version: Default::default(),
        }
    }

    /// Says, at most every [`REFUSED_SEED_LOG_EVERY`], which seeds answer with gossip that
    /// fails authentication: the node's own log names the cause, not only the seeds'.
    fn log_refused(&mut self, refused: &[SocketAddr]) {
        if refused.is_empty()
            || self
                .refused_logged
                .is_some_and(|t| t.elapsed() < REFUSED_SEED_LOG_EVERY)
        {
            return;
        }
        self.refused_logged = Some(Instant::now());
        warn!("{}", refused_seeds_reason(refused));
    }

    /// Sends one gossip round to a random member of this node's roster, as chitchat does for
    /// the dead nodes it still holds: once chitchat has forgotten a member, this is how the two
    /// find each other again when it comes back (a partition heals) even if neither is the
    /// other's seed. One datagram per [`VIEW_REFRESH`] at most.
    fn probe_forgotten(&self, chitchat: &ChitchatHandle) {
        use rand::seq::IteratorRandom;
        if let Some(down) = self.roster.values().choose(&mut rand::rng()) {
            let _ = chitchat.gossip(down.gossip);
        }
    }
}

fn log_changes(prev: &View, next: &View) {
    for (id, m) in &next.members {
        match prev.members.get(id) {
            None => info!(node = %id, generation = m.generation, alive = m.alive, "member joined"),
            Some(p)
                if p.alive != m.alive || p.generation != m.generation || p.status != m.status =>
            {
                info!(node = %id, generation = m.generation, alive = m.alive, status = %m.status, "member changed")
            }
            _ => {}
        }
    }
}

/// UDP gossip whose socket (chitchat's own, or [`SealedUdp`]) is bound before chitchat
/// starts, so that port 0 works and the advertised address is the real one.
struct PreboundUdp(std::sync::Mutex<Option<Box<dyn Socket>>>);

#[async_trait]
impl Transport for PreboundUdp {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| anyhow::anyhow!("gossip socket already opened"))?;
        Ok(socket)
    }
}

/// Gossip traffic of this process's UDP gossip sockets, counted as chitchat sends and
/// receives: how the state's size grows with the ring and with restarts shows here first
/// (chitchat's digests list every node state it holds, and a datagram is capped at 65,507
/// bytes). Process-wide, like [`garbage`]: one `ringkv serve` process is one node.
pub mod traffic {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};

    use async_trait::async_trait;
    use chitchat::transport::{RecvOutcome, SendOutcome, Socket};

    static BYTES_SENT: AtomicU64 = AtomicU64::new(0);
    static DATAGRAMS_SENT: AtomicU64 = AtomicU64::new(0);
    static BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);
    static LARGEST_SENT: AtomicU64 = AtomicU64::new(0);

    /// Gossip counters so far: bytes sent, datagrams sent, bytes received, largest datagram
    /// sent.
    pub fn snapshot() -> [u64; 4] {
        [
            BYTES_SENT.load(Ordering::Relaxed),
            DATAGRAMS_SENT.load(Ordering::Relaxed),
            BYTES_RECEIVED.load(Ordering::Relaxed),
            LARGEST_SENT.load(Ordering::Relaxed),
        ]
    }

    /// A gossip socket whose traffic is counted.
    pub(super) struct Counted(pub(super) Box<dyn Socket>);

    #[async_trait]
    impl Socket for Counted {
        fn local_addr(&self) -> anyhow::Result<SocketAddr> {
            self.0.local_addr()
        }

        async fn send(
            &mut self,
            to: SocketAddr,
            envelope: chitchat::ChitchatEnvelope,
        ) -> anyhow::Result<SendOutcome> {
            let outcome = self.0.send(to, envelope).await?;
            let n = outcome.num_bytes_sent as u64;
            BYTES_SENT.fetch_add(n, Ordering::Relaxed);
            DATAGRAMS_SENT.fetch_add(1, Ordering::Relaxed);
            LARGEST_SENT.fetch_max(n, Ordering::Relaxed);
            Ok(outcome)
        }

        async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
            let outcome = self.0.recv().await?;
            BYTES_RECEIVED.fetch_add(outcome.num_bytes_received as u64, Ordering::Relaxed);
            Ok(outcome)
        }
    }
}

/// Counts gossip datagrams that chitchat could not decode.
///
/// chitchat decodes datagrams inside its UDP socket, where ringkv cannot reach (the envelope
/// codec is private to the crate); it drops a bad one and logs a `invalid-chitchat-payload`
/// warning. This tracing layer counts those events, so the count exists even when the log
/// level hides them. It is process-wide: one `ringkv serve` process is one node.
///
/// With a gossip key, a datagram reaches chitchat's decoder only once its MAC is checked:
/// forgeries and garbage are counted by [`crate::seal::refused`] instead, and an authentic
/// envelope chitchat cannot decode is counted by both.
pub mod garbage {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tracing::{Event, Metadata, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};

    static REJECTED: AtomicU64 = AtomicU64::new(0);

    /// Undecodable gossip datagrams seen by this process so far.
    pub fn rejected() -> u64 {
        REJECTED.load(Ordering::Relaxed)
    }

    /// The counting layer; add it to the process's subscriber with [`is_chitchat_udp`] as its
    /// per-layer filter.
    pub struct CountLayer;

    /// True for events of chitchat's UDP transport, the only ones the layer looks at. Use it as
    /// the layer's own filter (`CountLayer.with_filter(filter_fn(is_chitchat_udp))`) so that
    /// it never hides other events from the rest of the subscriber.
    pub fn is_chitchat_udp(meta: &Metadata<'_>) -> bool {
        meta.target().starts_with("chitchat::transport::udp")
    }

    impl<S: Subscriber> Layer<S> for CountLayer {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut visitor = MessageIs(false);
            event.record(&mut visitor);
            if visitor.0 {
                REJECTED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    struct MessageIs(bool);

    impl tracing::field::Visit for MessageIs {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" && format!("{value:?}") == "invalid-chitchat-payload" {
                self.0 = true;
            }
        }
    }
}

#[cfg(test)]
mod feature_tests {
    use super::*;
    use crate::compat::{Build, Protocols};

    fn member(id: &str, alive: bool, status: &str, features: &[&str]) -> Member {
        Member {
            id: NodeId::from(id),
            generation: 1,
            gossip: SocketAddr::from(([127, 0, 0, 1], 7000)),
            http: None,
            rpc: None,
            alive,
            status: status.into(),
            dead_since: (!alive).then(Instant::now),
            watch: None,
            build: Arc::new(Build {
                version: Some(Arc::from("9.9.9")),
                protocols: Protocols::OURS,
                features: features.iter().map(|f| Arc::from(*f)).collect(),
            }),
            zone: zone_of(None),
        }
    }

    fn view(members: Vec<Member>) -> View {
        let members: BTreeMap<NodeId, Member> =
            members.into_iter().map(|m| (m.id.clone(), m)).collect();
        let ring = View::ring_of(&members, None, 8);
        View::new(members, ring, true)
    }

    /// A gate opens only when every member supports it: a dead member (within its grace, so
    /// still in the view) keeps it shut; one that leaves or whose grace ran out (gone from
    /// the view) no longer does.
    #[test]
    fn a_gate_waits_for_every_member_dead_ones_included() {
        let a = member("a", true, STATUS_ALIVE, &["f"]);
        let b = member("b", true, STATUS_ALIVE, &["f"]);
        assert!(view(vec![a.clone(), b.clone()]).feature_active("f"));
        let lacking_dead = member("c", false, STATUS_ALIVE, &[]);
        assert!(!view(vec![a.clone(), b.clone(), lacking_dead]).feature_active("f"));
        let lacking_alive = member("c", true, STATUS_JOINING, &[]);
        assert!(!view(vec![a.clone(), b.clone(), lacking_alive]).feature_active("f"));
        let leaving = member("c", true, STATUS_LEAVING, &[]);
        assert!(view(vec![a.clone(), b.clone(), leaving]).feature_active("f"));
        let mut legacy = member("c", true, STATUS_ALIVE, &[]);
        legacy.build = Arc::default();
        let v = view(vec![a, b, legacy]);
        assert!(!v.feature_active("f"));
        assert!(v.features().is_empty());
    }
}

/// Gossip sealed with the cluster secret ([`crate::seal`]), end to end through chitchat.
#[cfg(test)]
mod sealed_tests {
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use super::*;

    /// Two gossip keys ([`crate::seal`]).
    const KEY: [u8; 32] = [7; 32];
    const OTHER: [u8; 32] = [8; 32];

    struct Node {
        generation: u64,
        membership: Membership,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    }

    async fn start(id: &str, seeds: Vec<String>, key: Option<[u8; 32]>) -> Node {
        start_at(id, ([127, 0, 0, 1], 0).into(), seeds, key).await
    }

    async fn start_at(
        id: &str,
        gossip_addr: SocketAddr,
        seeds: Vec<String>,
        key: Option<[u8; 32]>,
    ) -> Node {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let unused: SocketAddr = ([127, 0, 0, 1], 9).into();
        let generation = crate::clock::system_ms();
        let membership = Membership::start(
            MembershipConfig {
                id: id.into(),
                generation,
                cluster_id: "sealed-test".into(),
                gossip_addr,
                seeds,
                http_addr: unused,
                rpc_addr: unused,
                zone: zone_of(None),
                vnodes: 8,
                gossip: GossipConfig {
                    interval: Duration::from_millis(50),
                    ..GossipConfig::default()
                },
                gossip_key: key,
                advertise_gossip: None,
            },
            GossipTransport::Udp,
            shutdown.clone(),
            &tracker,
        )
        .await
        .unwrap();
        Node {
            generation,
            membership,
            shutdown,
            tracker,
        }
    }

    impl Node {
        fn sees(&self, id: &str) -> bool {
            self.membership.view().member(id).is_some_and(|m| m.alive)
        }

        fn knows(&self, id: &str) -> bool {
            self.membership.view().member(id).is_some()
        }

        async fn stop(self) {
            self.membership.shutdown().await;
            self.shutdown.cancel();
            self.tracker.close();
            self.tracker.wait().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_members_with_the_key_see_each_other() {
        let a = start("a", vec![], Some(KEY)).await;
        let seed = vec![a.membership.gossip_addr().to_string()];
        let b = start("b", seed.clone(), Some(KEY)).await;
        let stranger = start("c", seed.clone(), Some(OTHER)).await;
        let open = start("d", seed, None).await;

        // Poll until a and b see each other and a has refused several datagrams of each
        // outsider's kind; at every look, neither outsider is a member anywhere.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        loop {
            tick.tick().await;
            for (who, n) in [("a", &a), ("b", &b)] {
                for outsider in ["c", "d"] {
                    assert!(!n.knows(outsider), "{who} lists {outsider}");
                }
            }
            assert!(!stranger.knows("a") && !open.knows("a"));
            let done = a.sees("b") && b.sees("a") && a.membership.gossip_datagrams_refused() >= 10;
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a sees b: {}, b sees a: {}, a refused {}",
                a.sees("b"),
                b.sees("a"),
                a.membership.gossip_datagrams_refused()
            );
        }
        for n in [a, b, stranger, open] {
            n.stop().await;
        }
    }

    /// A node whose seed answers with gossip sealed by another secret says so: its view names
    /// the seed as refused, which `/ready` and the log turn into "check
    /// --cluster-secret-file", instead of blaming `--seeds`.
    #[tokio::test]
    async fn a_node_whose_seed_has_another_secret_names_it() {
        // a's address is taken first (port 0, then freed), so that c can name it as its seed
        // and a can name c: each gossips to the other.
        let a_addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port");
        let c = start("c", vec![a_addr.to_string()], Some(OTHER)).await;
        let c_addr = c.membership.gossip_addr().to_string();
        let a = start_at("a", a_addr, vec![c_addr], Some(KEY)).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let view = c.membership.view();
            if view.refused_seeds == [a_addr] {
                assert!(!view.heard_seed);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "c's view: {:?}",
                view.refused_seeds
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(
            refused_seeds_reason(&[a_addr]),
            format!(
                "seed {a_addr} answers, but its datagrams fail authentication: check \
                 --cluster-secret-file (every node needs the same secret)"
            )
        );
        for n in [a, c] {
            n.stop().await;
        }
    }

    /// How many generations `n`'s chitchat holds, of any node.
    async fn generations(n: &Node) -> usize {
        let handle = n.membership.chitchat.as_ref().expect("chitchat");
        handle.chitchat().lock().await.node_states().len()
    }

    /// Polls `done` every 50 ms until it holds, for at most `secs`.
    async fn eventually<F: AsyncFnMut() -> bool>(secs: u64, what: &str, mut done: F) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done().await {
            assert!(Instant::now() < deadline, "not within {secs} s: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restarts_leave_no_generations_behind_and_the_dead_keep_their_place() {
        let a = start("a", vec![], None).await;
        let seed = vec![a.membership.gossip_addr().to_string()];
        // b restarts 12 times: each start is a new generation, each stop leaves one behind.
        let mut b = start("b", seed.clone(), None).await;
        for _ in 0..12 {
            let gen_b = b.generation;
            eventually(5, "a sees b's new generation", async || {
                let view = a.membership.view();
                view.member("b")
                    .is_some_and(|m| m.alive && m.generation == gen_b)
            })
            .await;
            b.stop().await;
            b = start("b", seed.clone(), None).await;
        }
        let c = start("c", seed.clone(), None).await;
        eventually(5, "a sees b and c", async || a.sees("b") && a.sees("c")).await;
        let peak = generations(&a).await;
        assert!(
            peak > 4,
            "a holds {peak} generations right after the restarts"
        );
        // c dies for good: no newer generation will come.
        c.stop().await;
        // chitchat forgets every dead generation, b's old ones and c's: a holds a and b.
        let forget = FORGET_DEAD_GENERATION.as_secs() + 10;
        eventually(forget, "a forgets the dead generations", async || {
            generations(&a).await == 2
        })
        .await;
        // c still has its place in a's ring, dead, from a's roster; b has one member.
        let view = a.membership.view();
        assert!(
            view.member("c").is_some_and(|m| !m.alive),
            "{:?}",
            view.member("c")
        );
        assert!(view.ring.nodes().iter().any(|n| &**n == "c"));
        assert!(view.member("b").is_some_and(|m| m.alive));
        // A node that joins now, after chitchat forgot c, learns c from the rosters.
        let d = start("d", seed, None).await;
        eventually(5, "d learns that c is down", async || {
            d.membership.view().member("c").is_some_and(|m| !m.alive)
        })
        .await;
        eventually(5, "a sees d", async || a.sees("d")).await;
        let ring = |n: &Node| n.membership.view().ring.nodes().to_vec();
        assert_eq!(ring(&d), ring(&a), "a and d route alike");
        assert!(ring(&d).iter().any(|n| &**n == "c"));
        assert!(generations(&d).await <= 3, "d holds only live generations");
        for n in [a, b, d] {
            n.stop().await;
        }
    }

    #[tokio::test]
    async fn a_key_with_channel_gossip_is_refused() {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let unused: SocketAddr = ([127, 0, 0, 1], 9).into();
        let res = Membership::start(
            MembershipConfig {
                id: "a".into(),
                generation: 1,
                cluster_id: "sealed-test".into(),
                gossip_addr: unused,
                seeds: vec![],
                http_addr: unused,
                rpc_addr: unused,
                zone: zone_of(None),
                vnodes: 8,
                gossip: GossipConfig::default(),
                gossip_key: Some(KEY),
                advertise_gossip: None,
            },
            GossipTransport::Channel(Default::default()),
            shutdown,
            &tracker,
        )
        .await;
        assert!(matches!(res, Err(crate::Error::InvalidInput(_))));
    }
}
