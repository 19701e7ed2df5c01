//! Micro-benchmarks of the pure parts on a write's and a read's path: ring lookup, the
//! version algebra, contexts, RPC frames, the Merkle update and the store write.
//!
//! `cargo bench --bench micro` takes about a minute; `cargo bench --bench micro -- version/`
//! runs one family.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ringkv::codec::{FrameCodec, decode_payload, encode};
use ringkv::merkle::{DEFAULT_DEPTH, MerkleTree};
use ringkv::ring::{DEFAULT_VNODES, NodeId, Ring, key_hash};
use ringkv::rpc::{Message, Request};
use ringkv::store::Store;
use ringkv::version::{Actor, Context, VersionSet};
use tokio_util::codec::Decoder;

const VALUE_BYTES: usize = 100;
const KEYS: usize = 10_000;

fn value(tag: u8) -> Option<Bytes> {
    Some(Bytes::from(vec![tag; VALUE_BYTES]))
}

fn keys() -> Vec<Bytes> {
    (0..KEYS)
        .map(|i| Bytes::from(format!("bench-{i:05}")))
        .collect()
}

fn five_node_ring() -> Ring {
    let ids: Vec<NodeId> = (1..=5).map(|i| NodeId::from(format!("n{i}"))).collect();
    Ring::new(ids, DEFAULT_VNODES)
}

/// Replica states of one key, as two replicas hold them.
struct Replicas {
    /// `a` holds v1; `b` holds v2, which supersedes v1.
    one: (VersionSet, VersionSet),
    /// `a` holds siblings {x by n1, y by n2}; `b` holds {x2, y}, where x2 was written by n1
    /// with the context of x only, so it supersedes x and stays concurrent with y.
    two: (VersionSet, VersionSet),
}

fn replicas() -> Replicas {
    let (n1, n2) = (Actor::new("n1", 1), Actor::new("n2", 1));

    let mut a1 = VersionSet::new();
    a1.write(&n1, None, value(1));
    let mut b1 = a1.clone();
    b1.write(&n1, None, value(2));

    let mut x = VersionSet::new();
    let x_ctx = x.write(&n1, None, value(1));
    let mut a2 = x.clone();
    let mut y = VersionSet::new();
    y.write(&n2, None, value(2));
    a2.merge(&y);
    assert_eq!(a2.len(), 2);
    let mut b2 = a2.clone();
    b2.write(&n1, Some(&x_ctx), value(3));
    assert_eq!(b2.len(), 2);

    Replicas {
        one: (a1, b1),
        two: (a2, b2),
    }
}

fn bench_ring(c: &mut Criterion) {
    let ring = five_node_ring();
    let keys = keys();
    let mut g = c.benchmark_group("ring");
    // n=3: a key's home replicas; n=5: the whole clockwise walk, which the coordinator takes on
    // every request to find sloppy-quorum fallbacks.
    for n in [3, 5] {
        let mut i = 0;
        g.bench_function(format!("preference_list/n={n}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                ring.preference_list(black_box(&keys[i]), n)
            })
        });
    }
    g.finish();
}

fn bench_version(c: &mut Criterion) {
    let r = replicas();
    let mut g = c.benchmark_group("version");
    for (name, (a, b)) in [("1_version", &r.one), ("2_siblings", &r.two)] {
        g.bench_function(format!("merge/{name}"), |bench| {
            bench.iter_batched(
                || a.clone(),
                |mut a| {
                    a.merge(black_box(b));
                    a
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("merge/equal", |bench| {
        let (a, b) = (&r.two.0, r.two.0.clone());
        bench.iter_batched(
            || a.clone(),
            |mut a| {
                a.merge(black_box(&b));
                a
            },
            BatchSize::SmallInput,
        )
    });

    let n1 = Actor::new("n1", 1);
    g.bench_function("write/blind", |bench| {
        bench.iter_batched(
            || r.one.1.clone(),
            |mut set| {
                set.write(&n1, None, value(9));
                set
            },
            BatchSize::SmallInput,
        )
    });
    let read = r.two.1.context();
    g.bench_function("write/resolve_2_siblings", |bench| {
        bench.iter_batched(
            || r.two.1.clone(),
            |mut set| {
                set.write(&n1, Some(black_box(&read)), value(9));
                set
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("fingerprint/2_siblings", |bench| {
        bench.iter(|| black_box(&r.two.1).fingerprint(b"bench-00001"))
    });
    g.finish();

    let (ca, cb) = (r.two.0.context(), r.two.1.context());
    let encoded = cb.encode();
    let mut g = c.benchmark_group("context");
    g.bench_function("encode", |bench| bench.iter(|| black_box(&cb).encode()));
    g.bench_function("decode", |bench| {
        bench.iter(|| Context::decode(black_box(&encoded)).expect("valid context"))
    });
    g.bench_function("le", |bench| {
        bench.iter(|| black_box(&ca).le(black_box(&cb)))
    });
    g.bench_function("union", |bench| {
        bench.iter(|| black_box(&ca).union(black_box(&cb)))
    });
    g.finish();
}

fn bench_frame(c: &mut Criterion) {
    let msg = Message::Request {
        id: 42,
        body: Request::Replicate {
            key: Bytes::from_static(b"bench-00001"),
            versions: replicas().one.1,
            hint_for: None,
        },
        trace: None,
    };
    let mut frame = BytesMut::new();
    encode(&msg, &mut frame).expect("encodes");
    let max_payload = 1024 * 1024;

    let mut g = c.benchmark_group("frame");
    let mut buf = BytesMut::with_capacity(1024);
    g.bench_function("encode/replicate_100B", |b| {
        b.iter(|| {
            buf.clear();
            encode(black_box(&msg), &mut buf).expect("encodes");
        })
    });
    g.bench_function("decode/replicate_100B", |b| {
        b.iter_batched(
            || frame.clone(),
            |mut src| {
                let payload = FrameCodec::new(max_payload)
                    .decode(&mut src)
                    .expect("valid frame")
                    .expect("whole frame");
                decode_payload::<Message>(&payload).expect("decodes")
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_merkle_and_store(c: &mut Criterion) {
    let hashes: Vec<u64> = keys().iter().map(|k| key_hash(k)).collect();
    let mut g = c.benchmark_group("merkle");
    let mut tree = MerkleTree::new(0, 0, DEFAULT_DEPTH);
    let mut i = 0;
    g.bench_function("update", |b| {
        b.iter(|| {
            i = (i + 1) % hashes.len();
            let h = hashes[i];
            tree.update(black_box(h), h, h.rotate_left(1))
        })
    });
    g.finish();

    // A store with the Merkle trees of a five-node ring, as on a running node; the first pass
    // inserts each key, later ones overwrite it (one version per key throughout).
    let store = Store::new();
    store.set_segments(&five_node_ring().segments(3), |_| true);
    let keys = keys();
    let n1 = Actor::new("n1", 1);
    let v = value(7);
    let mut i = 0;
    let mut g = c.benchmark_group("store");
    g.bench_function("write/blind_100B", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            store.write(black_box(&keys[i]), &n1, None, v.clone())
        })
    });
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = bench_ring, bench_version, bench_frame, bench_merkle_and_store
}
criterion_main!(micro);
