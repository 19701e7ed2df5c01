//! Hinted handoff: delivers the copies this node keeps for dead home replicas once gossip
//! shows them alive again.
//!
//! Every [`crate::config::Config::handoff_interval`], and whenever the membership view
//! changes, the worker expires hints past their TTL and then, for each target that is alive,
//! sends its hints in batches of [`BATCH`] keys. A hint is dropped only after the target
//! acknowledges the batch, and only if it did not change meanwhile (see
//! [`crate::hints::HintStore::delivered`]). A target that fails stops its delivery for this
//! round; the next round retries.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::lock;
use crate::replica::{Replica, fit, set_size};
use crate::rpc::{Request, Response};
use crate::stats::Stats;

/// Keys per delivery message: large enough to amortise a round trip, small enough that one
/// message stays far below the frame limit for typical values.
pub const BATCH: usize = 256;

/// Runs until `shutdown` fires.
pub async fn run(replica: Arc<Replica>, shutdown: CancellationToken) {
    let mut views = replica.system.subscribe_view();
    let mut tick = tokio::time::interval(replica.system.config().handoff_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            res = views.changed() => if res.is_err() { return },
        }
        deliver(&replica).await;
    }
}

/// One delivery round. Public so that shutdown can push hints one last time.
pub async fn deliver(replica: &Replica) {
    let expired = lock(&replica.hints).expire(Instant::now());
    if expired > 0 {
        Stats::add(&replica.system.stats.hints_dropped, expired as u64);
        info!(
            expired,
            "dropped hints older than the tombstone grace period"
        );
    }
    let view = replica.system.view();
    let targets = lock(&replica.hints).targets();
    for target in targets {
        // A joining target takes its hints too: they are part of what it catches up on.
        if !view.is_up(&target) {
            continue;
        }
        let Some(addr) = view.member(&target).and_then(|m| m.rpc) else {
            continue;
        };
        loop {
            let mut batch = lock(&replica.hints).batch(&target, BATCH);
            if batch.is_empty() {
                break;
            }
            // Keep the message within the frame limit; the rest goes in the next one.
            let budget = replica.transfer_budget();
            batch.truncate(fit(&batch, budget, |(k, vs)| set_size(k, vs)));
            let req = Request::ReplicateMany {
                items: batch.clone(),
            };
            match replica.system.pool.call(addr, req).await {
                Ok(Response::Replicated) => {
                    let mut hints = lock(&replica.hints);
                    let delivered = batch
                        .iter()
                        .filter(|(k, v)| hints.delivered(&target, k, v))
                        .count();
                    drop(hints);
                    Stats::add(&replica.system.stats.hints_delivered, delivered as u64);
                    debug!(%target, delivered, "hints delivered");
                    if delivered == 0 {
                        // Every hint in the batch changed meanwhile; try again next round
                        // rather than spinning on a hot key.
                        break;
                    }
                }
                Ok(other) => {
                    debug!(%target, ?other, "unexpected answer to hint delivery");
                    break;
                }
                Err(err) => {
                    if crate::memory::is_refusal(&err) {
                        // The home is full: the hints wait here until it has room.
                        Stats::incr(&replica.system.stats.copies_paused_memory);
                    }
                    debug!(%target, %err, "hint delivery failed; will retry");
                    break;
                }
            }
        }
    }
}
