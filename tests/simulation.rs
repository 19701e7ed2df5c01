//! The deterministic simulation (`tests/sim`): many seeds of a five-node ring under seeded
//! faults, each checked against the Jepsen-style invariants.
//!
//! - `cargo test --test simulation` runs [`DEFAULT_SEEDS`] seeds.
//! - `RINGKV_SIM_SEEDS=5000` runs more; `RINGKV_SIM_FIRST=N` starts elsewhere.
//! - `RINGKV_SIM_SEED=N RINGKV_SIM_TRACE=1 cargo test --test simulation one_seed -- --nocapture`
//!   replays one seed, printing every message delivered.
//!
//! A failing seed prints its report and that command.

mod sim;

use std::time::Instant;

/// Seeds a plain `cargo test` runs.
const DEFAULT_SEEDS: u64 = 500;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn failed(report: &sim::Report) -> String {
    format!(
        "seed {} failed (R, W = {:?}; faults: {:?}):\n  {}\nreplay it with:\n  {}",
        report.seed,
        report.quorum,
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
         {messages} messages, {purged} tombstones purged; healed rings converged in a median \
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
