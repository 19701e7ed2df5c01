//! In-process cluster tests of the core contract: CRUD through every node, siblings and their
//! resolution, the sibling_explosion and kv679 scenarios, quorums with dead replicas, and
//! concurrency.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Http, TestCluster, wait_until};
use hyper::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_through_every_node() {
    let c = TestCluster::start(5).await;
    let http = Http::new();
    for writer in 0..5 {
        let key = format!("crud-{writer}");
        let value = format!("value from n{}", writer + 1);
        let put = http
            .put(&format!("{}/kv/{key}", c.url(writer)), value.clone())
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
        assert!(put.context().is_some(), "a PUT returns the new context");
        for reader in 0..5 {
            let got = http.get(&format!("{}/kv/{key}", c.url(reader))).await;
            assert_eq!(got.status, StatusCode::OK, "read via n{}", reader + 1);
            assert_eq!(got.body, value.as_bytes());
            assert!(got.context().is_some());
        }
        let del = http
            .delete(&format!("{}/kv/{key}", c.url((writer + 2) % 5)))
            .await;
        assert_eq!(del.status, StatusCode::NO_CONTENT);
        for reader in 0..5 {
            let got = http.get(&format!("{}/kv/{key}", c.url(reader))).await;
            assert_eq!(got.status, StatusCode::NOT_FOUND);
            assert!(got.context().is_some(), "a tombstone's context is returned");
            assert!(got.json()["error"].is_string());
        }
    }
    // A key never written: 404 and no context.
    let none = http.get(&format!("{}/kv/never-written", c.url(0))).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert!(none.context().is_none());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_and_odd_keys() {
    let c = TestCluster::start(3).await;
    let http = Http::new();
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let long_key = "k".repeat(1024);
    let keys = [
        ("a/b/c", "a/b/c".as_bytes().to_vec()),
        ("with%20space", b"with space".to_vec()),
        ("%00%FF%2F%25", vec![0x00, 0xff, b'/', b'%']),
        ("caf%C3%A9", "café".as_bytes().to_vec()),
        (long_key.as_str(), long_key.as_bytes().to_vec()),
    ];
    for (i, (raw, _decoded)) in keys.iter().enumerate() {
        let put = http
            .put(&format!("{}/kv/{raw}", c.url(i % 3)), binary.clone())
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "key {raw}");
        let got = http.get(&format!("{}/kv/{raw}", c.url((i + 1) % 3))).await;
        assert_eq!(got.status, StatusCode::OK, "key {raw}");
        assert_eq!(got.body.as_ref(), binary.as_slice());
    }
    // The decoded key is what is stored: %2F and / name different keys, "a/b/c" is one key.
    let via_encoded = http.get(&format!("{}/kv/a%2Fb%2Fc", c.url(0))).await;
    assert_eq!(
        via_encoded.status,
        StatusCode::OK,
        "a%2Fb%2Fc decodes to a/b/c"
    );
    // Empty values are values.
    let put = http.put(&format!("{}/kv/empty", c.url(0)), "").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let got = http.get(&format!("{}/kv/empty", c.url(1))).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_context_free_writes_through_rotating_nodes_leave_one_value() {
    let c = TestCluster::start(5).await;
    let http = Http::new();
    for i in 0..25 {
        let put = http
            .put(&format!("{}/kv/rotating", c.url(i % 5)), format!("v{i}"))
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT);
    }
    for reader in 0..5 {
        let got = http
            .get(&format!("{}/kv/rotating?r=3", c.url(reader)))
            .await;
        assert_eq!(got.status, StatusCode::OK, "no siblings: {:?}", got.body);
        assert_eq!(got.body, "v24");
    }
    // Every home replica holds exactly one version.
    for r in c.replicas(b"rotating") {
        let url = format!("{}/admin/local/rotating", c.url(r));
        wait_until(
            Duration::from_secs(5),
            "replica to hold one version",
            || async {
                let local = http.get(&url).await;
                local.status == StatusCode::OK
                    && local.json()["versions"].as_array().map(|a| a.len()) == Some(1)
            },
        )
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siblings_from_one_context_and_their_resolution() {
    let c = TestCluster::start(5).await;
    let http = Http::new();
    let url = |i: usize| format!("{}/kv/sib", c.url(i));
    let first = http.put(&url(0), "base").await;
    let ctx = first.context().unwrap();
    // Two writers both start from the same context.
    assert_eq!(
        http.put_ctx(&url(1), "left", &ctx).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        http.put_ctx(&url(2), "right", &ctx).await.status,
        StatusCode::NO_CONTENT
    );
    let got = http.get(&url(3)).await;
    assert_eq!(got.status, StatusCode::MULTIPLE_CHOICES, "{:?}", got.body);
    assert_eq!(got.siblings(), vec![b"left".to_vec(), b"right".to_vec()]);
    let ctx300 = got.json()["context"].as_str().unwrap().to_string();
    assert_eq!(got.context().as_deref(), Some(ctx300.as_str()));
    // Writing back with the 300's context resolves them.
    assert_eq!(
        http.put_ctx(&url(4), "merged", &ctx300).await.status,
        StatusCode::NO_CONTENT
    );
    for i in 0..5 {
        let got = http.get(&format!("{}?r=3", url(i))).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, "merged");
    }
    // Accept: application/json gives the JSON shape with one sibling.
    let got = http
        .send(Method::GET, &url(0), "", &[("accept", "application/json")])
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.siblings(), vec![b"merged".to_vec()]);
    assert!(got.json()["context"].is_string());
    c.shutdown().await;
}

/// riak_test's sibling_explosion: two clients that each write with the context returned by
/// their own previous write never see more than 2 siblings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sibling_explosion_is_bounded_by_writers() {
    let c = TestCluster::start(5).await;
    let http = Http::new();
    let mut ctx: [Option<String>; 2] = [None, None];
    let mut max_seen = 0;
    for round in 0..60 {
        let client = round % 2;
        let via = (round * 3) % 5;
        let url = format!("{}/kv/explode", c.url(via));
        let value = format!("c{client}-{round}");
        let put = match &ctx[client] {
            Some(cx) => http.put_ctx(&url, value, cx).await,
            None => http.put(&url, value).await,
        };
        assert_eq!(put.status, StatusCode::NO_CONTENT);
        ctx[client] = put.context();
        let got = http
            .send(
                Method::GET,
                &format!("{}/kv/explode", c.url((via + 1) % 5)),
                "",
                &[("accept", "application/json")],
            )
            .await;
        let n = got.siblings().len();
        max_seen = max_seen.max(n);
        assert!(n <= 2, "round {round}: {n} siblings");
        // The context a client carries stays small instead of growing with every round.
        assert!(ctx[client].as_ref().unwrap().len() < 200);
    }
    assert_eq!(max_seen, 2, "the scenario does create concurrent siblings");
    c.shutdown().await;
}

/// Riak's kv679: a coordinator restarted empty must not lose the first write it coordinates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_empty_coordinator_does_not_lose_its_first_write() {
    let mut c = TestCluster::start(5).await;
    let http = Http::new();
    let key = "kv679";
    let coordinator = c.replicas(key.as_bytes())[0];
    for i in 0..3 {
        let put = http
            .put(
                &format!("{}/kv/{key}?w=3", c.url(coordinator)),
                format!("old{i}"),
            )
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT);
    }
    c.restart(coordinator).await;
    c.wait_all_alive().await;
    // The restarted node is the key's first live replica again, so it coordinates.
    let put = http
        .put(&format!("{}/kv/{key}?w=3", c.url(coordinator)), "new")
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.body);
    for reader in 0..5 {
        let got = http
            .send(
                Method::GET,
                &format!("{}/kv/{key}?r=3", c.url(reader)),
                "",
                &[("accept", "application/json")],
            )
            .await;
        assert!(got.status == StatusCode::OK || got.status == StatusCode::MULTIPLE_CHOICES);
        assert!(
            got.siblings().contains(&b"new".to_vec()),
            "the acknowledged write survives: {:?}",
            got.body
        );
    }
    // A write that carries a read context supersedes both.
    let got = http.get(&format!("{}/kv/{key}?r=3", c.url(1))).await;
    let ctx = got.context().unwrap();
    http.put_ctx(&format!("{}/kv/{key}", c.url(2)), "final", &ctx)
        .await;
    let got = http.get(&format!("{}/kv/{key}?r=3", c.url(3))).await;
    assert_eq!(
        (got.status, got.body.as_ref()),
        (StatusCode::OK, b"final".as_ref())
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_of_three_down_quorums_of_two_still_work() {
    let mut c = TestCluster::start(3).await;
    let http = Http::new();
    let key = "one-down";
    let victim = c.replicas(key.as_bytes())[0];
    c.kill(victim).await;
    c.wait_all_alive().await;
    let alive = (victim + 1) % 3;
    let put = http
        .put(&format!("{}/kv/{key}?w=2", c.url(alive)), "still")
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let got = http.get(&format!("{}/kv/{key}?r=2", c.url(alive))).await;
    assert_eq!(
        (got.status, got.body.as_ref()),
        (StatusCode::OK, b"still".as_ref())
    );
    // w=3 and r=3 cannot be met: 503 with the counts.
    let put = http
        .put(&format!("{}/kv/{key}?w=3", c.url(alive)), "nope")
        .await;
    assert_eq!(put.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(put.json()["required"], 3);
    assert_eq!(put.json()["replied"], 2);
    let got = http.get(&format!("{}/kv/{key}?r=3", c.url(alive))).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.json()["required"], 3);
    assert_eq!(got.json()["replied"], 2);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_five_down_every_key_readable_at_r1() {
    let mut c = TestCluster::start(5).await;
    let http = Http::new();
    let keys: Vec<String> = (0..150).map(|i| format!("k2d-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let put = http
            .put(&format!("{}/kv/{k}?w=3", c.url(i % 5)), format!("v-{k}"))
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT);
    }
    c.kill(1).await;
    c.kill(3).await;
    c.wait_all_alive().await;
    for (i, k) in keys.iter().enumerate() {
        let via = [0, 2, 4][i % 3];
        let got = http.get(&format!("{}/kv/{k}?r=1", c.url(via))).await;
        assert_eq!(got.status, StatusCode::OK, "{k}");
        assert_eq!(got.body, format!("v-{k}"));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_clients_lose_nothing() {
    let c = TestCluster::start(5).await;
    let urls: Vec<String> = (0..5).map(|i| c.url(i)).collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for client in 0..16 {
        let urls = urls.clone();
        tasks.push(tokio::spawn(async move {
            let http = Http::new();
            let mut last: HashMap<String, String> = HashMap::new();
            let mut n = 0usize;
            while Instant::now() < deadline {
                // Each client owns 10 keys, and all clients share 4 hot keys.
                let key = if n.is_multiple_of(5) {
                    format!("hot-{}", n % 4)
                } else {
                    format!("c{client}-{}", n % 10)
                };
                let value = format!("c{client}-n{n}");
                let url = format!("{}/kv/{key}", urls[(client + n) % urls.len()]);
                let put = http.put(&url, value.clone()).await;
                assert_eq!(
                    put.status,
                    StatusCode::NO_CONTENT,
                    "client {client}: {put:?}"
                );
                if !key.starts_with("hot-") {
                    last.insert(key, value);
                }
                n += 1;
            }
            (last, n)
        }));
    }
    let http = Http::new();
    let mut total = 0;
    for t in tasks {
        let (last, n) = t.await.unwrap();
        total += n;
        for (key, value) in last {
            let got = http.get(&format!("{}/kv/{key}", urls[0])).await;
            assert_eq!(got.status, StatusCode::OK, "{key}");
            assert_eq!(got.body, value, "{key}: last acknowledged write");
        }
    }
    assert!(total > 100, "clients made progress: {total} writes");
    // Hot keys written by many clients at once: every value is a write some client made,
    // and concurrent blind writes through one coordinator never pile up siblings.
    for h in 0..4 {
        let got = http
            .send(
                Method::GET,
                &format!("{}/kv/hot-{h}", urls[1]),
                "",
                &[("accept", "application/json")],
            )
            .await;
        assert_eq!(got.status, StatusCode::OK, "hot-{h}: {:?}", got.body);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_replicas_endpoints() {
    let mut c = TestCluster::start(5).await;
    let http = Http::new();
    let got = http.get(&format!("{}/cluster/members", c.url(0))).await;
    assert_eq!(got.status, StatusCode::OK);
    let members = got.json()["members"].as_array().unwrap().clone();
    assert_eq!(members.len(), 5);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m["id"], c.id(i));
        assert_eq!(m["status"], "alive");
        assert_eq!(m["http"], c.node(i).http_addr().to_string());
        assert_eq!(m["rpc"], c.node(i).rpc_addr().to_string());
        assert!(m["generation"].as_u64().unwrap() > 0);
    }
    let got = http
        .get(&format!("{}/cluster/replicas/some/key", c.url(2)))
        .await;
    let replicas: Vec<String> = got.json()["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert_eq!(v["zone"], "default");
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(got.json()["key"], "some/key");
    assert_eq!(replicas.len(), 3);
    let expected: Vec<String> = c.replicas(b"some/key").iter().map(|&i| c.id(i)).collect();
    assert_eq!(replicas, expected);

    // A killed node is reported dead, and keeps its place in the ring.
    c.kill(4).await;
    wait_until(Duration::from_secs(10), "n5 reported dead", || async {
        let got = http.get(&format!("{}/cluster/members", c.url(0))).await;
        got.json()["members"][4]["status"] == "dead"
    })
    .await;
    let after = http
        .get(&format!("{}/cluster/replicas/some/key", c.url(2)))
        .await;
    assert_eq!(after.json()["replicas"], got.json()["replicas"]);
    assert_eq!(
        http.get(&format!("{}/health", c.url(0))).await.status,
        StatusCode::OK
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_repair_fixes_a_replica_that_missed_a_write() {
    let c = TestCluster::start(3).await;
    let http = Http::new();
    let key = "repair-me";
    let reps = c.replicas(key.as_bytes());
    let (coord, stale) = (reps[0], reps[2]);
    // The coordinator cannot reach the third replica, so the write lands on two of three.
    // Asking for w=3 makes the coordinator wait until that third attempt has failed, so no
    // replication to the stale replica is still in flight when the link comes back.
    c.block_rpc(coord, c.node(stale).rpc_addr(), true);
    let put = http
        .put(&format!("{}/kv/{key}?w=3", c.url(coord)), "fresh")
        .await;
    assert_eq!(put.status, StatusCode::SERVICE_UNAVAILABLE);
    // The call ends as soon as the quorum is impossible, before the second ack may be in.
    let replied = put.json()["replied"].as_u64().unwrap();
    assert!((1..=2).contains(&replied), "replied {replied}");
    let local = format!("{}/admin/local/{key}", c.url(stale));
    assert_eq!(http.get(&local).await.status, StatusCode::NOT_FOUND);
    c.block_rpc(coord, c.node(stale).rpc_addr(), false);
    // A read through any node sees the stale replica and repairs it.
    let got = http.get(&format!("{}/kv/{key}?r=3", c.url(reps[1]))).await;
    assert_eq!(got.body, "fresh");
    wait_until(
        Duration::from_secs(5),
        "read repair to reach the stale replica",
        || async {
            let got = http.get(&local).await;
            got.status == StatusCode::OK
        },
    )
    .await;
    let repairs = c.node(reps[1]).node().stats().snapshot().read_repairs;
    assert!(repairs >= 1);
    c.shutdown().await;
}

/// Regression: a forwarded write whose link dropped after it was sent must not be retried on
/// another coordinator, or one client write becomes two versions (found by tests/fault.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_is_coordinated_at_most_once_when_the_link_drops() {
    let c = TestCluster::start(3).await;
    let http = Http::new();
    let key = "once";
    let homes = c.replicas(key.as_bytes());
    let (first, via) = (homes[0], homes[1]);
    let coordinated = |c: &TestCluster| -> u64 {
        (0..3)
            .map(|i| c.node(i).node().stats().snapshot().writes_coordinated)
            .sum()
    };
    let before = coordinated(&c);
    let puts = 150u64;
    for i in 0..puts {
        let url = format!("{}/kv/{key}", c.url(via));
        let put = {
            let http = http.clone();
            tokio::spawn(async move { http.put(&url, format!("v{i}")).await })
        };
        // Cut the link at a varying moment: before, during or after the forward.
        tokio::time::sleep(Duration::from_micros((i * 37) % 1500)).await;
        c.cut(via, first).await;
        let reply = put.await.unwrap();
        c.heal().await;
        assert!(
            reply.status == StatusCode::NO_CONTENT
                || reply.status == StatusCode::SERVICE_UNAVAILABLE,
            "{reply:?}"
        );
    }
    let after = coordinated(&c);
    assert!(
        after - before <= puts,
        "{} coordinations for {puts} client writes",
        after - before
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_requests_and_node_state() {
    let c = TestCluster::start(3).await;
    let http = Http::new();
    assert_eq!(
        http.put(&format!("{}/kv/m1", c.url(0)), "v").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        http.get(&format!("{}/kv/m1", c.url(0))).await.status,
        StatusCode::OK
    );
    let got = http.get(&format!("{}/metrics", c.url(0))).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        got.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    for needle in [
        r#"ringkv_http_requests_total{route="kv",op="PUT",status="204"} 1"#,
        r#"ringkv_http_requests_total{route="kv",op="GET",status="200"} 1"#,
        r#"ringkv_http_request_seconds_count{route="kv",op="PUT"} 1"#,
        "ringkv_members_alive 3",
        "ringkv_members_dead 0",
        "ringkv_quorum_failures_total 0",
        "ringkv_hints_pending 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Every sample line is `name{labels} value` or `name value` with a numeric value.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(name.starts_with("ringkv_"), "{line:?}");
        assert!(value.parse::<f64>().is_ok(), "{line:?}");
    }
    // The node holding the key counts it.
    let holder = c.replicas(b"m1")[0];
    let got = http.get(&format!("{}/metrics", c.url(holder))).await;
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(text.contains("ringkv_keys 1"), "{text}");
    assert!(text.contains("ringkv_bytes_stored 3"), "{text}");
    c.shutdown().await;
}

/// A GET asks R replicas, its own copy first and the other homes taking turns: when the turn
/// falls on a replica it cannot reach, it asks the next one at once instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_replaces_an_unreachable_replica_with_the_next_home() {
    let c = TestCluster::start(3).await;
    let http = Http::new();
    let key = "turns";
    let reps = c.replicas(key.as_bytes());
    let put = http
        .put(&format!("{}/kv/{key}?w=3", c.url(reps[0])), "v1")
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    c.block_rpc(reps[0], c.node(reps[2]).rpc_addr(), true);
    // The remote turn alternates, so every other read starts with the cut replica; each
    // must still be answered by two replicas.
    for _ in 0..4 {
        let got = http.get(&format!("{}/kv/{key}?r=2", c.url(reps[0]))).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, "v1");
    }
    // With R = 3 there is nobody to replace it: the read fails as soon as the cut replica
    // does, saying how many had answered by then.
    let got = http.get(&format!("{}/kv/{key}?r=3", c.url(reps[0]))).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    let replied = got.json()["replied"].as_u64().unwrap();
    assert!((1..=2).contains(&replied), "replied {replied}");
    c.shutdown().await;
}

/// `?pr=` (Riak's primary read quorum) counts only home replicas' replies: with a home down,
/// a read at r = 2 is met by a fallback's "nothing" (a sloppy read), but `pr = 2` answers 503;
/// `pr` over r, and so over N, is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_at_pr_counts_only_home_replicas() {
    // N = 2 on three nodes: each key has two homes and one fallback.
    let mut c = TestCluster::start_with(3, |cfg| {
        cfg.replicas = 2;
        cfg.read_quorum = 2;
        cfg.write_quorum = 2;
    })
    .await;
    let http = Http::new();
    let key = (0..)
        .map(|i| format!("pr-{i}"))
        .find(|k| c.replicas(k.as_bytes())[0] == 0)
        .expect("a key led by n1");
    let url = format!("{}/kv/{key}", c.url(0));
    // Written at pw = w = 2, read at pr = r = 2: both homes answer, the read sees it.
    let put = http.put(&format!("{url}?pw=2"), "v").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    let got = http.get(&format!("{url}?r=2&pr=2")).await;
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"v"[..]));

    // Out of range.
    for bad in ["?pr=3", "?r=1&pr=2", "?r=2&pr=x"] {
        let got = http.get(&format!("{url}{bad}")).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{bad}: {got:?}");
        assert_eq!(got.json()["kind"], "invalid_input", "{bad}");
    }

    // The other home down: the fallback's reply makes r = 2, not pr = 2.
    let other = c.replicas(key.as_bytes())[1];
    c.kill(other).await;
    wait_until(Duration::from_secs(20), "the home is seen down", || {
        let view = c.node(0).view();
        let id = c.id(other);
        async move { !view.is_alive(&id) }
    })
    .await;
    let sloppy = http.get(&format!("{url}?r=2")).await;
    assert_eq!(sloppy.status, StatusCode::OK, "{sloppy:?}");
    let strict = http.get(&format!("{url}?r=2&pr=2")).await;
    assert_eq!(strict.status, StatusCode::SERVICE_UNAVAILABLE, "{strict:?}");
    let body = strict.json();
    assert_eq!(
        (body["replied"].as_u64(), body["required"].as_u64()),
        (Some(1), Some(2)),
        "{body}"
    );
    let one = http.get(&format!("{url}?r=2&pr=1")).await;
    assert_eq!(one.status, StatusCode::OK, "{one:?}");
    c.shutdown().await;
}
