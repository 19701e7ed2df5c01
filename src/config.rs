//! A node's configuration, with the defaults and the checks made before anything starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::hints::{DEFAULT_HINT_WINDOW, DEFAULT_MAX_HINT_BYTES, DEFAULT_MAX_HINTS, HintLimits};
use crate::membership::GossipConfig;
use crate::ring::DEFAULT_VNODES;

/// Default replication factor N.
pub const DEFAULT_REPLICAS: usize = 3;
/// Default read quorum R.
pub const DEFAULT_READ_QUORUM: usize = 2;
/// Default write quorum W.
pub const DEFAULT_WRITE_QUORUM: usize = 2;
/// Events a watcher may fall behind by before it gets a `lagged` message instead (the
/// default of [`Config::watch_buffer`], see [`crate::watch`]).
pub const WATCH_BUFFER: usize = 1024;
/// Default largest value accepted: 8 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 8 * 1024 * 1024;
/// Default time a replica has to answer one RPC. A healthy loopback replica answers in well
/// under a millisecond; this bounds how long a hung (not yet detected dead) peer can hold a
/// client request.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Default cluster id. Nodes only talk to nodes with the same one.
pub const DEFAULT_CLUSTER_ID: &str = "ringkv";
/// Default time a tombstone is kept after every home replica holds it. Hints live at most
/// this long too, so no hint can bring back a value whose tombstone was purged.
pub const DEFAULT_TOMBSTONE_GRACE: Duration = Duration::from_secs(3600);
/// Default period of the hinted-handoff worker. Gossip marks a node alive within about a
/// second of its return; one more second to start delivering is in the same range.
pub const DEFAULT_HANDOFF_INTERVAL: Duration = Duration::from_secs(1);
/// Default period of anti-entropy rounds. Each round compares one peer's shared segments, so
/// with P peers a given pair is compared about every P × 2 s; a whole-ring comparison of
/// identical replicas costs a few KiB, so this can be short.
pub const DEFAULT_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(2);
/// Default anti-entropy and handoff bandwidth cap per node: 32 MiB/s, a fraction of loopback
/// or a LAN, so repair never starves client traffic.
pub const DEFAULT_ANTI_ENTROPY_RATE: u64 = 32 * 1024 * 1024;
/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// How often each node drops the values that expired (TTL). Reads never return an expired
/// value, so this bounds only how long its memory stays in use and how late an `expire`
/// watch event comes.
pub const DEFAULT_TTL_SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Keys listed per page when the client gives no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// Largest `limit` a listing accepts: a page, and what each node sends for it, stay bounded.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Longest TTL accepted: ten years, in seconds.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's stable id (`--id`).
    pub id: String,
    /// Nodes with another cluster id are refused at the RPC handshake and by gossip.
    pub cluster_id: String,
    /// HTTP listen address; port 0 picks a free port.
    pub http: SocketAddr,
    /// RPC listen address; port 0 picks a free port.
    pub rpc: SocketAddr,
    /// Gossip (UDP) listen address; port 0 picks a free port.
    pub gossip: SocketAddr,
    /// Gossip addresses of other nodes (may include this node or nodes not yet up).
    pub seeds: Vec<String>,
    /// N: replicas per key.
    pub replicas: usize,
    /// R: default replies a read waits for.
    pub read_quorum: usize,
    /// W: default acknowledgements a write waits for.
    pub write_quorum: usize,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Most bytes this node may hold (`--max-memory`, [`crate::memory`]); 0: no limit.
    pub max_memory: u64,
    /// Where the node reads how much memory it holds: the allocator, unless a test sets it.
    pub memory_gauge: crate::memory::Gauge,
    /// Virtual nodes per node on the ring.
    pub vnodes: usize,
    /// This node's failure domain (`--zone`): a key's homes spread over zones
    /// ([`crate::ring`]). [`crate::ring::DEFAULT_ZONE`] unless set.
    pub zone: String,
    /// Time a replica has to answer one RPC.
    pub rpc_timeout: Duration,
    /// Gossip and failure-detector tunables.
    pub gossip_config: GossipConfig,
    /// Bounds of the hint store. Its `ttl` is ignored: the node sets it to
    /// `tombstone_grace`, so that no hint outlives a tombstone.
    pub hint_limits: HintLimits,
    /// How often hints are offered to their targets.
    pub handoff_interval: Duration,
    /// How often each node runs an anti-entropy round (one peer per round), hands off keys
    /// it no longer owns and collects old tombstones.
    pub anti_entropy_interval: Duration,
    /// Most bytes per second one node sends in anti-entropy and ownership handoff.
    pub anti_entropy_rate: u64,
    /// How long a tombstone is kept after every home replica holds it. Hints live at most
    /// this long ([`HintLimits::ttl`] is set to it).
    pub tombstone_grace: Duration,
    /// Period of the TTL sweep.
    pub ttl_sweep_interval: Duration,
    /// The wall clock this node judges TTL expiry by ([`crate::clock`]): the system clock,
    /// unless a test skews it. Clones share it.
    pub clock: Clock,
    /// Events a WebSocket watcher may fall behind by before it is sent `lagged`.
    pub watch_buffer: usize,
    /// Where the node keeps its write-ahead log and snapshots; `None`: in memory only.
    pub data_dir: Option<std::path::PathBuf>,
    /// A disk other than a data dir, in its place: the simulator's ([`crate::store::Disk`]).
    pub disk: Option<Arc<dyn crate::store::Disk>>,
    /// When the log reaches the disk ([`crate::durable`]).
    pub fsync: crate::durable::Fsync,
    /// The period of `--fsync periodic` (and of writes with `never`).
    pub fsync_interval: Duration,
    /// A snapshot is due once the log since the last one holds this many bytes (and more
    /// than the live data).
    pub snapshot_log_bytes: u64,
    /// The ring's shared secret (`--cluster-secret-file`): with one, RPC connections and
    /// gossip datagrams are authenticated ([`crate::secret`]); without, the ring is open.
    pub cluster_secret: Option<crate::secret::ClusterSecret>,
    /// The addresses peers and clients reach this node at (`--advertise-http`, `-rpc`,
    /// `-gossip`): shown in members, gossip and `/cluster/*`. `None`: the bound address,
    /// which must then not be a wildcard (`0.0.0.0`, `::`).
    pub advertise_http: Option<SocketAddr>,
    pub advertise_rpc: Option<SocketAddr>,
    pub advertise_gossip: Option<SocketAddr>,
    /// The API token file (`--api-tokens`, [`crate::access`]); without one, the HTTP API is
    /// open.
    pub api_tokens: Option<std::path::PathBuf>,
    /// Most WebSocket watchers this node serves at once (`--max-watchers`); more are
    /// refused with 503 and counted (`ringkv_watchers_refused`).
    pub max_watchers: usize,
    /// Most RPC requests that may wait (forwarded writes; copies with a data dir) one peer
    /// connection has in flight here (`--max-rpc-in-flight`); past the cap a request is
    /// refused at once as busy (`ringkv_rpc_in_flight_refused`).
    pub max_rpc_in_flight: usize,
    /// `--tls-cert` and `--tls-key` (PEM): with both, the HTTP port speaks only HTTPS
    /// ([`crate::tls`]).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Most HTTP connections served at once; more are closed at once (and counted).
    pub max_http_connections: usize,
    /// How long a client has to send a request's headers, counted from the end of the
    /// previous request on a keep-alive connection (so it bounds idle connections too).
    pub http_header_timeout: Duration,
    /// How long a client has to send a request's body.
    pub http_body_timeout: Duration,
}

/// Default `--max-http-connections`: room for many clients (a connection costs about 10 KiB
/// idle), well below the file-descriptor limit a service usually gets (65,536).
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = 8192;

/// Default `--http-header-timeout-secs`: hyper's default. A slowloris client, or one idle on
/// a keep-alive connection, is dropped after it. Clients that pool connections keep them idle
/// for less ([`crate::client::POOL_IDLE_TIMEOUT`], 20 s).
pub const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `--http-body-timeout-secs`: an 8 MiB value (the default limit) needs a client
/// sending at 150 KB/s to be refused; a client trickling a body slower is cut off.
pub const DEFAULT_HTTP_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Default `--max-watchers`: WebSocket watchers one node serves at once. Each costs a task,
/// a buffer of up to [`WATCH_BUFFER`] events and a socket; a client past the cap gets 503
/// (`kind: rejected`) before the upgrade, and may watch through another node.
pub const DEFAULT_MAX_WATCHERS: usize = 1024;

/// Default `--max-rpc-in-flight`: requests that may wait (forwarded writes, and copies with a
/// data dir) one peer connection may have in flight on a node. Past it a request is refused
/// at once (`Rejected`, "busy"): the peer counts that replica as failed, and its client may
/// see 503 and retry. Shedding, not waiting: a node that stopped reading a peer's connection
/// would also stop reading the acknowledgements of its own writes to that peer, and two
/// nodes doing so to each other would stall until RPC timeouts. Each peer has one
/// connection, so a node runs at most (peers × this) such requests at once.
pub const DEFAULT_MAX_RPC_IN_FLIGHT: usize = 256;

/// Default `--fsync-interval-ms`: what `periodic` may lose on a crash of the node.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_millis(100);

impl Config {
    /// A configuration with every default, listening on the given addresses.
    pub fn new(
        id: impl Into<String>,
        http: SocketAddr,
        rpc: SocketAddr,
        gossip: SocketAddr,
    ) -> Config {
        Config {
            id: id.into(),
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            http,
            rpc,
            gossip,
            seeds: Vec::new(),
            replicas: DEFAULT_REPLICAS,
            read_quorum: DEFAULT_READ_QUORUM,
            write_quorum: DEFAULT_WRITE_QUORUM,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_memory: 0,
            memory_gauge: crate::memory::Gauge::default(),
            vnodes: DEFAULT_VNODES,
            zone: crate::ring::DEFAULT_ZONE.to_string(),
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            gossip_config: GossipConfig::default(),
            hint_limits: HintLimits {
                max_hints: DEFAULT_MAX_HINTS,
                max_bytes: DEFAULT_MAX_HINT_BYTES,
                window: DEFAULT_HINT_WINDOW,
                ttl: DEFAULT_TOMBSTONE_GRACE,
            },
            handoff_interval: DEFAULT_HANDOFF_INTERVAL,
            anti_entropy_interval: DEFAULT_ANTI_ENTROPY_INTERVAL,
            anti_entropy_rate: DEFAULT_ANTI_ENTROPY_RATE,
            tombstone_grace: DEFAULT_TOMBSTONE_GRACE,
            ttl_sweep_interval: DEFAULT_TTL_SWEEP_INTERVAL,
            clock: Clock::system(),
            watch_buffer: WATCH_BUFFER,
            data_dir: None,
            disk: None,
            fsync: crate::durable::Fsync::Always,
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
            snapshot_log_bytes: crate::durable::SNAPSHOT_MIN_LOG,
            cluster_secret: None,
            advertise_http: None,
            advertise_rpc: None,
            advertise_gossip: None,
            api_tokens: None,
            max_watchers: DEFAULT_MAX_WATCHERS,
            max_rpc_in_flight: DEFAULT_MAX_RPC_IN_FLIGHT,
            tls: None,
            max_http_connections: DEFAULT_MAX_HTTP_CONNECTIONS,
            http_header_timeout: DEFAULT_HTTP_HEADER_TIMEOUT,
            http_body_timeout: DEFAULT_HTTP_BODY_TIMEOUT,
        }
    }

    /// Checks the configuration; every message names the offending flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidInput(msg));
        if self.id.is_empty() || self.id.len() > 255 {
            return bad("--id must be 1 to 255 bytes".into());
        }
        if self.replicas == 0 {
            return bad("--replicas must be at least 1".into());
        }
        if self.read_quorum == 0 || self.read_quorum > self.replicas {
            return bad(format!(
                "--read-quorum must be between 1 and --replicas ({}), got {}",
                self.replicas, self.read_quorum
            ));
        }
        if self.write_quorum == 0 || self.write_quorum > self.replicas {
            return bad(format!(
                "--write-quorum must be between 1 and --replicas ({}), got {}",
                self.replicas, self.write_quorum
            ));
        }
        if self.max_value_bytes == 0
            || self.max_value_bytes > u32::MAX as usize - crate::codec::FRAME_OVERHEAD
        {
            return bad("--max-value-bytes must be between 1 and about 4 GiB".into());
        }
        if self.vnodes == 0 || self.vnodes > 4096 {
            return bad("--vnodes must be between 1 and 4096".into());
        }
        let zone_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.zone.is_empty() || self.zone.len() > 64 || !self.zone.chars().all(zone_char) {
            return bad(format!(
                "--zone must be 1 to 64 letters, digits, '-', '_' or '.', got {:?}",
                self.zone
            ));
        }
        if self.max_http_connections == 0 {
            return bad("--max-http-connections must be at least 1".into());
        }
        if self.http_header_timeout.is_zero() || self.http_body_timeout.is_zero() {
            return bad(
                "--http-header-timeout-secs and --http-body-timeout-secs must be positive".into(),
            );
        }
        if self.max_watchers == 0 {
            return bad("--max-watchers must be at least 1".into());
        }
        if self.max_rpc_in_flight == 0 {
            return bad("--max-rpc-in-flight must be at least 1".into());
        }
        if self.rpc_timeout.is_zero() {
            return bad("--rpc-timeout-ms must be positive".into());
        }
        if self.gossip_config.interval.is_zero() {
            return bad("--gossip-interval-ms must be positive".into());
        }
        if self.gossip_config.phi_threshold.is_nan() || self.gossip_config.phi_threshold <= 0.0 {
            return bad("--phi-threshold must be positive".into());
        }
        if self.anti_entropy_interval.is_zero() || self.anti_entropy_rate == 0 {
            return bad(
                "--anti-entropy-interval-ms and --anti-entropy-rate must be positive".into(),
            );
        }
        if self.handoff_interval.is_zero() {
            return bad("--handoff-interval-ms must be positive".into());
        }
        if self.fsync_interval.is_zero() || self.fsync_interval > Duration::from_secs(60) {
            return bad("--fsync-interval-ms must be between 1 and 60000".into());
        }
        Ok(())
    }

    /// Largest RPC frame payload: one value plus room for key and versions.
    pub fn max_frame_payload(&self) -> usize {
        self.max_value_bytes + crate::codec::FRAME_OVERHEAD
    }
}

/// Lowers each of `settings` (N, R, W) that exceeds `nodes` to it, and says which: a ring
/// smaller than N could never meet the default quorums, and would never get ready
/// (`ringkv dev --nodes 1`).
pub fn fit_to_nodes<'a>(
    nodes: usize,
    settings: impl IntoIterator<Item = (&'a str, &'a mut usize)>,
) -> Vec<String> {
    let mut lowered = Vec::new();
    for (name, value) in settings {
        if *value > nodes {
            lowered.push(format!("{name} {} -> {nodes}", *value));
            *value = nodes;
        }
    }
    lowered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
        Config::new("n1", a, a, a)
    }

    #[test]
    fn defaults_are_valid() {
        cfg().validate().unwrap();
    }

    #[test]
    fn quorums_above_n_are_rejected() {
        let mut c = cfg();
        c.read_quorum = 4;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--read-quorum")
        );
        let mut c = cfg();
        c.write_quorum = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--write-quorum")
        );
        let mut c = cfg();
        c.replicas = 1;
        assert!(c.validate().is_err(), "R=2 > N=1");
        c.read_quorum = 1;
        c.write_quorum = 1;
        c.validate().unwrap();
    }

    #[test]
    fn empty_id_is_rejected() {
        let mut c = cfg();
        c.id.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_ring_smaller_than_n_gets_quorums_it_can_meet() {
        let (mut n, mut r, mut w) = (3, 2, 2);
        let lowered = fit_to_nodes(1, [("N", &mut n), ("R", &mut r), ("W", &mut w)]);
        assert_eq!((n, r, w), (1, 1, 1));
        assert_eq!(lowered, ["N 3 -> 1", "R 2 -> 1", "W 2 -> 1"]);
        let (mut n, mut r, mut w) = (3, 2, 2);
        let lowered = fit_to_nodes(2, [("N", &mut n), ("R", &mut r), ("W", &mut w)]);
        assert_eq!((n, r, w), (2, 2, 2));
        assert_eq!(lowered, ["N 3 -> 2"]);
        let (mut n, mut r, mut w) = (3, 2, 2);
        assert!(fit_to_nodes(5, [("N", &mut n), ("R", &mut r), ("W", &mut w)]).is_empty());
        assert_eq!((n, r, w), (3, 2, 2));
    }
}
