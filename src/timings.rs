//! Server-side stage times: where a request's time goes on this node, as HDR histograms.
//!
//! Each stage is timed where it runs and recorded in microseconds. `GET /admin/stages`
//! reports each stage's count and percentiles since the last reset; `DELETE /admin/stages`
//! resets them, so a benchmark can read exactly its own requests. A PUT through the key's
//! first home shows as `http_put` ⊇ `apply` + `replicate`; each peer's part of `replicate`
//! shows on that peer as `replica_apply`; what `replicate` adds to it is network, RPC
//! framing and task wake-ups. Recording costs two clock reads and one uncontended lock per
//! stage, a fraction of a percent of a quorum request.

use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// A timed part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A client PUT or DELETE, from its headers to its answer (the body read included).
    HttpWrite,
    /// A client GET of one key, from its headers to its answer.
    HttpRead,
    /// A write sent on to the key's first home, waiting for its answer.
    Forward,
    /// The coordinator's own store write: shard lock, version minting, log append.
    Apply,
    /// From the coordinator's apply until W replicas acknowledged (its own included).
    Replicate,
    /// A replica storing a coordinator's copy (and syncing its log, with a data dir).
    ReplicaApply,
    /// A read's quorum: from asking the first replica until R answered.
    ReadQuorum,
    /// One anti-entropy exchange with one peer.
    AntiEntropy,
}

/// Every stage, in declaration order: a stage's discriminant is its histogram's index.
const STAGES: [Stage; 8] = [
    Stage::HttpWrite,
    Stage::HttpRead,
    Stage::Forward,
    Stage::Apply,
    Stage::Replicate,
    Stage::ReplicaApply,
    Stage::ReadQuorum,
    Stage::AntiEntropy,
];

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::HttpWrite => "http_write",
            Stage::HttpRead => "http_read",
            Stage::Forward => "forward",
            Stage::Apply => "apply",
            Stage::Replicate => "replicate",
            Stage::ReplicaApply => "replica_apply",
            Stage::ReadQuorum => "read_quorum",
            Stage::AntiEntropy => "anti_entropy",
        }
    }
}

/// Longest time a histogram tracks, in µs (a minute); longer ones count as this.
const MAX_US: u64 = 60_000_000;

/// One histogram per stage.
#[derive(Debug)]
pub struct Stages {
    hists: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Stages {
    fn default() -> Self {
        let hist = || {
            // Three significant digits: percentiles exact to 0.1%.
            Mutex::new(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
        };
        Stages {
            hists: STAGES.iter().map(|_| hist()).collect(),
        }
    }
}

impl Stages {
    /// Records `stage` as having run from `since` until now.
    pub fn record(&self, stage: Stage, since: Instant) {
        let us = (since.elapsed().as_micros() as u64).clamp(1, MAX_US);
        // `STAGES` lists the stages in declaration order (checked by a test).
        let mut h = crate::lock(&self.hists[stage as usize]);
        let _ = h.record(us);
    }

    /// Each stage's count and percentiles in µs since the last reset.
    pub fn report(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (stage, hist) in STAGES.iter().zip(&self.hists) {
            let h = crate::lock(hist);
            out.insert(
                stage.name().to_string(),
                json!({
                    "count": h.len(),
                    "p50_us": h.value_at_quantile(0.5),
                    "p90_us": h.value_at_quantile(0.9),
                    "p99_us": h.value_at_quantile(0.99),
                    "p999_us": h.value_at_quantile(0.999),
                    "max_us": h.max(),
                }),
            );
        }
        Value::Object(out)
    }

    /// Empties every histogram.
    pub fn reset(&self) {
        for hist in &self.hists {
            crate::lock(hist).reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stages_are_listed_in_declaration_order() {
        for (i, stage) in STAGES.iter().enumerate() {
            assert_eq!(*stage as usize, i, "{stage:?}");
        }
    }

    #[test]
    fn stages_record_report_and_reset() {
        let s = Stages::default();
        let long_ago = Instant::now() - Duration::from_millis(5);
        s.record(Stage::Apply, long_ago);
        s.record(Stage::Apply, Instant::now());
        let r = s.report();
        assert_eq!(r["apply"]["count"], 2);
        assert!(r["apply"]["max_us"].as_u64().unwrap() >= 5_000);
        assert_eq!(r["replicate"]["count"], 0);
        s.reset();
        assert_eq!(s.report()["apply"]["count"], 0);
    }
}
