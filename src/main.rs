//! The `ringkv` binary: `serve` one node, run a local `dev` ring, talk to a ring (`get`,
//! `put`, `del`, `ls`, `watch`, `members`, `replicas`, `leave`), or load it (`bench`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ringkv::config::{
    Config, DEFAULT_CLUSTER_ID, DEFAULT_MAX_VALUE_BYTES, DEFAULT_READ_QUORUM, DEFAULT_REPLICAS,
    DEFAULT_WRITE_QUORUM,
};
use ringkv::hints::HintLimits;
use ringkv::membership::GossipConfig;
use ringkv::ring::DEFAULT_VNODES;
use ringkv::{GossipTransport, NodeHandle};

/// A default duration as a flag's milliseconds.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Exit code for invalid configuration or usage.
const EXIT_USAGE: u8 = ringkv::cli::EXIT_USAGE;

#[derive(Parser)]
#[command(
    name = "ringkv",
    version,
    about = "A Dynamo-style distributed key-value store: in memory, with an optional write-ahead log"
)]
struct Cli {
    /// Log format on stderr: human-readable text, or one JSON object per line.
    #[arg(long, global = true, env = "RINGKV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How logs are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Serve(Box<ServeArgs>),
    /// Run a local ring of several nodes in this process, on 127.0.0.1.
    Dev(DevArgs),
    #[command(flatten)]
    Client(ringkv::cli::Verb),
    /// Load a ring: closed or open loop, with a live progress line and a latency summary.
    Bench(ringkv::bench::BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// This node's unique, stable id.
    #[arg(long, env = "RINGKV_ID")]
    id: String,
    /// HTTP listen address, HOST:PORT (a name is resolved at start; port 0 picks one).
    #[arg(long, env = "RINGKV_HTTP", default_value = "127.0.0.1:8001")]
    http: String,
    /// Node-to-node RPC listen address (port 0 picks one).
    #[arg(long, env = "RINGKV_RPC", default_value = "127.0.0.1:9001")]
    rpc: String,
    /// Gossip (UDP) listen address (port 0 picks one).
    #[arg(long, env = "RINGKV_GOSSIP", default_value = "127.0.0.1:7001")]
    gossip: String,
    /// The HTTP address clients and peers reach this node at, HOST:PORT, when it differs
    /// from --http (a node bound to 0.0.0.0, behind NAT, in a container). Default: --http.
    #[arg(long, env = "RINGKV_ADVERTISE_HTTP", value_name = "HOST:PORT")]
    advertise_http: Option<String>,
    /// The RPC address peers reach this node at. Default: --rpc.
    #[arg(long, env = "RINGKV_ADVERTISE_RPC", value_name = "HOST:PORT")]
    advertise_rpc: Option<String>,
    /// The gossip address peers reach this node at. Default: --gossip.
    #[arg(long, env = "RINGKV_ADVERTISE_GOSSIP", value_name = "HOST:PORT")]
    advertise_gossip: Option<String>,
    /// This node's failure domain (a rack, an availability zone). Each key's replicas go to
    /// distinct zones while the ring has enough of them, so losing a zone loses no quorum.
    #[arg(long, env = "RINGKV_ZONE", default_value = ringkv::ring::DEFAULT_ZONE)]
    zone: String,
    /// Gossip addresses of other nodes, HOST:PORT, comma-separated. Names that do not
    /// resolve yet are retried every 0.5 s until one seed does (gossip waits, /ready says
    /// why); after that, names are resolved again every minute.
    #[arg(long, env = "RINGKV_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// Keep a write-ahead log and snapshots here, so the node's data survives restarts
    /// (created if missing; locked while the node runs). Without it the node is in memory only.
    #[arg(long, env = "RINGKV_DATA_DIR", value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// The ring's shared secret (mode 600 or stricter): RPC connections and gossip are then
    /// authenticated, and nodes without it cannot join. Make one with
    /// `openssl rand -hex 32 > FILE && chmod 600 FILE`.
    #[arg(long, env = "RINGKV_CLUSTER_SECRET_FILE", value_name = "PATH")]
    cluster_secret_file: Option<std::path::PathBuf>,
    /// API tokens, one `ROLE TOKEN` per line (ROLE: read, write or admin); clients then send
    /// `Authorization: Bearer TOKEN`. SIGHUP reloads the file.
    #[arg(long, env = "RINGKV_API_TOKENS", value_name = "PATH")]
    api_tokens: Option<std::path::PathBuf>,
    /// Serve HTTPS only (WebSockets too), with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        env = "RINGKV_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "RINGKV_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    /// Worker threads; 0 means one per core. Use 1 when several nodes share a machine's
    /// cores: each node then runs on one thread and no request pays for waking another core.
    #[arg(long, env = "RINGKV_THREADS", default_value_t = 0)]
    threads: usize,
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
    #[arg(long, env = "RINGKV_RPC_TIMEOUT_MS", default_value_t = ms(ringkv::config::DEFAULT_RPC_TIMEOUT))]
    rpc_timeout_ms: u64,
    /// Gossip interval, in milliseconds.
    #[arg(long, env = "RINGKV_GOSSIP_INTERVAL_MS", default_value_t = ms(GossipConfig::default().interval))]
    gossip_interval_ms: u64,
    /// Phi-accrual threshold above which a silent node is declared dead.
    #[arg(long, env = "RINGKV_PHI_THRESHOLD", default_value_t = GossipConfig::default().phi_threshold)]
    phi_threshold: f64,
    /// How long a dead node keeps its place in the ring before it is removed, in seconds.
    #[arg(long, env = "RINGKV_DEAD_NODE_GRACE_SECS", default_value_t = GossipConfig::default().dead_node_grace.as_secs())]
    dead_node_grace_secs: u64,
    /// Period of hinted-handoff delivery, in milliseconds.
    #[arg(long, env = "RINGKV_HANDOFF_INTERVAL_MS", default_value_t = ms(ringkv::config::DEFAULT_HANDOFF_INTERVAL))]
    handoff_interval_ms: u64,
    /// Most hinted keys a node keeps for dead replicas.
    #[arg(long, env = "RINGKV_MAX_HINTS", default_value_t = ringkv::hints::DEFAULT_MAX_HINTS)]
    max_hints: usize,
    /// Most bytes of hints a node keeps.
    #[arg(long, env = "RINGKV_MAX_HINT_BYTES", default_value_t = ringkv::hints::DEFAULT_MAX_HINT_BYTES)]
    max_hint_bytes: usize,
    /// No new hints for a node dead longer than this, in seconds.
    #[arg(long, env = "RINGKV_HINT_WINDOW_SECS", default_value_t = ringkv::hints::DEFAULT_HINT_WINDOW.as_secs())]
    hint_window_secs: u64,
    /// Period of anti-entropy rounds, in milliseconds.
    #[arg(long, env = "RINGKV_ANTI_ENTROPY_INTERVAL_MS", default_value_t = ms(ringkv::config::DEFAULT_ANTI_ENTROPY_INTERVAL))]
    anti_entropy_interval_ms: u64,
    /// Anti-entropy and handoff bandwidth cap, in bytes per second.
    #[arg(long, env = "RINGKV_ANTI_ENTROPY_RATE", default_value_t = ringkv::config::DEFAULT_ANTI_ENTROPY_RATE)]
    anti_entropy_rate: u64,
    /// How long tombstones are kept once every replica holds them, in seconds.
    #[arg(long, env = "RINGKV_TOMBSTONE_GRACE_SECS", default_value_t = ringkv::config::DEFAULT_TOMBSTONE_GRACE.as_secs())]
    tombstone_grace_secs: u64,
    /// With --data-dir: when the log reaches the disk. always: before a write counts toward
    /// W (concurrent writes share an fsync); periodic: every --fsync-interval-ms; never: when
    /// the OS decides.
    #[arg(long, env = "RINGKV_FSYNC", value_enum, default_value_t = ringkv::durable::Fsync::Always)]
    fsync: ringkv::durable::Fsync,
    /// The period of --fsync periodic (and of log writes with never), in milliseconds.
    #[arg(long, env = "RINGKV_FSYNC_INTERVAL_MS", default_value_t = ms(ringkv::config::DEFAULT_FSYNC_INTERVAL))]
    fsync_interval_ms: u64,
    /// With --data-dir: take a snapshot (and drop the log before it) once the log since the
    /// last one holds this many bytes and more than the live data.
    #[arg(long, env = "RINGKV_SNAPSHOT_LOG_BYTES", default_value_t = ringkv::durable::SNAPSHOT_MIN_LOG)]
    snapshot_log_bytes: u64,
    /// Most WebSocket watchers (`GET /watch`) this node serves at once; more are refused with
    /// 503 (counted in ringkv_watchers_refused) and may watch through another node.
    #[arg(long, env = "RINGKV_MAX_WATCHERS", default_value_t = ringkv::config::DEFAULT_MAX_WATCHERS)]
    max_watchers: usize,
    /// Most RPC requests that may wait (forwarded writes; copies with --data-dir) one peer
    /// connection has in flight on this node. Past it a request is refused as busy (the
    /// peer counts that replica as failed; counted in ringkv_rpc_in_flight_refused).
    #[arg(long, env = "RINGKV_MAX_RPC_IN_FLIGHT", default_value_t = ringkv::config::DEFAULT_MAX_RPC_IN_FLIGHT)]
    max_rpc_in_flight: usize,
    /// Most HTTP connections served at once; more are closed at once (counted in
    /// ringkv_http_connections_refused).
    #[arg(long, env = "RINGKV_MAX_HTTP_CONNECTIONS", default_value_t = ringkv::config::DEFAULT_MAX_HTTP_CONNECTIONS)]
    max_http_connections: usize,
    /// Seconds a client has to send a request's headers, idle keep-alive included (a
    /// slowloris or idle client is then dropped).
    #[arg(long, env = "RINGKV_HTTP_HEADER_TIMEOUT_SECS", default_value_t = ringkv::config::DEFAULT_HTTP_HEADER_TIMEOUT.as_secs())]
    http_header_timeout_secs: u64,
    /// Most memory this node may hold: bytes, or with a KiB, MiB or GiB suffix; 0 is no
    /// limit. Over it, writes are refused with 507 and reads go on. Default: 75% of what the
    /// process may use (its cgroup's memory limit, else the machine's RAM); `dev` divides
    /// that among its nodes.
    #[arg(long, env = "RINGKV_MAX_MEMORY", value_name = "SIZE", value_parser = ringkv::memory::parse_size)]
    max_memory: Option<u64>,
    /// Seconds a client has to send a request's body (else 408).
    #[arg(long, env = "RINGKV_HTTP_BODY_TIMEOUT_SECS", default_value_t = ringkv::config::DEFAULT_HTTP_BODY_TIMEOUT.as_secs())]
    http_body_timeout_secs: u64,
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
    /// Make the nodes durable: node i keeps its log and snapshots in DIR/n<i>.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Put the nodes in these zones, round-robin (`--zones a,b,c`: n1 in a, n2 in b, n3 in
    /// c, n4 in a, ...). Without it every node is in the zone `default`.
    #[arg(long, value_delimiter = ',', value_name = "ZONE,...")]
    zones: Vec<String>,
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
            dead_node_grace: Duration::from_secs(self.dead_node_grace_secs),
        };
        cfg.handoff_interval = Duration::from_millis(self.handoff_interval_ms);
        cfg.hint_limits = HintLimits {
            max_hints: self.max_hints,
            max_bytes: self.max_hint_bytes,
            window: Duration::from_secs(self.hint_window_secs),
            ttl: Duration::from_secs(self.tombstone_grace_secs),
        };
        cfg.anti_entropy_interval = Duration::from_millis(self.anti_entropy_interval_ms);
        cfg.anti_entropy_rate = self.anti_entropy_rate;
        cfg.tombstone_grace = Duration::from_secs(self.tombstone_grace_secs);
        cfg.fsync = self.fsync;
        cfg.fsync_interval = Duration::from_millis(self.fsync_interval_ms);
        cfg.snapshot_log_bytes = self.snapshot_log_bytes;
        cfg.max_watchers = self.max_watchers;
        cfg.max_rpc_in_flight = self.max_rpc_in_flight;
        cfg.max_http_connections = self.max_http_connections;
        cfg.http_header_timeout = Duration::from_secs(self.http_header_timeout_secs);
        cfg.http_body_timeout = Duration::from_secs(self.http_body_timeout_secs);
    }

    /// The memory limit of each of `nodes` nodes sharing this process: the flag as given,
    /// else its part of the default ([`ringkv::memory::default_limit`]). Warns once when
    /// there is none.
    fn memory_limit(&self, nodes: usize) -> u64 {
        let measurable = ringkv::heap::allocated().is_some();
        match self.max_memory {
            Some(0) => {
                tracing::warn!(
                    "--max-memory 0: no memory limit; a full node is killed by the kernel, losing what it held in memory"
                );
                0
            }
            Some(_) | None if !measurable => {
                tracing::warn!(
                    "built without jemalloc: memory cannot be measured, so --max-memory is not enforced"
                );
                0
            }
            Some(limit) => limit,
            None => ringkv::memory::default_limit().map_or(0, |l| l / nodes.max(1) as u64),
        }
    }
}

/// Gives `cfg` its memory limit, read from the allocator's count shared by `nodes` nodes.
fn set_memory(cfg: &mut Config, limit: u64, nodes: usize) {
    cfg.max_memory = limit;
    cfg.memory_gauge = ringkv::memory::Gauge::allocator(nodes);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Nodes log their life at info; client verbs and the bench keep stderr for their own
    // messages unless RUST_LOG asks for more.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Dev(_) => "info",
        Command::Client(_) | Command::Bench(_) => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    let json = cli.log_format == LogFormat::Json;
    let text_layer = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(text_layer.with_filter(filter.clone()))
        .with(json_layer.with_filter(filter))
        .with(
            ringkv::membership::garbage::CountLayer.with_filter(filter_fn(|meta| {
                ringkv::membership::garbage::is_chitchat_udp(meta)
            })),
        )
        .init();
    let runtime = match runtime_for(&cli.command) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ringkv: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let res = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Dev(args) => dev(args).await,
            Command::Client(verb) => return ExitCode::from(ringkv::cli::run(verb).await),
            Command::Bench(args) => return bench(args).await,
        }
        .map_or_else(config_error, |()| ExitCode::SUCCESS)
    });
    // Dropping the runtime would wait for its blocking pool (hyper's DNS lookups run there);
    // the command's outcome is known, so nothing left there matters.
    runtime.shutdown_background();
    res
}

/// The runtime a command runs on.
fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    use tokio::runtime::Builder;
    match command {
        // A dev ring runs each node on its own thread (see `spawn_dev_node`); the main thread
        // only waits for signals.
        Command::Dev(_) => Builder::new_current_thread().enable_all().build(),
        Command::Serve(args) if args.threads == 1 => {
            Builder::new_current_thread().enable_all().build()
        }
        Command::Serve(args) if args.threads > 1 => Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    }
}

/// The exit of `serve` and `dev` when they fail.
fn config_error(err: ringkv::Error) -> ExitCode {
    match err {
        ringkv::Error::InvalidInput(msg) => {
            eprintln!("ringkv: invalid configuration: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        err => {
            eprintln!("ringkv: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `ringkv bench` and prints its summary: a table, or JSON with `--json`.
async fn bench(args: ringkv::bench::BenchArgs) -> ExitCode {
    if args.watch {
        return match ringkv::bench::watch_latency(&args).await {
            Ok(summary) if args.json => {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("ringkv: {err}");
                ExitCode::from(ringkv::cli::exit_code(&err))
            }
        };
    }
    match ringkv::bench::run(&args).await {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string(&summary) {
                    Ok(text) => println!("{text}"),
                    Err(err) => {
                        eprintln!("ringkv: cannot encode the summary: {err}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{summary}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ringkv: {err}");
            ExitCode::from(ringkv::cli::exit_code(&err))
        }
    }
}

async fn serve(args: ServeArgs) -> ringkv::Result<()> {
    let mut cfg = Config::new(
        args.id,
        resolve("--http", &args.http).await?,
        resolve("--rpc", &args.rpc).await?,
        resolve("--gossip", &args.gossip).await?,
    );
    cfg.advertise_http = resolve_opt("--advertise-http", &args.advertise_http).await?;
    cfg.advertise_rpc = resolve_opt("--advertise-rpc", &args.advertise_rpc).await?;
    cfg.advertise_gossip = resolve_opt("--advertise-gossip", &args.advertise_gossip).await?;
    cfg.seeds = args.seeds.into_iter().filter(|s| !s.is_empty()).collect();
    cfg.zone = args.zone;
    cfg.data_dir = args.data_dir;
    cfg.cluster_secret = args
        .cluster_secret_file
        .as_deref()
        .map(ringkv::secret::ClusterSecret::load)
        .transpose()?;
    cfg.api_tokens = args.api_tokens;
    cfg.tls = args.tls_cert.zip(args.tls_key);
    args.tuning.apply(&mut cfg);
    set_memory(&mut cfg, args.tuning.memory_limit(1), 1);
    cfg.validate()?;
    if cfg.cluster_secret.is_none() {
        tracing::warn!(
            "no --cluster-secret-file: any process that reaches this node's RPC or gossip port can join the ring and read or change its data"
        );
    }
    if cfg.api_tokens.is_none() {
        tracing::warn!(
            "no --api-tokens: anyone who reaches the HTTP port can read, write and delete keys, and decommission the node"
        );
    }
    let handle = NodeHandle::start(cfg, GossipTransport::Udp).await?;
    // Caught from before the `listening` line on: a SIGHUP's default action ends the process.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // One machine-readable line on stdout, so scripts and tests that bind port 0 learn the
    // addresses actually bound.
    println!(
        "listening id={} http={} rpc={} gossip={}",
        handle.node().system().id(),
        handle.http_addr(),
        handle.rpc_addr(),
        handle.gossip_addr()
    );
    let signalled = tokio::select! {
        _ = wait_for_signal() => true,
        _ = handle.left() => false,
        _ = reload_on_sighup(&handle, hup) => false,
    };
    if signalled {
        // SIGTERM or Ctrl-C: stop without failing any client request.
        handle.shutdown_gracefully(STOP_DEADLINE).await;
    } else {
        handle.shutdown().await;
    }
    Ok(())
}

/// Resolves the HOST:PORT given to `flag` (an IP address, or a name) to one address, IPv4
/// first. Fails with exit code 2.
async fn resolve(flag: &str, value: &str) -> ringkv::Result<SocketAddr> {
    let addrs = ringkv::net::resolve(value)
        .await
        .map_err(|e| ringkv::Error::invalid(format!("{flag} {value}: {e}")))?;
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| ringkv::Error::invalid(format!("{flag} {value}: resolves to no address")))
}

async fn resolve_opt(flag: &str, value: &Option<String>) -> ringkv::Result<Option<SocketAddr>> {
    match value {
        Some(v) => resolve(flag, v).await.map(Some),
        None => Ok(None),
    }
}

/// Reloads the API tokens on every SIGHUP; never returns.
async fn reload_on_sighup(handle: &NodeHandle, hup: Option<tokio::signal::unix::Signal>) {
    let Some(mut hup) = hup else {
        return std::future::pending().await;
    };
    while hup.recv().await.is_some() {
        match handle.reload_tokens() {
            Ok(n) => tracing::info!(tokens = n, "SIGHUP: API tokens reloaded"),
            Err(err) => tracing::warn!(%err, "SIGHUP: API tokens not reloaded; the old ones stay"),
        }
    }
    std::future::pending().await
}

/// How long a stopping node waits for requests in flight and hint delivery.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// What a dev node's thread tells the main thread.
enum DevEvent {
    Started {
        index: usize,
        id: String,
        http: SocketAddr,
        rpc: SocketAddr,
        gossip: SocketAddr,
    },
    Failed(ringkv::Error),
    /// The node can serve requests (`GET /ready` answers 200).
    Ready(usize),
    /// The node was asked to leave (POST /cluster/leave), handed over, and stopped.
    Left(usize),
}

/// Starts one node of a dev ring on its own thread, with its own single-threaded runtime.
///
/// Why not one multi-threaded runtime for the whole ring: nodes talk to each other over
/// loopback TCP anyway, so they gain nothing from sharing worker threads, and a work-stealing
/// runtime pays for waking its idle workers across cores (futex calls and context switches,
/// about two per request). On 2 cores, one thread per node served ~30% more quorum requests.
/// Each node is then laid out as a `serve --threads 1` process would be.
fn spawn_dev_node(
    index: usize,
    cfg: Config,
    events: tokio::sync::mpsc::UnboundedSender<DevEvent>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(cfg.id.to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    let _ = events.send(DevEvent::Failed(err.into()));
                    return;
                }
            };
            runtime.block_on(async {
                let handle = match NodeHandle::start(cfg, GossipTransport::Udp).await {
                    Ok(h) => h,
                    Err(err) => {
                        let _ = events.send(DevEvent::Failed(err));
                        return;
                    }
                };
                let _ = events.send(DevEvent::Started {
                    index,
                    id: handle.node().system().id().to_string(),
                    http: handle.http_addr(),
                    rpc: handle.rpc_addr(),
                    gossip: handle.gossip_addr(),
                });
                let node = handle.node().clone();
                let ready = async {
                    node.lifecycle().wait_ready().await;
                    let _ = events.send(DevEvent::Ready(index));
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    _ = ready => {}
                    _ = stop.cancelled() => handle.shutdown_gracefully(STOP_DEADLINE).await,
                    _ = handle.left() => {
                        handle.shutdown().await;
                        let _ = events.send(DevEvent::Left(index));
                    }
                }
            });
            runtime.shutdown_background();
        })
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
    // A ring smaller than N cannot meet the default quorums: lower N, R and W to the node
    // count, and say so, rather than start a ring that never gets ready.
    let mut tuning = args.tuning.clone();
    let lowered = ringkv::config::fit_to_nodes(
        usize::from(args.nodes),
        [
            ("N (--replicas)", &mut tuning.replicas),
            ("R (--read-quorum)", &mut tuning.read_quorum),
            ("W (--write-quorum)", &mut tuning.write_quorum),
        ],
    );
    let memory_limit = tuning.memory_limit(usize::from(args.nodes));
    let mut configs = Vec::new();
    for i in 0..args.nodes {
        let mut cfg = Config::new(
            format!("n{}", i + 1),
            addr(port(0, i)?),
            addr(port(1000, i)?),
            addr(port(-1000, i)?),
        );
        cfg.seeds = seeds.clone();
        cfg.data_dir = args
            .data_dir
            .as_ref()
            .map(|d| d.join(format!("n{}", i + 1)));
        if !args.zones.is_empty() {
            cfg.zone = args.zones[i as usize % args.zones.len()].clone();
        }
        tuning.apply(&mut cfg);
        set_memory(&mut cfg, memory_limit, usize::from(args.nodes));
        cfg.validate()?;
        configs.push(cfg);
    }
    let began = std::time::Instant::now();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut threads = Vec::new();
    let mut started = Vec::new();
    for (i, cfg) in configs.into_iter().enumerate() {
        threads.push(spawn_dev_node(
            i,
            cfg,
            events_tx.clone(),
            stop.child_token(),
        )?);
        started.push(None);
    }
    drop(events_tx);
    let mut ready = vec![false; started.len()];
    let mut failure = None;
    // The banner waits until every node is ready, so its `try:` lines work when pasted at
    // once. Ctrl-C still stops a ring that never gets there.
    let signal = wait_for_signal();
    tokio::pin!(signal);
    while started.iter().any(Option::is_none) || ready.contains(&false) {
        let event = tokio::select! {
            _ = &mut signal => None,
            event = events.recv() => event,
        };
        match event {
            Some(DevEvent::Started {
                index,
                id,
                http,
                rpc,
                gossip,
            }) => started[index] = Some((id, http, rpc, gossip)),
            Some(DevEvent::Ready(index)) => ready[index] = true,
            Some(DevEvent::Failed(err)) => {
                failure = Some(err);
                break;
            }
            Some(DevEvent::Left(_)) | None => {
                failure = Some(ringkv::Error::Shutdown);
                break;
            }
        }
    }
    if let Some(err) = failure {
        stop.cancel();
        join_all(threads).await;
        return match err {
            ringkv::Error::Shutdown => Ok(()),
            err => Err(err),
        };
    }
    let started: Vec<_> = started.into_iter().flatten().collect();
    let count = match started.len() {
        1 => "1 node".to_string(),
        n => format!("{n} nodes"),
    };
    println!(
        "ringkv dev ring: {count} on 127.0.0.1, ready in {:.2} s",
        began.elapsed().as_secs_f64()
    );
    if !lowered.is_empty() {
        println!(
            "  lowered to fit {count}: {} (a key has at most one copy per node)",
            lowered.join(", ")
        );
    }
    for (id, http, rpc, gossip) in &started {
        println!("  {id}  http://{http}  (rpc {rpc}, gossip {gossip})");
    }
    let first = started[0].1;
    let last = started[started.len() - 1].1;
    println!();
    println!("try:");
    println!("  curl -i -X PUT --data-binary 'hello' http://{first}/kv/greeting");
    println!("  curl -i http://{last}/kv/greeting");
    println!("  curl -s http://{first}/cluster/members");
    println!();
    println!("Ctrl-C stops the ring.");
    let mut running = started.len();
    loop {
        tokio::select! {
            _ = &mut signal => break,
            event = events.recv() => match event {
                Some(DevEvent::Left(i)) => {
                    println!("{} left the ring", started[i].0);
                    running -= 1;
                    if running == 0 {
                        join_all(threads).await;
                        return Ok(());
                    }
                }
                Some(DevEvent::Started { .. } | DevEvent::Ready(_) | DevEvent::Failed(_)) => {}
                None => break,
            },
        }
    }
    println!("stopping...");
    stop.cancel();
    join_all(threads).await;
    Ok(())
}

/// Waits for the dev nodes' threads to end, without blocking the main runtime.
async fn join_all(threads: Vec<std::thread::JoinHandle<()>>) {
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
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
