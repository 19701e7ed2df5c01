//! A deterministic membership for the simulator ([`ringkv::membership::Gossip`]).
//!
//! chitchat cannot replay a run: its gossip server seeds its peer choice from the OS and it
//! iterates `HashMap`s with random state. This protocol keeps what ringkv relies on and
//! nothing random: every [`INTERVAL`] each node sends a heartbeat datagram over turmoil's UDP
//! to every peer it knows (its seeds, and every node it heard of), carrying its id,
//! generation, own keys (addresses, status, watched prefixes) and the peers it knows. A peer
//! silent for [`FAIL_AFTER`] is dead. A newer generation of an id replaces the older one.
//! Partitions, loss and delay reach it as they reach RPC, since both cross the simulated
//! network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ringkv::membership::{
    Gossip, KEY_HTTP, KEY_RPC, KEY_STATUS, KEY_WATCH, Member, Membership, MembershipConfig,
    OwnKeys, Status, View,
};
use ringkv::ring::NodeId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a node sends its heartbeat.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// How long a silent peer stays alive: ten missed heartbeats.
pub const FAIL_AFTER: Duration = Duration::from_millis(1_000);

/// The simulator's membership protocol.
pub struct SimGossip;

#[derive(Serialize, Deserialize)]
struct Heartbeat {
    id: String,
    generation: u64,
    gossip: SocketAddr,
    keys: BTreeMap<String, String>,
    peers: Vec<SocketAddr>,
}

/// What a node knows of a peer.
struct Peer {
    generation: u64,
    gossip: SocketAddr,
    keys: BTreeMap<String, String>,
    heard: Instant,
}

struct Keys(Arc<Mutex<BTreeMap<String, String>>>);

#[async_trait]
impl OwnKeys for Keys {
    async fn set(&self, key: &str, value: &str) {
        self.0
            .lock()
            .unwrap()
            .insert(key.to_string(), value.to_string());
    }
}

#[async_trait]
impl Gossip for SimGossip {
    async fn start(
        &self,
        cfg: MembershipConfig,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> ringkv::Result<Membership> {
        let socket = turmoil::net::UdpSocket::bind(cfg.gossip_addr)
            .await
            .map_err(|e| ringkv::Error::Io(Arc::new(e)))?;
        let advertised = cfg.advertise_gossip.unwrap_or(cfg.gossip_addr);
        let own: BTreeMap<String, String> =
            ringkv::membership::own_keys(&cfg).into_iter().collect();
        let keys = Arc::new(Mutex::new(own));
        let seeds: BTreeSet<SocketAddr> = cfg
            .seeds
            .iter()
            .filter_map(|s| s.parse().ok())
            .filter(|a| *a != advertised)
            .collect();
        let mut state = State {
            id: NodeId::from(cfg.id.as_ref()),
            generation: cfg.generation,
            gossip: advertised,
            keys: keys.clone(),
            known: seeds.clone(),
            seeds,
            peers: BTreeMap::new(),
            vnodes: cfg.vnodes,
            heard_seed: false,
        };
        let (tx, rx) = watch::channel(Arc::new(state.view(None)));
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            let mut buf = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    res = socket.recv_from(&mut buf) => {
                        if let Ok((n, _)) = res {
                            super::trace::record(b"udp", &state.id, &buf[..n]);
                            state.receive(&buf[..n]);
                        }
                    }
                    _ = tick.tick() => {
                        let beat = state.heartbeat();
                        for peer in &state.known {
                            let _ = socket.send_to(&beat, *peer).await;
                        }
                    }
                }
                let prev = tx.borrow().clone();
                let next = state.view(Some(&prev));
                if next.members != prev.members || next.heard_seed != prev.heard_seed {
                    let _ = tx.send(Arc::new(next));
                }
            }
        });
        Ok(Membership::custom(rx, Arc::new(Keys(keys)), advertised))
    }
}

struct State {
    id: NodeId,
    generation: u64,
    gossip: SocketAddr,
    keys: Arc<Mutex<BTreeMap<String, String>>>,
    seeds: BTreeSet<SocketAddr>,
    /// Every gossip address heartbeats go to.
    known: BTreeSet<SocketAddr>,
    peers: BTreeMap<NodeId, Peer>,
    vnodes: usize,
    heard_seed: bool,
}

impl State {
    fn heartbeat(&self) -> Vec<u8> {
        let beat = Heartbeat {
            id: self.id.to_string(),
            generation: self.generation,
            gossip: self.gossip,
            keys: self.keys.lock().unwrap().clone(),
            peers: self.known.iter().copied().collect(),
        };
        serde_json::to_vec(&beat).expect("a heartbeat serializes")
    }

    fn receive(&mut self, datagram: &[u8]) {
        let Ok(beat) = serde_json::from_slice::<Heartbeat>(datagram) else {
            return;
        };
        if *beat.id == *self.id {
            return;
        }
        for p in beat.peers {
            if p != self.gossip {
                self.known.insert(p);
            }
        }
        self.known.insert(beat.gossip);
        let id = NodeId::from(beat.id.as_str());
        if self
            .peers
            .get(&id)
            .is_some_and(|p| p.generation > beat.generation)
        {
            return; // an older process of a node restarted since
        }
        if self.seeds.contains(&beat.gossip) {
            self.heard_seed = true;
        }
        self.peers.insert(
            id,
            Peer {
                generation: beat.generation,
                gossip: beat.gossip,
                keys: beat.keys,
                heard: Instant::now(),
            },
        );
    }

    fn view(&self, prev: Option<&Arc<View>>) -> View {
        let mut members = BTreeMap::new();
        let own = self.keys.lock().unwrap().clone();
        let now = Instant::now();
        let me = std::iter::once((&self.id, self.generation, self.gossip, &own, true));
        let others = self.peers.iter().map(|(id, p)| {
            let alive = now.duration_since(p.heard) < FAIL_AFTER;
            (id, p.generation, p.gossip, &p.keys, alive)
        });
        for (id, generation, gossip, keys, alive) in me.chain(others) {
            let addr = |k: &str| keys.get(k).and_then(|v| v.parse().ok());
            let dead_since = if alive {
                None
            } else {
                match prev.and_then(|p| p.members.get(id)) {
                    Some(m) if !m.alive && m.generation == generation => m.dead_since,
                    _ => Some(now),
                }
            };
            members.insert(
                id.clone(),
                Member {
                    id: id.clone(),
                    generation,
                    gossip,
                    http: addr(KEY_HTTP),
                    rpc: addr(KEY_RPC),
                    alive,
                    status: keys
                        .get(KEY_STATUS)
                        .map_or(Status::Alive, |s| Status::parse(s)),
                    dead_since,
                    watch: keys
                        .get(KEY_WATCH)
                        .and_then(|w| ringkv::rpc::Announcement::decode(w))
                        .map(Arc::new),
                    build: Arc::new(ringkv::compat::Build::from_keys(|k| {
                        keys.get(k).map(String::as_str)
                    })),
                    zone: ringkv::membership::zone_of(
                        keys.get(ringkv::membership::KEY_ZONE).map(String::as_str),
                    ),
                    memory: ringkv::membership::MemoryUse::decode(
                        keys.get(ringkv::membership::KEY_MEMORY).map(String::as_str),
                    ),
                },
            );
        }
        let ring = View::ring_of(&members, prev.map(|p| &**p), self.vnodes);
        View::new(members, ring, self.seeds.is_empty() || self.heard_seed)
    }
}
