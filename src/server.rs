//! Starting and stopping a node: [`NodeHandle`].
//!
//! [`NodeHandle::start`] binds the HTTP and RPC listeners (port 0 allowed), loads the data
//! dir if there is one, starts gossip with the addresses it actually bound, composes the
//! node's parts ([`crate::node`]) and spawns the servers and workers, each with the parts it
//! uses. Every task it spawns is tracked and watches one cancellation token, so
//! [`NodeHandle::shutdown`] stops them all and waits for them: nothing outlives the handle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::antientropy::AntiEntropy;
use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::error::{Error, Result};
use crate::hints::{HintLimits, HintStore};
use crate::lifecycle::{Lifecycle, STOP_ANNOUNCE_ROUNDS};
use crate::membership::{GossipTransport, Membership, MembershipConfig, View};
use crate::net::{Listener, Network};
use crate::node::Node;
use crate::replica::Replica;
use crate::ring::NodeId;
use crate::rpc::client::{Pool, PoolConfig};
use crate::rpc::server::ServerContext;
use crate::rpc::{self, Hello};
use crate::stats::Stats;
use crate::store::Record;
use crate::store::Store;
use crate::system::System;
use crate::version::Actor;
use crate::watch::Watches;

/// A started node. Dropping it without [`NodeHandle::shutdown`] leaves its tasks running.
pub struct NodeHandle {
    node: Arc<Node>,
    membership: Membership,
    http_addr: SocketAddr,
    rpc_addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    http_stop: crate::api::Stop,
    /// HTTP connection tasks, tracked apart so a graceful stop can wait for them alone.
    http_tracker: TaskTracker,
    /// The snapshot thread, with its stop flag, when the node has a data dir.
    snapshots: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    /// The API tokens, with `--api-tokens`.
    tokens: Option<Arc<crate::access::TokenFile>>,
}

impl NodeHandle {
    /// Validates `config`, binds every listener and starts the node, on real TCP.
    pub async fn start(config: Config, transport: GossipTransport) -> Result<NodeHandle> {
        Self::start_with(config, transport, Arc::new(crate::net::Tcp)).await
    }

    /// As [`NodeHandle::start`], with HTTP and RPC on `net` ([`crate::net`]).
    pub async fn start_with(
        config: Config,
        transport: GossipTransport,
        net: Arc<dyn Network>,
    ) -> Result<NodeHandle> {
        config.validate()?;
        let tokens = match &config.api_tokens {
            Some(path) => Some(Arc::new(crate::access::TokenFile::open(path)?)),
            None => None,
        };
        let tls = match &config.tls {
            Some((cert, key)) => Some(crate::tls::acceptor(cert, key)?),
            None => None,
        };
        let bind = |flag, addr| {
            move |e: std::io::Error| {
                crate::net::bind_refusal(flag, addr, "TCP", e.kind()).unwrap_or_else(|| e.into())
            }
        };
        let http = net
            .bind(config.http)
            .await
            .map_err(bind("--http", config.http))?;
        let rpc_listener = net
            .bind(config.rpc)
            .await
            .map_err(bind("--rpc", config.rpc))?;
        let http_addr = http.local_addr()?;
        let rpc_addr = rpc_listener.local_addr()?;
        // What peers and clients are told: the bound addresses unless advertised otherwise.
        let advertised_http = config.advertise_http.unwrap_or(http_addr);
        let advertised_rpc = config.advertise_rpc.unwrap_or(rpc_addr);
        crate::net::check_advertised("--http", "--advertise-http", advertised_http)?;
        crate::net::check_advertised("--rpc", "--advertise-rpc", advertised_rpc)?;
        // The data dir is loaded before anything else starts: gossip and RPC wait, so no
        // peer sends copies into a half-loaded store; HTTP answers `/ready` with the progress.
        let (store, hints) = open_data(&config, http.as_ref()).await?;

        wait_for_seeds(&config, http.as_ref()).await;

        let generation = new_generation(&config.clock);
        let id: NodeId = NodeId::from(config.id.as_str());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stats = Arc::new(Stats::default());

        let membership = Membership::start(
            MembershipConfig {
                id: id.clone(),
                generation,
                cluster_id: config.cluster_id.clone(),
                gossip_addr: config.gossip,
                seeds: config.seeds.clone(),
                http_addr: advertised_http,
                rpc_addr: advertised_rpc,
                advertise_gossip: config.advertise_gossip,
                zone: crate::ring::Zone::from(config.zone.as_str()),
                vnodes: config.vnodes,
                gossip: config.gossip_config.clone(),
                gossip_key: config.cluster_secret.as_ref().map(|s| s.derive("gossip")),
                counters: stats.gossip.clone(),
            },
            transport,
            shutdown.clone(),
            &tracker,
        )
        .await
        .map_err(|err| match err {
            // chitchat's socket would not bind: name the flag, as for HTTP and RPC.
            Error::Io(io) => crate::net::bind_refusal("--gossip", config.gossip, "UDP", io.kind())
                .unwrap_or(Error::Io(io)),
            err => err,
        })?;

        let hello = Hello::ours(
            config.cluster_id.clone(),
            config.id.clone(),
            Some(generation),
        );
        let refusals = Arc::new(rpc::auth::Refusals::new(
            stats.rpc_handshakes_refused.clone(),
        ));
        let auth = config
            .cluster_secret
            .as_ref()
            .map(|secret| Arc::new(rpc::auth::RpcAuth::new(secret, refusals.clone())));
        let pool = Pool::new(PoolConfig {
            net,
            hello: hello.clone(),
            max_payload: config.max_frame_payload(),
            timeout: config.rpc_timeout,
            frames_rejected: stats.rpc_frames_rejected.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            auth: auth.clone(),
            refusals: refusals.clone(),
            expect: Some(crate::membership::expect_from_view(membership.subscribe())),
        });
        let system = Arc::new(System::new(
            config,
            Actor {
                node: id,
                generation,
            },
            pool,
            stats.clone(),
            membership.subscribe(),
            tracker.clone(),
            shutdown.clone(),
        ));
        let replica = Arc::new(Replica::new(system.clone(), store, hints));
        let watches = Arc::new(Watches::new(system.clone(), membership.self_keys()));
        let node = Arc::new(Node {
            coordinator: Arc::new(Coordinator::new(
                system.clone(),
                replica.clone(),
                watches.clone(),
            )),
            anti_entropy: Arc::new(AntiEntropy::new(system.clone(), replica.clone())),
            lifecycle: Arc::new(Lifecycle::new(
                system.clone(),
                replica.clone(),
                membership.self_keys(),
            )),
            system: system.clone(),
            replica: replica.clone(),
            watches: watches.clone(),
        });

        // Each worker gets the parts it uses.
        let rpc_ctx = Arc::new(ServerContext {
            service: node.clone(),
            hello,
            max_payload: system.config.max_frame_payload(),
            frames_rejected: stats.rpc_frames_rejected.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            auth,
            refusals,
            max_in_flight: system.config.max_rpc_in_flight,
            in_flight_refused: stats.rpc_in_flight_refused.clone(),
        });
        tracker.spawn(rpc::server::serve(rpc_listener, rpc_ctx));
        tracker.spawn(crate::hinted::run(replica.clone(), shutdown.clone()));
        let ae = node.anti_entropy.clone();
        tracker.spawn(crate::antientropy::run(ae.clone(), shutdown.clone()));
        tracker.spawn(node.lifecycle.clone().start_up(ae, shutdown.clone()));
        let snapshots = match replica
            .store
            .log()
            .cloned()
            .and_then(crate::durable::Wal::of)
        {
            Some(log) => {
                let stop = Arc::new(AtomicBool::new(false));
                let (live, fill) = (replica.clone(), replica.clone());
                let thread = log.spawn_snapshots(
                    stop.clone(),
                    move || live.store.stats().bytes,
                    move |put| fill.snapshot_into(put),
                )?;
                Some((stop, thread))
            }
            None => None,
        };
        tracker.spawn(crate::ttl::run(
            replica.clone(),
            watches.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(watches.clone().run_watch_announcer());
        tracker.spawn(crate::memory::gossip(
            system.memory.clone(),
            membership.self_keys(),
            shutdown.clone(),
        ));
        let http_stop = crate::api::Stop {
            drain: CancellationToken::new(),
            kill: shutdown.clone(),
        };
        let http_tracker = TaskTracker::new();
        tracker.spawn(crate::api::serve(
            http,
            node.clone(),
            crate::api::Security {
                tokens: tokens.clone(),
                tls,
            },
            http_stop.clone(),
            http_tracker.clone(),
        ));

        info!(
            id = %system.id,
            generation,
            http = %http_addr,
            rpc = %rpc_addr,
            gossip = %membership.gossip_addr(),
            max_memory = %crate::memory::describe(system.memory.limit()),
            "ringkv node listening"
        );
        Ok(NodeHandle {
            node,
            membership,
            http_addr,
            rpc_addr,
            shutdown,
            tracker,
            http_stop,
            http_tracker,
            snapshots,
            tokens,
        })
    }

    /// Reads the `--api-tokens` file again (`SIGHUP`). Returns how many tokens it holds; on
    /// error the tokens in force stay.
    pub fn reload_tokens(&self) -> Result<usize> {
        match &self.tokens {
            Some(file) => file.reload(),
            None => Err(Error::invalid("this node has no --api-tokens")),
        }
    }

    /// The shared node state.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The RPC address actually bound.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// The gossip address actually bound.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.membership.gossip_addr()
    }

    /// The current membership view.
    pub fn view(&self) -> Arc<View> {
        self.node.system.view()
    }

    /// Resolves once a decommission has handed every key over.
    pub async fn left(&self) {
        self.node.lifecycle.left().await;
    }

    /// Stops the node without failing any client request (SIGTERM, Ctrl-C):
    ///
    /// 1. announce `stopping` through gossip and keep serving for a few gossip rounds, so
    ///    peers stop routing to this node at once instead of waiting for the failure
    ///    detector (the node keeps its place in the ring: it is expected back);
    /// 2. stop accepting HTTP connections, and let open ones finish the request in flight,
    ///    within `deadline`;
    /// 3. push pending hints to their targets if they are reachable;
    /// 4. stop everything else.
    pub async fn shutdown_gracefully(self, deadline: Duration) {
        let system = self.node.system.clone();
        info!(id = %system.id, "stopping: announcing it to the ring");
        self.node.lifecycle.begin_stop().await;
        let announce = system.config.gossip_config.interval * STOP_ANNOUNCE_ROUNDS;
        tokio::time::sleep(announce.min(deadline)).await;
        self.http_stop.drain.cancel();
        self.http_tracker.close();
        if tokio::time::timeout(deadline, self.http_tracker.wait())
            .await
            .is_err()
        {
            warn!(id = %system.id, "some HTTP requests did not finish before the deadline");
        }
        // Requests this node was coordinating for peers finish with the tracked tasks; hints
        // go now, while the process can still deliver them.
        let _ = tokio::time::timeout(deadline, crate::hinted::deliver(&self.node.replica)).await;
        self.shutdown().await;
    }

    /// Stops every listener and task and waits for them. Connections are dropped, not
    /// drained: to peers this looks like the process died, which is what tests want from a
    /// kill.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.http_tracker.close();
        self.http_tracker.wait().await;
        self.membership.shutdown().await;
        self.tracker.close();
        self.tracker.wait().await;
        // Last, the log: everything the node did is written, and the data dir is unlocked
        // for the next process.
        if let Some((stop, thread)) = self.snapshots {
            stop.store(true, Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(wal) = self
            .node
            .replica
            .store
            .log()
            .cloned()
            .and_then(crate::durable::Wal::of)
        {
            let _ = tokio::task::spawn_blocking(move || wal.close()).await;
        }
        info!(id = %self.node.system.id, "ringkv node stopped");
    }
}

/// The store and hints of a node: empty without a data dir; otherwise recovered from it
/// ([`crate::durable`]), with the log attached for every change from now on. While recovery
/// runs, `http` answers `/health`, and `/ready` with the progress.
async fn open_data(config: &Config, http: &dyn Listener) -> Result<(Store, HintStore)> {
    let limits = HintLimits {
        ttl: config.tombstone_grace,
        ..config.hint_limits
    };
    if let Some(disk) = &config.disk {
        // The simulator's disk: records in memory, no files and no threads.
        let (store, mut hints) = (Store::new(), HintStore::new(limits));
        let now = Instant::now();
        for record in disk.recover() {
            restore(&store, &mut hints, record, now);
        }
        let (mut store, log) = (store, disk.open());
        store.set_log(log.clone());
        hints.set_log(log);
        return Ok((store, hints));
    }
    let Some(dir) = config.data_dir.clone() else {
        return Ok((Store::new(), HintStore::new(limits)));
    };
    let lock = crate::durable::lock_dir(&dir)?;
    let progress = Arc::new(crate::durable::Progress::default());
    let loading = progress.clone();
    let load_dir = dir.clone();
    let load = tokio::task::spawn_blocking(move || {
        let store = Store::new();
        let mut hints = HintStore::new(limits);
        let now = Instant::now();
        let report = crate::durable::recover(&load_dir, &loading, |record| {
            restore(&store, &mut hints, record, now)
        })?;
        Ok::<_, Error>((store, hints, report))
    });
    let (store, hints, report) = tokio::select! {
        biased;
        res = load => res.map_err(|e| Error::Io(Arc::new(std::io::Error::other(e.to_string()))))??,
        () = crate::api::serve_starting(http, "loaded", move || {
            use std::sync::atomic::Ordering::Relaxed;
            let (done, total) = (progress.done.load(Relaxed), progress.total.load(Relaxed));
            format!("loading data dir: {done} of {total} bytes")
        }) => unreachable!("serves until dropped"),
    };
    info!(
        dir = %dir.display(),
        snapshot = ?report.snapshot,
        records = report.records,
        bytes = report.bytes,
        keys = store.stats().keys,
        set_aside = report.set_aside.len(),
        torn_tail = report.torn_tail,
        took_ms = report.took.as_millis() as u64,
        "data dir loaded"
    );
    let wal = crate::durable::Wal::open(
        &crate::durable::DurableConfig {
            dir,
            fsync: config.fsync,
            interval: config.fsync_interval,
            snapshot_log_bytes: config.snapshot_log_bytes,
        },
        lock,
    )?;
    wal.stats
        .corrupt_files
        .fetch_add(report.set_aside.len() as u64, Ordering::Relaxed);
    let mut store = store;
    let mut hints = hints;
    store.set_log(wal.clone());
    hints.set_log(wal);
    Ok((store, hints))
}

/// Puts one recovered record back: a key's versions, or a hint.
fn restore(store: &Store, hints: &mut HintStore, record: Record, now: Instant) {
    match record {
        Record::Key { key, versions } => store.restore(&key, versions),
        Record::Hint {
            home,
            key,
            versions,
        } => hints.restore(&NodeId::from(home.as_str()), key, versions, now),
    }
}

/// Waits until a seed other than this node resolves ([`crate::net::unresolved_seeds`]),
/// answering `/ready` 503 with the seeds that do not; returns at once when seeds are
/// addresses. chitchat resolves names again every minute after that, so a seed that moves
/// is found again.
async fn wait_for_seeds(config: &Config, http: &dyn Listener) {
    let own = config.advertise_gossip.unwrap_or(config.gossip);
    let Some(mut why) = crate::net::unresolved_seeds(&config.seeds, own).await else {
        return;
    };
    let status = Arc::new(std::sync::Mutex::new(why.clone()));
    let shown = status.clone();
    let serve = crate::api::serve_starting(http, "gossip", move || crate::lock(&shown).clone());
    let wait = async {
        let mut logged = Instant::now();
        let http = http
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        warn!(%why, %http, "waiting for a seed to resolve");
        loop {
            tokio::time::sleep(crate::net::SEED_RESOLVE_RETRY).await;
            match crate::net::unresolved_seeds(&config.seeds, own).await {
                None => return info!("a seed resolves"),
                Some(now) => why = now,
            }
            *crate::lock(&status) = why.clone();
            if logged.elapsed() >= SEED_WAIT_LOG_EVERY {
                warn!(%why, "still waiting for a seed to resolve");
                logged = Instant::now();
            }
        }
    };
    tokio::select! {
        biased;
        () = wait => {}
        () = serve => unreachable!("serves until dropped"),
    }
}

/// How often a node waiting for its seeds to resolve says so in its log.
const SEED_WAIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// A generation new at every start: the wall clock in milliseconds, bumped past the last one
/// handed out in this process so two nodes started in the same millisecond by one test still
/// differ. The clock without its offset ([`crate::clock::Clock::base_ms`]): a restart must
/// get a higher generation than the process it replaces even if a test set that node's clock
/// back. Simulated time is taken as it is: the bump would carry one simulation's starts into
/// the next one run by the same process, and a seed would no longer replay its run.
fn new_generation(clock: &crate::clock::Clock) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = clock.base_ms();
    if clock.is_simulated() {
        return now;
    }
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}
