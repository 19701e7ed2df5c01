//! `GET /metrics`: the node's metrics in the Prometheus / OpenMetrics text format.
//!
//! HTTP requests are counted and timed as they happen ([`HttpMetrics`]). Everything else is
//! read at scrape time from the counters the node keeps anyway ([`crate::stats::Stats`], the
//! store, the hint store, the membership view) by a collector, so the hot path pays nothing
//! extra for it.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::node::Node;
use crate::stats::{Kind, StatsSnapshot};
use crate::store::StoreStats;

/// Labels of one HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route, e.g. `kv` or `cluster_members` (never the key: bounded cardinality).
    pub route: &'static str,
    /// The HTTP method.
    pub op: &'static str,
    /// The status code answered.
    pub status: u16,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub op: &'static str,
}

/// Request counters and latency histograms, updated by the HTTP layer.
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// HTTP connections open now (TLS handshakes and WebSockets included).
    pub connections: prometheus_client::metrics::gauge::Gauge,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            // 50 µs to about 13 s in 18 doubling steps: loopback quorum calls sit near the
            // bottom, timeouts near the top.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
            connections: Default::default(),
        }
    }
}

impl HttpMetrics {
    /// Records one answered request.
    pub fn observe(&self, route: &'static str, op: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, op, status })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route, op })
            .observe(took.as_secs_f64());
    }
}

/// The node's own counters and gauges, as read at scrape time.
#[derive(Debug)]
struct NodeCollector {
    counters: StatsSnapshot,
    store: StoreStats,
    hints_pending: u64,
    alive: u64,
    dead: u64,
    watchers: u64,
    events_dropped: u64,
    events_lagged: u64,
    /// The write-ahead log's counters, with a data dir: records, bytes written, fsyncs, write
    /// errors, snapshots, damaged files set aside.
    wal: Option<[u64; 6]>,
    /// Bytes this node holds, and its `--max-memory` (0: none).
    memory: [u64; 2],
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut counters: Vec<(&str, &str, u64)> = vec![
            (
                "watch_events_dropped",
                "Watch events not delivered to a peer (queue full, peer unreachable or gone, or shutdown)",
                self.events_dropped,
            ),
            (
                "watch_events_lagged",
                "Watch events a slow watcher missed (it was sent a lagged message)",
                self.events_lagged,
            ),
        ];
        let mut gauges_of_stats = Vec::new();
        let metrics = self.counters.metrics();
        for m in &metrics {
            match m.kind {
                Kind::Counter => counters.push((m.name, m.help, m.value)),
                Kind::Gauge => gauges_of_stats.push((m.name, m.help, m.value)),
            }
        }
        if let Some([records, bytes, fsyncs, errors, snapshots, corrupt]) = self.wal {
            counters.extend([
                (
                    "wal_records",
                    "Records appended to the write-ahead log",
                    records,
                ),
                (
                    "wal_bytes_written",
                    "Bytes written to the write-ahead log",
                    bytes,
                ),
                ("wal_fsyncs", "fsyncs of the write-ahead log", fsyncs),
                (
                    "wal_write_errors",
                    "Failed log writes or fsyncs (a full disk): writes not acknowledged",
                    errors,
                ),
                ("snapshots", "Snapshots written", snapshots),
                (
                    "data_files_set_aside",
                    "Damaged log tails and snapshots recovery set aside at start",
                    corrupt,
                ),
            ]);
        }
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                &format!("ringkv_{name}"),
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, u64); 9] = [
            (
                "memory_used_bytes",
                "Bytes this node holds, as the allocator counts them (live allocations)",
                self.memory[0],
            ),
            (
                "memory_limit_bytes",
                "This node's --max-memory in bytes (0: no limit)",
                self.memory[1],
            ),
            ("keys", "Keys stored on this node", self.store.keys),
            (
                "tombstones",
                "Keys stored only as tombstones",
                self.store.tombstones,
            ),
            (
                "bytes_stored",
                "Bytes of keys and values stored",
                self.store.bytes,
            ),
            (
                "hints_pending",
                "Hinted keys waiting for their home replica",
                self.hints_pending,
            ),
            ("members_alive", "Members this node sees alive", self.alive),
            (
                "members_dead",
                "Members this node sees down or leaving",
                self.dead,
            ),
            (
                "watchers",
                "WebSocket watchers connected to this node",
                self.watchers,
            ),
        ];
        for (name, help, value) in gauges.into_iter().chain(gauges_of_stats) {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(
                &format!("ringkv_{name}"),
                help,
                None,
                gauge.metric_type(),
            )?)?;
        }
        // Refused writes, by why: only memory so far (its label leaves room for others).
        let refused = ConstCounter::new(self.counters.writes_refused_memory);
        refused.encode(
            encoder
                .encode_descriptor(
                    "ringkv_writes_refused",
                    "Writes refused (507) and copies refused, by reason: memory is --max-memory",
                    None,
                    refused.metric_type(),
                )?
                .encode_family(&[("reason", "memory")])?,
        )?;
        // Which build runs here, as a constant 1 with labels: a rolling upgrade shows as the
        // count of nodes per version.
        let info = ConstGauge::new(1i64);
        let protocol = crate::compat::Protocols::OURS.encode();
        let labels = [
            ("version", crate::compat::VERSION),
            ("protocol", protocol.as_str()),
        ];
        info.encode(
            encoder
                .encode_descriptor(
                    "ringkv_build_info",
                    "This node's build: its version and the RPC protocol versions it speaks",
                    None,
                    info.metric_type(),
                )?
                .encode_family(&labels)?,
        )?;
        Ok(())
    }
}

/// Renders every metric of `node` as OpenMetrics text.
pub fn render(node: &Node, http: &HttpMetrics) -> Result<String, std::fmt::Error> {
    let view = node.system().view();
    let alive = view.members.keys().filter(|id| view.is_alive(id)).count() as u64;
    let memory = node.system().memory();
    let collector = NodeCollector {
        memory: [memory.used(), memory.limit()],
        counters: node.stats().snapshot(),
        store: node.store().stats(),
        hints_pending: node.replica().hints_pending() as u64,
        alive,
        dead: view.members.len() as u64 - alive,
        watchers: node.watches().watchers.count() as u64,
        events_lagged: node.watches().watchers.lagged(),
        events_dropped: node
            .watches()
            .fanout
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        wal: node.store().log().map(|log| {
            use std::sync::atomic::Ordering::Relaxed;
            let s = log.stats();
            [
                s.records.load(Relaxed),
                s.bytes_written.load(Relaxed),
                s.fsyncs.load(Relaxed),
                s.write_errors.load(Relaxed),
                s.snapshots.load(Relaxed),
                s.corrupt_files.load(Relaxed),
            ]
        }),
    };
    let mut registry = Registry::default();
    registry.register(
        "ringkv_http_requests",
        "HTTP requests by route, method and status",
        http.requests.clone(),
    );
    registry.register(
        "ringkv_http_request_seconds",
        "HTTP request latency by route and method",
        http.latency.clone(),
    );
    registry.register(
        "ringkv_http_connections",
        "HTTP connections open now",
        http.connections.clone(),
    );
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}
