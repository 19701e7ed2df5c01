//! The node's side of backup and restore: a page of one segment's copies from the store
//! (`GET /admin/backup`), and a batch merged into its keys' home replicas
//! (`POST /admin/restore`).

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::{Loaded, SegmentPage};
use crate::error::{Error, Result};
use crate::replica::{Replica, fit, set_size};
use crate::ring::{NodeId, Segment, shard_of};
use crate::rpc::{ANSWER_BUDGET, Request, Response};
use crate::store::Store;
use crate::system::System;
use crate::version::VersionSet;

/// Most keys in one page: with small values the byte budget ([`ANSWER_BUDGET`]) would let a
/// page hold tens of thousands, and the client merges a page at a time.
pub const PAGE_KEYS: usize = 4096;

/// Keys taken from the store per lock hold while a page is gathered: writes to the shard
/// wait for one chunk at most.
const SCAN_CHUNK: usize = 512;

/// This node's copies of the keys in the hash range `(start, end]` after `after`, those under
/// `prefix` only, up to a page. The range must lie in one store shard, as every ring segment
/// does: a client that cuts the ring as the nodes do never asks for another.
pub fn segment_page(
    store: &Store,
    start: u64,
    end: u64,
    after: Option<(u64, Bytes)>,
    prefix: &[u8],
) -> Result<SegmentPage> {
    let first = start.wrapping_add(1);
    if first > end || shard_of(first) != shard_of(end) {
        return Err(Error::invalid(format!(
            "({start}, {end}] is not a ring segment: cut the ring with GET /cluster/ring"
        )));
    }
    if let Some((hash, _)) = &after
        && !(first..=end).contains(hash)
    {
        return Err(Error::invalid(format!(
            "after_hash {hash} is outside the segment ({start}, {end}]"
        )));
    }
    let seg = Segment {
        start,
        end,
        homes: Vec::new(),
    };
    let mut cursor = after;
    let mut page = SegmentPage::default();
    let mut size = 0;
    loop {
        let batch = store.segment_batch(&seg, cursor.as_ref(), SCAN_CHUNK);
        if batch.is_empty() {
            return Ok(page);
        }
        for ((hash, key), versions) in batch {
            cursor = Some((hash, key.clone()));
            if key.starts_with(prefix) {
                size += set_size(&key, &versions);
                page.entries.push((key, versions));
            }
            if size >= ANSWER_BUDGET || page.entries.len() >= PAGE_KEYS {
                page.next = cursor;
                return Ok(page);
            }
        }
    }
}

/// Merges every key of `items` into each of its home replicas that is up, and answers once
/// each key is held by W of them; otherwise [`Error::Unavailable`] (the client sends the
/// batch again: merging twice changes nothing), or the memory refusal of a full home.
pub async fn load(
    system: &System,
    replica: &Replica,
    items: Vec<(Bytes, VersionSet)>,
) -> Result<Loaded> {
    let view = system.view();
    let quorums = system.quorums();
    let mut per_home: HashMap<NodeId, Vec<usize>> = HashMap::new();
    for (i, (key, _)) in items.iter().enumerate() {
        for home in view.ring.preference_list(key, quorums.replicas) {
            per_home.entry(home).or_default().push(i);
        }
    }
    let mut calls = FuturesUnordered::new();
    for (home, idxs) in &per_home {
        let local = *home == system.id;
        let addr = match view.member(home).and_then(|m| m.rpc) {
            _ if local => None,
            Some(addr) if view.is_up(home) => Some(addr),
            _ => continue,
        };
        // One message per transfer budget, as handoff sends them: each fits a frame.
        let mut rest = &idxs[..];
        while !rest.is_empty() {
            let take = fit(rest, replica.transfer_budget(), |&i| {
                set_size(&items[i].0, &items[i].1)
            });
            let (chunk, after) = rest.split_at(take);
            rest = after;
            let batch: Vec<(Bytes, VersionSet)> = chunk.iter().map(|&i| items[i].clone()).collect();
            calls.push(async move {
                let answer = match addr {
                    None => replica.serve_replicate_many(batch).await,
                    Some(addr) => {
                        system
                            .pool
                            .call(addr, Request::ReplicateMany { items: batch })
                            .await
                    }
                };
                (chunk, answer)
            });
        }
    }
    let mut acks = vec![0usize; items.len()];
    let mut refusal = None;
    while let Some((chunk, answer)) = calls.next().await {
        match answer {
            Ok(Response::Replicated) => chunk.iter().for_each(|&i| acks[i] += 1),
            Err(err) if crate::memory::is_refusal(&err) => refusal = Some(err),
            _ => {}
        }
    }
    let least = acks.iter().copied().min().unwrap_or(quorums.write);
    if least >= quorums.write {
        return Ok(Loaded {
            keys: items.len() as u64,
        });
    }
    Err(refusal.unwrap_or(Error::Unavailable {
        replied: least,
        required: quorums.write,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Ring, key_hash};
    use crate::version::Actor;

    fn store_with(n: usize) -> Store {
        let store = Store::new();
        for i in 0..n {
            let key = Bytes::from(format!("key-{i}"));
            let mut vs = VersionSet::new();
            vs.write(&Actor::new("n1", 1), None, Some(Bytes::from_static(b"v")));
            store.merge_owned(&key, vs);
        }
        store
    }

    /// Paging through every segment of a ring returns each key once, in its segment.
    #[test]
    fn pages_of_every_segment_cover_every_key_once() {
        let store = store_with(3000);
        let ring = Ring::new(["a", "b", "c"].map(NodeId::from), 8);
        let mut seen = Vec::new();
        for seg in ring.segments(2) {
            let mut after = None;
            loop {
                let page = segment_page(&store, seg.start, seg.end, after, b"").unwrap();
                for (key, _) in &page.entries {
                    let h = key_hash(key);
                    assert!(seg.start == u64::MAX || h > seg.start);
                    assert!(h <= seg.end);
                    seen.push(key.clone());
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        seen.sort();
        let before = seen.len();
        seen.dedup();
        assert_eq!((before, seen.len()), (3000, 3000));
    }

    #[test]
    fn a_prefix_filters_and_paging_still_moves_on() {
        let store = store_with(20_000);
        let ring = Ring::new(["a"].map(NodeId::from), 1);
        let mut found = 0;
        for seg in ring.segments(1) {
            let mut after = None;
            loop {
                let page = segment_page(&store, seg.start, seg.end, after, b"key-1999").unwrap();
                found += page.entries.len();
                assert!(page.entries.iter().all(|(k, _)| k.starts_with(b"key-1999")));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        // key-1999 and key-19990..=key-19999.
        assert_eq!(found, 11);
    }

    #[test]
    fn a_range_that_is_no_segment_is_refused() {
        let store = Store::new();
        assert!(segment_page(&store, 10, 5, None, b"").is_err());
        assert!(segment_page(&store, 0, u64::MAX, None, b"").is_err());
        assert!(segment_page(&store, 10, 20, Some((30, Bytes::new())), b"").is_err());
        assert!(
            segment_page(&store, 10, 20, None, b"")
                .unwrap()
                .entries
                .is_empty()
        );
    }
}
