//! Watches: a live stream of changes to keys under a prefix, on any node, whichever node
//! coordinated the change.
//!
//! **How an event travels.** The node that coordinates a write (or, for an expiry, the
//! key's first live home replica when its sweep drops the value) builds one [`Event`] once
//! the write met its quorum, just before it answers the client. It hands the event to its own
//! watchers and sends it over RPC to every other live node that has a watcher whose prefix
//! matches the key. A node knows which prefixes its peers watch from two sources, newest
//! wins ([`Interest`]): each node gossips its prefixes (so a restarted or partitioned peer
//! catches up), and a node that gains a watcher also tells every live peer directly and
//! waits for them (bounded by the RPC timeout) before the WebSocket handshake completes, so
//! a change acknowledged after the handshake is not missed for lack of gossip.
//!
//! **Delivery guarantee: at most once, while connected.** Events to one node from one
//! coordinator leave in order through one queue per destination ([`Fanout`]), so a watcher
//! sees one coordinator's changes to a key in the order they were acknowledged. An event is
//! lost, never retried, when the coordinator dies between its answer and the send, when the
//! watcher's node is unreachable from the coordinator (partition, RPC timeout), has left the
//! ring, or its queue is full, and while the watcher is not connected. A watcher that falls behind by more than
//! [`WATCH_BUFFER`] events gets one `{"op":"lagged","missed":n}` message instead of the
//! events it missed; writes never wait for watchers. A client that needs every change
//! reconnects and re-reads (list the prefix, read the keys) after a `lagged` message or a
//! lost connection. Expiry events come from the first live home's sweep, up to
//! [`crate::config::DEFAULT_TTL_SWEEP_INTERVAL`] after the expiry, and may come twice while
//! nodes disagree on who is first. Changes made by anti-entropy, read repair or hint delivery
//! are convergence of an already-announced write and are not announced again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::{Error, Result};
use crate::lock;
use crate::membership::SelfKeys;
use crate::membership::{KEY_WATCH, View};
use crate::ring::NodeId;
use crate::rpc::{Request, Response};
use crate::stats::Stats;
use crate::system::System;

mod ws;

pub use ws::{lagged_json, show_key, stream};

// Events and announcements cross the wire: they are defined with the protocol, and their
// client-facing and gossiped forms are here.
pub use crate::rpc::{Announcement, Event, Op};

pub use crate::config::WATCH_BUFFER;

/// Events queued for one peer before new ones are dropped (and counted).
const FANOUT_QUEUE: usize = 8192;

/// A peer's event queue (and the task sending it) is dropped once it has had nothing to
/// send for this long, so that peers that stopped watching, or left, cost nothing; the next
/// event to that peer starts a new one. A peer that is no longer a member has its queue
/// dropped at its next event (those events are counted as dropped).
pub const FANOUT_IDLE: Duration = Duration::from_secs(30);

/// Most events sent to a peer in one RPC.
const FANOUT_BATCH: usize = 256;

/// This node's watchers.
#[derive(Default)]
pub struct Watchers {
    slots: Mutex<Vec<Slot>>,
    next_id: AtomicU64,
    /// The version of our prefixes, raised on every subscribe and unsubscribe to at least the
    /// wall clock in ms, so that a restarted node's announcements supersede its old ones.
    version: AtomicU64,
    changed: tokio::sync::Notify,
    /// Events dropped because a watcher's buffer was full, ever (all watchers).
    lagged: AtomicU64,
    /// The node's clock, read without its offset: versions must rise across restarts.
    clock: crate::clock::Clock,
}

struct Slot {
    id: u64,
    prefix: Bytes,
    tx: mpsc::Sender<Event>,
    missed: Arc<AtomicU64>,
}

/// One watcher's end: events in order, and a count of those dropped because the buffer was
/// full. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    watchers: Arc<Watchers>,
    pub events: mpsc::Receiver<Event>,
    missed: Arc<AtomicU64>,
}

impl Subscription {
    /// Events dropped since the last call, resetting the count.
    pub fn take_missed(&self) -> u64 {
        self.missed.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.watchers.slots).retain(|s| s.id != self.id);
        self.watchers.bump();
    }
}

impl Watchers {
    /// No watchers, announced as of now: a restarted node's first announcement supersedes
    /// whatever its previous process announced.
    pub fn starting_now(clock: &crate::clock::Clock) -> Watchers {
        Watchers {
            version: AtomicU64::new(clock.base_ms()),
            clock: clock.clone(),
            ..Watchers::default()
        }
    }

    /// Registers a watcher of `prefix` that may fall `buffer` events behind.
    pub fn subscribe(self: &Arc<Self>, prefix: Bytes, buffer: usize) -> Subscription {
        let mut slots = lock(&self.slots);
        self.add(&mut slots, prefix, buffer)
    }

    /// As [`Watchers::subscribe`], unless `max` watchers are connected already: `None`.
    pub fn try_subscribe(
        self: &Arc<Self>,
        prefix: Bytes,
        buffer: usize,
        max: usize,
    ) -> Option<Subscription> {
        let mut slots = lock(&self.slots);
        (slots.len() < max).then(|| self.add(&mut slots, prefix, buffer))
    }

    fn add(self: &Arc<Self>, slots: &mut Vec<Slot>, prefix: Bytes, buffer: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let missed = Arc::new(AtomicU64::new(0));
        slots.push(Slot {
            id,
            prefix,
            tx,
            missed: missed.clone(),
        });
        self.bump();
        Subscription {
            id,
            watchers: self.clone(),
            events: rx,
            missed,
        }
    }

    fn bump(&self) {
        let now = self.clock.base_ms();
        let _ = self
            .version
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add(1).max(now))
            });
        self.changed.notify_one();
    }

    /// Hands `event` to every matching watcher, never waiting: a full buffer counts a miss.
    pub fn publish(&self, event: &Event) {
        for slot in lock(&self.slots).iter() {
            if event.key.starts_with(&slot.prefix)
                && slot.tx.try_send(event.clone()).is_err()
                && !slot.tx.is_closed()
            {
                slot.missed.fetch_add(1, Ordering::Relaxed);
                self.lagged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The distinct prefixes watched here, sorted.
    pub fn prefixes(&self) -> Vec<Bytes> {
        let mut p: Vec<Bytes> = lock(&self.slots).iter().map(|s| s.prefix.clone()).collect();
        p.sort();
        p.dedup();
        p
    }

    /// Events dropped since start because a watcher fell behind (each told with `lagged`).
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    /// Number of connected watchers.
    pub fn count(&self) -> usize {
        lock(&self.slots).len()
    }

    /// True if a watcher here would want `key`.
    pub fn wants(&self, key: &[u8]) -> bool {
        lock(&self.slots).iter().any(|s| key.starts_with(&s.prefix))
    }
}

/// Peers' announcements received directly (RPC). Gossip carries the same announcements;
/// [`Interest::nodes_for`] takes the newer of the two per node.
#[derive(Debug, Default)]
pub struct Interest {
    direct: HashMap<NodeId, Announcement>,
}

impl Interest {
    /// Records a direct announcement unless a newer one is known.
    pub fn update(&mut self, node: NodeId, ann: Announcement) {
        let newer = self
            .direct
            .get(&node)
            .is_none_or(|old| old.version < ann.version);
        if newer {
            self.direct.insert(node, ann);
        }
    }

    /// The live peers (not `me`) that watch a prefix of `key`, with their RPC addresses.
    pub fn nodes_for(&self, view: &View, me: &str, key: &[u8]) -> Vec<SocketAddr> {
        view.members
            .values()
            .filter(|m| &*m.id != me && m.alive)
            .filter_map(|m| {
                let direct = self.direct.get(&m.id);
                let ann = match (m.watch.as_deref(), direct) {
                    (Some(g), Some(d)) if d.version > g.version => d,
                    (Some(g), _) => g,
                    (None, Some(d)) => d,
                    (None, None) => return None,
                };
                ann.matches(key).then_some(m.rpc).flatten()
            })
            .collect()
    }
}

/// One queue and one sending task per destination node, so that events to a node leave in
/// order and a slow peer never holds up the coordinator. A queue lives while it has events to
/// send: it is dropped after [`FANOUT_IDLE`] without any, or at once when its peer is no
/// longer a member, and the next event to that peer makes a new one.
#[derive(Default)]
pub struct Fanout {
    queues: Mutex<HashMap<SocketAddr, Queue>>,
    next_queue: AtomicU64,
    /// Events dropped because a peer's queue was full, the peer was unreachable or no
    /// longer a member, or the node shut down.
    pub dropped: AtomicU64,
}

/// One destination's queue; `id` tells a queue from its successor to the same address.
struct Queue {
    id: u64,
    tx: mpsc::Sender<Event>,
}

impl Fanout {
    /// Queues `event` for the peer at `addr`, starting its sending task if it has none. Never
    /// waits: a full queue drops the event (and counts it).
    fn send(self: &Arc<Self>, system: &Arc<System>, addr: SocketAddr, event: Event) {
        if system.shutdown.is_cancelled() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Events enter a queue only under this lock, and a task leaves the map only under it
        // after checking its queue is empty ([`Fanout::retire_if_idle`]): no event is ever
        // sent into a queue whose task has gone.
        let mut queues = lock(&self.queues);
        let queue = queues.entry(addr).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(FANOUT_QUEUE);
            let id = self.next_queue.fetch_add(1, Ordering::Relaxed);
            let (fanout, task_system) = (self.clone(), system.clone());
            system
                .tracker
                .spawn(async move { fanout.deliver(task_system, addr, id, rx).await });
            Queue { id, tx }
        });
        if queue.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends queued events to one peer, a batch at a time, until the queue has been idle for
    /// [`FANOUT_IDLE`], the peer is no longer a member, or the node shuts down.
    async fn deliver(
        self: Arc<Self>,
        system: Arc<System>,
        addr: SocketAddr,
        id: u64,
        mut rx: mpsc::Receiver<Event>,
    ) {
        loop {
            let next = tokio::select! {
                biased;
                _ = system.shutdown.cancelled() => None,
                ev = tokio::time::timeout(FANOUT_IDLE, rx.recv()) => match ev {
                    Ok(ev) => ev,
                    Err(_idle) => match self.retire_if_idle(addr, id, &mut rx) {
                        Some(ev) => Some(ev),
                        None => return,
                    },
                },
            };
            let Some(first) = next else {
                self.retire(addr, id, &mut rx);
                return;
            };
            let mut events = vec![first];
            while events.len() < FANOUT_BATCH {
                match rx.try_recv() {
                    Ok(ev) => events.push(ev),
                    Err(_) => break,
                }
            }
            let n = events.len() as u64;
            // A peer that left, or restarted on another port, watches nothing here any more.
            let member = system.view().members.values().any(|m| m.rpc == Some(addr));
            if !member {
                debug!(%addr, "watch events for a former member: dropping its queue");
                self.dropped.fetch_add(n, Ordering::Relaxed);
                self.retire(addr, id, &mut rx);
                return;
            }
            if let Err(err) = system.pool.call(addr, Request::Events { events }).await {
                debug!(%addr, %err, "could not deliver watch events");
                self.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Takes queue `id` of `addr` out of the map if nothing arrived in it; otherwise keeps it
    /// and returns the event that did. Under the map lock, so no event can enter the queue
    /// between the check and the removal.
    fn retire_if_idle(
        &self,
        addr: SocketAddr,
        id: u64,
        rx: &mut mpsc::Receiver<Event>,
    ) -> Option<Event> {
        let mut queues = lock(&self.queues);
        if let Ok(ev) = rx.try_recv() {
            return Some(ev);
        }
        if queues.get(&addr).is_some_and(|q| q.id == id) {
            queues.remove(&addr);
        }
        None
    }

    /// Takes queue `id` of `addr` out of the map and drops (and counts) what it still holds.
    fn retire(&self, addr: SocketAddr, id: u64, rx: &mut mpsc::Receiver<Event>) {
        {
            let mut queues = lock(&self.queues);
            if queues.get(&addr).is_some_and(|q| q.id == id) {
                queues.remove(&addr);
            }
        }
        // Out of the map: nothing can enter the queue any more.
        rx.close();
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Peers with a queue (and a sending task).
    pub fn queues(&self) -> usize {
        lock(&self.queues).len()
    }
}

/// The watch part of a node: its own watchers, what its peers watch, and the queues of
/// events on their way to them.
pub struct Watches {
    system: Arc<System>,
    /// This node's WebSocket watchers.
    pub(crate) watchers: Arc<Watchers>,
    /// Which prefixes peers watch, as they told us directly.
    interest: Mutex<Interest>,
    /// Queues of events on their way to watching peers.
    pub(crate) fanout: Arc<Fanout>,
    /// Gossips this node's prefixes.
    self_keys: SelfKeys,
}

impl Watches {
    pub(crate) fn new(system: Arc<System>, self_keys: SelfKeys) -> Watches {
        Watches {
            watchers: Arc::new(Watchers::starting_now(&system.config.clock)),
            system,
            interest: Mutex::default(),
            fanout: Arc::default(),
            self_keys,
        }
    }

    /// Announces a change to `key`: to this node's watchers, and to every live peer watching
    /// it. The event is only built if someone watches, so unwatched writes pay two lookups.
    pub(crate) fn emit_with(self: &Arc<Self>, key: &[u8], event: impl FnOnce() -> Event) {
        let view = self.system.view();
        let dests = lock(&self.interest).nodes_for(&view, &self.system.id, key);
        let local = self.watchers.wants(key);
        if dests.is_empty() && !local {
            return;
        }
        let event = event();
        if local {
            self.watchers.publish(&event);
        }
        for addr in dests {
            self.fanout.send(&self.system, addr, event.clone());
        }
    }

    /// Starts watching `prefix` here. Returns once every live peer has been told (or did not
    /// answer within the RPC timeout), so changes they acknowledge from then on reach us.
    /// With `--max-watchers` connected already, refuses ([`Error::Rejected`], 503) and counts
    /// it (`watchers_refused`).
    pub async fn watch(self: &Arc<Self>, prefix: Bytes) -> Result<Subscription> {
        let config = &self.system.config;
        let Some(sub) =
            self.watchers
                .try_subscribe(prefix, config.watch_buffer, config.max_watchers)
        else {
            Stats::incr(&self.system.stats.watchers_refused);
            return Err(Error::Rejected(format!(
                "this node serves its limit of {} watchers (--max-watchers); watch through \
                 another node or try again later",
                config.max_watchers
            )));
        };
        self.announce_watches().await;
        Ok(sub)
    }

    /// The announcement of this node's current prefixes.
    fn announcement(&self) -> Announcement {
        Announcement {
            version: self.watchers.version.load(Ordering::Relaxed),
            prefixes: self.watchers.prefixes(),
        }
    }

    /// Gossips this node's prefixes and tells every live peer directly.
    pub(crate) async fn announce_watches(self: &Arc<Self>) {
        let ann = self.announcement();
        self.self_keys.set(KEY_WATCH, &ann.encode()).await;
        let view = self.system.view();
        let calls = view
            .members
            .values()
            .filter(|m| m.id != self.system.id && m.alive)
            .filter_map(|m| m.rpc)
            .map(|addr| {
                let req = Request::Watching {
                    node: self.system.id.to_string(),
                    announcement: ann.clone(),
                };
                async move {
                    if let Err(err) = self.system.pool.call(addr, req).await {
                        debug!(%addr, %err, "could not announce watches");
                    }
                }
            });
        join_all(calls).await;
    }

    /// Announces this node's (empty) prefixes at start, then re-announces whenever watchers
    /// come or go (a dropped watcher is announced here).
    pub(crate) async fn run_watch_announcer(self: Arc<Self>) {
        let first = self.announcement();
        self.self_keys.set(KEY_WATCH, &first.encode()).await;
        loop {
            tokio::select! {
                biased;
                _ = self.system.shutdown.cancelled() => return,
                _ = self.watchers.changed.notified() => {}
            }
            // Coalesce a burst of (un)subscriptions into one announcement.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.announce_watches().await;
        }
    }

    /// Serves [`Request::Watching`]: a peer's watchers follow these prefixes now.
    pub(crate) fn serve_watching(&self, node: String, ann: Announcement) -> Result<Response> {
        lock(&self.interest).update(NodeId::from(node), ann);
        Ok(Response::Done)
    }

    /// Serves [`Request::Events`]: hand them to our watchers.
    pub(crate) fn serve_events(&self, events: Vec<Event>) -> Result<Response> {
        for ev in &events {
            self.watchers.publish(ev);
        }
        Ok(Response::Done)
    }

    /// This node's watchers.
    pub fn watchers(&self) -> &Watchers {
        &self.watchers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Member;
    use crate::net::mem::MemNet;
    use crate::rpc::testing::{Recorder, start_server, wait_until};
    use serde_json::json;

    fn event(key: &str) -> Event {
        Event {
            op: Op::Put,
            key: Bytes::from(key.to_string()),
            value: Some(Bytes::from_static(b"v")),
            context: "c".into(),
        }
    }

    #[tokio::test]
    async fn watchers_get_matching_events_and_count_what_overflows() {
        let w = Arc::new(Watchers::default());
        let mut a = w.subscribe(Bytes::from_static(b"a/"), WATCH_BUFFER);
        let mut b = w.subscribe(Bytes::from_static(b""), WATCH_BUFFER);
        assert_eq!(w.count(), 2);
        assert_eq!(w.prefixes(), vec![Bytes::new(), Bytes::from_static(b"a/")]);
        w.publish(&event("a/1"));
        w.publish(&event("b/1"));
        assert_eq!(a.events.recv().await.unwrap().key, "a/1");
        assert!(a.events.try_recv().is_err(), "b/1 is not under a/");
        assert_eq!(b.events.recv().await.unwrap().key, "a/1");
        assert_eq!(b.events.recv().await.unwrap().key, "b/1");
        // A slow watcher: everything past the buffer is counted, not queued.
        for i in 0..WATCH_BUFFER + 10 {
            w.publish(&event(&format!("a/{i}")));
        }
        assert_eq!(a.take_missed(), 10);
        assert_eq!(
            w.lagged(),
            20,
            "b, watching everything, fell behind as much"
        );
        assert_eq!(a.take_missed(), 0, "the count resets once taken");
        drop(b);
        assert_eq!(w.count(), 1);
        assert!(w.wants(b"a/x") && !w.wants(b"b/x"));
    }

    #[test]
    fn watchers_past_the_cap_are_refused_until_one_leaves() {
        let w = Arc::new(Watchers::default());
        let a = w.try_subscribe(Bytes::from_static(b"a/"), 8, 2);
        let b = w.try_subscribe(Bytes::from_static(b"b/"), 8, 2);
        assert!(a.is_some() && b.is_some());
        assert!(w.try_subscribe(Bytes::new(), 8, 2).is_none());
        assert_eq!(w.count(), 2, "a refused watcher leaves no slot behind");
        drop(a);
        assert!(w.try_subscribe(Bytes::new(), 8, 2).is_some());
    }

    /// A cluster of one node, `me`, whose pool reaches peers over `net`, seeing `view`.
    fn cluster(
        net: Arc<MemNet>,
        view: View,
    ) -> (Arc<System>, tokio::sync::watch::Sender<Arc<View>>) {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let (view_tx, view_rx) = tokio::sync::watch::channel(Arc::new(view));
        let system = System::new(
            crate::config::Config::new("me", any, any, any),
            crate::version::Actor {
                node: NodeId::from("me"),
                generation: 1,
            },
            crate::rpc::testing::pool(net, Duration::from_secs(2)),
            Arc::default(),
            view_rx,
            tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        (Arc::new(system), view_tx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_queue_goes_once_idle_or_its_peer_left_and_comes_back_with_an_event() {
        let net = Arc::new(MemNet::default());
        let peer = Arc::new(Recorder::default());
        let (addr, _server) = start_server(&net, peer.clone(), 8).await;
        let mut p = member("p", 2, None);
        p.rpc = Some(addr);
        let mut view = View::default();
        view.members.insert(p.id.clone(), p);
        let (system, view_tx) = cluster(net, view);
        let fanout = Arc::new(Fanout::default());
        let dropped = || fanout.dropped.load(Ordering::Relaxed);

        fanout.send(&system, addr, event("a/1"));
        wait_until("the event is delivered", || peer.keys() == ["a/1"]).await;
        assert_eq!(fanout.queues(), 1);
        tokio::time::sleep(FANOUT_IDLE / 2).await;
        assert_eq!(fanout.queues(), 1, "not idle for long enough yet");
        tokio::time::sleep(FANOUT_IDLE / 2).await;
        wait_until("the idle queue is dropped", || fanout.queues() == 0).await;
        assert_eq!(dropped(), 0);

        // A later event makes a new queue, and is delivered.
        fanout.send(&system, addr, event("a/2"));
        assert_eq!(fanout.queues(), 1);
        wait_until("the later event is delivered", || {
            peer.keys() == ["a/1", "a/2"]
        })
        .await;

        // The peer leaves the ring: its queue goes at its next event, which is dropped.
        view_tx.send_replace(Arc::new(View::default()));
        fanout.send(&system, addr, event("a/3"));
        wait_until("the former member's queue is dropped", || {
            fanout.queues() == 0
        })
        .await;
        assert_eq!(dropped(), 1);
        assert_eq!(peer.keys(), ["a/1", "a/2"]);
    }

    /// The race of an idle queue's end with a new event: the event found in the queue under
    /// the map lock keeps the queue; and a task never removes its successor's queue.
    #[test]
    fn an_idle_queue_that_got_an_event_meanwhile_stays() {
        let fanout = Fanout::default();
        let addr = SocketAddr::from(([127, 0, 0, 1], 2));
        let (tx, mut rx) = mpsc::channel(4);
        lock(&fanout.queues).insert(
            addr,
            Queue {
                id: 7,
                tx: tx.clone(),
            },
        );
        tx.try_send(event("k")).expect("room");
        let ev = fanout.retire_if_idle(addr, 7, &mut rx);
        assert_eq!(ev.map(|e| e.key), Some(Bytes::from_static(b"k")));
        assert_eq!(fanout.queues(), 1);
        assert!(fanout.retire_if_idle(addr, 6, &mut rx).is_none());
        assert_eq!(fanout.queues(), 1, "queue 7 is not queue 6's to remove");
        assert!(fanout.retire_if_idle(addr, 7, &mut rx).is_none());
        assert_eq!(fanout.queues(), 0);
    }

    #[test]
    fn events_render_as_the_documented_json() {
        let v: serde_json::Value = serde_json::from_str(&event("k").to_json(false)).unwrap();
        assert_eq!(
            v,
            json!({"op": "put", "key": "k", "value": "dg==", "context": "c"})
        );
        let mut del = event("k");
        del.op = Op::Delete;
        del.value = None;
        let v: serde_json::Value = serde_json::from_str(&del.to_json(false)).unwrap();
        assert_eq!(v, json!({"op": "delete", "key": "k", "context": "c"}));
        let v: serde_json::Value = serde_json::from_str(&event("k?").to_json(true)).unwrap();
        assert_eq!(v["key"], "az8");
        assert_eq!(lagged_json(3), r#"{"missed":3,"op":"lagged"}"#);
    }

    fn member(id: &str, port: u16, watch: Option<&Announcement>) -> Member {
        Member {
            id: NodeId::from(id),
            generation: 1,
            gossip: SocketAddr::from(([127, 0, 0, 1], port + 1000)),
            http: None,
            rpc: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            alive: true,
            status: crate::membership::Status::Alive,
            dead_since: None,
            watch: watch.map(|a| Arc::new(a.clone())),
            build: Default::default(),
            zone: crate::membership::zone_of(None),
            memory: None,
        }
    }

    #[test]
    fn the_newer_of_gossip_and_direct_announcements_decides() {
        let old = Announcement {
            version: 5,
            prefixes: vec![Bytes::from_static(b"x/")],
        };
        assert_eq!(Announcement::decode(&old.encode()), Some(old.clone()));
        assert_eq!(Announcement::decode("garbage"), None);
        let mut view = View::default();
        for m in [
            member("me", 1, Some(&old)),
            member("p", 2, Some(&old)),
            member("q", 3, None),
        ] {
            view.members.insert(m.id.clone(), m);
        }
        let mut interest = Interest::default();
        let p = SocketAddr::from(([127, 0, 0, 1], 2));
        let q = SocketAddr::from(([127, 0, 0, 1], 3));
        assert_eq!(interest.nodes_for(&view, "me", b"x/1"), vec![p]);
        assert!(interest.nodes_for(&view, "me", b"y/1").is_empty());
        // q announced directly, before gossip carried it.
        let newer = Announcement {
            version: 6,
            prefixes: vec![Bytes::from_static(b"y/")],
        };
        interest.update(NodeId::from("q"), newer.clone());
        assert_eq!(interest.nodes_for(&view, "me", b"y/1"), vec![q]);
        // p's direct announcement is newer than its gossip: it dropped x/.
        interest.update(NodeId::from("p"), newer);
        assert_eq!(
            interest.nodes_for(&view, "me", b"x/1"),
            Vec::<SocketAddr>::new()
        );
        // An older direct announcement never replaces a newer one.
        interest.update(NodeId::from("p"), old);
        assert!(interest.nodes_for(&view, "me", b"x/1").is_empty());
        // Dead peers get nothing.
        view.members.get_mut("q").unwrap().alive = false;
        assert!(interest.nodes_for(&view, "me", b"y/1").contains(&p));
        assert!(!interest.nodes_for(&view, "me", b"y/1").contains(&q));
    }
}
