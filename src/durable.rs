//! Durability: a write-ahead log plus snapshots in `--data-dir`, the way Redis (AOF + RDB)
//! and Cassandra (commit log + SSTables) do it. The store still serves from memory; reads
//! never touch the disk. This module owns every file the node writes, so a simulated disk can
//! replace it.
//!
//! ## Files
//!
//! ```text
//! DIR/LOCK                      flock()ed for the life of the process; holds its pid
//! DIR/wal-<seq>.log             log segments, appended to in order
//! DIR/snap-<seq>.snap           a snapshot: the state as of the start of segment <seq>
//! DIR/*.corrupt-*, *.damaged    what recovery set aside (never deleted)
//! ```
//!
//! Every file is a sequence of frames, the RPC frame format ([`crate::codec`]: length, CRC32,
//! MessagePack), so a record is checked by its CRC and a torn write is a short frame. The first
//! frame is a header with a magic name and a [`FORMAT`] number: a file of a newer format is
//! refused, never misread. A snapshot ends with a trailer frame counting its records and
//! checksumming them all, so a truncated or damaged snapshot is detected as a whole.
//!
//! ## Records
//!
//! A record is a key's *state* after a change ([`Record::Key`]: its whole version set; an empty
//! set means the key is gone), or a hint's ([`Record::Hint`]). Replaying sets each key to its
//! logged state, in order. State rather than operations, because the snapshot is taken while
//! writes go on (shard by shard, never cloning the store): a key in the snapshot may already
//! include changes that the log after it records again, and setting a state twice is
//! harmless where applying a merge or a removal twice is not.
//!
//! ## Group commit
//!
//! The store appends a record to an in-memory buffer while it holds the key's shard lock, so
//! records of one key are in the order of its changes. One flusher thread writes the buffer
//! out and, with `--fsync always`, fsyncs it; writes that arrive meanwhile wait for the next
//! round and share its fsync. A replica acknowledges (counts toward W) only after
//! [`Wal::barrier`] says everything appended before it is on disk.
//!
//! | `--fsync` | a crash of the node loses | Redis `appendfsync` |
//! |---|---|---|
//! | `always` (default) | nothing it acknowledged | `always`: the same |
//! | `periodic` | at most `--fsync-interval-ms` of writes (100 ms) | `everysec`: at most 1 s |
//! | `never` | what the OS had not written back (Linux: up to ~30 s); a process crash alone loses at most the interval | `no` |
//!
//! ## Snapshots and compaction
//!
//! When the log since the last snapshot outgrows the live data (and `--snapshot-log-bytes`,
//! [`SNAPSHOT_MIN_LOG`] by default),
//! the flusher starts a new segment and a snapshot of the store is streamed to disk shard by
//! shard (each shard locked only while it is encoded). Once it is on disk, segments and
//! snapshots older than the *previous* snapshot are deleted: recovery can fall back to the
//! previous snapshot plus the log after it, and disk use stays within about two snapshots
//! plus the log since the older one.
//!
//! ## Recovery
//!
//! The newest snapshot whose frames and trailer check out is loaded (a damaged one is renamed
//! `.damaged` and the previous one tried), then every later log segment is replayed.
//! - A torn last record (a crash mid-append) is cut off with a warning.
//! - A corrupt record anywhere else (bad CRC, bad length, undecodable) stops the replay
//!   there: the rest of that file, and every later segment, is moved aside (`.corrupt-*`) and
//!   named in an error line, and counted ([`RecoveryReport::set_aside`]). The node starts with
//!   what was valid; its peers repair the rest (the start-up catch-up of
//!   [`crate::readiness`]).
//!
//! The node then starts with a new generation, as always, so a lost log tail can never make
//! it mint a version counter twice.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::codec::{self, HEADER_LEN};
use crate::error::{Error, Result};
use crate::version::VersionSet;

/// The file format this build writes, and the newest it reads.
pub const FORMAT: u32 = 1;

/// Magic names in file headers.
const WAL_MAGIC: &str = "ringkv-wal";
const SNAP_MAGIC: &str = "ringkv-snapshot";

/// Default `--snapshot-log-bytes`: no snapshot is taken before the log since the last one holds
/// this much. Below it, replaying the log is as quick as loading a snapshot, and snapshots of
/// a small store would churn.
pub const SNAPSHOT_MIN_LOG: u64 = 64 * 1024 * 1024;

/// How often the snapshot thread checks whether a snapshot is due.
const SNAPSHOT_CHECK: Duration = Duration::from_secs(1);

/// After a failed write or fsync (a full disk), how long the flusher waits before it tries
/// the same bytes again.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(200);

/// Largest frame recovery accepts: a value is at most `--max-value-bytes` (up to 1 GiB), and
/// a record holds a key's siblings; anything larger is corruption, not a record.
const MAX_RECORD: usize = 2 * 1024 * 1024 * 1024 - 1;

/// When the log's bytes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// Before any write it holds is acknowledged (group commit).
    Always,
    /// Every `--fsync-interval-ms`.
    Periodic,
    /// Written every interval; flushed to disk when the OS decides.
    Never,
}

/// What [`Wal::open`] needs.
#[derive(Debug, Clone)]
pub struct DurableConfig {
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub interval: Duration,
    /// A snapshot is due once the log since the last one holds this many bytes (and more
    /// than the live data).
    pub snapshot_log_bytes: u64,
}

/// One logged change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A key's versions after a change; empty when the key is gone.
    Key { key: Bytes, versions: VersionSet },
    /// A hinted copy held for `home`; empty when it is gone.
    Hint {
        home: String,
        key: Bytes,
        versions: VersionSet,
    },
}

/// The first frame of every file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    magic: String,
    format: u32,
    seq: u64,
}

/// The last frame of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Trailer {
    records: u64,
    /// CRC32 over every record frame, headers included.
    crc: u32,
}

/// A snapshot frame: a record, or the trailer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum SnapFrame {
    Record(Record),
    End(Trailer),
}

/// Where the flusher has got to, for [`Wal::barrier`].
#[derive(Debug, Clone, Default)]
struct Durable {
    /// Bytes of the log that are durable (per the fsync mode).
    lsn: u64,
    /// The last write error, if the bytes after `lsn` could not be written.
    error: Option<String>,
}

/// Appended but not yet written bytes.
struct Pending {
    buf: BytesMut,
    /// Bytes ever appended: the log sequence number of the buffer's end.
    appended: u64,
    /// A segment switch requested at this LSN, with where to say it is done.
    rotate: Option<(u64, std::sync::mpsc::Sender<Result<u64>>)>,
    stop: bool,
    /// The flusher is waiting for work: only then does an append wake it. While it writes
    /// and syncs, appends just accumulate for its next round (group commit without a wake-up
    /// per write).
    idle: bool,
}

/// Counters of the log, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct WalStats {
    pub records: AtomicU64,
    pub bytes_written: AtomicU64,
    pub fsyncs: AtomicU64,
    pub write_errors: AtomicU64,
    pub snapshots: AtomicU64,
    /// Bytes in log segments since the last snapshot began.
    pub log_bytes_since_snapshot: AtomicU64,
    /// Files (or tails of files) recovery set aside as damaged.
    pub corrupt_files: AtomicU64,
    /// The longest a snapshot held one shard's lock (writes to that shard wait that long).
    pub snapshot_max_lock_us: AtomicU64,
}

/// Where a node's store and hints log their changes: the write-ahead log of a data dir
/// ([`Wal`]), or the deterministic simulator's disk (`tests/sim`), which has no files and no
/// threads.
pub trait Log: std::fmt::Debug + Send + Sync + 'static {
    /// Appends `record`. Called under the key's shard lock, so a key's records keep the order
    /// of its changes; cheap.
    fn append(&self, record: &Record);
    /// Resolves once everything appended before the call is durable. Fails if the log could
    /// not be written: the caller must not acknowledge.
    fn barrier(&self) -> futures_util::future::BoxFuture<'_, Result<()>>;
    /// Why the log cannot be written right now, if it cannot (a full disk).
    fn error(&self) -> Option<String>;
    /// The log's counters, for `/metrics`.
    fn stats(&self) -> &WalStats;
    /// The data dir's log, if this is one: snapshots and the orderly close need its files.
    fn wal(self: Arc<Self>) -> Option<Arc<Wal>> {
        None
    }
}

/// A disk other than a data dir, for the simulator: what a node finds at start, and where it
/// logs from then on ([`crate::Config::disk`]).
pub trait Disk: std::fmt::Debug + Send + Sync + 'static {
    /// Every record a restart finds, oldest first: what was durable when the node stopped.
    fn recover(&self) -> Vec<Record>;
    /// The log of this start.
    fn open(&self) -> Arc<dyn Log>;
}

impl Log for Wal {
    fn append(&self, record: &Record) {
        Wal::append(self, record)
    }

    fn barrier(&self) -> futures_util::future::BoxFuture<'_, Result<()>> {
        Box::pin(Wal::barrier(self))
    }

    fn error(&self) -> Option<String> {
        Wal::error(self)
    }

    fn stats(&self) -> &WalStats {
        &self.stats
    }

    fn wal(self: Arc<Self>) -> Option<Arc<Wal>> {
        Some(self)
    }
}

/// The write-ahead log of one node.
pub struct Wal {
    dir: PathBuf,
    fsync: Fsync,
    interval: Duration,
    snapshot_log_bytes: u64,
    pending: Mutex<Pending>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
    pub stats: WalStats,
    /// The directory lock, held until [`Wal::close`].
    lock: Mutex<Option<File>>,
    /// The flusher thread, joined by [`Wal::close`].
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Io(Arc::new(std::io::Error::new(
        e.kind(),
        format!("{what}: {e}"),
    )))
}

fn wal_name(seq: u64) -> String {
    format!("wal-{seq:020}.log")
}

fn snap_name(seq: u64) -> String {
    format!("snap-{seq:020}.snap")
}

/// The sequence number in a file name `prefix<seq>suffix`.
fn seq_of(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// Segments and snapshots in `dir`, each sorted by sequence number.
fn list(dir: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut wals = Vec::new();
    let mut snaps = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir.display(), e))? {
        let entry = entry.map_err(|e| io_err(dir.display(), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = seq_of(&name, "wal-", ".log") {
            wals.push(seq);
        } else if let Some(seq) = seq_of(&name, "snap-", ".snap") {
            snaps.push(seq);
        }
    }
    wals.sort_unstable();
    snaps.sort_unstable();
    Ok((wals, snaps))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(format!("fsync {}", dir.display()), e))
}

/// Opens (creating it if missing) and locks the data directory. A second process on the same
/// directory gets an [`Error::InvalidInput`] naming the directory and the holder's pid.
pub fn lock_dir(dir: &Path) -> Result<File> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::invalid(format!(
            "--data-dir {} is not a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::invalid(format!(
            "--data-dir {}: cannot create it: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::invalid(format!("--data-dir {}: {e}", dir.display())))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(Error::invalid(format!(
            "--data-dir {} is in use by another ringkv process (pid {})",
            dir.display(),
            holder.trim()
        )));
    }
    file.set_len(0)
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
        .map_err(|e| Error::invalid(format!("--data-dir {}: {e}", dir.display())))?;
    // Readable at all? A directory we cannot list would fail recovery later, less clearly.
    list(dir).map_err(|e| Error::invalid(format!("--data-dir {}: {e}", dir.display())))?;
    Ok(file)
}

/// What recovery found.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// The snapshot loaded, if any.
    pub snapshot: Option<u64>,
    /// Records applied from the snapshot and the log.
    pub records: u64,
    /// Files (or tails of files) set aside as damaged.
    pub set_aside: Vec<PathBuf>,
    /// A torn last record was cut off.
    pub torn_tail: bool,
    /// Bytes read.
    pub bytes: u64,
    pub took: Duration,
}

/// Progress of a recovery, for `/ready` while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

/// How one file read ended.
enum Ending {
    /// Every frame was whole and valid.
    Clean,
    /// The last frame was cut short at this offset (a torn append).
    Torn(u64),
    /// A frame failed its check at this offset, with what was wrong.
    Corrupt(u64, String),
}

/// Reads the frames of `data` after its header, calling `each` with every payload. Stops at
/// the first bad frame.
fn frames(data: &[u8], mut each: impl FnMut(&[u8]) -> Result<()>) -> Ending {
    let mut pos = 0usize;
    while pos < data.len() {
        // Zeros to the end: space the file system allocated but no record reached.
        if data[pos] == 0 && data[pos..].iter().all(|b| *b == 0) {
            return Ending::Clean;
        }
        if data.len() - pos < HEADER_LEN {
            return Ending::Torn(pos as u64);
        }
        let len =
            u32::from_be_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let crc = u32::from_be_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if len > MAX_RECORD {
            return Ending::Corrupt(pos as u64, format!("frame length {len} is impossible"));
        }
        let end = pos + HEADER_LEN + len;
        if end > data.len() {
            return Ending::Torn(pos as u64);
        }
        let payload = &data[pos + HEADER_LEN..end];
        if crc32fast::hash(payload) != crc {
            return Ending::Corrupt(pos as u64, "checksum mismatch".into());
        }
        if let Err(err) = each(payload) {
            return Ending::Corrupt(pos as u64, err.to_string());
        }
        pos = end;
    }
    Ending::Clean
}

/// True if a whole, valid record frame starts anywhere in `data`: then a short frame before it
/// was not a torn last append but a damaged length, with good records after it.
fn valid_frame_within(data: &[u8]) -> bool {
    (0..data.len().saturating_sub(HEADER_LEN)).any(|pos| {
        let rest = &data[pos..];
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
        len > 0
            && HEADER_LEN + len <= rest.len()
            && crc32fast::hash(&rest[HEADER_LEN..HEADER_LEN + len]) == crc
            && codec::decode_payload::<Record>(&rest[HEADER_LEN..HEADER_LEN + len]).is_ok()
    })
}

/// Checks a file's header frame; returns the offset after it.
fn header(data: &[u8], magic: &str, path: &Path) -> Result<usize> {
    let mut got = None;
    let mut first = true;
    let mut end = 0usize;
    // Only the first frame is the header: stop after it.
    let _ = frames(data, |payload| {
        if !first {
            return Err(Error::Shutdown);
        }
        first = false;
        end = HEADER_LEN + payload.len();
        got = Some(codec::decode_payload::<Header>(payload)?);
        Ok(())
    });
    let h = got.ok_or_else(|| Error::Protocol(format!("{}: no valid header", path.display())))?;
    if h.magic != magic {
        return Err(Error::Protocol(format!(
            "{}: not a ringkv {magic} file ({:?})",
            path.display(),
            h.magic
        )));
    }
    if h.format > FORMAT {
        return Err(Error::invalid(format!(
            "{} was written by a newer ringkv (format {}; this build reads up to {FORMAT}): \
             upgrade ringkv, or move the data dir away",
            path.display(),
            h.format
        )));
    }
    Ok(end)
}

/// Moves `path`'s bytes from `offset` on into a new file beside it, and cuts `path` there.
fn set_aside_tail(path: &Path, data: &[u8], offset: usize) -> Result<PathBuf> {
    let aside = path.with_extension(format!("log.corrupt-{offset}"));
    std::fs::write(&aside, &data[offset..]).map_err(|e| io_err(aside.display(), e))?;
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err(path.display(), e))?;
    f.set_len(offset as u64)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(path.display(), e))?;
    Ok(aside)
}

fn rename_aside(path: &Path, suffix: &str) -> Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    let aside = PathBuf::from(name);
    std::fs::rename(path, &aside).map_err(|e| io_err(path.display(), e))?;
    Ok(aside)
}

/// Reads a whole snapshot and returns its records, or why it is not valid; `read` is told how
/// many of its bytes were decoded so far (the loading progress of a large one).
fn read_snapshot(path: &Path, mut read: impl FnMut(u64)) -> Result<Vec<Record>> {
    let data = std::fs::read(path).map_err(|e| io_err(path.display(), e))?;
    let start = header(&data, SNAP_MAGIC, path)?;
    let mut records = Vec::new();
    let mut crc = crc32fast::Hasher::new();
    let mut trailer = None;
    let mut pos = start;
    let ending = frames(&data[start..], |payload| {
        if trailer.is_some() {
            return Err(Error::Protocol("frames after the trailer".into()));
        }
        match codec::decode_payload::<SnapFrame>(payload)? {
            SnapFrame::Record(r) => {
                crc.update(&data[pos..pos + HEADER_LEN + payload.len()]);
                records.push(r);
            }
            SnapFrame::End(t) => trailer = Some(t),
        }
        pos += HEADER_LEN + payload.len();
        read(pos as u64);
        Ok(())
    });
    match ending {
        Ending::Clean => {}
        Ending::Torn(at) => {
            return Err(Error::Protocol(format!(
                "truncated at byte {}",
                start as u64 + at
            )));
        }
        Ending::Corrupt(at, why) => {
            return Err(Error::Protocol(format!(
                "{why} at byte {}",
                start as u64 + at
            )));
        }
    }
    let t =
        trailer.ok_or_else(|| Error::Protocol("no trailer: the snapshot is incomplete".into()))?;
    if t.records != records.len() as u64 || t.crc != crc.finalize() {
        return Err(Error::Protocol(format!(
            "trailer says {} records, found {}; or the checksum differs",
            t.records,
            records.len()
        )));
    }
    Ok(records)
}

/// Loads the newest valid snapshot and replays the log after it into `apply`. Damaged files
/// are set aside, never deleted. Fails only on a file of a newer format, or on I/O errors.
pub fn recover(
    dir: &Path,
    progress: &Progress,
    mut apply: impl FnMut(Record),
) -> Result<RecoveryReport> {
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    let (wals, snaps) = list(dir)?;
    let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let total: u64 = snaps.last().map_or(0, |s| size(dir.join(snap_name(*s))))
        + wals
            .iter()
            .map(|s| size(dir.join(wal_name(*s))))
            .sum::<u64>();
    progress.total.store(total, Ordering::Relaxed);
    // The newest snapshot that checks out; damaged ones are set aside.
    let mut from_seq = 0;
    for &seq in snaps.iter().rev() {
        let path = dir.join(snap_name(seq));
        let base = report.bytes;
        match read_snapshot(&path, |n| progress.done.store(base + n, Ordering::Relaxed)) {
            Ok(records) => {
                report.bytes += size(path.clone());
                progress.done.store(report.bytes, Ordering::Relaxed);
                report.records += records.len() as u64;
                records.into_iter().for_each(&mut apply);
                report.snapshot = Some(seq);
                from_seq = seq;
                break;
            }
            // A newer format is refused, not skipped: the data is there, this build cannot
            // read it.
            Err(err @ Error::InvalidInput(_)) => return Err(err),
            Err(err) => {
                let aside = rename_aside(&path, ".damaged")?;
                error!(file = %path.display(), moved_to = %aside.display(), %err,
                    "snapshot is damaged; set aside, falling back to the one before it");
                report.set_aside.push(aside);
            }
        }
    }
    let mut stopped = false;
    for &seq in wals.iter().filter(|s| **s >= from_seq) {
        let path = dir.join(wal_name(seq));
        if stopped {
            // Past a corrupt record, later segments are not replayed (their records may
            // build on what was lost); they are kept for inspection.
            let aside = rename_aside(&path, ".corrupt-after")?;
            error!(file = %path.display(), moved_to = %aside.display(),
                "log segment after a corrupt record set aside");
            report.set_aside.push(aside);
            continue;
        }
        let data = std::fs::read(&path).map_err(|e| io_err(path.display(), e))?;
        let start = match header(&data, WAL_MAGIC, &path) {
            Ok(start) => start,
            Err(err @ Error::InvalidInput(_)) => return Err(err),
            // A segment whose header never made it to disk (a crash right after it was
            // created) holds nothing.
            Err(_) if data.len() < 64 && seq == *wals.last().unwrap_or(&0) => {
                warn!(file = %path.display(), "empty last log segment without a header; ignored");
                continue;
            }
            Err(err) => {
                let aside = rename_aside(&path, ".corrupt-header")?;
                error!(file = %path.display(), moved_to = %aside.display(), %err,
                    "log segment with a bad header set aside");
                report.set_aside.push(aside);
                stopped = true;
                continue;
            }
        };
        let last = seq == *wals.last().unwrap_or(&0);
        let mut n = 0u64;
        let base = report.bytes;
        let ending = frames(&data[start..], |payload| {
            apply(codec::decode_payload::<Record>(payload)?);
            n += 1;
            // Bytes of this segment replayed so far, up to the end of this record.
            let upto = payload.as_ptr() as usize + payload.len() - data.as_ptr() as usize;
            progress.done.store(base + upto as u64, Ordering::Relaxed);
            Ok(())
        });
        report.records += n;
        report.bytes += data.len() as u64;
        progress.done.store(report.bytes, Ordering::Relaxed);
        // A bad record is a torn append (a crash mid-write) only at the end of the newest
        // segment with nothing valid after it: a damaged length also runs past the end, and a
        // torn write into space allocated ahead fails its checksum, so neither shape alone
        // tells them apart; good records after it do.
        let ending = match ending {
            Ending::Torn(at) | Ending::Corrupt(at, _)
                if last && !valid_frame_within(&data[start + at as usize + 1..]) =>
            {
                Ending::Torn(at)
            }
            Ending::Torn(at) => {
                Ending::Corrupt(at, "a record's length runs past good records".into())
            }
            other => other,
        };
        match ending {
            Ending::Clean => {}
            Ending::Torn(at) => {
                let at = start + at as usize;
                // Kept beside the log all the same: cutting never deletes bytes.
                let aside = path.with_extension(format!("log.torn-{at}"));
                std::fs::write(&aside, &data[at..]).map_err(|e| io_err(aside.display(), e))?;
                warn!(file = %path.display(), offset = at, bytes = data.len() - at,
                    kept_in = %aside.display(), "torn last log record (a crash mid-append) cut off");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_err(path.display(), e))?;
                f.set_len(at as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| io_err(path.display(), e))?;
                report.torn_tail = true;
            }
            Ending::Corrupt(at, why) => {
                let at = start + at as usize;
                let aside = set_aside_tail(&path, &data, at)?;
                error!(file = %path.display(), offset = at, moved_to = %aside.display(),
                    reason = %why, "corrupt log record: replay stopped here; the rest of the file \
                     is set aside, and peers repair what it held");
                report.set_aside.push(aside);
                stopped = true;
            }
        }
    }
    report.took = started.elapsed();
    Ok(report)
}

/// Writes one snapshot file from `records` (a callback that feeds frames shard by shard), then
/// makes it durable and visible atomically (write to `.tmp`, fsync, rename, fsync the dir).
pub fn write_snapshot(
    dir: &Path,
    seq: u64,
    fill: impl FnOnce(&mut dyn FnMut(&Record) -> Result<()>) -> Result<()>,
) -> Result<u64> {
    let path = dir.join(snap_name(seq));
    let tmp = path.with_extension("snap.tmp");
    let file = File::create(&tmp).map_err(|e| io_err(tmp.display(), e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut buf = BytesMut::new();
    codec::encode(
        &Header {
            magic: SNAP_MAGIC.into(),
            format: FORMAT,
            seq,
        },
        &mut buf,
    )?;
    let mut crc = crc32fast::Hasher::new();
    let mut count = 0u64;
    let mut bytes = 0u64;
    {
        let mut put = |r: &Record| -> Result<()> {
            let start = buf.len();
            codec::encode(&SnapFrame::Record(r.clone()), &mut buf)?;
            crc.update(&buf[start..]);
            count += 1;
            if buf.len() >= 1 << 20 {
                out.write_all(&buf).map_err(|e| io_err(tmp.display(), e))?;
                bytes += buf.len() as u64;
                buf.clear();
            }
            Ok(())
        };
        fill(&mut put)?;
    }
    codec::encode(
        &SnapFrame::End(Trailer {
            records: count,
            crc: crc.finalize(),
        }),
        &mut buf,
    )?;
    bytes += buf.len() as u64;
    out.write_all(&buf).map_err(|e| io_err(tmp.display(), e))?;
    let file = out
        .into_inner()
        .map_err(|e| io_err(tmp.display(), e.into_error()))?;
    file.sync_all().map_err(|e| io_err(tmp.display(), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err(path.display(), e))?;
    sync_dir(dir)?;
    Ok(bytes)
}

/// The segment being appended to.
struct Segment {
    file: File,
    /// Where the next record goes: the end of the records.
    end: u64,
}

/// Opens a new log segment with its header, durable before anything is appended.
fn open_segment(dir: &Path, seq: u64) -> Result<Segment> {
    let path = dir.join(wal_name(seq));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(path.display(), e))?;
    let mut buf = BytesMut::new();
    codec::encode(
        &Header {
            magic: WAL_MAGIC.into(),
            format: FORMAT,
            seq,
        },
        &mut buf,
    )?;
    file.write_all(&buf)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(path.display(), e))?;
    sync_dir(dir)?;
    Ok(Segment {
        file,
        end: buf.len() as u64,
    })
}

impl Wal {
    /// Opens the log for appending, after recovery: a fresh segment past every existing one,
    /// so nothing recovery read is ever appended to. `dir_lock` is the directory lock.
    pub fn open(cfg: &DurableConfig, dir_lock: File) -> Result<Arc<Wal>> {
        // A snapshot a crash interrupted is incomplete by definition (it was never renamed
        // into place): nothing reads it, so it is removed.
        for entry in std::fs::read_dir(&cfg.dir).map_err(|e| io_err(cfg.dir.display(), e))? {
            let path = entry.map_err(|e| io_err(cfg.dir.display(), e))?.path();
            if path.to_string_lossy().ends_with(".snap.tmp") {
                let _ = std::fs::remove_file(&path);
            }
        }
        let (wals, snaps) = list(&cfg.dir)?;
        let seq = wals.last().max(snaps.last()).map_or(1, |s| s + 1);
        let file = open_segment(&cfg.dir, seq)?;
        let wal = Arc::new(Wal {
            dir: cfg.dir.clone(),
            fsync: cfg.fsync,
            interval: cfg.interval,
            snapshot_log_bytes: cfg.snapshot_log_bytes,
            pending: Mutex::new(Pending {
                buf: BytesMut::new(),
                appended: 0,
                rotate: None,
                stop: false,
                idle: false,
            }),
            wake: Condvar::new(),
            durable: watch::channel(Durable::default()).0,
            stats: WalStats::default(),
            lock: Mutex::new(Some(dir_lock)),
            flusher: Mutex::new(None),
        });
        let flusher = wal.clone();
        let thread = std::thread::Builder::new()
            .name("ringkv-wal".into())
            .spawn(move || flusher.run_flusher(file, seq))
            .map_err(|e| io_err("cannot start the log thread", e))?;
        *lock(&wal.flusher) = Some(thread);
        Ok(wal)
    }

    /// Appends `record`. Called under the key's shard lock, so a key's records keep the order
    /// of its changes. Cheap: an encode into memory.
    pub fn append(&self, record: &Record) {
        let mut p = lock(&self.pending);
        let before = p.buf.len();
        if let Err(err) = codec::encode(record, &mut p.buf) {
            // Only an unencodable record (impossible for the types here) ends up here.
            error!(%err, "cannot encode a log record");
            return;
        }
        p.appended += (p.buf.len() - before) as u64;
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        let wake = p.idle && self.fsync == Fsync::Always;
        p.idle &= !wake;
        drop(p);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Resolves once everything appended before the call is durable (per `--fsync`: on disk
    /// for `always`; at once for the other modes). Fails if the log could not be written (a
    /// full disk): the caller must not acknowledge.
    pub async fn barrier(&self) -> Result<()> {
        let target = lock(&self.pending).appended;
        let mut rx = self.durable.subscribe();
        if self.fsync != Fsync::Always {
            // Periodic and never acknowledge at once, but not past a write error: a node
            // whose disk is full says so instead of acknowledging what it cannot log.
            return match &rx.borrow().error {
                Some(err) => Err(storage_error(err)),
                None => Ok(()),
            };
        }
        loop {
            {
                let d = rx.borrow_and_update();
                if d.lsn >= target {
                    return Ok(());
                }
                if let Some(err) = &d.error {
                    return Err(storage_error(err));
                }
            }
            if rx.changed().await.is_err() {
                return Err(Error::Shutdown);
            }
        }
    }

    /// Why the log cannot be written right now, if it cannot (a full disk).
    pub fn error(&self) -> Option<String> {
        self.durable.borrow().error.clone()
    }

    /// Starts a new segment: everything appended so far goes to the old one. Returns the new
    /// segment's number, once it exists. Blocking: call from a blocking thread.
    fn rotate(&self) -> Result<u64> {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut p = lock(&self.pending);
            let at = p.appended;
            p.rotate = Some((at, tx));
        }
        self.wake.notify_one();
        rx.recv().map_err(|_| Error::Shutdown)?
    }

    /// Writes (and syncs) everything appended, stops the flusher and releases the directory
    /// lock. Blocks until then. Later appends are not written, and barriers fail.
    pub fn close(&self) {
        lock(&self.pending).stop = true;
        self.wake.notify_one();
        if let Some(thread) = lock(&self.flusher).take() {
            let _ = thread.join();
        }
        self.durable.send_modify(|d| {
            d.error.get_or_insert_with(|| "the log is closed".into());
        });
        lock(&self.lock).take();
    }

    /// The flusher thread: writes and syncs batches until [`Wal::close`].
    fn run_flusher(self: Arc<Self>, mut file: Segment, mut seq: u64) {
        // Bytes taken from `pending` but not yet written: the log from `written` on. Kept
        // across a failed write (a full disk), so the retry writes the same bytes.
        let mut carry = BytesMut::new();
        let mut written = 0u64;
        loop {
            let (rotate, stop) = {
                let mut p = lock(&self.pending);
                if self.fsync == Fsync::Always {
                    while p.buf.is_empty() && p.rotate.is_none() && !p.stop && carry.is_empty() {
                        p.idle = true;
                        p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                    }
                    p.idle = false;
                } else if p.rotate.is_none() && !p.stop {
                    // The periodic modes write once per interval, not per append.
                    p = self
                        .wake
                        .wait_timeout(p, self.interval)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                let batch = p.buf.split();
                carry.unsplit(batch);
                (p.rotate.take(), p.stop)
            };
            // A rotation splits the bytes at its LSN: what came before goes to the old segment.
            let n = match &rotate {
                Some((at, _)) => ((at - written) as usize).min(carry.len()),
                None => carry.len(),
            };
            let ok = self.write_out(&mut file, &carry[..n]);
            if ok {
                written += n as u64;
                let _ = carry.split_to(n);
                self.durable.send_modify(|d| {
                    d.lsn = written;
                    d.error = None;
                });
            }
            if let Some((_, done)) = rotate {
                let res = if ok {
                    open_segment(&self.dir, seq + 1).map(|f| {
                        file = f;
                        seq += 1;
                        self.stats
                            .log_bytes_since_snapshot
                            .store(0, Ordering::Relaxed);
                        seq
                    })
                } else {
                    Err(storage_error(
                        "cannot start a log segment: the last write failed",
                    ))
                };
                let _ = done.send(res);
            }
            if !ok {
                if stop {
                    error!("the log could not be written before the node stopped");
                    return;
                }
                std::thread::sleep(RETRY_AFTER_ERROR);
                continue;
            }
            if stop && carry.is_empty() && lock(&self.pending).buf.is_empty() {
                return;
            }
        }
    }

    /// Writes `bytes` at the end of the current segment and syncs it (per the mode). On an
    /// error, cuts the segment back to where it was, publishes the error, and returns false.
    fn write_out(&self, seg: &mut Segment, bytes: &[u8]) -> bool {
        use std::os::unix::fs::FileExt;
        if bytes.is_empty() {
            return true;
        }
        // Written at the end of the records, not appended: a failed write is simply written
        // again over whatever part of it reached the file.
        let res = seg
            .file
            .write_all_at(bytes, seg.end)
            .and_then(|()| match self.fsync {
                Fsync::Always | Fsync::Periodic => {
                    self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    seg.file.sync_data()
                }
                Fsync::Never => Ok(()),
            });
        match res {
            Ok(()) => {
                seg.end += bytes.len() as u64;
                self.stats
                    .bytes_written
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.stats
                    .log_bytes_since_snapshot
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                true
            }
            Err(err) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                let msg = format!("cannot write the log in {}: {err}", self.dir.display());
                warn!("{msg}");
                self.durable.send_modify(|d| d.error = Some(msg));
                false
            }
        }
    }

    /// Takes a snapshot if the log since the last one outgrew `live_bytes` (and
    /// `--snapshot-log-bytes`): rotate, stream the state through `fill`, then delete what the
    /// previous snapshot made redundant. Blocking: runs on the snapshot thread.
    pub fn snapshot_if_due(
        &self,
        live_bytes: u64,
        fill: impl FnOnce(&mut dyn FnMut(&Record) -> Result<()>) -> Result<()>,
    ) -> Result<bool> {
        let since = self.stats.log_bytes_since_snapshot.load(Ordering::Relaxed);
        if since < self.snapshot_log_bytes.max(live_bytes) {
            return Ok(false);
        }
        self.snapshot(fill)?;
        Ok(true)
    }

    /// Takes a snapshot now (see [`Wal::snapshot_if_due`]).
    pub fn snapshot(
        &self,
        fill: impl FnOnce(&mut dyn FnMut(&Record) -> Result<()>) -> Result<()>,
    ) -> Result<()> {
        let started = Instant::now();
        let seq = self.rotate()?;
        let bytes = write_snapshot(&self.dir, seq, fill)?;
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        // Keep the previous snapshot and the log after it (the fallback); drop the rest.
        let (wals, snaps) = list(&self.dir)?;
        let keep_from = snaps.iter().rev().nth(1).copied().unwrap_or(seq);
        for s in snaps.iter().filter(|s| **s < keep_from) {
            let _ = std::fs::remove_file(self.dir.join(snap_name(*s)));
        }
        for s in wals.iter().filter(|s| **s < keep_from) {
            let _ = std::fs::remove_file(self.dir.join(wal_name(*s)));
        }
        info!(
            seq,
            bytes,
            took_ms = started.elapsed().as_millis() as u64,
            max_shard_lock_us = self.stats.snapshot_max_lock_us.load(Ordering::Relaxed),
            "snapshot written"
        );
        Ok(())
    }

    /// Runs [`Wal::snapshot_if_due`] every second on its own thread until
    /// `stop` is set. `live` gives the store's live bytes; `fill` streams its state.
    pub fn spawn_snapshots(
        self: &Arc<Self>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        live: impl Fn() -> u64 + Send + 'static,
        fill: impl Fn(&mut dyn FnMut(&Record) -> Result<()>) -> Result<()> + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let wal = self.clone();
        std::thread::Builder::new()
            .name("ringkv-snapshot".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(SNAPSHOT_CHECK);
                    if let Err(err) = wal.snapshot_if_due(live(), &fill) {
                        warn!(%err, "snapshot failed; the log keeps everything meanwhile");
                    }
                }
            })
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("fsync", &self.fsync)
            .finish_non_exhaustive()
    }
}

fn storage_error(msg: &str) -> Error {
    Error::Storage(msg.to_string())
}

/// Replays `records` into a map the way recovery applies them to a store (for tests and
/// tools): the last state of each key wins; an empty one removes it.
pub fn replay_into(map: &mut HashMap<Bytes, VersionSet>, record: Record) {
    if let Record::Key { key, versions } = record {
        if versions.is_empty() {
            map.remove(&key);
        } else {
            map.insert(key, versions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Actor;

    /// A fresh directory under the target's tmp dir.
    fn tmp_dir(name: &str) -> PathBuf {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringkv-durable-{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn versions(value: &str) -> VersionSet {
        let mut vs = VersionSet::new();
        let actor = Actor {
            node: "n1".into(),
            generation: 7,
        };
        vs.write_above(
            &actor,
            None,
            Some(Bytes::copy_from_slice(value.as_bytes())),
            None,
            0,
        );
        vs
    }

    fn key(k: &str, v: &str) -> Record {
        Record::Key {
            key: Bytes::copy_from_slice(k.as_bytes()),
            versions: versions(v),
        }
    }

    fn cfg(dir: &Path) -> DurableConfig {
        DurableConfig {
            dir: dir.to_path_buf(),
            fsync: Fsync::Always,
            interval: Duration::from_millis(10),
            snapshot_log_bytes: SNAPSHOT_MIN_LOG,
        }
    }

    /// Opens a log on `dir`, appends `records` durably, closes it.
    async fn write_log(dir: &Path, records: &[Record]) {
        let wal = Wal::open(&cfg(dir), lock_dir(dir).unwrap()).unwrap();
        for r in records {
            wal.append(r);
        }
        wal.barrier().await.unwrap();
        wal.close();
        // The flusher has stopped once the directory lock is free again.
        drop(wal);
    }

    fn recovered(dir: &Path) -> (HashMap<Bytes, VersionSet>, RecoveryReport) {
        let mut map = HashMap::new();
        let report = recover(dir, &Progress::default(), |r| replay_into(&mut map, r)).unwrap();
        (map, report)
    }

    fn value_of(map: &HashMap<Bytes, VersionSet>, k: &str) -> Option<Bytes> {
        map.get(k.as_bytes())?.versions()[0].value.clone()
    }

    fn only_wal(dir: &Path) -> PathBuf {
        let (wals, _) = list(dir).unwrap();
        dir.join(wal_name(*wals.first().unwrap()))
    }

    #[tokio::test]
    async fn a_log_replays_the_last_state_of_each_key() {
        let dir = tmp_dir("replay");
        let gone = Record::Key {
            key: Bytes::from_static(b"b"),
            versions: VersionSet::new(),
        };
        write_log(&dir, &[key("a", "1"), key("b", "2"), key("a", "3"), gone]).await;
        let (map, report) = recovered(&dir);
        assert_eq!(value_of(&map, "a").as_deref(), Some(&b"3"[..]));
        assert!(
            !map.contains_key(&b"b"[..]),
            "an empty state removes the key"
        );
        assert_eq!(report.records, 4);
        assert!(report.set_aside.is_empty() && !report.torn_tail);
    }

    /// The loading progress counts bytes as they are replayed, not once per file: a large
    /// data dir shows its progress while it loads.
    #[tokio::test]
    async fn progress_counts_the_bytes_replayed_so_far() {
        let dir = tmp_dir("progress");
        let records: Vec<Record> = (0..200).map(|i| key(&format!("k{i}"), "v")).collect();
        write_log(&dir, &records).await;
        let progress = Progress::default();
        let mut seen = Vec::new();
        recover(&dir, &progress, |_| {
            seen.push(progress.done.load(Ordering::Relaxed))
        })
        .unwrap();
        let total = progress.total.load(Ordering::Relaxed);
        assert_eq!(seen.len(), 200);
        // Before each record is applied, the bytes before it count; after the last, all.
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert!(
            seen[0] < total / 50,
            "{} of {total} at the first record",
            seen[0]
        );
        assert!(seen[100] > total / 3 && seen[100] < total * 2 / 3);
        assert_eq!(progress.done.load(Ordering::Relaxed), total);
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_off_and_the_rest_kept() {
        let dir = tmp_dir("torn");
        write_log(&dir, &[key("a", "1"), key("b", "2")]).await;
        let path = only_wal(&dir);
        let len = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of appending the second record.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (map, report) = recovered(&dir);
        assert!(report.torn_tail);
        assert!(report.set_aside.is_empty(), "a torn tail is not corruption");
        assert_eq!(value_of(&map, "a").as_deref(), Some(&b"1"[..]));
        assert!(!map.contains_key(&b"b"[..]));
        // The file was cut at the last whole record: a second recovery finds it clean.
        let (map, report) = recovered(&dir);
        assert!(!report.torn_tail && map.len() == 1);
    }

    #[tokio::test]
    async fn a_bit_flip_mid_log_stops_replay_and_sets_the_rest_aside() {
        let dir = tmp_dir("flip");
        write_log(&dir, &[key("a", "1"), key("b", "2"), key("c", "3")]).await;
        let path = only_wal(&dir);
        let mut data = std::fs::read(&path).unwrap();
        // Flip a bit inside the second record's payload: skip the header and first frames.
        let frame_len = |at: usize| {
            HEADER_LEN + u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize
        };
        let second = frame_len(0) + frame_len(frame_len(0));
        data[second + HEADER_LEN + 3] ^= 0x01;
        std::fs::write(&path, &data).unwrap();
        let (map, report) = recovered(&dir);
        assert_eq!(value_of(&map, "a").as_deref(), Some(&b"1"[..]));
        assert!(!map.contains_key(&b"b"[..]) && !map.contains_key(&b"c"[..]));
        assert_eq!(report.set_aside.len(), 1, "{report:?}");
        let aside = std::fs::read(&report.set_aside[0]).unwrap();
        assert!(
            !aside.is_empty(),
            "the rest of the file is kept, not deleted"
        );
        // Appending goes on in a new segment after recovery; the damaged one stays cut.
        let (map, report) = recovered(&dir);
        assert_eq!(map.len(), 1);
        assert!(report.set_aside.is_empty());
    }

    #[tokio::test]
    async fn a_newer_format_is_refused_not_misread() {
        let dir = tmp_dir("newer");
        std::fs::create_dir_all(&dir).unwrap();
        let mut buf = BytesMut::new();
        codec::encode(
            &Header {
                magic: WAL_MAGIC.into(),
                format: FORMAT + 1,
                seq: 1,
            },
            &mut buf,
        )
        .unwrap();
        codec::encode(&key("a", "1"), &mut buf).unwrap();
        std::fs::write(dir.join(wal_name(1)), &buf).unwrap();
        let err = recover(&dir, &Progress::default(), |_| {}).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert!(err.to_string().contains("newer ringkv"), "{err}");
    }

    #[tokio::test]
    async fn a_snapshot_then_the_log_after_it() {
        let dir = tmp_dir("snap");
        let wal = Wal::open(&cfg(&dir), lock_dir(&dir).unwrap()).unwrap();
        wal.append(&key("a", "1"));
        wal.append(&key("b", "1"));
        wal.barrier().await.unwrap();
        let state = [key("a", "1"), key("b", "1")];
        let w = wal.clone();
        tokio::task::spawn_blocking(move || w.snapshot(|put| state.iter().try_for_each(put)))
            .await
            .unwrap()
            .unwrap();
        wal.append(&key("b", "2"));
        wal.barrier().await.unwrap();
        wal.close();
        drop(wal);
        let (map, report) = recovered(&dir);
        assert!(report.snapshot.is_some());
        assert_eq!(value_of(&map, "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(value_of(&map, "b").as_deref(), Some(&b"2"[..]));
    }

    #[tokio::test]
    async fn a_truncated_snapshot_is_set_aside_and_the_previous_one_used() {
        let dir = tmp_dir("trunc");
        let wal = Wal::open(&cfg(&dir), lock_dir(&dir).unwrap()).unwrap();
        for round in ["1", "2"] {
            wal.append(&key("a", round));
            wal.barrier().await.unwrap();
            let state = [key("a", round)];
            let w = wal.clone();
            tokio::task::spawn_blocking(move || w.snapshot(|put| state.iter().try_for_each(put)))
                .await
                .unwrap()
                .unwrap();
        }
        wal.close();
        drop(wal);
        let (_, snaps) = list(&dir).unwrap();
        assert_eq!(
            snaps.len(),
            2,
            "the previous snapshot is kept as a fallback"
        );
        let newest = dir.join(snap_name(*snaps.last().unwrap()));
        let len = std::fs::metadata(&newest).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&newest)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (map, report) = recovered(&dir);
        assert_eq!(
            report.snapshot,
            Some(snaps[0]),
            "fell back to the older snapshot"
        );
        assert_eq!(report.set_aside.len(), 1);
        // The log after the older snapshot still holds the newer write.
        assert_eq!(value_of(&map, "a").as_deref(), Some(&b"2"[..]));
    }

    #[tokio::test]
    async fn a_second_process_cannot_lock_the_directory() {
        let dir = tmp_dir("lock");
        let held = lock_dir(&dir).unwrap();
        let err = lock_dir(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        lock_dir(&dir).expect("free again once the holder is gone");
        // A file where a directory should be.
        let file = tmp_dir("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(
            lock_dir(&file)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_fsyncs() {
        let dir = tmp_dir("group");
        let wal = Wal::open(&cfg(&dir), lock_dir(&dir).unwrap()).unwrap();
        // 200 writes arrive while the flusher is busy (it cannot take the buffer while they
        // are appended): they wait for one shared fsync, not 200.
        {
            let mut p = lock(&wal.pending);
            for i in 0..200 {
                codec::encode(&key(&format!("k{i}"), "v"), &mut p.buf).unwrap();
            }
            p.appended = p.buf.len() as u64;
        }
        wal.wake.notify_one();
        let waits = (0..200).map(|_| wal.barrier());
        for res in futures_util::future::join_all(waits).await {
            res.unwrap();
        }
        let fsyncs = wal.stats.fsyncs.load(Ordering::Relaxed);
        assert_eq!(fsyncs, 1, "200 acknowledged writes took {fsyncs} fsyncs");
        wal.close();
        drop(wal);
        assert_eq!(recovered(&dir).0.len(), 200);
    }
}
