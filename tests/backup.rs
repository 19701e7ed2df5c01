//! `ringkv backup` and `ringkv restore` between real rings of `ringkv serve` processes: a
//! five-node ring of 100k keys (binary keys, values up to 64 KiB, content types, siblings,
//! TTLs, deletions) is backed up while four clients keep writing, and restored into a fresh
//! three-node ring with N = 2. The file format's refusals, through the CLI.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use ringkv::Client;
use ringkv::backup::{Header, Reader, Writer};
use ringkv::client::{Context, PutOptions, Read, WriteOptions};
use ringkv::version::{Actor, Meta, VersionSet};

use common::TempDir;
use common::process::{ALONE, ProcessCluster, ProcessNode, ringkv};

/// Keys written before the backup.
const KEYS: u32 = 100_000;
/// Of those, keys with two or three siblings.
const SIBLING_KEYS: u32 = 500;
/// Of those, keys deleted before the backup.
const DELETED: u32 = 1_000;
/// Requests in flight while the ring is filled and read.
const CONCURRENCY: usize = 32;

fn key(i: u32) -> Vec<u8> {
    // Binary: a 0xff byte, a zero byte and one that varies.
    let mut k = format!("bk/{i:06}/").into_bytes();
    k.extend_from_slice(&[0xff, (i % 251) as u8, 0x00]);
    k
}

/// Every 1,000th value is 64 KiB; the rest 1 to 300 bytes.
fn value(i: u32) -> Bytes {
    let len = if i % 1000 == 7 {
        64 * 1024
    } else {
        (i as usize * 37) % 300 + 1
    };
    Bytes::from(
        (0..len)
            .map(|j| (i as usize + j) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn content_type(i: u32) -> Option<String> {
    match i % 3 {
        0 => Some("text/plain".into()),
        1 => Some(format!("application/x-test-{}", i % 7)),
        _ => None,
    }
}

/// Keys `0..SIBLING_KEYS` get siblings, the next `DELETED` are deleted, and every 100th
/// key after those has a TTL of an hour.
fn is_sibling(i: u32) -> bool {
    i < SIBLING_KEYS
}
fn is_deleted(i: u32) -> bool {
    (SIBLING_KEYS..SIBLING_KEYS + DELETED).contains(&i)
}
fn has_ttl(i: u32) -> bool {
    i >= SIBLING_KEYS + DELETED && i % 100 == 3
}

async fn ring(n: usize, args: &[&str]) -> ProcessCluster {
    let mut nodes: Vec<ProcessNode> = Vec::new();
    for i in 0..n {
        let seeds: Vec<SocketAddr> = nodes.first().map(|n| n.gossip).into_iter().collect();
        nodes.push(ProcessNode::start_with(&format!("n{}", i + 1), &seeds, args).await);
    }
    let c = ProcessCluster {
        nodes,
        http: common::Http::new(),
    };
    let all: Vec<usize> = (0..n).collect();
    c.converge(&all, &[], Duration::from_secs(20)).await;
    c
}

fn client(c: &ProcessCluster) -> Client {
    Client::builder(c.nodes.iter().map(|n| n.url()))
        .build()
        .expect("client")
}

/// What a key holds: its live values with their content types, sorted, and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    values: BTreeSet<(Vec<u8>, String)>,
    expires_at: Option<SystemTime>,
}

fn seen(read: &Read) -> Seen {
    match read {
        Read::NotFound { .. } => Seen {
            values: BTreeSet::new(),
            expires_at: None,
        },
        Read::Value {
            value,
            content_type,
            expires_at,
            ..
        } => Seen {
            values: [(value.to_vec(), content_type.clone())].into(),
            expires_at: *expires_at,
        },
        Read::Siblings {
            values,
            content_types,
            expires_at,
            ..
        } => Seen {
            values: values
                .iter()
                .zip(content_types)
                .map(|(v, ct)| (v.to_vec(), ct.clone()))
                .collect(),
            expires_at: *expires_at,
        },
    }
}

fn context(read: &Read) -> Context {
    match read {
        Read::Value { context, .. } | Read::Siblings { context, .. } => context.clone(),
        Read::NotFound { context } => context.clone().expect("a context"),
    }
}

fn opts(i: u32, ctx: Option<Context>) -> PutOptions {
    PutOptions {
        write: WriteOptions {
            context: ctx,
            ..WriteOptions::default()
        },
        ttl: has_ttl(i).then_some(Duration::from_secs(3600)),
        content_type: content_type(i),
        ..PutOptions::new()
    }
}

/// Fills the ring; returns, for the sibling keys that get a third sibling, the context read
/// when only the first two existed.
async fn fill(c: &Client) -> Vec<(u32, Context)> {
    futures_util::stream::iter(0..KEYS)
        .map(|i| async move {
            let k = key(i);
            let first = c.put_opts(&k, value(i), &opts(i, None)).await.expect("put");
            if is_deleted(i) {
                c.delete(&k).await.expect("delete");
            }
            if !is_sibling(i) {
                return None;
            }
            // Two writers from the same context: two siblings.
            for v in [b"left".as_slice(), b"right"] {
                c.put_opts(&k, Bytes::from(v), &opts(i, Some(first.clone())))
                    .await
                    .expect("sibling");
            }
            if i % 2 == 1 {
                return None;
            }
            // A third, concurrent with both: what a client read before it covers two.
            let two = c.get(&k).await.expect("get");
            assert_eq!(two.values().len(), 2, "key {i}");
            c.put_opts(&k, Bytes::from_static(b"third"), &opts(i, Some(first)))
                .await
                .expect("third sibling");
            Some((i, context(&two)))
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

async fn read_all(c: &Client) -> Vec<Seen> {
    futures_util::stream::iter(0..KEYS)
        .map(|i| async move { seen(&c.get(key(i)).await.expect("get")) })
        .buffered(CONCURRENCY)
        .collect()
        .await
}

/// A key's live values, sorted.
async fn sorted_values(c: &Client, key: &[u8]) -> Vec<Vec<u8>> {
    let mut values: Vec<Vec<u8>> = c
        .get(key)
        .await
        .expect("get")
        .values()
        .iter()
        .map(|v| v.to_vec())
        .collect();
    values.sort();
    values
}

fn cli(args: &[&str]) -> Output {
    let out = ringkv().args(args).output().expect("run ringkv");
    eprintln!(
        "$ ringkv {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn records(path: &Path) -> Vec<(Bytes, VersionSet)> {
    let file = std::io::BufReader::new(std::fs::File::open(path).expect("open"));
    let (mut reader, _) = Reader::open(file).expect("a good file");
    let mut out = Vec::new();
    while let Some(r) = reader.next_record().expect("a good record") {
        out.push(r);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_ring_restores_into_another_shape_with_siblings_and_contexts() {
    let dir = TempDir::new("backup");
    let source = ring(5, &[]).await;
    let src = client(&source);
    let started = Instant::now();
    let thirds = fill(&src).await;
    println!("filled {KEYS} keys in {:?}", started.elapsed());
    // The state at the backup's start, as the source reads it.
    let before = read_all(&src).await;
    for (i, s) in before.iter().enumerate() {
        let i = i as u32;
        let want = if is_deleted(i) {
            0
        } else if is_sibling(i) {
            2 + usize::from(i.is_multiple_of(2))
        } else {
            1
        };
        assert_eq!(s.values.len(), want, "key {i} before the backup: {s:?}");
        assert_eq!(
            s.expires_at.is_some(),
            has_ttl(i) && !is_deleted(i),
            "key {i}"
        );
    }

    // Four clients keep writing keys of their own while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (c, stop, acked) = (src.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("live/{w}/{}", n % 500);
                    if c.put(&k, format!("{n}")).await.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let file = dir.join("ring.rkv");
    let file_s = file.to_str().unwrap();
    let src_url = source.nodes[0].url();
    let started = Instant::now();
    let out = cli(&["backup", file_s, "--node", &src_url]);
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(out.status.success(), "backup failed");
    assert!(acked.load(Ordering::Relaxed) > 0, "the writers wrote");
    let size = std::fs::metadata(&file).unwrap().len();
    let backed = records(&file);
    let live_keys = KEYS - DELETED;
    assert!(backed.len() as u32 >= live_keys, "{} records", backed.len());
    println!(
        "backup: {} records ({} of them the writers'), {size} bytes, in {took:?} while 4 \
         clients wrote ({} writes acknowledged)",
        backed.len(),
        backed.len() as u32 - live_keys,
        acked.load(Ordering::Relaxed)
    );
    // The progress line named keys, bytes, a rate and an ETA or a time.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keys/s") && stderr.contains("MiB"),
        "{stderr}"
    );

    // A dry run verifies and counts.
    let out = cli(&["restore", "--dry-run", "--json", file_s]);
    assert!(out.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(summary["keys"], backed.len() as u64);
    assert_eq!(summary["replicas"], 3);
    assert_eq!(summary["nodes"].as_array().unwrap().len(), 5);
    assert_eq!(summary["cluster_id"], source.nodes[0].cluster_id.as_str());

    // Restore into a fresh ring of another shape.
    let target = ring(3, &["--replicas", "2"]).await;
    let dst = client(&target);
    let dst_url = target.nodes[1].url();
    let started = Instant::now();
    let out = cli(&["restore", file_s, "--node", &dst_url]);
    assert!(out.status.success(), "restore failed");
    println!(
        "restore: {} records in {:?}",
        backed.len(),
        started.elapsed()
    );

    // Every key present at the backup's start reads back as it was; no deleted key is back.
    let after = read_all(&dst).await;
    for (i, (was, is)) in before.iter().zip(&after).enumerate() {
        assert_eq!(was, is, "key {i}");
    }

    // A second restore changes nothing: the target's backups before and after are equal.
    let first_copy = dir.join("target-1.rkv");
    let second_copy = dir.join("target-2.rkv");
    assert!(
        cli(&["backup", first_copy.to_str().unwrap(), "--node", &dst_url])
            .status
            .success()
    );
    assert!(
        cli(&["restore", file_s, "--node", &dst_url, "--quiet"])
            .status
            .success()
    );
    assert!(
        cli(&["backup", second_copy.to_str().unwrap(), "--node", &dst_url])
            .status
            .success()
    );
    let (one, two) = (records(&first_copy), records(&second_copy));
    assert_eq!(one.len(), backed.len());
    assert!(one == two, "the second restore changed the ring");

    // A context read before the backup supersedes exactly the siblings it covered: of
    // left, right and third, the write replaces left and right, and third stays.
    assert!(thirds.len() >= 100, "{}", thirds.len());
    for (i, ctx) in &thirds {
        let k = key(*i);
        let opts = PutOptions {
            write: WriteOptions {
                context: Some(ctx.clone()),
                ..WriteOptions::default()
            },
            ..PutOptions::new()
        };
        dst.put_opts(&k, Bytes::from_static(b"resolved"), &opts)
            .await
            .expect("put with the old context");
        assert_eq!(
            sorted_values(&dst, &k).await,
            [&b"resolved"[..], b"third"],
            "key {i}"
        );
    }
    // Restoring into the live ring again merges by causality: the newer writes win over the
    // backed-up versions they superseded, and nothing else moves.
    assert!(
        cli(&["restore", file_s, "--node", &dst_url, "--quiet"])
            .status
            .success()
    );
    for (i, _) in &thirds {
        assert_eq!(
            sorted_values(&dst, &key(*i)).await,
            [&b"resolved"[..], b"third"],
            "key {i}"
        );
    }
}

/// A small file written with the library, for the refusals.
fn small_file(path: &Path, expired: bool) -> Vec<u8> {
    let header = Header {
        cluster_id: "elsewhere".into(),
        replicas: 3,
        created_ms: 1_700_000_000_000,
        ringkv: "test".into(),
        nodes: vec!["a".into()],
        prefix: None,
    };
    let mut w = Writer::new(Vec::new(), &header).unwrap();
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for i in 0..10u64 {
        let mut vs = VersionSet::new();
        let expires_at = (expired && i == 0).then_some(now_ms - 1000);
        vs.write_above(
            &Actor::new("old-node", 42),
            None,
            Some(Bytes::from(format!("v{i}"))),
            Meta {
                content_type: None,
                expires_at,
            }
            .boxed(),
            0,
        );
        w.record(&Bytes::from(format!("fmt/{i}")), &vs).unwrap();
    }
    let (bytes, _) = w.finish().unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_truncated_and_newer_files_are_refused_before_any_write() {
    let dir = TempDir::new("backup-format");
    let target = ring(1, &ALONE).await;
    let url = target.nodes[0].url();
    let c = client(&target);
    let good = dir.join("good.rkv");
    let bytes = small_file(&good, true);

    let out = cli(&["restore", "--dry-run", good.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10 keys"), "{text}");
    assert!(text.contains("1 expired"), "{text}");

    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    cases.push(("truncated", bytes[..bytes.len() - 3].to_vec(), "truncated"));
    let mut flipped = bytes.clone();
    let mid = bytes.len() / 2;
    flipped[mid] ^= 0x01;
    cases.push(("flipped", flipped, "checksum"));
    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&2u32.to_be_bytes());
    cases.push(("newer", newer, "newer"));
    for (name, bad, says) in cases {
        let path = dir.join(&format!("{name}.rkv"));
        std::fs::write(&path, &bad).unwrap();
        for dry in [true, false] {
            let mut args = vec!["restore", path.to_str().unwrap(), "--node", &url];
            if dry {
                args.push("--dry-run");
            }
            let out = cli(&args);
            assert_eq!(out.status.code(), Some(2), "{name}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("at byte") && err.contains(says),
                "{name}: {err}"
            );
        }
        // Verified before any write: not even the records before the damage are there.
        assert!(c.get("fmt/5").await.unwrap().values().is_empty(), "{name}");
    }

    // The good file: the expired key is skipped and counted, the rest written, and the
    // versions keep their writer from the other ring.
    let out = cli(&["restore", good.to_str().unwrap(), "--node", &url, "--json"]);
    assert!(out.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary["restored"].as_u64(), summary["expired"].as_u64()),
        (Some(9), Some(1))
    );
    assert!(c.get("fmt/0").await.unwrap().values().is_empty());
    for i in 1..10 {
        assert_eq!(
            c.get(format!("fmt/{i}")).await.unwrap().values(),
            [Bytes::from(format!("v{i}"))]
        );
    }

    // --force writes what comes before the damage, and still exits 2.
    let forced = dir.join("forced.rkv");
    let mut cut = small_file(&forced, false);
    let keep = cut.len() - 40;
    cut.truncate(keep);
    std::fs::write(&forced, &cut).unwrap();
    let out = cli(&[
        "restore",
        forced.to_str().unwrap(),
        "--node",
        &url,
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(c.get("fmt/0").await.unwrap().values() == [Bytes::from("v0")]);

    // Bad input to the node itself: a 400, not a panic.
    let resp = target
        .http
        .send(
            hyper::Method::POST,
            &format!("{url}/admin/restore"),
            "garbage",
            &[],
        )
        .await;
    assert_eq!(resp.status, hyper::StatusCode::BAD_REQUEST);
    let resp = target
        .http
        .get(&format!("{url}/admin/backup?start=5&end=1"))
        .await;
    assert_eq!(resp.status, hyper::StatusCode::BAD_REQUEST);
}

/// A segment whose only home is down fails the backup, naming its range, and leaves no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_without_a_live_home_fails_the_backup_by_name() {
    let dir = TempDir::new("backup-down");
    let mut c = ring(2, &ALONE).await;
    let cl = client(&c);
    for i in 0..50 {
        cl.put(format!("k{i}"), "v").await.expect("put");
    }
    c.nodes[1].kill();
    let file = dir.join("down.rkv");
    let out = cli(&[
        "backup",
        file.to_str().unwrap(),
        "--node",
        &c.nodes[0].url(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no home replica answered") && err.contains("hashes ("),
        "{err}"
    );
    assert!(!file.exists(), "a failed backup leaves no file");
    assert!(!dir.join("down.rkv.partial").exists());
}
