//! Graceful shutdown: a node stopped with SIGTERM semantics causes no client errors on the
//! others, and keeps its place in the ring.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Http, TestCluster, wait_until};
use hyper::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_node_causes_no_client_errors() {
    let mut c = TestCluster::start_with(5, |cfg| {
        cfg.handoff_interval = Duration::from_millis(100);
        cfg.anti_entropy_interval = Duration::from_millis(200);
    })
    .await;
    let urls: Vec<String> = (0..4).map(|i| c.url(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..4usize {
        let (urls, stop, ok) = (urls.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let http = Http::new();
            let mut errors = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let url = format!("{}/kv/k{}", urls[(client + n) % 4], n % 50);
                let reply = if n.is_multiple_of(2) {
                    http.put(&url, format!("c{client}-{n}")).await
                } else {
                    http.get(&url).await
                };
                match reply.status {
                    StatusCode::OK
                    | StatusCode::NO_CONTENT
                    | StatusCode::NOT_FOUND
                    | StatusCode::MULTIPLE_CHOICES => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => errors.push(format!("{url}: {} {:?}", reply.status, reply.body)),
                }
                n += 1;
            }
            errors
        }));
    }
    // Let traffic flow, then stop node 4 the graceful way while it continues.
    let before = ok.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(10), "traffic flowing", || async {
        ok.load(Ordering::Relaxed) > before + 200
    })
    .await;
    c.stop_gracefully(4).await;
    let after_stop = ok.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(10),
        "traffic after the stop",
        || async { ok.load(Ordering::Relaxed) > after_stop + 200 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let errors = client.await.unwrap();
        assert!(errors.is_empty(), "client errors: {errors:?}");
    }
    // The stopped node kept its place in the ring and comes back to its share.
    assert_eq!(c.node(0).view().ring.nodes().len(), 5);
    c.restart(4).await;
    c.wait_all_alive().await;
    c.shutdown().await;
}
