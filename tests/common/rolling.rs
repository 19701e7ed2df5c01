//! Clients that keep writing and reading while a ring of real processes is restarted one node
//! at a time (`tests/rolling.rs`, `tests/upgrade.rs`): the nodes they may use, what was
//! acknowledged, and every error they saw.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use super::Http;
use super::process::ProcessNode;

/// How long a node may take to get ready (generous: CI machines are slow and shared).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn is_ready(http: &Http, node: SocketAddr) -> bool {
    http.try_get(&format!("http://{node}/ready"))
        .await
        .is_ok_and(|r| r.status == StatusCode::OK)
}

/// Waits until every node of `nodes` says ready.
pub async fn all_ready(http: &Http, nodes: &[ProcessNode]) {
    super::wait_until(READY_TIMEOUT, "the ring to get ready", || async {
        for n in nodes {
            if !is_ready(http, n.http).await {
                return false;
            }
        }
        true
    })
    .await;
}

/// What the clients share: the nodes that are up (None while one restarts), the acknowledged
/// writes and the errors seen.
pub struct Clients {
    up: Mutex<Vec<Option<SocketAddr>>>,
    acked: Mutex<BTreeMap<String, String>>,
    errors: Mutex<Vec<String>>,
    ops: AtomicUsize,
    stop: AtomicBool,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What the clients saw, once stopped.
pub struct Outcome {
    /// Client requests made (PUTs and GETs).
    pub requests: usize,
    pub errors: Vec<String>,
    pub acked: BTreeMap<String, String>,
}

impl Clients {
    /// Starts `n` clients on `nodes`.
    pub fn start(n: usize, nodes: &[ProcessNode]) -> Arc<Clients> {
        let clients = Arc::new(Clients {
            up: Mutex::new(nodes.iter().map(|n| Some(n.http)).collect()),
            acked: Mutex::default(),
            errors: Mutex::default(),
            ops: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            tasks: Mutex::default(),
        });
        let tasks = (0..n).map(|w| tokio::spawn(client(w, clients.clone())));
        clients.tasks.lock().unwrap().extend(tasks);
        clients
    }

    /// Node `i` is down (Some: up at this HTTP address).
    pub fn set_up(&self, i: usize, http: Option<SocketAddr>) {
        self.up.lock().unwrap()[i] = http;
    }

    fn pick(&self, n: usize) -> Option<SocketAddr> {
        let up: Vec<SocketAddr> = self.up.lock().unwrap().iter().flatten().copied().collect();
        (!up.is_empty()).then(|| up[n % up.len()])
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the clients and returns what they saw.
    pub async fn stop(&self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for t in tasks {
            t.await.expect("client task");
        }
        Outcome {
            requests: self.ops.load(Ordering::Relaxed),
            errors: self.errors.lock().unwrap().clone(),
            acked: self.acked.lock().unwrap().clone(),
        }
    }
}

/// One client: PUT a fresh key through one up node, then GET it through another, until told
/// to stop. Every failure is recorded.
async fn client(w: usize, shared: Arc<Clients>) {
    let http = Http::new();
    let mut seq = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        seq += 1;
        let key = format!("w{w}-{seq}");
        let value = format!("v{w}-{seq}");
        let Some(node) = shared.pick(w + seq) else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let put = http
            .try_put(&format!("http://{node}/kv/{key}"), value.clone())
            .await;
        shared.ops.fetch_add(1, Ordering::Relaxed);
        match put {
            Ok(r) if r.status == StatusCode::NO_CONTENT => {
                shared
                    .acked
                    .lock()
                    .unwrap()
                    .insert(key.clone(), value.clone());
            }
            other => {
                shared
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("PUT {key} via {node}: {other:?}"));
                continue;
            }
        }
        let Some(node) = shared.pick(w + seq + 1) else {
            continue;
        };
        shared.ops.fetch_add(1, Ordering::Relaxed);
        match http.try_get(&format!("http://{node}/kv/{key}")).await {
            Ok(r) if r.status == StatusCode::OK && r.body.as_ref() == value.as_bytes() => {}
            other => shared
                .errors
                .lock()
                .unwrap()
                .push(format!("GET {key} via {node} after its PUT: {other:?}")),
        }
    }
}

/// Sends SIGTERM and waits for the process to exit 0.
pub async fn stop_gracefully(node: &mut ProcessNode) {
    let mut guard = node.child.take().expect("running");
    let pid = guard.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(sent.expect("kill runs").success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "{} did not exit", node.id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "{} exits 0 on SIGTERM", node.id);
}

/// Replaces node `i` as a load balancer would: clients stop choosing it, it is stopped with
/// SIGTERM, `start` starts its successor (seeded with the others' gossip addresses), and
/// clients use it again once it says ready.
pub async fn replace<F, Fut>(nodes: &mut [ProcessNode], i: usize, clients: &Clients, start: F)
where
    F: FnOnce(String, Vec<SocketAddr>) -> Fut,
    Fut: std::future::Future<Output = ProcessNode>,
{
    clients.set_up(i, None);
    stop_gracefully(&mut nodes[i]).await;
    let seeds: Vec<SocketAddr> = nodes
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, n)| n.gossip)
        .collect();
    let id = nodes[i].id.clone();
    nodes[i] = start(id.clone(), seeds).await;
    let (http, addr) = (Http::new(), nodes[i].http);
    super::wait_until(READY_TIMEOUT, &format!("{id} ready"), || {
        is_ready(&http, addr)
    })
    .await;
    clients.set_up(i, Some(addr));
}

/// Asserts the clients saw no error and wrote enough to prove something, then reads every
/// acknowledged write back, through the nodes in turn, eight readers at a time.
pub async fn check(outcome: &Outcome, nodes: &[ProcessNode]) {
    assert!(
        outcome.errors.is_empty(),
        "{} client errors, first: {:?}",
        outcome.errors.len(),
        &outcome.errors[..outcome.errors.len().min(5)]
    );
    assert!(
        outcome.acked.len() > 50,
        "the clients wrote too little to prove anything: {}",
        outcome.acked.len()
    );
    let http = Http::new();
    let urls: Vec<SocketAddr> = nodes.iter().map(|n| n.http).collect();
    let acked: Vec<(&String, &String)> = outcome.acked.iter().collect();
    let readers = acked.chunks(acked.len().div_ceil(8)).map(|chunk| {
        let (http, urls) = (http.clone(), urls.clone());
        async move {
            for (i, (key, value)) in chunk.iter().enumerate() {
                let node = urls[i % urls.len()];
                let got = http.get(&format!("http://{node}/kv/{key}")).await;
                assert_eq!(got.status, StatusCode::OK, "{key} via {node}: {got:?}");
                assert_eq!(got.body.as_ref(), value.as_bytes(), "{key} via {node}");
            }
        }
    });
    futures_util::future::join_all(readers).await;
}
