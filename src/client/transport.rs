//! How a call reaches a node: key-aware routing when the client knows the ring, round-robin
//! otherwise, and the retry policy (see "Retries" in the module doc of [`crate::client`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use tracing::debug;

use crate::error::{Error, Result};
use crate::http::{CONTEXT_HEADER, EXPIRES_HEADER};

/// The node a client talks to when given none: node 1 of `ringkv dev`.
use super::*;

impl Client {
    /// The order to try the nodes in: those believed up first, in round-robin order, then
    /// the ones that recently refused a connection. The marks are guesses, so with every node
    /// marked the request still goes out.
    pub(super) fn node_order(&self) -> Vec<usize> {
        let nodes = &self.inner.nodes;
        let n = nodes.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let rotation = (0..n).map(|k| (start + k) % n);
        let is_down = |i: usize| nodes[i].down_until_ms.load(Ordering::Relaxed) > now;
        rotation
            .clone()
            .filter(|&i| !is_down(i))
            .chain(rotation.filter(|&i| is_down(i)))
            .collect()
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Sends `call` to the nodes in round-robin order until one answers something other than
    /// a retryable failure. Any answer, 503 included once the retries are spent, is returned
    /// for the caller to interpret.
    pub(super) async fn call(&self, call: &Call<'_>) -> Result<Answer> {
        if let Some(key) = call.key {
            let write = call.method != Method::GET;
            if let Some(base) = Box::pin(self.route(key, write)).await {
                match self.send_to(&base, call).await {
                    // A 503 may be a routing mistake (a view older than the node's): retried
                    // through the given nodes if the request may be sent again.
                    Ok(ans) if ans.status != StatusCode::SERVICE_UNAVAILABLE || !call.retryable => {
                        return Ok(ans);
                    }
                    Ok(_) => {}
                    Err(Failure::NotSent(err)) => {
                        debug!(node = %base, %err, "routed node unreachable; trying the given nodes");
                        self.inner.routes.stale.store(true, Ordering::Relaxed);
                    }
                    Err(Failure::Sent(err)) if !call.retryable => return Err(err),
                    Err(Failure::Sent(_)) => {}
                }
            }
        }
        let nodes = &self.inner.nodes;
        let n = nodes.len();
        let order = self.node_order();
        let mut retries_left = if call.retryable {
            self.inner.read_retries
        } else {
            0
        };
        let mut retried = 0u32;
        // Every node may refuse once, and each retry is one more attempt.
        let attempts = n + retries_left;
        let mut refused = 0;
        // A 503 kept in case the retries run out: the quorum counts are the best answer then.
        let mut unavailable: Option<Answer> = None;
        let mut last_err: Option<Error> = None;
        for attempt in 0..attempts {
            let i = order[attempt % n];
            match self.send_once(i, call).await {
                Ok(ans) if ans.status == StatusCode::SERVICE_UNAVAILABLE && retries_left > 0 => {
                    debug!(node = %nodes[i].base, path = call.path, "503, retrying on the next node");
                    unavailable = Some(ans);
                }
                Ok(ans) => return Ok(ans),
                Err(Failure::NotSent(err)) => {
                    debug!(node = %nodes[i].base, %err, "node unreachable, trying the next one");
                    let until = self.now_ms() + DOWN_COOLDOWN.as_millis() as u64;
                    nodes[i].down_until_ms.store(until, Ordering::Relaxed);
                    last_err = Some(err);
                    refused += 1;
                    if refused >= n {
                        break;
                    }
                    continue;
                }
                Err(Failure::Sent(err)) => {
                    if retries_left == 0 {
                        return Err(err);
                    }
                    debug!(node = %nodes[i].base, %err, "request failed after sending, retrying");
                    last_err = Some(err);
                }
            }
            retries_left -= 1;
            retried += 1;
            tokio::time::sleep(RETRY_BACKOFF * retried).await;
        }
        match (unavailable, last_err) {
            (Some(ans), _) => Ok(ans),
            (None, Some(err)) => Err(err),
            (None, None) => Err(Error::Unreachable("no node to send to".into())),
        }
    }

    pub(super) async fn send_once(
        &self,
        i: usize,
        call: &Call<'_>,
    ) -> std::result::Result<Answer, Failure> {
        let node = &self.inner.nodes[i];
        let ans = self.send_to(&node.base, call).await?;
        node.down_until_ms.store(0, Ordering::Relaxed);
        Ok(ans)
    }

    /// One attempt at `base` (`http://host:port`).
    pub(super) async fn send_to(
        &self,
        base: &str,
        call: &Call<'_>,
    ) -> std::result::Result<Answer, Failure> {
        let url = format!("{base}{}", call.path);
        let mut req = Request::builder().method(call.method.clone()).uri(&url);
        if let Some(ctx) = call.context {
            req = req.header(CONTEXT_HEADER, ctx.as_str());
        }
        for (name, value) in &call.headers {
            req = req.header(name, value);
        }
        if let Some(auth) = &self.inner.authorization {
            req = req.header(hyper::header::AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Full::new(call.body.clone()))
            .map_err(|e| Failure::NotSent(Error::invalid(format!("bad request {url}: {e}"))))?;
        let exchange = async {
            let resp = self.inner.http.request(req).await.map_err(|e| {
                let why = causes(&e);
                if e.is_connect() {
                    Failure::NotSent(Error::Unreachable(format!("{base}: {why}")))
                } else if url.starts_with("http://") && why.contains("invalid HTTP version") {
                    // A TLS port answers a plain request with a TLS alert, which is no HTTP:
                    // nothing was served.
                    Failure::NotSent(Error::invalid(format!(
                        "{base} serves HTTPS: use https:// and --ca-cert"
                    )))
                } else {
                    Failure::Sent(Error::Interrupted(format!("{url}: {why}")))
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| Failure::Sent(Error::Interrupted(format!("{url}: answer: {e}"))))?
                .to_bytes();
            let header = |name| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v: &HeaderValue| v.to_str().ok())
                    .map(str::to_string)
            };
            Ok(Answer {
                status: parts.status,
                context: header(CONTEXT_HEADER).and_then(|s| s.parse().ok()),
                allow: header(ALLOW.as_str()),
                content_type: header(CONTENT_TYPE.as_str()),
                expires_at: header(EXPIRES_HEADER),
                ring: header(crate::http::RING_HEADER),
                body,
            })
        };
        let ans = tokio::time::timeout(self.inner.timeout, exchange)
            .await
            .map_err(|_| Failure::Sent(Error::Timeout))??;
        self.note_ring_version(ans.ring.as_deref());
        Ok(ans)
    }

    /// Marks the routes stale if an answer names another ring version.
    pub(super) fn note_ring_version(&self, version: Option<&str>) {
        let routes = &self.inner.routes;
        let (Some(version), true) = (version, routes.on) else {
            return;
        };
        let current = routes.current.read().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_none_or(|r| r.version != version) {
            routes.stale.store(true, Ordering::Relaxed);
        }
    }

    /// The node a keyed request should go to first, if the client routes and knows the ring:
    /// a write to the key's first serving home (its coordinator), a read to its serving homes
    /// in turn.
    pub(super) async fn route(&self, key: &[u8], write: bool) -> Option<String> {
        let routes = &self.inner.routes;
        if !routes.on {
            return None;
        }
        if routes.stale.load(Ordering::Relaxed)
            && let Ok(_fetching) = routes.fetching.try_lock()
        {
            routes.stale.store(false, Ordering::Relaxed);
            self.fetch_routes().await;
        }
        let current = routes
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let homes = current.homes(key);
        let pick = match (write, homes.len()) {
            (_, 0) => return None,
            (true, _) => 0,
            (false, n) => routes.turn.fetch_add(1, Ordering::Relaxed) % n,
        };
        Some(format!("{}://{}", self.inner.scheme, homes[pick]))
    }

    /// The ring as a key-aware client routes by it (`GET /cluster/ring`).
    pub async fn ring(&self) -> Result<crate::client::ring::Routes> {
        let body = self.get_json("/cluster/ring").await?;
        crate::client::ring::Routes::from_json(&body)
    }

    /// Fetches `GET /cluster/ring` through the given nodes; on failure routing waits for the
    /// next version change (answers keep coming from the given nodes meanwhile).
    pub(super) async fn fetch_routes(&self) {
        let call = Call {
            method: Method::GET,
            path: "/cluster/ring",
            body: Bytes::new(),
            context: None,
            headers: Vec::new(),
            retryable: true,
            key: None,
        };
        let fetched = match self.call(&call).await {
            Ok(ans) if ans.status == StatusCode::OK => {
                crate::client::ring::Routes::from_json(&ans.body)
            }
            Ok(ans) => Err(Error::Protocol(format!("/cluster/ring: {}", ans.status))),
            Err(err) => Err(err),
        };
        match fetched {
            Ok(routes) => {
                *self
                    .inner
                    .routes
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(routes));
            }
            Err(err) => debug!(%err, "key-aware routing: no ring; sending to the given nodes"),
        }
    }
}
