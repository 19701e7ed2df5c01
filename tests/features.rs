//! In-process cluster tests of the features users of earlier stores relied on: TTL, key
//! listing, WebSocket watches, files with their content type, and conditional writes.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Http, TestCluster, wait_until};
use futures_util::StreamExt;
use hyper::{Method, StatusCode};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name].as_u64().unwrap_or(0)
}

async fn stats(http: &Http, url: &str) -> Value {
    http.get(&format!("{url}/admin/stats")).await.json()
}

/// Asserts that a GET of `path` answers `status` through every node that is up.
async fn assert_status_everywhere(http: &Http, c: &TestCluster, path: &str, status: StatusCode) {
    for i in c.up() {
        let got = http.get(&format!("{}{path}", c.url(i))).await;
        assert_eq!(got.status, status, "{path} through node {i}: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_value_is_gone_through_every_node_and_swept_without_repair_traffic() {
    let c = TestCluster::start_with(5, |cfg| {
        cfg.anti_entropy_interval = Duration::from_millis(100);
        cfg.ttl_sweep_interval = Duration::from_millis(100);
    })
    .await;
    let http = Http::new();
    let url = |i: usize, path: &str| format!("{}{path}", c.url(i));
    // An older value without a TTL, then the expiring one over it: when the second expires,
    // the key is gone, and the first must not come back.
    assert_eq!(
        http.put(&url(1, "/kv/t/key"), "old").await.status,
        StatusCode::NO_CONTENT
    );
    // Time passes for the TTL only as the test moves the nodes' clocks, so a slow machine
    // cannot make it expire early.
    let put = http.put(&url(2, "/kv/t/key?ttl=60"), "fresh").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    for i in 0..5 {
        let got = http.get(&url(i, "/kv/t/key")).await;
        assert_eq!(got.status, StatusCode::OK, "node {i}: {got:?}");
        assert_eq!(&got.body[..], b"fresh");
        let expires = got.headers["x-ringkv-expires-at"].to_str().unwrap();
        assert!(expires.ends_with('Z') && expires.contains('T'), "{expires}");
        let json = http
            .send(
                Method::GET,
                &url(i, "/kv/t/key"),
                "",
                &[("accept", "application/json")],
            )
            .await;
        assert!(json.json()["expires_at"].is_string(), "{json:?}");
    }
    // Not expired early: 50 of the 60 seconds later, every node still has it.
    c.advance_clocks(Duration::from_secs(50));
    assert_status_everywhere(&http, &c, "/kv/t/key", StatusCode::OK).await;
    // Once the 60 s have passed, 404 through every node at once, without waiting for a sweep.
    c.advance_clocks(Duration::from_secs(10));
    assert_status_everywhere(&http, &c, "/kv/t/key", StatusCode::NOT_FOUND).await;
    // The sweep drops the value on every replica.
    let replicas = c.replicas(b"t/key");
    wait_until(Duration::from_secs(5), "values dropped", || async {
        let mut dropped = true;
        for &i in &replicas {
            let local = http.get(&url(i, "/admin/local/t%2Fkey")).await.json();
            dropped &= local["versions"]
                .as_array()
                .is_some_and(|vs| vs.iter().all(|v| v["value"].is_null()));
        }
        dropped
    })
    .await;
    let mut freed = 0;
    for &i in &replicas {
        freed += counter(&stats(&http, &c.url(i)).await, "ttl_bytes_freed");
    }
    assert!(
        freed >= 3 * 5,
        "the value's bytes were freed on each replica: {freed}"
    );
    // Expiry never makes replicas look different to anti-entropy: several rounds later,
    // nothing was repaired.
    let before: Vec<(u64, u64)> = futures_util::future::join_all((0..5).map(|i| {
        let (http, u) = (http.clone(), c.url(i));
        async move {
            let s = stats(&http, &u).await;
            (counter(&s, "ae_rounds"), counter(&s, "ae_keys_repaired"))
        }
    }))
    .await;
    wait_until(Duration::from_secs(10), "five more AE rounds", || async {
        let mut done = true;
        for (i, (rounds, _)) in before.iter().enumerate() {
            done &= counter(&stats(&http, &c.url(i)).await, "ae_rounds") >= rounds + 5;
        }
        done
    })
    .await;
    for (i, (_, repaired)) in before.iter().enumerate() {
        let now = counter(&stats(&http, &c.url(i)).await, "ae_keys_repaired");
        assert_eq!(
            now, *repaired,
            "node {i} repaired keys because of an expiry"
        );
    }
    // A bad TTL is a 400.
    for bad in ["0", "-1", "soon", "999999999999"] {
        let r = http
            .put(&url(0, &format!("/kv/t/bad?ttl={bad}")), "v")
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "ttl={bad}");
        assert!(r.json()["error"].as_str().unwrap().contains("ttl"));
    }
    c.shutdown().await;
}

/// Lists every live key under `prefix` through node `i`, `limit` at a time.
async fn list_all(http: &Http, base: &str, prefix: &str, limit: usize) -> (Vec<String>, usize) {
    let mut keys = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/kv?prefix={prefix}&limit={limit}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page = http.get(&url).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let json = page.json();
        let batch = json["keys"].as_array().expect("keys");
        assert!(batch.len() <= limit);
        keys.extend(batch.iter().map(|k| k.as_str().unwrap().to_string()));
        pages += 1;
        match json["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return (keys, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_live_keys_only() {
    let c = TestCluster::start(5).await;
    let http = Http::new();
    for i in 0..120 {
        let r = http
            .put(&format!("{}/kv/ls/{i:03}", c.url(i % 5)), "v")
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    http.put(&format!("{}/kv/other/x", c.url(0)), "v").await;
    http.put(&format!("{}/kv/lr", c.url(0)), "v").await; // sorts just before ls/
    assert_eq!(
        http.delete(&format!("{}/kv/ls/007", c.url(3))).await.status,
        StatusCode::NO_CONTENT
    );
    for k in ["ls/050x", "ls/100x"] {
        let r = http.put(&format!("{}/kv/{k}?ttl=1", c.url(2)), "v").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    let mut expected: Vec<String> = (0..120)
        .filter(|i| *i != 7)
        .map(|i| format!("ls/{i:03}"))
        .collect();
    // Their second passes by every node's clock, without sleeping.
    c.advance_clocks(Duration::from_secs(1));
    for k in ["ls/050x", "ls/100x"] {
        assert_status_everywhere(&http, &c, &format!("/kv/{k}"), StatusCode::NOT_FOUND).await;
    }
    for node in 0..5 {
        let (keys, pages) = list_all(&http, &c.url(node), "ls/", 50).await;
        assert_eq!(keys, expected, "through node {node}");
        assert_eq!(pages, 3);
    }
    // Small pages, and pages that resume after a key deleted meanwhile.
    let (keys, pages) = list_all(&http, &c.url(1), "ls%2F", 7).await;
    assert_eq!(keys, expected);
    assert_eq!(pages, 119_usize.div_ceil(7));
    let first = http
        .get(&format!("{}/kv?prefix=ls/&limit=10", c.url(0)))
        .await
        .json();
    let cursor = first["next"].as_str().unwrap().to_string();
    http.delete(&format!("{}/kv/ls/009", c.url(1))).await;
    http.delete(&format!("{}/kv/ls/010", c.url(1))).await;
    let second = http
        .get(&format!(
            "{}/kv?prefix=ls/&limit=3&after={cursor}",
            c.url(4)
        ))
        .await
        .json();
    assert_eq!(
        second["keys"],
        serde_json::json!(["ls/011", "ls/012", "ls/013"])
    );
    expected.retain(|k| k != "ls/009" && k != "ls/010");
    // No prefix: everything, still sorted.
    let (all, _) = list_all(&http, &c.url(2), "", 1000).await;
    let mut want = vec!["lr".to_string()];
    want.extend(expected.iter().cloned());
    want.push("other/x".into());
    assert_eq!(all, want);
    // Binary keys come back exactly in base64url.
    http.put(&format!("{}/kv/bin%FF%00", c.url(0)), "v").await;
    let b64 = http
        .get(&format!("{}/kv?prefix=bin&encoding=base64", c.url(1)))
        .await
        .json();
    assert_eq!(b64["keys"], serde_json::json!(["Ymlu_wA"]));
    // Bad input.
    for bad in [
        "limit=0",
        "limit=10001",
        "limit=x",
        "after=%%%",
        "after=***",
        "encoding=hex",
    ] {
        let r = http.get(&format!("{}/kv?prefix=ls/&{bad}", c.url(0))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {r:?}");
        assert!(r.json()["error"].is_string());
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_needs_r_replicas_of_every_range() {
    let mut c = TestCluster::start(5).await;
    let http = Http::new();
    for i in 0..30 {
        http.put(&format!("{}/kv/q/{i:02}", c.url(0)), "v").await;
    }
    c.kill(3).await;
    c.kill(4).await;
    wait_until(Duration::from_secs(20), "two nodes seen dead", || async {
        let view = c.node(0).view();
        ["n4", "n5"].iter().all(|id| !view.is_alive(id))
    })
    .await;
    // Some range has only one of its three homes left: r=2 cannot be met, r=1 can.
    let r2 = http.get(&format!("{}/kv?prefix=q/&r=2", c.url(0))).await;
    assert_eq!(r2.status, StatusCode::SERVICE_UNAVAILABLE, "{r2:?}");
    assert_eq!(r2.json()["required"], 2);
    let r1 = http.get(&format!("{}/kv?prefix=q/&r=1", c.url(1))).await;
    assert_eq!(r1.status, StatusCode::OK);
    assert_eq!(r1.json()["keys"].as_array().unwrap().len(), 30);
    c.shutdown().await;
}

async fn connect(base: &str, prefix: &str) -> Socket {
    let url = format!("{}/watch?prefix={prefix}", base.replace("http://", "ws://"));
    let (ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// The next JSON text message, within `timeout`.
async fn next_event(ws: &mut Socket, timeout: Duration) -> Value {
    loop {
        let msg = tokio::time::timeout(timeout, ws.next())
            .await
            .expect("an event in time")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON event");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_changes_coordinated_anywhere() {
    let c = TestCluster::start_with(5, |cfg| {
        cfg.ttl_sweep_interval = Duration::from_millis(100);
    })
    .await;
    let http = Http::new();
    let mut ws = connect(&c.url(0), "w/").await;
    let mut everything = connect(&c.url(2), "").await;
    let put = http.put(&format!("{}/kv/w/a", c.url(3)), "hello").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    http.put(&format!("{}/kv/nw/b", c.url(1)), "not watched")
        .await;
    let del = http.delete(&format!("{}/kv/w/a", c.url(2))).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let wait = Duration::from_secs(5);
    let ev = next_event(&mut ws, wait).await;
    assert_eq!(ev["op"], "put", "{ev}");
    assert_eq!(ev["key"], "w/a");
    assert_eq!(B64.decode(ev["value"].as_str().unwrap()).unwrap(), b"hello");
    assert_eq!(ev["context"].as_str(), put.context().as_deref());
    let ev = next_event(&mut ws, wait).await;
    assert_eq!(ev["op"], "delete", "{ev}");
    assert_eq!(ev["key"], "w/a");
    assert!(ev.get("value").is_none());
    assert_eq!(ev["context"].as_str(), del.context().as_deref());
    // The empty prefix watches everything, in order per key.
    let ops: Vec<(String, String)> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let ev = next_event(&mut everything, wait).await;
            v.push((
                ev["op"].as_str().unwrap().into(),
                ev["key"].as_str().unwrap().into(),
            ));
        }
        v.sort();
        v
    };
    assert!(ops.contains(&("put".into(), "nw/b".into())), "{ops:?}");
    // An expiry is announced too, by the sweep once the second passed by the nodes' clocks.
    http.put(&format!("{}/kv/w/ttl?ttl=1", c.url(4)), "brief")
        .await;
    let ev = next_event(&mut ws, wait).await;
    assert_eq!(
        (ev["op"].as_str(), ev["key"].as_str()),
        (Some("put"), Some("w/ttl"))
    );
    c.advance_clocks(Duration::from_secs(1));
    let ev = next_event(&mut ws, wait).await;
    assert_eq!(
        (ev["op"].as_str(), ev["key"].as_str()),
        (Some("expire"), Some("w/ttl")),
        "{ev}"
    );
    // Nothing for nw/b reached the w/ watcher: the next event is the sentinel.
    http.put(&format!("{}/kv/w/z", c.url(1)), "sentinel").await;
    let ev = next_event(&mut ws, wait).await;
    assert_eq!(ev["key"], "w/z", "{ev}");
    // A watcher that goes away is forgotten.
    drop(ws);
    wait_until(Duration::from_secs(5), "watcher count drops", || async {
        c.node(0).node().watches().watchers().count() == 0
    })
    .await;
    // /watch without an upgrade is a clear 400.
    let plain = http.get(&format!("{}/watch?prefix=w/", c.url(0))).await;
    assert_eq!(plain.status, StatusCode::BAD_REQUEST);
    assert!(
        plain.json()["error"]
            .as_str()
            .unwrap()
            .contains("WebSocket")
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_past_max_watchers_are_refused_with_503() {
    let c = TestCluster::start_with(3, |cfg| cfg.max_watchers = 1).await;
    let http = Http::new();
    let first = connect(&c.url(0), "a/").await;
    let url = format!("{}/watch?prefix=b/", c.url(0).replace("http://", "ws://"));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["kind"], "rejected", "{body}");
            assert!(
                body["error"].as_str().unwrap().contains("--max-watchers"),
                "{body}"
            );
        }
        Err(other) => panic!("expected a 503, got {other}"),
        Ok(_) => panic!("a watcher past the cap was accepted"),
    }
    assert_eq!(c.node(0).node().watches().watchers().count(), 1);
    let metrics = http.get(&format!("{}/metrics", c.url(0))).await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(text.contains("ringkv_watchers_refused_total 1"), "{text}");
    // The cap is per node, and a watcher that leaves makes room.
    let _other = connect(&c.url(1), "b/").await;
    drop(first);
    wait_until(
        Duration::from_secs(5),
        "the first watcher is gone",
        || async { c.node(0).node().watches().watchers().count() == 0 },
    )
    .await;
    let _again = connect(&c.url(0), "b/").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_told_what_it_missed_and_never_blocks_writes() {
    let c = TestCluster::start_with(3, |cfg| cfg.watch_buffer = 8).await;
    let http = Http::new();
    let mut ws = connect(&c.url(0), "slow/").await;
    // The watcher reads nothing while writes go on through another node, until the socket
    // buffers and the watcher's 8-event buffer are full and events start being dropped
    // (however large this machine's socket buffers are).
    let value = vec![b'x'; 32 * 1024];
    let watchers = c.node(0).node().watches().watchers();
    let started = Instant::now();
    let mut writes = 0usize;
    while watchers.lagged() == 0 {
        assert!(writes < 20_000, "the watcher never fell behind");
        let r = http
            .put(&format!("{}/kv/slow/{writes:05}", c.url(1)), value.clone())
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        writes += 1;
    }
    let took = started.elapsed();
    // Drain what did arrive, then a sentinel makes any pending `lagged` come out.
    let mut puts = 0u64;
    let mut missed = 0u64;
    let mut sentinel_sent = false;
    loop {
        let ev = match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(&t).unwrap(),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("socket ended: {other:?}"),
            Err(_) => {
                assert!(!sentinel_sent, "the sentinel never came");
                http.put(&format!("{}/kv/slow/zzzzz", c.url(2)), "end")
                    .await;
                sentinel_sent = true;
                continue;
            }
        };
        match ev["op"].as_str() {
            Some("lagged") => missed += ev["missed"].as_u64().unwrap(),
            Some("put") if ev["key"] == "slow/zzzzz" => break,
            Some("put") => puts += 1,
            other => panic!("unexpected {other:?}: {ev}"),
        }
    }
    assert!(missed > 0, "a watcher that fell behind is told so");
    assert_eq!(
        puts + missed,
        writes as u64,
        "every event delivered or counted"
    );
    println!("{writes} writes of 32 KiB in {took:?}; watcher got {puts}, missed {missed}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_byte_exact_with_their_content_type() {
    let c = TestCluster::start(3).await;
    let http = Http::new();
    let file: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let put = http
        .send(
            Method::PUT,
            &format!("{}/kv/files/photo.png", c.url(0)),
            file.clone(),
            &[("content-type", "image/png")],
        )
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    for i in 0..3 {
        let got = http.get(&format!("{}/kv/files/photo.png", c.url(i))).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.headers["content-type"], "image/png");
        assert!(got.body[..] == file[..], "byte-exact through node {i}");
    }
    // No content type given: the default comes back.
    http.put(&format!("{}/kv/files/plain", c.url(1)), "x").await;
    let got = http.get(&format!("{}/kv/files/plain", c.url(2))).await;
    assert_eq!(got.headers["content-type"], "application/octet-stream");
    // (Values past the limit are refused with 413: see tests/bad_input.rs.)
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes() {
    let c = TestCluster::start(5).await;
    let http = Http::new();
    let url = |i: usize, k: &str| format!("{}/kv/{k}", c.url(i));
    // if_absent: the first create wins, the second is a 412 with the current context.
    let first = http
        .put(&format!("{}?if_absent=true", url(0, "lock")), "a")
        .await;
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    let second = http
        .put(&format!("{}?if_absent=true", url(3, "lock")), "b")
        .await;
    assert_eq!(second.status, StatusCode::PRECONDITION_FAILED, "{second:?}");
    assert_eq!(
        second.json()["context"].as_str(),
        first.context().as_deref()
    );
    assert_eq!(&http.get(&url(2, "lock")).await.body[..], b"a");
    // After a delete there is no live value: creating works again.
    http.delete(&url(1, "lock")).await;
    let again = http
        .put(&format!("{}?if_absent=true", url(4, "lock")), "c")
        .await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
    // if-match: with the context just read it succeeds; reusing it afterwards is stale.
    let read = http.get(&url(2, "lock")).await;
    let ctx = read.context().unwrap();
    let ok = http
        .send(
            Method::PUT,
            &url(1, "lock"),
            "d",
            &[("if-match", &format!("\"{ctx}\""))],
        )
        .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{ok:?}");
    let stale = http
        .send(Method::PUT, &url(3, "lock"), "e", &[("if-match", &ctx)])
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(&http.get(&url(0, "lock")).await.body[..], b"d");
    let del = http
        .send(Method::DELETE, &url(3, "lock"), "", &[("if-match", &ctx)])
        .await;
    assert_eq!(
        del.status,
        StatusCode::PRECONDITION_FAILED,
        "a stale delete too"
    );
    // Both at once is a usage error.
    let both = http
        .send(
            Method::PUT,
            &format!("{}?if_absent=true", url(0, "lock")),
            "f",
            &[("if-match", &ctx)],
        )
        .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    // Racing creates through every node: in a healthy cluster exactly one wins.
    for round in 0..5 {
        let key = format!("race-{round}");
        let tries = (0..5).map(|i| {
            let (http, u) = (http.clone(), format!("{}?if_absent=true", url(i, &key)));
            async move { http.put(&u, format!("writer {i}")).await.status }
        });
        let statuses = futures_util::future::join_all(tries).await;
        let won = statuses
            .iter()
            .filter(|s| **s == StatusCode::NO_CONTENT)
            .count();
        let lost = statuses
            .iter()
            .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
            .count();
        assert_eq!((won, lost), (1, 4), "round {round}: {statuses:?}");
        let got = http.get(&url(0, &key)).await;
        assert_eq!(got.status, StatusCode::OK, "one value, no siblings");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_merges_replicas_that_disagree() {
    // No anti-entropy: a replica that missed a write stays stale for the whole test.
    let c = TestCluster::start_with(3, |cfg| {
        cfg.anti_entropy_interval = Duration::from_secs(3600);
    })
    .await;
    let http = Http::new();
    for k in ["d/1", "d/2", "d/3"] {
        let r = http.put(&format!("{}/kv/{k}?w=3", c.url(0)), "old").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    // n3 stops hearing from the others over RPC (gossip still calls it alive), so it misses
    // a delete and a new write that two replicas acknowledge.
    let n3 = c.node(2).rpc_addr();
    c.block_rpc(0, n3, true);
    c.block_rpc(1, n3, true);
    assert_eq!(
        http.delete(&format!("{}/kv/d/2", c.url(0))).await.status,
        StatusCode::NO_CONTENT
    );
    http.delete(&format!("{}/kv/d/3", c.url(1))).await;
    c.block_rpc(0, n3, false);
    c.block_rpc(1, n3, false);
    let stale = http
        .get(&format!("{}/admin/local/d%2F2", c.url(2)))
        .await
        .json();
    assert!(
        stale["versions"][0]["value"].is_string(),
        "n3 still has the deleted value: {stale}"
    );
    // Every node's listing merges the replicas' versions: the stale copies do not count.
    for i in 0..3 {
        let page = http.get(&format!("{}/kv?prefix=d/", c.url(i))).await.json();
        assert_eq!(page["keys"], serde_json::json!(["d/1"]), "through node {i}");
    }
    c.shutdown().await;
}

/// `/admin/stages` times each part of a request on the node that ran it, and a DELETE resets
/// the histograms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_histograms_time_each_part_of_a_request() {
    let c = TestCluster::start(3).await;
    let http = Http::new();
    for i in 0..c.up().len() {
        let reset = http
            .send(
                Method::DELETE,
                &format!("{}/admin/stages", c.url(i)),
                bytes::Bytes::new(),
                &[],
            )
            .await;
        assert_eq!(reset.status, StatusCode::OK);
    }
    for k in 0..20 {
        let url = format!("{}/kv/stage-{k}", c.url(0));
        assert_eq!(http.put(&url, "v").await.status, StatusCode::NO_CONTENT);
        assert_eq!(http.get(&url).await.status, StatusCode::OK);
    }
    let mut totals = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..c.up().len() {
        let report = http.get(&format!("{}/admin/stages", c.url(i))).await.json();
        for (stage, h) in report.as_object().expect("an object of stages") {
            *totals.entry(stage.clone()).or_default() += h["count"].as_u64().unwrap_or(0);
            if h["count"].as_u64() > Some(0) {
                assert!(h["p50_us"].as_u64() <= h["max_us"].as_u64(), "{stage}: {h}");
            }
        }
    }
    // Every request went through node 0; each write was applied by its coordinator and
    // copied to two replicas (N=3, W=2, so both copies are acknowledged or still going).
    assert_eq!(totals["http_write"], 20, "{totals:?}");
    assert_eq!(totals["http_read"], 20, "{totals:?}");
    assert_eq!(totals["apply"], 20, "{totals:?}");
    assert_eq!(totals["replicate"], 20, "{totals:?}");
    assert_eq!(totals["read_quorum"], 20, "{totals:?}");
    assert!(totals["replica_apply"] >= 20, "{totals:?}");
}
