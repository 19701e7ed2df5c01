//! The simulated disk ([`ringkv::store::Disk`]): what a killed node finds when it restarts.
//!
//! Records a node logs wait in memory until a barrier's simulated fsync (one millisecond)
//! makes them durable; a crash loses whatever was not, as a real one loses the page cache.
//! No files and no threads: a seed still replays its run. It lives in the harness, outside
//! the host, so it survives the host's crash.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use ringkv::store::{Disk, Log, Record, WalStats};

/// How long a simulated fsync takes.
pub const FSYNC: Duration = Duration::from_millis(1);

/// One node's disk; clones share it.
#[derive(Debug, Default, Clone)]
pub struct SimDisk(Arc<Mutex<Platter>>);

#[derive(Debug, Default)]
struct Platter {
    durable: Vec<Record>,
    /// Appended, not yet synced: lost by a crash.
    cached: Vec<Record>,
    starts: usize,
    /// Records restarts found.
    recovered: usize,
}

impl SimDisk {
    /// How many records restarts (not the first start) read back.
    pub fn recovered(&self) -> usize {
        self.0.lock().unwrap().recovered
    }
}

#[derive(Debug)]
struct SimLog {
    platter: Arc<Mutex<Platter>>,
    stats: WalStats,
}

impl Disk for SimDisk {
    fn recover(&self) -> Vec<Record> {
        let mut p = self.0.lock().unwrap();
        p.cached.clear();
        p.starts += 1;
        if p.starts > 1 {
            p.recovered += p.durable.len();
        }
        p.durable.clone()
    }

    fn open(&self) -> Arc<dyn Log> {
        Arc::new(SimLog {
            platter: self.0.clone(),
            stats: WalStats::default(),
        })
    }
}

impl Log for SimLog {
    fn append(&self, record: &Record) {
        self.platter.lock().unwrap().cached.push(record.clone());
    }

    fn barrier(&self) -> BoxFuture<'_, ringkv::Result<()>> {
        Box::pin(async move {
            tokio::time::sleep(FSYNC).await;
            let mut p = self.platter.lock().unwrap();
            let synced = std::mem::take(&mut p.cached);
            p.durable.extend(synced);
            Ok(())
        })
    }

    fn error(&self) -> Option<String> {
        None
    }

    fn stats(&self) -> &WalStats {
        &self.stats
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}
