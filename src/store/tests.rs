use super::packed::Packer;
use std::sync::Arc;

use super::entries::Entries;
use super::*;

use crate::ring::{NodeId, Ring};

fn actor(node: &str) -> Actor {
    Actor {
        node: Arc::from(node),
        generation: 1,
    }
}

#[test]
fn write_then_get_and_merge_elsewhere() {
    let a = Store::new();
    let b = Store::new();
    let key = Bytes::from_static(b"k");
    let (ctx, set) = a.write(&key, &actor("n1"), None, Some(Bytes::from_static(b"v1")));
    assert!(!ctx.is_empty());
    assert!(b.merge(&key, &set));
    assert!(
        !b.merge(&key, &set),
        "merging the same versions twice changes nothing"
    );
    assert_eq!(a.get(&key), b.get(&key));
    assert_eq!(
        b.stats(),
        StoreStats {
            keys: 1,
            tombstones: 0,
            bytes: 3,
        }
    );

    let (_, set) = a.write(&key, &actor("n1"), Some(&ctx), None);
    b.merge(&key, &set);
    assert_eq!(
        b.stats(),
        StoreStats {
            keys: 1,
            tombstones: 1,
            bytes: 1,
        }
    );
    assert!(b.get(&Bytes::from_static(b"other")).is_none());
    let fp = set.fingerprint(&key);
    assert!(
        !b.remove_if(&key, fp ^ 1),
        "a stale fingerprint removes nothing"
    );
    assert!(b.remove_if(&key, fp));
    assert_eq!(b.stats(), StoreStats::default());
}

#[test]
fn concurrent_writers_on_many_keys() {
    let store = Arc::new(Store::new());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    let key = Bytes::from(format!("k{}", i % 100));
                    store.write(&key, &actor(&format!("n{t}")), None, Some(Bytes::new()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.stats().keys, 100);
}

fn ring() -> Ring {
    Ring::new(["a", "b", "c"].map(NodeId::from), 8)
}

/// Trees maintained incrementally equal trees rebuilt from scratch, and equal stores
/// have equal roots whatever order the writes arrived in.
#[test]
fn trees_follow_every_change() {
    let segs = ring().segments(3);
    let a = Store::new();
    let b = Store::new();
    a.set_segments(&segs, |_| true);
    let mut sets = Vec::new();
    for i in 0..500 {
        let key = Bytes::from(format!("key-{i}"));
        let (_, vs) = a.write(&key, &actor("n1"), None, Some(Bytes::from("v")));
        sets.push((key, vs));
    }
    // Delete a few, and remove a few outright.
    for (key, _) in sets.iter().step_by(7) {
        a.write(key, &actor("n1"), None, None);
    }
    for (key, _) in sets.iter().skip(3).step_by(11) {
        let fp = a.get(key).unwrap().fingerprint(key);
        assert!(a.remove_if(key, fp));
    }
    // b gets the same final state in reverse order, and builds its trees afterwards.
    for (key, _) in sets.iter().rev() {
        if let Some(vs) = a.get(key) {
            b.merge(key, &vs);
        }
    }
    b.set_segments(&segs, |_| true);
    for (id, seg) in segs.iter().enumerate() {
        let id = id as SegmentId;
        assert_eq!(a.root(seg, id), b.root(seg, id), "segment {id}");
        assert!(a.root(seg, id).is_some());
    }
    // Leaf listings find every key exactly once.
    let mut listed = 0;
    for (id, seg) in segs.iter().enumerate() {
        let tree_leaves = 1u32 << (4 * DEFAULT_DEPTH);
        for leaf in 0..tree_leaves {
            listed += a
                .leaf_keys(seg, id as SegmentId, leaf, Duration::ZERO)
                .len();
        }
    }
    assert_eq!(listed as u64, a.stats().keys);
    // And segment batches walk each segment's keys in order.
    let mut walked = 0;
    for seg in &segs {
        let mut after = None;
        loop {
            let batch = a.segment_batch(seg, after.as_ref(), 7);
            if batch.is_empty() {
                break;
            }
            walked += batch.len();
            after = Some(batch.last().unwrap().0.clone());
        }
    }
    assert_eq!(walked as u64, a.stats().keys);
}

/// A write after this store purged the key's tombstone must not reuse a counter: the
/// other replicas still holding the tombstone would discard it as already seen.
#[test]
fn a_write_after_a_purge_is_not_discarded_by_replicas_that_still_hold_the_tombstone() {
    let a = Store::new();
    let b = Store::new();
    let key = Bytes::from_static(b"k");
    for v in ["1", "2", "3"] {
        let (_, vs) = a.write(&key, &actor("n1"), None, Some(Bytes::from(v)));
        b.merge(&key, &vs);
    }
    let (_, tomb) = a.write(&key, &actor("n1"), None, None);
    b.merge(&key, &tomb);
    assert!(a.remove_if(&key, tomb.fingerprint(&key)), "a purges first");
    let (_, fresh) = a.write(&key, &actor("n1"), None, Some(Bytes::from("new")));
    assert!(b.merge(&key, &fresh), "b must accept the new write");
    let values: Vec<_> = b.get(&key).unwrap().live_values().cloned().collect();
    assert_eq!(values, vec![Bytes::from("new")]);
    assert_eq!(a.minted(), 5);
}

fn keys_of(page: &ListPage) -> Vec<&[u8]> {
    page.entries.iter().map(|e| e.key.as_ref()).collect()
}

/// Listing merges the 64 shards into key order, pages by cursor, and respects the prefix,
/// whatever the page size.
#[test]
fn list_walks_keys_in_order_by_pages() {
    let s = Store::new();
    let mut all: Vec<Bytes> = (0..1000)
        .map(|i| Bytes::from(format!("p/{:04}", (i * 7919) % 1000)))
        .collect();
    for k in &all {
        s.write(k, &actor("n1"), None, Some(Bytes::from_static(b"value")));
    }
    for k in ["o", "p", "q/1", "p0"] {
        s.write(&Bytes::from(k), &actor("n1"), None, Some(Bytes::new()));
    }
    let deleted = all[3].clone();
    s.write(&deleted, &actor("n1"), None, None); // tombstones are listed too
    all.sort();
    for limit in [1, 7, 64, 1000, 5000] {
        let mut seen: Vec<Bytes> = Vec::new();
        let mut after: Option<Bytes> = None;
        loop {
            let page = s.list(b"p/", after.as_deref(), limit);
            assert!(page.entries.len() <= limit);
            for e in &page.entries {
                let live = e.key != deleted;
                assert_eq!(e.live_until, if live { u64::MAX } else { 0 });
                assert_eq!(e.fingerprint, s.get(&e.key).unwrap().fingerprint(&e.key));
            }
            seen.extend(page.entries.iter().map(|e| e.key.clone()));
            if !page.more {
                break;
            }
            after = page.entries.last().map(|e| e.key.clone());
        }
        assert_eq!(seen, all, "limit {limit}");
    }
    // A cursor before the prefix starts at the prefix; one past it finds nothing.
    assert_eq!(keys_of(&s.list(b"p/", Some(b"a"), 1)), vec![b"p/0000"]);
    assert!(s.list(b"p/", Some(b"zz"), 10).entries.is_empty());
    assert_eq!(keys_of(&s.list(b"", None, 2)), vec![&b"o"[..], b"p"]);
    assert_eq!(keys_of(&s.list(b"q", None, 10)), vec![b"q/1"]);
}

/// Only kept segments get trees; a key in another segment is stored all the same, found
/// by a range lookup, and counted in no tree.
#[test]
fn only_kept_segments_get_trees() {
    let five = Ring::new(["a", "b", "c", "d", "e"].map(NodeId::from), 8);
    let segs = five.segments(3);
    let s = Store::new();
    s.set_segments(&segs, |seg| seg.homes.iter().any(|h| &**h == "a"));
    for i in 0..500 {
        let op = WriteOp {
            context: None,
            value: Some(Bytes::from_static(b"v")),
            meta: Meta::default().boxed(),
            condition: &Condition::None,
            now_ms: 0,
        };
        s.write_with(&Bytes::from(format!("k{i}")), &actor("n1"), op)
            .unwrap();
    }
    let (mut kept, mut other) = (0, 0);
    for (i, seg) in segs.iter().enumerate() {
        let held = !s.segment_batch(seg, None, 1).is_empty();
        match s.root(seg, i as SegmentId) {
            Some(root) => {
                assert!(seg.homes.iter().any(|h| &**h == "a"));
                assert_eq!(root != 0, held, "a kept tree counts its keys");
                kept += 1;
            }
            None => {
                assert!(!seg.homes.iter().any(|h| &**h == "a"));
                other += usize::from(held);
            }
        }
    }
    assert!(kept > 0 && kept < segs.len(), "{kept} of {}", segs.len());
    assert!(other > 0, "some keys lie in segments without a tree");
}

/// The sweep drops expired values (freeing their bytes) but keeps their versions as
/// tombstones with unchanged fingerprints and trees, and leaves later expiries alone.
#[test]
fn expire_due_drops_values_and_keeps_fingerprints() {
    let segs = ring().segments(3);
    let s = Store::new();
    s.set_segments(&segs, |_| true);
    let write = |key: &str, expires: Option<u64>| {
        let op = WriteOp {
            context: None,
            value: Some(Bytes::from_static(b"0123456789")),
            meta: Meta {
                content_type: None,
                expires_at: expires,
            }
            .boxed(),
            condition: &Condition::None,
            now_ms: 0,
        };
        s.write_with(&Bytes::from(key.to_string()), &actor("n1"), op)
            .unwrap()
            .1
    };
    let soon = write("soon", Some(1_000));
    write("later", Some(5_000));
    write("never", None);
    let roots: Vec<_> = (0..segs.len())
        .map(|i| s.root(&segs[i], i as SegmentId))
        .collect();
    let before = s.stats();
    let report = s.expire_due(999, 100);
    assert_eq!(report.processed, 0, "nothing is due yet");
    let report = s.expire_due(1_000, 100);
    assert_eq!(report.processed, 1);
    assert_eq!(report.freed, 10);
    assert_eq!(report.expired.len(), 1);
    let (key, after) = &report.expired[0];
    assert_eq!(key, "soon");
    assert!(after.is_deleted() && after.live(0).next().is_none());
    assert_eq!(after.fingerprint(key), soon.fingerprint(key));
    let roots_after: Vec<_> = (0..segs.len())
        .map(|i| s.root(&segs[i], i as SegmentId))
        .collect();
    assert_eq!(roots, roots_after, "trees unchanged: no repair traffic");
    assert_eq!(s.stats().bytes, before.bytes - 10);
    assert_eq!(s.stats().tombstones, 1);
    assert_eq!(s.expire_due(4_999, 100).processed, 0, "done once");
    assert_eq!(
        s.expire_due(u64::MAX, 100).expired.len(),
        1,
        "later expires"
    );
    // A condition is checked under the lock against what is stored.
    fn op(cond: &Condition) -> WriteOp<'_> {
        WriteOp {
            context: None,
            value: Some(Bytes::new()),
            meta: None,
            condition: cond,
            now_ms: 10_000,
        }
    }
    let key = Bytes::from_static(b"never");
    let current = s.get(&key).unwrap().context();
    assert_eq!(
        s.write_with(&key, &actor("n1"), op(&Condition::IfAbsent))
            .unwrap_err(),
        current
    );
    let soon = Bytes::from_static(b"soon");
    assert!(
        s.write_with(&soon, &actor("n1"), op(&Condition::IfAbsent))
            .is_ok(),
        "an expired value is absent"
    );
    let stale = Condition::IfMatch(current.clone());
    assert!(s.write_with(&key, &actor("n1"), op(&stale)).is_ok());
    assert!(s.write_with(&key, &actor("n1"), op(&stale)).is_err());
}

#[test]
fn a_snapshot_streams_every_key_once_in_chunks() {
    let store = Store::new();
    let actor = Actor {
        node: "n1".into(),
        generation: 1,
    };
    // Enough keys that every shard is read in several chunks.
    let n = SHARDS * SNAPSHOT_CHUNK * 2 + 7;
    for i in 0..n {
        let key = Bytes::from(format!("k{i}"));
        store.write(&key, &actor, None, Some(Bytes::from_static(b"v")));
    }
    let mut seen = std::collections::HashSet::new();
    for shard in 0..SHARDS {
        store
            .snapshot_shard(shard, &mut |r| {
                let Record::Key { key, versions } = r else {
                    panic!("a store snapshot holds keys only");
                };
                assert_eq!(versions.versions().len(), 1);
                assert!(seen.insert(key.clone()), "{key:?} twice");
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(seen.len(), n);
}

/// Tombstones age by tokio's clock: a paused runtime moves them past the grace at once.
#[tokio::test(start_paused = true)]
async fn old_tombstones_are_listed_after_the_grace() {
    let grace = Duration::from_secs(3600);
    let s = Store::new();
    let key = Bytes::from_static(b"gone");
    s.write(&key, &actor("n1"), None, Some(Bytes::from_static(b"v")));
    assert!(s.old_tombstones(Duration::ZERO, 10).is_empty());
    let (_, vs) = s.write(&key, &actor("n1"), None, None);
    let listed = vec![(key.clone(), vs.fingerprint(&key))];
    assert_eq!(s.old_tombstones(Duration::ZERO, 10), listed);
    tokio::time::advance(grace - Duration::from_millis(1)).await;
    assert!(s.old_tombstones(grace, 10).is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(s.old_tombstones(grace, 10), listed);
    // A new value clears the tombstone mark.
    s.write(&key, &actor("n1"), None, Some(Bytes::from_static(b"back")));
    assert!(s.old_tombstones(Duration::ZERO, 10).is_empty());
}

/// The sizes the memory figures in the module docs rest on.
#[test]
fn entries_and_index_keys_are_small() {
    assert_eq!(std::mem::size_of::<Entry>(), 16);
    assert_eq!(std::mem::size_of::<Key>(), 24);
}

/// What the store reads of an entry in place (key, summary, fingerprint, expiry) agrees
/// with its set, packed or not.
#[test]
fn entries_read_as_their_sets() {
    let mut packer = Packer::default();
    let packable = packed::tests::packable();
    assert!(packable.len() > 300);
    let unpackable = packed::tests::unpackable().into_iter();
    let samples = packable.into_iter().map(|(key, set)| (key, set, true));
    for (key, set, packs) in samples.chain(unpackable.map(|set| (b"k".to_vec(), set, false))) {
        assert_eq!(Key::new(&key).as_bytes(), &key[..]);
        let entry = Entry::new(&key, Cow::Borrowed(&set), &mut packer);
        assert_eq!(matches!(entry, Entry::Packed(_)), packs);
        assert_eq!(entry.key(), &key[..]);
        assert_eq!(entry.versions(&packer), set);
        assert_eq!(entry.summary(&packer), Summary::of(&key, &set));
        assert_eq!(entry.fingerprint(&packer), set.fingerprint(&key));
        assert_eq!(entry.live_until(), set.live_until());
    }
}

/// The store's merge, which decides the common cases on the packed form, agrees with
/// the version algebra on every pair of simulated states, and keeps siblings and large
/// values unpacked only as long as they need it.
#[test]
fn store_merges_agree_with_the_algebra() {
    let actors = [actor("n1"), actor("n2"), actor("n3")];
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut states: Vec<VersionSet> = vec![VersionSet::new()];
    let mut contexts: Vec<Context> = vec![Context::new()];
    for step in 0..300 {
        let mut set = states[rng.random_range(0..states.len())].clone();
        let ctx = contexts[rng.random_range(0..contexts.len())].clone();
        let who = &actors[rng.random_range(0..actors.len())];
        let value = match step % 5 {
            0 => None,
            1 => Some(Bytes::from(vec![1u8; PACKED_VALUE_MAX + 1])),
            _ => Some(Bytes::from(format!("v{step}"))),
        };
        let ctx = if rng.random_bool(0.5) {
            None
        } else {
            Some(&ctx)
        };
        contexts.push(set.write(who, ctx, value));
        states.push(set);
    }
    let key = Bytes::from_static(b"key");
    for x in states.iter().step_by(3) {
        for y in states.iter().step_by(4) {
            let store = Store::new();
            store.merge(&key, x);
            let mut want = x.clone();
            let changed = want.merge(y);
            // Merging an empty set stores nothing, so then `y` alone counts.
            let expected = if x.is_empty() { !y.is_empty() } else { changed };
            assert_eq!(store.merge_owned(&key, y.clone()), expected);
            let got = store.get(&key);
            assert_eq!(got.clone().unwrap_or_default(), want);
            let shard = store.shard(key_hash(&key));
            if let Some(entry) = shard.engine.entries.get(key_hash(&key), &key) {
                let packable = want.len() == 1
                    && want.versions()[0]
                        .value
                        .as_ref()
                        .is_none_or(|v| v.len() <= PACKED_VALUE_MAX);
                assert_eq!(matches!(entry, Entry::Packed(_)), packable, "{want:?}");
            }
        }
    }
}

/// Keys whose hashes collide share a slot, and every operation still finds each of them,
/// in `(hash, key)` order.
#[test]
fn colliding_hashes_share_a_slot() {
    let mut packer = Packer::default();
    let mut entries = Entries::default();
    let set = |v: &str| {
        let mut s = VersionSet::new();
        s.write(&actor("n1"), None, Some(Bytes::from(v.to_string())));
        s
    };
    let mut siblings = set("s1");
    siblings.merge(&{
        let mut s = VersionSet::new();
        s.write(&actor("n2"), None, None);
        s
    });
    let mut insert = |entries: &mut Entries, hash, key: &str, s: &VersionSet| {
        let entry = Entry::new(key.as_bytes(), Cow::Borrowed(s), &mut packer);
        entries.insert(hash, entry);
    };
    insert(&mut entries, 7, "m", &set("m"));
    insert(&mut entries, 8, "a", &set("a"));
    insert(&mut entries, 7, "z", &siblings);
    insert(&mut entries, 7, "b", &set("b"));
    insert(&mut entries, 6, "q", &set("q"));
    assert_eq!(entries.len(), 5);
    assert_eq!(entries.map.len(), 3);
    let order = |entries: &Entries| -> Vec<(u64, Vec<u8>)> {
        entries
            .range(..)
            .map(|(h, e)| (h, e.key().to_vec()))
            .collect()
    };
    let want: Vec<(u64, Vec<u8>)> = [(6, "q"), (7, "b"), (7, "m"), (7, "z"), (8, "a")]
        .map(|(h, k)| (h, k.as_bytes().to_vec()))
        .to_vec();
    assert_eq!(order(&entries), want);
    assert!(
        entries
            .get(7, b"z")
            .is_some_and(|e| matches!(e, Entry::Versions(_)))
    );
    assert!(entries.get(7, b"a").is_none() && entries.get(8, b"z").is_none());
    let m = entries.get_mut(7, b"m").expect("held");
    assert!(
        m.merge(b"m", Cow::Owned(siblings.clone()), &mut packer)
            .is_some()
    );
    let mut want = set("m");
    want.merge(&siblings);
    assert_eq!(entries.get(7, b"m").expect("held").versions(&packer), want);
    assert!(entries.remove(7, b"x").is_none());
    assert!(entries.remove(7, b"m").is_some());
    assert!(entries.remove(7, b"z").is_some());
    assert!(
        matches!(entries.map.get(&7), Some(Entry::Packed(_))),
        "back to one key"
    );
    assert_eq!(entries.get(7, b"b").map(Entry::key), Some(&b"b"[..]));
    assert!(entries.remove(7, b"b").is_some());
    assert!(!entries.map.contains_key(&7));
    assert_eq!(entries.len(), 2);
    assert_eq!(order(&entries).len(), 2);
}

/// Siblings are kept unpacked while they last and packed again once resolved; the
/// writes hand back the caller's value, not a copy shared with the store.
#[test]
fn siblings_unpack_and_pack_again() {
    let s = Store::new();
    let key = Bytes::from_static(b"k");
    let packed = |s: &Store| {
        let shard = s.shard(key_hash(&key));
        matches!(
            shard.engine.entries.get(key_hash(&key), &key),
            Some(Entry::Packed(_))
        )
    };
    let (c1, _) = s.write(&key, &actor("n1"), None, Some(Bytes::from_static(b"1")));
    assert!(packed(&s));
    s.write(
        &key,
        &actor("n1"),
        Some(&c1),
        Some(Bytes::from_static(b"2")),
    );
    let (_, both) = s.write(
        &key,
        &actor("n1"),
        Some(&c1),
        Some(Bytes::from_static(b"3")),
    );
    assert_eq!(both.len(), 2);
    assert!(!packed(&s));
    assert_eq!(s.get(&key), Some(both.clone()));
    let value = Bytes::from(vec![5u8; 64]);
    let ptr = value.as_ptr();
    let (_, one) = s.write(&key, &actor("n1"), Some(&both.context()), Some(value));
    assert_eq!(one.len(), 1);
    assert_eq!(
        one.versions()[0].value.as_ref().map(|v| v.as_ptr()),
        Some(ptr)
    );
    assert!(packed(&s));
    assert_eq!(s.get(&key), Some(one));
}
