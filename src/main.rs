//! The `ringkv` binary: `serve` one node, or run a local `dev` ring.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ringkv::config::{
    Config, DEFAULT_CLUSTER_ID, DEFAULT_MAX_VALUE_BYTES, DEFAULT_READ_QUORUM, DEFAULT_REPLICAS,
    DEFAULT_WRITE_QUORUM,
};
use ringkv::membership::GossipConfig;
use ringkv::ring::DEFAULT_VNODES;
use ringkv::{GossipTransport, NodeHandle};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Exit code for invalid configuration or usage.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "ringkv",
    version,
    about = "A Dynamo-style distributed in-memory key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Serve(ServeArgs),
    /// Run a local ring of several nodes in this process, on 127.0.0.1.
    Dev(DevArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// This node's unique, stable id.
    #[arg(long, env = "RINGKV_ID")]
    id: String,
    /// HTTP listen address (port 0 picks one).
    #[arg(long, env = "RINGKV_HTTP", default_value = "127.0.0.1:8001")]
    http: SocketAddr,
    /// Node-to-node RPC listen address (port 0 picks one).
    #[arg(long, env = "RINGKV_RPC", default_value = "127.0.0.1:9001")]
    rpc: SocketAddr,
    /// Gossip (UDP) listen address (port 0 picks one).
    #[arg(long, env = "RINGKV_GOSSIP", default_value = "127.0.0.1:7001")]
    gossip: SocketAddr,
    /// Gossip addresses of other nodes, comma-separated.
    #[arg(long, env = "RINGKV_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    #[command(flatten)]
    tuning: Tuning,
}

/// Flags shared by `serve` and `dev`.
#[derive(Args, Clone)]
struct Tuning {
    /// N: replicas per key.
    #[arg(long, env = "RINGKV_REPLICAS", default_value_t = DEFAULT_REPLICAS)]
    replicas: usize,
    /// R: default read quorum.
    #[arg(long, env = "RINGKV_READ_QUORUM", default_value_t = DEFAULT_READ_QUORUM)]
    read_quorum: usize,
    /// W: default write quorum.
    #[arg(long, env = "RINGKV_WRITE_QUORUM", default_value_t = DEFAULT_WRITE_QUORUM)]
    write_quorum: usize,
    /// Largest value accepted, in bytes.
    #[arg(long, env = "RINGKV_MAX_VALUE_BYTES", default_value_t = DEFAULT_MAX_VALUE_BYTES)]
    max_value_bytes: usize,
    /// Virtual nodes per node.
    #[arg(long, env = "RINGKV_VNODES", default_value_t = DEFAULT_VNODES)]
    vnodes: usize,
    /// Cluster id; nodes only talk to nodes with the same one.
    #[arg(long, env = "RINGKV_CLUSTER_ID", default_value = DEFAULT_CLUSTER_ID)]
    cluster_id: String,
    /// Time a replica has to answer one RPC, in milliseconds.
    #[arg(long, env = "RINGKV_RPC_TIMEOUT_MS", default_value_t = 2000)]
    rpc_timeout_ms: u64,
    /// Gossip interval, in milliseconds.
    #[arg(long, env = "RINGKV_GOSSIP_INTERVAL_MS", default_value_t = 200)]
    gossip_interval_ms: u64,
    /// Phi-accrual threshold above which a silent node is declared dead.
    #[arg(long, env = "RINGKV_PHI_THRESHOLD", default_value_t = 8.0)]
    phi_threshold: f64,
}

#[derive(Args)]
struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    nodes: u16,
    /// HTTP port of the first node; node i serves HTTP on base+i-1, RPC on base+999+i and
    /// gossip on base-1001+i.
    #[arg(long, default_value_t = 8001)]
    base_port: u16,
    #[command(flatten)]
    tuning: Tuning,
}

impl Tuning {
    fn apply(&self, cfg: &mut Config) {
        cfg.replicas = self.replicas;
        cfg.read_quorum = self.read_quorum;
        cfg.write_quorum = self.write_quorum;
        cfg.max_value_bytes = self.max_value_bytes;
        cfg.vnodes = self.vnodes;
        cfg.cluster_id = self.cluster_id.clone();
        cfg.rpc_timeout = Duration::from_millis(self.rpc_timeout_ms);
        cfg.gossip_config = GossipConfig {
            interval: Duration::from_millis(self.gossip_interval_ms),
            phi_threshold: self.phi_threshold,
            initial_interval: Duration::from_millis(self.gossip_interval_ms),
            ..GossipConfig::default()
        };
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(
            ringkv::membership::garbage::CountLayer.with_filter(filter_fn(|meta| {
                ringkv::membership::garbage::is_chitchat_udp(meta)
            })),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ringkv: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let res = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Dev(args) => dev(args).await,
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(ringkv::Error::InvalidInput(msg)) => {
            eprintln!("ringkv: invalid configuration: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(err) => {
            eprintln!("ringkv: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> ringkv::Result<()> {
    let mut cfg = Config::new(args.id, args.http, args.rpc, args.gossip);
    cfg.seeds = args.seeds.into_iter().filter(|s| !s.is_empty()).collect();
    args.tuning.apply(&mut cfg);
    cfg.validate()?;
    let handle = NodeHandle::start(cfg, GossipTransport::Udp).await?;
    // One machine-readable line on stdout, so scripts and tests that bind port 0 learn the
    // addresses actually bound.
    println!(
        "listening id={} http={} rpc={} gossip={}",
        handle.node().id(),
        handle.http_addr(),
        handle.rpc_addr(),
        handle.gossip_addr()
    );
    wait_for_signal().await;
    handle.shutdown().await;
    Ok(())
}

async fn dev(args: DevArgs) -> ringkv::Result<()> {
    if args.nodes == 0 {
        return Err(ringkv::Error::invalid("--nodes must be at least 1"));
    }
    let base = args.base_port;
    let port = |offset: i32, i: u16| -> ringkv::Result<u16> {
        u16::try_from(base as i32 + offset + i as i32)
            .map_err(|_| ringkv::Error::invalid("--base-port leaves no room for the ports"))
    };
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let mut seeds = Vec::new();
    for i in 0..args.nodes.min(3) {
        seeds.push(addr(port(-1000, i)?).to_string());
    }
    let mut handles = Vec::new();
    for i in 0..args.nodes {
        let mut cfg = Config::new(
            format!("n{}", i + 1),
            addr(port(0, i)?),
            addr(port(1000, i)?),
            addr(port(-1000, i)?),
        );
        cfg.seeds = seeds.clone();
        args.tuning.apply(&mut cfg);
        cfg.validate()?;
        handles.push(NodeHandle::start(cfg, GossipTransport::Udp).await?);
    }
    println!("ringkv dev ring: {} nodes on 127.0.0.1", handles.len());
    for h in &handles {
        println!(
            "  {}  http://{}  (rpc {}, gossip {})",
            h.node().id(),
            h.http_addr(),
            h.rpc_addr(),
            h.gossip_addr()
        );
    }
    let first = handles[0].http_addr();
    let last = handles[handles.len() - 1].http_addr();
    println!();
    println!("try:");
    println!("  curl -i -X PUT --data-binary 'hello' http://{first}/kv/greeting");
    println!("  curl -i http://{last}/kv/greeting");
    println!("  curl -s http://{first}/cluster/members");
    println!();
    println!("Ctrl-C stops the ring.");
    wait_for_signal().await;
    println!("stopping...");
    for h in handles {
        h.shutdown().await;
    }
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
