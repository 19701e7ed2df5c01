//! End-to-end quorum latency on an in-process five-node ring.
//!
//! Five nodes run in this process, as in `tests/common`: gossip over chitchat's in-memory
//! `ChannelTransport`, RPC and HTTP over real loopback TCP on port 0, default N = 3. Every
//! request enters at node 0, one at a time, with 100-byte values over 10k keys:
//!
//! - `coordinator/put/w=1..3`, `coordinator/get/r=1..3`: [`Coordinator::put`] and [`Coordinator::get`] on
//!   node 0's `Arc<Coordinator>`. Node 0 is a key's first home replica for about 1/5 of the keys;
//!   the other writes take one forwarding hop to the key's coordinator, as they would for a
//!   client talking to node 0.
//! - `http/put/w=..`, `http/get/r=..`: the same through node 0's HTTP API, over a keep-alive
//!   hyper client.
//!
//! The nodes run on a two-worker tokio runtime, so the numbers include a loaded machine's
//! scheduling; background work (replication past W, anti-entropy) shares those workers.
//!
//! `cargo bench --bench quorum` takes about a minute; `cargo bench --bench quorum -- http/get`
//! runs one group.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chitchat::transport::ChannelTransport;
use criterion::{Criterion, SamplingMode};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ringkv::coordinator::Coordinator;
use ringkv::membership::GossipConfig;
use ringkv::{Config, GossipTransport, NodeHandle};
use tokio::runtime::Runtime;

const NODES: usize = 5;
/// Keys the benchmarks cycle over.
const KEYS: usize = 10_000;
const VALUE_BYTES: usize = 100;
/// How long the ring may take to agree that every node is alive.
const CONVERGE: Duration = Duration::from_secs(30);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts `NODES` nodes sharing one channel transport and waits until every node's view has
/// every node alive and in its ring.
async fn start_ring() -> Vec<NodeHandle> {
    let transport = ChannelTransport::with_mtu(65_507);
    // Logical gossip addresses: the channel transport never opens a socket.
    let gossip: Vec<SocketAddr> = (0..NODES).map(|i| local(10_001 + i as u16)).collect();
    let mut handles = Vec::with_capacity(NODES);
    for (i, g) in gossip.iter().enumerate() {
        let mut cfg = Config::new(format!("n{}", i + 1), local(0), local(0), *g);
        cfg.seeds = gossip.iter().map(|a| a.to_string()).collect();
        cfg.gossip_config = GossipConfig {
            interval: Duration::from_millis(100),
            initial_interval: Duration::from_millis(100),
            ..GossipConfig::default()
        };
        let h = NodeHandle::start(cfg, GossipTransport::Channel(transport.clone()))
            .await
            .expect("node starts");
        handles.push(h);
    }
    let deadline = Instant::now() + CONVERGE;
    loop {
        let converged = handles.iter().all(|h| {
            let view = h.view();
            view.ring.nodes().len() == NODES
                && view.members.values().filter(|m| m.alive).count() == NODES
        });
        if converged {
            return handles;
        }
        assert!(
            Instant::now() < deadline,
            "the ring did not converge to {NODES} alive members within {CONVERGE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cycles over the key set.
struct Keys {
    keys: Vec<Bytes>,
    next: usize,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            keys: (0..KEYS)
                .map(|i| Bytes::from(format!("bench-{i:05}")))
                .collect(),
            next: 0,
        }
    }

    fn next(&mut self) -> Bytes {
        let key = self.keys[self.next].clone();
        self.next = (self.next + 1) % self.keys.len();
        key
    }
}

/// Writes every key at w = 3, so every read finds a value on every home replica.
async fn prefill(node: &Arc<Coordinator>, keys: &[Bytes], value: &Bytes) {
    futures_util::stream::iter(keys.iter().cloned())
        .map(|key| async move {
            node.put(key, Some(value.clone()), None, Some(3), None)
                .await
                .expect("prefill write")
        })
        .buffer_unordered(32)
        .for_each(|_| async {})
        .await;
}

async fn http_send(client: &HttpClient, method: Method, url: String, body: Bytes) -> StatusCode {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .expect("valid request");
    let resp = client.request(req).await.expect("HTTP request");
    let status = resp.status();
    // Read the body to the end so the connection goes back to the pool.
    resp.into_body().collect().await.expect("HTTP body");
    status
}

fn bench_coordinator(c: &mut Criterion, rt: &Runtime, node: &Arc<Coordinator>, value: &Bytes) {
    let mut keys = Keys::new();
    let mut group = c.benchmark_group("coordinator/put");
    group.sampling_mode(SamplingMode::Flat);
    for w in 1..=3 {
        group.bench_function(format!("w={w}"), |b| {
            b.to_async(rt).iter(|| {
                let (node, key, value) = (node.clone(), keys.next(), value.clone());
                async move {
                    node.put(key, Some(value), None, Some(w), None)
                        .await
                        .expect("put")
                }
            })
        });
    }
    group.finish();

    rt.block_on(prefill(node, &keys.keys, value));
    let mut group = c.benchmark_group("coordinator/get");
    group.sampling_mode(SamplingMode::Flat);
    for r in 1..=3 {
        group.bench_function(format!("r={r}"), |b| {
            b.to_async(rt).iter(|| {
                let (node, key) = (node.clone(), keys.next());
                async move {
                    let vs = node.get(key, Some(r)).await.expect("get");
                    assert_eq!(vs.live_values().count(), 1, "one value per key");
                    vs
                }
            })
        });
    }
    group.finish();
}

fn bench_http(c: &mut Criterion, rt: &Runtime, base: &str, value: &Bytes) {
    // The legacy client's connector spawns onto the ambient runtime.
    let client: HttpClient = {
        let _guard = rt.enter();
        Client::builder(TokioExecutor::new()).build_http()
    };
    let mut keys = Keys::new();
    let mut group = c.benchmark_group("http/put");
    group.sampling_mode(SamplingMode::Flat);
    for w in 1..=3 {
        group.bench_function(format!("w={w}"), |b| {
            b.to_async(rt).iter(|| {
                let url = format!(
                    "{base}/kv/{}?w={w}",
                    std::str::from_utf8(&keys.next()).expect("ASCII key")
                );
                let (client, value) = (client.clone(), value.clone());
                async move {
                    let status = http_send(&client, Method::PUT, url, value).await;
                    assert_eq!(status, StatusCode::NO_CONTENT, "PUT");
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("http/get");
    group.sampling_mode(SamplingMode::Flat);
    for r in 1..=3 {
        group.bench_function(format!("r={r}"), |b| {
            b.to_async(rt).iter(|| {
                let url = format!(
                    "{base}/kv/{}?r={r}",
                    std::str::from_utf8(&keys.next()).expect("ASCII key")
                );
                let client = client.clone();
                async move {
                    let status = http_send(&client, Method::GET, url, Bytes::new()).await;
                    assert_eq!(status, StatusCode::OK, "GET");
                }
            })
        });
    }
    group.finish();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();

    let handles = rt.block_on(start_ring());
    let node = handles[0].node().coordinator().clone();
    let base = format!("http://{}", handles[0].http_addr());
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);

    bench_coordinator(&mut c, &rt, &node, &value);
    bench_http(&mut c, &rt, &base, &value);

    rt.block_on(async {
        for h in handles {
            h.shutdown().await;
        }
    });
    c.final_summary();
}
