//! Real `ringkv` processes for tests: one OS process per node, real UDP gossip, SIGKILL.
//!
//! Every node binds port 0 and announces the addresses it bound on stdout; [`ProcessNode`]
//! reads that line. A node's stderr (RUST_LOG=warn) goes to a file under the target's tmp
//! directory, removed again unless the test fails. Every child is SIGKILLed and reaped on
//! drop, so a failing test leaves no process behind.
//!
//! **One cluster id per ring.** Tests in one binary run in parallel, and a port a stopped
//! node freed may be handed to a node of another test's ring. With one cluster id for all,
//! gossip sent to the old address would merge the two rings, moving keys to nodes that never
//! held them. So [`serve_command`] gives a node started without seeds a fresh cluster id, and
//! a node seeded with a known node's gossip address that node's id, unless the test passes
//! `--cluster-id` itself.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use super::{Http, wait_until};

pub const BIN: &str = env!("CARGO_BIN_EXE_ringkv");

/// How long a node may take to print its `listening` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process that is SIGKILLed and reaped when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Port 0 for every listener: the node picks free ports and prints them.
pub const PORT_ZERO: [&str; 6] = [
    "--http",
    "127.0.0.1:0",
    "--rpc",
    "127.0.0.1:0",
    "--gossip",
    "127.0.0.1:0",
];

/// N = R = W = 1: one node is a whole ring, and each key has one home.
pub const ALONE: [&str; 6] = [
    "--replicas",
    "1",
    "--read-quorum",
    "1",
    "--write-quorum",
    "1",
];

/// A `ringkv` command with no `RINGKV_*` variable inherited from the test's environment.
pub fn ringkv() -> Command {
    ringkv_at(BIN)
}

/// As [`ringkv`], running the binary at `bin` (another build: `tests/upgrade.rs`).
pub fn ringkv_at(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RINGKV_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// The cluster id of each started node, by gossip address (see the module docs).
static CLUSTER_OF: Mutex<Option<HashMap<SocketAddr, String>>> = Mutex::new(None);

/// The cluster id a node seeded with `seeds` joins: its first known seed's, else a new one.
fn cluster_for(seeds: &[SocketAddr]) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let known = CLUSTER_OF.lock().unwrap();
    seeds
        .iter()
        .find_map(|s| known.as_ref()?.get(s).cloned())
        .unwrap_or_else(|| {
            format!(
                "test-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            )
        })
}

/// The value of `--cluster-id` in `cmd`, or the default.
fn cluster_in(cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.iter()
        .position(|a| a == "--cluster-id")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| ringkv::config::DEFAULT_CLUSTER_ID.to_string())
}

/// `ringkv serve --id <id> <args>` on port 0 everywhere, seeded with `seeds`, in the seeds'
/// ring's cluster (a fresh one without seeds) unless `args` name one.
pub fn serve_command(id: &str, seeds: &[SocketAddr], args: &[&str]) -> Command {
    serve_command_at(BIN, id, seeds, args)
}

/// As [`serve_command`], running the binary at `bin`.
pub fn serve_command_at(bin: &str, id: &str, seeds: &[SocketAddr], args: &[&str]) -> Command {
    let mut cmd = ringkv_at(bin);
    cmd.args(["serve", "--id", id]).args(PORT_ZERO).args(args);
    if !args.contains(&"--cluster-id") {
        cmd.args(["--cluster-id", &cluster_for(seeds)]);
    }
    if !seeds.is_empty() {
        let seeds: Vec<String> = seeds.iter().map(SocketAddr::to_string).collect();
        cmd.args(["--seeds", &seeds.join(",")]);
    }
    cmd
}

/// A fresh file for one process's stderr.
pub fn log_path(label: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("process-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    dir.join(format!(
        "{}-{}-{label}.log",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// One running `ringkv serve` process.
pub struct ProcessNode {
    pub id: String,
    pub http: SocketAddr,
    pub rpc: SocketAddr,
    pub gossip: SocketAddr,
    /// Its `--cluster-id`.
    pub cluster_id: String,
    pub log: PathBuf,
    pub child: Option<Guard>,
}

impl ProcessNode {
    /// `ringkv serve --id <id>` on port 0 everywhere, seeded with `seeds`.
    pub async fn start(id: &str, seeds: &[SocketAddr]) -> ProcessNode {
        ProcessNode::start_with(id, seeds, &[]).await
    }

    /// As [`ProcessNode::start`], with more `serve` flags (`--data-dir DIR`, say).
    pub async fn start_with(id: &str, seeds: &[SocketAddr], args: &[&str]) -> ProcessNode {
        ProcessNode::spawn(serve_command(id, seeds, args), id).await
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process is running").0.id()
    }

    /// Runs `cmd` (a `serve` command) and waits for its `listening` line.
    pub async fn spawn(mut cmd: Command, label: &str) -> ProcessNode {
        let cluster_id = cluster_in(&cmd);
        let log = log_path(label);
        let stderr = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = Guard(cmd.spawn().expect("spawn ringkv"));
        let stdout = child.0.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = tokio::sync::oneshot::channel::<String>();
        // Reads the first line, then drains stdout until the process exits so that the node
        // never blocks or fails on a full or closed pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut line_tx = Some(line_tx);
            while let Some(Ok(line)) = lines.next() {
                if let Some(tx) = line_tx.take() {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match tokio::time::timeout(START_TIMEOUT, line_rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                drop(child);
                panic!(
                    "{label} exited before listening; stderr:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            Err(_) => panic!(
                "{label} did not print its listening line within {START_TIMEOUT:?}; stderr in {}",
                log.display()
            ),
        };
        let fields: BTreeMap<&str, &str> = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line from {label}: {line:?}"))
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let addr = |k: &str| -> SocketAddr {
            fields
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k}= address in {line:?}"))
        };
        let node = ProcessNode {
            id: fields.get("id").expect("id=").to_string(),
            http: addr("http"),
            rpc: addr("rpc"),
            gossip: addr("gossip"),
            cluster_id,
            log,
            child: Some(child),
        };
        CLUSTER_OF
            .lock()
            .unwrap()
            .get_or_insert_default()
            .insert(node.gossip, node.cluster_id.clone());
        for a in [node.http, node.rpc, node.gossip] {
            assert!(a.ip().is_loopback() && a.port() != 0, "bound address {a}");
        }
        node
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// SIGKILLs the process and waits until it is gone.
    pub fn kill(&mut self) {
        let mut guard = self.child.take().expect("process is running");
        guard.0.kill().expect("SIGKILL");
        guard.0.wait().expect("reap");
    }

    /// GET /cluster/members, by id.
    pub async fn members(&self, http: &Http) -> BTreeMap<String, MemberInfo> {
        let got = http.get(&format!("{}/cluster/members", self.url())).await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        got.json()["members"]
            .as_array()
            .expect("members array")
            .iter()
            .map(|m| {
                let info = MemberInfo {
                    alive: m["status"] == "alive",
                    generation: m["generation"].as_u64().expect("generation"),
                    http: m["http"].as_str().map(str::to_string),
                };
                (m["id"].as_str().expect("id").to_string(), info)
            })
            .collect()
    }

    /// GET /admin/stats `counters`.
    pub async fn counters(&self, http: &Http) -> serde_json::Value {
        let got = http.get(&format!("{}/admin/stats", self.url())).await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        got.json()["counters"].clone()
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.child.take();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("stderr of {} kept in {}", self.id, self.log.display());
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub alive: bool,
    pub generation: u64,
    pub http: Option<String>,
}

/// Several processes: `n1` has no seeds, every later node is seeded with `n1`'s gossip port.
pub struct ProcessCluster {
    pub nodes: Vec<ProcessNode>,
    pub http: Http,
}

impl ProcessCluster {
    pub async fn start(n: usize) -> ProcessCluster {
        let mut nodes: Vec<ProcessNode> = Vec::new();
        for i in 0..n {
            let seeds: Vec<SocketAddr> = nodes.first().map(|n| n.gossip).into_iter().collect();
            nodes.push(ProcessNode::start(&format!("n{}", i + 1), &seeds).await);
        }
        ProcessCluster {
            nodes,
            http: Http::new(),
        }
    }

    /// True if every running node lists exactly the running nodes, alive, at their
    /// self-reported generation and HTTP address, and `dead` as dead.
    pub async fn agrees(&self, running: &[usize], dead: &[&str]) -> bool {
        let mut own = BTreeMap::new();
        for &i in running {
            let node = &self.nodes[i];
            match node.members(&self.http).await.remove(&node.id) {
                Some(me) => own.insert(node.id.clone(), me),
                None => return false,
            };
        }
        for &i in running {
            let seen = self.nodes[i].members(&self.http).await;
            let alive: BTreeMap<String, MemberInfo> = seen
                .iter()
                .filter(|(_, m)| m.alive)
                .map(|(id, m)| (id.clone(), m.clone()))
                .collect();
            if alive != own || !dead.iter().all(|d| seen.get(*d).is_some_and(|m| !m.alive)) {
                return false;
            }
        }
        true
    }

    /// Waits until every running node agrees, and returns how long that took.
    pub async fn converge(&self, running: &[usize], dead: &[&str], timeout: Duration) -> Duration {
        let t0 = Instant::now();
        wait_until(timeout, "process cluster to converge", || {
            self.agrees(running, dead)
        })
        .await;
        t0.elapsed()
    }
}
