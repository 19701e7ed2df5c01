//! `ringkv bench`: a load generator that drives a ring over its HTTP API.
//!
//! One tokio task per connection, each with its own HTTP/1.1 keep-alive connection to one of
//! the target nodes (connections are dealt out over the nodes in turn). Tasks pick each
//! operation's kind (GET or PUT) and key at random, and record latencies in per-task HDR
//! histograms that are merged at the end, so the hot path shares nothing but two counters.
//!
//! - **Closed loop** (default): each connection sends its next request as soon as the last one
//!   is answered; latency is measured from the send.
//! - **Open loop** (`--rate OPS`): operation *i* is scheduled at `start + i / rate` whatever
//!   the ring's speed, and taken by the next free connection. Latency is measured from the
//!   scheduled time, so a stall delays every operation scheduled behind it and shows in the
//!   percentiles instead of silently lowering the load (coordinated omission). Operations
//!   still unsent at the end are reported as `missed`. Since tokio's timer has a 1 ms
//!   resolution, an operation may leave up to 1 ms early; it is then timed from its real send.
//!
//! A GET answered 200, 300 (siblings) or 404 (never written) and a PUT answered 204 are
//! successes; anything else is an error, counted by kind (`status_503`, `connect`, `broken`,
//! `timeout`).
//!
//! The flags (`ringkv bench --help` prints the same):
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--node URL` | `http://127.0.0.1:8001` | nodes to drive, repeated or comma-separated (`RINGKV_NODE` too) |
//! | `-c`, `--connections` | 16 | concurrent connections |
//! | `--duration` | 10s | measuring time (`500ms`, `10s`, `2m`) |
//! | `--ops` | none | stop after this many operations instead (or too) |
//! | `--reads` | 50 | percentage of GETs; the rest are PUTs |
//! | `--keys` | 10000 | key space: `key00000000`, `key00000001`, … |
//! | `--dist` | `uniform` | `uniform` or `zipf` (`--zipf-exponent`, 0.99) |
//! | `--value-size` | 100 | bytes per PUT |
//! | `--r`, `--pr`, `--w` | node's, 0, node's | quorums sent with each GET / PUT (`--pr`: replies from homes) |
//! | `--rate OPS` | none | open loop at this many operations per second |
//! | `--prefill` | off | write every key once before measuring, so GETs find values |
//! | `--json` | off | the summary as JSON (`ops`, `ops_per_sec`, `errors.by_kind`, `latency_us.{all,get,put}.{p50,p90,p99,p999,max}`, …) |
//! | `--watch` | off | measure watch latency instead: writes through every node but the last, a WebSocket watcher on the last; time from each PUT's response to its event (p50/p90/p99/max), and events missed |
//!
//! A sample summary, and the figures measured with it, are in the crate docs'
//! [Measurements](crate#measurements).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{DEFAULT_NODE, normalize_url};
use crate::error::{Error, Result};

mod conn;
mod watch;

use conn::{Conn, Router, Target, key_path};
pub use watch::{WatchSummary, watch_latency};

/// Connections when `--connections` is not given: enough to keep a 2-core ring busy without
/// queueing most of the latency in the ring's accept loop.
pub const DEFAULT_CONNECTIONS: usize = 16;
/// Measuring time when neither `--duration` nor `--ops` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Distinct keys when `--keys` is not given.
pub const DEFAULT_KEYS: u64 = 10_000;
/// Bytes per written value when `--value-size` is not given.
pub const DEFAULT_VALUE_SIZE: usize = 100;
/// Zipf exponent when `--zipf-exponent` is not given: YCSB's 0.99, where about a fifth of the
/// operations go to the hottest 0.1 % of 100k keys.
pub const DEFAULT_ZIPF_EXPONENT: f64 = 0.99;
/// Time limit of one request. A request past it counts as a `timeout` error and its connection
/// is replaced, since the answer may still arrive on it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed connect before a task tries again, so a dead node costs a few
/// attempts per second rather than a busy loop.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// Open loop: how much earlier than scheduled an operation may be sent. One tick of tokio's
/// timer, whose resolution is a millisecond.
const TIMER_SLACK: Duration = Duration::from_millis(1);
/// Period of the progress line on stderr.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Highest latency the histograms resolve, in microseconds (a minute); slower operations are
/// recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant decimal digits the histograms keep: 0.1 % precision at every magnitude.
const HISTOGRAM_PRECISION: u8 = 3;

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Key k (counting from 0) picked with probability proportional to 1/(k+1)^s: a few hot
    /// keys.
    #[value(alias = "zipfian")]
    Zipf,
}

/// What `ringkv bench` takes.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Node to drive; repeat the flag or separate URLs with commas. Connections are dealt out
    /// over the nodes in turn.
    #[arg(long = "node", env = "RINGKV_NODE", value_delimiter = ',', default_value = DEFAULT_NODE, value_name = "URL")]
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub token: crate::cli::AuthArgs,
    /// Key-aware routing: learn the ring (`GET /cluster/ring`) and send each key's requests
    /// straight to a home replica (PUT: its coordinator; GET: its homes in turn), as the Rust
    /// client does. Each task then keeps a connection to every serving node.
    #[arg(long)]
    pub route: bool,
    /// Concurrent connections, one task each.
    #[arg(long, short = 'c', default_value_t = DEFAULT_CONNECTIONS)]
    pub connections: usize,
    /// How long to measure: 10s, 500ms, 2m, or plain seconds. 10s unless --ops is given.
    #[arg(long, value_parser = crate::cli::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many operations (and after --duration, if given too).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Percentage of operations that are GETs; the others are PUTs.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub reads: u8,
    /// Number of distinct keys, named key00000000, key00000001, …
    #[arg(long, default_value_t = DEFAULT_KEYS)]
    pub keys: u64,
    /// How keys are picked.
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    pub dist: KeyDist,
    /// Exponent s of the zipfian distribution.
    #[arg(long, default_value_t = DEFAULT_ZIPF_EXPONENT)]
    pub zipf_exponent: f64,
    /// Bytes per written value.
    #[arg(long, default_value_t = DEFAULT_VALUE_SIZE)]
    pub value_size: usize,
    /// Read quorum sent with every GET (?r=); the node's default otherwise.
    #[arg(long)]
    pub r: Option<usize>,
    /// Primary read quorum sent with every GET (?pr=): replies that must come from home
    /// replicas (0..r).
    #[arg(long)]
    pub pr: Option<usize>,
    /// Write quorum sent with every PUT (?w=); the node's default otherwise.
    #[arg(long)]
    pub w: Option<usize>,
    /// Open loop: start this many operations per second in all, whatever the latency, and
    /// measure latency from each one's scheduled start.
    #[arg(long, value_name = "OPS")]
    pub rate: Option<f64>,
    /// Write every key once before measuring, so that GETs find values.
    #[arg(long)]
    pub prefill: bool,
    /// Print the summary as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure watch latency instead: one connection writes new keys through every node but
    /// the last (at --rate, default 200/s, for --ops, default 2000), a WebSocket watcher on
    /// the last node receives their events, and the summary is the time from each PUT's
    /// response to its event's arrival.
    #[arg(long)]
    pub watch: bool,
}

/// Latency percentiles of one kind of operation, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Errors by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Errors {
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
}

/// What the prefill did.
#[derive(Debug, Clone, Serialize)]
pub struct Prefill {
    pub keys: u64,
    pub errors: Errors,
    pub secs: f64,
}

/// Latencies of all operations, GETs and PUTs.
#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    pub all: Latency,
    pub get: Latency,
    pub put: Latency,
}

/// The result of a run: what `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Operations per second asked for (open loop).
    pub rate: Option<f64>,
    pub connections: usize,
    pub nodes: Vec<String>,
    pub keys: u64,
    pub distribution: KeyDist,
    pub value_size: usize,
    pub read_percent: u8,
    /// Measuring time, from the first operation to the last answer.
    pub duration_secs: f64,
    /// Successful operations.
    pub ops: u64,
    pub ops_per_sec: f64,
    pub gets: u64,
    pub puts: u64,
    /// GETs answered 404.
    pub not_found: u64,
    /// GETs answered 300.
    pub siblings: u64,
    /// Open loop: operations scheduled within the duration that no connection could start.
    pub missed: Option<u64>,
    pub errors: Errors,
    pub latency_us: Latencies,
    pub prefill: Option<Prefill>,
}

/// Counters the progress line reads while tasks run.
#[derive(Default)]
struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
    latency_us: AtomicU64,
}

/// What one task measured.
struct Tally {
    get: Histogram<u64>,
    put: Histogram<u64>,
    not_found: u64,
    siblings: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Result<Tally> {
        let h = || {
            Histogram::new_with_bounds(1, MAX_LATENCY_US, HISTOGRAM_PRECISION)
                .map_err(|e| Error::invalid(format!("histogram: {e}")))
        };
        Ok(Tally {
            get: h()?,
            put: h()?,
            not_found: 0,
            siblings: 0,
            errors: BTreeMap::new(),
        })
    }

    fn error(&mut self, kind: String, live: &Live) {
        *self.errors.entry(kind).or_default() += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn merge(&mut self, other: &Tally) -> Result<()> {
        let add = |a: &mut Histogram<u64>, b: &Histogram<u64>| {
            a.add(b)
                .map_err(|e| Error::invalid(format!("histogram: {e:?}")))
        };
        add(&mut self.get, &other.get)?;
        add(&mut self.put, &other.put)?;
        self.not_found += other.not_found;
        self.siblings += other.siblings;
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        Ok(())
    }
}

/// Picks keys.
enum KeyPicker {
    Uniform(u64),
    Zipf(Zipf<f64>, u64),
}

impl KeyPicker {
    fn new(args: &BenchArgs) -> Result<KeyPicker> {
        match args.dist {
            KeyDist::Uniform => Ok(KeyPicker::Uniform(args.keys)),
            KeyDist::Zipf => Zipf::new(args.keys as f64, args.zipf_exponent)
                .map(|z| KeyPicker::Zipf(z, args.keys))
                .map_err(|e| Error::invalid(format!("--zipf-exponent: {e}"))),
        }
    }

    fn pick(&self, rng: &mut Xoshiro256PlusPlus) -> u64 {
        match self {
            KeyPicker::Uniform(n) => rng.random_range(0..*n),
            // Zipf samples ranks 1..=n as floats; rank 1 is the hottest key, key 0.
            KeyPicker::Zipf(z, n) => (z.sample(rng) as u64).clamp(1, *n) - 1,
        }
    }
}

/// Everything the tasks share.
struct Plan {
    value: Bytes,
    picker: KeyPicker,
    reads: u8,
    get_query: String,
    put_query: String,
    rate: Option<f64>,
    ops: Option<u64>,
    live: Live,
    /// The next operation's index; in open loop it fixes the operation's scheduled time.
    next_op: AtomicU64,
}

/// Runs the benchmark and returns its summary. Progress goes to stderr once a second.
pub async fn run(args: &BenchArgs) -> Result<Summary> {
    if args.connections == 0 {
        return Err(Error::invalid("--connections must be at least 1"));
    }
    if args.keys == 0 {
        return Err(Error::invalid("--keys must be at least 1"));
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(Error::invalid("--rate must be a positive number"));
    }
    if args.duration.is_some_and(|d| d.is_zero()) || args.ops == Some(0) {
        return Err(Error::invalid("--duration and --ops must be positive"));
    }
    let mut nodes = Vec::new();
    let mut targets = Vec::new();
    for url in args.nodes.iter().filter(|u| !u.trim().is_empty()) {
        let base = normalize_url(url)?;
        targets.push(Target::resolve(&base, &args.token).await?);
        nodes.push(base);
    }
    if targets.is_empty() {
        return Err(Error::invalid("give at least one --node"));
    }
    let mut rng = Xoshiro256PlusPlus::from_rng(&mut rand::rng());
    let value: Vec<u8> = (0..args.value_size)
        .map(|_| b'a' + rng.random_range(0..26u8))
        .collect();
    // `?r=2&pr=2`: each parameter given, joined.
    let query = |params: &[(&str, Option<usize>)]| {
        let given: Vec<String> = params
            .iter()
            .filter_map(|(name, v)| v.map(|v| format!("{name}={v}")))
            .collect();
        if given.is_empty() {
            String::new()
        } else {
            format!("?{}", given.join("&"))
        }
    };
    let routes = if args.route {
        let mut client = crate::client::Client::builder(&nodes).routing(false);
        if let Some(t) = &args.token.api_token {
            client = client.token(t);
        }
        if let Some(ca) = &args.token.ca_cert {
            client = client.ca_cert(ca);
        }
        Some(Arc::new(client.build()?.ring().await?))
    } else {
        None
    };
    let scheme = if nodes[0].starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let plan = Arc::new(Plan {
        value: Bytes::from(value),
        picker: KeyPicker::new(args)?,
        reads: args.reads,
        get_query: query(&[("r", args.r), ("pr", args.pr)]),
        put_query: query(&[("w", args.w)]),
        rate: args.rate,
        ops: args.ops,
        live: Live::default(),
        next_op: AtomicU64::new(0),
    });

    // Every connection is opened before the clock starts, so connecting is not measured.
    let opening = (0..args.connections).map(|i| Conn::open(targets[i % targets.len()].clone()));
    let mut conns = futures_util::future::try_join_all(opening).await?;
    // With --route, each task also opens one connection to every serving ring node.
    let mut routed: Vec<Option<Router>> = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        routed.push(match &routes {
            Some(r) => Some(Router::open(r, scheme, &args.token).await?),
            None => None,
        });
    }

    let prefill = if args.prefill {
        let (back, prefill) = prefill_keys(conns, &plan, args.keys).await?;
        conns = back;
        Some(prefill)
    } else {
        None
    };

    let duration = match (args.duration, args.ops) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_DURATION),
    };
    let start = Instant::now();
    let end = duration.map(|d| start + d);
    let stop_progress = CancellationToken::new();
    let progress = tokio::spawn(progress_line(plan.clone(), start, stop_progress.clone()));
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(routed)
        .enumerate()
        .map(|(i, (conn, router))| {
            let plan = plan.clone();
            let seed = rng.random::<u64>() ^ i as u64;
            tokio::spawn(async move { worker(conn, router, plan, start, end, seed).await })
        })
        .collect();
    let mut total = Tally::new()?;
    let mut failed = None;
    for task in tasks {
        match task.await {
            Ok(Ok(tally)) => total.merge(&tally)?,
            Ok(Err(err)) => failed = Some(err),
            Err(err) => failed = Some(Error::invalid(format!("bench task failed: {err}"))),
        }
    }
    let elapsed = start.elapsed();
    stop_progress.cancel();
    let _ = progress.await;
    if let Some(err) = failed {
        return Err(err);
    }

    let mut all = total.get.clone();
    all.add(&total.put)
        .map_err(|e| Error::invalid(format!("histogram: {e:?}")))?;
    let ops = all.len();
    let secs = elapsed.as_secs_f64();
    let missed = args.rate.map(|rate| {
        let scheduled = match (duration, args.ops) {
            (Some(d), Some(n)) => ((d.as_secs_f64() * rate) as u64).min(n),
            (Some(d), None) => (d.as_secs_f64() * rate) as u64,
            (None, Some(n)) => n,
            (None, None) => 0,
        };
        let started = ops + total.errors.values().sum::<u64>();
        scheduled.saturating_sub(started)
    });
    Ok(Summary {
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        rate: args.rate,
        connections: args.connections,
        nodes,
        keys: args.keys,
        distribution: args.dist,
        value_size: args.value_size,
        read_percent: args.reads,
        duration_secs: secs,
        ops,
        ops_per_sec: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
        gets: total.get.len(),
        puts: total.put.len(),
        not_found: total.not_found,
        siblings: total.siblings,
        missed,
        errors: Errors {
            total: total.errors.values().sum(),
            by_kind: total.errors,
        },
        latency_us: Latencies {
            all: Latency::of(&all),
            get: Latency::of(&total.get),
            put: Latency::of(&total.put),
        },
        prefill,
    })
}

/// Writes every key once over the open connections; hands them back for the measurement.
async fn prefill_keys(
    conns: Vec<Conn>,
    plan: &Arc<Plan>,
    keys: u64,
) -> Result<(Vec<Conn>, Prefill)> {
    eprintln!("prefilling {keys} keys...");
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (plan, next) = (plan.clone(), next.clone());
            tokio::spawn(async move {
                let mut path = String::with_capacity(64);
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                loop {
                    let key = next.fetch_add(1, Ordering::Relaxed);
                    if key >= keys {
                        return (conn, errors);
                    }
                    key_path(&mut path, key, &plan.put_query);
                    let kind = match conn.send(Method::PUT, &path, plan.value.clone()).await {
                        Ok(StatusCode::NO_CONTENT) => continue,
                        Ok(status) => format!("status_{}", status.as_u16()),
                        Err(failure) => failure.kind().to_string(),
                    };
                    *errors.entry(kind).or_default() += 1;
                }
            })
        })
        .collect();
    let mut back = Vec::new();
    let mut errors = Errors::default();
    for task in tasks {
        let (conn, by_kind) = task
            .await
            .map_err(|e| Error::invalid(format!("prefill task failed: {e}")))?;
        back.push(conn);
        for (kind, n) in by_kind {
            errors.total += n;
            *errors.by_kind.entry(kind).or_default() += n;
        }
    }
    Ok((
        back,
        Prefill {
            keys,
            errors,
            secs: started.elapsed().as_secs_f64(),
        },
    ))
}

/// One connection's loop: claim an operation, (in open loop) wait for its time, send it,
/// record the outcome.
async fn worker(
    mut conn: Conn,
    mut router: Option<Router>,
    plan: Arc<Plan>,
    start: Instant,
    end: Option<Instant>,
    seed: u64,
) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut path = String::with_capacity(64);
    loop {
        let i = plan.next_op.fetch_add(1, Ordering::Relaxed);
        if plan.ops.is_some_and(|n| i >= n) {
            break;
        }
        let now = Instant::now();
        if end.is_some_and(|end| now >= end) {
            break;
        }
        let scheduled = match plan.rate {
            Some(rate) => {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                if end.is_some_and(|end| at >= end) {
                    break;
                }
                // Tokio's timer fires on a 1 ms grid, so waiting for `at` itself would add up
                // to a millisecond of the generator's own lag to every latency. Waking up to
                // TIMER_SLACK early and timing from the earlier of `at` and the real send
                // keeps that lag out, while a send held back by a busy connection is still
                // timed from its schedule.
                tokio::time::sleep_until(at.checked_sub(TIMER_SLACK).unwrap_or(at)).await;
                at.min(Instant::now())
            }
            None => now,
        };
        let is_read = rng.random_range(0..100u8) < plan.reads;
        let key = plan.picker.pick(&mut rng);
        let (method, query, body) = if is_read {
            (Method::GET, &plan.get_query, Bytes::new())
        } else {
            (Method::PUT, &plan.put_query, plan.value.clone())
        };
        key_path(&mut path, key, query);
        let target = match router.as_mut() {
            Some(router) => router.conn_for(format!("key{key:08}").as_bytes(), is_read, &mut rng),
            None => None,
        };
        let res = target.unwrap_or(&mut conn).send(method, &path, body).await;
        let took = scheduled.elapsed();
        let ok = match res {
            Ok(StatusCode::OK) if is_read => true,
            Ok(StatusCode::MULTIPLE_CHOICES) if is_read => {
                tally.siblings += 1;
                true
            }
            Ok(StatusCode::NOT_FOUND) if is_read => {
                tally.not_found += 1;
                true
            }
            Ok(StatusCode::NO_CONTENT) if !is_read => true,
            Ok(status) => {
                tally.error(format!("status_{}", status.as_u16()), &plan.live);
                false
            }
            Err(failure) => {
                tally.error(failure.kind().to_string(), &plan.live);
                false
            }
        };
        if ok {
            let us = (took.as_micros() as u64).max(1);
            let h = if is_read {
                &mut tally.get
            } else {
                &mut tally.put
            };
            h.saturating_record(us);
            plan.live.ops.fetch_add(1, Ordering::Relaxed);
            plan.live.latency_us.fetch_add(us, Ordering::Relaxed);
        }
    }
    Ok(tally)
}

/// Prints a progress line on stderr every [`PROGRESS_INTERVAL`]: rewritten in place on a
/// terminal, one line per tick otherwise.
async fn progress_line(plan: Arc<Plan>, start: Instant, stop: CancellationToken) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval_at(start + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
    let (mut last_ops, mut last_lat, mut last_at) = (0u64, 0u64, start);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let ops = plan.live.ops.load(Ordering::Relaxed);
        let lat = plan.live.latency_us.load(Ordering::Relaxed);
        let errors = plan.live.errors.load(Ordering::Relaxed);
        let dt = now.duration_since(last_at).as_secs_f64().max(1e-9);
        let d_ops = ops - last_ops;
        let mean_ms = if d_ops > 0 {
            (lat - last_lat) as f64 / d_ops as f64 / 1000.0
        } else {
            0.0
        };
        let line = format!(
            "[{:>4.0}s] {:>9.0} ops/s  mean {:>7.3} ms  total {:>9}  errors {}",
            now.duration_since(start).as_secs_f64(),
            d_ops as f64 / dt,
            mean_ms,
            ops,
            errors
        );
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        (last_ops, last_lat, last_at) = (ops, lat, now);
    }
    if tty {
        eprintln!();
    }
}

impl fmt::Display for Summary {
    /// The human-readable table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => "closed loop".to_string(),
        };
        writeln!(
            f,
            "ringkv bench: {mode}, {} connections over {} node{}, {:.2} s",
            self.connections,
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" },
            self.duration_secs
        )?;
        let dist = match self.distribution {
            KeyDist::Uniform => "uniform",
            KeyDist::Zipf => "zipfian",
        };
        writeln!(
            f,
            "  {} keys ({dist}), {}-byte values, {}% reads",
            self.keys, self.value_size, self.read_percent
        )?;
        if let Some(p) = &self.prefill {
            writeln!(
                f,
                "  prefilled {} keys in {:.2} s ({} errors)",
                p.keys, p.secs, p.errors.total
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  {:<4} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "ops", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        )?;
        let ms = |us: u64| us as f64 / 1000.0;
        for (name, l) in [
            ("all", &self.latency_us.all),
            ("get", &self.latency_us.get),
            ("put", &self.latency_us.put),
        ] {
            let rate = if self.duration_secs > 0.0 {
                l.count as f64 / self.duration_secs
            } else {
                0.0
            };
            writeln!(
                f,
                "  {name:<4} {:>10} {:>11.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                l.count,
                rate,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  GETs not found {}, with siblings {}",
            self.not_found, self.siblings
        )?;
        if let Some(missed) = self.missed {
            writeln!(f, "  scheduled but never started: {missed}")?;
        }
        if self.errors.total == 0 {
            writeln!(f, "  errors: none")
        } else {
            let kinds: Vec<String> = self
                .errors
                .by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(f, "  errors: {} ({})", self.errors.total, kinds.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_are_zero_padded() {
        let mut buf = String::from("leftover");
        key_path(&mut buf, 42, "?r=2");
        assert_eq!(buf, "/kv/key00000042?r=2");
    }

    fn args(dist: KeyDist, keys: u64) -> BenchArgs {
        BenchArgs {
            token: Default::default(),
            route: false,
            nodes: vec![],
            connections: 1,
            duration: None,
            ops: None,
            reads: 50,
            keys,
            dist,
            zipf_exponent: DEFAULT_ZIPF_EXPONENT,
            value_size: 1,
            r: None,
            pr: None,
            w: None,
            rate: None,
            prefill: false,
            json: false,
            watch: false,
        }
    }

    /// Both distributions stay in the key space; zipf concentrates on the first keys, uniform
    /// does not.
    #[test]
    fn key_pickers_stay_in_range_with_the_right_skew() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let samples = 100_000;
        for (dist, low_share) in [
            (KeyDist::Uniform, (0.005, 0.015)),
            (KeyDist::Zipf, (0.4, 0.7)),
        ] {
            let picker = KeyPicker::new(&args(dist, 10_000)).unwrap();
            let mut low = 0;
            for _ in 0..samples {
                let k = picker.pick(&mut rng);
                assert!(k < 10_000);
                if k < 100 {
                    low += 1;
                }
            }
            let share = low as f64 / samples as f64;
            assert!(
                (low_share.0..low_share.1).contains(&share),
                "{dist:?}: {share} of picks in the first 1% of keys"
            );
        }
        let one = KeyPicker::new(&args(KeyDist::Zipf, 1)).unwrap();
        assert_eq!(one.pick(&mut rng), 0);
    }
}
