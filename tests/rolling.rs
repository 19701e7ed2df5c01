//! Readiness and rolling restarts, with real `ringkv` processes.
//!
//! - The moment a node's `GET /ready` turns 200, a default PUT through it succeeds.
//! - A rolling restart (SIGTERM one node, start it again, wait for its `/ready`, next node)
//!   costs clients that talk to the nodes that are up not a single error, and loses no
//!   acknowledged write.
//!
//! `RINGKV_READY_LOOPS` and `RINGKV_ROLLING_ROUNDS` run more iterations (the defaults keep
//! `cargo test` short; run them high while changing anything in start-up or shutdown).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::ProcessNode;
use common::{Http, wait_until};
use hyper::StatusCode;

/// How many times the readiness test starts a fresh five-node ring.
fn ready_loops() -> usize {
    env_count("RINGKV_READY_LOOPS", 3)
}

/// How many full rounds (every node restarted once) the rolling restart runs.
fn rolling_rounds() -> usize {
    env_count("RINGKV_ROLLING_ROUNDS", 1)
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How long a ring may take to get ready (generous: CI machines are slow and shared).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Five processes, each seeded with the gossip addresses of the nodes started before it
/// (the first with none), the way a deployment brings a ring up.
async fn start_ring(tag: &str) -> Vec<ProcessNode> {
    let mut nodes: Vec<ProcessNode> = Vec::new();
    for i in 0..5 {
        let seeds: Vec<SocketAddr> = nodes.iter().map(|n| n.gossip).collect();
        nodes.push(ProcessNode::start(&format!("{tag}{}", i + 1), &seeds).await);
    }
    nodes
}

async fn is_ready(http: &Http, node: SocketAddr) -> bool {
    http.try_get(&format!("http://{node}/ready"))
        .await
        .is_ok_and(|r| r.status == StatusCode::OK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_says_ready_takes_a_default_put_at_once() {
    let loops = ready_loops();
    let mut ready_after = Vec::new();
    for round in 0..loops {
        let started = Instant::now();
        let nodes = start_ring(&format!("r{round}n")).await;
        let http = Http::new();
        // Every node is watched from the start; the moment one says ready, a PUT through it
        // must succeed.
        let checks = nodes.iter().map(|n| {
            let (http, addr, id) = (http.clone(), n.http, n.id.clone());
            async move {
                let deadline = Instant::now() + READY_TIMEOUT;
                while !is_ready(&http, addr).await {
                    assert!(
                        Instant::now() < deadline,
                        "{id} not ready in {READY_TIMEOUT:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let took = started.elapsed();
                let put = http
                    .put(&format!("http://{addr}/kv/ready-{id}"), id.clone())
                    .await;
                assert_eq!(
                    put.status,
                    StatusCode::NO_CONTENT,
                    "round {round}: {id} said ready, but a PUT through it failed: {put:?}"
                );
                took
            }
        });
        let times = futures_util::future::join_all(checks).await;
        ready_after.extend(times);
        // Every write is readable through every node.
        for n in &nodes {
            for other in &nodes {
                let got = http
                    .get(&format!("http://{}/kv/ready-{}", n.http, other.id))
                    .await;
                assert_eq!(got.status, StatusCode::OK, "{got:?}");
                assert_eq!(got.body.as_ref(), other.id.as_bytes());
            }
        }
    }
    ready_after.sort();
    println!(
        "{loops} rings, {} nodes: every PUT right after /ready succeeded; ready after {:?} (median) .. {:?} (max) from the first start",
        ready_after.len(),
        ready_after[ready_after.len() / 2],
        ready_after[ready_after.len() - 1]
    );
}

/// What the writers share: the URLs of the nodes that are up (None while one restarts), the
/// acknowledged writes and the errors seen.
struct Shared {
    up: Mutex<Vec<Option<SocketAddr>>>,
    acked: Mutex<BTreeMap<String, String>>,
    errors: Mutex<Vec<String>>,
    ops: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    fn pick(&self, n: usize) -> Option<SocketAddr> {
        let up: Vec<SocketAddr> = self.up.lock().unwrap().iter().flatten().copied().collect();
        (!up.is_empty()).then(|| up[n % up.len()])
    }
}

/// One writer: PUT a fresh key through one up node, then GET it through another, until told
/// to stop. Every failure is recorded.
async fn writer(w: usize, shared: Arc<Shared>) {
    let http = Http::new();
    let mut seq = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        seq += 1;
        let key = format!("w{w}-{seq}");
        let value = format!("v{w}-{seq}");
        let Some(node) = shared.pick(w + seq) else {
            continue;
        };
        let put = http
            .try_put(&format!("http://{node}/kv/{key}"), value.clone())
            .await;
        match put {
            Ok(r) if r.status == StatusCode::NO_CONTENT => {
                shared
                    .acked
                    .lock()
                    .unwrap()
                    .insert(key.clone(), value.clone());
            }
            other => {
                shared
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("PUT {key} via {node}: {other:?}"));
                continue;
            }
        }
        let Some(node) = shared.pick(w + seq + 1) else {
            continue;
        };
        match http.try_get(&format!("http://{node}/kv/{key}")).await {
            Ok(r) if r.status == StatusCode::OK && r.body.as_ref() == value.as_bytes() => {}
            other => shared
                .errors
                .lock()
                .unwrap()
                .push(format!("GET {key} via {node} after its PUT: {other:?}")),
        }
        shared.ops.fetch_add(2, Ordering::Relaxed);
    }
}

/// Sends SIGTERM and waits for the process to exit 0.
async fn stop_gracefully(node: &mut ProcessNode) {
    let mut guard = node.child.take().expect("running");
    let pid = guard.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(sent.expect("kill runs").success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "{} did not exit", node.id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "{} exits 0 on SIGTERM", node.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_costs_clients_no_error_and_loses_no_write() {
    let mut nodes = start_ring("roll").await;
    let http = Http::new();
    wait_until(READY_TIMEOUT, "the ring to get ready", || async {
        for n in &nodes {
            if !is_ready(&http, n.http).await {
                return false;
            }
        }
        true
    })
    .await;
    let shared = Arc::new(Shared {
        up: Mutex::new(nodes.iter().map(|n| Some(n.http)).collect()),
        acked: Mutex::default(),
        errors: Mutex::default(),
        ops: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(w, shared.clone())))
        .collect();
    let rounds = rolling_rounds();
    let began = Instant::now();
    for round in 0..rounds {
        for i in 0..nodes.len() {
            // Clients stop choosing the node before it is told to stop, as a load balancer
            // whose readiness probe failed would.
            shared.up.lock().unwrap()[i] = None;
            stop_gracefully(&mut nodes[i]).await;
            let seeds: Vec<SocketAddr> = nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, n)| n.gossip)
                .collect();
            let id = nodes[i].id.clone();
            nodes[i] = ProcessNode::start(&id, &seeds).await;
            let addr = nodes[i].http;
            wait_until(READY_TIMEOUT, &format!("round {round}: {id} ready"), || {
                is_ready(&http, addr)
            })
            .await;
            shared.up.lock().unwrap()[i] = Some(addr);
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let errors = shared.errors.lock().unwrap().clone();
    let ops = shared.ops.load(Ordering::Relaxed);
    let acked = shared.acked.lock().unwrap().clone();
    println!(
        "{rounds} rolling round(s) of 5 restarts in {:?}: {ops} client requests, {} errors, {} acknowledged writes",
        began.elapsed(),
        errors.len(),
        acked.len()
    );
    assert!(
        errors.is_empty(),
        "{} client errors during the rolling restart, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        acked.len() > 50,
        "the writers wrote too little to prove anything: {}",
        acked.len()
    );
    // Every acknowledged write is still there: each key read once, through the nodes in turn,
    // eight readers at a time.
    let urls: Vec<SocketAddr> = nodes.iter().map(|n| n.http).collect();
    let acked: Vec<(String, String)> = acked.into_iter().collect();
    let readers = acked.chunks(acked.len().div_ceil(8)).map(|chunk| {
        let (http, urls) = (http.clone(), urls.clone());
        async move {
            for (i, (key, value)) in chunk.iter().enumerate() {
                let node = urls[i % urls.len()];
                let got = http.get(&format!("http://{node}/kv/{key}")).await;
                assert_eq!(got.status, StatusCode::OK, "{key} via {node}: {got:?}");
                assert_eq!(got.body.as_ref(), value.as_bytes(), "{key} via {node}");
            }
        }
    });
    futures_util::future::join_all(readers).await;
}
