//! Test support: in-process clusters, and the tests' one raw HTTP client ([`http`]).
//!
//! A [`TestCluster`] runs several ringkv nodes in the test's own runtime. Gossip runs over
//! chitchat's in-memory `ChannelTransport` (one per cluster, so parallel tests never share
//! anything), RPC and HTTP over real loopback TCP on port 0. Nodes can be killed, restarted
//! empty with a new generation, and partitioned (gossip links and RPC links both cut).

#![allow(dead_code)]

pub mod http;
pub mod net;
pub mod process;
pub mod rolling;

// Not every test names both.
#[allow(unused_imports)]
pub use http::{Http, Reply};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chitchat::transport::ChannelTransport;
use ringkv::membership::GossipConfig;
use ringkv::{Config, GossipTransport, NodeHandle};

/// How long tests wait for a cluster to agree on membership.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// A set of in-process nodes.
pub struct TestCluster {
    transport: ChannelTransport,
    configs: Vec<Config>,
    nodes: Vec<Option<NodeHandle>>,
    /// Each node slot's side of the test network (kept across restarts).
    nets: Vec<net::TestNet>,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `pred` every 20 ms until it is true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut pred: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if pred().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestCluster {
    /// Starts `n` nodes with default settings and waits until all see each other alive.
    pub async fn start(n: usize) -> TestCluster {
        Self::start_with(n, |_| {}).await
    }

    /// Starts `n` nodes, letting `tweak` adjust each configuration.
    pub async fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> TestCluster {
        let transport = ChannelTransport::with_mtu(65_507);
        // Gossip addresses are logical: the channel transport never opens a real socket.
        let gossip: Vec<SocketAddr> = (0..n).map(|i| local(10_001 + i as u16)).collect();
        let mut configs = Vec::new();
        for (i, g) in gossip.iter().enumerate() {
            let mut cfg = Config::new(format!("n{}", i + 1), local(0), local(0), *g);
            cfg.seeds = gossip.iter().map(|a| a.to_string()).collect();
            cfg.gossip_config = GossipConfig {
                interval: Duration::from_millis(100),
                initial_interval: Duration::from_millis(100),
                ..GossipConfig::default()
            };
            tweak(&mut cfg);
            configs.push(cfg);
        }
        let mut cluster = TestCluster {
            transport,
            // One network per node: `vec![x; n]` would clone one shared link table.
            nets: (0..configs.len())
                .map(|_| net::TestNet::default())
                .collect(),
            configs,
            nodes: Vec::new(),
        };
        for i in 0..n {
            let h = cluster.boot(i).await;
            cluster.nodes.push(Some(h));
        }
        cluster.wait_all_alive().await;
        cluster
    }

    async fn boot(&self, i: usize) -> NodeHandle {
        NodeHandle::start_with(
            self.configs[i].clone(),
            GossipTransport::Channel(self.transport.clone()),
            std::sync::Arc::new(self.nets[i].clone()),
        )
        .await
        .expect("node starts")
    }

    /// Cuts (or restores) node `x`'s RPC connections to the RPC address `to`.
    pub fn block_rpc(&self, x: usize, to: SocketAddr, blocked: bool) {
        self.nets[x].set_cut(to, blocked);
    }

    /// Starts one more node (id `n{len+1}`) configured like node 0, seeded with every other
    /// node, and returns its index. It joins the ring; callers wait for what they need.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let mut cfg = self.configs[0].clone();
        cfg.id = format!("n{}", i + 1);
        cfg.gossip = local(10_001 + i as u16);
        cfg.http = local(0);
        cfg.rpc = local(0);
        cfg.seeds = self.configs.iter().map(|c| c.gossip.to_string()).collect();
        // A clock of its own (a clone would share node 0's), reading what node 0's reads.
        cfg.clock = ringkv::clock::Clock::skewed(self.configs[0].clock.offset_ms());
        self.configs.push(cfg);
        self.nets.push(net::TestNet::default());
        let h = self.boot(i).await;
        self.nodes.push(Some(h));
        i
    }

    /// Node `i`'s wall clock, the one it judges TTL expiry by (kept across restarts).
    pub fn clock(&self, i: usize) -> &ringkv::clock::Clock {
        &self.configs[i].clock
    }

    /// Moves every node's wall clock `by` forward, as if that much time had passed for TTLs:
    /// TTL tests expire values this way instead of sleeping. Gossip, timeouts and tombstone
    /// ages run on monotonic time and do not move.
    pub fn advance_clocks(&self, by: Duration) {
        for cfg in &self.configs {
            cfg.clock.advance(by);
        }
    }

    /// Number of node slots (dead or alive).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s handle; panics if it is down.
    pub fn node(&self, i: usize) -> &NodeHandle {
        self.nodes[i].as_ref().expect("node is up")
    }

    /// Node `i`'s id (`n1`, `n2`, …).
    pub fn id(&self, i: usize) -> String {
        self.configs[i].id.clone()
    }

    /// Index of the node with this id.
    pub fn index_of(&self, id: &str) -> usize {
        self.configs
            .iter()
            .position(|c| c.id == id)
            .expect("known id")
    }

    /// Base URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.node(i).http_addr())
    }

    /// Indices of nodes that are up.
    pub fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// Stops node `i` abruptly (listeners and connections dropped, memory lost).
    pub async fn kill(&mut self, i: usize) {
        if let Some(h) = self.nodes[i].take() {
            h.shutdown().await;
        }
    }

    /// Stops node `i` the way SIGTERM does: announced, drained, hints pushed.
    pub async fn stop_gracefully(&mut self, i: usize) {
        if let Some(h) = self.nodes[i].take() {
            h.shutdown_gracefully(Duration::from_secs(10)).await;
        }
    }

    /// Restarts node `i` empty, with a new generation.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i).await;
        let h = self.boot(i).await;
        self.nodes[i] = Some(h);
    }

    /// True if every up node sees exactly the up nodes alive (at their current generation).
    pub fn agrees(&self) -> bool {
        let up = self.up();
        up.iter().all(|&i| {
            let view = self.node(i).view();
            (0..self.nodes.len()).all(|j| {
                let id = self.id(j);
                match &self.nodes[j] {
                    Some(h) => {
                        view.is_alive(&id)
                            && view.member(&id).map(|m| m.generation)
                                == Some(h.node().system().actor().generation)
                    }
                    None => !view.is_alive(&id),
                }
            })
        })
    }

    /// Waits until every up node agrees on who is alive.
    pub async fn wait_all_alive(&self) {
        wait_until(CONVERGE, "membership to converge", || async {
            self.agrees()
        })
        .await;
    }

    /// Cuts gossip and RPC between every node of `a` and every node of `b`, both ways.
    pub async fn partition(&self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cut(x, y).await;
                self.cut(y, x).await;
            }
        }
    }

    /// Cuts the link from `x` to `y` only (gossip and RPC requests from x to y).
    pub async fn cut(&self, x: usize, y: usize) {
        let gx = self.configs[x].gossip;
        let gy = self.configs[y].gossip;
        self.transport.remove_link(gx, gy).await;
        if let Some(hy) = &self.nodes[y] {
            self.block_rpc(x, hy.rpc_addr(), true);
        }
    }

    /// Restores every link between every pair of up nodes.
    pub async fn heal(&self) {
        for x in 0..self.nodes.len() {
            for y in 0..self.nodes.len() {
                if x == y {
                    continue;
                }
                self.transport
                    .add_link(self.configs[x].gossip, self.configs[y].gossip)
                    .await;
                if let Some(hy) = &self.nodes[y] {
                    self.block_rpc(x, hy.rpc_addr(), false);
                }
            }
        }
    }

    /// The key's home replicas as node indices, in preference order.
    pub fn replicas(&self, key: &[u8]) -> Vec<usize> {
        let up = self.up()[0];
        self.node(up)
            .node()
            .system()
            .replicas_of(key)
            .iter()
            .map(|id| self.index_of(id))
            .collect()
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i).await;
        }
    }
}

/// The value of metric `name` (a whole line's first word) in OpenMetrics `text`; 0 if absent.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A fresh directory under the target's tmp dir, removed on drop unless the test failed.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("data-dirs")
            .join(format!(
                "{}-{}-{label}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the test's tmp dir");
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("data dirs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
