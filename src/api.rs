//! The HTTP API every node serves (hyper 1, HTTP/1.1 with keep-alive).
//!
//! This is the only place that chooses HTTP status codes: [`status_of`] maps each
//! [`Error`] variant to one. Every error body is JSON, `{"error": message, "kind":
//! Error::kind, ...}` ([`error_body`]).
//!
//! Routes:
//!
//! | method | path | what |
//! |---|---|---|
//! | PUT | `/kv/{key}` | write the body; `?w=`, `?pw=`, `?ttl=`, `?if_absent=true`; `x-ringkv-context`, `if-match`, `content-type` |
//! | GET | `/kv/{key}` | 200 value, 300 siblings, 404; `?r=`; `x-ringkv-expires-at` |
//! | DELETE | `/kv/{key}` | write a tombstone; `?w=`; `x-ringkv-context`, `if-match` |
//! | GET | `/kv?prefix=&limit=&after=` | live keys, sorted, paged: `{"keys": [...], "next": cursor or null}` |
//! | GET | `/watch?prefix=` | WebSocket: one JSON message per change under the prefix |
//! | GET | `/` | the status page |
//! | GET | `/cluster/status` | every member's status, build, stats and ring arcs, for the status page; the ring's active features |
//! | GET | `/cluster/members` | members with status, addresses, generation, build version, protocol range and features; the ring's active features |
//! | GET | `/cluster/ring` | the ring for key-aware clients: version, N, vnodes, nodes with HTTP address, serving, tokens |
//! | GET | `/cluster/replicas/{key}` | the key's N home nodes in preference order, each with its zone: `{"key", "replicas": [{"id", "zone"}]}` |
//! | GET | `/admin/local/{key}` | what this node stores for the key, no coordination |
//! | POST | `/cluster/leave` | decommission this node: hand its data over, then exit |
//! | GET | `/admin/stats` | this node's counters |
//! | GET, DELETE | `/admin/stages` | where requests' time goes, by stage: count and percentiles in µs since the last DELETE ([`crate::stages`]) |
//! | GET | `/metrics` | Prometheus / OpenMetrics text |
//! | GET | `/health` | liveness: 200 as soon as the process serves HTTP |
//! | GET | `/ready` | readiness: 200 when the node can serve requests, else 503 with a reason ([`crate::readiness`]) |
//!
//! A key is the percent-decoded rest of the path after `/kv/`, so it may contain `/`, and is
//! 1 to 1024 bytes of arbitrary binary.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::net::Listener;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    ACCEPT, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, IF_MATCH,
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use percent_encoding::percent_decode_str;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::access::{Decision, TokenFile};
use crate::config::{DEFAULT_LIST_LIMIT, MAX_KEY_BYTES, MAX_LIST_LIMIT, MAX_TTL_SECS};
use crate::coordinator::Write;
use crate::error::{Error, Result};
use crate::membership::{Member, Status, View};
use crate::metrics::HttpMetrics;
use crate::node::Node;
use crate::stages::Stage;
use crate::ttl::rfc3339;
use crate::version::{Condition, Context, Meta, VersionSet};

/// Header carrying an opaque causal context, in both directions.
pub const CONTEXT_HEADER: &str = "x-ringkv-context";

/// Header carrying a value's expiry (RFC 3339) on reads.
pub const EXPIRES_HEADER: &str = "x-ringkv-expires-at";

/// The status page, embedded in the binary.
const STATUS_PAGE: &str = include_str!("status.html");

/// Values smaller than this are copied out of hyper's read buffer before they are stored, so a
/// 100-byte value does not pin the whole multi-kilobyte buffer it arrived in.
const COMPACT_BELOW: usize = 64 * 1024;

type Body = Full<Bytes>;

/// Serves HTTP on `listener` until `shutdown` fires.
pub async fn serve(
    listener: Box<dyn Listener>,
    node: Arc<Node>,
    security: Security,
    stop: Stop,
    tracker: TaskTracker,
) {
    let http = Arc::new(Http {
        metrics: HttpMetrics::default(),
        tokens: security.tokens,
    });
    let config = &node.cluster.config;
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_http_connections));
    let header_timeout = config.http_header_timeout;
    let simulated = config.clock.is_simulated();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.drain.cancelled() => return,
            _ = stop.kill.cancelled() => return,
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(err) => {
                    warn!(%err, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Past the cap, a connection is closed at once: the client sees a reset at once
        // rather than waiting in the backlog, and the node's memory stays bounded.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::stats::Stats::incr(&node.stats().http_connections_refused);
            drop(stream);
            continue;
        };
        let node = node.clone();
        let http = http.clone();
        let stop = stop.clone();
        let tls = security.tls.clone();
        tracker.spawn(async move {
            let _slot = slot;
            http.metrics.connections.inc();
            let _open = decrement_on_drop(&http.metrics.connections);
            let stream: Box<dyn crate::net::Stream> = match tls {
                None => stream,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(tls)) => Box::new(TlsStream(tls)),
                        Ok(Err(err)) => {
                            crate::stats::Stats::incr(&node.stats().tls_handshakes_failed);
                            debug!(%peer, %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            crate::stats::Stats::incr(&node.stats().tls_handshakes_failed);
                            return;
                        }
                    }
                }
            };
            let svc = service_fn(move |req| {
                let (node, http) = (node.clone(), http.clone());
                async move { Ok::<_, Infallible>(handle(node, http, req).await) }
            });
            // The timer arms hyper's header-read timeout. It runs whenever the connection
            // waits for a request's headers, idle keep-alive included, so neither a client
            // that never finishes its headers (slowloris) nor an idle one holds a slot for
            // ever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                // `Date` reads the system clock: under simulated time it would differ
                // between two runs of one seed.
                .auto_date_header(!simulated)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::pin!(conn);
            let res = tokio::select! {
                biased;
                _ = stop.kill.cancelled() => return,
                _ = stop.drain.cancelled() => {
                    // Finish the request in flight, if any, then close: the client sees a
                    // complete answer and a closed keep-alive connection, never an error.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        biased;
                        _ = stop.kill.cancelled() => return,
                        res = conn => res,
                    }
                }
                res = conn.as_mut() => res,
            };
            if let Err(err) = res {
                debug!(%peer, %err, "http connection ended with an error");
            }
        });
    }
}

/// Decrements `gauge` when dropped: a connection task counts itself out however it ends.
fn decrement_on_drop(gauge: &prometheus_client::metrics::gauge::Gauge) -> impl Drop + use<> {
    struct Dec(prometheus_client::metrics::gauge::Gauge);
    impl Drop for Dec {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(gauge.clone())
}

/// The HTTP port's security: API tokens and TLS, each optional.
#[derive(Clone, Default)]
pub struct Security {
    pub tokens: Option<Arc<TokenFile>>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// A server-side TLS stream as a [`crate::net::Stream`].
struct TlsStream(tokio_rustls::server::TlsStream<crate::net::BoxStream>);

impl crate::net::Stream for TlsStream {
    fn reset_on_drop(&self) -> std::io::Result<()> {
        self.0.get_ref().0.reset_on_drop()
    }
}

impl tokio::io::AsyncRead for TlsStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// What the HTTP layer keeps beside the node.
pub struct Http {
    /// Request counts and latencies.
    pub metrics: HttpMetrics,
    /// With `--api-tokens`: who may use which route ([`crate::access`]).
    pub tokens: Option<Arc<TokenFile>>,
}

impl Http {
    /// Refuses a request whose token does not allow it (401 or 403).
    fn check_access(&self, req: &Request<Incoming>) -> Result<()> {
        let Some(file) = &self.tokens else {
            return Ok(());
        };
        let auth = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        match file
            .tokens()
            .decide(req.method().as_str(), req.uri().path(), auth)
        {
            Decision::Allow => Ok(()),
            Decision::Unauthorized => Err(Error::Unauthorized(
                "send a valid API token: Authorization: Bearer TOKEN".into(),
            )),
            Decision::Forbidden { needs, has } => Err(Error::Forbidden(format!(
                "this needs a {} token; this one is {}",
                needs.name(),
                has.name()
            ))),
        }
    }
}

/// How the HTTP server stops.
#[derive(Clone, Default)]
pub struct Stop {
    /// Stop accepting, let connections finish their request in flight and close.
    pub drain: CancellationToken,
    /// Drop everything now.
    pub kill: CancellationToken,
}

/// Answers one request. Never fails: errors become JSON error responses.
///
/// Each request runs in a `request` tracing span with its id (the client's `x-request-id`
/// if it sent a usable one, else `<node>-<n>`), echoed in the answer's `x-request-id`, and
/// every RPC it causes carries the id on to the other nodes' logs ([`crate::rpc::Trace`]).
pub async fn handle(node: Arc<Node>, http: Arc<Http>, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let label = route_label(req.uri().path());
    let op = method_label(req.method());
    crate::stats::Stats::incr(&node.stats().http_requests);
    let id = request_id(&node, &req);
    // A debug span: at the default level (info) it is never built. Building and entering
    // it on every poll cost 10-15% of a quorum request's CPU (measured with wrk).
    let span = tracing::debug_span!("request", request = %id, node = %node.cluster.id(), method = op, route = label);
    let trace = crate::rpc::Trace {
        request: id.clone(),
        coordinator: node.cluster.actor().node.clone(),
    };
    let answer = crate::rpc::TRACE.scope(trace, async {
        http.check_access(&req)?;
        route(node.clone(), &http.metrics, req).await
    });
    let mut resp = match tracing::Instrument::instrument(answer, span.clone()).await {
        Ok(resp) => resp,
        Err(err) => {
            span.in_scope(|| debug!(%err, "request failed"));
            error_response(&err)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(node.cluster.view().routing_version()) {
        resp.headers_mut().insert(RING_HEADER, v);
    }
    http.metrics
        .observe(label, op, resp.status().as_u16(), started.elapsed());
    resp
}

/// Header carrying the version of the ring clients route by ([`View::routing_version`]) on
/// every answer: a client that routes by key fetches `GET /cluster/ring` again when it
/// changes.
pub const RING_HEADER: &str = "x-ringkv-ring";

/// Header carrying a request's id, in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The client's request id if it is short printable ASCII, else a new `<node>-<n>`.
fn request_id(node: &Node, req: &Request<Incoming>) -> Arc<str> {
    use std::sync::atomic::Ordering;
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(Arc::from)
        .unwrap_or_else(|| {
            Arc::from(format!(
                "{}-{}",
                node.cluster.id(),
                node.cluster.request_ids.fetch_add(1, Ordering::Relaxed)
            ))
        })
}

/// The route a path belongs to, for metrics: a fixed set, so a key never becomes a label.
fn route_label(path: &str) -> &'static str {
    const PREFIXES: [(&str, &str); 4] = [
        ("/kv/", "kv"),
        ("/cluster/replicas/", "cluster_replicas"),
        ("/admin/local/", "admin_local"),
        ("/kv", "kv"),
    ];
    const EXACT: [(&str, &str); 10] = [
        ("/cluster/members", "cluster_members"),
        ("/cluster/ring", "cluster_ring"),
        ("/cluster/leave", "cluster_leave"),
        ("/admin/stats", "admin_stats"),
        ("/health", "health"),
        ("/ready", "ready"),
        ("/metrics", "metrics"),
        ("/watch", "watch"),
        ("/cluster/status", "cluster_status"),
        ("/", "root"),
    ];
    EXACT
        .iter()
        .find(|(p, _)| *p == path)
        .or_else(|| PREFIXES.iter().find(|(p, _)| path.starts_with(p)))
        .map_or("other", |(_, label)| label)
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

async fn route(
    node: Arc<Node>,
    metrics: &HttpMetrics,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if let Some(raw) = path.strip_prefix("/kv/") {
        // The method is checked before the key, so a wrong method is a 405 whatever the key.
        let params = match method {
            Method::GET | Method::HEAD => GET_PARAMS,
            Method::PUT => PUT_PARAMS,
            Method::DELETE => DELETE_PARAMS,
            _ => return Err(Error::MethodNotAllowed("GET, HEAD, PUT, DELETE".into())),
        };
        let key = parse_key(raw)?;
        known_params(&req, params)?;
        let started = std::time::Instant::now();
        let stages = &node.stats().stages;
        let (stage, resp) = match method {
            // HEAD is a GET whose body hyper leaves out (its headers stay, `content-length`
            // included): `curl -I` checks a key.
            Method::GET | Method::HEAD => (Stage::HttpRead, get_kv(node.clone(), key, &req).await),
            Method::PUT => (Stage::HttpWrite, put_kv(node.clone(), key, req).await),
            Method::DELETE => (Stage::HttpWrite, delete_kv(node.clone(), key, &req).await),
            _ => return Err(Error::MethodNotAllowed("GET, HEAD, PUT, DELETE".into())),
        };
        stages.record(stage, started);
        return resp;
    }
    let get_only = |resp: Result<Response<Body>>| {
        if method == Method::GET {
            resp
        } else {
            Err(Error::MethodNotAllowed("GET".into()))
        }
    };
    if let Some(raw) = path.strip_prefix("/cluster/replicas/") {
        get_only(Ok(Response::default()))?;
        let key = parse_key(raw)?;
        let view = node.cluster.view();
        let replicas: Vec<serde_json::Value> = node
            .cluster
            .replicas_of(&key)
            .iter()
            .map(|id| {
                let zone = view.member(id).map(|m| &*m.zone);
                json!({"id": &**id, "zone": zone.unwrap_or(crate::ring::DEFAULT_ZONE)})
            })
            .collect();
        return get_only(Ok(json_response(
            StatusCode::OK,
            json!({"key": String::from_utf8_lossy(&key), "replicas": replicas}),
        )));
    }
    if let Some(raw) = path.strip_prefix("/admin/local/") {
        get_only(Ok(Response::default()))?;
        let key = parse_key(raw)?;
        return get_only(Ok(local_versions(&node, &key)));
    }
    match path.as_str() {
        "/" => get_only(Ok(html_response(STATUS_PAGE))),
        "/cluster/status" => {
            get_only(Ok(Response::default()))?;
            Ok(cluster_status(&node).await)
        }
        "/watch" => {
            get_only(Ok(Response::default()))?;
            known_params(&req, WATCH_PARAMS)?;
            watch(node, req).await
        }
        "/kv" => {
            get_only(Ok(Response::default()))?;
            known_params(&req, LIST_PARAMS)?;
            list_kv(node, &req).await
        }
        "/health" => get_only(Ok(json_response(StatusCode::OK, json!({"status": "ok"})))),
        "/ready" => get_only(Ok(ready(&node))),
        "/cluster/members" => get_only(Ok(members(&node))),
        "/cluster/ring" => get_only(Ok(ring(&node))),
        "/cluster/leave" => {
            if method != Method::POST {
                return Err(Error::MethodNotAllowed("POST".into()));
            }
            node.lifecycle.leave().await;
            Ok(json_response(
                StatusCode::ACCEPTED,
                json!({"status": "leaving", "keys": node.store().stats().keys}),
            ))
        }
        "/admin/stats" => get_only(Ok(stats(&node))),
        "/admin/stages" => match method {
            Method::GET => Ok(json_response(StatusCode::OK, node.stats().stages.report())),
            Method::DELETE => {
                node.stats().stages.reset();
                Ok(json_response(StatusCode::OK, json!({"reset": true})))
            }
            _ => Err(Error::MethodNotAllowed("GET, DELETE".into())),
        },
        "/metrics" => get_only(metrics_response(&node, metrics)),
        _ => Err(Error::NotFound(path)),
    }
}

/// Percent-decodes a key and checks its length.
fn parse_key(raw: &str) -> Result<Bytes> {
    let key: Vec<u8> = percent_decode_str(raw).collect();
    if key.is_empty() {
        return Err(Error::invalid("empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "key of {} bytes exceeds the limit of {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(Bytes::from(key))
}

/// The query parameters each route takes: any other is refused (400), so that a typo such as
/// `?tll=5` is not silently ignored.
const GET_PARAMS: &[&str] = &["r"];
const PUT_PARAMS: &[&str] = &["w", "pw", "ttl", "if_absent"];
const DELETE_PARAMS: &[&str] = &["w", "pw", "if_absent"];
const LIST_PARAMS: &[&str] = &["prefix", "limit", "after", "r", "encoding"];
const WATCH_PARAMS: &[&str] = &["prefix", "encoding"];

/// Refuses a query parameter that is not in `known`, naming it and the known ones.
fn known_params(req: &Request<Incoming>, known: &[&str]) -> Result<()> {
    match unknown_param(req.uri().query(), known) {
        None => Ok(()),
        Some(name) => Err(Error::invalid(format!(
            "unknown query parameter {name:?}; this route takes {}",
            known.join(", ")
        ))),
    }
}

/// The first parameter of `query` whose name is not in `known` (empty pairs, as in `a=1&`,
/// are skipped).
fn unknown_param<'q>(query: Option<&'q str>, known: &[&str]) -> Option<std::borrow::Cow<'q, str>> {
    query?
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').map_or(pair, |(k, _)| k))
        .map(|name| percent_decode_str(name).decode_utf8_lossy())
        .find(|name| !known.contains(&name.as_ref()))
}

/// The value of query parameter `name`, percent-decoded.
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    query_bytes(req, name).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The value of query parameter `name`, percent-decoded to bytes (keys and prefixes are
/// binary).
fn query_bytes(req: &Request<Incoming>, name: &str) -> Option<Vec<u8>> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode_str(v).collect())
    })
}

/// Parses a boolean query parameter: absent is false.
fn bool_param(req: &Request<Incoming>, name: &str) -> Result<bool> {
    match query_param(req, name).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(Error::invalid(format!(
            "{name} must be true or false, got {v:?}"
        ))),
    }
}

/// Parses `?r=`, `?w=` or `?pw=` as a number. Ranges are checked by the coordinator.
fn quorum_param(req: &Request<Incoming>, name: &str) -> Result<Option<usize>> {
    match query_param(req, name) {
        None => Ok(None),
        Some(v) => v.parse::<usize>().map(Some).map_err(|_| {
            Error::invalid(format!(
                "{name} must be a number between 1 and N, got {v:?}"
            ))
        }),
    }
}

fn context_header(req: &Request<Incoming>) -> Result<Option<Context>> {
    context_in(req, CONTEXT_HEADER)
}

/// Decodes a context carried in header `name`; an HTTP entity tag's quotes are allowed.
fn context_in(
    req: &Request<Incoming>,
    name: impl hyper::header::AsHeaderName,
) -> Result<Option<Context>> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| Error::invalid("malformed context: not ASCII"))?;
            Ok(Some(Context::decode(s.trim().trim_matches('"'))?))
        }
    }
}

/// The write's precondition: `?if_absent=true`, or an `if-match` context (not both).
fn condition(req: &Request<Incoming>) -> Result<Condition> {
    let if_absent = bool_param(req, "if_absent")?;
    match (if_absent, context_in(req, IF_MATCH)?) {
        (true, Some(_)) => Err(Error::invalid("give if_absent or if-match, not both")),
        (true, None) => Ok(Condition::IfAbsent),
        (false, Some(ctx)) => Ok(Condition::IfMatch(ctx)),
        (false, None) => Ok(Condition::None),
    }
}

async fn get_kv(node: Arc<Node>, key: Bytes, req: &Request<Incoming>) -> Result<Response<Body>> {
    let r = quorum_param(req, "r")?;
    let wants_json = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let versions = node.coordinator.get(key, r).await?;
    Ok(read_response(
        &versions,
        wants_json,
        node.cluster.clock().now_ms(),
    ))
}

/// Turns merged versions into the GET answer, as seen at `now`: 200 raw, 300 siblings, or
/// 404 (nothing, a tombstone, or only expired values).
fn read_response(versions: &VersionSet, wants_json: bool, now: u64) -> Response<Body> {
    let live: Vec<&crate::version::Version> = versions.live(now).collect();
    let ctx = versions.context().encode();
    let expires = live.iter().filter_map(|v| v.expires_at()).min();
    let mut resp = match live.as_slice() {
        // With JSON asked for, one shape for 200, 300 and 404: no siblings, and the
        // tombstone's context (null if the key never existed) to write after the delete with.
        [] if wants_json => json_response(
            StatusCode::NOT_FOUND,
            json!({
                "context": (!versions.is_empty()).then_some(&ctx),
                "siblings": [],
                "content_types": [],
                "expires_at": null,
            }),
        ),
        [] => key_not_found("not found"),
        [one] if !wants_json => {
            let mut r = Response::new(Full::new(one.value.clone().unwrap_or_default()));
            let default = HeaderValue::from_static("application/octet-stream");
            let ct = match one.content_type() {
                Some(ct) => HeaderValue::from_str(ct).unwrap_or(default),
                None => default,
            };
            r.headers_mut().insert(CONTENT_TYPE, ct);
            r
        }
        many => {
            let siblings: Vec<String> = many
                .iter()
                .map(|v| B64.encode(v.value.as_deref().unwrap_or_default()))
                .collect();
            let content_types: Vec<&str> = many
                .iter()
                .map(|v| v.content_type().unwrap_or("application/octet-stream"))
                .collect();
            let status = if many.len() == 1 {
                StatusCode::OK
            } else {
                StatusCode::MULTIPLE_CHOICES
            };
            json_response(
                status,
                json!({
                    "context": ctx,
                    "siblings": siblings,
                    "content_types": content_types,
                    "expires_at": expires.map(rfc3339),
                }),
            )
        }
    };
    // A 404 carries the context only when a tombstone exists, so a later PUT can supersede it.
    if !versions.is_empty()
        && let Ok(v) = HeaderValue::from_str(&ctx)
    {
        resp.headers_mut().insert(CONTEXT_HEADER, v);
    }
    if let Some(t) = expires
        && let Ok(v) = HeaderValue::from_str(&rfc3339(t))
    {
        resp.headers_mut().insert(EXPIRES_HEADER, v);
    }
    resp
}

async fn put_kv(node: Arc<Node>, key: Bytes, req: Request<Incoming>) -> Result<Response<Body>> {
    let w = quorum_param(&req, "w")?;
    let pw = quorum_param(&req, "pw")?;
    let context = context_header(&req)?;
    let condition = condition(&req)?;
    let expires_at = match query_param(&req, "ttl") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(secs) if (1..=MAX_TTL_SECS).contains(&secs) => {
                Some(node.cluster.clock().now_ms() + secs * 1000)
            }
            _ => {
                return Err(Error::invalid(format!(
                    "ttl must be a whole number of seconds between 1 and {MAX_TTL_SECS}, got {v:?}"
                )));
            }
        },
    };
    let content_type = match req.headers().get(CONTENT_TYPE) {
        None => None,
        Some(v) => {
            let ct = v
                .to_str()
                .map_err(|_| Error::invalid("content-type must be ASCII"))?;
            // The default needs no storing.
            (ct != "application/octet-stream").then(|| Box::from(ct))
        }
    };
    let limit = node.cluster.config().max_value_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared
        && size > limit as u64
    {
        let too_large = Error::ValueTooLarge {
            size,
            limit: limit as u64,
        };
        // A client that sent `Expect: 100-continue` waits for hyper's `100 Continue`, which
        // hyper only sends when the body is first polled: answering without touching the body
        // refuses the upload before it starts. A body larger than the drain bound could not
        // be drained anyway, so reading any of it would only waste bandwidth.
        if expects_continue(&req) || size > drain_bound(limit) {
            return Err(too_large);
        }
        // Everything else is drained first (see `drain`), so the answer is not lost to a reset.
        let mut body = req.into_body();
        drain(&mut body, 0, limit).await;
        return Err(too_large);
    }
    let body_timeout = node.cluster.config.http_body_timeout;
    let value = tokio::time::timeout(body_timeout, read_body(req.into_body(), declared, limit))
        .await
        .map_err(|_| Error::RequestTimeout)??;
    let write = Write {
        key,
        value: Some(value),
        meta: Meta {
            content_type,
            expires_at,
        }
        .boxed(),
        context,
        condition,
        w,
        pw,
    };
    let new_ctx = node.coordinator.write(write).await?;
    Ok(written(&new_ctx))
}

/// Reads a request body of at most `limit` bytes with at most one copy: a body that arrives
/// in one piece is kept as it is (copied only when small, so that it does not pin hyper's
/// larger read buffer), and pieces are gathered into one buffer sized from `content-length`.
async fn read_body(mut body: Incoming, declared: Option<u64>, limit: usize) -> Result<Bytes> {
    let too_large = |size: u64| Error::ValueTooLarge {
        size,
        limit: limit as u64,
    };
    let mut first: Option<Bytes> = None;
    let mut gathered = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|err| Error::invalid(format!("could not read the request body: {err}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + gathered.len();
        if so_far + data.len() > limit {
            let seen = (so_far + data.len()) as u64;
            // Free what was gathered before draining the rest, which may take seconds.
            drop((first, gathered, data));
            let size = drain(&mut body, seen, limit).await.unwrap_or(seen);
            return Err(too_large(size));
        }
        if first.is_none() && gathered.is_empty() {
            first = Some(data);
            continue;
        }
        if let Some(head) = first.take() {
            let want = declared
                .map_or(0, |d| d as usize)
                .max(head.len() + data.len());
            gathered.reserve(want);
            gathered.extend_from_slice(&head);
        }
        gathered.extend_from_slice(&data);
    }
    Ok(match first {
        Some(one) if one.len() < COMPACT_BELOW => Bytes::copy_from_slice(&one),
        Some(one) => one,
        None => gathered.freeze(),
    })
}

// Draining a rejected body ("lingering close", as nginx calls it).
//
// A client that sends its whole body before reading the answer (Python's urllib, most
// scripts) is still sending when a 413 goes out early. If the node then closes with unread
// bytes in its socket buffer, the kernel sends a TCP RST instead of a FIN: the client's next
// write fails (BrokenPipe) or the reset discards the 413 it had not read yet (ConnectionReset),
// so it never learns why. Reading the rest of the body and throwing it away before answering
// lets the close be clean. The bounds keep that from costing much: past them the node answers
// and closes anyway, and such a client may see a reset, as it would without draining.

/// A rejected body is drained only if it is at most `DRAIN_LIMIT_FACTOR` times
/// `--max-value-bytes` in all, or `DRAIN_MIN_BYTES`, whichever is larger. The common mistake is
/// a value somewhat over the limit, which this covers; a body announced larger than the bound
/// is refused at once (reading part of it would not prevent the reset). The floor keeps small
/// limits useful (a 4 MiB upload against a 1 MiB limit still sees its 413). Drained bytes are
/// dropped frame by frame, so the cost is bandwidth and a few seconds, never memory.
const DRAIN_LIMIT_FACTOR: u64 = 2;

/// See [`DRAIN_LIMIT_FACTOR`].
const DRAIN_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// The longest a node drains one rejected body, so a slow client cannot hold a connection
/// (and a task) by trickling bytes. Enough for the largest drained body at the default limit
/// (16 MiB) at 30 Mbit/s; nginx's `lingering_time`, the same bound, is 30 s, but its bodies
/// are not capped by size.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Draining also stops if no byte arrives for this long: the client has stopped sending (it
/// may be waiting for the answer before sending more), so nothing is left to cause a reset,
/// and it should not wait the whole `DRAIN_TIME` for its 413. Several of Linux's 200 ms
/// minimum retransmission timeouts, so a lossy link does not cut a drain short; nginx's
/// `lingering_timeout` plays this part.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// The most bytes, in all, of a rejected body that is drained (see [`DRAIN_LIMIT_FACTOR`]).
fn drain_bound(limit: usize) -> u64 {
    (limit as u64)
        .saturating_mul(DRAIN_LIMIT_FACTOR)
        .max(DRAIN_MIN_BYTES)
}

/// Whether the client asked for `100 Continue` before sending its body.
fn expects_continue(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads and discards the rest of a rejected body of which `seen` bytes were already read,
/// within [`drain_bound`], [`DRAIN_TIME`] and [`DRAIN_IDLE`]. Returns the body's whole size if
/// it ended within them, else `None` (the caller answers and the connection closes with the
/// rest unread).
async fn drain(body: &mut Incoming, mut seen: u64, limit: usize) -> Option<u64> {
    let bound = drain_bound(limit);
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    while seen <= bound {
        let wait = deadline.min(tokio::time::Instant::now() + DRAIN_IDLE);
        match tokio::time::timeout_at(wait, body.frame()).await {
            Ok(None) => return Some(seen),
            Ok(Some(Ok(frame))) => seen += frame.data_ref().map_or(0, |d| d.len() as u64),
            // The connection broke or a bound passed: nothing more to wait for.
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    debug!(seen, bound, "gave up draining a rejected body");
    None
}

async fn delete_kv(node: Arc<Node>, key: Bytes, req: &Request<Incoming>) -> Result<Response<Body>> {
    let write = Write {
        key,
        value: None,
        meta: None,
        context: context_header(req)?,
        condition: condition(req)?,
        w: quorum_param(req, "w")?,
        pw: quorum_param(req, "pw")?,
    };
    let new_ctx = node.coordinator.write(write).await?;
    Ok(written(&new_ctx))
}

/// `GET /kv?prefix=P&limit=L&after=CURSOR`: one page of live keys, sorted. The cursor is the
/// last key of the previous page, base64url-encoded.
async fn list_kv(node: Arc<Node>, req: &Request<Incoming>) -> Result<Response<Body>> {
    let prefix = Bytes::from(query_bytes(req, "prefix").unwrap_or_default());
    let limit = match query_param(req, "limit") {
        None => DEFAULT_LIST_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
            _ => {
                return Err(Error::invalid(format!(
                    "limit must be between 1 and {MAX_LIST_LIMIT}, got {v:?}"
                )));
            }
        },
    };
    let after = match query_param(req, "after") {
        None => None,
        Some(c) => Some(Bytes::from(URL_SAFE_NO_PAD.decode(c.as_bytes()).map_err(
            |_| Error::invalid("malformed cursor: pass back a \"next\" value"),
        )?)),
    };
    let r = quorum_param(req, "r")?;
    let base64 = key_encoding(req)?;
    let listing = node.coordinator.list(prefix, after, limit, r).await?;
    let keys: Vec<String> = listing
        .keys
        .iter()
        .map(|k| crate::watch::show_key(k, base64))
        .collect();
    let next = listing.next.map(|k| URL_SAFE_NO_PAD.encode(k));
    Ok(json_response(
        StatusCode::OK,
        json!({"keys": keys, "next": next}),
    ))
}

/// `?encoding=base64` asks for keys in base64url (binary keys); `utf8`, the default, shows
/// them as text (invalid UTF-8 replaced).
fn key_encoding(req: &Request<Incoming>) -> Result<bool> {
    match query_param(req, "encoding").as_deref() {
        None | Some("utf8") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(Error::invalid(format!(
            "encoding must be utf8 or base64, got {other:?}"
        ))),
    }
}

/// `GET /watch?prefix=P`: upgrades to a WebSocket that streams the prefix's changes. The
/// watch is registered with every live peer before the handshake answer, so a change
/// acknowledged after the client sees the upgrade reaches it (see [`crate::watch`]).
async fn watch(node: Arc<Node>, mut req: Request<Incoming>) -> Result<Response<Body>> {
    let is_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).filter(|_| is_upgrade) else {
        return Err(Error::invalid(
            "/watch is a WebSocket endpoint: send Upgrade: websocket and Sec-WebSocket-Key",
        ));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let prefix = Bytes::from(query_bytes(&req, "prefix").unwrap_or_default());
    let base64 = key_encoding(&req)?;
    // Past `--max-watchers`: 503, `kind: rejected`, before any upgrade.
    let sub = node.watches.watch(prefix).await?;
    let upgrade = hyper::upgrade::on(&mut req);
    let shutdown = node.cluster.shutdown.clone();
    node.cluster.tracker.spawn(async move {
        match upgrade.await {
            Ok(io) => {
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(io),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                crate::watch::stream(ws, sub, base64, shutdown).await;
            }
            Err(err) => debug!(%err, "websocket upgrade failed"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(resp)
}

fn written(ctx: &Context) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(v) = HeaderValue::from_str(&ctx.encode()) {
        resp.headers_mut().insert(CONTEXT_HEADER, v);
    }
    resp
}

fn local_versions(node: &Node, key: &Bytes) -> Response<Body> {
    let Some(set) = node.store().get(key) else {
        return key_not_found("not stored here");
    };
    let versions: Vec<_> = set
        .versions()
        .iter()
        .map(|v| {
            json!({
                "value": v.value.as_ref().map(|b| B64.encode(b)),
                "clock": {
                    "dot": {
                        "node": &*v.dot.actor.node,
                        "generation": v.dot.actor.generation,
                        "counter": v.dot.counter,
                    },
                    "history": history_json(&v.history),
                },
            })
        })
        .collect();
    json_response(StatusCode::OK, json!({ "versions": versions }))
}

/// A context as readable JSON: per actor, the counters it covers.
fn history_json(ctx: &Context) -> serde_json::Value {
    ctx.entries()
        .map(|(actor, max, missing)| {
            json!({
                "node": &*actor.node,
                "generation": actor.generation,
                "max": max,
                "missing": missing,
            })
        })
        .collect()
}

/// How a member looks from here: `leaving`, `dead`, `joining`, `stopping` or `alive`.
fn member_status<'a>(view: &View, m: &'a Member) -> &'a str {
    if m.status == Status::Leaving {
        Status::Leaving.as_str()
    } else if !m.alive {
        "dead"
    } else if view.is_alive(&m.id) {
        "alive"
    } else {
        m.status.as_str()
    }
}

/// `GET /ready`: 200 when the node can serve a request at its default quorums, else 503 with
/// the first unmet condition as `reason` ([`crate::readiness`]).
fn ready(node: &Node) -> Response<Body> {
    let r = node.lifecycle.readiness();
    match r.reason() {
        None => json_response(
            StatusCode::OK,
            json!({"ready": true, "conditions": r.conditions}),
        ),
        Some(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "reason": reason, "conditions": r.conditions}),
        ),
    }
}

/// `GET /cluster/ring`: what a client needs to send each key to its home replicas itself
/// (key-aware routing): the ring's version, N, the vnode count and the hash, and every ring
/// node with its HTTP address, whether it serves, its tokens and the zone placement puts it
/// in. A key's homes are the first N distinct nodes met clockwise from `xxh3_64(key)`,
/// taking the first token at or after the hash (wrapping), ties by node id, skipping nodes of
/// a zone already used while unused zones remain ([`crate::ring`]). Until every member
/// supports zones (the `zones` feature gate), every node's zone here is `default`.
fn ring(node: &Node) -> Response<Body> {
    let view = node.cluster.view();
    let nodes: Vec<serde_json::Value> = view
        .ring
        .nodes()
        .iter()
        .map(|id| {
            let m = view.member(id);
            json!({
                "id": &**id,
                "http": m.and_then(|m| m.http).map(|a| a.to_string()),
                "serving": view.is_alive(id),
                "tokens": view.ring.tokens_of(id),
                "zone": view.ring.zone(id).map(|z| &**z),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "version": view.routing_version(),
            "replicas": node.cluster.config.replicas,
            "vnodes": view.ring.vnodes(),
            "hash": "xxh3_64",
            "nodes": nodes,
        }),
    )
}

fn members(node: &Node) -> Response<Body> {
    let view = node.cluster.view();
    let members: Vec<_> = view
        .members
        .values()
        .map(|m| {
            let mut json = member_json(&view, m);
            json["rpc"] = json!(m.rpc.map(|a| a.to_string()));
            json
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "members": members, "features": view.features() }),
    )
}

/// What `/cluster/members` and `/cluster/status` both say of a member: who and where it is,
/// its status and its build.
fn member_json(view: &crate::membership::View, m: &crate::membership::Member) -> serde_json::Value {
    json!({
        "id": &*m.id,
        "status": member_status(view, m),
        "http": m.http.map(|a| a.to_string()),
        "generation": m.generation,
        "zone": &*m.zone,
        "version": m.build.version.as_deref(),
        "protocol": m.build.protocols.encode(),
        "features": &m.build.features,
    })
}

/// `GET /cluster/status`: every member with its status, its vnode arcs (as fractions of the
/// ring, adjacent arcs of one node joined) and, if it answers within the RPC timeout, its
/// [`crate::stats::NodeStatus`].
async fn cluster_status(node: &Arc<Node>) -> Response<Body> {
    let view = node.cluster.view();
    const RING: f64 = 18_446_744_073_709_551_616.0; // 2^64
    let mut arcs: std::collections::HashMap<&str, Vec<[f64; 2]>> = Default::default();
    let mut last: Option<(&str, f64)> = None;
    let ring_arcs = view.ring.arcs();
    for (start, end, owner) in ring_arcs.iter().skip(1) {
        let (s, e) = (*start as f64 / RING, *end as f64 / RING);
        let list = arcs.entry(&**owner).or_default();
        match (last, list.last_mut()) {
            (Some((prev, _)), Some(arc)) if prev == &**owner => arc[1] = e,
            _ => list.push([s, e]),
        }
        last = Some((&**owner, e));
    }
    // The first arc wraps around zero.
    if let Some((start, end, owner)) = ring_arcs.first() {
        arcs.entry(&**owner)
            .or_default()
            .push([*start as f64 / RING, *end as f64 / RING]);
    }
    let stats = view.members.values().map(|m| {
        let node = node.clone();
        let alive = m.alive && m.status.in_ring();
        let (id, rpc) = (m.id.clone(), m.rpc);
        async move {
            if id == *node.cluster.id() {
                return Some(node.status());
            }
            let addr = rpc.filter(|_| alive)?;
            match node
                .cluster
                .pool
                .call(addr, crate::rpc::Request::Status)
                .await
            {
                Ok(crate::rpc::Response::Status(s)) => Some(s),
                _ => None,
            }
        }
    });
    let stats = futures_util::future::join_all(stats).await;
    let shares: std::collections::HashMap<crate::ring::NodeId, f64> = view
        .ring
        .shares(node.cluster.config().replicas)
        .into_iter()
        .collect();
    let members: Vec<_> = view
        .members
        .values()
        .zip(stats)
        .map(|(m, stats)| {
            let mut json = member_json(&view, m);
            json["share"] = json!(shares.get(&m.id).copied().unwrap_or(0.0));
            json["arcs"] = json!(arcs.get(&*m.id).cloned().unwrap_or_default());
            json["stats"] = json!(stats);
            json
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "node": &**node.cluster.id(),
            "replicas": node.cluster.config().replicas,
            "time_ms": node.cluster.clock().now_ms(),
            "version": crate::compat::VERSION,
            "features": view.features(),
            "members": members,
        }),
    )
}

fn stats(node: &Node) -> Response<Body> {
    json_response(
        StatusCode::OK,
        json!({
            "id": &**node.cluster.id(),
            "store": node.store().stats(),
            "hints_pending": node.replica.hints_pending(),
            "counters": node.stats().snapshot(),
        }),
    )
}

/// The one mapping from errors to HTTP status codes.
pub fn status_of(err: &Error) -> StatusCode {
    match err {
        Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
        Error::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unavailable { .. }
        | Error::Rejected(_)
        | Error::Interrupted(_)
        | Error::Timeout
        | Error::Unreachable(_)
        | Error::Shutdown
        | Error::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Protocol(_) => StatusCode::BAD_GATEWAY,
        Error::Io(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of an error answer: `{"error": message, "kind": Error::kind}` plus the
/// counts of a quorum failure, the limit of a too-large value or the context of a failed
/// condition.
pub fn error_body(err: &Error) -> serde_json::Value {
    let mut body = json!({ "error": err.to_string(), "kind": err.kind() });
    match err {
        Error::Unavailable { replied, required } => {
            body["replied"] = json!(replied);
            body["required"] = json!(required);
        }
        Error::ValueTooLarge { limit, .. } => body["limit"] = json!(limit),
        Error::PreconditionFailed { context } => body["context"] = json!(context),
        _ => {}
    }
    body
}

fn error_response(err: &Error) -> Response<Body> {
    let mut resp = json_response(status_of(err), error_body(err));
    if let Error::MethodNotAllowed(allow) = err
        && let Ok(v) = HeaderValue::from_str(allow)
    {
        resp.headers_mut().insert(ALLOW, v);
    }
    if let Error::Unauthorized(_) = err {
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ringkv\""),
        );
    }
    // Part of a rejected body may still be unread (refused on `Expect: 100-continue`, or past
    // the drain bounds), and then the connection cannot carry another request: say so, so the
    // client does not send one into a closing socket.
    if let Error::ValueTooLarge { .. } | Error::RequestTimeout = err {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn metrics_response(node: &Node, http: &HttpMetrics) -> Result<Response<Body>> {
    let text = crate::metrics::render(node, http).map_err(Error::internal)?;
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(resp)
}

/// The 404 of a key without a live value: an answer, not an [`Error`], but shaped like an
/// error body so every 404 reads alike.
fn key_not_found(msg: &str) -> Response<Body> {
    let kind = Error::NotFound(String::new()).kind();
    json_response(StatusCode::NOT_FOUND, json!({ "error": msg, "kind": kind }))
}

fn html_response(page: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(page.as_bytes())));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Serves HTTP while a node starts (loads its data dir, waits for a seed to resolve), until
/// dropped: `/health` answers 200, `/ready` 503 with the unmet condition and `status()`'s
/// detail (`loaded`: "loading data dir: N of M bytes"), anything else 503 with the same
/// detail. Each connection answers one request and closes, so none outlives this phase.
pub async fn serve_starting(
    listener: &dyn Listener,
    condition: &'static str,
    status: impl Fn() -> String + Send + Sync + 'static,
) {
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let status = Arc::new(status);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let status = status.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let detail = status();
                async move {
                    Ok::<_, Infallible>(starting_answer(req.uri().path(), condition, detail))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

fn starting_answer(path: &str, condition: &str, reason: String) -> Response<Body> {
    match path {
        "/health" => json_response(StatusCode::OK, json!({"status": "ok"})),
        "/ready" => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "ready": false,
                "reason": reason,
                "conditions": [{"name": condition, "ok": false, "detail": reason}],
            }),
        ),
        _ => json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": reason })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_query_parameters_are_found_and_known_ones_pass() {
        let put = PUT_PARAMS;
        assert_eq!(unknown_param(None, put), None);
        assert_eq!(unknown_param(Some(""), put), None);
        assert_eq!(unknown_param(Some("w=2&pw=1&ttl=5&if_absent"), put), None);
        assert_eq!(unknown_param(Some("w=2&&"), put), None);
        assert_eq!(unknown_param(Some("tll=5"), put).as_deref(), Some("tll"));
        assert_eq!(unknown_param(Some("w=2&W=3"), put).as_deref(), Some("W"));
        assert_eq!(unknown_param(Some("r=2"), put).as_deref(), Some("r"));
        assert_eq!(unknown_param(Some("r=2"), GET_PARAMS), None);
        // A percent-encoded name is decoded first.
        assert_eq!(unknown_param(Some("t%74l=5"), put), None);
        assert_eq!(
            unknown_param(
                Some("prefix=a&limit=3&after=x&r=1&encoding=base64"),
                LIST_PARAMS
            ),
            None
        );
        assert_eq!(
            unknown_param(Some("prefix=a&limt=3"), LIST_PARAMS).as_deref(),
            Some("limt")
        );
        assert_eq!(unknown_param(Some("prefix=a"), WATCH_PARAMS), None);
        assert_eq!(
            unknown_param(Some("prefix=a&r=2"), WATCH_PARAMS).as_deref(),
            Some("r")
        );
    }

    #[test]
    fn a_json_404_has_the_shape_of_a_200() {
        use crate::version::Actor;
        let body = |resp: Response<Body>| {
            let bytes = futures_util::FutureExt::now_or_never(resp.into_body().collect())
                .expect("a full body is ready")
                .expect("no error")
                .to_bytes();
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("json")
        };
        // Never written: no context.
        let resp = read_response(&VersionSet::new(), true, 0);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            body(resp),
            json!({"context": null, "siblings": [], "content_types": [], "expires_at": null})
        );
        // Deleted: the tombstone's context, in the body and the header.
        let mut set = VersionSet::new();
        let ctx = set.write(&Actor::new("n1", 1), None, Some(Bytes::from_static(b"v")));
        set.write(&Actor::new("n1", 1), Some(&ctx), None);
        let resp = read_response(&set, true, 0);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let header = resp.headers()[CONTEXT_HEADER].to_str().unwrap().to_string();
        let json = body(resp);
        assert_eq!(json["context"], header.as_str());
        assert_eq!(json["siblings"], json!([]));
        // Without JSON asked for: the error body, as before.
        let plain = body(read_response(&set, false, 0));
        assert_eq!(plain["kind"], "not_found");
    }
}
