//! The files' frames: headers, snapshot trailers, file names, and reading frames back.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::codec::{self, HEADER_LEN};
use crate::error::{Error, Result};
use crate::store::log::Record;

use super::*;

/// Magic names in file headers.
pub(super) const WAL_MAGIC: &str = "ringkv-wal";

pub(super) const SNAP_MAGIC: &str = "ringkv-snapshot";

/// Largest frame recovery accepts: a value is at most `--max-value-bytes` (up to 1 GiB), and
/// a record holds a key's siblings; anything larger is corruption, not a record.
pub(super) const MAX_RECORD: usize = 2 * 1024 * 1024 * 1024 - 1;

/// The first frame of every file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Header {
    pub(super) magic: String,
    pub(super) format: u32,
    pub(super) seq: u64,
}

/// The last frame of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Trailer {
    pub(super) records: u64,
    /// CRC32 over every record frame, headers included.
    pub(super) crc: u32,
}

/// A snapshot frame: a record, or the trailer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum SnapFrame {
    Record(Record),
    End(Trailer),
}

pub(super) fn wal_name(seq: u64) -> String {
    format!("wal-{seq:020}.log")
}

pub(super) fn snap_name(seq: u64) -> String {
    format!("snap-{seq:020}.snap")
}

/// The sequence number in a file name `prefix<seq>suffix`.
pub(super) fn seq_of(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// Segments and snapshots in `dir`, each sorted by sequence number.
pub(super) fn list(dir: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
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

/// How one file read ended.
pub(super) enum Ending {
    /// Every frame was whole and valid.
    Clean,
    /// The last frame was cut short at this offset (a torn append).
    Torn(u64),
    /// A frame failed its check at this offset, with what was wrong.
    Corrupt(u64, String),
}

/// Reads the frames of `data` after its header, calling `each` with every payload. Stops at
/// the first bad frame.
pub(super) fn frames(data: &[u8], mut each: impl FnMut(&[u8]) -> Result<()>) -> Ending {
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
pub(super) fn valid_frame_within(data: &[u8]) -> bool {
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
pub(super) fn header(data: &[u8], magic: &str, path: &Path) -> Result<usize> {
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
