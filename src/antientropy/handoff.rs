//! Ownership handoff: keys of segments this node no longer owns go to their homes, and are
//! dropped here once every home acknowledged them unchanged.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tracing::info;

use super::*;
use crate::replica::{fit, set_size};
use crate::rpc::{Request, Response};
use crate::stats::Stats;
use crate::version::VersionSet;

/// Pushes keys of segments this node no longer owns to their homes, then drops them.
pub(super) async fn handoff_orphans(ae: &Arc<AntiEntropy>, segs: &Segments, pacer: &mut Pacer) {
    let view = ae.system.view();
    let me = ae.system.id();
    let mut handed = 0usize;
    for seg in &segs.list {
        if seg.homes.is_empty() || seg.homes.iter().any(|h| h == me) {
            continue;
        }
        // No tree here (this node is no home of it): look for a key in the range instead.
        if ae.replica.store.segment_batch(seg, None, 1).is_empty() {
            continue;
        }
        // Every home must be up to confirm; otherwise keep the keys for a later round.
        let Some(addrs): Option<Vec<SocketAddr>> = seg
            .homes
            .iter()
            .map(|h| view.is_up(h).then(|| view.member(h)?.rpc).flatten())
            .collect()
        else {
            continue;
        };
        let mut after = None;
        loop {
            let mut batch = ae.replica.store.segment_batch(seg, after.as_ref(), 256);
            let fits = fit(&batch, ae.replica.transfer_budget(), |((_, k), vs)| {
                set_size(k, vs)
            });
            batch.truncate(fits);
            let Some((last, _)) = batch.last() else {
                break;
            };
            after = Some(last.clone());
            let items: Vec<(Bytes, VersionSet)> =
                batch.into_iter().map(|((_, k), vs)| (k, vs)).collect();
            let mut all_acked = true;
            for addr in &addrs {
                let req = Request::ReplicateMany {
                    items: items.clone(),
                };
                match call(ae, *addr, req, pacer).await {
                    Ok(Response::Replicated) => {}
                    other => {
                        if let Err(err) = &other
                            && crate::memory::is_refusal(err)
                        {
                            // The new owner is full: the keys stay here until it has room.
                            Stats::incr(&ae.system.stats.copies_paused_memory);
                        }
                        all_acked = false;
                        break;
                    }
                }
            }
            if !all_acked {
                break;
            }
            for (key, vs) in &items {
                if ae.replica.store.remove_if(key, vs.fingerprint(key)) {
                    handed += 1;
                }
            }
            if handed >= MAX_KEYS_PER_ROUND {
                break;
            }
        }
    }
    if handed > 0 {
        Stats::add(&ae.system.stats.ae_keys_handed_off, handed as u64);
        info!(keys = handed, "handed off keys this node no longer owns");
    }
}
