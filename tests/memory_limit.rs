//! The memory ceiling in a ring (`--max-memory`, `ringkv::memory`): replicas over their limit
//! refuse copies and the coordinator says 507; hints and anti-entropy wait for a full node and
//! resume once it has room; every member's use and limit reach `/cluster/members`.
//!
//! Each node's gauge reads a number the test sets, so "full" is exact and immediate. The
//! uploads a full node refuses (every kind of client, before buffering) are in
//! `tests/oversized_upload.rs`; the real allocator under a memory cgroup in
//! `tests/memory_cgroup.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Http, TestCluster, wait_until};
use hyper::StatusCode;
use ringkv::memory::Gauge;

const LIMIT: u64 = 64 * 1024 * 1024;
const FULL: u64 = LIMIT + 1;
const WAIT: Duration = Duration::from_secs(20);

/// What each node "uses", by index; the test sets them.
struct Usage(Vec<Arc<AtomicU64>>);

impl Usage {
    fn new(n: usize) -> Usage {
        Usage((0..n).map(|_| Arc::new(AtomicU64::new(0))).collect())
    }

    fn set(&self, i: usize, bytes: u64) {
        self.0[i].store(bytes, Ordering::Relaxed);
    }
}

/// `n` nodes with a limit of [`LIMIT`], node `n<i+1>` reading `usage[i]`.
async fn ring(n: usize, usage: &Usage, tweak: impl Fn(&mut ringkv::Config)) -> TestCluster {
    let gauges = usage.0.clone();
    TestCluster::start_with(n, move |c| {
        let i: usize = c.id[1..].parse::<usize>().expect("n<i>") - 1;
        let used = gauges[i].clone();
        c.max_memory = LIMIT;
        c.memory_gauge = Gauge::from_source(Arc::new(move || Some(used.load(Ordering::Relaxed))));
        c.handoff_interval = Duration::from_millis(100);
        c.anti_entropy_interval = Duration::from_millis(200);
        tweak(c);
    })
    .await
}

/// A key whose first home is node `first` (so that node coordinates its writes).
fn key_led_by(c: &TestCluster, first: usize) -> String {
    (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| c.replicas(k.as_bytes())[0] == first)
        .expect("some key")
}

async fn counter(http: &Http, c: &TestCluster, i: usize, name: &str) -> u64 {
    let stats = http.get(&format!("{}/admin/stats", c.url(i))).await.json();
    stats["counters"][name].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_their_limit_refuse_copies_and_the_coordinator_answers_507() {
    let usage = Usage::new(3);
    let c = ring(3, &usage, |_| {}).await;
    let http = Http::new();
    let key = key_led_by(&c, 0);
    let url = format!("{}/kv/{key}", c.url(0));
    // Both other homes full: the coordinator's own copy cannot make W = 2.
    usage.set(1, FULL);
    usage.set(2, FULL);
    let put = http.put(&url, "v1").await;
    assert_eq!(put.status, StatusCode::INSUFFICIENT_STORAGE, "{put:?}");
    let body = put.json();
    assert_eq!(body["kind"], "memory_full", "{body}");
    assert_eq!(body["limit"], LIMIT, "{body}");
    assert!(body["used"].as_u64().is_some_and(|u| u >= FULL), "{body}");
    assert!(counter(&http, &c, 1, "writes_refused_memory").await >= 1);
    // With W = 1 the write needs nobody else: taken.
    let put = http.put(&format!("{url}?w=1"), "v2").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    // A delete is a tombstone, within the full replicas' reserve: it reaches W.
    let del = http.delete(&url).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{del:?}");
    // One home freed: W = 2 is met again, with no restart.
    usage.set(1, LIMIT / 2);
    let put = http.put(&url, "v3").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    // Reads go on through a full node.
    let got = http.get(&format!("{}/kv/{key}", c.url(2))).await;
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"v3"[..]));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_fallback_refuses_hints_and_a_full_home_waits_for_them() {
    // N = 2 on three nodes: each key has one fallback.
    let usage = Usage::new(3);
    let mut c = ring(3, &usage, |cfg| {
        cfg.replicas = 2;
        cfg.read_quorum = 1;
        cfg.write_quorum = 1;
    })
    .await;
    let http = Http::new();
    let key = key_led_by(&c, 0);
    let homes = c.replicas(key.as_bytes());
    let (home, fallback) = (homes[1], 3 - homes[0] - homes[1]);
    c.kill(home).await;
    wait_until(WAIT, "the home is seen down", || {
        let view = c.node(0).view();
        let id = c.id(home);
        async move { !view.is_alive(&id) }
    })
    .await;

    // A full fallback refuses the hint; the write is still taken by W = 1.
    usage.set(fallback, FULL);
    let url = format!("{}/kv/{key}", c.url(0));
    assert_eq!(http.put(&url, "v1").await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.node(fallback).node().replica().hints_pending(), 0);
    assert!(counter(&http, &c, fallback, "writes_refused_memory").await >= 1);

    // With room, the fallback keeps the hint.
    usage.set(fallback, 0);
    assert_eq!(http.put(&url, "v2").await.status, StatusCode::NO_CONTENT);
    assert_eq!(c.node(fallback).node().replica().hints_pending(), 1);

    // The home comes back full: delivery and its own anti-entropy pulls wait, counted.
    usage.set(home, FULL);
    c.restart(home).await;
    wait_until(WAIT, "hint delivery to the full home pauses", || {
        let (http, c) = (http.clone(), &c);
        async move { counter(&http, c, fallback, "copies_paused_memory").await >= 1 }
    })
    .await;
    assert_eq!(c.node(fallback).node().replica().hints_pending(), 1);
    let held = c.node(home).node().store().get(&key.clone().into());
    assert!(held.is_none(), "a full home stored {held:?}");

    // Freed: the hint is delivered, with no restart.
    usage.set(home, 0);
    wait_until(WAIT, "the hint reaches the home", || {
        let c = &c;
        let key = key.clone();
        async move {
            c.node(fallback).node().replica().hints_pending() == 0
                && c.node(home)
                    .node()
                    .store()
                    .get(&key.into())
                    .is_some_and(|vs| {
                        vs.versions()
                            .iter()
                            .any(|v| v.value.as_deref() == Some(&b"v2"[..]))
                    })
        }
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_does_not_fill_a_full_node_and_repairs_it_once_freed() {
    let usage = Usage::new(3);
    let mut c = ring(3, &usage, |_| {}).await;
    let http = Http::new();
    // Node 3 restarts empty and full; the others hold keys it is a home of.
    usage.set(2, FULL);
    c.restart(2).await;
    c.wait_all_alive().await;
    // Keys node 3 does not coordinate (a full coordinator refuses the write itself); with
    // N = 3 it is a home of each.
    let keys: Vec<String> = (0..)
        .map(|i| format!("ae-{i}"))
        .filter(|k| c.replicas(k.as_bytes())[0] != 2)
        .take(20)
        .collect();
    for k in &keys {
        let put = http.put(&format!("{}/kv/{k}?w=2", c.url(0)), "v").await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    }
    wait_until(WAIT, "node 3's anti-entropy pauses", || {
        let (http, c) = (http.clone(), &c);
        async move { counter(&http, c, 2, "copies_paused_memory").await >= 1 }
    })
    .await;
    assert_eq!(c.node(2).node().store().stats().keys, 0);
    usage.set(2, 0);
    let want = keys.len() as u64;
    wait_until(WAIT, "anti-entropy repairs node 3 once it has room", || {
        let c = &c;
        async move { c.node(2).node().store().stats().keys == want }
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_members_use_and_limit_reach_cluster_members() {
    let usage = Usage::new(3);
    for i in 0..3 {
        usage.set(i, (i as u64 + 1) * 10 * 1024 * 1024);
    }
    let c = ring(3, &usage, |_| {}).await;
    let http = Http::new();
    let url = format!("{}/cluster/members", c.url(0));
    wait_until(WAIT, "every member gossips its memory", || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let json = http.get(&url).await.json();
            let members = json["members"].as_array().cloned().unwrap_or_default();
            members.len() == 3
                && members.iter().all(|m| {
                    let i: u64 = m["id"].as_str().unwrap_or("n0")[1..].parse().unwrap_or(0);
                    m["memory"]["used"] == i * 10 * 1024 * 1024 && m["memory"]["limit"] == LIMIT
                })
        }
    })
    .await;
    let stats = http.get(&format!("{}/admin/stats", c.url(1))).await.json();
    assert_eq!(stats["memory"]["used"], 20 * 1024 * 1024, "{stats}");
    assert_eq!(stats["memory"]["limit"], LIMIT, "{stats}");
    c.shutdown().await;
}
