//! The key routes: `GET`, `HEAD`, `PUT` and `DELETE` on `/kv/{key}`, the listing, watches and
//! `/admin/local/{key}`.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tracing::debug;

use crate::clock::rfc3339;
use crate::config::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, MAX_TTL_SECS};
use crate::coordinator::Write;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::version::{Context, Meta, VersionSet};

use super::body::*;
use super::*;
use crate::http::{CONTEXT_HEADER, EXPIRES_HEADER};

pub(super) async fn get(
    node: Arc<Node>,
    key: Bytes,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
    let r = quorum_param(req, "r")?;
    let pr = quorum_param(req, "pr")?.unwrap_or(0);
    let wants_json = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let versions = node.coordinator.read(key, r, pr).await?;
    Ok(read_response(
        &versions,
        wants_json,
        node.system.clock().now_ms(),
    ))
}

/// Turns merged versions into the GET answer, as seen at `now`: 200 raw, 300 siblings, or
/// 404 (nothing, a tombstone, or only expired values).
pub(super) fn read_response(versions: &VersionSet, wants_json: bool, now: u64) -> Response<Body> {
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

pub(super) async fn put(
    node: Arc<Node>,
    key: Bytes,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let w = quorum_param(&req, "w")?;
    let pw = quorum_param(&req, "pw")?;
    let context = context_header(&req)?;
    let condition = condition(&req)?;
    let expires_at = match query_param(&req, "ttl") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(secs) if (1..=MAX_TTL_SECS).contains(&secs) => {
                Some(node.system.clock().now_ms() + secs * 1000)
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
    let limit = node.system.config().max_value_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refused from the headers, before any of the body is read: a value over the size
    // limit (413), or one this node has no memory for (507). The body is reserved by its
    // length until the write is stored, so concurrent uploads count together.
    let admitted = match declared {
        Some(size) if size > limit as u64 => Err(Error::ValueTooLarge {
            size,
            limit: limit as u64,
        }),
        _ => node.system.memory.reserve(declared.unwrap_or(0)),
    };
    let _reservation = match admitted {
        Ok(reservation) => reservation,
        Err(err) => return Err(refuse_unread(req, declared, limit, err).await),
    };
    let body_timeout = node.system.config.http_body_timeout;
    let meter = (declared.is_none()).then(|| node.system.memory());
    let read = read_body(req.into_body(), declared, limit, meter);
    let value = tokio::time::timeout(body_timeout, read)
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

/// Refuses a PUT whose body was not read, with `err`, so that every client sees the answer.
///
/// A client that sent `Expect: 100-continue` waits for hyper's `100 Continue`, which hyper
/// only sends when the body is first polled: answering without touching the body refuses the
/// upload before it starts. A body larger than the drain bound could not be drained anyway,
/// so reading any of it would only waste bandwidth. Everything else is drained first (see
/// `drain`), so the answer is not lost to a reset.
async fn refuse_unread(
    req: Request<Incoming>,
    declared: Option<u64>,
    limit: usize,
    err: Error,
) -> Error {
    if expects_continue(&req) || declared.is_some_and(|size| size > drain_bound(limit)) {
        return err;
    }
    let mut body = req.into_body();
    drain(&mut body, 0, limit).await;
    err
}

pub(super) async fn delete(
    node: Arc<Node>,
    key: Bytes,
    req: &Request<Incoming>,
) -> Result<Response<Body>> {
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
pub(super) async fn list(node: Arc<Node>, req: &Request<Incoming>) -> Result<Response<Body>> {
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

/// `GET /watch?prefix=P`: upgrades to a WebSocket that streams the prefix's changes. The
/// watch is registered with every live peer before the handshake answer, so a change
/// acknowledged after the client sees the upgrade reaches it (see [`crate::watch`]).
pub(super) async fn watch(node: Arc<Node>, mut req: Request<Incoming>) -> Result<Response<Body>> {
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
    let shutdown = node.system.shutdown.clone();
    node.system.tracker.spawn(async move {
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

pub(super) fn written(ctx: &Context) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(v) = HeaderValue::from_str(&ctx.encode()) {
        resp.headers_mut().insert(CONTEXT_HEADER, v);
    }
    resp
}

pub(super) fn local_versions(node: &Node, key: &Bytes) -> Response<Body> {
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
pub(super) fn history_json(ctx: &Context) -> serde_json::Value {
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

/// The 404 of a key without a live value: an answer, not an [`Error`], but shaped like an
/// error body so every 404 reads alike.
pub(super) fn key_not_found(msg: &str) -> Response<Body> {
    let kind = Error::NotFound(String::new()).kind();
    json_response(StatusCode::NOT_FOUND, json!({ "error": msg, "kind": kind }))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

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
