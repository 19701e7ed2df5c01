//! In-process tests of how replicas converge after failures: sloppy quorum and hinted handoff.

mod common;

use std::time::Duration;

use common::{Http, TestCluster, wait_until};
use hyper::StatusCode;

async fn fast_handoff(n: usize) -> TestCluster {
    TestCluster::start_with(n, fast).await
}

fn fast(c: &mut ringkv::Config) {
    c.handoff_interval = Duration::from_millis(100);
    c.anti_entropy_interval = Duration::from_millis(100);
}

/// Writes `count` keys `{prefix}-{i}` with value `v-{prefix}-{i}` through rotating nodes.
async fn write_keys(c: &TestCluster, http: &Http, prefix: &str, count: usize) -> Vec<String> {
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let up = c.up();
    for (i, k) in keys.iter().enumerate() {
        let url = format!("{}/kv/{k}?w=2", c.url(up[i % up.len()]));
        let put = http.put(&url, format!("v-{k}")).await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{k}: {:?}", put.body);
    }
    keys
}

/// True if node `i` itself stores `value` (and nothing else) for `key`.
fn holds(c: &TestCluster, i: usize, key: &str, value: &str) -> bool {
    let key = bytes::Bytes::from(key.to_string());
    c.node(i).node().store().get(&key).is_some_and(|vs| {
        let values: Vec<_> = vs.live_values().collect();
        values.len() == 1 && values[0] == value.as_bytes()
    })
}

/// Waits until every key is stored by exactly its home replicas: no loss, no extra copy.
async fn wait_for_exact_placement(c: &TestCluster, keys: &[String]) {
    wait_until(
        Duration::from_secs(60),
        "keys live on exactly their homes",
        || async {
            keys.iter().all(|k| {
                let mut homes = c.replicas(k.as_bytes());
                homes.sort();
                holders(c, k) == homes
            })
        },
    )
    .await;
}

/// Indices of the up nodes that store anything for `key`.
fn holders(c: &TestCluster, key: &str) -> Vec<usize> {
    let key = bytes::Bytes::from(key.to_string());
    let mut out: Vec<usize> = c
        .up()
        .into_iter()
        .filter(|&i| c.node(i).node().store().get(&key).is_some())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_two_dead_homes_and_hints_reach_them_on_return() {
    let mut c = fast_handoff(5).await;
    let http = Http::new();
    let key = "hinted";
    let homes = c.replicas(key.as_bytes());
    let (alive_home, dead) = (homes[0], [homes[1], homes[2]]);
    for d in dead {
        c.kill(d).await;
    }
    c.wait_all_alive().await;

    // w=2 is met by the live home plus a fallback holding a hinted copy.
    let put = http
        .put(&format!("{}/kv/{key}?w=2", c.url(alive_home)), "sloppy")
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.body);
    // A read at r=2 is answered by the live home and a fallback.
    let got = http
        .get(&format!("{}/kv/{key}?r=2", c.url(alive_home)))
        .await;
    assert_eq!(
        (got.status, got.body.as_ref()),
        (StatusCode::OK, b"sloppy".as_ref())
    );
    // pw=2 demands two home replicas: only one is alive.
    let strict = http
        .put(
            &format!("{}/kv/{key}?w=2&pw=2", c.url(alive_home)),
            "strict",
        )
        .await;
    assert_eq!(strict.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(strict.json()["required"], 2);
    let hinted: u64 = c
        .up()
        .iter()
        .map(|&i| c.node(i).node().stats().snapshot().hints_stored)
        .sum();
    assert!(hinted >= 2, "fallbacks stored hints: {hinted}");

    // The homes come back empty; handoff gives them the value with no client read.
    for d in dead {
        c.restart(d).await;
    }
    c.wait_all_alive().await;
    for d in dead {
        let url = format!("{}/admin/local/{key}", c.url(d));
        wait_until(
            Duration::from_secs(20),
            "hint delivered to the home",
            || async {
                let local = http.get(&url).await;
                local.status == StatusCode::OK
                    && local.json()["versions"]
                        .as_array()
                        .is_some_and(|vs| !vs.is_empty())
            },
        )
        .await;
    }
    // Delivered hints are dropped from the fallbacks.
    wait_until(Duration::from_secs(20), "hints drained", || async {
        c.up()
            .iter()
            .all(|&i| c.node(i).node().replica().hints_pending() == 0)
    })
    .await;
    let delivered: u64 = c
        .up()
        .iter()
        .map(|&i| c.node(i).node().stats().snapshot().hints_delivered)
        .sum();
    assert!(delivered >= 2);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_fails_when_no_home_replica_is_alive() {
    let mut c = fast_handoff(5).await;
    let http = Http::new();
    let key = "no-home";
    let homes = c.replicas(key.as_bytes());
    for h in &homes {
        c.kill(*h).await;
    }
    c.wait_all_alive().await;
    let via = (0..5).find(|i| !homes.contains(i)).unwrap();
    let put = http.put(&format!("{}/kv/{key}?w=1", c.url(via)), "x").await;
    assert_eq!(put.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(put.json()["error"].as_str().unwrap().contains("quorum"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_empty_refills_by_anti_entropy_alone() {
    let mut c = fast_handoff(5).await;
    let http = Http::new();
    let keys = write_keys(&c, &http, "refill", 1000).await;
    let victim = 2;
    c.restart(victim).await;
    c.wait_all_alive().await;
    let mine: Vec<&String> = keys
        .iter()
        .filter(|k| c.replicas(k.as_bytes()).contains(&victim))
        .collect();
    assert!(mine.len() > 300, "{} keys on the victim", mine.len());
    // No client reads: only anti-entropy can bring these back.
    wait_until(
        Duration::from_secs(30),
        "restarted node refilled",
        || async { mine.iter().all(|k| holds(&c, victim, k, &format!("v-{k}"))) },
    )
    .await;
    // Anti-entropy did the work (hints too, if a loaded machine made a node look dead while
    // the keys were written).
    let moved: u64 = c
        .up()
        .iter()
        .map(|&i| {
            let s = c.node(i).node().stats().snapshot();
            s.ae_keys_repaired + s.hints_delivered
        })
        .sum();
    assert!(moved >= mine.len() as u64, "{moved} keys moved");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_replicas_exchange_almost_nothing() {
    let c = fast_handoff(3).await;
    let http = Http::new();
    let keys = write_keys(&c, &http, "same", 300).await;
    // Let every replica get every write, then measure a stretch of rounds.
    wait_until(
        Duration::from_secs(20),
        "all replicas hold every key",
        || async {
            keys.iter()
                .all(|k| (0..3).all(|i| holds(&c, i, k, &format!("v-{k}"))))
        },
    )
    .await;
    let snapshot = |c: &TestCluster| -> (u64, u64) {
        (0..3)
            .map(|i| c.node(i).node().stats().snapshot())
            .fold((0, 0), |(r, b), s| {
                (r + s.ae_rounds, b + s.ae_bytes_sent + s.ae_bytes_received)
            })
    };
    let (r0, b0) = snapshot(&c);
    wait_until(Duration::from_secs(20), "ten more rounds", || async {
        snapshot(&c).0 >= r0 + 10
    })
    .await;
    let (r1, b1) = snapshot(&c);
    let per_round = (b1 - b0) / (r1 - r0);
    assert!(
        per_round < 200,
        "{per_round} bytes per round between identical replicas"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_writes_gets_them_without_reads() {
    let c = fast_handoff(3).await;
    let http = Http::new();
    // Node 2 stays alive in gossip, but no RPC passes between it and the others, either way
    // (so neither writes nor its own anti-entropy rounds reach it).
    let set_cut = |blocked: bool| {
        for i in 0..2 {
            c.block_rpc(i, c.node(2).rpc_addr(), blocked);
            c.block_rpc(2, c.node(i).rpc_addr(), blocked);
        }
    };
    set_cut(true);
    let keys: Vec<String> = (0..200).map(|i| format!("missed-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let coord = c.replicas(k.as_bytes())[0];
        let via = if coord == 2 { i % 2 } else { coord };
        let put = http
            .put(&format!("{}/kv/{k}?w=2", c.url(via)), format!("v-{k}"))
            .await;
        // Keys whose first replica is node 2 are coordinated there; the others miss it.
        assert!(put.status.is_success() || put.status == StatusCode::SERVICE_UNAVAILABLE);
    }
    let missing: Vec<&String> = keys.iter().filter(|k| holders(&c, k).len() == 2).collect();
    assert!(!missing.is_empty());
    set_cut(false);
    wait_until(
        Duration::from_secs(20),
        "anti-entropy fills the gaps",
        || async { missing.iter().all(|k| holds(&c, 2, k, &format!("v-{k}"))) },
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_its_share_and_others_drop_theirs() {
    let mut c = fast_handoff(5).await;
    let http = Http::new();
    let keys = write_keys(&c, &http, "join", 1000).await;
    let new = c.add_node().await;
    c.wait_all_alive().await;
    // The new node owns some keys now; once converged, each key lives on exactly its homes.
    wait_for_exact_placement(&c, &keys).await;
    let on_new = keys
        .iter()
        .filter(|k| holds(&c, new, k, &format!("v-{k}")))
        .count();
    assert!(on_new > 200, "the new node holds {on_new} keys");
    for (i, k) in keys.iter().enumerate().step_by(17) {
        let got = http.get(&format!("{}/kv/{k}?r=3", c.url(i % 6))).await;
        assert_eq!(got.body, format!("v-{k}"));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_made_while_a_replica_was_away_never_comes_back() {
    let c = TestCluster::start_with(5, |cfg| {
        fast(cfg);
        cfg.tombstone_grace = Duration::from_millis(500);
    })
    .await;
    let http = Http::new();
    let key = "zombie";
    let homes = c.replicas(key.as_bytes());
    let put = http
        .put(&format!("{}/kv/{key}?w=3", c.url(homes[0])), "brains")
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    // Cut the last home off from everyone, delete, and outwait the grace period.
    let away = homes[2];
    let rest: Vec<usize> = (0..5).filter(|i| *i != away).collect();
    c.partition(&[away], &rest).await;
    wait_until(
        Duration::from_secs(10),
        "the others see it dead",
        || async {
            rest.iter()
                .all(|&i| !c.node(i).view().is_alive(&c.id(away)))
        },
    )
    .await;
    let del = http
        .delete(&format!("{}/kv/{key}?w=2", c.url(homes[0])))
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    // Outlive the grace period, and let several GC passes run on the coordinator.
    let first = c.node(homes[0]).node().clone();
    let rounds = first.stats().snapshot().ae_rounds;
    wait_until(Duration::from_secs(10), "grace passed, GC ran", || async {
        !first
            .store()
            .old_tombstones(Duration::from_millis(500), 10)
            .is_empty()
            && first.stats().snapshot().ae_rounds >= rounds + 5
    })
    .await;
    // The tombstone cannot be purged while a home still holds the old value.
    assert!(first.store().get(&bytes::Bytes::from(key)).is_some());
    assert_eq!(first.stats().snapshot().tombstones_purged, 0);
    c.heal().await;
    c.wait_all_alive().await;
    // After the heal every home first gets the tombstone, then all purge it.
    wait_until(
        Duration::from_secs(30),
        "tombstone everywhere, then purged",
        || async { holders(&c, key).is_empty() },
    )
    .await;
    for i in 0..5 {
        let got = http.get(&format!("{}/kv/{key}?r=3", c.url(i))).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "via node {i}");
    }
    let purged: u64 = (0..5)
        .map(|i| c.node(i).node().stats().snapshot().tombstones_purged)
        .sum();
    assert!(purged >= 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_hands_everything_over_before_it_exits() {
    let mut c = TestCluster::start_with(6, fast).await;
    let http = Http::new();
    let keys = write_keys(&c, &http, "leave", 1000).await;
    let leaver = 5;
    let held = c.node(leaver).node().store().stats().keys;
    assert!(held > 200, "the leaver holds {held} keys");
    let resp = http
        .send(
            hyper::Method::POST,
            &format!("{}/cluster/leave", c.url(leaver)),
            "",
            &[],
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
    tokio::time::timeout(Duration::from_secs(60), c.node(leaver).left())
        .await
        .expect("the leaver hands over within 60 s");
    assert_eq!(c.node(leaver).node().store().stats().keys, 0);
    c.kill(leaver).await;
    // The ring no longer has the leaver; every key lives on exactly its new homes.
    assert!(
        !c.node(0)
            .view()
            .ring
            .nodes()
            .iter()
            .any(|id| **id == *c.id(leaver))
    );
    wait_for_exact_placement(&c, &keys).await;
    for (i, k) in keys.iter().enumerate().step_by(13) {
        let got = http.get(&format!("{}/kv/{k}?r=3", c.url(i % 5))).await;
        assert_eq!(got.body, format!("v-{k}"));
    }
    c.shutdown().await;
}

/// The cost of one anti-entropy round between two replicas that hold the same keys:
/// identical, then with 1% of the keys changed on one side. `RINGKV_AE_KEYS` sets the key
/// count (the closing-note figure uses 1,000,000 with `--release`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_costs_bytes_proportional_to_the_difference() {
    use ringkv::version::{Actor, VersionSet};
    let keys: usize = std::env::var("RINGKV_AE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // Three nodes with N=3: each holds every key. Rounds run only when the test says so.
    let c = TestCluster::start_with(3, |cfg| {
        cfg.anti_entropy_interval = Duration::from_secs(3600)
    })
    .await;
    let (a, b) = (c.node(0).node().clone(), c.node(1).node().clone());
    wait_until(
        Duration::from_secs(10),
        "trees built for the ring",
        || async {
            (0..3).all(|i| {
                c.node(i)
                    .node()
                    .anti_entropy()
                    .segments()
                    .ring
                    .nodes()
                    .len()
                    == 3
            })
        },
    )
    .await;
    let writer = Actor::new("n1", 1);
    for i in 0..keys {
        let key = bytes::Bytes::from(format!("k{i:015}"));
        let mut vs = VersionSet::new();
        vs.write(&writer, None, Some(bytes::Bytes::from(vec![b'v'; 100])));
        a.store().merge(&key, &vs);
        b.store().merge(&key, &vs);
    }
    let cost = |n: &ringkv::Node| {
        let s = n.stats().snapshot();
        (s.ae_bytes_sent + s.ae_bytes_received, s.ae_keys_repaired)
    };
    let (bytes0, _) = cost(&a);
    ringkv::antientropy::exchange_once(a.anti_entropy(), "n2")
        .await
        .unwrap();
    let (bytes1, repaired1) = cost(&a);
    let identical = bytes1 - bytes0;
    // Change 1% of the keys on b only.
    let changed = keys / 100;
    let other = Actor::new("n2", 1);
    for i in (0..keys).step_by(100) {
        let key = bytes::Bytes::from(format!("k{i:015}"));
        b.store().write(
            &key,
            &other,
            None,
            Some(bytes::Bytes::from(vec![b'w'; 100])),
        );
    }
    ringkv::antientropy::exchange_once(a.anti_entropy(), "n2")
        .await
        .unwrap();
    let (bytes2, repaired2) = cost(&a);
    let differing = bytes2 - bytes1;
    println!(
        "anti-entropy round, {keys} keys per replica: identical {identical} bytes; \
         {changed} keys differ: {differing} bytes, {} keys repaired",
        repaired2 - repaired1
    );
    assert!(identical < 100, "identical replicas: {identical} bytes");
    // Each changed key moves once each way at most: our stale copy out, their newer one in.
    let moved = repaired2 - repaired1;
    assert!(
        (changed as u64..=2 * changed as u64).contains(&moved),
        "{moved} keys moved for {changed} changed"
    );
    // Bytes grow with the difference (each changed key costs ~200 B of versions plus its
    // share of hashes and leaf listings), not with the key count.
    assert!(
        differing < changed as u64 * 2_000,
        "{differing} bytes for {changed} keys"
    );
    // And the two replicas now agree.
    ringkv::antientropy::exchange_once(a.anti_entropy(), "n2")
        .await
        .unwrap();
    let (bytes3, _) = cost(&a);
    assert!(bytes3 - bytes2 < 100);
    c.shutdown().await;
}
