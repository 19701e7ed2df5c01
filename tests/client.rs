//! Tests of the user-facing clients against in-process clusters: the `ringkv::Client`
//! library (round-robin, failover, retries, siblings, `put_resolved`, expiry, content types,
//! conditional writes, listing, watching), the CLI verbs of the real binary (output, `--json`
//! shapes, exit codes) and a short `ringkv bench` run.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use common::{Http, TestCluster, wait_until};
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use ringkv::client::{
    Context, DEFAULT_READ_RETRIES, PutOptions, Read, ReadOptions, Watch, WatchEvent, WriteOptions,
};
use ringkv::{Client, Error};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_ringkv");

/// How long one CLI invocation may take before the test fails.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Node `i`'s wall clock, the one it judges expiry by, as a `SystemTime`.
fn clock_time(c: &TestCluster, i: usize) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(c.clock(i).now_ms())
}

/// Reads each node coordinated so far.
fn reads(c: &TestCluster) -> Vec<u64> {
    (0..c.len())
        .map(|i| match c.up().contains(&i) {
            true => c.node(i).node().stats().snapshot().reads_coordinated,
            false => 0,
        })
        .collect()
}

/// Writes that entered the ring through any node (coordinated there or forwarded from there).
fn writes(c: &TestCluster) -> u64 {
    c.up()
        .iter()
        .map(|&i| {
            let s = c.node(i).node().stats().snapshot();
            s.writes_coordinated + s.writes_forwarded
        })
        .sum()
}

/// A URL nothing listens on: a port bound on 0 and released again.
async fn closed_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// A fake node that answers every request 503 (quorum not met) and counts them.
struct Stub {
    url: String,
    hits: Arc<AtomicUsize>,
}

async fn stub_503() -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // No `kind`, as a node that predates kinds answers: the client decodes
                    // it by the status and the counts.
                    let body = r#"{"error":"quorum not met: 1 replicas answered, 2 required","replied":1,"required":2}"#;
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    async { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Stub {
        url: format!("http://{addr}"),
        hits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_and_fails_over_when_a_node_dies() {
    let mut c = TestCluster::start(3).await;
    let client = Client::new((0..3).map(|i| c.url(i))).expect("client");
    client.put("rr", "v").await.expect("put");

    // 30 reads through a three-node client: exactly ten enter through each node.
    let before = reads(&c);
    for _ in 0..30 {
        let read = client.get("rr").await.expect("get");
        assert_eq!(read.value().map(|v| v.as_ref()), Some(&b"v"[..]));
    }
    let after = reads(&c);
    let per_node: Vec<u64> = (0..3).map(|i| after[i] - before[i]).collect();
    assert_eq!(per_node, vec![10, 10, 10]);

    // n3 dies. The client is not told: every request still succeeds, through n1 and n2.
    c.kill(2).await;
    c.wait_all_alive().await;
    let before = reads(&c);
    for i in 0..30 {
        let key = format!("after-{i}");
        client
            .put(&key, format!("v{i}"))
            .await
            .expect("put fails over");
        let read = client.get(&key).await.expect("get fails over");
        assert_eq!(read.value(), Some(&Bytes::from(format!("v{i}"))));
    }
    let after = reads(&c);
    assert_eq!(after[0] - before[0] + after[1] - before[1], 30);
    assert!(
        after[0] > before[0] && after[1] > before[1],
        "both live nodes serve"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_down_is_unreachable() {
    let client = Client::new([closed_url().await, closed_url().await]).expect("client");
    assert!(matches!(client.get("k").await, Err(Error::Unreachable(_))));
    assert!(matches!(
        client.put("k", "v").await,
        Err(Error::Unreachable(_))
    ));
    assert!(matches!(client.members().await, Err(Error::Unreachable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siblings_context_and_put_resolved() {
    let c = TestCluster::start(3).await;
    let client = Client::new((0..3).map(|i| c.url(i))).expect("client");

    let base = client.put("color", "base").await.expect("put");
    for v in ["red", "blue"] {
        client
            .put_with("color", v, &WriteOptions::with_context(base.clone()))
            .await
            .expect("put with context");
    }
    let read = client.get("color").await.expect("get");
    let Read::Siblings {
        values, context, ..
    } = &read
    else {
        panic!("expected siblings, got {read:?}");
    };
    let mut values = values.clone();
    values.sort();
    assert_eq!(values, vec![Bytes::from("blue"), Bytes::from("red")]);
    assert_ne!(context, &base);

    // put_resolved sees both siblings and its write supersedes them.
    let mut seen = Vec::new();
    client
        .put_resolved("color", |siblings| {
            seen = siblings.to_vec();
            let mut names: Vec<String> = siblings
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            names.sort();
            names.join("+")
        })
        .await
        .expect("put_resolved");
    assert_eq!(seen.len(), 2);
    for i in 0..3 {
        let one = Client::new([c.url(i)]).expect("client");
        // Every home answers, so a primary read quorum of all three is met too.
        let strict = ReadOptions {
            r: Some(3),
            pr: Some(3),
        };
        let read = one.get_with("color", &strict).await.expect("get");
        assert_eq!(
            read.value(),
            Some(&Bytes::from("blue+red")),
            "via n{}",
            i + 1
        );
    }

    // put_resolved on a missing key gets no values and creates it.
    client
        .put_resolved("fresh", |values| {
            assert!(values.is_empty());
            "created"
        })
        .await
        .expect("put_resolved");
    assert_eq!(
        client.get("fresh").await.expect("get").value(),
        Some(&Bytes::from("created"))
    );

    // A deleted key is not found but keeps its tombstone's context; a never-written one has none.
    client.delete("color").await.expect("delete");
    let gone = client.get("color").await.expect("get");
    assert!(!gone.is_found());
    assert!(gone.context().is_some());
    assert_eq!(
        client.get("never").await.expect("get"),
        Read::NotFound { context: None }
    );

    // Binary keys (with `/`, spaces, any byte) and values round-trip.
    let key = b"dir/sub key\xff\x00?#%".to_vec();
    let value: Vec<u8> = (0..=255u8).collect();
    client.put(&key, value.clone()).await.expect("put binary");
    let read = client.get(&key).await.expect("get binary");
    assert_eq!(read.value().map(|v| v.to_vec()), Some(value));

    // members and replicas agree with the cluster.
    let members = client.members().await.expect("members");
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["n1", "n2", "n3"]);
    assert!(members.iter().all(|m| m.status == "alive"));
    let expected: Vec<ringkv::client::Replica> = c
        .replicas(&key)
        .iter()
        .map(|&i| ringkv::client::Replica {
            id: c.id(i),
            zone: Some(ringkv::ring::DEFAULT_ZONE.into()),
        })
        .collect();
    assert_eq!(client.replicas(&key).await.expect("replicas"), expected);
    c.shutdown().await;
}

/// A client that sends to the given nodes in turn, without key-aware routing: the retry
/// tests count attempts per given node.
fn given_nodes<I: IntoIterator<Item = S>, S: AsRef<str>>(nodes: I) -> Client {
    Client::builder(nodes)
        .routing(false)
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_retried_on_503_and_put_is_not_unless_asked() {
    let c = TestCluster::start(3).await;
    let real = c.url(0);
    given_nodes([&real]).put("k", "old").await.expect("put");
    let read_back = || async {
        let one = given_nodes([&real]);
        one.get("k").await.expect("get").value().cloned()
    };

    // A fresh client starts at its first node: the stub answers 503, the GET moves on.
    let stub = stub_503().await;
    let client = given_nodes([&stub.url, &real]);
    let read = client.get("k").await.expect("the GET is retried on n1");
    assert_eq!(read.value(), Some(&Bytes::from("old")));
    assert_eq!(stub.hits.load(Ordering::SeqCst), 1);

    // The same first attempt for a PUT is final: 503 comes back, nothing reaches the ring.
    let stub = stub_503().await;
    let client = given_nodes([&stub.url, &real]);
    let before = writes(&c);
    let err = client
        .put("k", "new")
        .await
        .expect_err("a PUT is not retried");
    assert!(
        matches!(
            err,
            Error::Unavailable {
                replied: 1,
                required: 2
            }
        ),
        "{err:?}"
    );
    assert_eq!(stub.hits.load(Ordering::SeqCst), 1);
    assert_eq!(writes(&c), before, "no write entered the ring");
    assert_eq!(read_back().await, Some(Bytes::from("old")));

    // Unless the caller asks for it.
    let stub = stub_503().await;
    let client = given_nodes([&stub.url, &real]);
    let opts = WriteOptions {
        retry: true,
        ..WriteOptions::default()
    };
    client.put_with("k", "new", &opts).await.expect("retried");
    assert_eq!(stub.hits.load(Ordering::SeqCst), 1);
    assert_eq!(read_back().await, Some(Bytes::from("new")));

    // With only 503s to be had, a GET makes 1 + DEFAULT_READ_RETRIES attempts, a DELETE one.
    let stub = stub_503().await;
    let client = given_nodes([&stub.url]);
    assert!(matches!(
        client.get("k").await,
        Err(Error::Unavailable { .. })
    ));
    assert_eq!(stub.hits.load(Ordering::SeqCst), 1 + DEFAULT_READ_RETRIES);
    assert!(matches!(
        client.delete("k").await,
        Err(Error::Unavailable { .. })
    ));
    assert_eq!(stub.hits.load(Ordering::SeqCst), 2 + DEFAULT_READ_RETRIES);
    c.shutdown().await;
}

/// The same against a real quorum failure: r=3 with one of three nodes dead is a 503 on every
/// node, and the client makes three attempts, on the two live nodes in turn, before giving up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_quorum_failure_is_retried_on_other_nodes() {
    let mut c = TestCluster::start(3).await;
    let key = "needs-three";
    let victim = 2;
    let others = [0, 1];
    let client = given_nodes(others.iter().map(|&i| c.url(i)));
    client.put(key, "v").await.expect("put");
    c.kill(victim).await;
    c.wait_all_alive().await;

    let before: u64 = reads(&c).iter().sum();
    let err = client
        .get_with(
            key,
            &ReadOptions {
                r: Some(3),
                ..Default::default()
            },
        )
        .await
        .expect_err("r=3 cannot be met");
    assert!(
        matches!(err, Error::Unavailable { required: 3, .. }),
        "{err:?}"
    );
    let after: u64 = reads(&c).iter().sum();
    assert_eq!(after - before, 1 + DEFAULT_READ_RETRIES as u64);
    // What the client decoded: a 503 of kind `unavailable`, with the counts.
    let got = Http::new()
        .get(&format!("{}/kv/{key}?r=3", c.url(others[0])))
        .await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{got:?}");
    let body = got.json();
    assert_eq!(body["kind"], "unavailable", "{body}");
    assert_eq!(body["required"], 3, "{body}");
    assert!(body["replied"].as_u64().is_some_and(|n| n < 3), "{body}");
    // r=2 still works, on whichever node the rotation picks.
    let read = client
        .get_with(
            key,
            &ReadOptions {
                r: Some(2),
                ..Default::default()
            },
        )
        .await
        .expect("r=2");
    assert_eq!(read.value(), Some(&Bytes::from("v")));
    c.shutdown().await;
}

/// The key's current context that a failed condition carries.
fn precondition_context(res: ringkv::Result<Context>) -> Context {
    match res {
        Err(Error::PreconditionFailed { context }) => context.parse().expect("a valid context"),
        other => panic!("expected a precondition failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_values_report_their_expiry_then_expire() {
    let c = TestCluster::start(3).await;
    let client = Client::new((0..3).map(|i| c.url(i))).expect("client");

    // 1.5 s is rounded up to the server's whole seconds: 2 s.
    let before = SystemTime::now();
    let ttl = PutOptions::new().ttl(Duration::from_millis(1500));
    client
        .put_opts("ttl/short", "brief", &ttl)
        .await
        .expect("put");
    let after = SystemTime::now();
    client.put("ttl/kept", "stays").await.expect("put");

    let read = client.get("ttl/short").await.expect("get");
    assert_eq!(read.value(), Some(&Bytes::from("brief")));
    let expires = read.expires_at().expect("an expiry");
    // The nodes share this process's clock; the server keeps milliseconds.
    let two = Duration::from_secs(2);
    assert!(
        expires + Duration::from_millis(1) > before + two && expires <= after + two,
        "expiry {expires:?} not 2 s after the write ({before:?}..{after:?})"
    );
    assert_eq!(
        client.get("ttl/kept").await.expect("get").expires_at(),
        None
    );
    assert_eq!(
        client.list_all("ttl/").await.expect("list"),
        ["ttl/kept", "ttl/short"]
    );

    // Every node stops returning it once it expired by the nodes' clocks, not before; the
    // test moves those clocks instead of sleeping.
    c.advance_clocks(Duration::from_secs(1));
    for i in 0..3 {
        let one = Client::new([c.url(i)]).expect("client");
        assert!(
            one.get("ttl/short").await.expect("get").is_found(),
            "n{}",
            i + 1
        );
    }
    c.advance_clocks(Duration::from_secs(1));
    assert!(clock_time(&c, 0) >= expires);
    for i in 0..3 {
        let one = Client::new([c.url(i)]).expect("client");
        let gone = one.get("ttl/short").await.expect("get");
        assert!(!gone.is_found(), "still found via n{}", i + 1);
        assert!(gone.context().is_some(), "an expired key keeps its context");
    }
    assert_eq!(client.list_all("ttl/").await.expect("list"), ["ttl/kept"]);
    // An expired key is absent again.
    let again = PutOptions::new().if_absent();
    client
        .put_opts("ttl/short", "again", &again)
        .await
        .expect("if_absent after expiry");
    let read = client.get("ttl/short").await.expect("get");
    assert_eq!(read.value(), Some(&Bytes::from("again")));
    assert_eq!(read.expires_at(), None);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_and_conditional_writes() {
    let c = TestCluster::start(3).await;
    let client = Client::new((0..3).map(|i| c.url(i))).expect("client");

    // The content type comes back through every node; none given reads as octet-stream.
    let json_type = "application/json; charset=utf-8";
    let doc = PutOptions::new().content_type(json_type);
    client
        .put_opts("doc", r#"{"a":1}"#, &doc)
        .await
        .expect("put");
    for i in 0..3 {
        let one = Client::new([c.url(i)]).expect("client");
        let read = one.get("doc").await.expect("get");
        assert_eq!(read.content_type(), Some(json_type), "via n{}", i + 1);
        assert_eq!(read.value(), Some(&Bytes::from(r#"{"a":1}"#)));
    }
    client.put("plain", "x").await.expect("put");
    let read = client.get("plain").await.expect("get");
    assert_eq!(read.content_type(), Some("application/octet-stream"));
    // Siblings keep each value's own content type.
    let base = client.put("mixed", "base").await.expect("put");
    for (value, ct) in [("<p>", "text/html"), ("txt", "text/plain")] {
        let opts = PutOptions::new().context(base.clone()).content_type(ct);
        client.put_opts("mixed", value, &opts).await.expect("put");
    }
    let read = client.get("mixed").await.expect("get");
    assert!(matches!(read, Read::Siblings { .. }), "{read:?}");
    let mut pairs: Vec<(Bytes, String)> = read
        .values()
        .iter()
        .cloned()
        .zip(read.content_types().iter().cloned())
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            (Bytes::from("<p>"), "text/html".to_string()),
            (Bytes::from("txt"), "text/plain".to_string())
        ]
    );
    // A content type that cannot be a header is refused before anything is sent.
    let before = writes(&c);
    let bad = PutOptions::new().content_type("text/plain\nx: y");
    assert!(matches!(
        client.put_opts("doc", "x", &bad).await,
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(writes(&c), before);

    // if_absent: the first write wins, the second fails with the current context.
    let create = PutOptions::new().if_absent();
    let created = client
        .put_opts("once", "first", &create)
        .await
        .expect("absent");
    let current = precondition_context(client.put_opts("once", "second", &create).await);
    assert_eq!(current, created);
    assert_eq!(
        client.get("once").await.expect("get").value(),
        Some(&Bytes::from("first"))
    );
    // A deleted key is absent again.
    client.delete("once").await.expect("delete");
    client
        .put_opts("once", "third", &create)
        .await
        .expect("absent after delete");

    // if_match: a compare-and-swap on the context.
    let v1 = client.put("cas", "1").await.expect("put");
    let v2 = client
        .put_opts("cas", "2", &PutOptions::new().if_match(v1.clone()))
        .await
        .expect("the fresh context matches");
    let stale = PutOptions::new().if_match(v1.clone());
    let current = precondition_context(client.put_opts("cas", "lost", &stale).await);
    assert_eq!(current, v2);
    let strict = ReadOptions {
        r: Some(3),
        ..Default::default()
    };
    assert_eq!(
        client.get_with("cas", &strict).await.expect("get").value(),
        Some(&Bytes::from("2"))
    );
    client
        .put_opts("cas", "3", &PutOptions::new().if_match(current))
        .await
        .expect("the context from the failure matches");
    assert_eq!(
        client.get_with("cas", &strict).await.expect("get").value(),
        Some(&Bytes::from("3"))
    );
    // Deletes take if_match too.
    let stale_delete = WriteOptions {
        if_match: Some(v1),
        ..WriteOptions::default()
    };
    precondition_context(client.delete_with("cas", &stale_delete).await);
    assert!(client.get("cas").await.expect("get").is_found());
    // Both conditions at once is a malformed request.
    let both = PutOptions::new().if_absent().if_match(v2);
    assert!(matches!(
        client.put_opts("cas", "x", &both).await,
        Err(Error::InvalidInput(_))
    ));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_walks_sorted_pages_of_live_keys() {
    let c = TestCluster::start(3).await;
    let client = Client::new((0..3).map(|i| c.url(i))).expect("client");
    let keys: Vec<String> = (0..120).map(|i| format!("ls/{i}")).collect();
    futures_util::future::try_join_all(keys.iter().map(|k| client.put(k, "v")))
        .await
        .expect("puts");
    // Keys next to the prefix but not under it, and keys that need escaping in a query.
    for k in ["ls", "ls-x", "lt/1", "q&a=1/x", "q&a=1/y", "q&b"] {
        client.put(k, "v").await.expect("put");
    }
    let deleted = ["ls/0", "ls/7", "ls/50", "ls/99", "ls/119"];
    for k in deleted {
        client.delete(k).await.expect("delete");
    }
    let mut expected: Vec<String> = keys
        .iter()
        .filter(|k| !deleted.contains(&k.as_str()))
        .cloned()
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 115);

    assert_eq!(client.list_all("ls/").await.expect("list_all"), expected);

    // Page by page, with the cursor: the same keys, none twice, no page over the limit.
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client
            .list("ls/", after.as_deref(), 25)
            .await
            .expect("page");
        assert!(page.keys.len() <= 25, "{} keys", page.keys.len());
        pages += 1;
        walked.extend(page.keys);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 100, "the listing does not end");
    }
    assert_eq!(walked, expected);
    assert!(
        pages >= 5,
        "115 keys in pages of 25 take at least 5, got {pages}"
    );

    // The empty prefix lists everything.
    let mut all: Vec<String> = expected.clone();
    all.extend(["ls", "ls-x", "lt/1", "q&a=1/x", "q&a=1/y", "q&b"].map(String::from));
    all.sort();
    assert_eq!(client.list_all("").await.expect("list_all"), all);
    assert_eq!(
        client.list_all("q&a=1/").await.expect("list_all"),
        ["q&a=1/x", "q&a=1/y"]
    );
    let none = client.list("none/", None, 10).await.expect("list");
    assert!(none.keys.is_empty() && none.next.is_none(), "{none:?}");

    // A bad limit or cursor is the caller's error.
    assert!(matches!(
        client.list("ls/", None, 0).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        client.list("ls/", Some("not a cursor!"), 10).await,
        Err(Error::InvalidInput(_))
    ));
    c.shutdown().await;
}

/// The next event of `watch`, within 10 s.
async fn next_event(watch: &mut Watch) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("an event within 10 s")
        .expect("the watch is open")
        .expect("a valid event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_made_through_other_nodes() {
    let mut c = TestCluster::start_with(3, |cfg| {
        cfg.ttl_sweep_interval = Duration::from_millis(100);
    })
    .await;
    // A prefix that needs escaping in the query.
    let prefix = "w &=/";
    let key = format!("{prefix}a");
    // The first node is down: the watch is opened through the next one.
    let watcher = Client::new([closed_url().await, c.url(0)]).expect("client");
    let mut watch = watcher.watch(prefix).await.expect("watch");
    assert_eq!(watch.node(), c.url(0));

    let writer = Client::new([c.url(1), c.url(2)]).expect("client");
    writer.put("elsewhere", "x").await.expect("put");
    let put_ctx = writer.put(&key, "hello").await.expect("put");
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Put {
            key: key.clone(),
            value: Bytes::from("hello"),
            context: put_ctx,
        }
    );
    let del_ctx = writer.delete(&key).await.expect("delete");
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Delete {
            key: key.clone(),
            context: del_ctx,
        }
    );

    // An expiry, announced after the sweep of the key's first home. Watch is a Stream too.
    let short = format!("{prefix}ttl");
    let opts = PutOptions::new().ttl(Duration::from_secs(1));
    let ctx = writer.put_opts(&short, "brief", &opts).await.expect("put");
    let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .expect("open")
        .expect("valid");
    assert_eq!(
        ev,
        WatchEvent::Put {
            key: short.clone(),
            value: Bytes::from("brief"),
            context: ctx,
        }
    );
    c.advance_clocks(Duration::from_secs(1));
    match next_event(&mut watch).await {
        WatchEvent::Expire { key, .. } => assert_eq!(key, short),
        other => panic!("expected the expiry of {short}, got {other:?}"),
    }
    watch.close().await.expect("close");

    // No node to watch through: unreachable.
    let nobody = Client::new([closed_url().await]).expect("client");
    assert!(matches!(
        nobody.watch("x").await,
        Err(Error::Unreachable(_))
    ));

    // The stream ends when its node goes away.
    let mut watch = Client::new([c.url(2)])
        .expect("client")
        .watch("")
        .await
        .expect("watch");
    c.kill(2).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = watch.recv().await {
            if let Ok(ev) = item {
                assert!(!matches!(ev, WatchEvent::Lagged { .. }), "{ev:?}");
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch did not end when its node stopped");
    c.shutdown().await;
}

/// Runs the real binary with `args` (no `RINGKV_*` variable inherited), optional stdin.
async fn ringkv(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RINGKV_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn ringkv");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).await.expect("write stdin");
    }
    drop(input);
    tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("ringkv {args:?} did not finish"))
        .expect("ringkv ran")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_put_get_del_and_exit_codes() {
    let c = TestCluster::start(3).await;
    let env_node = c.url(0);
    let env = [("RINGKV_NODE", env_node.as_str())];

    // put prints nothing; get prints the value exactly (stdout is a pipe: no newline).
    let put = ringkv(&["put", "a", "1"], &env, None).await;
    assert_eq!(code(&put), 0, "{put:?}");
    assert!(put.stdout.is_empty());
    let get = ringkv(&["get", "a"], &env, None).await;
    assert_eq!((code(&get), get.stdout.as_slice()), (0, &b"1"[..]));
    // --node wins over RINGKV_NODE.
    let other = c.url(2);
    let get = ringkv(&["get", "a", "--node", &other], &[], None).await;
    assert_eq!((code(&get), get.stdout.as_slice()), (0, &b"1"[..]));

    // 1: not found, before and after a delete.
    let missing = ringkv(&["get", "nope"], &env, None).await;
    assert_eq!(code(&missing), 1);
    assert!(missing.stdout.is_empty());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let del = ringkv(&["del", "a"], &env, None).await;
    assert_eq!(code(&del), 0, "{del:?}");
    assert!(del.stdout.is_empty());
    assert_eq!(code(&ringkv(&["get", "a"], &env, None).await), 1);

    // 2: bad usage, caught by clap or by the node (bad context, r out of range).
    for args in [
        &["get"][..],
        &["put", "k"],
        &["put", "k", "v", "--file", "/dev/null"],
        &["put", "k", "--file", "/nonexistent/value"],
        &["put", "k", "v", "--context", "not-a-context"],
        &["get", "k", "--r", "9"],
        &["frobnicate"],
    ] {
        let out = ringkv(args, &env, None).await;
        assert_eq!(code(&out), 2, "ringkv {args:?}: {out:?}");
    }

    // 3: nothing listens at --node.
    let closed = closed_url().await;
    for args in [
        &["get", "a"][..],
        &["put", "a", "1"],
        &["del", "a"],
        &["members"],
        &["replicas", "a"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--node", &closed]);
        let out = ringkv(&args, &[], None).await;
        assert_eq!(code(&out), 3, "ringkv {args:?}: {out:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_json_output_shapes() {
    let c = TestCluster::start(3).await;
    let node = c.url(1);
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--node".to_string(), node.clone()]);
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            ringkv(&all, &[], None).await
        }
    };

    let put = run(&["put", "j", "v", "--json"]).await;
    assert_eq!(code(&put), 0, "{put:?}");
    let put = json(&put);
    assert_eq!(put["key"], "j");
    assert!(put["context"].as_str().is_some_and(|s| !s.is_empty()));

    let get = run(&["get", "j", "--json"]).await;
    assert_eq!(code(&get), 0);
    let get = json(&get);
    assert_eq!(get["key"], "j");
    assert_eq!(get["siblings"], serde_json::json!([B64.encode("v")]));
    assert_eq!(get["context"], put["context"]);
    assert_eq!(
        get["content_types"],
        serde_json::json!(["application/octet-stream"])
    );
    assert_eq!(get["expires_at"], serde_json::Value::Null);

    let missing = run(&["get", "none", "--json"]).await;
    assert_eq!(code(&missing), 1);
    assert_eq!(
        json(&missing),
        serde_json::json!({
            "key": "none",
            "context": null,
            "siblings": [],
            "content_types": [],
            "expires_at": null,
        })
    );

    let members = run(&["members", "--json"]).await;
    assert_eq!(code(&members), 0);
    let members = json(&members)["members"].as_array().expect("array").clone();
    assert_eq!(members.len(), 3);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m["id"], c.id(i));
        assert_eq!(m["status"], "alive");
        assert_eq!(m["http"], c.node(i).http_addr().to_string());
        assert!(m["generation"].as_u64().is_some_and(|g| g > 0));
    }
    // Without --json: a header, one row per member with its build, and the active features.
    let table = run(&["members"]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap_or_default()
            .contains(ringkv::compat::VERSION)
    );
    assert!(table.ends_with("active features: zones\n"), "{table}");

    let replicas = run(&["replicas", "some/key", "--json"]).await;
    assert_eq!(code(&replicas), 0);
    let expected: Vec<String> = c.replicas(b"some/key").iter().map(|&i| c.id(i)).collect();
    let homes: Vec<serde_json::Value> = expected
        .iter()
        .map(|id| serde_json::json!({"id": id, "zone": "default"}))
        .collect();
    assert_eq!(
        json(&replicas),
        serde_json::json!({"key": "some/key", "replicas": homes})
    );
    let plain = run(&["replicas", "some/key"]).await;
    let lines: String = expected
        .iter()
        .map(|id| format!("{id} default\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), lines);

    let del = run(&["del", "j", "--json"]).await;
    assert_eq!(code(&del), 0);
    let del = json(&del);
    assert_eq!(del["key"], "j");
    assert!(del["context"].is_string());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_siblings_are_listed_and_resolved_with_the_context() {
    let c = TestCluster::start(3).await;
    let node = c.url(0);
    let env = [("RINGKV_NODE", node.as_str())];
    let base = json(&ringkv(&["put", "s", "base", "--json"], &env, None).await);
    let ctx = base["context"].as_str().expect("context").to_string();
    for v in ["left", "right"] {
        let out = ringkv(&["put", "s", v, "--context", &ctx], &env, None).await;
        assert_eq!(code(&out), 0, "{out:?}");
    }
    let get = ringkv(&["get", "s"], &env, None).await;
    assert_eq!(code(&get), 0);
    let text = String::from_utf8_lossy(&get.stdout).into_owned();
    assert!(text.starts_with("2 siblings:\n"), "{text}");
    assert!(
        text.contains("\"left\"") && text.contains("\"right\""),
        "{text}"
    );
    let ctx = text
        .lines()
        .find_map(|l| l.strip_prefix("context: "))
        .unwrap_or_else(|| panic!("no context line in {text}"))
        .to_string();
    let out = ringkv(&["put", "s", "merged", "--context", &ctx], &env, None).await;
    assert_eq!(code(&out), 0, "{out:?}");
    let get = ringkv(&["get", "s"], &env, None).await;
    assert_eq!(get.stdout, b"merged");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_put_file_round_trips_binary() {
    let c = TestCluster::start(3).await;
    let node = c.url(2);
    let env = [("RINGKV_NODE", node.as_str())];
    let value: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("client-test-value-{}.bin", std::process::id()));
    std::fs::write(&path, &value).expect("write value file");
    let file = path.to_string_lossy().into_owned();
    let put = ringkv(&["put", "bin", "--file", &file], &env, None).await;
    let _ = std::fs::remove_file(&path);
    assert_eq!(code(&put), 0, "{put:?}");
    let get = ringkv(&["get", "bin"], &env, None).await;
    assert_eq!(code(&get), 0);
    assert!(get.stdout == value, "stdout has the exact bytes");
    let get = json(&ringkv(&["get", "bin", "--json"], &env, None).await);
    let sibling = get["siblings"][0].as_str().expect("base64");
    assert_eq!(B64.decode(sibling).expect("base64"), value);

    // `--file -` reads stdin.
    let put = ringkv(&["put", "stdin", "--file", "-"], &env, Some(&value[..300])).await;
    assert_eq!(code(&put), 0, "{put:?}");
    let get = ringkv(&["get", "stdin"], &env, None).await;
    assert_eq!(get.stdout, &value[..300]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_leave_decommissions_a_node() {
    let mut c = TestCluster::start(4).await;
    let http = Http::new();
    for i in 0..50 {
        let put = http
            .put(&format!("{}/kv/leave-{i}", c.url(i % 4)), format!("v{i}"))
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT);
    }
    let leaver = 3;
    let url = c.url(leaver);
    let cli = tokio::spawn(async move { ringkv(&["leave", "--node", &url], &[], None).await });
    tokio::time::timeout(Duration::from_secs(60), c.node(leaver).left())
        .await
        .expect("the node hands over within 60 s");
    // In-process, the node does not exit by itself: stop it as `ringkv serve` would.
    c.kill(leaver).await;
    let out = cli.await.expect("cli task");
    assert_eq!(code(&out), 0, "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("is leaving"), "{text}");
    assert!(text.contains("has left the ring"), "{text}");
    wait_until(Duration::from_secs(10), "every key readable", || async {
        let mut all = true;
        for i in 0..50 {
            let got = http.get(&format!("{}/kv/leave-{i}", c.url(i % 3))).await;
            all &= got.status == StatusCode::OK && got.body == format!("v{i}");
        }
        all
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_closed_and_open_loop() {
    let c = TestCluster::start(3).await;
    let (a, b, n3) = (c.url(0), c.url(1), c.url(2));
    let nodes = format!("{a},{b}");

    // Closed loop, nodes given comma-separated and repeated, prefilled so GETs find values.
    let out = ringkv(
        &[
            "bench",
            "--node",
            &nodes,
            "--node",
            &n3,
            "--duration",
            "1s",
            "--json",
            "--prefill",
            "--keys",
            "200",
            "-c",
            "4",
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(code(&out), 0, "{out:?}");
    let s = json(&out);
    assert_eq!(s["mode"], "closed");
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(3));
    let ops = s["ops"].as_u64().expect("ops");
    assert!(ops > 0, "{s}");
    assert_eq!(s["errors"]["total"], 0, "{s}");
    assert_eq!(
        s["gets"].as_u64().unwrap() + s["puts"].as_u64().unwrap(),
        ops
    );
    assert_eq!(s["not_found"], 0, "prefilled keys are found: {s}");
    assert_eq!(s["prefill"]["keys"], 200);
    assert_eq!(s["prefill"]["errors"]["total"], 0, "{s}");
    let l = &s["latency_us"]["all"];
    let p: Vec<u64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|q| l[q].as_u64().expect("percentile"))
        .collect();
    assert!(p[0] > 0 && p.windows(2).all(|w| w[0] <= w[1]), "{l}");

    // Open loop at 200 ops/s for 1 s, zipfian keys: at most the 200 scheduled operations.
    let out = ringkv(
        &[
            "bench",
            "--node",
            &a,
            "--duration",
            "1s",
            "--json",
            "--rate",
            "200",
            "--dist",
            "zipf",
            "--reads",
            "90",
            "-c",
            "4",
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(code(&out), 0, "{out:?}");
    let s = json(&out);
    assert_eq!(s["mode"], "open");
    let ops = s["ops"].as_u64().expect("ops");
    assert!((100..=200).contains(&ops), "{s}");
    assert_eq!(s["errors"]["total"], 0, "{s}");
    assert_eq!(ops + s["missed"].as_u64().expect("missed"), 200, "{s}");

    // The table, and the progress line on stderr.
    let out = ringkv(
        &["bench", "--node", &a, "--duration", "1500ms", "-c", "2"],
        &[],
        None,
    )
    .await;
    assert_eq!(code(&out), 0, "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    for word in [
        "ringkv bench",
        "p99.9 ms",
        "all",
        "get",
        "put",
        "errors: none",
    ] {
        assert!(table.contains(word), "{word:?} missing from {table}");
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ops/s"),
        "{out:?}"
    );

    // Nothing to connect to: unavailable.
    let closed = closed_url().await;
    let out = ringkv(&["bench", "--node", &closed, "--duration", "1s"], &[], None).await;
    assert_eq!(code(&out), 3, "{out:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ls_walks_every_page() {
    let c = TestCluster::start(3).await;
    let client = Client::new((0..3).map(|i| c.url(i))).expect("client");
    // More keys than one page of 1000.
    let keys: Vec<String> = (0..1100).map(|i| format!("p/{i:04}")).collect();
    for chunk in keys.chunks(100) {
        futures_util::future::try_join_all(chunk.iter().map(|k| client.put(k, "v")))
            .await
            .expect("puts");
    }
    client.put("q/other", "v").await.expect("put");
    let deleted = ["p/0000", "p/0999", "p/1000"];
    for k in deleted {
        client.delete(k).await.expect("delete");
    }
    let expected: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| !deleted.contains(k))
        .collect();
    let node = c.url(1);
    let env = [("RINGKV_NODE", node.as_str())];
    let lines = |out: &Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };

    let out = ringkv(&["ls", "--prefix", "p/"], &env, None).await;
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(out.stdout.ends_with(b"\n"));
    assert_eq!(lines(&out), expected);
    let out = ringkv(&["ls", "--prefix", "p/", "--json"], &env, None).await;
    assert_eq!(code(&out), 0, "{out:?}");
    assert_eq!(json(&out), serde_json::json!({ "keys": expected }));

    // --limit stops early, across a page boundary too.
    let out = ringkv(&["ls", "--prefix", "p/", "--limit", "3"], &env, None).await;
    assert_eq!(lines(&out), expected[..3]);
    let out = ringkv(&["ls", "--prefix", "p/", "--limit", "1001"], &env, None).await;
    assert_eq!(lines(&out), expected[..1001]);
    let out = ringkv(&["ls", "--limit", "2", "--json"], &env, None).await;
    assert_eq!(json(&out), serde_json::json!({ "keys": expected[..2] }));

    // No prefix: every key.
    let out = ringkv(&["ls"], &env, None).await;
    let all = lines(&out);
    assert_eq!(all.len(), expected.len() + 1);
    assert_eq!(all.last().map(String::as_str), Some("q/other"));

    let out = ringkv(&["ls", "--prefix", "none/"], &env, None).await;
    assert_eq!((code(&out), out.stdout.as_slice()), (0, &b""[..]));
    let out = ringkv(&["ls", "--prefix", "none/", "--json"], &env, None).await;
    assert_eq!(json(&out), serde_json::json!({ "keys": [] }));
    assert_eq!(code(&ringkv(&["ls", "--limit", "0"], &env, None).await), 2);
    let closed = closed_url().await;
    assert_eq!(
        code(&ringkv(&["ls", "--node", &closed], &[], None).await),
        3
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_put_ttl_content_type_output_and_conditions() {
    let c = TestCluster::start(3).await;
    let node = c.url(0);
    let env = [("RINGKV_NODE", node.as_str())];
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let pid = std::process::id();
    let input = dir.join(format!("cli-put-in-{pid}.json"));
    let output = dir.join(format!("cli-get-out-{pid}.bin"));
    let _ = std::fs::remove_file(&output);
    let value: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    std::fs::write(&input, &value).expect("write input");
    let input_s = input.to_string_lossy().into_owned();
    let output_s = output.to_string_lossy().into_owned();

    // --file with --ttl and --content-type.
    let before = SystemTime::now();
    let put = ringkv(
        &[
            "put",
            "img",
            "--file",
            &input_s,
            "--content-type",
            "image/png",
            "--ttl",
            "3",
        ],
        &env,
        None,
    )
    .await;
    assert_eq!(code(&put), 0, "{put:?}");
    let get = json(&ringkv(&["get", "img", "--json"], &env, None).await);
    assert_eq!(get["content_types"], serde_json::json!(["image/png"]));
    let expires = get["expires_at"].as_str().expect("an expiry");
    let expires = humantime::parse_rfc3339(expires).expect("RFC 3339");
    let three = Duration::from_secs(3);
    assert!(
        expires + Duration::from_millis(1) > before + three && expires <= SystemTime::now() + three,
        "{get}"
    );
    // --output writes the exact bytes, and nothing on stdout.
    let got = ringkv(&["get", "img", "--output", &output_s], &env, None).await;
    assert_eq!(code(&got), 0, "{got:?}");
    assert!(got.stdout.is_empty());
    assert!(std::fs::read(&output).expect("output") == value);
    std::fs::remove_file(&output).expect("remove output");

    // A .json file without --content-type: nothing is guessed.
    let put = ringkv(&["put", "raw", "--file", &input_s], &env, None).await;
    assert_eq!(code(&put), 0, "{put:?}");
    let get = json(&ringkv(&["get", "raw", "--json"], &env, None).await);
    assert_eq!(
        get["content_types"],
        serde_json::json!(["application/octet-stream"])
    );
    assert_eq!(get["expires_at"], serde_json::Value::Null);

    // The TTL runs out (by the nodes' clocks, moved on): not found (1), and --output then
    // writes nothing.
    c.advance_clocks(three);
    assert!(clock_time(&c, 0) >= expires);
    let gone = ringkv(&["get", "img"], &env, None).await;
    assert_eq!(code(&gone), 1, "{gone:?}");
    let got = ringkv(&["get", "img", "--output", &output_s], &env, None).await;
    assert_eq!(code(&got), 1, "{got:?}");
    assert!(!output.exists());

    // --if-absent: 4 the second time, with the current context on stderr.
    let first = ringkv(&["put", "once", "a", "--if-absent"], &env, None).await;
    assert_eq!(code(&first), 0, "{first:?}");
    let second = ringkv(&["put", "once", "b", "--if-absent"], &env, None).await;
    assert_eq!(code(&second), 4, "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr).into_owned();
    assert!(stderr.contains("precondition failed"), "{stderr}");
    let current = stderr
        .lines()
        .find_map(|l| l.strip_prefix("current context: "))
        .unwrap_or_else(|| panic!("no context in {stderr}"))
        .to_string();
    // --if-match with that context wins once; then it is stale.
    let swap = ringkv(&["put", "once", "c", "--if-match", &current], &env, None).await;
    assert_eq!(code(&swap), 0, "{swap:?}");
    let stale = ringkv(&["put", "once", "d", "--if-match", &current], &env, None).await;
    assert_eq!(code(&stale), 4, "{stale:?}");
    let stale = ringkv(&["del", "once", "--if-match", &current], &env, None).await;
    assert_eq!(code(&stale), 4, "{stale:?}");
    let get = ringkv(&["get", "once"], &env, None).await;
    assert_eq!((code(&get), get.stdout.as_slice()), (0, &b"c"[..]));

    // get --output with siblings: 4, nothing written.
    let base = json(&ringkv(&["put", "sib", "base", "--json"], &env, None).await);
    let ctx = base["context"].as_str().expect("context").to_string();
    for v in ["x", "y"] {
        let out = ringkv(&["put", "sib", v, "--context", &ctx], &env, None).await;
        assert_eq!(code(&out), 0, "{out:?}");
    }
    let got = ringkv(&["get", "sib", "--output", &output_s], &env, None).await;
    assert_eq!(code(&got), 4, "{got:?}");
    assert!(!output.exists());

    // Usage errors.
    for args in [
        &["put", "k", "v", "--ttl", "0"][..],
        &["put", "k", "v", "--ttl", "soon"],
        &["put", "k", "v", "--if-absent", "--if-match", &current],
        &["put", "k", "v", "--if-match", "not-a-context"],
        &["get", "k", "--json", "--output", &output_s],
    ] {
        let out = ringkv(args, &env, None).await;
        assert_eq!(code(&out), 2, "ringkv {args:?}: {out:?}");
    }
    let _ = std::fs::remove_file(&input);
    c.shutdown().await;
}

/// A running `ringkv watch`: its stdout lines, and its stderr gathered in the background
/// (so that its last message is never written to a closed pipe).
struct WatchCli {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl WatchCli {
    /// Starts `ringkv watch` and waits until it says the watch is in place.
    async fn start(args: &[&str]) -> WatchCli {
        let mut cmd = tokio::process::Command::new(BIN);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RINGKV_") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ringkv watch");
        let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let first = tokio::time::timeout(CLI_TIMEOUT, err.next_line())
            .await
            .expect("ringkv watch starts")
            .expect("stderr")
            .unwrap_or_default();
        assert!(first.contains("watching"), "{first}");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            while let Ok(Some(line)) = err.next_line().await {
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        WatchCli {
            child,
            lines,
            stderr,
        }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("a line within 10 s")
            .expect("stdout")
            .expect("not closed")
    }

    async fn exit_code(mut self) -> (i32, String) {
        let status = tokio::time::timeout(CLI_TIMEOUT, self.child.wait())
            .await
            .expect("ringkv watch exits")
            .expect("wait");
        let stderr = self.stderr.await.expect("stderr task");
        (status.code().expect("exited, not killed"), stderr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_watch_prints_each_change() {
    let mut c = TestCluster::start(3).await;
    let node = c.url(0);
    let mut raw = WatchCli::start(&["watch", "cw/", "--json", "--node", &node]).await;
    let mut human = WatchCli::start(&["watch", "cw/", "--node", &node]).await;

    let writer = Client::new([c.url(1)]).expect("client");
    writer.put("other/k", "x").await.expect("put");
    let put_ctx = writer.put("cw/k", "hello").await.expect("put");
    let del_ctx = writer.delete("cw/k").await.expect("delete");

    let put: serde_json::Value = serde_json::from_str(&raw.line().await).expect("JSON");
    assert_eq!(
        put,
        serde_json::json!({
            "op": "put",
            "key": "cw/k",
            "value": B64.encode("hello"),
            "context": put_ctx.as_str(),
        })
    );
    let del: serde_json::Value = serde_json::from_str(&raw.line().await).expect("JSON");
    assert_eq!(
        del,
        serde_json::json!({"op": "delete", "key": "cw/k", "context": del_ctx.as_str()})
    );
    assert_eq!(human.line().await, r#"put cw/k = "hello""#);
    assert_eq!(human.line().await, "delete cw/k");

    // Ctrl-C ends it cleanly.
    let pid = human.child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let (code, stderr) = human.exit_code().await;
    assert_eq!(code, 0, "{stderr}");

    // Its node going away ends it as unavailable.
    c.kill(0).await;
    let (code, stderr) = raw.exit_code().await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("closed"), "{stderr}");
    c.shutdown().await;
}

/// Key-aware routing: given one node, the client learns the ring and sends each write to the
/// key's coordinator, so no write is forwarded; when that node dies, writes still succeed
/// through the given node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_straight_to_their_coordinator() {
    let mut c = TestCluster::start(5).await;
    let forwarded = |c: &TestCluster| -> u64 {
        c.up()
            .iter()
            .map(|&i| c.node(i).node().stats().snapshot().writes_forwarded)
            .sum()
    };
    let routed = Client::new([c.url(0)]).expect("client");
    for i in 0..200 {
        routed.put(format!("routed-{i}"), "v").await.expect("put");
    }
    for i in 0..200 {
        let got = routed.get(format!("routed-{i}")).await.expect("get");
        assert_eq!(got.value(), Some(&Bytes::from("v")));
    }
    assert_eq!(forwarded(&c), 0, "a routed write took the extra hop");
    // Without routing, through one node, about 3/5 of the writes are forwarded (n1 is the
    // first home of about 1/5 of the keys, and 2/5 more land elsewhere first).
    let given = given_nodes([c.url(0)]);
    for i in 0..200 {
        given.put(format!("given-{i}"), "v").await.expect("put");
    }
    assert!(forwarded(&c) > 50, "forwarded {}", forwarded(&c));

    // A home dies: routed writes to its keys fall back to the given node and succeed.
    let victim = 3;
    c.kill(victim).await;
    for i in 0..100 {
        routed
            .put(format!("after-{i}"), "w")
            .await
            .expect("a routed put survives a dead home");
    }
    c.shutdown().await;
}
