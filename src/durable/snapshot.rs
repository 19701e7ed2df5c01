//! Writing a snapshot, shard by shard.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use bytes::BytesMut;

use crate::codec::{self};
use crate::error::Result;
use crate::store::log::Record;

use super::*;

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
