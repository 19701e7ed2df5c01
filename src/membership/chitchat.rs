//! The chitchat adapter: UDP gossip (sealed with a cluster secret, [`super::sealed_udp`]) or
//! in-process channels, and the task that turns chitchat's state into a [`View`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{
    ChannelTransport, RecvOutcome, SendOutcome, Socket, Transport, UdpSocket,
};
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::sealed_udp::{RefusedSources, SealedUdp};
use super::{
    FORGET_DEAD_GENERATION, GossipCounters, KEY_DOWN, KEY_HTTP, KEY_MEMORY, KEY_RPC, KEY_STATUS,
    KEY_WATCH, KEY_ZONE, Member, Membership, MembershipConfig, MemoryUse, OwnKeys, Status,
    VIEW_REFRESH, View, own_keys, refused_seeds_reason, roster, zone_of,
};
use crate::error::{Error, Result};
use crate::ring::NodeId;

/// Starts chitchat over `transport` (UDP or channels) and the task that keeps the view
/// current.
pub(super) async fn start(
    cfg: MembershipConfig,
    channels: Option<ChannelTransport>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Membership> {
    let counters = cfg.counters.clone();
    let refused_sources = cfg.gossip_key.map(|_| Arc::default());
    // Bind before building the identity, so that port 0 advertises the real port.
    let (transport, gossip_addr): (Box<dyn Transport>, SocketAddr) = match channels {
        None => {
            // chitchat's errors are `anyhow`; `?` keeps them whole (see `Error::from`).
            let socket: Box<dyn Socket> = match &cfg.gossip_key {
                Some(key) => {
                    let sources = refused_sources.clone().unwrap_or_default();
                    Box::new(
                        SealedUdp::bind(cfg.gossip_addr, key, counters.clone(), sources).await?,
                    )
                }
                None => Box::new(UdpSocket::open(cfg.gossip_addr).await?),
            };
            let addr = socket.local_addr()?;
            let socket: Box<dyn Socket> = Box::new(Counted(socket, counters.clone()));
            (
                Box::new(PreboundUdp(std::sync::Mutex::new(Some(socket)))),
                addr,
            )
        }
        Some(_) if cfg.gossip_key.is_some() => {
            // Channel gossip passes envelopes, not bytes: there is nothing to seal.
            return Err(Error::invalid(
                "a gossip key needs UDP gossip: in-process channel gossip cannot be \
                     authenticated",
            ));
        }
        Some(t) => (Box::new(t), cfg.gossip_addr),
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
        counters,
    })
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
    refused_sources: Option<Arc<RefusedSources>>,
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
                    status: state.get(KEY_STATUS).map_or(Status::Alive, Status::parse),
                    dead_since,
                    watch: state
                        .get(KEY_WATCH)
                        .and_then(crate::rpc::Announcement::decode)
                        .map(Arc::new),
                    build: Arc::new(crate::compat::Build::from_keys(|k| state.get(k))),
                    zone: zone_of(state.get(KEY_ZONE)),
                    memory: MemoryUse::decode(state.get(KEY_MEMORY)),
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

/// A gossip socket whose traffic is counted in its node's [`GossipCounters`]: how the
/// state's size grows with the ring and with restarts shows here first (chitchat's digests
/// list every node state it holds, and a datagram is capped at 65,507 bytes).
struct Counted(Box<dyn Socket>, Arc<GossipCounters>);

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
        let c = &self.1;
        c.bytes_sent.fetch_add(n, Ordering::Relaxed);
        c.datagrams_sent.fetch_add(1, Ordering::Relaxed);
        c.largest_sent.fetch_max(n, Ordering::Relaxed);
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        // chitchat's own socket decodes here: a datagram it cannot decode is counted for this
        // node by [`garbage::CountLayer`].
        let outcome = garbage::counting(self.1.clone(), self.0.recv()).await?;
        self.1
            .bytes_received
            .fetch_add(outcome.num_bytes_received as u64, Ordering::Relaxed);
        Ok(outcome)
    }
}

/// Counts gossip datagrams that chitchat could not decode, per node.
///
/// chitchat decodes datagrams inside its UDP socket, where ringkv cannot reach (the envelope
/// codec is private to the crate); it drops a bad one and logs a `invalid-chitchat-payload`
/// warning. This tracing layer counts those events, so the count exists even when the log
/// level hides them. The socket's `recv` runs inside `counting`, which names the node the
/// event belongs to (a task-local), so nodes that share a process keep their own counts.
///
/// With a gossip key, a datagram reaches chitchat's decoder only once its MAC is checked:
/// forgeries and garbage are counted as refused instead, and an authentic envelope chitchat
/// cannot decode is counted by both.
pub mod garbage {
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use tracing::{Event, Metadata, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};

    use super::GossipCounters;

    tokio::task_local! {
        /// The counters of the node whose gossip socket is decoding.
        static DECODING_FOR: Arc<GossipCounters>;
    }

    /// Runs `decode` (a chitchat socket's `recv`) with its undecodable datagrams counted in
    /// `counters`.
    pub(crate) async fn counting<F: Future>(counters: Arc<GossipCounters>, decode: F) -> F::Output {
        DECODING_FOR.scope(counters, decode).await
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
                let _ = DECODING_FOR.try_with(|c| c.rejected.fetch_add(1, Ordering::Relaxed));
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
