//! The memory ceiling (`--max-memory`): a node that would need more memory than it may use
//! refuses new bytes with [`Error::MemoryFull`] (HTTP 507) instead of being killed by the
//! kernel with every acknowledged write in its RAM.
//!
//! **What counts.** The allocator's own count of the bytes the process holds ([`Gauge`]:
//! jemalloc's `stats.allocated`): versions, indexes, Merkle trees, hints, connection
//! buffers and request bodies in flight alike, not an estimate per key. A reading is at most
//! [`REFRESH`] old; request bodies that were admitted by their length but not yet stored
//! are added to it ([`Meter::reserve`]), so concurrent large uploads count together before
//! they are buffered. The limit is on live heap bytes: the process's RSS is larger by the
//! allocator's spare pages, the stacks and the binary, which is why the default limit is 75%
//! of what the process may use (`--max-memory`, `main.rs`).
//!
//! **What is refused.** Over the limit, a node refuses what adds values: client PUTs (from
//! their `Content-Length`, before the body is read), copies other nodes send it (replication,
//! read repair, hints, handoff, anti-entropy) and anti-entropy pulls. What only removes or
//! adds tombstones passes up to [`DELETE_RESERVE_DIVISOR`] over the limit, so deletes keep
//! working and free memory. Reads never are refused. Once memory is freed (deletes, expiry,
//! keys handed away), the next reading admits writes again.
//!
//! **Nodes sharing a process.** `ringkv dev` runs every node in one process, and the
//! allocator counts the process: each node's reading is the process's divided by the nodes
//! (`Gauge::allocator(share)`), and each node's limit is its part of the whole.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::{Error, Result};
use crate::lock;
use crate::membership::{KEY_MEMORY, MemoryUse, SelfKeys};
use crate::version::VersionSet;

/// How old a reading of the allocator may be. jemalloc refreshes its statistics on an
/// "epoch" call, which takes a lock over every arena: once per write would cost more than
/// the write. In 10 ms a node takes at most a few hundred writes, and their bodies are
/// reserved by length until stored, so a stale reading does not let a burst through.
pub const REFRESH: Duration = Duration::from_millis(10);

/// Deletes (and copies holding only tombstones) may go this fraction of the limit over it
/// (`limit / 50`, 2%): a tombstone frees its value, so a full node must still take them.
pub const DELETE_RESERVE_DIVISOR: u64 = 50;

/// Fraction of the limit (in percent) at which a node logs that it is nearly full.
pub const WARN_PERCENT: u64 = 90;

/// Refusals are logged at most once per this interval; every one is counted.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often a node gossips its memory use and limit ([`crate::membership::KEY_MEMORY`]):
/// what `ringkv members` and the status page show of every node.
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(2);

/// Gossips `meter`'s use and limit every [`GOSSIP_INTERVAL`], rounded to MiB (so that gossip
/// carries a change only now and then), until `shutdown`.
pub async fn gossip(meter: Arc<Meter>, keys: SelfKeys, shutdown: CancellationToken) {
    const MIB: u64 = 1 << 20;
    let mut last = None;
    let mut tick = tokio::time::interval(GOSSIP_INTERVAL);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = MemoryUse {
            used: meter.used() / MIB * MIB,
            limit: meter.limit(),
        };
        if last != Some(now) {
            keys.set(KEY_MEMORY, &now.encode()).await;
            last = Some(now);
        }
    }
}

/// Reads how many bytes the process holds; `None` if it cannot tell.
pub type Source = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// Where a node reads how much memory it uses.
#[derive(Clone)]
pub struct Gauge {
    source: Source,
    /// Nodes sharing the process: each is charged this part of the process's bytes.
    share: u64,
    /// Whether the source is the allocator's.
    allocator: bool,
}

impl Gauge {
    /// The allocator's count of the process's live bytes, shared among `share` nodes.
    pub fn allocator(share: usize) -> Gauge {
        Gauge {
            source: Arc::new(crate::heap::allocated),
            share: share.max(1) as u64,
            allocator: true,
        }
    }

    /// A gauge that reads `source` (tests set what a node "uses").
    pub fn from_source(source: Source) -> Gauge {
        Gauge {
            source,
            share: 1,
            allocator: false,
        }
    }

    /// This node's part of the process's bytes, if they can be measured.
    pub fn read(&self) -> Option<u64> {
        (self.source)().map(|bytes| bytes / self.share)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Gauge::allocator(1)
    }
}

impl fmt::Debug for Gauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gauge")
            .field("allocator", &self.allocator)
            .field("share", &self.share)
            .finish()
    }
}

/// What a caller wants to store, for [`Meter::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// New values: refused over the limit.
    Values,
    /// Only tombstones (a delete): refused over the limit plus its reserve.
    Tombstones,
}

impl Need {
    /// What storing `vs` needs: values if any version holds one.
    pub fn of(vs: &VersionSet) -> Need {
        if vs.versions().iter().any(|v| v.value.is_some()) {
            Need::Values
        } else {
            Need::Tombstones
        }
    }

    /// What storing every set of `items` needs.
    pub fn of_all<'a>(mut sets: impl Iterator<Item = &'a VersionSet>) -> Need {
        if sets.any(|vs| Need::of(vs) == Need::Values) {
            Need::Values
        } else {
            Need::Tombstones
        }
    }
}

/// Whether a peer refused a copy for memory: [`Error::MemoryFull`], or the
/// [`Error::Rejected`] a connection at protocol 5 carries it as ([`crate::rpc::answer_for`]).
pub fn is_refusal(err: &Error) -> bool {
    match err {
        Error::MemoryFull { .. } => true,
        Error::Rejected(msg) => msg.starts_with("memory full"),
        _ => false,
    }
}

/// One node's limit, and its reading against it.
pub struct Meter {
    /// Bytes; 0 is no limit.
    limit: u64,
    gauge: Gauge,
    /// The last reading, and when it was taken (ms since `started`, +1 so 0 means never).
    last: AtomicU64,
    read_at: AtomicU64,
    started: Instant,
    /// Bytes of request bodies admitted by their length and not yet stored.
    reserved: AtomicU64,
    /// Whether the node is at [`WARN_PERCENT`] or more (logged on each crossing).
    high: AtomicBool,
    last_refusal_log: Mutex<Option<Instant>>,
    /// Writes refused for memory (client writes and replica copies); shared with the stats.
    refused: Arc<AtomicU64>,
}

impl Meter {
    /// A meter for `limit` bytes (0: none) read from `gauge`; `refused` counts refusals.
    pub fn new(limit: u64, gauge: Gauge, refused: Arc<AtomicU64>) -> Meter {
        Meter {
            limit,
            gauge,
            last: AtomicU64::new(0),
            read_at: AtomicU64::new(0),
            started: Instant::now(),
            reserved: AtomicU64::new(0),
            high: AtomicBool::new(false),
            last_refusal_log: Mutex::new(None),
            refused,
        }
    }

    /// The limit in bytes; 0 is none.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes this node uses: the latest reading (at most [`REFRESH`] old for the allocator,
    /// fresh for any other source) plus the bodies admitted and not yet stored.
    pub fn used(&self) -> u64 {
        self.reading() + self.reserved.load(Ordering::Relaxed)
    }

    fn reading(&self) -> u64 {
        if !self.gauge.allocator {
            return self.gauge.read().unwrap_or(0);
        }
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let at = self.read_at.load(Ordering::Relaxed);
        let stale = at == 0 || now.saturating_sub(at) >= REFRESH.as_millis() as u64;
        // One caller refreshes; the others use the reading it replaces, at most 10 ms old.
        if stale
            && self
                .read_at
                .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && let Some(bytes) = self.gauge.read()
        {
            self.last.store(bytes, Ordering::Relaxed);
        }
        self.last.load(Ordering::Relaxed)
    }

    /// Ok if this node may store `incoming` more bytes of `need`; else [`Error::MemoryFull`],
    /// counted and (at a bounded rate) logged.
    pub fn admit(&self, incoming: u64, need: Need) -> Result<()> {
        if self.limit == 0 {
            return Ok(());
        }
        let used = self.used();
        self.note_level(used);
        let ceiling = match need {
            Need::Values => self.limit,
            Need::Tombstones => self.limit + self.limit / DELETE_RESERVE_DIVISOR,
        };
        if used.saturating_add(incoming) <= ceiling {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut last = lock(&self.last_refusal_log);
        if last.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL) {
            *last = Some(Instant::now());
            warn!(
                used,
                limit = self.limit,
                incoming,
                "memory full: refusing writes until memory is freed (deletes, expiry, handoff)"
            );
        }
        Err(Error::MemoryFull {
            used,
            limit: self.limit,
        })
    }

    /// Admits a request body of `len` bytes and keeps it counted until the returned guard is
    /// dropped (once the write is stored or refused), so concurrent uploads count together.
    pub fn reserve(&self, len: u64) -> Result<Reservation<'_>> {
        self.admit(len, Need::Values)?;
        if self.limit > 0 {
            self.reserved.fetch_add(len, Ordering::Relaxed);
        }
        Ok(Reservation {
            meter: self,
            len: if self.limit > 0 { len } else { 0 },
        })
    }

    /// Whether the node is over its limit (a background copy waits while it is).
    pub fn is_full(&self) -> bool {
        self.limit > 0 && self.used() > self.limit
    }

    /// Logs each crossing of [`WARN_PERCENT`], up and down.
    fn note_level(&self, used: u64) {
        let high = used.saturating_mul(100) >= self.limit.saturating_mul(WARN_PERCENT);
        // Every admitted write passes here: read first, and write the shared flag only on a
        // crossing.
        if self.high.load(Ordering::Relaxed) != high
            && self.high.swap(high, Ordering::Relaxed) != high
        {
            if high {
                warn!(
                    used,
                    limit = self.limit,
                    "memory use reached {WARN_PERCENT}% of the limit"
                );
            } else {
                tracing::info!(
                    used,
                    limit = self.limit,
                    "memory use back under {WARN_PERCENT}% of the limit"
                );
            }
        }
    }
}

/// Bytes of a request body counted against the limit until dropped (none without a limit).
pub struct Reservation<'a> {
    meter: &'a Meter,
    len: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.meter.reserved.fetch_sub(self.len, Ordering::Relaxed);
    }
}

/// A limit as the start-up log line shows it: `200.0 MiB (209715200 bytes)`, or `none`.
pub fn describe(limit: u64) -> String {
    if limit == 0 {
        return "none".to_string();
    }
    format!(
        "{:.1} MiB ({limit} bytes)",
        limit as f64 / (1u64 << 20) as f64
    )
}

/// Parses a `--max-memory` size: bytes, or a number with a `KiB`, `MiB` or `GiB` suffix
/// (`512MiB`, `1.5GiB`). `0` is no limit.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (t[..i].trim(), &t[i..]),
        None => (t, ""),
    };
    let scale: u64 = match unit {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: give bytes, or a number with a KiB, MiB or GiB suffix (512MiB)"
            ));
        }
    };
    if unit.is_empty() {
        return number
            .parse()
            .map_err(|_| format!("{s:?}: not a number of bytes"));
    }
    let n: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| format!("{s:?}: not a size"))?;
    Ok((n * scale as f64) as u64)
}

/// The default limit: [`DEFAULT_PERCENT`] of what the process may use: the smallest memory
/// limit of its cgroup and the cgroup's ancestors (cgroup v2 `memory.max`, v1
/// `memory.limit_in_bytes`), else the machine's RAM. `None` if neither can be read.
pub fn default_limit() -> Option<u64> {
    let read = |path: &std::path::Path| std::fs::read_to_string(path).ok();
    let cgroups = read("/proc/self/cgroup".as_ref()).unwrap_or_default();
    let cgroup = limit_files(&cgroups)
        .iter()
        .filter_map(|f| read(f).as_deref().and_then(cgroup_limit))
        .min();
    let ram = read("/proc/meminfo".as_ref())
        .as_deref()
        .and_then(mem_total);
    let may_use = match (cgroup, ram) {
        (Some(c), Some(r)) => c.min(r),
        (c, r) => c.or(r)?,
    };
    Some(may_use / 100 * DEFAULT_PERCENT)
}

/// Percent of what the process may use that `--max-memory` defaults to: the rest is the
/// allocator's spare pages, stacks and the binary, which the limit (on live heap bytes) does
/// not count but the kernel does.
pub const DEFAULT_PERCENT: u64 = 75;

/// The memory limit files that bind a process whose `/proc/self/cgroup` reads `cgroups`: its
/// own cgroup's and every ancestor's, for the v1 memory controller (`N:memory:/path`,
/// mounted at `/sys/fs/cgroup/memory`) or the v2 hierarchy (`0::/path`, at `/sys/fs/cgroup`).
fn limit_files(cgroups: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (root, file) = if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else {
            continue;
        };
        let mut dir = std::path::PathBuf::from(root).join(path.trim_start_matches('/'));
        loop {
            out.push(dir.join(file));
            if dir == std::path::Path::new(root) || !dir.pop() {
                break;
            }
        }
    }
    out
}

/// A cgroup memory limit file's value: bytes, or `max` (none). cgroup v1 writes "no limit"
/// as a huge number, which the machine's RAM then undercuts.
fn cgroup_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(limit: u64, used: Arc<AtomicU64>) -> Arc<Meter> {
        let gauge = Gauge::from_source(Arc::new(move || Some(used.load(Ordering::Relaxed))));
        Arc::new(Meter::new(limit, gauge, Arc::default()))
    }

    #[test]
    fn no_limit_admits_everything() {
        let m = meter(0, Arc::new(AtomicU64::new(u64::MAX / 2)));
        assert!(m.admit(u64::MAX / 4, Need::Values).is_ok());
        assert!(!m.is_full());
    }

    #[test]
    fn values_stop_at_the_limit_and_tombstones_have_a_reserve() {
        let used = Arc::new(AtomicU64::new(900));
        let m = meter(1_000, used.clone());
        assert!(m.admit(100, Need::Values).is_ok());
        let err = m.admit(101, Need::Values).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MemoryFull {
                    used: 900,
                    limit: 1_000
                }
            ),
            "{err:?}"
        );
        used.store(1_010, Ordering::Relaxed);
        assert!(m.is_full());
        assert!(m.admit(0, Need::Values).is_err());
        assert!(m.admit(10, Need::Tombstones).is_ok(), "reserve of limit/50");
        assert!(m.admit(11, Need::Tombstones).is_err());
        // Freed memory admits writes again, with no restart.
        used.store(500, Ordering::Relaxed);
        assert!(m.admit(100, Need::Values).is_ok());
        assert_eq!(m.refused.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn reserved_bodies_count_together_until_dropped() {
        let m = meter(1_000, Arc::new(AtomicU64::new(0)));
        let a = m.reserve(600).expect("first body fits");
        assert!(m.reserve(600).is_err(), "two bodies together do not");
        assert_eq!(m.used(), 600);
        drop(a);
        assert_eq!(m.used(), 0);
        let _b = m.reserve(600).expect("fits once the first is stored");
    }

    #[test]
    fn a_shared_process_is_divided_among_its_nodes() {
        let g = Gauge {
            source: Arc::new(|| Some(5_000)),
            share: 5,
            allocator: false,
        };
        assert_eq!(g.read(), Some(1_000));
    }

    #[test]
    fn limits_are_read_from_cgroup_files_and_meminfo() {
        assert_eq!(cgroup_limit("209715200\n"), Some(209_715_200));
        assert_eq!(cgroup_limit("max\n"), None);
        let meminfo = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_576_000 * 1024));
        assert_eq!(mem_total("nothing"), None);
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64 KiB"), Ok(64 << 10));
        assert!(parse_size("10MB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1GiB").is_err());
        assert_eq!(describe(0), "none");
        assert_eq!(describe(200 << 20), "200.0 MiB (209715200 bytes)");
    }

    #[test]
    fn the_limits_that_bind_are_the_cgroups_and_its_ancestors() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        let files: Vec<String> = limit_files(v1)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            files,
            [
                "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory.max",
            ]
        );
        let v2: Vec<String> = limit_files("0::/ringkv/n1\n")
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            v2,
            [
                "/sys/fs/cgroup/ringkv/n1/memory.max",
                "/sys/fs/cgroup/ringkv/memory.max",
                "/sys/fs/cgroup/memory.max",
            ]
        );
    }
}
