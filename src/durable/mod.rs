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
//! A record is a key's *state* after a change ([`crate::store::Record::Key`]: its whole version set; an empty
//! set means the key is gone), or a hint's ([`crate::store::Record::Hint`]). Replaying sets each key to its
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

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

mod format;
mod lock;
mod recovery;
mod snapshot;
mod wal;

use format::*;
pub use lock::lock_dir;
pub use recovery::{Progress, RecoveryReport, recover};
pub use snapshot::write_snapshot;
pub use wal::Wal;

/// The file format this build writes, and the newest it reads.
pub const FORMAT: u32 = 1;

/// Default `--snapshot-log-bytes`: no snapshot is taken before the log since the last one holds
/// this much. Below it, replaying the log is as quick as loading a snapshot, and snapshots of
/// a small store would churn.
pub const SNAPSHOT_MIN_LOG: u64 = 64 * 1024 * 1024;

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

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Io(Arc::new(std::io::Error::new(
        e.kind(),
        format!("{what}: {e}"),
    )))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(format!("fsync {}", dir.display()), e))
}

fn storage_error(msg: &str) -> Error {
    Error::Storage(msg.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::fs::OpenOptions;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::codec::{self, HEADER_LEN};
    use crate::lock;
    use crate::store::log::{Record, replay_into};
    use crate::version::Actor;
    use crate::version::VersionSet;

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
