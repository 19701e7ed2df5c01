//! Every client sees its 413, whatever the way it uploads a value over `--max-value-bytes`,
//! and its 507 when the node is over `--max-memory`.
//!
//! The clients here are raw TCP sockets that behave like Python's urllib or a shell script:
//! they write the whole request, body included, before reading a byte of the answer. A node
//! that answered early and closed with the rest of the body unread would make the kernel reset
//! the connection, and such a client would see a broken pipe or a reset instead of the 413.
//! A client that sends `Expect: 100-continue` must get the 413 without sending the body.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Http, TestCluster};
use hyper::StatusCode;
use ringkv::memory::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `max_value_bytes` of the node in this file.
const LIMIT: usize = 1024 * 1024;

/// The size of the rejected uploads: twice the limit, as a client that got the limit wrong
/// might send.
const UPLOAD: usize = 2 * LIMIT;

/// Fresh connections tried per kind of upload: one reset in a few runs would fail the test.
const ROUNDS: usize = 20;

/// How long one exchange may take before the test gives up on it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// The clients' socket send buffer. Over loopback a client's whole body fits in the kernel's
/// buffers at once, so its writes finish before any early answer could reset them; a client on
/// a real link is still sending most of its body then. A small buffer reproduces that here.
const CLIENT_SEND_BUFFER: u32 = 64 * 1024;

/// One node that owns every key alone, so writes need nobody else.
async fn node() -> TestCluster {
    TestCluster::start_with(1, |c| {
        c.max_value_bytes = LIMIT;
        c.replicas = 1;
        c.read_quorum = 1;
        c.write_quorum = 1;
    })
    .await
}

/// `--max-memory` of the full node in this file.
const MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

/// What the full node "uses": just over its limit.
const FULL: u64 = MEMORY_LIMIT + 1;

/// One node like [`node`], over its memory limit: its gauge reads `used`, which a test may
/// change.
async fn full_node(used: Arc<AtomicU64>) -> TestCluster {
    TestCluster::start_with(1, move |c| {
        c.max_value_bytes = LIMIT;
        c.replicas = 1;
        c.read_quorum = 1;
        c.write_quorum = 1;
        c.max_memory = MEMORY_LIMIT;
        let used = used.clone();
        c.memory_gauge = Gauge::from_source(Arc::new(move || Some(used.load(Ordering::Relaxed))));
    })
    .await
}

/// An answer read off a raw socket.
#[derive(Debug)]
struct RawReply {
    status_line: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Everything received, for the messages of failed assertions.
    raw_head: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts a 413 with a JSON `error` string and the limit, on a closing connection.
    #[track_caller]
    fn assert_413(&self, what: &str) {
        let body = self.assert_refused("413", what);
        assert_eq!(body["limit"], LIMIT, "{what}: {body}");
    }

    /// Asserts a 507 `memory_full` with the node's use and limit, on a closing connection.
    #[track_caller]
    fn assert_507(&self, what: &str) {
        let body = self.assert_refused("507", what);
        assert_eq!(body["kind"], "memory_full", "{what}: {body}");
        assert_eq!(body["limit"], MEMORY_LIMIT, "{what}: {body}");
        assert!(
            body["used"].as_u64().is_some_and(|u| u > 0),
            "{what}: {body}"
        );
    }

    /// Asserts a `status` answer with a JSON `error` string on a closing connection, and
    /// returns its body.
    #[track_caller]
    fn assert_refused(&self, status: &str, what: &str) -> serde_json::Value {
        assert!(
            self.status_line.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: not a {status}: {}",
            self.raw_head
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}: {}",
            self.raw_head
        );
        assert_eq!(
            self.header("connection"),
            Some("close"),
            "{what}: a refusal closes the connection: {}",
            self.raw_head
        );
        let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{what}: body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        assert!(
            body["error"].as_str().is_some_and(|s| !s.is_empty()),
            "{what}: no string \"error\" field: {body}"
        );
        body
    }
}

/// Writes `head` and then `body` on a fresh connection, without reading anything until both
/// are written (or the write fails), then reads one answer. Any I/O error, on the write or
/// the read, is returned as the outcome: it is what a urllib client would have seen.
async fn exchange(addr: SocketAddr, head: &[u8], body: &[u8]) -> std::io::Result<RawReply> {
    let attempt = async {
        let socket = TcpSocket::new_v4()?;
        socket.set_send_buffer_size(CLIENT_SEND_BUFFER)?;
        let mut conn = socket.connect(addr).await?;
        conn.write_all(head).await?;
        conn.write_all(body).await?;
        conn.flush().await?;
        read_reply(&mut conn).await
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| panic!("no answer within {EXCHANGE_TIMEOUT:?}"))
}

/// Reads one HTTP/1.1 response: the head, then a `content-length` body (the node sends no
/// chunked error bodies). A `100 Continue` interim answer is returned as it is, so a test can
/// see it was sent.
async fn read_reply(conn: &mut TcpStream) -> std::io::Result<RawReply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "closed before a complete head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let raw_head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = raw_head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {} of {length} body bytes", body.len()),
            ));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(RawReply {
        status_line,
        headers,
        body,
        raw_head,
    })
}

/// A PUT head for `/kv/{key}` with the given extra header lines (each ending in CRLF).
fn put_head(addr: SocketAddr, key: &str, extra: &str) -> Vec<u8> {
    format!("PUT /kv/{key} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n").into_bytes()
}

/// `value` as a chunked body of 64 KiB chunks, terminated.
fn chunked(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + value.len() / 8192 + 16);
    for piece in value.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Runs `ROUNDS` uploads and asserts every one was answered 413; the failure message lists
/// what each failed round saw instead.
async fn assert_every_round_413<F, Fut>(what: &str, round: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<RawReply>>,
{
    assert_every_round(what, RawReply::assert_413, round).await
}

/// Runs `ROUNDS` uploads and checks every answer with `check`.
async fn assert_every_round<F, Fut>(what: &str, check: fn(&RawReply, &str), mut round: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<RawReply>>,
{
    let mut failures = Vec::new();
    for i in 0..ROUNDS {
        match round(i).await {
            Ok(reply) => check(&reply, &format!("{what}, round {i}")),
            Err(err) => failures.push(format!("round {i}: {:?}: {err}", err.kind())),
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {ROUNDS} uploads saw no answer: {failures:#?}",
        failures.len()
    );
}

/// After the rejections the node still takes a value of exactly the limit, and stored none of
/// the rejected ones.
async fn assert_still_serves(c: &TestCluster, key: &str) {
    let http = Http::new();
    let rejected = http.get(&format!("{}/kv/{key}-0", c.url(0))).await;
    assert_eq!(rejected.status, StatusCode::NOT_FOUND, "{rejected:?}");
    let exact = vec![b'e'; LIMIT];
    let put = http.put(&format!("{}/kv/{key}", c.url(0)), exact).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    let got = http.get(&format!("{}/kv/{key}", c.url(0))).await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert_eq!(got.body.len(), LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_body_sent_before_reading_gets_413_every_time() {
    let c = node().await;
    let addr = c.node(0).http_addr();
    let value = vec![b'x'; UPLOAD];
    assert_every_round_413("Content-Length, no Expect", |i| {
        let head = put_head(
            addr,
            &format!("cl-{i}"),
            &format!("Content-Length: {UPLOAD}\r\n"),
        );
        let value = &value;
        async move { exchange(addr, &head, value).await }
    })
    .await;
    assert_still_serves(&c, "cl").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_sent_before_reading_gets_413_every_time() {
    let c = node().await;
    let addr = c.node(0).http_addr();
    let body = chunked(&vec![b'y'; UPLOAD]);
    assert_every_round_413("Transfer-Encoding: chunked", |i| {
        let head = put_head(addr, &format!("te-{i}"), "Transfer-Encoding: chunked\r\n");
        let body = &body;
        async move { exchange(addr, &head, body).await }
    })
    .await;
    assert_still_serves(&c, "te").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_over_the_limit_gets_413_without_the_body() {
    let c = node().await;
    let addr = c.node(0).http_addr();
    for i in 0..ROUNDS {
        // Only the head goes out: a client that sent `Expect: 100-continue` waits before the
        // body, so the node must answer from the head alone, and never with `100 Continue`.
        let head = put_head(
            addr,
            &format!("expect-{i}"),
            &format!("Content-Length: {UPLOAD}\r\nExpect: 100-continue\r\n"),
        );
        let reply = exchange(addr, &head, &[])
            .await
            .unwrap_or_else(|e| panic!("round {i}: {:?}: {e}", e.kind()));
        assert!(
            !reply.status_line.contains(" 100 "),
            "round {i}: the node asked for the body it is going to refuse: {}",
            reply.raw_head
        );
        reply.assert_413(&format!("Expect: 100-continue, round {i}"));
    }
    assert_still_serves(&c, "expect").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_mid_body_still_gets_its_413() {
    let c = node().await;
    let addr = c.node(0).http_addr();
    // Announces twice the limit, sends a bit more than the limit, then waits for the answer
    // with the connection open: the node must stop waiting for the rest and answer.
    let head = put_head(addr, "stalled", &format!("Content-Length: {UPLOAD}\r\n"));
    let reply = exchange(addr, &head, &vec![b'z'; LIMIT + LIMIT / 2])
        .await
        .unwrap_or_else(|e| panic!("{:?}: {e}", e.kind()));
    reply.assert_413("stalled mid-body");
    assert_still_serves(&c, "stalled").await;
    c.shutdown().await;
}

/// Every way of uploading gets the 507 of a node over its memory limit, before the body is
/// stored: Content-Length, chunked, `Expect: 100-continue` (without sending the body), and a
/// client that stalls mid-body. Reads, deletes and `/ready` go on, and once memory is freed
/// the same PUT is taken with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upload_to_a_full_node_gets_507_and_reads_and_deletes_go_on() {
    let used = Arc::new(AtomicU64::new(0));
    let c = full_node(used.clone()).await;
    let http = Http::new();
    let url = |k: &str| format!("{}/kv/{k}", c.url(0));
    assert_eq!(
        http.put(&url("kept"), "v").await.status,
        StatusCode::NO_CONTENT
    );
    used.store(FULL, Ordering::Relaxed);

    let addr = c.node(0).http_addr();
    let value = vec![b'm'; 4096];
    assert_every_round("507, Content-Length", RawReply::assert_507, |i| {
        let head = put_head(addr, &format!("m-cl-{i}"), "Content-Length: 4096\r\n");
        let value = &value;
        async move { exchange(addr, &head, value).await }
    })
    .await;
    let body = chunked(&value);
    assert_every_round("507, chunked", RawReply::assert_507, |i| {
        let head = put_head(addr, &format!("m-te-{i}"), "Transfer-Encoding: chunked\r\n");
        let body = &body;
        async move { exchange(addr, &head, body).await }
    })
    .await;
    let head = put_head(
        addr,
        "m-expect",
        "Content-Length: 4096\r\nExpect: 100-continue\r\n",
    );
    let reply = exchange(addr, &head, &[]).await.expect("an answer");
    assert!(!reply.status_line.contains(" 100 "), "{}", reply.raw_head);
    reply.assert_507("Expect: 100-continue");
    let head = put_head(addr, "m-stalled", "Content-Length: 4096\r\n");
    exchange(addr, &head, &value[..1000])
        .await
        .expect("an answer")
        .assert_507("stalled mid-body");

    // Reads, deletes (within their reserve) and readiness go on.
    let got = http.get(&url("kept")).await;
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"v"[..]));
    assert_eq!(http.get(&url("m-cl-0")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        http.delete(&url("kept")).await.status,
        StatusCode::NO_CONTENT
    );
    let ready = http.get(&format!("{}/ready", c.url(0))).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");

    // Counted and visible.
    let metrics = http.get(&format!("{}/metrics", c.url(0))).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(
        common::metric(&text, "ringkv_memory_limit_bytes"),
        MEMORY_LIMIT
    );
    assert!(common::metric(&text, "ringkv_memory_used_bytes") >= FULL);
    let refused = common::metric(&text, "ringkv_writes_refused_total{reason=\"memory\"}");
    assert!(refused >= 2 * ROUNDS as u64 + 2, "{refused}: {text}");

    // Freed memory admits writes again.
    used.store(MEMORY_LIMIT / 2, Ordering::Relaxed);
    assert_eq!(
        http.put(&url("again"), "v").await.status,
        StatusCode::NO_CONTENT
    );
    c.shutdown().await;
}

/// A body is refused from its `Content-Length` when it would take the node over its limit,
/// and concurrent uploads count together: while one admitted body is still arriving, a second
/// that fits alone but not beside it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_reserved_by_length_and_concurrent_uploads_count_together() {
    let used = Arc::new(AtomicU64::new(MEMORY_LIMIT - 600 * 1024));
    let c = full_node(used.clone()).await;
    let addr = c.node(0).http_addr();
    // 700 KiB would cross the limit: refused from the head.
    let head = put_head(addr, "big", &format!("Content-Length: {}\r\n", 700 * 1024));
    exchange(addr, &head, &vec![b'b'; 700 * 1024])
        .await
        .expect("an answer")
        .assert_507("over the limit by its length");
    // 400 KiB fits; start it, and hold back its last byte.
    let first_len = 400 * 1024;
    let socket = TcpSocket::new_v4().expect("socket");
    let mut first = socket.connect(addr).await.expect("connect");
    let head = put_head(addr, "first", &format!("Content-Length: {first_len}\r\n"));
    first.write_all(&head).await.expect("head");
    first
        .write_all(&vec![b'f'; first_len - 1])
        .await
        .expect("most of the body");
    // The node counts it as used while it arrives.
    let http = Http::new();
    common::wait_until(
        Duration::from_secs(10),
        "the first body is reserved",
        || {
            let http = http.clone();
            let url = format!("{}/admin/stats", c.url(0));
            async move {
                let stats = http.get(&url).await.json();
                stats["memory"]["used"].as_u64().unwrap_or(0)
                    >= MEMORY_LIMIT - 600 * 1024 + first_len as u64
            }
        },
    )
    .await;
    // A second 400 KiB fits alone, but not beside the first.
    let head = put_head(addr, "second", &format!("Content-Length: {first_len}\r\n"));
    exchange(addr, &head, &vec![b's'; first_len])
        .await
        .expect("an answer")
        .assert_507("beside a body still arriving");
    // The first completes and is stored.
    first.write_all(b"f").await.expect("last byte");
    let reply = read_reply(&mut first).await.expect("an answer");
    assert!(
        reply.status_line.starts_with("HTTP/1.1 204 "),
        "{}",
        reply.raw_head
    );
    let got = http.get(&format!("{}/kv/first", c.url(0))).await;
    assert_eq!(got.body.len(), first_len);
    c.shutdown().await;
}
