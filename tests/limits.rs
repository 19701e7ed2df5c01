//! Limits against exhaustion, on a real process: thousands of idle connections and slowloris
//! clients neither starve a normal client nor grow the node's memory without bound.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::process::ProcessNode;
use common::{Http, wait_until};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: usize = 5000;
const SLOWLORIS: usize = 50;
const CAP: usize = 1000;

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Waits until the server closes `stream` (EOF or reset), then counts it.
fn count_close(mut stream: TcpStream, closed: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        closed.fetch_add(1, Ordering::Relaxed);
    });
}

/// A gauge of the node's `/metrics`.
async fn gauge(http: &Http, base: &str, name: &str) -> u64 {
    match http.try_get(&format!("{base}/metrics")).await {
        Ok(r) => common::metric(&String::from_utf8_lossy(&r.body), name),
        Err(_) => u64::MAX,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_slowloris_do_not_starve_a_client() {
    let node = ProcessNode::start_with(
        "limits",
        &[],
        &[
            "--max-http-connections",
            &CAP.to_string(),
            "--http-header-timeout-secs",
            "5",
        ],
    )
    .await;
    let http = Http::new();
    // One node of a ring of N = 3 is never ready (no quorum), but it serves: writes at w=1.
    wait_until(Duration::from_secs(20), "the node serves HTTP", || async {
        http.try_get(&format!("{}/health", node.url()))
            .await
            .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    let before = rss_kib(node.pid());
    let closed = Arc::new(AtomicUsize::new(0));
    let slow_closed = Arc::new(AtomicUsize::new(0));
    let addr = node.http;

    // Slowloris clients, first, while the listen backlog is empty (a connection the kernel
    // drops from a full backlog never reaches the node, and would never see it close): a
    // request line and one header byte every 300 ms, never finishing.
    for _ in 0..SLOWLORIS {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let closed = slow_closed.clone();
        tokio::spawn(async move {
            let _ = stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if stream.write_all(b"a").await.is_err() {
                    break;
                }
                let mut probe = [0u8; 1];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
                {
                    break;
                }
            }
            closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    // Idle connections, opened 100 at a time so the listen backlog mostly keeps up.
    for batch in 0..IDLE / 100 {
        let opens = (0..100).map(|_| TcpStream::connect(addr));
        for res in futures_util::future::join_all(opens).await {
            let stream = res.unwrap_or_else(|e| panic!("connect in batch {batch}: {e}"));
            count_close(stream, closed.clone());
        }
    }
    let during = rss_kib(node.pid());

    // The node drops them all: past the cap at once, the rest at the header timeout. (The
    // node's own gauge decides: a few client-side connections may never have reached it, lost
    // by the kernel when the listen backlog overflowed during the burst.)
    wait_until(
        Duration::from_secs(30),
        "the node holds no idle or slowloris connection",
        || async {
            let open = gauge(&http, &node.url(), "ringkv_http_connections").await;
            let slow = slow_closed.load(Ordering::Relaxed);
            open <= 1 && slow == SLOWLORIS
        },
    )
    .await;
    let idle_closed = closed.load(Ordering::Relaxed);
    assert!(
        idle_closed >= IDLE * 95 / 100,
        "only {idle_closed} of {IDLE} idle connections saw the node close them"
    );
    // A normal client is served.
    let put = http
        .put(&format!("{}/kv/after-flood?w=1", node.url()), "ok")
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    let got = http
        .get(&format!("{}/kv/after-flood?r=1", node.url()))
        .await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    let after = rss_kib(node.pid());
    let metrics = http.get(&format!("{}/metrics", node.url())).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let refused = common::metric(&text, "ringkv_http_connections_refused_total");
    eprintln!(
        "RSS before {before} KiB, with {IDLE} idle + {SLOWLORIS} slowloris connections {during} KiB, \
         after {after} KiB; {refused} connections refused at the cap of {CAP}"
    );
    // Opening the flood takes a few seconds, within the header timeout: most of what is past
    // the cap is refused at once (slots freed by timeouts meanwhile let a few more in).
    assert!(
        refused >= (IDLE - CAP) as u64 / 2,
        "expected at least {} refusals, got {refused}",
        (IDLE - CAP) / 2
    );
    // Bounded: the cap holds at most CAP connections at about 10 KiB each, not 5,000.
    assert!(
        during.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} KiB to {during} KiB"
    );
}
