//! Zones with an in-process ring: six nodes in three zones of two (n1 n2 in `a`, n3 n4 in
//! `b`, n5 n6 in `c`). A whole zone goes down: every key written at w=3 before still reads at
//! r=2 and every write at `w=2&pw=2` succeeds, because every key has one home per zone. The
//! zone comes back empty and the ring converges with every key's three copies in three
//! zones.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Http, TestCluster, wait_until};
use hyper::StatusCode;
use ringkv::ring::{NodeId, Ring};

const KEYS: usize = 600;

fn zone_of_index(i: usize) -> &'static str {
    ["a", "b", "c"][i / 2]
}

/// Keys among the test's whose three homes on `ring` include both nodes of zone `a`, so
/// that one copy is left when `a` is down.
fn one_copy_left(ring: &Ring) -> usize {
    (0..KEYS)
        .filter(|k| {
            let homes = ring.preference_list(format!("z/{k}").as_bytes(), 3);
            homes
                .iter()
                .filter(|h| ["n1", "n2"].contains(&&***h))
                .count()
                >= 2
        })
        .count()
}

async fn homes(http: &Http, url: &str, key: &str) -> Vec<(String, String)> {
    let got = http.get(&format!("{url}/cluster/replicas/{key}")).await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    got.json()["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| {
            let s = |f: &str| r[f].as_str().expect(f).to_string();
            (s("id"), s("zone"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_zone_loses_no_quorum_and_the_ring_heals_into_three_zones() {
    let mut c = TestCluster::start_with(6, |cfg| {
        let i: usize = cfg.id[1..].parse::<usize>().expect("n<i>") - 1;
        cfg.zone = zone_of_index(i).to_string();
        cfg.anti_entropy_interval = Duration::from_millis(200);
        cfg.handoff_interval = Duration::from_millis(100);
    })
    .await;
    let http = Http::new();
    // The zones gate opens once every member gossips its support: then the ring has zones.
    wait_until(
        Duration::from_secs(20),
        "zone placement on every node",
        || async {
            c.up()
                .iter()
                .all(|&i| c.node(i).view().ring.zones().len() == 3)
        },
    )
    .await;
    let members = http
        .get(&format!("{}/cluster/members", c.url(0)))
        .await
        .json();
    assert_eq!(members["features"], serde_json::json!(["zones"]));
    let zones: BTreeSet<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones, BTreeSet::from(["a", "b", "c"]));

    // Write at w=3; every key's homes are one per zone.
    for k in 0..KEYS {
        let url = c.url(k % 6);
        let put = http
            .put(&format!("{url}/kv/z/{k}?w=3"), format!("v{k}"))
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "z/{k}: {put:?}");
        if k % 20 == 0 {
            let h = homes(&http, &url, &format!("z/{k}")).await;
            let zones: BTreeSet<&str> = h.iter().map(|(_, z)| z.as_str()).collect();
            assert_eq!(zones.len(), 3, "z/{k}: {h:?}");
        }
    }

    // Zone a goes down, both nodes at once.
    c.kill(0).await;
    c.kill(1).await;
    c.wait_all_alive().await;
    let survivors = c.up();
    let mut unreadable = 0;
    for k in 0..KEYS {
        let url = c.url(survivors[k % survivors.len()]);
        let got = http.get(&format!("{url}/kv/z/{k}?r=2")).await;
        if got.status != StatusCode::OK || got.body.as_ref() != format!("v{k}").as_bytes() {
            unreadable += 1;
            eprintln!("z/{k} at r=2 with zone a down: {got:?}");
        }
    }
    let mut refused = 0;
    let writes = 300;
    for k in 0..writes {
        let url = c.url(survivors[k % survivors.len()]);
        let put = http
            .put(&format!("{url}/kv/p/{k}?w=2&pw=2"), format!("p{k}"))
            .await;
        if put.status != StatusCode::NO_CONTENT {
            refused += 1;
            eprintln!("p/{k} at w=2&pw=2 with zone a down: {put:?}");
        }
    }
    // The same six nodes placed by position alone (before zones), against the ring the
    // cluster placed by.
    let ids: Vec<NodeId> = (1..=6).map(|i| NodeId::from(format!("n{i}"))).collect();
    let before = one_copy_left(&Ring::new(ids, ringkv::ring::DEFAULT_VNODES));
    let with_zones = one_copy_left(&c.node(2).view().ring);
    println!(
        "zone a down: keys left with one copy: before zones {before} of {KEYS}, with zones \
         {with_zones} of {KEYS}; reads at r=2 failed: {unreadable} of {KEYS}; writes at \
         w=2&pw=2 refused: {refused} of {writes}"
    );
    assert!(
        before > 0,
        "the ring without zones loses 2 homes for some keys"
    );
    assert_eq!(with_zones, 0, "with zones every key keeps 2 of its 3 homes");
    assert_eq!(unreadable, 0);
    assert_eq!(refused, 0);

    // Zone a comes back (empty: in memory) and the ring converges: every key on all three of
    // its homes, one per zone.
    c.restart(0).await;
    c.restart(1).await;
    c.wait_all_alive().await;
    let all: Vec<String> = (0..KEYS)
        .map(|k| format!("z/{k}"))
        .chain((0..writes).map(|k| format!("p/{k}")))
        .collect();
    wait_until(
        Duration::from_secs(60),
        "every key on its three homes",
        || async {
            for key in &all {
                let h = homes(&http, &c.url(2), key).await;
                for (id, _) in &h {
                    let i = c.index_of(id);
                    let local = http.get(&format!("{}/admin/local/{key}", c.url(i))).await;
                    if local.status != StatusCode::OK {
                        return false;
                    }
                }
            }
            true
        },
    )
    .await;
    for key in all.iter().step_by(25) {
        let h = homes(&http, &c.url(0), key).await;
        let zones: BTreeSet<&str> = h.iter().map(|(_, z)| z.as_str()).collect();
        assert_eq!(zones.len(), 3, "{key}: {h:?}");
    }
    c.shutdown().await;
}
