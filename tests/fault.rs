//! Randomized fault test: a seeded, in-process five-node cluster under client load while nodes
//! are killed (and restarted empty), partitioned and cut one way, followed by a final heal and
//! a checker of four invariants.
//!
//! # Running
//!
//! - `cargo test --test fault` runs [`DEFAULT_SEEDS`], each for [`DEFAULT_RUN`] of operations.
//! - `RINGKV_FAULT_SEEDS=7,8` runs those seeds instead (this is how a failure is reproduced:
//!   every line the test prints, and every assertion message, carries `seed=N`).
//! - `RINGKV_SOAK_SECS=600` runs random seeds until that much time has passed.
//! - `RINGKV_FAULT_RUN_SECS=20` changes how long each seed runs operations.
//! - `RINGKV_FAULT_TRACE=k07` prints every operation on key `k07` and its final versions.
//! - Add `-- --nocapture` to see the per-seed summaries of a passing run.
//!
//! A seed fixes every random choice (keys, operations, contexts, which node is asked, which
//! fault, which victims, how long). It cannot fix thread scheduling, so a seed reproduces the
//! same *schedule* of operations and faults, and usually the failure, not a bit-exact replay.
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
//! links one way, kill one and partition another. At most two nodes are impaired at once.
//! After the run every link is healed, killed nodes are restarted, and the checker runs.
//!
//! # The invariants, and why each check is sound
//!
//! Notation: a write's *dot* is `(actor, counter)`, an actor is `(node id, generation)`, and a
//! version's *history* is the set of dots it follows (see `ringkv::version`). A version `v` is
//! superseded by `f` iff `f`'s history contains `v`'s dot; histories are causally closed.
//!
//! **Which dot did a write get?** A 2xx PUT or DELETE returns the new version's history `H`.
//! The coordinator `a` minted the dot `(a, H.max(a))`: `VersionSet::write` sets `a`'s entry to
//! exactly that counter. The coordinator is a home replica of the key whose process was alive
//! during the request, and its new counter exceeds the sent context's counter for `a`. So the
//! *candidate dots* of a write are `(a, H.max(a))` for every such actor `a` in `H`. Usually
//! there is one candidate (the dot is then exact); when there are several, every check below
//! uses them in the direction that can only hide a violation, never invent one.
//!
//! **1. No acknowledged write is lost.** A 2xx write is fine if its value is stored by some home
//! replica at the end, or if some version stored at the end has one of its candidate dots in
//! its history (it was superseded by a write whose context covered it). Memory dies with a
//! process, so a write can legitimately vanish when every node holding it is killed. With W=2 a
//! write is held by at least two nodes when acknowledged: the coordinator (a home, in its
//! store) and one more (a home's store or a fallback's hints). A store never drops a version
//! except for one that supersedes it, and a fallback drops a hint only after its home stored
//! it. A coordinator never hints for itself, so if at most one distinct node is killed from
//! the write's start on, some home that was never killed ends up holding it or a successor.
//! Stronger: just before every kill the fault task snapshots every live node's store; a write
//! that a snapshot shows held (it or a successor) by a home of its key that is never killed
//! afterwards cannot be lost either (homes never give up keys: the ring is fixed). Writes
//! with two or more distinct nodes killed after their start and no such snapshot are *at
//! risk*, skipped and counted. The test `checker_flags_lost_writes` shows the checker
//! catching losses.
//!
//! **2. Home replicas converge.** Within [`CONVERGENCE_BOUND`] after the final heal (with no
//! client reads, which would repair), every key's home replicas hold identical version lists
//! in `/admin/local`, and no hints remain. Then a GET with r=3 through every node returns
//! exactly the live values the replicas hold.
//!
//! **3. No deleted key comes back.** "The last acknowledged op was a DELETE" is not enough: a
//! blind DELETE only covers what its coordinator has seen, and a PUT that failed (503) may
//! still have been applied somewhere and resurface, concurrent with the delete; both are
//! documented behaviour. What is sound: a durable (not at risk) acknowledged DELETE `D`
//! *covers* a PUT `P` if `P`'s dot is in `D`'s returned history, known either from `P`'s
//! candidate dots (all of them in it) or through the client-visible chain of contexts: a
//! version's history contains the context sent with its write, a GET's context contains the
//! histories of the versions it returned, and a write's returned history contains its sent
//! context. Then (a) no covered value is live at the end, and (b) a key on which one durable
//! DELETE covers every PUT attempt whose value still exists anywhere at the end (failed PUTs
//! included; "anywhere" is the homes' stores once every hint is delivered, else every PUT
//! counts) reads 404 with r=3 through every node.
//!
//! **4. No GET returns more siblings than there were concurrent writers.** Every sibling a GET
//! returns is the value of a PUT that started before the GET ended; no value appears twice
//! (one write is one version); and the siblings are pairwise concurrent: no sibling's write
//! was sent with a context known (through the chain above) to cover another sibling. The same
//! holds for the live values at the end. A bound by the number of *clients* is not an
//! invariant of this store, so it is only reported: a PUT answered 503 may still have been
//! applied, and its client's next write (whose context cannot contain it) is concurrent with
//! it, so one client can own several siblings; the checker's own test
//! `checker_wants_siblings_to_be_concurrent_writes` shows the distinction.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use common::TestCluster;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ringkv::version::{Context, VersionSet};

const NODES: usize = 5;
const CLIENTS: usize = 4;
const KEYS: usize = 20;
/// Keys that get only GETs and DELETEs in the last [`DOOM_FRACTION`] of the run.
const DOOMED: usize = 5;
const DOOM_FRACTION: f64 = 0.3;
/// The cluster's write quorum (the default): nodes holding a write when it is acknowledged.
const WRITE_QUORUM: usize = 2;
/// Two seeds: the deterministic simulator (`tests/simulation.rs`) plays the same faults
/// (kills with empty restarts, partitions, one-way cuts) against the same dot-based checks on
/// 500 seeds in less time. This test keeps what the simulator swaps out, real chitchat gossip,
/// real TCP and real time, on a multi-threaded runtime.
const DEFAULT_SEEDS: &[u64] = &[1, 2];
const DEFAULT_RUN: Duration = Duration::from_secs(6);
/// How long home replicas may take to converge after the final heal.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);
/// Longest a client waits for one answer (a forwarded write takes at most 2 RPC timeouts).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Violations listed per invariant in a failure message.
const SHOW: usize = 8;

// ------------------------------------------------------------------------------------ model

/// `(node id, generation)`.
type Actor = (String, u64);
/// `(node id, generation, counter)`.
type Dot = (String, u64, u64);

/// A causal history as a plain map: actor -> (max, missing), i.e. counters `1..=max` except
/// `missing`. Built from a client context (decoded with the library) or from `/admin/local`.
#[derive(Clone, Debug, Default, PartialEq)]
struct Hist(BTreeMap<Actor, (u64, Vec<u64>)>);

impl Hist {
    fn from_context(c: &Context) -> Hist {
        Hist(
            c.entries()
                .map(|(a, max, missing)| {
                    ((a.node.to_string(), a.generation), (max, missing.to_vec()))
                })
                .collect(),
        )
    }

    fn decode(s: &str) -> Option<Hist> {
        Context::decode(s).ok().map(|c| Hist::from_context(&c))
    }

    fn contains(&self, (node, generation, counter): &Dot) -> bool {
        self.0
            .get(&(node.clone(), *generation))
            .is_some_and(|(max, missing)| {
                *counter >= 1 && counter <= max && !missing.contains(counter)
            })
    }

    fn max(&self, actor: &Actor) -> u64 {
        self.0.get(actor).map_or(0, |(max, _)| *max)
    }
}

/// One version as a home replica stores it at the end.
#[derive(Clone, Debug, PartialEq)]
struct FinalVersion {
    dot: Dot,
    /// `None` for a tombstone.
    value: Option<String>,
    history: Hist,
}

impl FinalVersion {
    /// Parses `/admin/local/{key}`'s `versions` array.
    fn parse_all(json: &serde_json::Value) -> Vec<FinalVersion> {
        let Some(vs) = json["versions"].as_array() else {
            return Vec::new();
        };
        vs.iter()
            .map(|v| {
                let dot = &v["clock"]["dot"];
                let history = v["clock"]["history"]
                    .as_array()
                    .expect("history array")
                    .iter()
                    .map(|e| {
                        let missing = e["missing"]
                            .as_array()
                            .expect("missing array")
                            .iter()
                            .map(|m| m.as_u64().expect("counter"))
                            .collect();
                        (
                            (str_of(&e["node"]), u64_of(&e["generation"])),
                            (u64_of(&e["max"]), missing),
                        )
                    })
                    .collect();
                FinalVersion {
                    dot: (
                        str_of(&dot["node"]),
                        u64_of(&dot["generation"]),
                        u64_of(&dot["counter"]),
                    ),
                    value: v["value"].as_str().map(|b| {
                        String::from_utf8_lossy(&B64.decode(b).expect("base64 value")).into_owned()
                    }),
                    history: Hist(history),
                }
            })
            .collect()
    }
}

impl FinalVersion {
    fn all_of(set: &VersionSet) -> Vec<FinalVersion> {
        set.versions()
            .iter()
            .map(|v| FinalVersion {
                dot: (
                    v.dot.actor.node.to_string(),
                    v.dot.actor.generation,
                    v.dot.counter,
                ),
                value: v
                    .value
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned()),
                history: Hist::from_context(&v.history),
            })
            .collect()
    }
}

fn str_of(v: &serde_json::Value) -> String {
    v.as_str().expect("string").to_string()
}

fn u64_of(v: &serde_json::Value) -> u64 {
    v.as_u64().expect("integer")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Get,
    Put,
    Delete,
}

/// One client operation, as the client saw it.
#[derive(Clone, Debug)]
struct Op {
    client: usize,
    key: usize,
    kind: Kind,
    /// The value of a PUT.
    value: Option<String>,
    ctx_sent: Option<String>,
    /// The node asked.
    node: usize,
    start: Instant,
    end: Instant,
    /// HTTP status, or `None` if no answer arrived (connection error, timeout).
    status: Option<u16>,
    /// The context of a 2xx write, or of a GET (including a 404 over a tombstone).
    ctx_returned: Option<String>,
    /// A GET's sibling values.
    siblings: Vec<String>,
}

impl Op {
    fn is_write(&self) -> bool {
        self.kind != Kind::Get
    }

    fn acked(&self) -> bool {
        self.is_write() && self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// One node process: alive (at most) from `from` to `to`.
#[derive(Clone, Debug)]
struct Process {
    node: usize,
    generation: u64,
    from: Instant,
    to: Option<Instant>,
}

/// A node kill; its memory is gone once `done`.
#[derive(Clone, Debug)]
struct Kill {
    node: usize,
    done: Instant,
}

/// What every live node stored for every key just before a kill.
#[derive(Clone, Debug)]
struct Snapshot {
    at: Instant,
    /// (node, versions per key).
    stores: Vec<(usize, Vec<Vec<FinalVersion>>)>,
}

/// Everything that happened in one run, for the checker.
struct History {
    seed: u64,
    start: Instant,
    /// Node ids by index.
    ids: Vec<String>,
    /// Home replicas of each key, by node index.
    homes: Vec<Vec<usize>>,
    ops: Vec<Op>,
    processes: Vec<Process>,
    kills: Vec<Kill>,
    snapshots: Vec<Snapshot>,
    /// Whether the final state was taken with every hint delivered (then the homes' stores
    /// hold every version that still exists anywhere).
    drained: bool,
    /// Fault timeline, for failure messages.
    faults: Vec<String>,
}

fn key_name(k: usize) -> String {
    format!("k{k:02}")
}

// ---------------------------------------------------------------------------------- checker

/// What the checker found: counts for the summary and violations per invariant.
#[derive(Default)]
struct Report {
    summary: Vec<String>,
    violations: BTreeMap<&'static str, Vec<String>>,
    /// Keys that must read 404 everywhere (invariant 3b); checked over HTTP by the caller.
    must_be_deleted: Vec<usize>,
    /// Per key, the live values of the merged final state.
    live: Vec<BTreeSet<String>>,
}

impl Report {
    fn violation(&mut self, inv: &'static str, msg: String) {
        self.violations.entry(inv).or_default().push(msg);
    }
}

const INV1: &str = "1 (no acknowledged write lost)";
const INV2: &str = "2 (home replicas converge)";
const INV3: &str = "3 (no deleted key comes back)";
const INV4: &str = "4 (siblings bounded by writers)";
const SANITY: &str = "0 (dots and values are consistent)";

impl History {
    fn t(&self, at: Instant) -> String {
        format!(
            "{:.3}s",
            at.saturating_duration_since(self.start).as_secs_f64()
        )
    }

    fn describe(&self, i: usize) -> String {
        let op = &self.ops[i];
        format!(
            "op#{i} c{} {:?} {} {} ctx={} via {} [{} .. {}] -> {}",
            op.client,
            op.kind,
            key_name(op.key),
            op.value.as_deref().unwrap_or("-"),
            if op.ctx_sent.is_some() { "yes" } else { "no" },
            self.ids[op.node],
            self.t(op.start),
            self.t(op.end),
            op.status.map_or("no answer".to_string(), |s| s.to_string()),
        )
    }

    /// Prints every operation on `key` (for `RINGKV_FAULT_TRACE=k07`).
    fn trace(&self, key: usize) {
        let show = |c: &Option<String>| {
            c.as_deref()
                .and_then(Hist::decode)
                .map(|h| format!("{:?}", h.0))
                .unwrap_or_else(|| "-".into())
        };
        let mut idx: Vec<usize> = (0..self.ops.len())
            .filter(|&i| self.ops[i].key == key)
            .collect();
        idx.sort_by_key(|&i| self.ops[i].start);
        for i in idx {
            let op = &self.ops[i];
            println!(
                "seed={} {}\n      sent {}\n      got {} {:?}",
                self.seed,
                self.describe(i),
                show(&op.ctx_sent),
                show(&op.ctx_returned),
                op.siblings
            );
        }
    }

    /// Distinct nodes killed after `t`.
    fn killed_after(&self, t: Instant) -> BTreeSet<usize> {
        self.kills
            .iter()
            .filter(|k| k.done > t)
            .map(|k| k.node)
            .collect()
    }

    /// Whether a write may have been lost with the nodes holding it (see the module docs):
    /// two or more distinct nodes were killed after it started, and no snapshot shows a home
    /// that held it (or a successor) in its store and was never killed afterwards.
    fn at_risk(&self, op: &Op, cands: Option<&[Dot]>) -> bool {
        if self.killed_after(op.start).len() < WRITE_QUORUM {
            return false;
        }
        let holds = |vs: &[FinalVersion]| {
            (op.value.is_some() && vs.iter().any(|v| v.value == op.value))
                || cands.is_some_and(|ds| {
                    !ds.is_empty() && ds.iter().all(|d| vs.iter().any(|v| v.history.contains(d)))
                })
        };
        !self.snapshots.iter().any(|snap| {
            let killed = self.killed_after(snap.at);
            snap.stores.iter().any(|(node, per_key)| {
                self.homes[op.key].contains(node)
                    && !killed.contains(node)
                    && holds(&per_key[op.key])
            })
        })
    }

    /// The candidate dots of an acknowledged write (see the module docs); `None` if it has
    /// no usable returned context.
    fn candidates(&self, op: &Op) -> Option<Vec<Dot>> {
        let h = Hist::decode(op.ctx_returned.as_deref()?)?;
        let sent = op.ctx_sent.as_deref().and_then(Hist::decode);
        let mut out = Vec::new();
        for p in &self.processes {
            let overlaps = p.from <= op.end && p.to.is_none_or(|to| to >= op.start);
            if !overlaps || !self.homes[op.key].contains(&p.node) {
                continue;
            }
            let actor = (self.ids[p.node].clone(), p.generation);
            let max = h.max(&actor);
            if max > 0 && sent.as_ref().map_or(0, |s| s.max(&actor)) < max {
                out.push((actor.0, actor.1, max));
            }
        }
        Some(out)
    }

    /// Values each context is known to cover, and values each PUT's version is known to
    /// cover (its own plus its sent context's), through client-visible causality only.
    fn coverage(
        &self,
    ) -> (
        HashMap<String, BTreeSet<String>>,
        HashMap<String, BTreeSet<String>>,
    ) {
        let mut events: Vec<(Instant, bool, usize)> = Vec::new();
        for (i, op) in self.ops.iter().enumerate() {
            events.push((op.start, false, i));
            events.push((op.end, true, i));
        }
        events.sort();
        let mut ctx_cov: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut value_cov: HashMap<String, BTreeSet<String>> = HashMap::new();
        let cov_of = |ctx_cov: &HashMap<String, BTreeSet<String>>, c: &Option<String>| {
            c.as_ref()
                .and_then(|c| ctx_cov.get(c))
                .cloned()
                .unwrap_or_default()
        };
        for (_, is_end, i) in events {
            let op = &self.ops[i];
            if !is_end {
                // A PUT's version, wherever it was applied, has a history containing its sent
                // context, and its own dot.
                if let (Kind::Put, Some(v)) = (op.kind, &op.value) {
                    let mut c = cov_of(&ctx_cov, &op.ctx_sent);
                    c.insert(v.clone());
                    value_cov.insert(v.clone(), c);
                }
                continue;
            }
            let Some(ret) = &op.ctx_returned else {
                continue;
            };
            let mut c = BTreeSet::new();
            match op.kind {
                Kind::Get => {
                    for s in &op.siblings {
                        match value_cov.get(s) {
                            Some(vc) => c.extend(vc.iter().cloned()),
                            None => {
                                c.insert(s.clone());
                            }
                        }
                    }
                }
                Kind::Put | Kind::Delete if op.acked() => {
                    c = cov_of(&ctx_cov, &op.ctx_sent);
                    c.extend(op.value.iter().cloned());
                }
                _ => continue,
            }
            ctx_cov.entry(ret.clone()).or_default().extend(c);
        }
        (ctx_cov, value_cov)
    }

    /// Checks invariants 1, 3 (except the HTTP reads of 3b) and 4, plus the consistency of
    /// dots and values, against the final versions of every key on each of its homes
    /// (`finals[key][i]` is what `homes[key][i]` stores).
    fn check(&self, finals: &[Vec<Vec<FinalVersion>>]) -> Report {
        let mut rep = Report::default();
        let seed = self.seed;
        let cands: Vec<Option<Vec<Dot>>> = self
            .ops
            .iter()
            .map(|op| {
                if op.acked() {
                    self.candidates(op)
                } else {
                    None
                }
            })
            .collect();

        // The union of what the homes hold, and its non-superseded part.
        let mut unions: Vec<Vec<FinalVersion>> = Vec::new();
        for per_home in finals {
            let mut by_dot: BTreeMap<Dot, FinalVersion> = BTreeMap::new();
            for v in per_home.iter().flatten() {
                by_dot.entry(v.dot.clone()).or_insert_with(|| v.clone());
            }
            unions.push(by_dot.into_values().collect());
        }
        for (k, u) in unions.iter().enumerate() {
            let live: BTreeSet<String> = u
                .iter()
                .filter(|v| {
                    !u.iter()
                        .any(|w| w.dot != v.dot && w.history.contains(&v.dot))
                })
                .filter_map(|v| v.value.clone())
                .collect();
            let values: Vec<&String> = u.iter().filter_map(|v| v.value.as_ref()).collect();
            let distinct: BTreeSet<&String> = values.iter().copied().collect();
            if distinct.len() != values.len() {
                rep.violation(
                    SANITY,
                    format!(
                        "seed={seed}: {} holds one value under two dots (one write applied twice): {:?}",
                        key_name(k),
                        u.iter().map(|v| (&v.dot, &v.value)).collect::<Vec<_>>()
                    ),
                );
            }
            rep.live.push(live);
        }

        // Every value at the end was written by some PUT; a dot names one write.
        let mut writer_of: HashMap<&str, usize> = HashMap::new();
        for (i, op) in self.ops.iter().enumerate() {
            if let Some(v) = &op.value {
                writer_of.insert(v.as_str(), i);
            }
        }
        for (k, u) in unions.iter().enumerate() {
            for v in u {
                if let Some(val) = &v.value
                    && writer_of
                        .get(val.as_str())
                        .is_none_or(|&i| self.ops[i].key != k)
                {
                    rep.violation(
                        SANITY,
                        format!(
                            "seed={seed}: {} holds {val:?}, which no client wrote to it",
                            key_name(k)
                        ),
                    );
                }
            }
        }
        let mut exact = 0;
        let mut ambiguous = 0;
        // Counters are per key: a dot names one write of one key.
        let mut owner: HashMap<(usize, Dot), usize> = HashMap::new();
        for (i, c) in cands.iter().enumerate() {
            let op = &self.ops[i];
            match c.as_deref() {
                None if op.acked() => rep.violation(
                    SANITY,
                    format!(
                        "seed={seed}: acknowledged write without a valid context: {}",
                        self.describe(i)
                    ),
                ),
                Some([]) => rep.violation(
                    SANITY,
                    format!(
                        "seed={seed}: no live home process of {} can have coordinated {} \
                         (returned history {:?})",
                        key_name(op.key),
                        self.describe(i),
                        op.ctx_returned.as_deref().and_then(Hist::decode)
                    ),
                ),
                Some([dot]) => {
                    exact += 1;
                    if let Some(j) = owner.insert((op.key, dot.clone()), i) {
                        rep.violation(
                            SANITY,
                            format!(
                                "seed={seed}: two writes got the same dot {dot:?}: {} and {}",
                                self.describe(j),
                                self.describe(i)
                            ),
                        );
                    }
                    for v in &unions[op.key] {
                        if v.dot == *dot && v.value != op.value {
                            rep.violation(
                                SANITY,
                                format!(
                                    "seed={seed}: dot {dot:?} of {} stored with value {:?}",
                                    self.describe(i),
                                    v.value
                                ),
                            );
                        }
                    }
                }
                Some(_) => ambiguous += 1,
                None => {}
            }
        }

        // Invariant 1.
        let (mut checked, mut risky, mut present, mut superseded) = (0, 0, 0, 0);
        for (i, op) in self.ops.iter().enumerate() {
            if !op.acked() {
                continue;
            }
            if self.at_risk(op, cands[i].as_deref()) {
                risky += 1;
                continue;
            }
            checked += 1;
            let u = &unions[op.key];
            if op.value.is_some() && u.iter().any(|v| v.value == op.value) {
                present += 1;
                continue;
            }
            let dots = cands[i].as_deref().unwrap_or_default();
            if dots.iter().any(|d| u.iter().any(|v| v.history.contains(d))) {
                superseded += 1;
                continue;
            }
            rep.violation(
                INV1,
                format!(
                    "seed={seed}: lost {} (candidate dots {dots:?}); the homes {:?} hold {:?}",
                    self.describe(i),
                    self.homes[op.key]
                        .iter()
                        .map(|&h| &self.ids[h])
                        .collect::<Vec<_>>(),
                    u.iter().map(|v| (&v.dot, &v.value)).collect::<Vec<_>>()
                ),
            );
        }
        rep.summary.push(format!(
            "inv1: {checked} acknowledged writes checked ({present} present, {superseded} \
             superseded), {risky} skipped as at risk (>= {WRITE_QUORUM} distinct nodes killed \
             after they started, and no snapshot shows a surviving home holding them); dots: {exact} exact, {ambiguous} ambiguous"
        ));

        // Invariant 3.
        let (ctx_cov, _) = self.coverage();
        let covers = |d: usize, p: usize| -> bool {
            let del = &self.ops[d];
            let put = &self.ops[p];
            let Some(ret) = &del.ctx_returned else {
                return false;
            };
            if let Some(v) = &put.value
                && ctx_cov.get(ret).is_some_and(|c| c.contains(v))
            {
                return true;
            }
            let Some(h) = Hist::decode(ret) else {
                return false;
            };
            matches!(cands[p].as_deref(), Some(ds) if !ds.is_empty() && ds.iter().all(|x| h.contains(x)))
        };
        let mut covered_values = 0;
        for (k, union) in unions.iter().enumerate() {
            let puts: Vec<usize> = (0..self.ops.len())
                .filter(|&i| self.ops[i].key == k && self.ops[i].kind == Kind::Put)
                .collect();
            let dels: Vec<usize> = (0..self.ops.len())
                .filter(|&i| {
                    let op = &self.ops[i];
                    op.key == k
                        && op.kind == Kind::Delete
                        && op.acked()
                        && !self.at_risk(op, cands[i].as_deref())
                })
                .collect();
            let mut reported = BTreeSet::new();
            for &d in &dels {
                let mut all = true;
                for &p in &puts {
                    if !covers(d, p) {
                        // A PUT that exists nowhere at the end (it failed and was never
                        // applied, or was superseded and collected) cannot make the key live.
                        let v = &self.ops[p].value;
                        all &= self.drained && !union.iter().any(|x| &x.value == v);
                        continue;
                    }
                    covered_values += 1;
                    let v = self.ops[p].value.clone().unwrap_or_default();
                    if rep.live[k].contains(&v) && reported.insert(v.clone()) {
                        rep.violation(
                            INV3,
                            format!(
                                "seed={seed}: {} is live at the end although {} covered it ({})",
                                v,
                                self.describe(d),
                                self.describe(p)
                            ),
                        );
                    }
                }
                if all && !rep.must_be_deleted.contains(&k) {
                    rep.must_be_deleted.push(k);
                    if !rep.live[k].is_empty() {
                        rep.violation(
                            INV3,
                            format!(
                                "seed={seed}: {} holds live values {:?} at the end although {} \
                                 covered every PUT whose value still exists",
                                key_name(k),
                                rep.live[k],
                                self.describe(d)
                            ),
                        );
                    }
                }
            }
        }
        rep.summary.push(format!(
            "inv3: {} keys must read 404 ({:?}); {covered_values} (delete, covered put) pairs checked",
            rep.must_be_deleted.len(),
            rep.must_be_deleted
                .iter()
                .map(|&k| key_name(k))
                .collect::<Vec<_>>()
        ));

        // Invariant 4.
        let (_, value_cov) = self.coverage();
        let (mut gets, mut max_siblings, mut above_clients) = (0, 0, 0);
        let mut largest = None;
        for (i, op) in self.ops.iter().enumerate() {
            if op.kind != Kind::Get || op.siblings.is_empty() {
                continue;
            }
            gets += 1;
            if op.siblings.len() > max_siblings {
                max_siblings = op.siblings.len();
                largest = Some(i);
            }
            above_clients += (op.siblings.len() > CLIENTS) as usize;
            let started: Vec<&Op> = self
                .ops
                .iter()
                .filter(|p| p.kind == Kind::Put && p.key == op.key && p.start < op.end)
                .collect();
            let distinct: BTreeSet<&String> = op.siblings.iter().collect();
            if distinct.len() != op.siblings.len() {
                rep.violation(
                    INV4,
                    format!(
                        "seed={seed}: {} returned one value twice: {:?}",
                        self.describe(i),
                        op.siblings
                    ),
                );
            }
            for s in &op.siblings {
                if !started.iter().any(|p| p.value.as_ref() == Some(s)) {
                    rep.violation(
                        INV4,
                        format!(
                            "seed={seed}: {} returned {s:?}, which no PUT on the key had started",
                            self.describe(i)
                        ),
                    );
                }
            }
            // Siblings must be concurrent writes: none was written with a context that (as far
            // as the clients can tell) had seen another one.
            for u in &op.siblings {
                for v in &op.siblings {
                    if u != v && value_cov.get(v).is_some_and(|c| c.contains(u)) {
                        let w = writer_of.get(v.as_str()).copied().unwrap_or(usize::MAX);
                        rep.violation(
                            INV4,
                            format!(
                                "seed={seed}: {} returned {u:?} alongside {v:?}, whose write had \
                                 seen it ({})",
                                self.describe(i),
                                if w < self.ops.len() {
                                    self.describe(w)
                                } else {
                                    "?".into()
                                }
                            ),
                        );
                    }
                }
            }
        }
        for (k, live) in rep.live.clone().iter().enumerate() {
            for u in live {
                for v in live {
                    if u != v && value_cov.get(v).is_some_and(|c| c.contains(u)) {
                        rep.violation(
                            INV4,
                            format!(
                                "seed={seed}: {} ends with {u:?} alongside {v:?}, whose write \
                                 had seen it",
                                key_name(k)
                            ),
                        );
                    }
                }
            }
        }
        rep.summary.push(
            format!(
                "inv4: {gets} GETs with values, at most {max_siblings} siblings, {above_clients} \
             with more siblings than clients"
            ) + &largest
                .map(|i| format!(" (largest: {})", self.describe(i)))
                .unwrap_or_default(),
        );
        rep
    }
}

// ------------------------------------------------------------------------------ HTTP client

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Reply {
    status: u16,
    ctx: Option<String>,
    body: Bytes,
}

/// One request, bounded by [`REQUEST_TIMEOUT`]; `Err` when no answer arrived.
async fn send(
    http: &HttpClient,
    method: Method,
    url: &str,
    body: Bytes,
    ctx: Option<&str>,
) -> Result<Reply, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("accept", "application/json");
    if let Some(c) = ctx {
        req = req.header("x-ringkv-context", c);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let fut = async {
        let resp = http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let ctx = resp
            .headers()
            .get("x-ringkv-context")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply { status, ctx, body })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

// ------------------------------------------------------------------------------ the run

/// State the fault task publishes to the clients and the checker.
struct Shared {
    /// Per node: the URL of its running process, `None` while it is down.
    urls: Vec<Option<String>>,
    processes: Vec<Process>,
    kills: Vec<Kill>,
    snapshots: Vec<Snapshot>,
    faults: Vec<String>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct ClientPlan {
    id: usize,
    seed: u64,
    shared: Arc<Mutex<Shared>>,
    http: HttpClient,
    deadline: Instant,
    doom_at: Instant,
    doomed: Arc<BTreeSet<usize>>,
}

/// The sibling values of a JSON GET answer, decoded (lossily) to strings.
fn siblings_of<C: FromIterator<String> + Default>(json: &serde_json::Value) -> C {
    json["siblings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let raw = B64.decode(s.as_str().unwrap_or_default());
                    String::from_utf8_lossy(&raw.unwrap_or_default()).into_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn client(plan: ClientPlan) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_mul(1000).wrapping_add(plan.id as u64));
    let mut ctxs: HashMap<usize, String> = HashMap::new();
    let mut ops = Vec::new();
    let mut n = 0;
    while Instant::now() < plan.deadline {
        let key = rng.random_range(0..KEYS);
        let doomed = Instant::now() >= plan.doom_at && plan.doomed.contains(&key);
        let roll = rng.random_range(0..100);
        let kind = match (doomed, roll) {
            (true, 0..50) | (false, 0..40) => Kind::Get,
            (false, 40..85) => Kind::Put,
            _ => Kind::Delete,
        };
        let with_ctx = rng.random_bool(0.6);
        let pick = rng.random_range(0..NODES);
        let think = rng.random_range(0..6u64);
        let up: Vec<(usize, String)> = lock(&plan.shared)
            .urls
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.clone().map(|u| (i, u)))
            .collect();
        let Some((node, base)) = up.get(pick % up.len().max(1)).cloned() else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let url = format!("{base}/kv/{}", key_name(key));
        let ctx_sent = if kind != Kind::Get && with_ctx {
            ctxs.get(&key).cloned()
        } else {
            None
        };
        let value = (kind == Kind::Put).then(|| {
            n += 1;
            format!("s{}c{}n{n}", plan.seed, plan.id)
        });
        let (method, url) = match kind {
            Kind::Get => (Method::GET, url),
            Kind::Put => (Method::PUT, url),
            Kind::Delete => (Method::DELETE, url),
        };
        let body = Bytes::from(value.clone().unwrap_or_default());
        let start = Instant::now();
        let res = send(&plan.http, method, &url, body, ctx_sent.as_deref()).await;
        let end = Instant::now();
        let mut op = Op {
            client: plan.id,
            key,
            kind,
            value,
            ctx_sent,
            node,
            start,
            end,
            status: None,
            ctx_returned: None,
            siblings: Vec::new(),
        };
        if let Ok(reply) = res {
            op.status = Some(reply.status);
            match (kind, reply.status) {
                (Kind::Get, 200 | 300) => {
                    let json: serde_json::Value =
                        serde_json::from_slice(&reply.body).unwrap_or_default();
                    op.ctx_returned = json["context"].as_str().map(str::to_string).or(reply.ctx);
                    op.siblings = siblings_of(&json);
                }
                (Kind::Get, 404) => op.ctx_returned = reply.ctx,
                (Kind::Put | Kind::Delete, 200..300) => op.ctx_returned = reply.ctx,
                _ => {}
            }
            if let Some(c) = &op.ctx_returned {
                ctxs.insert(key, c.clone());
            }
        }
        ops.push(op);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    ops
}

async fn kill(c: &mut TestCluster, shared: &Mutex<Shared>, i: usize) {
    // What every live node holds right now, straight from its store: a write held here by a
    // home that is never killed afterwards cannot be lost to the kills that follow.
    let at = Instant::now();
    let stores = c
        .up()
        .into_iter()
        .map(|n| {
            let store = c.node(n).node().store();
            let per_key = (0..KEYS)
                .map(|k| {
                    store
                        .get(&Bytes::from(key_name(k)))
                        .map_or_else(Vec::new, |set| FinalVersion::all_of(&set))
                })
                .collect();
            (n, per_key)
        })
        .collect();
    lock(shared).snapshots.push(Snapshot { at, stores });
    lock(shared).urls[i] = None;
    c.kill(i).await;
    let now = Instant::now();
    let mut s = lock(shared);
    s.kills.push(Kill { node: i, done: now });
    if let Some(p) = s.processes.iter_mut().rev().find(|p| p.node == i) {
        p.to = Some(now);
    }
}

async fn restart(c: &mut TestCluster, shared: &Mutex<Shared>, i: usize) {
    let from = Instant::now();
    c.restart(i).await;
    let generation = c.node(i).node().system().actor().generation;
    let url = c.url(i);
    let mut s = lock(shared);
    s.processes.push(Process {
        node: i,
        generation,
        from,
        to: None,
    });
    s.urls[i] = Some(url);
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
    let log = |shared: &Mutex<Shared>, what: String| {
        let at = start.elapsed().as_secs_f64();
        lock(shared).faults.push(format!("{at:.3}s {what}"));
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
                log(&shared, format!("kill {ix}"));
                kill(&mut c, &shared, x).await;
                tokio::time::sleep(hold).await;
                restart(&mut c, &shared, x).await;
                "kill"
            }
            1 => {
                log(&shared, format!("kill {ix} and {iy}"));
                kill(&mut c, &shared, x).await;
                kill(&mut c, &shared, y).await;
                tokio::time::sleep(hold).await;
                restart(&mut c, &shared, x).await;
                restart(&mut c, &shared, y).await;
                "kill two"
            }
            2 => {
                log(&shared, format!("partition {ix} from the rest"));
                c.partition(&[x], &others(&[x])).await;
                tokio::time::sleep(hold).await;
                c.heal().await;
                "partition one"
            }
            3 => {
                log(&shared, format!("partition {ix}+{iy} from the rest"));
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
                    log(&shared, format!("cut {ix} -> {names:?} one way"));
                    for &t in &targets {
                        c.cut(x, t).await;
                    }
                } else {
                    log(&shared, format!("cut {names:?} -> {ix} one way"));
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
                log(&shared, format!("kill {ix}, partition {iy} from the rest"));
                kill(&mut c, &shared, x).await;
                c.partition(&[y], &others(&[y])).await;
                tokio::time::sleep(hold).await;
                c.heal().await;
                restart(&mut c, &shared, x).await;
                "kill + partition"
            }
        };
        log(&shared, "healed".to_string());
        *counts.entry(kind).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
    }
    (c, counts)
}

/// Every key's versions on each of its homes, as sorted JSON (for comparison) and parsed.
async fn snapshot(
    c: &TestCluster,
    http: &HttpClient,
    homes: &[Vec<usize>],
    seed: u64,
) -> Vec<Vec<Vec<serde_json::Value>>> {
    let mut out = Vec::new();
    for (k, hs) in homes.iter().enumerate() {
        let mut per_home = Vec::new();
        for &h in hs {
            let url = format!("{}/admin/local/{}", c.url(h), key_name(k));
            let reply = send(http, Method::GET, &url, Bytes::new(), None)
                .await
                .unwrap_or_else(|e| panic!("seed={seed}: {url}: {e}"));
            let mut versions: Vec<serde_json::Value> = match reply.status {
                404 => Vec::new(),
                200 => serde_json::from_slice::<serde_json::Value>(&reply.body)
                    .expect("admin JSON")["versions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                s => panic!("seed={seed}: {url} answered {s}"),
            };
            versions.sort_by_key(|v| v.to_string());
            per_home.push(versions);
        }
        out.push(per_home);
    }
    out
}

fn differing(snap: &[Vec<Vec<serde_json::Value>>]) -> Vec<usize> {
    (0..snap.len())
        .filter(|&k| snap[k].windows(2).any(|w| w[0] != w[1]))
        .collect()
}

/// Runs one seed; returns its summary, or the failure message.
async fn run_seed(seed: u64, run: Duration) -> Result<String, String> {
    println!("seed={seed}: starting ({run:?} of operations)");
    let booted = Instant::now();
    let mut c = TestCluster::start_with(NODES, |cfg| {
        cfg.handoff_interval = Duration::from_millis(100);
        cfg.anti_entropy_interval = Duration::from_millis(200);
        cfg.rpc_timeout = Duration::from_millis(500);
    })
    .await;
    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let ids: Vec<String> = (0..NODES).map(|i| c.id(i)).collect();
    let homes: Vec<Vec<usize>> = (0..KEYS)
        .map(|k| c.replicas(key_name(k).as_bytes()))
        .collect();
    let start = Instant::now();
    let shared = Arc::new(Mutex::new(Shared {
        urls: (0..NODES).map(|i| Some(c.url(i))).collect(),
        processes: (0..NODES)
            .map(|i| Process {
                node: i,
                generation: c.node(i).node().system().actor().generation,
                from: booted,
                to: None,
            })
            .collect(),
        kills: Vec::new(),
        snapshots: Vec::new(),
        faults: Vec::new(),
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
                deadline,
                doom_at,
                doomed: doomed.clone(),
            }))
        })
        .collect();
    let fault_task = tokio::spawn(faults(c, seed, shared.clone(), start, deadline));
    let mut ops = Vec::new();
    for t in clients {
        ops.extend(t.await.expect("client task"));
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

    // Invariant 2: wait, without client reads, for the homes to agree and hints to drain.
    let mut snap;
    let converged = loop {
        snap = snapshot(&c, &http, &homes, seed).await;
        let hints: usize = (0..NODES)
            .map(|i| c.node(i).node().replica().hints_pending())
            .sum();
        if differing(&snap).is_empty() && hints == 0 {
            break Ok(healed.elapsed());
        }
        if healed.elapsed() > CONVERGENCE_BOUND {
            break Err((differing(&snap), hints));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let (processes, kills, snapshots, fault_log) = {
        let mut s = lock(&shared);
        let snaps = std::mem::take(&mut s.snapshots);
        (
            s.processes.clone(),
            s.kills.clone(),
            snaps,
            s.faults.clone(),
        )
    };
    let history = History {
        seed,
        start,
        ids: ids.clone(),
        homes: homes.clone(),
        ops,
        processes,
        kills,
        snapshots,
        drained: converged.is_ok(),
        faults: fault_log,
    };
    let finals: Vec<Vec<Vec<FinalVersion>>> = snap
        .iter()
        .map(|per_home| {
            per_home
                .iter()
                .map(|vs| FinalVersion::parse_all(&serde_json::json!({ "versions": vs })))
                .collect()
        })
        .collect();
    let mut rep = history.check(&finals);
    if let Ok(k) = std::env::var("RINGKV_FAULT_TRACE") {
        let k = k
            .trim_start_matches('k')
            .parse()
            .expect("RINGKV_FAULT_TRACE=k07");
        history.trace(k);
        println!("seed={seed}: {} at the end: {:?}", key_name(k), finals[k]);
    }

    match &converged {
        Ok(took) => rep.summary.push(format!(
            "inv2: homes identical and hints drained {:.2}s after the final heal",
            took.as_secs_f64()
        )),
        Err((keys, hints)) => {
            rep.summary.push(format!(
                "inv2: NOT converged {CONVERGENCE_BOUND:?} after the final heal"
            ));
            let mut msg = format!(
                "seed={seed}: {CONVERGENCE_BOUND:?} after the final heal, {} keys still differ \
                 between their home replicas and {hints} hints are pending (needs anti-entropy \
                 and handoff to repair restarted and partitioned replicas):",
                keys.len()
            );
            for &k in keys.iter().take(5) {
                let _ = write!(msg, "\n    {}:", key_name(k));
                for (i, vs) in finals[k].iter().enumerate() {
                    let short: Vec<_> = vs.iter().map(|v| (&v.dot, &v.value)).collect();
                    let _ = write!(msg, "\n      {} holds {short:?}", ids[homes[k][i]]);
                }
            }
            rep.violation(INV2, msg);
        }
    }

    // Reads through every node (these repair, so they come after the convergence check).
    let mut reads = 0;
    for k in 0..KEYS {
        let must_404 = rep.must_be_deleted.contains(&k);
        if converged.is_err() && !must_404 {
            continue;
        }
        for (i, id) in ids.iter().enumerate() {
            let url = format!("{}/kv/{}?r=3", c.url(i), key_name(k));
            let reply = send(&http, Method::GET, &url, Bytes::new(), None).await;
            reads += 1;
            let got: Result<(u16, BTreeSet<String>), String> = reply.map(|r| {
                let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                let values = siblings_of(&json);
                (r.status, values)
            });
            if must_404 && !matches!(got, Ok((404, _))) {
                rep.violation(
                    INV3,
                    format!(
                        "seed={seed}: {} must be deleted, but GET r=3 via {} gave {got:?}",
                        key_name(k),
                        id
                    ),
                );
            }
            let want = &rep.live[k];
            let expected = if want.is_empty() {
                404
            } else {
                200 + 100 * (want.len() > 1) as u16
            };
            if converged.is_ok() && got.as_ref().ok() != Some(&(expected, want.clone())) {
                rep.violation(
                    INV2,
                    format!(
                        "seed={seed}: the homes of {} converged on live values {want:?}, but GET \
                         r=3 via {} gave {got:?}",
                        key_name(k),
                        id
                    ),
                );
            }
        }
    }
    c.shutdown().await;

    let count = |kind: Kind| {
        let all = history.ops.iter().filter(|o| o.kind == kind);
        let n = all.clone().count();
        let ok = all.filter(|o| o.status.is_some_and(|s| s < 500)).count();
        format!("{n} ({ok} answered below 500)")
    };
    let mut summary = format!(
        "seed={seed}: {} ops in {:.1}s: GET {}, PUT {}, DELETE {}; faults {:?}; {reads} final reads; \
         total {:.1}s",
        history.ops.len(),
        ops_done.as_secs_f64(),
        count(Kind::Get),
        count(Kind::Put),
        count(Kind::Delete),
        fault_counts,
        start.elapsed().as_secs_f64()
    );
    for line in &rep.summary {
        let _ = write!(summary, "\nseed={seed}: {line}");
    }
    let _ = write!(
        summary,
        "\nseed={seed}: faults: {}",
        history.faults.join(", ")
    );
    println!("{summary}");
    if rep.violations.is_empty() {
        return Ok(summary);
    }
    let mut msg = format!(
        "seed={seed}: invariants violated (reproduce with RINGKV_FAULT_SEEDS={seed} cargo test \
         --test fault -- --nocapture)\n{summary}"
    );
    for (inv, vs) in &rep.violations {
        let _ = write!(msg, "\n  invariant {inv}: {} violation(s)", vs.len());
        for v in vs.iter().take(SHOW) {
            let _ = write!(msg, "\n    {v}");
        }
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
    if let Some(soak) = env_secs("RINGKV_SOAK_SECS") {
        while began.elapsed() < soak {
            let seed = rand::random::<u32>() as u64;
            seeds_run.push(seed);
            if let Err(e) = run_seed(seed, run).await {
                eprintln!("{e}");
                failures.push(e);
            }
        }
    } else {
        for seed in env_seeds().unwrap_or_else(|| DEFAULT_SEEDS.to_vec()) {
            seeds_run.push(seed);
            if let Err(e) = run_seed(seed, run).await {
                eprintln!("{e}");
                failures.push(e);
            }
        }
    }
    println!(
        "seeds {seeds_run:?} in {:.1}s, {} failed",
        began.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// --------------------------------------------------------------- tests of the checker itself

#[cfg(test)]
mod checker {
    use super::*;
    use ringkv::version::Actor as VActor;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn history(t0: Instant, ops: Vec<Op>) -> History {
        History {
            seed: 0,
            start: t0,
            ids: (1..=NODES).map(|i| format!("n{i}")).collect(),
            homes: (0..KEYS).map(|_| vec![0, 1, 2]).collect(),
            ops,
            processes: (0..NODES)
                .map(|i| Process {
                    node: i,
                    generation: 1,
                    from: t0,
                    to: None,
                })
                .collect(),
            kills: Vec::new(),
            snapshots: Vec::new(),
            drained: true,
            faults: Vec::new(),
        }
    }

    fn write(
        t0: Instant,
        ms: u64,
        client: usize,
        value: Option<&str>,
        sent: Option<&Context>,
        returned: &Context,
    ) -> Op {
        Op {
            client,
            key: 0,
            kind: if value.is_some() {
                Kind::Put
            } else {
                Kind::Delete
            },
            value: value.map(str::to_string),
            ctx_sent: sent.map(Context::encode),
            node: 0,
            start: at(t0, ms),
            end: at(t0, ms + 1),
            status: Some(204),
            ctx_returned: Some(returned.encode()),
            siblings: Vec::new(),
        }
    }

    fn val(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Final state: `homes` copies of `set` for key 0, nothing for the other keys.
    fn finals(set: &VersionSet) -> Vec<Vec<Vec<FinalVersion>>> {
        let mut f: Vec<Vec<Vec<FinalVersion>>> = (0..KEYS).map(|_| vec![vec![]; 3]).collect();
        f[0] = vec![FinalVersion::all_of(set); 3];
        f
    }

    #[test]
    fn checker_flags_lost_writes() {
        let t0 = Instant::now();
        let a = VActor::new("n1", 1);
        let b = VActor::new("n2", 1);
        // Three writes through n1: v1, v2 after v1, and a delete after v2.
        let mut set = VersionSet::new();
        let h1 = set.write(&a, None, val("v1"));
        let h2 = set.write(&a, Some(&h1), val("v2"));
        let ops = vec![
            write(t0, 0, 0, Some("v1"), None, &h1),
            write(t0, 10, 1, Some("v2"), Some(&h1), &h2),
        ];
        let h = history(t0, ops.clone());
        let rep = h.check(&finals(&set));
        assert!(rep.violations.is_empty(), "{:?}", rep.violations);
        assert_eq!(rep.live[0], BTreeSet::from(["v2".to_string()]));

        // Broken: the replicas hold only a write by n2 that never saw v1 or v2.
        let mut other = VersionSet::new();
        let hx = other.write(&b, None, val("x"));
        let mut ops2 = ops.clone();
        ops2.push(write(t0, 20, 2, Some("x"), None, &hx));
        let rep = history(t0, ops2.clone()).check(&finals(&other));
        let lost = &rep.violations[INV1];
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(lost[0].contains("v1") && lost[1].contains("v2"), "{lost:?}");

        // The same loss after two distinct nodes were killed is not the store's fault.
        let mut h3 = history(t0, ops2);
        h3.kills = vec![
            Kill {
                node: 0,
                done: at(t0, 30),
            },
            Kill {
                node: 1,
                done: at(t0, 40),
            },
        ];
        let rep = h3.check(&finals(&other));
        assert!(!rep.violations.contains_key(INV1), "{:?}", rep.violations);
        // Unless a snapshot showed a home that was never killed (n3) holding v2: then both v1
        // (superseded by v2) and v2 were safe, and losing them is a bug again.
        let mut per_key: Vec<Vec<FinalVersion>> = vec![vec![]; KEYS];
        per_key[0] = FinalVersion::all_of(&set);
        h3.snapshots = vec![Snapshot {
            at: at(t0, 25),
            stores: vec![(2, per_key.clone())],
        }];
        let rep = h3.check(&finals(&other));
        assert_eq!(rep.violations[INV1].len(), 2, "{:?}", rep.violations);
        // A snapshot of a node killed later, or of a non-home, proves nothing.
        h3.snapshots = vec![Snapshot {
            at: at(t0, 25),
            stores: vec![(1, per_key.clone()), (3, per_key)],
        }];
        let rep = h3.check(&finals(&other));
        assert!(!rep.violations.contains_key(INV1), "{:?}", rep.violations);

        // A delete covering v2 whose tombstone vanished: v2 "comes back", and the delete is
        // itself a lost write.
        let mut deleted = set.clone();
        let hd = deleted.write(&a, Some(&h2), None);
        let mut ops4 = ops.clone();
        ops4.push(write(t0, 30, 3, None, Some(&h2), &hd));
        let rep = history(t0, ops4.clone()).check(&finals(&set));
        assert_eq!(rep.violations[INV1].len(), 1, "{:?}", rep.violations);
        assert!(
            rep.violations[INV3][0].contains("v2"),
            "{:?}",
            rep.violations
        );
        assert_eq!(rep.must_be_deleted, vec![0]);
        // With the tombstone present, all is well and the key must read 404.
        let rep = history(t0, ops4).check(&finals(&deleted));
        assert!(rep.violations.is_empty(), "{:?}", rep.violations);
        assert_eq!(rep.must_be_deleted, vec![0]);
        assert!(rep.live[0].is_empty());
    }

    #[test]
    fn checker_wants_siblings_to_be_concurrent_writes() {
        let t0 = Instant::now();
        let get = |siblings: &[&str]| Op {
            client: 0,
            key: 0,
            kind: Kind::Get,
            value: None,
            ctx_sent: None,
            node: 0,
            start: at(t0, 100),
            end: at(t0, 101),
            status: Some(300),
            ctx_returned: None,
            siblings: siblings.iter().map(|s| s.to_string()).collect(),
        };
        let a = VActor::new("n1", 1);
        let mut set = VersionSet::new();
        let h1 = set.write(&a, None, val("v1"));
        let h2 = set.write(&a, Some(&h1), val("v2"));
        let h3 = set.write(&a, Some(&Context::new()), val("v3"));
        let mut ops = vec![
            write(t0, 0, 0, Some("v1"), None, &h1),
            write(t0, 10, 0, Some("v2"), Some(&h1), &h2),
            write(t0, 20, 0, Some("v3"), Some(&Context::new()), &h3),
            get(&["v2", "v3"]),
        ];
        // v2 and v3 are concurrent, even though one client wrote both.
        let rep = history(t0, ops.clone()).check(&finals(&set));
        assert!(rep.violations.is_empty(), "{:?}", rep.violations);
        assert_eq!(rep.live[0].len(), 2);
        // v2's write had seen v1: they cannot be siblings.
        ops[3] = get(&["v1", "v2"]);
        let rep = history(t0, ops.clone()).check(&finals(&set));
        assert_eq!(rep.violations[INV4].len(), 1, "{:?}", rep.violations);
        assert!(rep.violations[INV4][0].contains("whose write had seen it"));
        // A duplicate, and a value nobody wrote.
        ops[3] = get(&["v1", "v1", "zzz"]);
        let rep = history(t0, ops).check(&finals(&set));
        assert_eq!(rep.violations[INV4].len(), 2, "{:?}", rep.violations);
    }
}
