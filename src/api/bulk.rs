//! The bulk routes of backup and restore ([`crate::backup`]): `GET /admin/backup` and
//! `POST /admin/restore`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::body::{query_bytes, query_param, read_body};
use super::{Body, json_response};
use crate::backup;
use crate::error::{Error, Result};
use crate::http::MSGPACK;
use crate::node::Node;
use crate::version::VersionSet;

/// The largest restore batch a node reads: many times the client's batch
/// ([`backup::load::BATCH_BYTES`]), and room for a key with several siblings of the largest
/// value (`--max-value-bytes`).
fn restore_limit(node: &Node) -> usize {
    (node.system.config.max_value_bytes.saturating_mul(8)).max(64 * 1024 * 1024)
}

/// `GET /admin/backup?start=&end=`: a page of this node's copies of one ring segment.
pub(super) fn segment(node: &Node, req: &Request<Incoming>) -> Result<Response<Body>> {
    let number = |name: &str| -> Result<Option<u64>> {
        query_param(req, name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| Error::invalid(format!("{name} must be a number, not {v:?}")))
            })
            .transpose()
    };
    let (Some(start), Some(end)) = (number("start")?, number("end")?) else {
        return Err(Error::invalid("start and end are required"));
    };
    let after = match (number("after_hash")?, query_bytes(req, "after_key")) {
        (Some(hash), Some(key)) => Some((hash, Bytes::from(key))),
        (None, None) => None,
        _ => return Err(Error::invalid("after_hash and after_key go together")),
    };
    let prefix = query_bytes(req, "prefix").unwrap_or_default();
    let page = backup::node::segment_page(node.replica.store(), start, end, after, &prefix)?;
    let body = rmp_serde::to_vec(&page)
        .map_err(|e| Error::Protocol(format!("cannot encode a backup page: {e}")))?;
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(MSGPACK));
    Ok(resp)
}

/// `POST /admin/restore`: merges a MessagePack batch of `[key, versions]` pairs into their
/// home replicas; `{"keys": n}` once every key is held by W homes.
pub(super) async fn restore(node: &Arc<Node>, req: Request<Incoming>) -> Result<Response<Body>> {
    let limit = restore_limit(node);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let read = read_body(req.into_body(), declared, limit, Some(node.system.memory()));
    let body = tokio::time::timeout(node.system.config.http_body_timeout, read)
        .await
        .map_err(|_| Error::RequestTimeout)??;
    let items: Vec<(Bytes, VersionSet)> = rmp_serde::from_slice(&body).map_err(|e| {
        Error::invalid(format!(
            "a restore batch is a MessagePack array of [key, versions]: {e}"
        ))
    })?;
    if let Some((key, _)) = items
        .iter()
        .find(|(k, _)| k.is_empty() || k.len() > crate::config::MAX_KEY_BYTES)
    {
        return Err(Error::invalid(format!(
            "a key of {} bytes: keys are 1 to {} bytes",
            key.len(),
            crate::config::MAX_KEY_BYTES
        )));
    }
    let loaded = backup::node::load(&node.system, &node.replica, items).await?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_value(loaded).unwrap_or_default(),
    ))
}
