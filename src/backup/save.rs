//! `ringkv backup`: copies a live ring, segment by segment, into a [`Writer`].

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::Method;
use percent_encoding::{NON_ALPHANUMERIC, percent_encode};

use super::SegmentPage;
use super::format::{Header, Writer};
use super::progress::Progress;
use crate::client::{Client, is_denied};
use crate::clock::system_ms;
use crate::error::{Error, Result};
use crate::ring::Segment;
use crate::version::VersionSet;

/// Segments fetched at once. Each costs a request per home in flight and a segment's keys in
/// memory; eight keep two cores busy merging while the nodes answer.
pub const PARALLEL_SEGMENTS: usize = 8;

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Only keys under this prefix.
    pub prefix: Option<Bytes>,
    /// A progress line on stderr.
    pub progress: bool,
}

/// What a backup wrote.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub header: Header,
    /// Keys written.
    pub keys: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// Segments read.
    pub segments: usize,
    pub elapsed: Duration,
}

/// Copies every live key of the ring `client` reaches into `out`, and returns it with what
/// was written. Fails, naming the hash ranges, if some segment has no home that answered;
/// the file then has no trailer, so no restore takes it.
pub async fn backup<W: Write>(
    client: &Client,
    out: W,
    opts: &BackupOptions,
) -> Result<(W, BackupSummary)> {
    let started = Instant::now();
    let routes = client.ring().await?;
    let header = Header {
        cluster_id: routes.cluster_id.clone(),
        replicas: routes.replicas(),
        created_ms: system_ms(),
        ringkv: crate::compat::VERSION.to_string(),
        nodes: routes.nodes().iter().map(|n| n.to_string()).collect(),
        prefix: opts.prefix.clone(),
    };
    let expected = if opts.prefix.is_none() {
        expected_keys(client, routes.replicas()).await
    } else {
        None
    };
    let mut progress = Progress::new("backup", opts.progress, expected);
    let mut writer = Writer::new(out, &header)?;
    let segments = routes.segments();
    let count = segments.len();
    let prefix = opts.prefix.clone().unwrap_or_default();
    let mut fetches = futures_util::stream::iter(segments)
        .map(|(seg, homes)| fetch_segment(client, seg, homes, &prefix))
        .buffered(PARALLEL_SEGMENTS);
    let mut failed: Vec<String> = Vec::new();
    while let Some(fetched) = fetches.next().await {
        match fetched {
            Ok(keys) => {
                for (key, versions) in &keys {
                    writer.record(key, versions)?;
                }
                let t = writer.totals();
                progress.update(t.records, t.bytes);
            }
            Err(Fetch::Denied(err)) => return Err(err),
            Err(Fetch::NoHome(range)) => failed.push(range),
        }
    }
    if !failed.is_empty() {
        let shown: Vec<&str> = failed.iter().take(5).map(String::as_str).collect();
        return Err(Error::Unreachable(format!(
            "no home replica answered for {} of {count} ring segments, so the backup is \
             incomplete and was not finished: {}{}",
            failed.len(),
            shown.join("; "),
            if failed.len() > shown.len() {
                "; ..."
            } else {
                ""
            }
        )));
    }
    let (out, totals) = writer.finish()?;
    progress.done(totals.records, totals.bytes);
    Ok((
        out,
        BackupSummary {
            header,
            keys: totals.records,
            bytes: totals.bytes,
            segments: count,
            elapsed: started.elapsed(),
        },
    ))
}

/// Why a segment could not be read.
enum Fetch {
    /// A node refused the token: no other would take it.
    Denied(Error),
    /// No home answered: the range, and why each failed.
    NoHome(String),
}

/// Every live key of `seg`: each serving home's copies, merged by causality, in ring order.
async fn fetch_segment(
    client: &Client,
    seg: Segment,
    homes: Vec<String>,
    prefix: &[u8],
) -> std::result::Result<Vec<(Bytes, VersionSet)>, Fetch> {
    let mut merged: BTreeMap<(u64, Bytes), VersionSet> = BTreeMap::new();
    let mut answered = 0;
    let mut why = Vec::new();
    for home in &homes {
        match read_home(client, home, &seg, prefix, &mut merged).await {
            Ok(()) => answered += 1,
            Err(err) if is_denied(&err) => return Err(Fetch::Denied(err)),
            Err(err) => why.push(format!("{home}: {err}")),
        }
    }
    if answered == 0 {
        if homes.is_empty() {
            why.push("no home replica serves".into());
        }
        return Err(Fetch::NoHome(format!(
            "hashes ({}, {}] ({})",
            seg.start,
            seg.end,
            why.join(", ")
        )));
    }
    let now = system_ms();
    Ok(merged
        .into_iter()
        .filter(|(_, vs)| vs.live(now).next().is_some())
        .map(|((_, key), vs)| (key, vs))
        .collect())
}

/// Merges every page of one home's copies of `seg` into `merged`.
async fn read_home(
    client: &Client,
    home: &str,
    seg: &Segment,
    prefix: &[u8],
    merged: &mut BTreeMap<(u64, Bytes), VersionSet>,
) -> Result<()> {
    let base = client.base_of(home);
    let mut after: Option<(u64, Bytes)> = None;
    loop {
        let mut path = format!("/admin/backup?start={}&end={}", seg.start, seg.end);
        if !prefix.is_empty() {
            path.push_str(&format!(
                "&prefix={}",
                percent_encode(prefix, NON_ALPHANUMERIC)
            ));
        }
        if let Some((hash, key)) = &after {
            path.push_str(&format!(
                "&after_hash={hash}&after_key={}",
                percent_encode(key, NON_ALPHANUMERIC)
            ));
        }
        let body = client
            .bulk(Some(&base), Method::GET, &path, Bytes::new())
            .await?;
        let page: SegmentPage = rmp_serde::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("{home}: bad backup page: {e}")))?;
        for (key, versions) in page.entries {
            let hash = crate::ring::key_hash(&key);
            match merged.entry((hash, key)) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(versions);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    o.get_mut().merge(&versions);
                }
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(()),
        }
    }
}

/// The ring's live keys as its nodes count them (each key once per replica), for the ETA;
/// `None` if the status cannot be had.
async fn expected_keys(client: &Client, replicas: usize) -> Option<u64> {
    let status = client.cluster_status().await.ok()?;
    let copies: u64 = status["members"]
        .as_array()?
        .iter()
        .filter_map(|m| m["stats"]["keys"].as_u64())
        .sum();
    Some(copies / replicas.max(1) as u64)
}
