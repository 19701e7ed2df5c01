//! In-process tests of how replicas converge after failures: sloppy quorum and hinted handoff.

mod common;

use std::time::Duration;

use common::{Http, TestCluster, wait_until};
use hyper::StatusCode;

async fn fast_handoff(n: usize) -> TestCluster {
    TestCluster::start_with(n, |c| c.handoff_interval = Duration::from_millis(100)).await
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
            .all(|&i| c.node(i).node().hints_pending() == 0)
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
