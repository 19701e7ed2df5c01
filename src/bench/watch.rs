//! `ringkv bench --watch`: the latency from a write to its watch event.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use rand::RngExt;
use serde::Serialize;
use tokio::time::Instant;

use super::*;
use crate::client::normalize_url;
use crate::error::{Error, Result};

/// What `ringkv bench --watch` measured.
#[derive(Debug, Clone, Serialize)]
pub struct WatchSummary {
    pub writes: u64,
    /// Events received for those writes.
    pub events: u64,
    /// Writes whose event never came (within 2 s after the last write).
    pub missed: u64,
    /// Events that arrived before the PUT's response did (counted as 0 µs).
    pub before_response: u64,
    pub writer_nodes: Vec<String>,
    pub watcher_node: String,
    /// From each PUT's response to its event's arrival.
    pub latency_us: Latency,
}

impl fmt::Display for WatchSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_us;
        writeln!(
            f,
            "watch latency: {} writes through {}, watched on {}",
            self.writes,
            self.writer_nodes.join(", "),
            self.watcher_node
        )?;
        writeln!(
            f,
            "  events {}  missed {}  before the response {}",
            self.events, self.missed, self.before_response
        )?;
        writeln!(
            f,
            "  PUT response -> event (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            l.p50 as f64 / 1000.0,
            l.p90 as f64 / 1000.0,
            l.p99 as f64 / 1000.0,
            l.max as f64 / 1000.0
        )
    }
}

/// Runs `ringkv bench --watch` (see [`BenchArgs::watch`]).
pub async fn watch_latency(args: &BenchArgs) -> Result<WatchSummary> {
    use futures_util::StreamExt;
    use std::collections::HashMap;
    use std::sync::Mutex;

    let nodes: Vec<String> = args
        .nodes
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| normalize_url(u))
        .collect::<Result<_>>()?;
    let Some(watcher_node) = nodes.last().cloned() else {
        return Err(Error::invalid("give at least one --node"));
    };
    let writers: Vec<String> = if nodes.len() > 1 {
        nodes[..nodes.len() - 1].to_vec()
    } else {
        nodes.clone()
    };
    let rate = args.rate.unwrap_or(200.0);
    if !(rate.is_finite() && rate > 0.0) {
        return Err(Error::invalid("--rate must be a positive number"));
    }
    let writes = args.ops.unwrap_or(2000);
    let run = rand::rng().random::<u32>();
    let prefix = format!("watchbench-{run:08x}/");

    let url = format!(
        "{}/watch?prefix={prefix}",
        watcher_node.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| Error::Unreachable(format!("websocket to {watcher_node}: {e}")))?;
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let reader = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let at = Instant::now();
                let tokio_tungstenite::tungstenite::Message::Text(text) = msg else {
                    continue;
                };
                if let Ok(ev) = serde_json::from_str::<serde_json::Value>(&text)
                    && ev["op"] == "put"
                    && let Some(key) = ev["key"].as_str()
                {
                    arrivals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.to_string(), at);
                }
            }
        })
    };
    let mut conns = Vec::new();
    for base in &writers {
        conns.push(Conn::open(Target::resolve(base, &args.token).await?).await?);
    }
    let value = Bytes::from(vec![b'w'; args.value_size]);
    let mut responses: Vec<(String, Instant)> = Vec::with_capacity(writes as usize);
    let start = Instant::now();
    for i in 0..writes {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let key = format!("{prefix}{i:08}");
        let conn = &mut conns[i as usize % writers.len()];
        match conn
            .send(Method::PUT, &format!("/kv/{key}"), value.clone())
            .await
        {
            Ok(StatusCode::NO_CONTENT) => responses.push((key, Instant::now())),
            Ok(status) => return Err(Error::invalid(format!("PUT answered {status}"))),
            Err(failure) => return Err(Error::Unreachable(failure.kind().to_string())),
        }
    }
    // Give the last events time to arrive, then stop listening.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let got = crate::lock(&arrivals).len();
        if got >= responses.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    let arrivals = crate::lock(&arrivals).clone();
    let mut h = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| Error::invalid(format!("histogram: {e:?}")))?;
    let (mut events, mut before) = (0, 0);
    for (key, responded) in &responses {
        if let Some(arrived) = arrivals.get(key) {
            events += 1;
            if arrived < responded {
                before += 1;
            }
            let us = arrived.saturating_duration_since(*responded).as_micros() as u64;
            h.saturating_record(us.max(1));
        }
    }
    Ok(WatchSummary {
        writes,
        events,
        missed: writes - events,
        before_response: before,
        writer_nodes: writers,
        watcher_node,
        latency_us: Latency::of(&h),
    })
}
