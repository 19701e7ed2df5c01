//! The HTTP API every node serves (hyper 1, HTTP/1.1 with keep-alive).
//!
//! Status codes are chosen in one place, [`crate::http::status_of`], which maps each
//! [`Error`] variant to one. Every error body is JSON, `{"error": message, "kind":
//! Error::kind, ...}` ([`crate::http::error_body`]).
//!
//! Every request is parsed once by the route table ([`routes::Route::parse`]), which gives its
//! metric label, and per method the role it needs and the query parameters it knows; the
//! handlers live in `kv` (keys, listing, watches), `cluster` (members, ring, readiness, status)
//! and read what a request carries through `body`.
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
//! | GET | `/admin/backup?start=&end=` | this node's copies of one ring segment, paged (`after_hash`, `after_key`), `?prefix=`: MessagePack ([`crate::backup`]) |
//! | POST | `/admin/restore` | merge a MessagePack batch of keys and versions into their home replicas; `{"keys": n}` |
//! | POST | `/cluster/leave` | decommission this node: hand its data over, then exit |
//! | GET | `/admin/stats` | this node's counters |
//! | GET, DELETE | `/admin/stages` | where requests' time goes, by stage: count and percentiles in µs since the last DELETE ([`crate::timings`]) |
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
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::access::{Decision, Role, TokenFile};
use crate::error::{Error, Result};
use crate::http::{REQUEST_ID_HEADER, RING_HEADER, error_body, status_of};
use crate::metrics::HttpMetrics;
use crate::node::Node;
use crate::timings::Stage;

/// The status page, embedded in the binary.
mod body;
mod bulk;
mod cluster;
mod kv;
pub mod routes;

use routes::Route;

const STATUS_PAGE: &str = include_str!("status.html");

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
    let config = &node.system.config;
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
    fn check_access(&self, req: &Request<Incoming>, needs: Option<Role>) -> Result<()> {
        let Some(file) = &self.tokens else {
            return Ok(());
        };
        let auth = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        match file.tokens().decide(needs, auth) {
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
    let path = req.uri().path().to_string();
    let (route, spec) = Route::parse(&path);
    let label = spec.label;
    let op = method_label(req.method());
    crate::stats::Stats::incr(&node.stats().http_requests);
    let id = request_id(&node, &req);
    // A debug span: at the default level (info) it is never built. Building and entering
    // it on every poll cost 10-15% of a quorum request's CPU (measured with wrk).
    let span = tracing::debug_span!("request", request = %id, node = %node.system.id(), method = op, route = label);
    let trace = crate::rpc::Trace {
        request: id.clone(),
        coordinator: node.system.actor().node.clone(),
    };
    let answer = crate::rpc::TRACE.scope(trace, async {
        http.check_access(&req, spec.role(req.method()))?;
        let allow = spec.allows(req.method(), &path)?;
        if let Some(known) = allow.params {
            body::known_params(&req, known)?;
        }
        dispatch(node.clone(), &http.metrics, route, req).await
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
    if let Ok(v) = HeaderValue::from_str(node.system.view().routing_version()) {
        resp.headers_mut().insert(RING_HEADER, v);
    }
    http.metrics
        .observe(label, op, resp.status().as_u16(), started.elapsed());
    resp
}

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
                node.system.id(),
                node.system.request_ids.fetch_add(1, Ordering::Relaxed)
            ))
        })
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

/// Runs the handler of `route`, whose method and query parameters the route table allowed
/// ([`routes::Spec::allows`]).
async fn dispatch(
    node: Arc<Node>,
    metrics: &HttpMetrics,
    route: Route<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let method = req.method().clone();
    match route {
        Route::Key(raw) => {
            let key = body::parse_key(raw)?;
            let started = std::time::Instant::now();
            let (stage, resp) = match method {
                // HEAD is a GET whose body hyper leaves out (its headers stay,
                // `content-length` included).
                Method::PUT => (Stage::HttpWrite, kv::put(node.clone(), key, req).await),
                Method::DELETE => (Stage::HttpWrite, kv::delete(node.clone(), key, &req).await),
                _ => (Stage::HttpRead, kv::get(node.clone(), key, &req).await),
            };
            node.stats().stages.record(stage, started);
            resp
        }
        Route::List => kv::list(node, &req).await,
        Route::Watch => kv::watch(node, req).await,
        Route::Local(raw) => Ok(kv::local_versions(&node, &body::parse_key(raw)?)),
        Route::Backup => bulk::segment(&node, &req),
        Route::Restore => bulk::restore(&node, req).await,
        Route::StatusPage => Ok(html_response(STATUS_PAGE)),
        Route::ClusterStatus => Ok(cluster::status(&node).await),
        Route::Members => Ok(cluster::members(&node)),
        Route::Ring => Ok(cluster::ring(&node)),
        Route::Replicas(raw) => Ok(cluster::replicas(&node, &body::parse_key(raw)?)),
        Route::Leave => Ok(cluster::leave(&node).await),
        Route::Stats => Ok(cluster::stats(&node)),
        Route::Stages if method == Method::DELETE => {
            node.stats().stages.reset();
            Ok(json_response(StatusCode::OK, json!({"reset": true})))
        }
        Route::Stages => Ok(json_response(StatusCode::OK, node.stats().stages.report())),
        Route::Metrics => metrics_response(&node, metrics),
        Route::Health => Ok(json_response(StatusCode::OK, json!({"status": "ok"}))),
        Route::Ready => Ok(cluster::ready(&node)),
        // The route table answers 404 before this.
        Route::Unknown => Err(Error::NotFound(req.uri().path().to_string())),
    }
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
    if let Error::ValueTooLarge { .. } | Error::RequestTimeout | Error::MemoryFull { .. } = err {
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
    match Route::parse(path).0 {
        Route::Health => json_response(StatusCode::OK, json!({"status": "ok"})),
        Route::Ready => json_response(
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
