//! The deterministic simulator: a five-node ring, its clients and a seeded fault schedule,
//! all on one thread under turmoil's simulated network and time.
//!
//! One seed fixes everything: the quorum setting, whether nodes have disks, whether they are
//! in zones (odd seeds, and then one fault cuts a whole zone off), each node's
//! clock skew, the network's latencies and losses, the fault schedule and every client's
//! choices. Nodes run the real ringkv code (`NodeHandle::start_with`), with four seams
//! swapped: the network ([`net::SimNet`], turmoil TCP), membership ([`gossip::SimGossip`],
//! since chitchat cannot replay a run), the wall clock (simulated time plus the node's skew)
//! and, in half the runs, the disk ([`disk::SimDisk`]). Every message delivered is folded
//! into a trace hash ([`trace`]): a seed run twice must give one hash.
//!
//! A run: the ring starts; clients write, read-modify-write, delete, write with TTLs and
//! list for [`WORK`] while the faults play; then every fault heals, and the simulation runs
//! on until every key's home replicas agree and hints drained ([`QUIESCE`] at most), and
//! past [`TOMBSTONE_GRACE`] so tombstone GC runs; then [`check`] judges the history against
//! the final state.

pub mod check;
pub mod disk;
pub mod gossip;
pub mod net;
pub mod trace;
pub mod workload;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use ringkv::clock::Clock;
use ringkv::{Config, GossipTransport, Node, NodeHandle};

/// Nodes in the ring.
pub const NODES: usize = 5;
/// Client hosts.
pub const CLIENTS: usize = 3;
/// When clients start: the ring is up by then in a healthy run.
pub const START: Duration = Duration::from_millis(1_500);
/// How long clients work, faults included.
pub const WORK: Duration = Duration::from_secs(4);
/// How long the healed ring may take to converge before the run fails.
pub const QUIESCE: Duration = Duration::from_secs(40);
/// Simulated time per step.
pub const TICK: Duration = Duration::from_millis(5);
/// Virtual nodes per node.
pub const VNODES: usize = 8;
/// How long a tombstone is kept before GC may purge it: short, so runs see purges, but
/// longer than any fault lasts. Hints expire with it, by design (a late hint could bring back
/// a value whose delete was purged): with a 1 s grace, seed 733 lost a write acknowledged by
/// its coordinator and one fallback, the coordinator killed in memory and the fallback's hint
/// expired before the partition healed.
pub const TOMBSTONE_GRACE: Duration = Duration::from_secs(5);
/// The largest clock skew a node gets, either way.
pub const MAX_SKEW_MS: i64 = 2_000;
/// The simulated epoch: fixed, so a run never reads the real date.
pub const EPOCH_SECS: u64 = 1_800_000_000;

const HTTP_PORT: u16 = 8080;
const RPC_PORT: u16 = 8081;
const GOSSIP_PORT: u16 = 7946;

/// The (R, W) settings runs pick from, with N = 3.
pub const QUORUMS: [(usize, usize); 9] = [
    (2, 2),
    (1, 1),
    (1, 2),
    (1, 3),
    (2, 1),
    (2, 3),
    (3, 1),
    (3, 2),
    (3, 3),
];

/// What one run did and found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub trace: u64,
    pub messages: u64,
    pub quorum: (usize, usize),
    /// Whether nodes had a disk (a killed node restarted from it) or restarted empty.
    pub durable: bool,
    /// Whether the nodes were in zones ([`zone_of`]), with placement by zone.
    pub zoned: bool,
    /// Records restarted nodes read back from their disks.
    pub recovered: usize,
    pub faults: Vec<String>,
    pub ops: usize,
    pub acked: usize,
    /// Simulated time until the healed ring converged.
    pub converged_after: Option<Duration>,
    /// Tombstones held by all nodes once converged, and after GC.
    pub tombstones: (u64, u64),
    pub violations: Vec<String>,
}

impl Report {
    /// The one command that replays this seed with a full trace.
    pub fn replay_command(&self) -> String {
        format!(
            "RINGKV_SIM_SEED={} RINGKV_SIM_TRACE=1 cargo test --test simulation one_seed -- --nocapture",
            self.seed
        )
    }
}

/// The nodes' handles, by name, as the hosts publish them (a restarted host replaces its
/// entry).
pub type Nodes = Rc<RefCell<BTreeMap<String, Arc<Node>>>>;

pub fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// Zones of a zoned run: n1 and n4 in `a`, n2 and n5 in `b`, n3 in `c`, so every key has one
/// home per zone.
pub const ZONES: usize = 3;

/// Node `i`'s zone in a zoned run.
pub fn zone_of(i: usize) -> String {
    ["a", "b", "c"][i % ZONES].to_string()
}

/// The nodes of zone `z` in a zoned run.
pub fn zone_nodes(z: usize) -> Vec<usize> {
    (0..NODES).filter(|i| i % ZONES == z).collect()
}

fn addr(host: &str, port: u16) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(host), port)
}

/// Runs one seed to its end and checks it.
pub fn run(seed: u64, verbose: bool) -> Report {
    trace::reset(verbose);
    let mut rng = SmallRng::seed_from_u64(seed);
    let quorum = QUORUMS[rng.random_range(0..QUORUMS.len())];
    let max_latency = Duration::from_millis(rng.random_range(2..=20));
    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.random())
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(START + WORK + QUIESCE + Duration::from_secs(30))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(max_latency)
        .build();
    let nodes: Nodes = Rc::default();
    // Half the runs give nodes a disk: a killed node restarts from what it had synced.
    // The others restart empty.
    let durable = rng.random_bool(0.5);
    // Odd seeds put the nodes in zones (taken from the seed, not the generator, so the even
    // seeds replay as they did before zones existed).
    let zoned = seed % 2 == 1;
    let disks: Vec<Option<disk::SimDisk>> = (0..NODES)
        .map(|_| durable.then(disk::SimDisk::default))
        .collect();
    let skews: Vec<i64> = (0..NODES)
        .map(|_| rng.random_range(-MAX_SKEW_MS..=MAX_SKEW_MS))
        .collect();
    for (i, skew) in skews.iter().copied().enumerate() {
        let name = node_name(i);
        let nodes = nodes.clone();
        let disk = disks[i].clone();
        sim.host(name.clone(), move || {
            let (name, nodes, disk) = (name.clone(), nodes.clone(), disk.clone());
            async move {
                let zone = zoned.then(|| zone_of(i));
                let handle = start_node(&name, skew, quorum, disk, zone).await?;
                nodes.borrow_mut().insert(name, handle.node().clone());
                // The handle lives as long as the host: a crash drops it with the runtime.
                std::future::pending::<()>().await;
                drop(handle);
                Ok(())
            }
        });
    }
    let history = Rc::new(RefCell::new(workload::History {
        read_quorum: Some(quorum.0),
        ..Default::default()
    }));
    for c in 0..CLIENTS {
        let client_seed: u64 = rng.random();
        let history = history.clone();
        let nodes = nodes.clone();
        sim.client(format!("c{}", c + 1), async move {
            workload::client(c, client_seed, quorum, history, nodes).await;
            Ok(())
        });
    }
    let schedule = workload::faults(&mut rng, zoned);
    let kills: Vec<Duration> = schedule
        .iter()
        .filter(|f| f.kills())
        .map(|f| f.at)
        .collect();
    let fault_spans = workload::fault_spans(&schedule);
    let faults: Vec<String> = schedule.iter().map(|f| f.describe()).collect();
    let mut converged_after = None;
    let mut tombstones = (0, 0);
    let mut before_gc = check::State::new();
    let mut violations = Vec::new();
    let mut killed = false;
    let mut pending = schedule;
    let mut cut = workload::Cut::default();
    let mut clients_done = false;
    loop {
        let now = sim.elapsed();
        while let Some(f) = pending.first().filter(|f| f.at <= now) {
            killed |= f.kills();
            f.apply(&mut sim, &mut cut);
            // A dead node's handle is no node: it comes back into the map when its host
            // starts again, so that what clients inspect mid-run is always a running node.
            if let workload::Kind::Crash(i) = f.kind {
                nodes.borrow_mut().remove(&node_name(i));
            }
            pending.remove(0);
        }
        // Faults play until the clients are done (each finishes the request it has in
        // flight at the end of the work period, so every write is in the history).
        if !clients_done {
            match sim.step() {
                Ok(done) => clients_done = done,
                Err(err) => {
                    violations.push(format!("the simulation failed: {err}"));
                    break;
                }
            }
            continue;
        }
        // Heal: every fault ends, a crashed node restarts (empty), and the ring settles.
        for f in &pending {
            if f.kills() {
                killed = true;
            }
        }
        pending.clear();
        workload::heal(&mut sim, &mut cut);
        let healed_at = sim.elapsed();
        let deadline = healed_at + QUIESCE;
        loop {
            for _ in 0..(250 / TICK.as_millis() as usize) {
                if let Err(err) = sim.step() {
                    violations.push(format!("the simulation failed: {err}"));
                    break;
                }
            }
            if check::converged(&nodes.borrow(), now_ms(&sim)).is_ok() {
                converged_after = Some(sim.elapsed() - healed_at);
                break;
            }
            if sim.elapsed() >= deadline {
                break;
            }
        }
        // Then the tombstones' grace runs out and GC purges them, so that the checks see
        // whether a delete survives its tombstone's purge.
        tombstones.0 = tombstone_count(&nodes);
        before_gc = check::final_state(&nodes.borrow());
        let gc_until = sim.elapsed() + TOMBSTONE_GRACE + Duration::from_millis(1_500);
        while sim.elapsed() < gc_until {
            if let Err(err) = sim.step() {
                violations.push(format!("the simulation failed: {err}"));
                break;
            }
        }
        tombstones.1 = tombstone_count(&nodes);
        if converged_after.is_some()
            && let Err(why) = check::converged(&nodes.borrow(), now_ms(&sim))
        {
            violations.push(format!("replicas disagree after tombstone GC: {why}"));
        }
        break;
    }
    let now_ms = now_ms(&sim);
    let history = history.borrow();
    if converged_after.is_none() {
        let why = check::converged(&nodes.borrow(), now_ms)
            .err()
            .unwrap_or_default();
        violations.push(format!(
            "replicas did not converge within {QUIESCE:?}: {why}"
        ));
    }
    let after_gc = check::final_state(&nodes.borrow());
    // A zoned run places by zone once every node gossips the feature: every node's ring must
    // have the zones by the end, and an unzoned one none.
    for (name, node) in nodes.borrow().iter() {
        let zones = node.system().view().ring.zones().len();
        let want = if zoned { ZONES } else { 1 };
        if zones != want {
            violations.push(format!("{name}'s ring has {zones} zones, not {want}"));
        }
    }
    // A run kills at most one node: only a write whose one copy it held can die with it.
    let lost_with_kill = killed && !durable;
    violations.extend(check::check(
        &history,
        &check::Ending {
            by_key: &before_gc,
            after_gc: &after_gc,
            nodes: &nodes.borrow(),
            now_ms,
            skews: &skews,
            at_risk: &|w| lost_with_kill && w.w == 1,
            kills: &kills,
            faults: &fault_spans,
        },
    ));
    let (trace, messages) = trace::finish();
    Report {
        seed,
        trace,
        messages,
        quorum,
        durable,
        zoned,
        recovered: disks.iter().flatten().map(disk::SimDisk::recovered).sum(),
        faults,
        ops: history.ops,
        acked: history.writes.iter().filter(|w| w.acked()).count(),
        converged_after,
        tombstones,
        violations,
    }
}

/// The simulation's unskewed wall clock.
fn now_ms(sim: &turmoil::Sim<'_>) -> u64 {
    (Duration::from_secs(EPOCH_SECS) + sim.elapsed()).as_millis() as u64
}

fn tombstone_count(nodes: &Nodes) -> u64 {
    nodes
        .borrow()
        .values()
        .map(|n| n.store().stats().tombstones)
        .sum()
}

async fn start_node(
    name: &str,
    skew: i64,
    (r, w): (usize, usize),
    disk: Option<disk::SimDisk>,
    zone: Option<String>,
) -> Result<NodeHandle, Box<dyn std::error::Error>> {
    // turmoil binds only the wildcard address: each node advertises its host's.
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let mut cfg = Config::new(name, any(HTTP_PORT), any(RPC_PORT), any(GOSSIP_PORT));
    cfg.advertise_http = Some(addr(name, HTTP_PORT));
    cfg.advertise_rpc = Some(addr(name, RPC_PORT));
    cfg.advertise_gossip = Some(addr(name, GOSSIP_PORT));
    cfg.seeds = (0..NODES)
        .map(|i| addr(&node_name(i), GOSSIP_PORT).to_string())
        .collect();
    // Few virtual nodes: five nodes need no more for balance, and every anti-entropy round
    // compares one Merkle tree per ring segment.
    cfg.vnodes = VNODES;
    if let Some(zone) = zone {
        cfg.zone = zone;
    }
    cfg.read_quorum = r;
    cfg.write_quorum = w;
    cfg.rpc_timeout = Duration::from_millis(500);
    cfg.handoff_interval = Duration::from_millis(250);
    cfg.anti_entropy_interval = Duration::from_millis(500);
    cfg.tombstone_grace = TOMBSTONE_GRACE;
    cfg.ttl_sweep_interval = Duration::from_millis(250);
    cfg.gossip_config.interval = gossip::INTERVAL;
    cfg.clock = Clock::from_source(Arc::new(|| {
        turmoil::since_epoch().map_or(0, |d| d.as_millis() as u64)
    }));
    cfg.clock.set_offset_ms(skew);
    // The allocator counts the whole test process, whatever ran before: a fixed reading keeps
    // the gossiped memory use (and so the run) the same for one seed.
    cfg.memory_gauge = ringkv::memory::Gauge::from_source(Arc::new(|| Some(0)));
    cfg.disk = disk.map(|d| Arc::new(d) as Arc<dyn ringkv::store::Disk>);
    let handle = NodeHandle::start_with(
        cfg,
        GossipTransport::Custom(Arc::new(gossip::SimGossip)),
        Arc::new(net::SimNet),
    )
    .await?;
    Ok(handle)
}

/// A node's HTTP address, from inside the simulation.
pub fn http_addr(i: usize) -> SocketAddr {
    addr(&node_name(i), HTTP_PORT)
}
