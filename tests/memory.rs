//! What the store costs per key and replica, beyond the key and value bytes themselves.
//!
//! One million keys like `key00000001` with 100-byte values are stored the two ways a replica
//! receives them: written by this node as coordinator ([`Store::write`], the value a private
//! copy of the request body, as the HTTP layer makes for small bodies), and merged as a
//! replica ([`Store::merge_owned`] of a set minted elsewhere, framed and decoded exactly as
//! the RPC layer does). Then every key is read once ([`Store::get`]), since a read must not
//! make a key costlier to keep.
//!
//! Heap growth is measured two ways: bytes in use according to the allocator (jemalloc's
//! `stats.allocated`, size classes included; glibc's `mallinfo2` in a build without the
//! `jemalloc` feature, malloc's headers and rounding included), and the process's resident set
//! (`/proc/self/statm`), which also counts free heap the allocator keeps. The Merkle trees are
//! built before the first measurement: their size depends on the ring, not on the keys.
//!
//! The figure depends on B-tree fill more than on scale: nodes are about 70% full under
//! random inserts (the hash-ordered map) and 55% under ascending ones (the key-order index
//! here, since the keys are written in order; random keys would save about 10 bytes per
//! key). A debug build stores 100,000 keys instead of a million to stay fast, which moved
//! the figure by under a byte when measured. `cargo test --release --test memory --
//! --nocapture` prints both measurements for both paths.

use bytes::{Bytes, BytesMut};
use ringkv::codec::{FrameCodec, decode_payload, encode};
use ringkv::ring::{DEFAULT_VNODES, NodeId, Ring};
use ringkv::rpc::{Message, Request};
use ringkv::store::Store;
use ringkv::version::{Actor, VersionSet};
use tokio_util::codec::Decoder;

/// The target: bytes per key and replica beyond the key and value bytes.
const MAX_OVERHEAD: f64 = 200.0;

const VALUE_BYTES: usize = 100;

fn key_count() -> usize {
    if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    }
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key{i:08}"))
}

fn value(i: usize) -> Bytes {
    // A private copy, as the HTTP layer makes of a small request body.
    let mut v = vec![b'v'; VALUE_BYTES];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Bytes::copy_from_slice(&v)
}

/// Heap and resident bytes of this process.
#[derive(Clone, Copy)]
struct Usage {
    /// Bytes in use according to malloc (0 where unknown).
    heap: u64,
    /// Resident set size.
    rss: u64,
}

fn usage() -> Usage {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Usage {
        heap: heap_in_use(),
        rss: pages * page,
    }
}

/// Bytes in use according to the allocator: jemalloc's `stats.allocated` (the process's
/// allocator, and what `--max-memory` measures), else glibc's `mallinfo2`.
fn heap_in_use() -> u64 {
    if let Some(bytes) = ringkv::heap::allocated() {
        return bytes;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return (info.uordblks + info.hblkhd) as u64;
    #[allow(unreachable_code)]
    0
}

/// Gives free heap back to the OS, so the next RSS reading starts from what is in use.
fn trim() {
    ringkv::heap::release_free_memory();
}

/// A store as a node holds it: with the Merkle trees of its ring.
fn store() -> Store {
    let ids: Vec<NodeId> = (1..=5).map(|i| NodeId::from(format!("n{i}"))).collect();
    let store = Store::new();
    store.set_segments(&Ring::new(ids, DEFAULT_VNODES).segments(3), |_| true);
    store
}

/// Per-key overhead of `store` growing from `before` to now, for `n` keys.
struct Overhead {
    heap: f64,
    rss: f64,
}

fn overhead(before: Usage, n: usize) -> Overhead {
    let after = usage();
    let payload = (key(0).len() + VALUE_BYTES) as f64;
    let per_key = |a: u64, b: u64| a.saturating_sub(b) as f64 / n as f64 - payload;
    Overhead {
        heap: per_key(after.heap, before.heap),
        rss: per_key(after.rss, before.rss),
    }
}

/// Fills a fresh store by `fill`, reads every key, and returns the overhead after the fill
/// and after the reads.
fn measure(name: &str, fill: impl Fn(&Store, usize)) -> (Overhead, Overhead) {
    let n = key_count();
    trim();
    let before = usage();
    let store = store();
    // The trees are per ring, not per key.
    let before = Usage {
        heap: before.heap.max(usage().heap),
        rss: before.rss.max(usage().rss),
    };
    let started = std::time::Instant::now();
    for i in 0..n {
        fill(&store, i);
    }
    let filled = started.elapsed();
    let written = overhead(before, n);
    for i in 0..n {
        assert!(store.get(&key(i)).is_some());
    }
    let read = overhead(before, n);
    assert_eq!(store.stats().keys, n as u64);
    println!(
        "{name:>13}: {n} keys in {filled:.2?}; bytes per key beyond key+value: \
         heap {:.1}, rss {:.1}; after reading every key: heap {:.1}, rss {:.1}",
        written.heap, written.rss, read.heap, read.rss
    );
    drop(store);
    trim();
    (written, read)
}

/// One test, so that nothing else allocates in this process meanwhile.
#[test]
fn store_overhead_per_key_is_bounded() {
    let actor = Actor::new("n1", 1_700_000_000_000);

    let coordinated = measure("write", |store, i| {
        store.write(&key(i), &actor, None, Some(value(i)));
    });

    // What a replica receives: a set minted by another node (whose counters run over all of
    // its keys), framed and decoded like every RPC.
    let replicated = measure("merge_owned", |store, i| {
        let mut versions = VersionSet::new();
        versions.write_above(&actor, None, Some(value(i)), None, i as u64);
        let msg = Message::Request {
            id: i as u64,
            body: Request::Replicate {
                key: key(i),
                versions,
                hint_for: None,
            },
            trace: None,
        };
        let mut buf = BytesMut::new();
        encode(&msg, &mut buf).expect("encodes");
        let frame = FrameCodec::new(1 << 20)
            .decode(&mut buf)
            .expect("valid")
            .expect("whole");
        match decode_payload::<Message>(&frame).expect("decodes") {
            Message::Request {
                body: Request::Replicate { key, versions, .. },
                ..
            } => {
                store.merge_owned(&key, versions);
            }
            other => panic!("unexpected {other:?}"),
        }
    });

    if heap_in_use() == 0 {
        eprintln!("no malloc statistics here: only the resident set is checked");
    }
    for (name, o) in [
        ("write", &coordinated.0),
        ("write, read", &coordinated.1),
        ("merge_owned", &replicated.0),
        ("merge_owned, read", &replicated.1),
    ] {
        let measured = if o.heap > 0.0 { o.heap } else { o.rss };
        assert!(
            measured <= MAX_OVERHEAD,
            "{name}: {measured:.1} bytes per key beyond key and value, over {MAX_OVERHEAD}"
        );
    }
}
