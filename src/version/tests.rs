use super::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

fn actor(node: &str, generation: u64) -> Actor {
    Actor::new(node, generation)
}

fn dot(a: &Actor, counter: u64) -> Dot {
    Dot {
        actor: a.clone(),
        counter,
    }
}

fn val(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

fn actor_pool() -> Vec<Actor> {
    vec![
        actor("n1", 1),
        actor("n1", 2),
        actor("n2", 1),
        actor("n3", 7),
        actor("n10", 1),
    ]
}

/// Builds the canonical context for a set of dots (through `set_entry`, like `write` does).
fn ctx_from_dots(dots: &BTreeSet<Dot>) -> Context {
    let mut by_actor: BTreeMap<&Actor, BTreeSet<u64>> = BTreeMap::new();
    for d in dots {
        by_actor.entry(&d.actor).or_default().insert(d.counter);
    }
    let mut ctx = Context::new();
    for (a, counters) in by_actor {
        let max = *counters.last().expect("non-empty");
        let missing = (1..max).filter(|c| !counters.contains(c)).collect();
        ctx.set_entry(a, max, missing);
    }
    ctx
}

fn random_dots(rng: &mut StdRng, pool: &[Actor]) -> BTreeSet<Dot> {
    let mut set = BTreeSet::new();
    for a in pool {
        if rng.random_bool(0.3) {
            continue;
        }
        let top = rng.random_range(1..=12u64);
        let density = rng.random_range(0.2..1.0);
        for c in 1..=top {
            if rng.random_bool(density) {
                set.insert(dot(a, c));
            }
        }
    }
    set
}

fn random_context(rng: &mut StdRng) -> (BTreeSet<Dot>, Context) {
    let dots = random_dots(rng, &actor_pool());
    let ctx = ctx_from_dots(&dots);
    (dots, ctx)
}

/// Frames an arbitrary payload exactly like `encode` (version byte + CRC).
fn frame(version: u8, payload: &[u8]) -> String {
    let mut buf = vec![version];
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    URL_SAFE_NO_PAD.encode(buf)
}

// ---------------------------------------------------------------- Context

#[test]
fn context_agrees_with_bruteforce_dot_set_model() {
    let pool = actor_pool();
    for seed in 0..1500u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (a, ca) = random_context(&mut rng);
        let (b, cb) = random_context(&mut rng);
        assert_eq!(ca.validate(), Ok(()), "seed {seed}");
        assert_eq!(ca.dots().collect::<BTreeSet<_>>(), a, "dots, seed {seed}");
        assert_eq!(ca.is_empty(), a.is_empty(), "seed {seed}");
        for act in &pool {
            let model_max = a
                .iter()
                .filter(|d| d.actor == *act)
                .map(|d| d.counter)
                .max();
            assert_eq!(ca.max_counter(act), model_max.unwrap_or(0), "seed {seed}");
            for c in 0..=14 {
                let d = dot(act, c);
                assert_eq!(
                    ca.contains(&d),
                    a.contains(&d),
                    "contains {d:?}, seed {seed}"
                );
            }
        }
        let model_union: BTreeSet<Dot> = a.union(&b).cloned().collect();
        let u = ca.union(&cb);
        assert_eq!(u.validate(), Ok(()), "seed {seed}");
        assert_eq!(
            u.dots().collect::<BTreeSet<_>>(),
            model_union,
            "union, seed {seed}"
        );
        // Canonical representation: structural equality is set equality.
        assert_eq!(u, ctx_from_dots(&model_union), "seed {seed}");
        let mut in_place = ca.clone();
        in_place.union_with(&cb);
        assert_eq!(in_place, u, "union_with, seed {seed}");
        assert_eq!(ca.le(&cb), a.is_subset(&b), "le, seed {seed}");
        assert_eq!(cb.le(&ca), b.is_subset(&a), "le, seed {seed}");
        // Removing any dot (present or not, max or not) matches the model canonically.
        for d in a.iter().chain([dot(&pool[0], 3), dot(&pool[1], 13)].iter()) {
            let mut removed = ca.clone();
            removed.remove(d);
            let mut model = a.clone();
            model.remove(d);
            assert_eq!(removed, ctx_from_dots(&model), "remove {d:?}, seed {seed}");
        }
        // Subsets drawn from a superset exercise the `true` side of `le` too.
        let sub: BTreeSet<Dot> = a.iter().filter(|_| rng.random_bool(0.7)).cloned().collect();
        assert!(ctx_from_dots(&sub).le(&ca), "subset le, seed {seed}");
        assert_eq!(ca.le(&ctx_from_dots(&sub)), sub == a, "seed {seed}");
    }
}

#[test]
fn context_union_laws_and_partial_order() {
    for seed in 0..800u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (_, a) = random_context(&mut rng);
        let (_, b) = random_context(&mut rng);
        let (_, c) = random_context(&mut rng);
        assert_eq!(a.union(&b), b.union(&a), "commutative, seed {seed}");
        assert_eq!(
            a.union(&b).union(&c),
            a.union(&b.union(&c)),
            "associative, seed {seed}"
        );
        assert_eq!(a.union(&a), a, "idempotent, seed {seed}");
        assert_eq!(a.union(&Context::new()), a, "identity, seed {seed}");
        assert_eq!(Context::new().union(&a), a, "identity, seed {seed}");
        let ab = a.union(&b);
        assert!(a.le(&ab) && b.le(&ab), "upper bound, seed {seed}");
        assert!(a.le(&a), "reflexive, seed {seed}");
        assert!(Context::new().le(&a), "bottom, seed {seed}");
        assert_eq!(a.le(&b), a.union(&b) == b, "le iff join, seed {seed}");
        if a.le(&b) && b.le(&a) {
            assert_eq!(a, b, "antisymmetric, seed {seed}");
        }
        if a.le(&b) && b.le(&c) {
            assert!(a.le(&c), "transitive, seed {seed}");
        }
        // Least upper bound: c above both implies c above the union.
        let c_up = c.union(&ab);
        assert!(ab.le(&c_up), "lub, seed {seed}");
    }
}

#[test]
fn context_union_edge_cases() {
    let a = actor("a", 1);
    let mut x = Context::new();
    x.set_entry(&a, 10, vec![2, 5, 9]);
    let mut y = Context::new();
    y.set_entry(&a, 6, vec![1, 2, 3]);
    // 2: missing in both; 5: missing in x, present in y; 9: above y.max, missing in x.
    let u = x.union(&y);
    assert_eq!(u.entries[0].missing, vec![2, 9]);
    assert_eq!(u.entries[0].max, 10);
    // Equal maxima: missing is the intersection.
    let mut z = Context::new();
    z.set_entry(&a, 10, vec![5, 7, 9]);
    assert_eq!(x.union(&z).entries[0].missing, vec![5, 9]);
    // y.max is present in y even though it is inside x's missing range.
    let mut w = Context::new();
    w.set_entry(&a, 9, vec![]);
    assert!(!w.le(&x));
    assert!(x.union(&w).contains(&dot(&a, 9)));
}

#[test]
fn set_entry_normalizes_and_keeps_invariants() {
    let a = actor("a", 1);
    let b = actor("b", 1);
    let mut c = Context::new();
    c.set_entry(&b, 5, vec![4, 0, 2, 2, 5, 9]);
    c.set_entry(&a, 3, vec![]);
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(c.entries[0].actor, a);
    assert_eq!(c.entries[1].missing, vec![2, 4]);
    c.set_entry(&b, 7, vec![6]);
    assert_eq!(c.max_counter(&b), 7);
    assert!(c.contains(&dot(&b, 2)) && !c.contains(&dot(&b, 6)));
    c.set_entry(&a, 0, vec![1]);
    assert_eq!(c.max_counter(&a), 0);
    c.set_entry(&actor("z", 1), 0, vec![]);
    assert_eq!(c.entries.len(), 1);
    assert_eq!(c.validate(), Ok(()));
    assert!(!c.contains(&dot(&b, 0)), "counter 0 is never a dot");
}

// ---------------------------------------------------------------- encoding

#[test]
fn encode_decode_round_trip() {
    let empty = Context::new();
    let enc = empty.encode();
    assert!(!enc.is_empty());
    assert_eq!(Context::decode(&enc), Ok(Context::new()));
    for seed in 0..500u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (_, c) = random_context(&mut rng);
        let enc = c.encode();
        assert!(
            enc.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "url-safe, seed {seed}"
        );
        assert!(enc.len() <= MAX_CONTEXT_BYTES);
        assert_eq!(Context::decode(&enc), Ok(c), "seed {seed}");
    }
    // Large counters survive msgpack's variable-width integers.
    let mut big = Context::new();
    big.set_entry(&actor("a", u64::MAX), u64::MAX, vec![1, u64::MAX - 1]);
    assert_eq!(Context::decode(&big.encode()), Ok(big));
}

#[test]
fn every_single_byte_corruption_and_truncation_is_rejected() {
    let mut samples = vec![Context::new()];
    for seed in 0..25u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        samples.push(random_context(&mut rng).1);
    }
    let alphabet: Vec<char> =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ .é\0"
            .chars()
            .collect();
    for (n, ctx) in samples.iter().enumerate() {
        let enc = ctx.encode();
        let raw = URL_SAFE_NO_PAD.decode(&enc).expect("own encoding");
        // Every byte of the framed binary, every possible wrong value.
        for i in 0..raw.len() {
            for x in 1..=255u8 {
                let mut bad = raw.clone();
                bad[i] ^= x;
                let s = URL_SAFE_NO_PAD.encode(&bad);
                assert!(
                    Context::decode(&s).is_err(),
                    "sample {n}: byte {i} ^ {x:#x} accepted"
                );
            }
        }
        // Every character of the string, replaced by every other character.
        for (i, orig) in enc.char_indices() {
            for &ch in &alphabet {
                if ch == orig {
                    continue;
                }
                let mut s = String::with_capacity(enc.len() + 2);
                s.push_str(&enc[..i]);
                s.push(ch);
                s.push_str(&enc[i + orig.len_utf8()..]);
                assert!(
                    Context::decode(&s).is_err(),
                    "sample {n}: char {i} -> {ch:?} accepted"
                );
            }
        }
        // Every truncation, of the string and of the binary.
        for len in 0..enc.len() {
            assert!(
                Context::decode(&enc[..len]).is_err(),
                "sample {n}: prefix {len}"
            );
        }
        for len in 0..raw.len() {
            let s = URL_SAFE_NO_PAD.encode(&raw[..len]);
            assert!(Context::decode(&s).is_err(), "sample {n}: raw prefix {len}");
        }
        // Appended characters / bytes.
        for ch in ['A', 'a', '0', '-', '='] {
            assert!(
                Context::decode(&format!("{enc}{ch}")).is_err(),
                "sample {n}"
            );
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert!(Context::decode(&URL_SAFE_NO_PAD.encode(&longer)).is_err());
    }
}

#[test]
fn garbage_is_rejected_without_panicking() {
    let fixed = [
        "",
        "=",
        "A",
        "AA",
        "AAAA",
        "AAAAAAAA",
        "not base64 at all!",
        "AQ==",
        "+/+/",
        "ééééé",
        "\0\0\0\0\0\0\0\0",
        "AZAAAAAAAA",
    ];
    for s in fixed {
        assert!(Context::decode(s).is_err(), "{s:?} accepted");
    }
    assert_eq!(
        Context::decode(&"A".repeat(MAX_CONTEXT_BYTES + 1)),
        Err(ContextError("too long"))
    );
    for seed in 0..3000u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let len = rng.random_range(0..64usize);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Random bytes as base64: must be rejected (CRC), never panic.
        assert!(
            Context::decode(&URL_SAFE_NO_PAD.encode(&bytes)).is_err(),
            "seed {seed}"
        );
        // Random ASCII text.
        let text: String = (0..len)
            .map(|_| char::from(rng.random_range(0x20..0x7fu8)))
            .collect();
        let _ = Context::decode(&text);
        // Random payloads behind a *correct* frame reach msgpack and validation; whatever
        // gets through must be a valid context that round-trips.
        if let Ok(c) = Context::decode(&frame(CONTEXT_FORMAT_VERSION, &bytes)) {
            assert_eq!(c.validate(), Ok(()), "seed {seed}");
            assert_eq!(Context::decode(&c.encode()), Ok(c), "seed {seed}");
        }
    }
}

#[test]
fn framing_errors_are_rejected_even_with_a_valid_crc() {
    let mut c = Context::new();
    c.set_entry(&actor("a", 1), 3, vec![1]);
    let payload = rmp_serde::to_vec(&c).expect("encode");
    assert_eq!(Context::decode(&frame(1, &payload)), Ok(c.clone()));
    assert_eq!(
        Context::decode(&frame(2, &payload)),
        Err(ContextError("unsupported format version"))
    );
    assert_eq!(
        Context::decode(&frame(0, &payload)),
        Err(ContextError("unsupported format version"))
    );
    let mut trailing = payload.clone();
    trailing.push(0xc0);
    assert_eq!(
        Context::decode(&frame(1, &trailing)),
        Err(ContextError("trailing bytes"))
    );
    assert_eq!(
        Context::decode(&frame(1, &[])),
        Err(ContextError("malformed payload"))
    );
    assert_eq!(
        Context::decode(&frame(1, &payload[..payload.len() - 1])),
        Err(ContextError("malformed payload"))
    );
    // A payload of the wrong type (a map) is an rmp error too.
    assert!(Context::decode(&frame(1, &[0x80])).is_err());
    // The encoding is canonical.
    let enc = c.encode();
    let raw = URL_SAFE_NO_PAD.decode(&enc).expect("own encoding");
    assert_eq!(URL_SAFE_NO_PAD.encode(raw), enc);
}

#[test]
fn invariant_violating_payloads_are_rejected() {
    let a = actor("a", 1);
    let b = actor("b", 1);
    let entry = |actor: &Actor, max: u64, missing: Vec<u64>| ContextEntry {
        actor: actor.clone(),
        max,
        missing,
    };
    let bad: Vec<(&str, Vec<ContextEntry>)> = vec![
        (
            "unsorted actors",
            vec![entry(&b, 1, vec![]), entry(&a, 1, vec![])],
        ),
        (
            "duplicate actors",
            vec![entry(&a, 1, vec![]), entry(&a, 2, vec![])],
        ),
        (
            "same node, unsorted generations",
            vec![entry(&actor("a", 2), 1, vec![]), entry(&a, 1, vec![])],
        ),
        ("max 0", vec![entry(&a, 0, vec![])]),
        ("max 0 with missing", vec![entry(&a, 0, vec![1])]),
        ("missing 0", vec![entry(&a, 3, vec![0])]),
        ("missing descending", vec![entry(&a, 5, vec![3, 2])]),
        ("missing duplicate", vec![entry(&a, 5, vec![2, 2])]),
        ("missing == max", vec![entry(&a, 5, vec![5])]),
        ("missing > max", vec![entry(&a, 5, vec![1, 7])]),
        (
            "second entry bad",
            vec![entry(&a, 2, vec![1]), entry(&b, 2, vec![2])],
        ),
    ];
    for (what, entries) in bad {
        let ctx = Context { entries };
        assert!(ctx.validate().is_err(), "{what}: validate");
        // Serialization does not validate, which is how we smuggle it into a frame.
        let payload = rmp_serde::to_vec(&ctx).expect("encode");
        assert!(
            Context::decode(&frame(CONTEXT_FORMAT_VERSION, &payload)).is_err(),
            "{what}: decode"
        );
        assert!(ctx.encode().len() > 1);
        assert!(
            Context::decode(&ctx.encode()).is_err(),
            "{what}: encode/decode"
        );
        // Plain deserialization (peer traffic) validates too.
        assert!(
            rmp_serde::from_slice::<Context>(&payload).is_err(),
            "{what}: deserialize"
        );
    }
}

#[test]
fn wire_shapes_are_compact_and_validated() {
    let a = actor("node-1", 42);
    assert_eq!(
        rmp_serde::to_vec(&a).expect("encode"),
        rmp_serde::to_vec(&("node-1", 42u64)).expect("encode")
    );
    let back: Actor =
        rmp_serde::from_slice(&rmp_serde::to_vec(&a).expect("encode")).expect("decode");
    assert_eq!(back, a);

    let mut c = Context::new();
    c.set_entry(&a, 4, vec![2]);
    assert_eq!(
        rmp_serde::to_vec(&c).expect("encode"),
        rmp_serde::to_vec(&vec![(("node-1", 42u64), 4u64, vec![2u64])]).expect("encode")
    );

    let mut set = VersionSet::new();
    let b = actor("node-2", 1);
    let ctx = set.write(&a, None, val("x"));
    set.write(&b, Some(&Context::new()), None);
    set.write(&a, Some(&ctx), val("y"));
    assert_eq!(set.len(), 2);
    let bytes = rmp_serde::to_vec(&set).expect("encode");
    let back: VersionSet = rmp_serde::from_slice(&bytes).expect("decode");
    assert_eq!(back, set);

    // A version whose history lacks its own dot is refused.
    let mut v = set.versions()[0].clone();
    v.history = Context::new();
    assert!(rmp_serde::from_slice::<Version>(&rmp_serde::to_vec(&v).expect("encode")).is_err());

    // A peer's unnormalized set (unsorted, duplicated, superseded) is normalized on arrival.
    let mut older = VersionSet::new();
    older.write(&a, None, val("old"));
    let mut raw: Vec<Version> = set.versions().to_vec();
    raw.reverse();
    raw.push(set.versions()[0].clone());
    raw.extend(older.versions().iter().cloned());
    let back: VersionSet =
        rmp_serde::from_slice(&rmp_serde::to_vec(&raw).expect("encode")).expect("decode");
    assert_eq!(back, set);
}

// ---------------------------------------------------------------- VersionSet helpers

/// Invariants every stored set must satisfy.
fn assert_well_formed(s: &VersionSet, why: &str) {
    for w in s.versions.windows(2) {
        assert!(w[0].dot < w[1].dot, "{why}: not strictly sorted by dot");
    }
    for v in &s.versions {
        assert_eq!(v.history.validate(), Ok(()), "{why}");
        assert!(v.history.contains(&v.dot), "{why}: history lacks own dot");
        for w in &s.versions {
            assert!(
                !v.superseded_by(w),
                "{why}: {:?} superseded by {:?}",
                v.dot,
                w.dot
            );
        }
    }
}

/// Reference merge: union by dot (first wins), then keep the non-superseded.
fn model_merge(inputs: &[&VersionSet]) -> VersionSet {
    let mut all: BTreeMap<Dot, Version> = BTreeMap::new();
    for s in inputs {
        for v in &s.versions {
            all.entry(v.dot.clone()).or_insert_with(|| v.clone());
        }
    }
    let versions = all
        .values()
        .filter(|v| !all.values().any(|w| v.superseded_by(w)))
        .cloned()
        .collect();
    VersionSet { versions }
}

/// Dominance exactness: nothing left is superseded, and everything dropped is superseded by
/// something that was kept.
fn assert_exact(inputs: &[&VersionSet], out: &VersionSet, why: &str) {
    assert_well_formed(out, why);
    let kept: BTreeSet<&Dot> = out.versions.iter().map(|v| &v.dot).collect();
    for s in inputs {
        for v in &s.versions {
            if !kept.contains(&v.dot) {
                assert!(
                    out.versions.iter().any(|w| v.superseded_by(w)),
                    "{why}: {:?} dropped but no kept version supersedes it",
                    v.dot
                );
            }
        }
    }
}

fn merged(a: &VersionSet, b: &VersionSet) -> VersionSet {
    let mut out = a.clone();
    let changed = out.merge(b);
    assert_eq!(changed, out != *a, "merge's return value");
    out
}

fn dots_of(s: &VersionSet) -> Vec<Dot> {
    s.versions.iter().map(|v| v.dot.clone()).collect()
}

struct Replica {
    actor: Actor,
    set: VersionSet,
}

/// Outcome of a random cluster run.
struct Sim {
    /// Snapshots of replica states over time (plus partial-replication messages).
    states: Vec<VersionSet>,
    /// Every version ever written, in write order.
    written: Vec<Version>,
    /// Union of the contexts writers actually used: the dots some client saw.
    seen: Context,
    replicas: Vec<Replica>,
}

/// Several replicas (each its own actor) take writes with random, possibly stale contexts,
/// exchange full or partial state in random order, and occasionally restart empty with a new
/// generation. Checks the per-write contract as it goes.
fn simulate(seed: u64, steps: usize) -> Sim {
    let mut rng = StdRng::seed_from_u64(seed);
    let nodes = ["r1", "r2", "r3"];
    let mut replicas: Vec<Replica> = nodes
        .iter()
        .map(|n| Replica {
            actor: actor(n, 1),
            set: VersionSet::new(),
        })
        .collect();
    let mut states: Vec<VersionSet> = vec![VersionSet::new()];
    let mut returned: Vec<Context> = vec![];
    let mut written: Vec<Version> = vec![];
    let mut written_dots: BTreeSet<Dot> = BTreeSet::new();
    let mut seen = Context::new();

    for step in 0..steps {
        let why = format!("seed {seed} step {step}");
        let r = rng.random_range(0..replicas.len());
        let op = rng.random_range(0..100u32);
        if op < 45 {
            let ctx: Option<Context> = match rng.random_range(0..5u32) {
                0 => None,
                1 => Some(Context::new()),
                2 if !returned.is_empty() => {
                    Some(returned[rng.random_range(0..returned.len())].clone())
                }
                3 => Some(states[rng.random_range(0..states.len())].context()),
                _ => {
                    // Quorum-style read: contexts of a random subset of replicas.
                    let mut c = Context::new();
                    for rep in &replicas {
                        if rng.random_bool(0.6) {
                            c.union_with(&rep.set.context());
                        }
                    }
                    Some(c)
                }
            };
            let value = if rng.random_bool(0.2) {
                None
            } else {
                Some(Bytes::from(format!("v{step}")))
            };
            let rep = &mut replicas[r];
            let effective = ctx.clone().unwrap_or_else(|| rep.set.context());
            let mut expected: Vec<Dot> = rep
                .set
                .versions
                .iter()
                .filter(|v| !effective.contains(&v.dot))
                .map(|v| v.dot.clone())
                .collect();
            let history = rep.set.write(&rep.actor, ctx.as_ref(), value.clone());
            let new = rep
                .set
                .versions
                .iter()
                .find(|v| v.history == history)
                .cloned()
                .unwrap_or_else(|| panic!("{why}: new version not stored"));
            assert_eq!(new.value, value, "{why}");
            assert_eq!(new.dot.actor, rep.actor, "{why}");
            assert!(history.contains(&new.dot), "{why}");
            assert!(
                effective.le(&history),
                "{why}: history must cover the context"
            );
            assert!(written_dots.insert(new.dot.clone()), "{why}: dot reused");
            // Exactly the versions the writer saw are replaced; unseen siblings stay.
            expected.push(new.dot.clone());
            expected.sort();
            assert_eq!(
                dots_of(&rep.set),
                expected,
                "{why}: write replaced wrong set"
            );
            assert_well_formed(&rep.set, &why);
            seen.union_with(&effective);
            returned.push(history);
            written.push(new);
            states.push(rep.set.clone());
        } else if op < 80 {
            let from = rng.random_range(0..replicas.len());
            let other = replicas[from].set.clone();
            let before = replicas[r].set.clone();
            let changed = replicas[r].set.merge(&other);
            assert_eq!(changed, replicas[r].set != before, "{why}");
            assert_eq!(replicas[r].set, model_merge(&[&before, &other]), "{why}");
            assert_exact(&[&before, &other], &replicas[r].set, &why);
            states.push(replicas[r].set.clone());
        } else if op < 96 {
            // Partial replication: only some versions of a peer arrive.
            let from = rng.random_range(0..replicas.len());
            let part = VersionSet::from_versions(
                replicas[from]
                    .set
                    .versions
                    .iter()
                    .filter(|_| rng.random_bool(0.5))
                    .cloned()
                    .collect(),
            );
            let before = replicas[r].set.clone();
            replicas[r].set.merge(&part);
            assert_exact(&[&before, &part], &replicas[r].set, &why);
            states.push(part);
            states.push(replicas[r].set.clone());
        } else {
            // Restart with an empty disk: new generation, so no counter is ever reused.
            let rep = &mut replicas[r];
            rep.actor = actor(&rep.actor.node, rep.actor.generation + 1);
            rep.set = VersionSet::new();
        }
    }
    Sim {
        states,
        written,
        seen,
        replicas,
    }
}

#[test]
fn version_set_merge_is_a_semilattice_over_simulated_histories() {
    for seed in 0..40u64 {
        let sim = simulate(seed, 150);
        let states = &sim.states;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        for round in 0..300 {
            let why = format!("seed {seed} round {round}");
            let a = &states[rng.random_range(0..states.len())];
            let b = &states[rng.random_range(0..states.len())];
            let c = &states[rng.random_range(0..states.len())];
            let ab = merged(a, b);
            assert_eq!(ab, merged(b, a), "{why}: commutative");
            assert_eq!(
                merged(&ab, c),
                merged(a, &merged(b, c)),
                "{why}: associative"
            );
            assert_eq!(merged(a, a), *a, "{why}: idempotent");
            assert!(!a.clone().merge(a), "{why}: self-merge reports no change");
            assert_eq!(merged(&ab, a), ab, "{why}: absorbs its inputs");
            assert_eq!(ab, model_merge(&[a, b]), "{why}: matches model");
            assert_exact(&[a, b], &ab, &why);
            assert_eq!(
                VersionSet::from_versions(a.versions.iter().chain(&b.versions).cloned().collect()),
                ab,
                "{why}: from_versions agrees with merge"
            );
            assert!(
                a.context().le(&ab.context()),
                "{why}: merging never forgets causality"
            );
        }
    }
}

#[test]
fn no_write_is_lost_unless_a_writer_saw_it() {
    for seed in 100..160u64 {
        let sim = simulate(seed, 200);
        let mut global = VersionSet::new();
        for s in sim.states.iter().chain(sim.replicas.iter().map(|r| &r.set)) {
            global.merge(s);
        }
        let all: Vec<&VersionSet> = sim.states.iter().collect();
        assert_exact(&all, &global, &format!("seed {seed} global"));
        for v in &sim.written {
            match global.versions.iter().find(|g| g.dot == v.dot) {
                Some(g) => assert_eq!(g, v, "seed {seed}"),
                None => assert!(
                    sim.seen.contains(&v.dot),
                    "seed {seed}: {:?} dropped although no writer ever saw it",
                    v.dot
                ),
            }
        }
        // Causal closure: a history contains the history of every write it covers. This is
        // what makes dominance transitive and therefore merge associative.
        for v in &sim.written {
            for u in &sim.written {
                if v.history.contains(&u.dot) {
                    assert!(
                        u.history.le(&v.history),
                        "seed {seed}: {:?} covers {:?} but not its history",
                        v.dot,
                        u.dot
                    );
                }
            }
        }
        // Order of anti-entropy does not matter.
        let mut reverse = VersionSet::new();
        for s in sim.states.iter().rev() {
            reverse.merge(s);
        }
        for r in &sim.replicas {
            reverse.merge(&r.set);
        }
        assert_eq!(reverse, global, "seed {seed}");
    }
}

// ---------------------------------------------------------------- scenarios

#[test]
fn sequential_blind_writes_by_one_actor_never_make_siblings() {
    let a = actor("n1", 1);
    let mut set = VersionSet::new();
    for i in 1..=200u64 {
        let ctx = set.write(&a, None, val(&format!("v{i}")));
        assert_eq!(set.len(), 1);
        assert_eq!(set.versions()[0].dot, dot(&a, i));
        assert_eq!(ctx.entries.len(), 1);
        assert!(ctx.entries[0].missing.is_empty());
        assert_eq!(set.live_values().count(), 1);
    }
    assert_eq!(set.max_counter(&a), 200);
}

#[test]
fn same_context_makes_siblings_and_the_read_context_resolves_them() {
    let a = actor("n1", 1);
    for start in [None, Some(())] {
        let mut set = VersionSet::new();
        if start.is_some() {
            set.write(&a, None, val("base"));
        }
        let read = set.context();
        set.write(&a, Some(&read), val("x"));
        set.write(&a, Some(&read), val("y"));
        assert_eq!(
            set.len(),
            2,
            "two writers with the same context are concurrent"
        );
        let mut values: Vec<&Bytes> = set.live_values().collect();
        values.sort();
        assert_eq!(values, vec![&val("x").unwrap(), &val("y").unwrap()]);
        // A third, with the empty context, is concurrent with both.
        set.write(&a, Some(&Context::new()), val("z"));
        assert_eq!(set.len(), 3);
        let resolved = set.write(&a, Some(&set.context()), val("merged"));
        assert_eq!(set.len(), 1);
        assert!(resolved.entries[0].missing.is_empty());
        assert_eq!(
            set.live_values().collect::<Vec<_>>(),
            vec![&val("merged").unwrap()]
        );
    }
}

#[test]
fn writes_through_different_coordinators_without_context_are_concurrent() {
    let (a, b) = (actor("n1", 1), actor("n2", 1));
    let (mut ra, mut rb) = (VersionSet::new(), VersionSet::new());
    ra.write(&a, None, val("a"));
    rb.write(&b, None, val("b"));
    assert!(ra.merge(&rb));
    assert_eq!(ra.len(), 2);
    assert!(rb.merge(&ra));
    assert_eq!(ra, rb);
    // Once replicated, a context-free write at either replica has seen both.
    rb.write(&b, None, val("c"));
    ra.merge(&rb);
    assert_eq!(ra.len(), 1);
}

fn assert_small(ctx: &Context, why: &str) {
    assert!(ctx.entries.len() <= 2, "{why}: {ctx:?}");
    for e in &ctx.entries {
        assert!(e.missing.len() <= 2, "{why}: {ctx:?}");
    }
}

#[test]
fn sibling_explosion_same_actor() {
    // riak_test sibling_explosion: two clients each write with the context of their own
    // previous write, never reading. With plain version vectors siblings pile up; here each
    // client's write replaces only its own previous value.
    let a = actor("n1", 1);
    for interleave in ["alternate", "random"] {
        let mut rng = StdRng::seed_from_u64(679);
        let mut set = VersionSet::new();
        let mut ctxs = [Context::new(), Context::new()];
        let mut latest: [Option<Bytes>; 2] = [None, None];
        for round in 0..1000 {
            let who = if interleave == "alternate" {
                round % 2
            } else {
                rng.random_range(0..2usize)
            };
            let v = Bytes::from(format!("client{who}-{round}"));
            ctxs[who] = set.write(&a, Some(&ctxs[who]), Some(v.clone()));
            latest[who] = Some(v);
            let why = format!("{interleave} round {round}");
            assert!(set.len() <= 2, "{why}: {} versions", set.len());
            assert_small(&ctxs[who], &why);
            assert_well_formed(&set, &why);
            // Neither client's latest write is ever lost.
            let live: Vec<&Bytes> = set.live_values().collect();
            for l in latest.iter().flatten() {
                assert!(live.contains(&l), "{why}: lost {l:?}");
            }
        }
    }
}

#[test]
fn sibling_explosion_two_actors_with_replication() {
    let actors = [actor("n1", 1), actor("n2", 1)];
    for seed in 0..10u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut replicas = [VersionSet::new(), VersionSet::new()];
        let mut ctxs = [Context::new(), Context::new()];
        let mut latest: [Option<Bytes>; 2] = [None, None];
        for round in 0..1000 {
            let who = if seed == 0 {
                round % 2
            } else {
                rng.random_range(0..2usize)
            };
            let v = Bytes::from(format!("client{who}-{round}"));
            ctxs[who] = replicas[who].write(&actors[who], Some(&ctxs[who]), Some(v.clone()));
            latest[who] = Some(v);
            // Replication at random moments (always, for seed 0), in either direction.
            if seed == 0 || rng.random_bool(0.5) {
                let snapshot = replicas[who].clone();
                replicas[1 - who].merge(&snapshot);
            }
            if seed == 0 || rng.random_bool(0.3) {
                let snapshot = replicas[1 - who].clone();
                replicas[who].merge(&snapshot);
            }
            let why = format!("seed {seed} round {round}");
            for r in &replicas {
                assert!(r.len() <= 2, "{why}: {} versions", r.len());
                assert_well_formed(r, &why);
            }
            assert_small(&ctxs[who], &why);
            assert_small(&replicas[who].context(), &why);
        }
        // Full sync: exactly both clients' latest values survive.
        let snapshot = replicas[1].clone();
        replicas[0].merge(&snapshot);
        let mut live: Vec<&Bytes> = replicas[0].live_values().collect();
        live.sort();
        let mut want: Vec<&Bytes> = latest.iter().flatten().collect();
        want.sort();
        assert_eq!(live, want, "seed {seed}");
    }
}

#[test]
fn kv679_restarted_node_never_has_its_write_discarded() {
    let gen1 = actor("n1", 1);
    let gen2 = actor("n1", 2);
    let mut replica_a = VersionSet::new();
    replica_a.write(&gen1, None, val("v1"));
    let mut replica_b = VersionSet::new();
    replica_b.merge(&replica_a);

    // n1 loses its disk and restarts with a new generation, then takes a blind write.
    let mut fresh = VersionSet::new();
    fresh.write(&gen2, None, val("v2"));
    assert_eq!(fresh.versions()[0].dot, dot(&gen2, 1));

    assert!(replica_b.merge(&fresh), "v2 must be accepted");
    let live: Vec<&Bytes> = replica_b.live_values().collect();
    assert!(
        live.contains(&&val("v2").unwrap()),
        "v2 discarded as already seen"
    );
    assert_eq!(replica_b.len(), 2, "v1 and v2 are concurrent");

    // Why the generation matters: reusing the old actor would mint dot (n1,1) again, which
    // B treats as the write it already has, silently dropping v2.
    let mut reused = VersionSet::new();
    reused.write(&gen1, None, val("v2"));
    let mut b2 = VersionSet::new();
    b2.merge(&replica_a);
    assert!(!b2.merge(&reused));
    assert!(!b2.live_values().any(|v| v == &val("v2").unwrap()));
}

#[test]
fn fingerprints_identify_sets() {
    let a1 = Actor::new("n1", 1);
    let mut x = VersionSet::new();
    assert_eq!(x.fingerprint(b"k"), 0);
    x.write(&a1, None, Some(Bytes::from_static(b"v")));
    let fx = x.fingerprint(b"k");
    assert_ne!(fx, 0);
    assert_ne!(x.fingerprint(b"other"), fx, "the key is part of the digest");
    let mut y = VersionSet::new();
    y.merge(&x);
    assert_eq!(y.fingerprint(b"k"), fx, "equal sets, equal digests");
    y.write(&a1, None, None);
    assert_ne!(y.fingerprint(b"k"), fx);
}

#[test]
fn tombstones() {
    let a = actor("n1", 1);
    let mut set = VersionSet::new();
    assert!(!set.is_deleted(), "an empty set is absent, not deleted");
    let c1 = set.write(&a, None, val("v1"));
    assert!(!set.is_deleted());
    let del = set.write(&a, Some(&c1), None);
    assert!(set.is_deleted());
    assert_eq!(set.len(), 1);
    assert_eq!(set.live_values().count(), 0);

    // Put after delete, with the delete's context: one live value.
    set.write(&a, Some(&del), val("v2"));
    assert!(!set.is_deleted());
    assert_eq!(set.len(), 1);
    assert_eq!(
        set.live_values().collect::<Vec<_>>(),
        vec![&val("v2").unwrap()]
    );

    // A delete concurrent with a put leaves a tombstone sibling; the put still shows.
    set.write(&a, Some(&del), None);
    assert_eq!(set.len(), 2);
    assert!(!set.is_deleted());
    assert_eq!(set.live_values().count(), 1);
    // Deleting with the full context removes everything.
    set.write(&a, None, None);
    assert!(set.is_deleted());
    assert_eq!(set.len(), 1);
}

#[test]
fn stale_context_keeps_the_unseen_sibling() {
    let a = actor("n1", 1);
    let mut set = VersionSet::new();
    let stale = set.write(&a, None, val("v1"));
    set.write(&a, None, val("v2")); // supersedes v1; the first client did not see it
    let v2_dot = set.versions()[0].dot.clone();
    let h3 = set.write(&a, Some(&stale), val("v3"));
    assert_eq!(set.len(), 2);
    assert!(!h3.contains(&v2_dot), "v3's history must not claim v2");
    assert!(h3.contains(&dot(&a, 1)), "v3 did see v1");
    assert_eq!(h3.entries[0].missing, vec![v2_dot.counter]);
    let mut values: Vec<&Bytes> = set.live_values().collect();
    values.sort();
    assert_eq!(values, vec![&val("v2").unwrap(), &val("v3").unwrap()]);

    // Another actor's write with a stale context behaves the same after replication.
    let b = actor("n2", 1);
    let mut other = set.clone();
    other.write(&b, Some(&stale), val("v4"));
    assert_eq!(other.len(), 3);
}

#[test]
fn a_stale_write_claims_the_past_of_what_it_claims() {
    // y (b) <- x (a) <- u (a); then w (a) is written with an empty context, so u stays a
    // sibling. Claiming x wholesale (x is superseded here) without also claiming x's past y
    // would make dominance non-transitive: {x} + {w} would forget y, and then + {y} would
    // resurrect it, while {w} + {y} first and {x} last would not.
    let (a, b) = (actor("a", 1), actor("b", 1));
    let mut r2 = VersionSet::new();
    r2.write(&b, None, val("y"));
    let y = r2.clone();
    let mut r1 = y.clone();
    r1.write(&a, None, val("x"));
    let x = r1.clone();
    r1.write(&a, None, val("u"));
    let h = r1.write(&a, Some(&Context::new()), val("w"));
    assert_eq!(r1.len(), 2, "u and w are siblings");
    assert!(h.contains(&dot(&a, 1)) && h.contains(&dot(&b, 1)));
    assert!(!h.contains(&dot(&a, 2)));
    let w_only = VersionSet::from_versions(
        r1.versions()
            .iter()
            .filter(|v| v.history == h)
            .cloned()
            .collect(),
    );
    assert_eq!(w_only.len(), 1);
    let left = merged(&merged(&x, &w_only), &y);
    let right = merged(&x, &merged(&w_only, &y));
    assert_eq!(left, right);
    assert_eq!(left, w_only);
}

#[test]
fn write_after_reaping_continues_from_the_context_counter() {
    // If a replica's state was emptied (e.g. tombstones reaped) while a client still holds
    // a context, the new dot must be above the context's counter for this actor.
    let a = actor("n1", 1);
    let mut old = VersionSet::new();
    old.write(&a, None, val("v1"));
    let ctx = old.write(&a, None, val("v2"));
    let mut set = VersionSet::new();
    let h = set.write(&a, Some(&ctx), val("v3"));
    assert_eq!(set.versions()[0].dot, dot(&a, 3));
    assert!(ctx.le(&h));
}

#[test]
fn forged_contexts_do_not_panic() {
    let a = actor("n1", 1);
    let mut forged = Context::new();
    forged.set_entry(&a, u64::MAX, vec![1]);
    let mut set = VersionSet::new();
    set.write(&a, None, val("v1"));
    set.write(&a, Some(&forged), val("v2"));
    set.write(&a, Some(&forged), val("v3"));
    assert_well_formed(&set, "forged");
    assert!(set.len() <= 2);
}

#[test]
fn expiry_reads_as_absent_and_sweeping_keeps_the_fingerprint() {
    let a = actor("n1", 1);
    let mut set = VersionSet::new();
    set.write(&a, None, val("old"));
    let meta = Meta {
        content_type: Some("text/plain".into()),
        expires_at: Some(100),
    };
    set.write_above(&a, None, val("new"), meta.boxed(), 0);
    assert_eq!(set.len(), 1, "the expiring write supersedes the old value");
    assert_eq!(set.live(99).count(), 1);
    assert_eq!(
        set.live(99).next().unwrap().content_type(),
        Some("text/plain")
    );
    assert_eq!(set.live(100).count(), 0, "expired at its expiry");
    assert_eq!(set.next_expiry(), Some(100));
    let fp = set.fingerprint(b"k");
    let unswept = set.clone();
    assert!(!set.expire(99));
    assert!(set.expire(100));
    assert!(!set.expire(100), "once");
    assert!(set.is_deleted());
    assert_eq!(set.next_expiry(), None);
    assert_eq!(
        set.fingerprint(b"k"),
        fp,
        "sweeping is invisible to anti-entropy"
    );
    // A replica that still has the old value learns the expired write and keeps nothing live.
    let mut stale = VersionSet::new();
    stale.write(&a, None, val("old"));
    stale.merge(&set);
    assert_eq!(stale.live(0).count(), 0);
    // Swept and unswept copies merge to the same writes.
    let mut m = unswept.clone();
    m.merge(&set);
    assert_eq!(m.fingerprint(b"k"), fp);
    // What a listing reports: live until the expiry, and nothing once swept.
    assert_eq!(unswept.live_until(), 100);
    assert_eq!(set.live_until(), 0);
    let mut forever = VersionSet::new();
    forever.write(&a, None, val("x"));
    assert_eq!(forever.live_until(), u64::MAX);
}

#[test]
fn conditions() {
    let a = actor("n1", 1);
    let mut set = VersionSet::new();
    assert!(Condition::IfAbsent.holds(&set, 0));
    let ctx = set.write(&a, None, val("x"));
    assert!(!Condition::IfAbsent.holds(&set, 0));
    assert!(Condition::IfMatch(ctx.clone()).holds(&set, 0));
    set.write(&a, Some(&ctx), None);
    assert!(Condition::IfAbsent.holds(&set, 0), "a tombstone is absent");
    assert!(!Condition::IfMatch(ctx).holds(&set, 0), "stale");
    assert!(Condition::None.holds(&set, 0));
}

/// The write fast path (no version, or one the writer has seen) gives exactly what the
/// general path gives: over simulated states, contexts and floors, and forged ones.
#[test]
fn write_fast_path_agrees_with_the_general_path() {
    let mut fast_taken = 0;
    let mut check =
        |state: &VersionSet, writer: &Actor, ctx: Option<&Context>, floor: u64, why: &str| {
            let taken = match state.versions() {
                [] => true,
                [v] => ctx.unwrap_or(&v.history).contains(&v.dot),
                _ => false,
            };
            fast_taken += taken as usize;
            let (mut fast, mut general) = (state.clone(), state.clone());
            let meta = Meta {
                content_type: Some("a/b".into()),
                expires_at: None,
            };
            let h1 = fast.write_above(writer, ctx, val("w"), meta.clone().boxed(), floor);
            let h2 = general.write_general(writer, ctx, val("w"), meta.boxed(), floor);
            assert_eq!(h1, h2, "{why}");
            assert_eq!(fast, general, "{why}");
            if why != "edge" {
                assert_well_formed(&fast, why);
            }
        };
    for seed in 0..30u64 {
        let sim = simulate(seed, 120);
        let mut rng = StdRng::seed_from_u64(seed ^ 0xfa57);
        let mut contexts: Vec<Option<Context>> = vec![None, Some(Context::new())];
        contexts.extend(sim.states.iter().step_by(7).map(|s| Some(s.context())));
        let mut forged = Context::new();
        forged.set_entry(&sim.replicas[0].actor, u64::MAX, vec![]);
        contexts.push(Some(forged));
        let writers: Vec<Actor> = sim.replicas.iter().map(|r| r.actor.clone()).collect();
        for state in sim.states.iter().filter(|s| s.len() <= 2) {
            for ctx in &contexts {
                let writer = &writers[rng.random_range(0..writers.len())];
                let floor = [0, rng.random_range(0..30), u64::MAX][rng.random_range(0..3)];
                check(state, writer, ctx.as_ref(), floor, &format!("seed {seed}"));
            }
        }
    }
    // A version whose history lacks its own dot (only built in-process), and an own
    // counter at u64::MAX (only reachable by forged contexts).
    let a = actor("n1", 1);
    let mut history = Context::new();
    history.set_entry(&a, 3, vec![]);
    let odd = VersionSet::sole(Version {
        dot: dot(&a, 5),
        history,
        value: val("odd"),
        meta: None,
    });
    let mut saturated = VersionSet::new();
    let mut forged = Context::new();
    forged.set_entry(&a, u64::MAX - 1, vec![]);
    saturated.write(&a, Some(&forged), val("max"));
    assert_eq!(saturated.max_counter(&a), u64::MAX);
    for state in [&odd, &saturated] {
        for ctx in [None, Some(state.context()), Some(Context::new())] {
            check(state, &a, ctx.as_ref(), 0, "edge");
            check(state, &actor("n2", 1), ctx.as_ref(), 0, "edge");
        }
    }
    assert!(fast_taken > 1000, "the fast path ran {fast_taken} times");
}

/// Single versions merge exactly as the model says, including forged histories where
/// each supersedes the other (both go).
#[test]
fn single_version_merges_agree_with_the_model() {
    let mut singles: Vec<VersionSet> = Vec::new();
    for seed in 0..20u64 {
        let sim = simulate(seed, 80);
        singles.extend(sim.states.into_iter().filter(|s| s.len() == 1));
    }
    let (a, b) = (actor("a", 1), actor("b", 1));
    let mut ha = Context::new();
    ha.set_entry(&a, 1, vec![]);
    ha.set_entry(&b, 1, vec![]);
    let hb = ha.clone();
    let cycle = [(&a, ha), (&b, hb)].map(|(who, history)| {
        VersionSet::sole(Version {
            dot: dot(who, 1),
            history,
            value: val("forged"),
            meta: None,
        })
    });
    assert!(merged(&cycle[0], &cycle[1]).is_empty());
    singles.extend(cycle);
    for x in singles.iter().step_by(3) {
        for y in singles.iter().step_by(5) {
            assert_eq!(merged(x, y), model_merge(&[x, y]));
        }
    }
}
