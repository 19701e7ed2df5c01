//! Backup and restore: `ringkv backup FILE` copies a live ring to one checksummed file, and
//! `ringkv restore FILE` loads it into any ring, keeping siblings and causality.
//!
//! # Backup
//!
//! The client ([`save`]) learns the ring from `GET /cluster/ring` and cuts it into segments
//! ([`crate::ring::Ring::segments`]), as the nodes do. For each segment it asks every serving
//! home replica for its copies of the segment's keys (`GET /admin/backup`, the `admin` role,
//! served from the node's store without coordination: [`node::segment_page`]), page by page,
//! and merges them by causality ([`VersionSet::merge`]), as a read at r = all reachable homes
//! does. A segment none of whose homes answers fails the backup, naming its hash range.
//! Several segments are fetched at once, and written in ring order.
//!
//! A key is written if its merged versions hold a live value: all its siblings, with their
//! causal histories, content types and expiry times (expired siblings too, whose histories
//! still supersede what they overwrote). Deleted keys are not written.
//!
//! The backup is *fuzzy*, as every live backup of a leaderless store is: each segment is as
//! it was when its pages were read, not one instant of the whole ring. A key written during
//! the backup may be in it in its old or its new state, and a key written only to fallbacks
//! (its homes down) is in it only once hinted handoff has delivered it.
//!
//! # Restore
//!
//! The client ([`load`]) reads the whole file first and verifies it (checksums, record
//! count, trailer) before writing any key, unless `--force`. It then sends the records in
//! batches (`POST /admin/restore`, the `admin` role), each to the node that is the first home
//! of its keys in the target's ring. That node merges each key into every home replica of the
//! target ring ([`node::load`]: one `ReplicateMany` per home and batch, the RPC hinted
//! handoff uses, so a ring of mixed builds restores too), and answers once every key is held
//! by W homes.
//!
//! A restore *merges*: the versions in the file keep their dots and histories, so
//!
//! - restoring the same file twice leaves the same state (merging is idempotent);
//! - in a live ring, a newer write (one whose history holds the backed-up version's dot)
//!   wins, and a concurrent one becomes a sibling;
//! - a client that read a key's context before the backup can write with it after the
//!   restore: its write supersedes exactly the siblings that context covered.
//!
//! Dots name their writer by node id *and generation* ([`crate::version::Actor`]), so the
//! target ring's nodes never mint a dot that a restored version already holds, whatever
//! their names. A key whose every version has expired by the time of the restore is
//! skipped and counted.
//!
//! # The file
//!
//! ```text
//! "RINGKVBK"                      8 bytes, the magic
//! format version                  u32, big-endian: 1
//! header frame                    a MessagePack map: cluster_id, replicas (N), created_ms,
//!                                 ringkv (the writer's version), nodes, prefix
//! record frame × records          MessagePack {"Key": [key, versions]}
//! trailer frame                   MessagePack {"End": [records, checksum]}
//! ```
//!
//! Every frame is the RPC protocol's ([`crate::codec`]): a u32 length, the CRC32 of the
//! payload, the payload. `versions` is a [`VersionSet`] as it crosses the wire between nodes.
//! The trailer's `records` counts the record frames and its `checksum` is the CRC32 of all
//! their bytes in order, so a file cut at a frame boundary, or with a frame dropped or
//! repeated, is refused like one with a flipped bit. Nothing may follow the trailer. A reader
//! refuses a format version newer than its own by name ([`format::FORMAT_VERSION`]).

pub mod format;
pub mod load;
pub mod node;
mod progress;
pub mod save;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::version::VersionSet;

pub use format::{Damage, Header, Reader, Totals, Writer};
pub use load::{RestoreOptions, RestoreSummary, restore, verify};
pub use save::{BackupOptions, BackupSummary, backup};

/// One answer of `GET /admin/backup`: a node's copies of a segment's keys, in ring order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentPage {
    /// Every key in the page's range that the node stores, tombstones included (a merge must
    /// see a deletion to drop what it deleted).
    pub entries: Vec<(Bytes, VersionSet)>,
    /// Where the next page starts (exclusive): the last `(hash, key)` position read. `None`
    /// when the segment is done.
    pub next: Option<(u64, Bytes)>,
}

/// What `POST /admin/restore` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loaded {
    /// Keys merged into W or more of their homes.
    pub keys: u64,
}
