//! The deterministic simulation (`tests/sim`): many seeds of a five-node ring under seeded
//! faults, each checked against the Jepsen-style invariants.
//!
//! - `cargo test --test simulation` runs [`DEFAULT_SEEDS`] seeds.
//! - `RINGKV_SIM_SEEDS=5000` runs more; `RINGKV_SIM_FIRST=N` starts elsewhere.
//! - `RINGKV_SIM_SEED=N RINGKV_SIM_TRACE=1 cargo test --test simulation one_seed -- --nocapture`
//!   replays one seed, printing every message delivered.
//!
//! A failing seed prints its report and that command.

mod common;
mod sim;

use std::time::Instant;

/// Seeds a plain `cargo test` runs.
const DEFAULT_SEEDS: u64 = 500;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn failed(report: &sim::Report) -> String {
    format!(
        "seed {} failed (R, W = {:?}; {}{}; faults: {:?}):\n  {}\nreplay it with:\n  {}",
        report.seed,
        report.quorum,
        if report.durable {
            "nodes with disks"
        } else {
            "nodes in memory"
        },
        if report.zoned {
            ", in zones a b c a b"
        } else {
            ""
        },
        report.faults,
        report.violations.join("\n  "),
        report.replay_command()
    )
}

/// Runs the seeds `first..first + count`, on every core, and fails on the first bad one.
fn run_seeds(first: u64, count: u64) {
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let reports: Vec<sim::Report> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (first..first + count)
                        .filter(|seed| seed % threads == t)
                        .map(|seed| sim::run(seed, false))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    let bad: Vec<String> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(failed)
        .collect();
    let ops: usize = reports.iter().map(|r| r.ops).sum();
    let acked: usize = reports.iter().map(|r| r.acked).sum();
    let messages: u64 = reports.iter().map(|r| r.messages).sum();
    let recovered: usize = reports.iter().map(|r| r.recovered).sum();
    let restarted_from_disk = reports.iter().filter(|r| r.recovered > 0).count();
    let purged: u64 = reports
        .iter()
        .map(|r| r.tombstones.0 - r.tombstones.1.min(r.tombstones.0))
        .sum();
    let mut settle: Vec<u128> = reports
        .iter()
        .filter_map(|r| r.converged_after.map(|d| d.as_millis()))
        .collect();
    settle.sort_unstable();
    eprintln!(
        "{count} seeds in {:.1} s: {ops} client operations, {acked} acknowledged writes, \
         {messages} messages, {purged} tombstones purged, {recovered} log records read back by \
         nodes restarted from their disks in {restarted_from_disk} runs; healed rings \
         converged in a median \
         {} ms, max {} ms (simulated)",
        started.elapsed().as_secs_f64(),
        settle.get(settle.len() / 2).copied().unwrap_or_default(),
        settle.last().copied().unwrap_or_default(),
    );
    assert!(
        bad.is_empty(),
        "{} of {count} seeds failed:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn seeds() {
    run_seeds(
        env("RINGKV_SIM_FIRST").unwrap_or(0),
        env("RINGKV_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS),
    );
}

#[test]
fn one_seed() {
    let seed = env("RINGKV_SIM_SEED").unwrap_or(7);
    // RUST_LOG=ringkv=debug adds the nodes' own logs to the trace.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let report = sim::run(seed, std::env::var("RINGKV_SIM_TRACE").is_ok());
    eprintln!("{report:#?}");
    assert!(report.violations.is_empty(), "{}", failed(&report));
}

#[test]
fn a_seed_replays_its_run_message_for_message() {
    for seed in [1, 2] {
        let a = sim::run(seed, false);
        let b = sim::run(seed, false);
        assert!(
            a.messages > 1_000,
            "seed {seed} delivered only {} messages",
            a.messages
        );
        assert_eq!(
            (a.trace, a.messages, a.ops),
            (b.trace, b.messages, b.ops),
            "seed {seed} ran differently twice"
        );
    }
    let other = sim::run(3, false);
    assert_ne!(
        sim::run(1, false).trace,
        other.trace,
        "two seeds gave one run"
    );
}

/// The checker itself: each invariant flags a history that breaks it, and passes the same
/// history once it holds.
#[test]
fn the_checker_flags_lost_writes_resurrections_and_phantoms() {
    use bytes::Bytes;
    use ringkv::version::{Actor, VersionSet};
    use sim::check::{Ending, State, check};
    use sim::workload::{History, Outcome, Write};
    use std::time::Duration;

    let n1 = Actor::new("n1", 1);
    let write = |id: &str, sent: Option<String>, returned: String, delete: bool| Write {
        id: id.to_string(),
        key: "k".to_string(),
        invoked: Duration::from_millis(10),
        completed: Some(Duration::from_millis(20)),
        outcome: Outcome::Acked,
        sent,
        returned: Some(returned),
        delete,
        covers: Vec::new(),
        w: 2,
        ttl: false,
        strict: false,
        at_ack: None,
    };
    // A write acknowledged by two homes of three, all up.
    let quiet_ack = || sim::workload::AtAck {
        coordinator: "n1".into(),
        homes: vec!["n1".into(), "n2".into(), "n3".into()],
        homes_up: 3,
        up: vec!["n1".into(), "n2".into(), "n3".into()],
        homes_holding: 2,
    };
    let nodes = Default::default();
    let judge = |h: &History, state: &State| {
        check(
            h,
            &Ending {
                by_key: state,
                after_gc: state,
                nodes: &nodes,
                now_ms: 0,
                skews: &[0; sim::NODES],
                at_risk: &|_| false,
                kills: &[],
                faults: &[],
            },
        )
    };

    // A write acknowledged, then missing from the final state: lost.
    let mut replica = VersionSet::new();
    let first = replica.write(&n1, None, Some(Bytes::from("c1-1")));
    let mut h = History::default();
    h.writes.push(write("c1-1", None, first.encode(), false));
    let empty = State::new();
    assert!(judge(&h, &empty)[0].contains("lost acknowledged write c1-1"));
    // Kept: the final state holds it.
    let kept: State = [("k".to_string(), replica.clone())].into();
    assert_eq!(judge(&h, &kept), Vec::<String>::new());

    // Superseded by a blind write whose version's history holds its dot: not lost, although
    // the blind write's client never saw it.
    let mut later = replica.clone();
    let second = later.write(&n1, None, Some(Bytes::from("c2-1")));
    h.writes.push(write("c2-1", None, second.encode(), false));
    let superseded: State = [("k".to_string(), later.clone())].into();
    assert_eq!(judge(&h, &superseded), Vec::<String>::new());

    // A delete acknowledged with both in its history, and c2-1 live again: resurrected.
    let mut tomb = later.clone();
    let deleted = tomb.write(&n1, Some(&second), None);
    h.writes.push(write(
        "c3-1-del",
        Some(second.encode()),
        deleted.encode(),
        true,
    ));
    let violations = judge(&h, &superseded);
    assert!(
        violations
            .iter()
            .any(|v| v.contains("c2-1 on k came back after c3-1-del")),
        "{violations:?}"
    );
    let gone: State = [("k".to_string(), tomb)].into();
    assert_eq!(judge(&h, &gone), Vec::<String>::new());

    // Siblings are only concurrent writes: c5-1's client had read c4-1, so the two never
    // show side by side, and a value never shows twice.
    let mut set = VersionSet::new();
    let v1 = set.write(&n1, None, Some(Bytes::from("c4-1")));
    let v2 = set.write(&n1, Some(&v1), Some(Bytes::from("c5-1")));
    let v3 = set.write(&n1, None, Some(Bytes::from("c6-1")));
    let mut h = History::default();
    h.writes.push(write("c4-1", None, v1.encode(), false));
    let mut covering = write("c5-1", Some(v1.encode()), v2.encode(), false);
    covering.covers = vec!["c4-1".to_string()];
    h.writes.push(covering);
    h.writes.push(write("c6-1", None, v3.encode(), false));
    let state: State = [("k".to_string(), set)].into();
    h.reads
        .push(("k".to_string(), vec!["c5-1".into(), "c6-1".into()]));
    assert_eq!(judge(&h, &state), Vec::<String>::new());
    h.reads
        .push(("k".to_string(), vec!["c4-1".into(), "c5-1".into()]));
    h.reads
        .push(("k".to_string(), vec!["c6-1".into(), "c6-1".into()]));
    let violations = judge(&h, &state);
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(violations[0].contains("showed c5-1 beside c4-1, which c5-1's context covered"));
    assert!(violations[1].contains("showed one value twice"));

    // Fresh strict reads: a read at pr = r = 2 after a write acknowledged at pw = w = 2 must
    // return it or a successor; reading nothing is a stale read.
    let mut set = VersionSet::new();
    let strict_write = set.write(&n1, None, Some(Bytes::from("c7-1")));
    let mut h = History {
        read_quorum: Some(2),
        ..Default::default()
    };
    let mut w = write("c7-1", None, strict_write.encode(), false);
    w.strict = true;
    w.at_ack = Some(quiet_ack());
    h.writes.push(w);
    let state: State = [("k".to_string(), set)].into();
    let read = |context: Option<String>, values: Vec<String>| sim::workload::StrictRead {
        key: "k".into(),
        node: 1,
        client: 1,
        invoked: Duration::from_millis(30),
        completed: Duration::from_millis(31),
        values,
        context,
        homes: vec!["n1".into(), "n2".into(), "n3".into()],
    };
    h.strict_reads
        .push(read(Some(strict_write.encode()), vec!["c7-1".into()]));
    assert_eq!(judge(&h, &state), Vec::<String>::new());
    h.strict_reads.push(read(None, Vec::new()));
    let violations = judge(&h, &state);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].starts_with("stale read: a GET of k"),
        "{violations:?}"
    );

    // Monotonic reads: c8-1 (strict) superseded c8-0; a client read c8-1, and its next read
    // must not bring c8-0 back, even beside c8-1.
    let mut set = VersionSet::new();
    let old = set.write(&n1, None, Some(Bytes::from("c8-0")));
    let new = set.write(&n1, Some(&old), Some(Bytes::from("c8-1")));
    let mut h = History {
        read_quorum: Some(2),
        ..Default::default()
    };
    h.writes.push(write("c8-0", None, old.encode(), false));
    let mut w = write("c8-1", Some(old.encode()), new.encode(), false);
    w.strict = true;
    w.at_ack = Some(quiet_ack());
    h.writes.push(w);
    let state: State = [("k".to_string(), set)].into();
    let mut first = read(Some(new.encode()), vec!["c8-1".into()]);
    let mut next = read(Some(new.encode()), vec!["c8-1".into()]);
    first.invoked = Duration::from_millis(30);
    next.invoked = Duration::from_millis(40);
    next.completed = Duration::from_millis(41);
    h.strict_reads.push(first.clone());
    h.strict_reads.push(next.clone());
    assert_eq!(judge(&h, &state), Vec::<String>::new());
    next.values = vec!["c8-0".into(), "c8-1".into()];
    h.strict_reads = vec![first, next];
    let violations = judge(&h, &state);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].starts_with("non-monotonic read: client c2 read k"),
        "{violations:?}"
    );

    // A value nobody wrote: a phantom.
    let mut forged = VersionSet::new();
    forged.write(&n1, None, Some(Bytes::from("nobody-1")));
    let phantom: State = [("k".to_string(), forged)].into();
    assert!(
        judge(&History::default(), &phantom)
            .iter()
            .any(|v| v.contains("phantom value \"nobody-1\""))
    );
}
