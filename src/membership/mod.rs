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

use ::chitchat::ChitchatHandle;
use ::chitchat::transport::ChannelTransport;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::error::Result;
use crate::ring::{NodeId, Ring};

mod chitchat;
mod roster;
pub mod sealed_udp;

pub use self::chitchat::garbage;

/// Node-state key holding the node's HTTP address.
pub const KEY_HTTP: &str = "http";
/// Node-state key holding the node's RPC address.
pub const KEY_RPC: &str = "rpc";
/// Node-state key holding the node's [`Status`].
pub const KEY_STATUS: &str = "status";
/// Node-state key holding the prefixes the node's watchers follow
/// ([`crate::rpc::Announcement`]).
pub const KEY_WATCH: &str = "watch";
/// Node-state key holding the members this node sees down (`membership/roster.rs`): how a dead node
/// keeps its place in the ring after chitchat forgot its generation.
pub const KEY_DOWN: &str = "down";
/// Node-state key holding the node's zone (`--zone`); [`crate::ring::DEFAULT_ZONE`] if absent.
pub const KEY_ZONE: &str = "zone";
/// Node-state key holding the node's memory use and limit ([`MemoryUse`]), refreshed every
/// [`crate::memory::GOSSIP_INTERVAL`]; absent from the previous release, which skips it.
pub const KEY_MEMORY: &str = "memory";

/// A member's memory use and `--max-memory` in bytes (0: no limit), as it gossips them
/// (`used,limit`, rounded to MiB so that gossip carries a change only now and then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    pub used: u64,
    pub limit: u64,
}

impl MemoryUse {
    /// The gossiped form, `used,limit`.
    pub fn encode(&self) -> String {
        format!("{},{}", self.used, self.limit)
    }

    /// Reads the gossiped form; `None` if absent or malformed.
    pub fn decode(value: Option<&str>) -> Option<MemoryUse> {
        let (used, limit) = value?.split_once(',')?;
        Some(MemoryUse {
            used: used.trim().parse().ok()?,
            limit: limit.trim().parse().ok()?,
        })
    }
}

/// What a node says of itself, under [`KEY_STATUS`].
///
/// A node moves `joining → alive → stopping` (or `leaving`), never back: see
/// [`Status::may_become`]. A status this build does not know (a newer build's) is kept as
/// gossiped, and such a member is treated as neither serving nor taking copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Status {
    /// Started but cannot serve yet: it has not heard a seed, does not see a quorum, or has not
    /// caught up with its peers by anti-entropy ([`crate::readiness`]). Peers keep it in the
    /// ring and send it copies and hints, but route no client request to it, so a node
    /// restarted empty never coordinates a write or answers a read from a partial store.
    Joining,
    /// Serving normally.
    Alive,
    /// Shutting down for now (SIGTERM): peers stop routing to it at once, but it keeps its
    /// place in the ring, since it is expected back.
    Stopping,
    /// Handing its data over before it exits. It is out of the ring at once.
    Leaving,
    /// A status this build does not know, as gossiped.
    Other(Arc<str>),
}

impl Status {
    /// The status as gossiped and shown (`/cluster/members`).
    pub fn as_str(&self) -> &str {
        match self {
            Status::Joining => "joining",
            Status::Alive => "alive",
            Status::Stopping => "stopping",
            Status::Leaving => "leaving",
            Status::Other(s) => s,
        }
    }

    /// Parses a gossiped status; an unknown one is kept as [`Status::Other`].
    pub fn parse(s: &str) -> Status {
        match s {
            "joining" => Status::Joining,
            "alive" => Status::Alive,
            "stopping" => Status::Stopping,
            "leaving" => Status::Leaving,
            other => Status::Other(Arc::from(other)),
        }
    }

    /// Whether a node may announce `next` after `self`: forward only, so a late announcement
    /// (readiness finishing during a shutdown) never brings a stopping node back.
    pub fn may_become(&self, next: &Status) -> bool {
        match next {
            Status::Alive => *self == Status::Joining,
            Status::Stopping => matches!(self, Status::Joining | Status::Alive),
            Status::Leaving => true,
            Status::Joining | Status::Other(_) => false,
        }
    }

    /// Serves client requests (with the member up).
    pub fn serves(&self) -> bool {
        *self == Status::Alive
    }

    /// Takes copies, hints and handoffs (with the member up): serving, or still joining.
    pub fn takes_copies(&self) -> bool {
        matches!(self, Status::Alive | Status::Joining)
    }

    /// Holds a place in the ring: every status but leaving.
    pub fn in_ring(&self) -> bool {
        *self != Status::Leaving
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Status {
    fn from(s: String) -> Status {
        Status::parse(&s)
    }
}

impl From<Status> for String {
    fn from(s: Status) -> String {
        s.as_str().to_string()
    }
}

/// A node's gossip counters (`/admin/stats`, `/metrics`): per node, so that in-process rings
/// and the simulator see each node's own.
#[derive(Debug, Default)]
pub struct GossipCounters {
    /// Bytes of datagrams sent.
    pub bytes_sent: AtomicU64,
    /// Datagrams sent.
    pub datagrams_sent: AtomicU64,
    /// Bytes of datagrams received.
    pub bytes_received: AtomicU64,
    /// The largest datagram sent.
    pub largest_sent: AtomicU64,
    /// Datagrams chitchat could not decode ([`garbage`]).
    pub rejected: AtomicU64,
    /// Datagrams refused by sealed gossip: forged, truncated, replayed, skewed, undecodable
    /// ([`crate::seal`]). Always 0 without a gossip key.
    pub refused: AtomicU64,
}

/// How often the view is recomputed even without a change notification from chitchat. The
/// notifications cover joins, deaths and key changes; this is a safety net, so it is slow.
pub(crate) const VIEW_REFRESH: Duration = Duration::from_secs(1);

/// How long chitchat keeps the state of a dead generation, of any node, before forgetting it
/// (its `dead_node_grace_period`; digests stop listing it after half of this). Short, so
/// that the generations a restarting node leaves behind leave every digest within seconds
/// and a node restarted a thousand times costs gossip no more than one restarted once. The
/// ring's memory of down nodes is the roster (`membership/roster.rs`), per node id, for [`GossipConfig::dead_node_grace`].
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
    /// How long a dead node keeps its place in the ring (the roster, `membership/roster.rs`) unless a newer
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
    /// What the node says of itself.
    pub status: Status,
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
    /// Its memory use and limit, as last gossiped (`None` before it said, or from a
    /// previous release).
    pub memory: Option<MemoryUse>,
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
    /// was heard: the cluster secrets differ ([`sealed_udp::RefusedSources`]).
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
            .is_some_and(|m| m.alive && m.status.serves())
    }

    /// True if `id` is up and takes copies: serving, or still joining. Writes, hints and
    /// handoffs go to joining nodes too, so they catch up sooner.
    pub fn is_up(&self, id: &str) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.alive && m.status.takes_copies())
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

/// The node and generation the view places at an address. A connection to an address
/// answered by anyone else is refused as unreachable: a node that stopped leaves its port
/// behind, and a process started later may be given it (a restarted node, or another
/// cluster's). That process would answer a read with "nothing here", which counts toward R
/// and can hide a write the real replicas hold.
pub fn expect_from_view(view: watch::Receiver<Arc<View>>) -> crate::rpc::client::Expect {
    Arc::new(move |addr| {
        let view = view.borrow();
        // Two members may name one address (one left, another took its port): the live one,
        // else the newest, is the one there now.
        view.members
            .values()
            .filter(|m| m.rpc == Some(addr))
            .max_by_key(|m| (m.alive, m.generation))
            .map(|m| (m.id.to_string(), m.generation))
    })
}

/// The members that hold a place in the ring: all but those leaving, dead or alive.
fn in_ring(members: &BTreeMap<NodeId, Member>) -> impl Iterator<Item = &Member> {
    members.values().filter(|m| m.status.in_ring())
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
        (KEY_STATUS.to_string(), Status::Joining.to_string()),
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
    /// This node's gossip counters.
    counters: Arc<GossipCounters>,
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
    /// Where the node's gossip traffic and refusals are counted (the node's
    /// [`crate::stats::Stats::gossip`]).
    pub counters: Arc<GossipCounters>,
}

impl Membership {
    /// Starts gossip and the task that keeps the view current.
    pub async fn start(
        cfg: MembershipConfig,
        transport: GossipTransport,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Membership> {
        match transport {
            GossipTransport::Custom(gossip) => gossip.start(cfg, shutdown, tracker).await,
            GossipTransport::Udp => chitchat::start(cfg, None, shutdown, tracker).await,
            GossipTransport::Channel(t) => chitchat::start(cfg, Some(t), shutdown, tracker).await,
        }
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
            counters: Arc::default(),
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
    /// see [`crate::seal`]). Always 0 without a gossip key.
    pub fn gossip_datagrams_refused(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
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
            status: Status::parse(status),
            dead_since: (!alive).then(Instant::now),
            watch: None,
            build: Arc::new(Build {
                version: Some(Arc::from("9.9.9")),
                protocols: Protocols::OURS,
                features: features.iter().map(|f| Arc::from(*f)).collect(),
            }),
            zone: zone_of(None),
            memory: None,
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
        let a = member("a", true, "alive", &["f"]);
        let b = member("b", true, "alive", &["f"]);
        assert!(view(vec![a.clone(), b.clone()]).feature_active("f"));
        let lacking_dead = member("c", false, "alive", &[]);
        assert!(!view(vec![a.clone(), b.clone(), lacking_dead]).feature_active("f"));
        let lacking_alive = member("c", true, "joining", &[]);
        assert!(!view(vec![a.clone(), b.clone(), lacking_alive]).feature_active("f"));
        let leaving = member("c", true, "leaving", &[]);
        assert!(view(vec![a.clone(), b.clone(), leaving]).feature_active("f"));
        let mut legacy = member("c", true, "alive", &[]);
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
                counters: Default::default(),
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
                counters: Default::default(),
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
