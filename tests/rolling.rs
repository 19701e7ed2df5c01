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

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Http;
use common::process::ProcessNode;
use common::rolling::{Clients, READY_TIMEOUT, all_ready, check, is_ready, replace};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_costs_clients_no_error_and_loses_no_write() {
    let mut nodes = start_ring("roll").await;
    let http = Http::new();
    all_ready(&http, &nodes).await;
    let clients = Clients::start(4, &nodes);
    let rounds = rolling_rounds();
    let began = Instant::now();
    for _ in 0..rounds {
        for i in 0..nodes.len() {
            replace(&mut nodes, i, &clients, |id, seeds| async move {
                ProcessNode::start(&id, &seeds).await
            })
            .await;
        }
    }
    let outcome = clients.stop().await;
    println!(
        "{rounds} rolling round(s) of 5 restarts in {:?}: {} client requests, {} errors, {} acknowledged writes",
        began.elapsed(),
        outcome.requests,
        outcome.errors.len(),
        outcome.acked.len()
    );
    check(&outcome, &nodes).await;
}
