//! The HTTP API every node serves (hyper 1, HTTP/1.1 with keep-alive).
//!
//! This is the only place that chooses HTTP status codes: [`status_of`] maps each
//! [`Error`] variant to one. Every error body is JSON, `{"error": "...", ...}`.
//!
//! Routes:
//!
//! | method | path | what |
//! |---|---|---|
//! | PUT | `/kv/{key}` | write the body; `?w=`; `x-ringkv-context` |
//! | GET | `/kv/{key}` | 200 value, 300 siblings, 404; `?r=` |
//! | DELETE | `/kv/{key}` | write a tombstone; `?w=`; `x-ringkv-context` |
//! | GET | `/cluster/members` | members with status, addresses, generation |
//! | GET | `/cluster/replicas/{key}` | the key's N home nodes in preference order |
//! | GET | `/admin/local/{key}` | what this node stores for the key, no coordination |
//! | POST | `/cluster/leave` | decommission this node: hand its data over, then exit |
//! | GET | `/admin/stats` | this node's counters |
//! | GET | `/metrics` | Prometheus / OpenMetrics text |
//! | GET | `/health` | 200 once the node serves |
//!
//! A key is the percent-decoded rest of the path after `/kv/`, so it may contain `/`, and is
//! 1 to 1024 bytes of arbitrary binary.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use percent_encoding::percent_decode_str;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::MAX_KEY_BYTES;
use crate::error::{Error, Result};
use crate::membership::STATUS_LEAVING;
use crate::node::Node;
use crate::version::{Context, VersionSet};

/// Header carrying an opaque causal context, in both directions.
pub const CONTEXT_HEADER: &str = "x-ringkv-context";

/// Values smaller than this are copied out of hyper's read buffer before they are stored, so a
/// 100-byte value does not pin the whole multi-kilobyte buffer it arrived in.
const COMPACT_BELOW: usize = 64 * 1024;

type Body = Full<Bytes>;

/// Serves HTTP on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, node: Arc<Node>, stop: Stop, tracker: TaskTracker) {
    loop {
        let (stream, peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(handle(node, req).await) }
            });
            // The timer arms hyper's 30 s header-read timeout, so a client that opens a
            // connection and never finishes its request headers cannot hold it forever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                _ = stop.kill.cancelled() => return,
                _ = stop.drain.cancelled() => {
                    // Finish the request in flight, if any, then close: the client sees a
                    // complete answer and a closed keep-alive connection, never an error.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
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

/// How the HTTP server stops.
#[derive(Clone, Default)]
pub struct Stop {
    /// Stop accepting, let connections finish their request in flight and close.
    pub drain: CancellationToken,
    /// Drop everything now.
    pub kill: CancellationToken,
}

/// Answers one request. Never fails: errors become JSON error responses.
pub async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let label = route_label(req.uri().path());
    let op = method_label(req.method());
    let resp = match route(node.clone(), req).await {
        Ok(resp) => resp,
        Err(err) => error_response(&err),
    };
    node.http_metrics()
        .observe(label, op, resp.status().as_u16(), started.elapsed());
    resp
}

/// The route a path belongs to, for metrics: a fixed set, so a key never becomes a label.
fn route_label(path: &str) -> &'static str {
    const PREFIXES: [(&str, &str); 4] = [
        ("/kv/", "kv"),
        ("/cluster/replicas/", "cluster_replicas"),
        ("/admin/local/", "admin_local"),
        ("/kv", "kv"),
    ];
    const EXACT: [(&str, &str); 6] = [
        ("/cluster/members", "cluster_members"),
        ("/cluster/leave", "cluster_leave"),
        ("/admin/stats", "admin_stats"),
        ("/health", "health"),
        ("/metrics", "metrics"),
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

async fn route(node: Arc<Node>, req: Request<Incoming>) -> Result<Response<Body>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if let Some(raw) = path.strip_prefix("/kv/") {
        // The method is checked before the key, so a wrong method is a 405 whatever the key.
        if !matches!(method, Method::GET | Method::PUT | Method::DELETE) {
            return Err(Error::MethodNotAllowed("GET, PUT, DELETE".into()));
        }
        let key = parse_key(raw)?;
        return match method {
            Method::GET => get_kv(node, key, &req).await,
            Method::PUT => put_kv(node, key, req).await,
            Method::DELETE => delete_kv(node, key, &req).await,
            _ => Err(Error::MethodNotAllowed("GET, PUT, DELETE".into())),
        };
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
        let replicas: Vec<String> = node
            .replicas_of(&key)
            .iter()
            .map(|id| id.to_string())
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
        "/health" => get_only(Ok(json_response(StatusCode::OK, json!({"status": "ok"})))),
        "/cluster/members" => get_only(Ok(members(&node))),
        "/cluster/leave" => {
            if method != Method::POST {
                return Err(Error::MethodNotAllowed("POST".into()));
            }
            node.leave().await;
            Ok(json_response(
                StatusCode::ACCEPTED,
                json!({"status": "leaving", "keys": node.store().stats().keys}),
            ))
        }
        "/admin/stats" => get_only(Ok(stats(&node))),
        "/metrics" => get_only(metrics_response(&node)),
        "/kv" => Err(Error::invalid("empty key")),
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

/// The value of query parameter `name`, percent-decoded.
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
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
    match req.headers().get(CONTEXT_HEADER) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| Error::invalid("malformed context: not ASCII"))?;
            Ok(Some(Context::decode(s.trim())?))
        }
    }
}

async fn get_kv(node: Arc<Node>, key: Bytes, req: &Request<Incoming>) -> Result<Response<Body>> {
    let r = quorum_param(req, "r")?;
    let wants_json = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let versions = node.get(key, r).await?;
    Ok(read_response(&versions, wants_json))
}

/// Turns merged versions into the GET answer: 200 raw, 300 siblings, or 404.
fn read_response(versions: &VersionSet, wants_json: bool) -> Response<Body> {
    let values: Vec<&Bytes> = versions.live_values().collect();
    let ctx = versions.context().encode();
    let mut resp = match values.len() {
        0 => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        1 if !wants_json => {
            let mut r = Response::new(Full::new(values[0].clone()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        n => {
            let siblings: Vec<String> = values.iter().map(|v| B64.encode(v)).collect();
            let status = if n == 1 {
                StatusCode::OK
            } else {
                StatusCode::MULTIPLE_CHOICES
            };
            json_response(status, json!({"context": ctx, "siblings": siblings}))
        }
    };
    // A 404 carries the context only when a tombstone exists, so a later PUT can supersede it.
    if !versions.is_empty()
        && let Ok(v) = HeaderValue::from_str(&ctx)
    {
        resp.headers_mut().insert(CONTEXT_HEADER, v);
    }
    resp
}

async fn put_kv(node: Arc<Node>, key: Bytes, req: Request<Incoming>) -> Result<Response<Body>> {
    let w = quorum_param(&req, "w")?;
    let pw = quorum_param(&req, "pw")?;
    let ctx = context_header(&req)?;
    let limit = node.config().max_value_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared
        && size > limit as u64
    {
        return Err(Error::ValueTooLarge {
            size,
            limit: limit as u64,
        });
    }
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|err| {
            if err.downcast_ref::<LengthLimitError>().is_some() {
                Error::ValueTooLarge {
                    size: limit as u64 + 1,
                    limit: limit as u64,
                }
            } else {
                Error::invalid(format!("could not read the request body: {err}"))
            }
        })?
        .to_bytes();
    let value = if body.len() < COMPACT_BELOW {
        Bytes::copy_from_slice(&body)
    } else {
        body
    };
    let new_ctx = node.put(key, Some(value), ctx, w, pw).await?;
    Ok(written(&new_ctx))
}

async fn delete_kv(node: Arc<Node>, key: Bytes, req: &Request<Incoming>) -> Result<Response<Body>> {
    let w = quorum_param(req, "w")?;
    let pw = quorum_param(req, "pw")?;
    let ctx = context_header(req)?;
    let new_ctx = node.put(key, None, ctx, w, pw).await?;
    Ok(written(&new_ctx))
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
        return json_response(StatusCode::NOT_FOUND, json!({"error": "not stored here"}));
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

fn members(node: &Node) -> Response<Body> {
    let view = node.view();
    let members: Vec<_> = view
        .members
        .values()
        .map(|m| {
            json!({
                "id": &*m.id,
                "status": if m.status == STATUS_LEAVING {
                    STATUS_LEAVING
                } else if view.is_alive(&m.id) {
                    "alive"
                } else {
                    "dead"
                },
                "http": m.http.map(|a| a.to_string()),
                "rpc": m.rpc.map(|a| a.to_string()),
                "generation": m.generation,
            })
        })
        .collect();
    json_response(StatusCode::OK, json!({ "members": members }))
}

fn stats(node: &Node) -> Response<Body> {
    json_response(
        StatusCode::OK,
        json!({
            "id": &**node.id(),
            "store": node.store().stats(),
            "hints_pending": node.hints_pending(),
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
        Error::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unavailable { .. }
        | Error::Rejected(_)
        | Error::Interrupted(_)
        | Error::Timeout
        | Error::Unreachable(_)
        | Error::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
        Error::Protocol(_) => StatusCode::BAD_GATEWAY,
        Error::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of an error answer: `{"error": ...}` plus the counts of a quorum failure or
/// the limit of a too-large value.
pub fn error_body(err: &Error) -> serde_json::Value {
    let mut body = json!({ "error": err.to_string() });
    match err {
        Error::Unavailable { replied, required } => {
            body["replied"] = json!(replied);
            body["required"] = json!(required);
        }
        Error::ValueTooLarge { limit, .. } => body["limit"] = json!(limit),
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
    resp
}

fn metrics_response(node: &Node) -> Result<Response<Body>> {
    let text = crate::metrics::render(node)
        .map_err(|e| Error::Io(Arc::new(std::io::Error::other(e.to_string()))))?;
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(resp)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
