//! The simulated clients and the fault schedule.
//!
//! Clients speak HTTP to any node, as real ones do, over turmoil TCP. Every write carries a
//! value no other write has (`c1-17`), so the checker can tell where each value came from.
//! Writes: blind PUTs (no context), read-modify-writes (GET, then PUT with the context read),
//! deletes with a context at W = N, and PUTs with a one-second TTL on keys of their own.
//! Reads: GETs and listings. A request that times out, or fails with a 5xx, has an unknown
//! outcome: it may have been applied.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::{NODES, Nodes, START, WORK, http_addr, node_name, trace};
use crate::common::http::{self, Reply};

/// Hot keys every client writes.
pub const KEYS: usize = 6;
/// Keys written with a TTL, apart from the others.
pub const TTL_KEYS: usize = 3;
/// The TTL they get, in seconds.
pub const TTL_SECS: u64 = 1;
/// How long a client waits for an answer before it calls the outcome unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How a write ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    /// Refused (4xx): not applied.
    Failed,
    /// Timed out, connection lost, or 5xx: maybe applied.
    Unknown,
}

/// One write (or delete) a client sent.
#[derive(Debug, Clone)]
pub struct Write {
    /// The value written (`c1-17`); for a delete, a name no value has (`c1-17-del`).
    pub id: String,
    pub key: String,
    pub invoked: Duration,
    pub completed: Option<Duration>,
    pub outcome: Outcome,
    /// The context sent with it; `None` for a blind write, which supersedes whatever its
    /// coordinator held.
    pub sent: Option<String>,
    /// The context of the new version, from the 2xx answer.
    pub returned: Option<String>,
    pub delete: bool,
    /// The values its client read before writing: its context covers them.
    pub covers: Vec<String>,
    pub w: usize,
    pub ttl: bool,
    /// Sent with `pw = w`: every acknowledgement from a home.
    pub strict: bool,
    /// What the ring held when the 2xx arrived (acknowledged writes only).
    pub at_ack: Option<AtAck>,
}

/// The key's homes when a write was acknowledged, as its coordinator saw them: how many it
/// saw up when the write started and when it was acknowledged, and how many held the write
/// (or a successor) in their stores at that moment.
#[derive(Debug, Clone)]
pub struct AtAck {
    pub coordinator: String,
    /// The key's homes by the coordinator's ring.
    pub homes: Vec<String>,
    pub homes_up: usize,
    /// The homes it saw up both when the write started and when it was acknowledged: those it
    /// sent the write to, and waited for.
    pub up: Vec<String>,
    pub homes_holding: usize,
}

impl Write {
    pub fn acked(&self) -> bool {
        self.outcome == Outcome::Acked
    }
}

/// Everything the clients did and saw.
#[derive(Debug, Default)]
pub struct History {
    pub writes: Vec<Write>,
    /// Every value any read returned.
    pub observed: BTreeSet<String>,
    /// Every key any listing returned.
    pub listed: BTreeSet<String>,
    /// What each read returned, by key: the values, siblings if more than one.
    pub reads: Vec<(String, Vec<String>)>,
    pub ops: usize,
    /// Answers no client should ever get (a 400 to a well-formed request, a bad body).
    pub anomalies: Vec<String>,
    /// Reads sent with `pr = r` (every reply from a home) that got an answer.
    pub strict_reads: Vec<StrictRead>,
    /// The `r` every read of the run was sent with.
    pub read_quorum: Option<usize>,
}

/// A read at `pr = r` and what it returned.
#[derive(Debug, Clone)]
pub struct StrictRead {
    pub key: String,
    pub node: usize,
    pub client: usize,
    pub invoked: Duration,
    pub completed: Duration,
    pub values: Vec<String>,
    /// The context of what it returned (absent for a 404 without a tombstone).
    pub context: Option<String>,
    /// The key's homes by the ring of the node asked, as the answer came.
    pub homes: Vec<String>,
}

type Shared = Rc<RefCell<History>>;

/// One request to `node`, on a connection of its own, bounded by [`REQUEST_TIMEOUT`].
async fn request(
    node: usize,
    method: Method,
    path: &str,
    context: Option<&str>,
    body: Bytes,
) -> Result<Reply, String> {
    let exchange = async {
        let stream = super::net::SimStream::connect(http_addr(node))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::task::spawn_local(conn);
        let host = node_name(node);
        let mut headers = vec![("host", host.as_str()), ("accept", "application/json")];
        if let Some(ctx) = context {
            headers.push((ringkv::http::CONTEXT_HEADER, ctx));
        }
        let resp = sender
            .send_request(http::request(method, path, body, &headers))
            .await
            .map_err(|e| format!("request: {e}"))?;
        Reply::read(resp).await
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(res) => res,
        Err(_) => Err("timed out".into()),
    }
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Reads `key` through `node`: the values seen, and the context to write back with. A
/// `strict` read asks for `pr = r` and is recorded with its times.
async fn read(
    history: &Shared,
    (node, client, nodes): (usize, usize, &Nodes),
    key: &str,
    r: usize,
    strict: bool,
) -> Option<(Vec<String>, Option<String>)> {
    let invoked = now();
    let pr = if strict {
        format!("&pr={r}")
    } else {
        String::new()
    };
    let answer = request(
        node,
        Method::GET,
        &format!("/kv/{key}?r={r}{pr}"),
        None,
        Bytes::new(),
    )
    .await
    .ok()?;
    let mut h = history.borrow_mut();
    let homes = homes_up(nodes, key)
        .remove(&node_name(node))
        .map(|(homes, _)| homes)
        .unwrap_or_default();
    let record = |h: &mut History, values: &[String], context: Option<String>| {
        if strict {
            h.strict_reads.push(StrictRead {
                key: key.to_string(),
                node,
                client,
                invoked,
                completed: now(),
                values: values.to_vec(),
                context,
                homes: homes.clone(),
            });
        }
    };
    match answer.status {
        StatusCode::NOT_FOUND => {
            record(&mut h, &[], answer.context());
            Some((Vec::new(), answer.context()))
        }
        StatusCode::OK | StatusCode::MULTIPLE_CHOICES => {
            let Some(values) = answer.values() else {
                h.anomalies
                    .push(format!("GET {key}: a body that is not a GET's JSON"));
                return None;
            };
            for v in &values {
                h.observed.insert(v.clone());
            }
            h.reads.push((key.to_string(), values.clone()));
            record(&mut h, &values, answer.context());
            Some((values, answer.context()))
        }
        s if s.is_client_error() => {
            h.anomalies.push(format!("GET {key}: {s}"));
            None
        }
        _ => None,
    }
}

/// Sends one write and records it.
#[allow(clippy::too_many_arguments)]
async fn write(
    history: &Shared,
    node: usize,
    client: usize,
    id: String,
    key: &str,
    context: Option<String>,
    covers: Vec<String>,
    w: usize,
    ttl: bool,
    delete: bool,
    strict: bool,
    nodes: &Nodes,
) {
    let invoked = now();
    // Each node's count of the key's homes it sees up, as the write starts: the coordinator
    // (known from the answer) picked its destinations from about this view.
    let up_at_start = homes_up(nodes, key);
    let mut path = format!("/kv/{key}?w={w}");
    if strict {
        path.push_str(&format!("&pw={w}"));
    }
    if ttl {
        path.push_str(&format!("&ttl={TTL_SECS}"));
    }
    let (method, body) = if delete {
        (Method::DELETE, Bytes::new())
    } else {
        (Method::PUT, Bytes::from(id.clone()))
    };
    let res = request(node, method, &path, context.as_deref(), body).await;
    let outcome = match &res {
        Ok(a) if a.status.is_success() => Outcome::Acked,
        Ok(a) if a.status == StatusCode::PRECONDITION_FAILED => Outcome::Failed,
        Ok(a) if a.status.is_client_error() => {
            history.borrow_mut().anomalies.push(format!(
                "{id} on {key}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            ));
            Outcome::Failed
        }
        _ => Outcome::Unknown,
    };
    let show = |c: &Option<String>| {
        c.as_deref()
            .and_then(|c| ringkv::version::Context::decode(c).ok())
            .map(|c| {
                c.entries()
                    .map(|(a, max, _)| format!("{}.{}:{max}", a.node, a.generation % 100_000))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    trace::note(
        &format!("c{}", client + 1),
        &format!(
            "{id} {key} via n{} -> {outcome:?} sent [{}] got [{}]",
            node + 1,
            show(&context),
            show(&res.as_ref().ok().and_then(Reply::context))
        ),
    );
    let returned = match &res {
        Ok(a) if a.status.is_success() => a.context(),
        _ => None,
    };
    let mut write = Write {
        id,
        key: key.to_string(),
        invoked,
        completed: (outcome != Outcome::Unknown).then(now),
        outcome,
        sent: context,
        returned,
        delete,
        covers,
        w,
        ttl,
        strict,
        at_ack: None,
    };
    if write.acked() {
        write.at_ack = at_ack(nodes, &write, &up_at_start);
    }
    history.borrow_mut().writes.push(write);
}

/// Per node: `key`'s homes by its ring, and those of them it sees up.
type HomesSeen = std::collections::BTreeMap<String, (Vec<String>, Vec<String>)>;

/// What each running node sees of `key`'s homes.
fn homes_up(nodes: &Nodes, key: &str) -> HomesSeen {
    nodes
        .borrow()
        .iter()
        .map(|(name, node)| {
            let view = node.system().view();
            let homes = view.ring.preference_list(key.as_bytes(), N);
            let up = homes
                .iter()
                .filter(|h| view.is_up(h))
                .map(|h| h.to_string())
                .collect();
            let names = homes.iter().map(|h| h.to_string()).collect();
            (name.clone(), (names, up))
        })
        .collect()
}

/// What the ring held as `w` was acknowledged (see [`AtAck`]); `None` if its coordinator is
/// not one node (several candidate dots) or is gone.
fn at_ack(nodes: &Nodes, w: &Write, up_at_start: &HomesSeen) -> Option<AtAck> {
    let [dot]: [ringkv::version::Dot; 1] = super::check::candidate_dots(w).try_into().ok()?;
    let coordinator = dot.actor.node.to_string();
    let nodes = nodes.borrow();
    // The process that minted the write, still running, and every home running: else a
    // store read here is a dead process's, and proves nothing.
    let node = nodes.get(&coordinator)?;
    if node.system().actor().generation != dot.actor.generation {
        return None;
    }
    let view = node.system().view();
    let homes = view.ring.preference_list(w.key.as_bytes(), N);
    if homes.iter().any(|h| !nodes.contains_key(&**h)) {
        return None;
    }
    // The homes it sent to are those of its ring when the write started: if placement moved
    // meanwhile (the zones gate opening), the count below would be of other nodes.
    let (homes_at_start, up_at_start) = up_at_start.get(&coordinator)?;
    if homes
        .iter()
        .map(|h| h.to_string())
        .ne(homes_at_start.iter().cloned())
    {
        return None;
    }
    let up: Vec<String> = up_at_start
        .iter()
        .filter(|h| view.is_up(h.as_str()))
        .cloned()
        .collect();
    let homes_holding = homes
        .iter()
        .filter(|h| {
            nodes
                .get(&***h)
                .and_then(|n| n.store().get(&Bytes::from(w.key.clone())))
                .is_some_and(|vs| {
                    vs.versions()
                        .iter()
                        .any(|v| v.dot == dot || v.history.contains(&dot))
                })
        })
        .count();
    Some(AtAck {
        homes_up: up.len(),
        up,
        coordinator,
        homes: homes_at_start.clone(),
        homes_holding,
    })
}

/// Replicas per key (the default N).
const N: usize = ringkv::config::DEFAULT_REPLICAS;

/// One client: random operations on random nodes from [`START`] for [`WORK`].
pub async fn client(c: usize, seed: u64, (r, w): (usize, usize), history: Shared, nodes: Nodes) {
    let mut rng = SmallRng::seed_from_u64(seed);
    tokio::time::sleep(START).await;
    let mut seq = 0u64;
    while now() < START + WORK {
        seq += 1;
        let id = format!("c{}-{seq}", c + 1);
        let node = rng.random_range(0..NODES);
        let key = format!("k{}", rng.random_range(0..KEYS));
        history.borrow_mut().ops += 1;
        // Every third operation is strict: a write at `pw = w`, a read at `pr = r` (the
        // checker's fresh-read rule). Decided by the sequence, so no random draw moves.
        let strict = seq.is_multiple_of(3);
        let me = (node, c, &nodes);
        match rng.random_range(0..100) {
            0..30 => {
                write(
                    &history,
                    node,
                    c,
                    id,
                    &key,
                    None,
                    Vec::new(),
                    w,
                    false,
                    false,
                    strict,
                    &nodes,
                )
                .await
            }
            30..65 => {
                if let Some((seen, ctx)) = read(&history, me, &key, r, strict).await {
                    let writer = rng.random_range(0..NODES);
                    write(
                        &history, writer, c, id, &key, ctx, seen, w, false, false, strict, &nodes,
                    )
                    .await;
                }
            }
            65..72 => {
                if let Some((seen, Some(ctx))) = read(&history, me, &key, r, strict).await {
                    let id = format!("{id}-del");
                    write(
                        &history,
                        node,
                        c,
                        id,
                        &key,
                        Some(ctx),
                        seen,
                        3,
                        false,
                        true,
                        strict,
                        &nodes,
                    )
                    .await;
                }
            }
            72..80 => {
                let key = format!("t{}", rng.random_range(0..TTL_KEYS));
                write(
                    &history,
                    node,
                    c,
                    id,
                    &key,
                    None,
                    Vec::new(),
                    w,
                    true,
                    false,
                    false,
                    &nodes,
                )
                .await;
            }
            80..95 => {
                read(&history, me, &key, r, strict).await;
            }
            _ => {
                if let Ok(a) = request(node, Method::GET, "/kv?prefix=", None, Bytes::new()).await
                    && a.status == StatusCode::OK
                    && let Ok(json) = serde_json::from_slice::<serde_json::Value>(&a.body)
                {
                    let mut h = history.borrow_mut();
                    for k in json["keys"].as_array().into_iter().flatten() {
                        if let Some(k) = k.as_str() {
                            h.listed.insert(k.to_string());
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
    }
}

/// The links between nodes a fault cut, one way each: (from, to).
#[derive(Debug, Default)]
pub struct Cut(pub BTreeSet<(usize, usize)>);

/// A fault the schedule plays.
#[derive(Debug, Clone)]
pub struct Fault {
    pub at: Duration,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// Kill a node: its process and memory are gone.
    Crash(usize),
    /// Start a killed node again, empty.
    Restart(usize),
    /// Cut every link between the two sides.
    Partition(Vec<usize>, Vec<usize>),
    Repair(Vec<usize>, Vec<usize>),
    /// Cut the links from one node to another, one way only.
    OneWay(usize, usize),
    RepairOneWay(usize, usize),
    /// Make a node's links slow and jittery (so messages reorder).
    Slow(usize, Duration),
    Fast(usize),
    /// Make a node's links flaky: each message may break the link for a while.
    Lossy(usize, f64),
    Lossless(usize),
}

/// Each fault's span (from its start to its own repair, `None` if it lasts to the end) and
/// the nodes it touches: a crashed, slow or lossy node, both ends of a one-way cut, the
/// minority side of a partition. A flapping partition repairs one cut twice.
pub type FaultSpan = (Duration, Option<Duration>, Vec<usize>);

/// The spans of a run's faults ([`FaultSpan`]).
pub fn fault_spans(schedule: &[Fault]) -> Vec<FaultSpan> {
    let mut spans = Vec::new();
    let mut open: BTreeMap<String, (Duration, Vec<usize>)> = BTreeMap::new();
    let mut by_time: Vec<&Fault> = schedule.iter().collect();
    by_time.sort_by_key(|f| f.at);
    for f in by_time {
        let (name, begins, touched) = match &f.kind {
            Kind::Crash(i) => (format!("crash {i}"), true, vec![*i]),
            Kind::Restart(i) => (format!("crash {i}"), false, vec![]),
            Kind::Partition(a, b) => (format!("cut {a:?} {b:?}"), true, a.clone()),
            Kind::Repair(a, b) => (format!("cut {a:?} {b:?}"), false, vec![]),
            Kind::OneWay(a, b) => (format!("one way {a} {b}"), true, vec![*a, *b]),
            Kind::RepairOneWay(a, b) => (format!("one way {a} {b}"), false, vec![]),
            Kind::Slow(i, _) => (format!("slow {i}"), true, vec![*i]),
            Kind::Fast(i) => (format!("slow {i}"), false, vec![]),
            Kind::Lossy(i, _) => (format!("lossy {i}"), true, vec![*i]),
            Kind::Lossless(i) => (format!("lossy {i}"), false, vec![]),
        };
        if begins {
            open.entry(name).or_insert((f.at, touched));
        } else if let Some((from, touched)) = open.remove(&name) {
            spans.push((from, Some(f.at), touched));
        }
    }
    spans.extend(
        open.into_values()
            .map(|(from, touched)| (from, None, touched)),
    );
    spans
}

impl Fault {
    pub fn describe(&self) -> String {
        format!("{:.2}s {:?}", self.at.as_secs_f64(), self.kind)
    }

    pub fn kills(&self) -> bool {
        matches!(self.kind, Kind::Crash(_))
    }

    pub fn apply(&self, sim: &mut turmoil::Sim<'_>, cut: &mut Cut) {
        trace::note("sim", &self.describe());
        let n = node_name;
        match &self.kind {
            Kind::Crash(i) => {
                // A machine that dies sends nothing: the resets and FINs of the sockets its
                // runtime drops are lost on the way. (Their order is tokio's task-drop
                // order, which depends on task ids, a process-wide counter: a seed could
                // not replay its run after other runs in the same process.)
                let hosts: Vec<String> = (0..NODES)
                    .filter(|j| j != i && !cut.0.contains(&(*i, *j)))
                    .map(n)
                    .chain((0..super::CLIENTS).map(|c| format!("c{}", c + 1)))
                    .collect();
                for h in &hosts {
                    sim.partition_oneway(n(*i), h.as_str());
                }
                sim.crash(n(*i));
                for h in &hosts {
                    sim.repair_oneway(n(*i), h.as_str());
                }
            }
            Kind::Restart(i) => {
                if !sim.is_host_running(n(*i)) {
                    sim.bounce(n(*i))
                }
            }
            Kind::Partition(a, b) => pairs(a, b, |x, y| {
                cut.0.extend([(x, y), (y, x)]);
                sim.partition(n(x), n(y))
            }),
            Kind::Repair(a, b) => pairs(a, b, |x, y| {
                cut.0.remove(&(x, y));
                cut.0.remove(&(y, x));
                sim.repair(n(x), n(y))
            }),
            Kind::OneWay(a, b) => {
                cut.0.insert((*a, *b));
                sim.partition_oneway(n(*a), n(*b))
            }
            Kind::RepairOneWay(a, b) => {
                cut.0.remove(&(*a, *b));
                sim.repair_oneway(n(*a), n(*b))
            }
            Kind::Slow(i, d) => others(*i, |j| sim.set_link_max_message_latency(n(*i), n(j), *d)),
            Kind::Fast(i) => others(*i, |j| {
                sim.set_link_max_message_latency(n(*i), n(j), Duration::from_millis(20))
            }),
            Kind::Lossy(i, p) => others(*i, |j| sim.set_link_fail_rate(n(*i), n(j), *p)),
            Kind::Lossless(i) => others(*i, |j| sim.set_link_fail_rate(n(*i), n(j), 0.0)),
        }
    }
}

fn pairs(a: &[usize], b: &[usize], mut f: impl FnMut(usize, usize)) {
    for &x in a {
        for &y in b {
            f(x, y);
        }
    }
}

fn others(i: usize, mut f: impl FnMut(usize)) {
    (0..NODES).filter(|&j| j != i).for_each(&mut f);
}

/// A seeded schedule: one to three faults, each with its end, inside the work period. At
/// most one node is killed per run: it restarts empty, so a second kill before it caught up
/// could lose what only the two of them held, which no Dynamo-style store without a disk
/// promises to keep.
pub fn faults(rng: &mut SmallRng, zoned: bool) -> Vec<Fault> {
    let mut out = Vec::new();
    let mut killed = false;
    let first = START + Duration::from_millis(300);
    let last = START + WORK - Duration::from_millis(500);
    for _ in 0..rng.random_range(1..=3) {
        let at =
            first + Duration::from_millis(rng.random_range(0..(last - first).as_millis() as u64));
        let len = Duration::from_millis(rng.random_range(300..3_000));
        let end = (at + len).min(START + WORK);
        let node = rng.random_range(0..NODES);
        let (start, stop) = match rng.random_range(0..7) {
            0 if !killed => {
                killed = true;
                (Kind::Crash(node), Kind::Restart(node))
            }
            0 | 1 => (
                Kind::Partition(vec![node], others_of(node)),
                Kind::Repair(vec![node], others_of(node)),
            ),
            2 if zoned => {
                // A whole zone cut off from the others, as when a rack or an availability
                // zone fails.
                let zone = super::zone_nodes(rng.random_range(0..NODES) % super::ZONES);
                let rest: Vec<usize> = (0..NODES).filter(|i| !zone.contains(i)).collect();
                (
                    Kind::Partition(zone.clone(), rest.clone()),
                    Kind::Repair(zone, rest),
                )
            }
            2 => {
                // A majority on one side (three nodes), a minority on the other.
                let mut all: Vec<usize> = (0..NODES).collect();
                let cut = rng.random_range(0..NODES);
                all.rotate_left(cut);
                let (a, b) = all.split_at(3);
                (
                    Kind::Partition(a.to_vec(), b.to_vec()),
                    Kind::Repair(a.to_vec(), b.to_vec()),
                )
            }
            3 => {
                let to = (node + rng.random_range(1..NODES)) % NODES;
                (Kind::OneWay(node, to), Kind::RepairOneWay(node, to))
            }
            4 => {
                // Flapping: the node's links go down and up every 200 ms.
                let mut t = at;
                let mut down = true;
                while t < end {
                    let kind = if down {
                        Kind::Partition(vec![node], others_of(node))
                    } else {
                        Kind::Repair(vec![node], others_of(node))
                    };
                    out.push(Fault { at: t, kind });
                    down = !down;
                    t += Duration::from_millis(200);
                }
                (
                    Kind::Repair(vec![node], others_of(node)),
                    Kind::Repair(vec![node], others_of(node)),
                )
            }
            5 => (
                Kind::Slow(node, Duration::from_millis(rng.random_range(50..400))),
                Kind::Fast(node),
            ),
            _ => (
                Kind::Lossy(node, rng.random_range(0.01..0.1)),
                Kind::Lossless(node),
            ),
        };
        out.push(Fault { at, kind: start });
        out.push(Fault {
            at: end,
            kind: stop,
        });
    }
    out.sort_by_key(|f| f.at);
    out
}

fn others_of(i: usize) -> Vec<usize> {
    (0..NODES).filter(|&j| j != i).collect()
}

/// Ends every fault: links repaired, fast and lossless, and every node running.
pub fn heal(sim: &mut turmoil::Sim<'_>, cut: &mut Cut) {
    trace::note("sim", "heal");
    for i in 0..NODES {
        if !sim.is_host_running(node_name(i)) {
            sim.bounce(node_name(i));
        }
        cut.0.clear();
        for j in (i + 1)..NODES {
            sim.repair(node_name(i), node_name(j));
            sim.repair_oneway(node_name(i), node_name(j));
            sim.repair_oneway(node_name(j), node_name(i));
        }
        Fault {
            at: Duration::ZERO,
            kind: Kind::Fast(i),
        }
        .apply(sim, cut);
        Fault {
            at: Duration::ZERO,
            kind: Kind::Lossless(i),
        }
        .apply(sim, cut);
    }
}
