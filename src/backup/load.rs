//! `ringkv restore`: verifies a backup file, then merges its keys into a ring in batches.

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::Method;

use super::Loaded;
use super::format::{Damage, Header, Reader};
use super::progress::Progress;
use crate::client::Client;
use crate::clock::system_ms;
use crate::error::{Error, Result};
use crate::version::VersionSet;

/// Keys per restore batch: a batch costs one request to its node and one message to each
/// home, so larger batches cost fewer round trips, up to where a batch's merge holds a
/// replica's shard locks long enough to be felt by live traffic.
pub const BATCH_KEYS: usize = 1000;

/// A batch is sent once its keys and values pass this many bytes, whatever its key count.
pub const BATCH_BYTES: usize = 1024 * 1024;

/// Batches in flight at once, over all nodes: enough to keep every node of a small ring
/// merging while the client reads the file.
pub const PARALLEL_BATCHES: usize = 8;

/// Attempts per batch. A batch is sent again after a 503 (a home was down or busy), a
/// timeout or a broken connection: merging it twice changes nothing.
pub const ATTEMPTS: u32 = 6;

/// The pause before attempt *k* is `k` times this.
const BACKOFF: Duration = Duration::from_millis(250);

/// How a restore runs.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// A progress line on stderr.
    pub progress: bool,
    /// The file's record count, if a verification pass found it: for the ETA.
    pub expected: Option<u64>,
}

/// What a file holds, or what a restore did.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    pub header: Header,
    /// Records read.
    pub records: u64,
    /// Keys written to the ring (0 for a verification).
    pub written: u64,
    /// Records skipped because every version had expired.
    pub expired: u64,
    /// Bytes read.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Where the file was found damaged, if it was: the records before it were read (and,
    /// with `--force`, written).
    pub damage: Option<Damage>,
}

/// Reads a whole file and verifies it: its summary, with the records that have expired by
/// now counted.
pub fn verify(input: impl Read) -> std::result::Result<RestoreSummary, Damage> {
    let started = Instant::now();
    let (mut reader, header) = Reader::open(input)?;
    let now = system_ms();
    let mut expired = 0;
    while let Some((_, versions)) = reader.next_record()? {
        if versions.live(now).next().is_none() {
            expired += 1;
        }
    }
    let totals = reader.totals();
    Ok(RestoreSummary {
        header,
        records: totals.records,
        written: 0,
        expired,
        bytes: totals.bytes,
        elapsed: started.elapsed(),
        damage: None,
    })
}

/// Merges every record of `input` into the ring `client` reaches, sending each batch to the
/// first home of its keys. Stops reading at the first damage, writes what came before it,
/// and reports it in the summary; a damaged header is an error before anything is written.
/// Fails if a batch cannot be written after [`ATTEMPTS`] tries.
pub async fn restore(
    client: &Client,
    input: impl Read,
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let routes = client.ring().await?;
    let (mut reader, header) = Reader::open(input)?;
    let mut progress = Progress::new("restore", opts.progress, opts.expected);
    let now = system_ms();
    let (mut records, mut expired, mut written) = (0u64, 0u64, 0u64);
    let mut pending: HashMap<Option<String>, Batch> = HashMap::new();
    let mut inflight = FuturesUnordered::new();
    let damage = loop {
        let (key, versions) = match reader.next_record() {
            Ok(Some(record)) => record,
            Ok(None) => break None,
            Err(damage) => break Some(damage),
        };
        records += 1;
        if versions.live(now).next().is_none() {
            expired += 1;
            continue;
        }
        let node = routes.homes(&key).first().map(|h| client.base_of(h));
        let batch = pending.entry(node.clone()).or_default();
        batch.bytes += crate::replica::set_size(&key, &versions);
        batch.items.push((key, versions));
        if batch.items.len() >= BATCH_KEYS || batch.bytes >= BATCH_BYTES {
            let items = std::mem::take(batch).items;
            inflight.push(send(client, node, items));
            while inflight.len() >= PARALLEL_BATCHES {
                if let Some(done) = inflight.next().await {
                    written += done?;
                    progress.update(written, reader.offset());
                }
            }
        }
    };
    for (node, batch) in pending {
        if !batch.items.is_empty() {
            inflight.push(send(client, node, batch.items));
        }
    }
    while let Some(done) = inflight.next().await {
        written += done?;
    }
    progress.done(written, reader.offset());
    Ok(RestoreSummary {
        header,
        records,
        written,
        expired,
        bytes: reader.offset(),
        elapsed: started.elapsed(),
        damage,
    })
}

#[derive(Default)]
struct Batch {
    items: Vec<(Bytes, VersionSet)>,
    bytes: usize,
}

/// Sends one batch to `node` (the given nodes if `None`, or once `node` cannot be reached),
/// again after a failure that another try may mend. The keys written.
async fn send(
    client: &Client,
    node: Option<String>,
    items: Vec<(Bytes, VersionSet)>,
) -> Result<u64> {
    let body = Bytes::from(
        rmp_serde::to_vec(&items).map_err(|e| Error::Protocol(format!("cannot encode: {e}")))?,
    );
    let mut node = node;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let answer = client
            .bulk(
                node.as_deref(),
                Method::POST,
                "/admin/restore",
                body.clone(),
            )
            .await;
        let err = match answer {
            Ok(body) => {
                let loaded: Loaded = serde_json::from_slice(&body)
                    .map_err(|e| Error::Protocol(format!("bad /admin/restore answer: {e}")))?;
                return Ok(loaded.keys);
            }
            Err(err) => err,
        };
        // A node of a build before backups answers 404: the given nodes may be newer.
        let older_build = matches!(err, Error::NotFound(_)) && node.is_some();
        let again = older_build
            || matches!(
                err,
                Error::Unavailable { .. }
                    | Error::Unreachable(_)
                    | Error::Timeout
                    | Error::Interrupted(_)
            );
        if !again || attempt >= ATTEMPTS {
            return Err(err);
        }
        if older_build || matches!(err, Error::Unreachable(_)) {
            node = None;
        }
        tokio::time::sleep(BACKOFF * attempt).await;
    }
}
