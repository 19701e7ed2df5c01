//! Recovery: the newest good snapshot, then every later log segment (see the module doc of
//! [`crate::durable`]).

use std::fs::OpenOptions;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{error, warn};

use crate::codec::{self, HEADER_LEN};
use crate::error::{Error, Result};
use crate::store::log::Record;

use super::*;

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

/// Moves `path`'s bytes from `offset` on into a new file beside it, and cuts `path` there.
pub(super) fn set_aside_tail(path: &Path, data: &[u8], offset: usize) -> Result<PathBuf> {
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

pub(super) fn rename_aside(path: &Path, suffix: &str) -> Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    let aside = PathBuf::from(name);
    std::fs::rename(path, &aside).map_err(|e| io_err(path.display(), e))?;
    Ok(aside)
}

/// Reads a whole snapshot and returns its records, or why it is not valid; `read` is told how
/// many of its bytes were decoded so far (the loading progress of a large one).
pub(super) fn read_snapshot(path: &Path, mut read: impl FnMut(u64)) -> Result<Vec<Record>> {
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
