//! The write-ahead log: group commit by one flusher thread, segments, and the snapshot
//! thread.

use std::fs::{File, OpenOptions};
use std::io::Write;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::codec::{self};
use crate::error::{Error, Result};
use crate::store::log::{Log, Record, WalStats};

use super::*;
use crate::lock;

/// How often the snapshot thread checks whether a snapshot is due.
pub(super) const SNAPSHOT_CHECK: Duration = Duration::from_secs(1);

/// After a failed write or fsync (a full disk), how long the flusher waits before it tries
/// the same bytes again.
pub(super) const RETRY_AFTER_ERROR: Duration = Duration::from_millis(200);

/// Where the flusher has got to, for [`Wal::barrier`].
#[derive(Debug, Clone, Default)]
pub(super) struct Durable {
    /// Bytes of the log that are durable (per the fsync mode).
    lsn: u64,
    /// The last write error, if the bytes after `lsn` could not be written.
    error: Option<String>,
}

/// Appended but not yet written bytes.
pub(super) struct Pending {
    pub(super) buf: BytesMut,
    /// Bytes ever appended: the log sequence number of the buffer's end.
    pub(super) appended: u64,
    /// A segment switch requested at this LSN, with where to say it is done.
    pub(super) rotate: Option<(u64, std::sync::mpsc::Sender<Result<u64>>)>,
    pub(super) stop: bool,
    /// The flusher is waiting for work: only then does an append wake it. While it writes
    /// and syncs, appends just accumulate for its next round (group commit without a wake-up
    /// per write).
    pub(super) idle: bool,
}

impl Wal {
    /// The data dir's log behind `log`, if it is one.
    pub fn of(log: Arc<dyn Log>) -> Option<Arc<Wal>> {
        log.into_any().downcast::<Wal>().ok()
    }
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

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

/// The write-ahead log of one node.
pub struct Wal {
    dir: PathBuf,
    fsync: Fsync,
    interval: Duration,
    snapshot_log_bytes: u64,
    pub(super) pending: Mutex<Pending>,
    pub(super) wake: Condvar,
    durable: watch::Sender<Durable>,
    pub stats: WalStats,
    /// The directory lock, held until [`Wal::close`].
    lock: Mutex<Option<File>>,
    /// The flusher thread, joined by [`Wal::close`].
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The segment being appended to.
pub(super) struct Segment {
    file: File,
    /// Where the next record goes: the end of the records.
    end: u64,
}

/// Opens a new log segment with its header, durable before anything is appended.
pub(super) fn open_segment(dir: &Path, seq: u64) -> Result<Segment> {
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
