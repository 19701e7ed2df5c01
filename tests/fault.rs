//! Randomized fault test on the real stack: a seeded, in-process five-node cluster under client
//! load while nodes are killed (and restarted empty), partitioned and cut one way, then healed
//! and judged by the simulator's checker (`tests/sim/check.rs`).
//!
//! # Running
//!
//! - `cargo test --test fault` runs [`DEFAULT_SEEDS`], each for [`DEFAULT_RUN`] of operations.
//! - `RINGKV_FAULT_SEEDS=7,8` runs those seeds instead (this is how a failure is reproduced:
//!   every line the test prints, and every assertion message, carries `seed=N`).
//! - `RINGKV_SOAK_SECS=600` runs random seeds until that much time has passed.
//! - `RINGKV_FAULT_RUN_SECS=20` changes how long each seed runs operations.
//! - Add `-- --nocapture` to see the per-seed summaries of a passing run.
//!
//! A seed fixes every random choice (keys, operations, contexts, which node is asked, which
//! fault, which victims, how long). It cannot fix thread scheduling, so a seed reproduces the
//! same *schedule* of operations and faults, and usually the failure, not a bit-exact replay.
//!
//! # Why it exists beside the simulator
//!
//! The deterministic simulator (`tests/simulation.rs`) plays kills, partitions and one-way
//! cuts on 500 seeds against the same checker. This test keeps what the simulator swaps out or
//! cannot model:
//! - real chitchat gossip, real TCP, real time and a multi-threaded runtime (the node's own
//!   network, gossip and clock, not the simulator's seams);
//! - **two nodes killed at once**, and a kill combined with a partition: the simulator kills
//!   at most one node per run;
//! - reads with r = 3 through every node once the homes converged, which must return exactly
//!   the live values the homes hold (404 for none).
//!
//! # What runs
//!
//! Five nodes (N=3, R=2, W=2, handoff every 100 ms, anti-entropy every 200 ms, RPC timeout
//! 500 ms). [`CLIENTS`] client tasks hammer [`KEYS`] keys with GET, PUT and DELETE, each write
//! either blind or with the context of the client's last read or write of that key, through a
//! random live node. Every PUT writes a value unique to that write, so a value names its write.
//! In the last part of the run a few "doomed" keys only get GETs and DELETEs, so that there
//! are keys whose history ends in deletes. Meanwhile a fault task runs episodes: kill a node
//! (restart it empty after a while), kill two, partition one or two nodes from the rest, cut
//! links one way, kill one and partition another. After the run every link is healed, killed
//! nodes are restarted, and the checker runs.
//!
//! # Which writes may die with a kill
//!
//! Memory dies with a process, so an acknowledged write can legitimately vanish when every
//! node holding it is killed. With W=2 a write is held by two nodes when acknowledged (the
//! coordinator, a home, in its store, and one more home's store or a fallback's hints); a
//! store drops a version only for one that supersedes it, and a fallback drops a hint only
//! once its home stored it. So a write is *at risk* only if W distinct nodes were killed
//! after it started ([`Faults::at_risk`]). Stronger: just before every kill the fault task
//! snapshots every live node's store; a write that a snapshot shows held (it or a successor)
//! by a home of its key that is never killed afterwards is not at risk either (the ring is
//! fixed, so homes never give up keys). At-risk writes are skipped by the checker's lost-write
//! and resurrection checks, and counted in the summary.

mod common;
#[allow(dead_code)]
mod sim;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Http, Reply, TestCluster};
use hyper::{Method, StatusCode};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ringkv::Node;
use ringkv::http::CONTEXT_HEADER;
use sim::check::{self, Ending, State};
use sim::workload::{History, Outcome, Write};

/// Five nodes, as the checker's convergence test expects.
const NODES: usize = sim::NODES;
const CLIENTS: usize = 4;
const KEYS: usize = 20;
/// Keys that get only GETs and DELETEs in the last [`DOOM_FRACTION`] of the run.
const DOOMED: usize = 5;
const DOOM_FRACTION: f64 = 0.3;
/// The cluster's write quorum (the default): nodes holding a write when it is acknowledged.
const WRITE_QUORUM: usize = 2;
/// Two seeds: the simulator plays the faults it can model on 500 seeds in less time.
const DEFAULT_SEEDS: &[u64] = &[1, 2];
const DEFAULT_RUN: Duration = Duration::from_secs(6);
/// How long home replicas may take to converge after the final heal.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);
/// Longest a client waits for one answer (a forwarded write takes at most 2 RPC timeouts).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Violations listed in a failure message.
const SHOW: usize = 12;

fn key_name(k: usize) -> String {
    format!("k{k:02}")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------- kills and risk

/// A kill: which node, and when (since the run's start) it was done.
struct Kill {
    node: usize,
    at: Duration,
}

/// What every live node's store held just before a kill.
struct Snapshot {
    at: Duration,
    stores: Vec<(usize, State)>,
}

/// The kills of a run and the snapshots taken before them.
#[derive(Default)]
struct Faults {
    kills: Vec<Kill>,
    snapshots: Vec<Snapshot>,
}

impl Faults {
    /// Whether every copy of `w` may have died with killed nodes: `w.w` distinct nodes were
    /// killed after it started, and no snapshot shows a home of its key (`homes`) that is
    /// never killed afterwards holding it or a version that supersedes it.
    fn at_risk(&self, w: &Write, homes: &[usize]) -> bool {
        let killed: BTreeSet<usize> = self
            .kills
            .iter()
            .filter(|k| k.at >= w.invoked)
            .map(|k| k.node)
            .collect();
        if killed.len() < w.w {
            return false;
        }
        let dots = check::candidate_dots(w);
        let held = |state: &State| {
            state.get(&w.key).is_some_and(|vs| {
                vs.versions()
                    .iter()
                    .any(|v| dots.iter().any(|d| v.dot == *d || v.history.contains(d)))
            })
        };
        let survives = |node: usize, from: Duration| {
            !self.kills.iter().any(|k| k.node == node && k.at >= from)
        };
        !self.snapshots.iter().any(|s| {
            s.stores
                .iter()
                .any(|(n, state)| homes.contains(n) && survives(*n, s.at) && held(state))
        })
    }
}

// ------------------------------------------------------------------------------ the run

/// State the fault task shares with the clients.
struct Shared {
    /// Per node: the URL of its running process, `None` while it is down.
    urls: Vec<Option<String>>,
    faults: Faults,
    /// What the fault task did, for the summary.
    log: Vec<String>,
    history: History,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct ClientPlan {
    id: usize,
    seed: u64,
    shared: Arc<Mutex<Shared>>,
    http: Http,
    start: Instant,
    deadline: Instant,
    doom_at: Instant,
    doomed: Arc<BTreeSet<usize>>,
}

/// One request, bounded by [`REQUEST_TIMEOUT`]; `Err` when no whole answer arrived.
async fn send(
    http: &Http,
    method: Method,
    url: &str,
    body: Bytes,
    ctx: Option<&str>,
) -> Result<Reply, String> {
    let mut headers = vec![("accept", "application/json")];
    if let Some(c) = ctx {
        headers.push((CONTEXT_HEADER, c));
    }
    tokio::time::timeout(REQUEST_TIMEOUT, http.try_send(method, url, body, &headers))
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Get,
    Put,
    Delete,
}

/// One client: random operations through random live nodes until the deadline, recorded in
/// the shared history as the simulator's clients record theirs.
async fn client(plan: ClientPlan) {
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_mul(1000).wrapping_add(plan.id as u64));
    // Per key: the context of this client's last read or write, and the values it covers.
    let mut last: HashMap<usize, (String, Vec<String>)> = HashMap::new();
    let mut seq = 0;
    let elapsed = || plan.start.elapsed();
    while Instant::now() < plan.deadline {
        let key = rng.random_range(0..KEYS);
        let doomed = Instant::now() >= plan.doom_at && plan.doomed.contains(&key);
        let kind = match (doomed, rng.random_range(0..100)) {
            (true, 0..50) | (false, 0..40) => Kind::Get,
            (false, 40..85) => Kind::Put,
            _ => Kind::Delete,
        };
        let with_ctx = rng.random_bool(0.6);
        let pick = rng.random_range(0..NODES);
        let think = rng.random_range(0..6u64);
        let up: Vec<String> = lock(&plan.shared).urls.iter().flatten().cloned().collect();
        let Some(base) = up.get(pick % up.len().max(1)) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let url = format!("{base}/kv/{}", key_name(key));
        lock(&plan.shared).history.ops += 1;
        if kind == Kind::Get {
            let Ok(reply) = send(&plan.http, Method::GET, &url, Bytes::new(), None).await else {
                continue;
            };
            let mut s = lock(&plan.shared);
            match reply.status {
                StatusCode::NOT_FOUND => match reply.context() {
                    Some(ctx) => last.insert(key, (ctx, Vec::new())),
                    None => last.remove(&key),
                },
                StatusCode::OK | StatusCode::MULTIPLE_CHOICES => {
                    let (Some(values), Some(ctx)) = (reply.values(), reply.context()) else {
                        s.history
                            .anomalies
                            .push(format!("GET {url}: {} without a GET's body", reply.status));
                        continue;
                    };
                    s.history.observed.extend(values.iter().cloned());
                    s.history.reads.push((key_name(key), values.clone()));
                    last.insert(key, (ctx, values))
                }
                st if st.is_client_error() => {
                    s.history.anomalies.push(format!("GET {url}: {st}"));
                    None
                }
                _ => None,
            };
        } else {
            seq += 1;
            let delete = kind == Kind::Delete;
            let value = format!("s{}c{}n{seq}", plan.seed, plan.id);
            let id = if delete {
                format!("{value}-del")
            } else {
                value
            };
            let (sent, covers) = match last.get(&key) {
                Some((ctx, covers)) if with_ctx => (Some(ctx.clone()), covers.clone()),
                _ => (None, Vec::new()),
            };
            let (method, body) = if delete {
                (Method::DELETE, Bytes::new())
            } else {
                (Method::PUT, Bytes::from(id.clone()))
            };
            let invoked = elapsed();
            let res = send(&plan.http, method, &url, body, sent.as_deref()).await;
            let mut s = lock(&plan.shared);
            let outcome = match &res {
                Ok(r) if r.status.is_success() => Outcome::Acked,
                Ok(r) if r.status == StatusCode::PRECONDITION_FAILED => Outcome::Failed,
                Ok(r) if r.status.is_client_error() => {
                    s.history.anomalies.push(format!(
                        "{id} on {}: {} {}",
                        key_name(key),
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                    Outcome::Failed
                }
                _ => Outcome::Unknown,
            };
            let returned = match &res {
                Ok(r) if outcome == Outcome::Acked => r.context(),
                _ => None,
            };
            if let Some(ctx) = &returned {
                last.insert(key, (ctx.clone(), vec![id.clone()]));
            }
            s.history.writes.push(Write {
                id,
                key: key_name(key),
                invoked,
                completed: (outcome != Outcome::Unknown).then(elapsed),
                outcome,
                sent,
                returned,
                delete,
                covers,
                w: WRITE_QUORUM,
                ttl: false,
                strict: false,
                at_ack: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
}

/// Every running node, by id.
fn nodes_of(c: &TestCluster) -> BTreeMap<String, Arc<Node>> {
    c.up()
        .into_iter()
        .map(|i| (c.id(i), c.node(i).node().clone()))
        .collect()
}

async fn kill(c: &mut TestCluster, shared: &Mutex<Shared>, start: Instant, i: usize) {
    // What every live node holds right now, straight from its store: a write held here by a
    // home that is never killed afterwards cannot be lost to the kills that follow.
    let at = start.elapsed();
    let stores = c
        .up()
        .into_iter()
        .map(|n| {
            let store = c.node(n).node().store();
            let state = (0..KEYS)
                .filter_map(|k| Some((key_name(k), store.get(&Bytes::from(key_name(k)))?)))
                .collect();
            (n, state)
        })
        .collect();
    {
        let mut s = lock(shared);
        s.faults.snapshots.push(Snapshot { at, stores });
        s.urls[i] = None;
    }
    c.kill(i).await;
    let at = start.elapsed();
    lock(shared).faults.kills.push(Kill { node: i, at });
}

async fn restart(c: &mut TestCluster, shared: &Mutex<Shared>, i: usize) {
    c.restart(i).await;
    lock(shared).urls[i] = Some(c.url(i));
}

/// Runs fault episodes until `deadline`; every episode ends healed with every node up.
async fn faults(
    mut c: TestCluster,
    seed: u64,
    shared: Arc<Mutex<Shared>>,
    start: Instant,
    deadline: Instant,
) -> (TestCluster, BTreeMap<&'static str, usize>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xFA17_FA17);
    let mut counts = BTreeMap::new();
    let log = |what: String| {
        let at = start.elapsed().as_secs_f64();
        lock(&shared).log.push(format!("{at:.3}s {what}"));
    };
    tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
    while Instant::now() < deadline {
        let x = rng.random_range(0..NODES);
        let y = (x + rng.random_range(1..NODES)) % NODES;
        let others = |ex: &[usize]| (0..NODES).filter(|i| !ex.contains(i)).collect::<Vec<_>>();
        let hold = Duration::from_millis(rng.random_range(300..1500));
        let (ix, iy) = (c.id(x), c.id(y));
        let kind = match rng.random_range(0..6) {
            0 => {
                log(format!("kill {ix}"));
                kill(&mut c, &shared, start, x).await;
                tokio::time::sleep(hold).await;
                restart(&mut c, &shared, x).await;
                "kill"
            }
            1 => {
                log(format!("kill {ix} and {iy}"));
                kill(&mut c, &shared, start, x).await;
                kill(&mut c, &shared, start, y).await;
                tokio::time::sleep(hold).await;
                restart(&mut c, &shared, x).await;
                restart(&mut c, &shared, y).await;
                "kill two"
            }
            2 => {
                log(format!("partition {ix} from the rest"));
                c.partition(&[x], &others(&[x])).await;
                tokio::time::sleep(hold).await;
                c.heal().await;
                "partition one"
            }
            3 => {
                log(format!("partition {ix}+{iy} from the rest"));
                c.partition(&[x, y], &others(&[x, y])).await;
                tokio::time::sleep(hold).await;
                c.heal().await;
                "partition two"
            }
            4 => {
                let targets: Vec<usize> = others(&[x])
                    .into_iter()
                    .filter(|_| rng.random_bool(0.6))
                    .chain([y])
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let names: Vec<String> = targets.iter().map(|&t| c.id(t)).collect();
                if rng.random_bool(0.5) {
                    log(format!("cut {ix} -> {names:?} one way"));
                    for &t in &targets {
                        c.cut(x, t).await;
                    }
                } else {
                    log(format!("cut {names:?} -> {ix} one way"));
                    for &t in &targets {
                        c.cut(t, x).await;
                    }
                }
                tokio::time::sleep(hold).await;
                c.heal().await;
                "one-way cut"
            }
            _ => {
                // Kill first, so no RPC block ever names the dead process's address.
                log(format!("kill {ix}, partition {iy} from the rest"));
                kill(&mut c, &shared, start, x).await;
                c.partition(&[y], &others(&[y])).await;
                tokio::time::sleep(hold).await;
                c.heal().await;
                restart(&mut c, &shared, x).await;
                "kill + partition"
            }
        };
        log("healed".to_string());
        *counts.entry(kind).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
    }
    (c, counts)
}

/// Runs one seed; returns its summary, or the failure message.
async fn run_seed(seed: u64, run: Duration) -> Result<String, String> {
    println!("seed={seed}: starting ({run:?} of operations)");
    let mut c = TestCluster::start_with(NODES, |cfg| {
        cfg.handoff_interval = Duration::from_millis(100);
        cfg.anti_entropy_interval = Duration::from_millis(200);
        cfg.rpc_timeout = Duration::from_millis(500);
    })
    .await;
    let http = Http::new();
    let homes: BTreeMap<String, Vec<usize>> = (0..KEYS)
        .map(|k| (key_name(k), c.replicas(key_name(k).as_bytes())))
        .collect();
    let start = Instant::now();
    let shared = Arc::new(Mutex::new(Shared {
        urls: (0..NODES).map(|i| Some(c.url(i))).collect(),
        faults: Faults::default(),
        log: Vec::new(),
        history: History::default(),
    }));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut keys: Vec<usize> = (0..KEYS).collect();
    for i in (1..keys.len()).rev() {
        keys.swap(i, rng.random_range(0..=i));
    }
    let doomed: Arc<BTreeSet<usize>> = Arc::new(keys.into_iter().take(DOOMED).collect());
    let deadline = start + run;
    let doom_at = start + run.mul_f64(1.0 - DOOM_FRACTION);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client(ClientPlan {
                id,
                seed,
                shared: shared.clone(),
                http: http.clone(),
                start,
                deadline,
                doom_at,
                doomed: doomed.clone(),
            }))
        })
        .collect();
    let fault_task = tokio::spawn(faults(c, seed, shared.clone(), start, deadline));
    for t in clients {
        t.await.expect("client task");
    }
    let (fc, fault_counts) = fault_task.await.expect("fault task");
    c = fc;
    let ops_done = start.elapsed();

    // Final heal. The fault task leaves every node up; heal again to be sure.
    c.heal().await;
    for i in 0..NODES {
        if !c.up().contains(&i) {
            restart(&mut c, &shared, i).await;
        }
    }
    let agreed = Instant::now() + common::CONVERGE;
    while !c.agrees() {
        assert!(
            Instant::now() < agreed,
            "seed={seed}: membership did not converge after the final heal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let healed = Instant::now();

    // Wait, without client reads (which would repair), for the homes to agree and hints to
    // drain.
    let nodes = nodes_of(&c);
    let converged = loop {
        match check::converged(&nodes, unix_ms()) {
            Ok(()) => break Ok(healed.elapsed()),
            Err(why) if healed.elapsed() > CONVERGENCE_BOUND => break Err(why),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let by_key = check::final_state(&nodes);

    let (history, faults, fault_log) = {
        let mut s = lock(&shared);
        (
            std::mem::take(&mut s.history),
            std::mem::take(&mut s.faults),
            std::mem::take(&mut s.log),
        )
    };
    let at_risk = |w: &Write| faults.at_risk(w, &homes[&w.key]);
    let kills: Vec<Duration> = faults.kills.iter().map(|k| k.at).collect();
    let mut violations = check::check(
        &history,
        &Ending {
            by_key: &by_key,
            after_gc: &by_key,
            nodes: &nodes,
            now_ms: unix_ms(),
            skews: &[0; NODES],
            at_risk: &at_risk,
            kills: &kills,
            // Writes here carry no snapshot at their acknowledgement: the rule has nothing to
            // judge.
            faults: &[],
        },
    );
    let converged_line = match &converged {
        Ok(took) => format!(
            "homes identical and hints drained {:.2}s after the final heal",
            took.as_secs_f64()
        ),
        Err(why) => {
            violations.push(format!(
                "not converged {CONVERGENCE_BOUND:?} after the final heal: {why}"
            ));
            "NOT converged".to_string()
        }
    };

    // Reads through every node (these repair, so they come after the convergence check):
    // each returns exactly the live values the converged homes hold.
    let mut reads = 0;
    if converged.is_ok() {
        for k in 0..KEYS {
            let want: BTreeSet<String> = by_key
                .get(&key_name(k))
                .map(|vs| {
                    vs.versions()
                        .iter()
                        .filter_map(|v| v.value.as_deref())
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let status = match want.len() {
                0 => StatusCode::NOT_FOUND,
                1 => StatusCode::OK,
                _ => StatusCode::MULTIPLE_CHOICES,
            };
            for i in 0..NODES {
                let url = format!("{}/kv/{}?r=3", c.url(i), key_name(k));
                let got = send(&http, Method::GET, &url, Bytes::new(), None)
                    .await
                    .map(|r| {
                        let values: BTreeSet<String> =
                            r.values().unwrap_or_default().into_iter().collect();
                        (r.status, values)
                    });
                reads += 1;
                if got.as_ref().ok() != Some(&(status, want.clone())) {
                    violations.push(format!(
                        "the homes of {} converged on live values {want:?}, but GET r=3 via {} \
                         gave {got:?}",
                        key_name(k),
                        c.id(i)
                    ));
                }
            }
        }
    }
    c.shutdown().await;

    let acked = history.writes.iter().filter(|w| w.acked());
    let risky = acked.clone().filter(|w| at_risk(w)).count();
    let kinds = |delete: bool| {
        let all = history.writes.iter().filter(|w| w.delete == delete);
        let ok = all.clone().filter(|w| w.acked()).count();
        format!("{} ({ok} acknowledged)", all.count())
    };
    let summary = format!(
        "seed={seed}: {} ops in {:.1}s: PUT {}, DELETE {}, {} reads; {risky} of {} acknowledged \
         writes at risk of two kills; faults {fault_counts:?}; {converged_line}; {reads} final \
         reads; total {:.1}s\nseed={seed}: faults: {}",
        history.ops,
        ops_done.as_secs_f64(),
        kinds(false),
        kinds(true),
        history.reads.len(),
        acked.count(),
        start.elapsed().as_secs_f64(),
        fault_log.join(", ")
    );
    println!("{summary}");
    if violations.is_empty() {
        return Ok(summary);
    }
    let mut msg = format!(
        "seed={seed}: {} invariant violations (reproduce with RINGKV_FAULT_SEEDS={seed} cargo \
         test --test fault -- --nocapture)\n{summary}",
        violations.len()
    );
    for v in violations.iter().take(SHOW) {
        let _ = write!(msg, "\n    {v}");
    }
    Err(msg)
}

fn env_seeds() -> Option<Vec<u64>> {
    let raw = std::env::var("RINGKV_FAULT_SEEDS").ok()?;
    Some(
        raw.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("RINGKV_FAULT_SEEDS: bad seed {s:?}"))
            })
            .collect(),
    )
}

fn env_secs(name: &str) -> Option<Duration> {
    let raw = std::env::var(name).ok()?;
    let secs: f64 = raw
        .parse()
        .unwrap_or_else(|_| panic!("{name}: not a number of seconds: {raw:?}"));
    Some(Duration::from_secs_f64(secs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults() {
    let run = env_secs("RINGKV_FAULT_RUN_SECS").unwrap_or(DEFAULT_RUN);
    let began = Instant::now();
    let mut failures = Vec::new();
    let mut seeds_run = Vec::new();
    let soak = env_secs("RINGKV_SOAK_SECS");
    let mut fixed = env_seeds()
        .unwrap_or_else(|| DEFAULT_SEEDS.to_vec())
        .into_iter();
    loop {
        let seed = match soak {
            Some(soak) if began.elapsed() < soak => rand::random::<u32>() as u64,
            Some(_) => break,
            None => match fixed.next() {
                Some(seed) => seed,
                None => break,
            },
        };
        seeds_run.push(seed);
        if let Err(e) = run_seed(seed, run).await {
            eprintln!("{e}");
            failures.push(e);
        }
    }
    println!(
        "seeds {seeds_run:?} in {:.1}s, {} failed",
        began.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The risk rule: a write is at risk only after W distinct kills, and a snapshot of a
/// surviving home that held it (or a successor) takes the risk away.
#[test]
fn a_write_is_at_risk_only_when_every_copy_may_have_died() {
    use ringkv::version::{Actor, VersionSet};
    let n1 = Actor::new("n1", 1);
    let mut set = VersionSet::new();
    let first = set.write(&n1, None, Some(Bytes::from("v1")));
    let w = Write {
        id: "v1".into(),
        key: "k00".into(),
        invoked: Duration::from_millis(10),
        completed: Some(Duration::from_millis(20)),
        outcome: Outcome::Acked,
        sent: None,
        returned: Some(first.encode()),
        delete: false,
        covers: Vec::new(),
        w: 2,
        ttl: false,
        strict: false,
        at_ack: None,
    };
    let homes = [0, 1, 2];
    let ms = Duration::from_millis;
    let kill = |node, at| Kill { node, at: ms(at) };
    let mut f = Faults::default();
    assert!(!f.at_risk(&w, &homes), "no kills");
    f.kills = vec![kill(0, 5), kill(1, 30)];
    assert!(!f.at_risk(&w, &homes), "one kill after it started");
    f.kills.push(kill(1, 50));
    assert!(!f.at_risk(&w, &homes), "one node killed twice");
    f.kills.push(kill(3, 60));
    assert!(f.at_risk(&w, &homes), "two distinct kills after it started");

    // A successor held by a home that is never killed afterwards (n3, index 2) saves it.
    let mut later = set.clone();
    later.write(&n1, Some(&first), Some(Bytes::from("v2")));
    let state: State = [("k00".to_string(), later)].into();
    f.snapshots = vec![Snapshot {
        at: ms(25),
        stores: vec![(2, state.clone())],
    }];
    assert!(!f.at_risk(&w, &homes), "a surviving home held a successor");
    // A home killed later (n2), or a node that is not a home (n4), proves nothing.
    f.snapshots = vec![Snapshot {
        at: ms(25),
        stores: vec![(1, state.clone()), (3, state)],
    }];
    assert!(f.at_risk(&w, &homes));
    // Nor does a surviving home that never held it.
    let other: State = [("k00".to_string(), VersionSet::new())].into();
    f.snapshots = vec![Snapshot {
        at: ms(25),
        stores: vec![(2, other)],
    }];
    assert!(f.at_risk(&w, &homes));
}
