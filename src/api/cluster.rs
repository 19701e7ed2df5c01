//! The cluster routes: readiness, members, the ring, replicas, the status page's data and the
//! node's counters.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::membership::{Member, Status, View};
use crate::node::Node;

use super::*;

/// How a member looks from here: `leaving`, `dead`, `joining`, `stopping` or `alive`.
pub(super) fn member_status<'a>(view: &View, m: &'a Member) -> &'a str {
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
pub(super) fn ready(node: &Node) -> Response<Body> {
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
pub(super) fn ring(node: &Node) -> Response<Body> {
    let view = node.system.view();
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
            "replicas": node.system.config.replicas,
            "vnodes": view.ring.vnodes(),
            "hash": "xxh3_64",
            "nodes": nodes,
            "cluster_id": node.system.config.cluster_id,
        }),
    )
}

pub(super) fn members(node: &Node) -> Response<Body> {
    let view = node.system.view();
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
pub(super) fn member_json(
    view: &crate::membership::View,
    m: &crate::membership::Member,
) -> serde_json::Value {
    json!({
        "id": &*m.id,
        "status": member_status(view, m),
        "http": m.http.map(|a| a.to_string()),
        "generation": m.generation,
        "zone": &*m.zone,
        "version": m.build.version.as_deref(),
        "protocol": m.build.protocols.encode(),
        "features": &m.build.features,
        "memory": m.memory.map(|u| json!({"used": u.used, "limit": u.limit})),
    })
}

/// `GET /cluster/status`: every member with its status, its vnode arcs (as fractions of the
/// ring, adjacent arcs of one node joined) and, if it answers within the RPC timeout, its
/// [`crate::stats::NodeStatus`].
pub(super) async fn status(node: &Arc<Node>) -> Response<Body> {
    let view = node.system.view();
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
            if id == *node.system.id() {
                return Some(node.status());
            }
            let addr = rpc.filter(|_| alive)?;
            match node
                .system
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
        .shares(node.system.config().replicas)
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
            "node": &**node.system.id(),
            "replicas": node.system.config().replicas,
            "time_ms": node.system.clock().now_ms(),
            "version": crate::compat::VERSION,
            "features": view.features(),
            "members": members,
        }),
    )
}

pub(super) fn stats(node: &Node) -> Response<Body> {
    json_response(
        StatusCode::OK,
        json!({
            "id": &**node.system.id(),
            "store": node.store().stats(),
            "hints_pending": node.replica.hints_pending(),
            "memory": {
                "used": node.system.memory.used(),
                "limit": node.system.memory.limit(),
            },
            "counters": node.stats().snapshot(),
        }),
    )
}

/// `GET /cluster/replicas/{key}`: the key's N homes in preference order, each with its zone.
pub(super) fn replicas(node: &Node, key: &Bytes) -> Response<Body> {
    let view = node.system.view();
    let replicas: Vec<serde_json::Value> = node
        .system
        .replicas_of(key)
        .iter()
        .map(|id| {
            let zone = view.member(id).map(|m| &*m.zone);
            json!({"id": &**id, "zone": zone.unwrap_or(crate::ring::DEFAULT_ZONE)})
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"key": String::from_utf8_lossy(key), "replicas": replicas}),
    )
}

/// `POST /cluster/leave`: starts a decommission (202).
pub(super) async fn leave(node: &Node) -> Response<Body> {
    node.lifecycle.leave().await;
    json_response(
        StatusCode::ACCEPTED,
        json!({"status": "leaving", "keys": node.store().stats().keys}),
    )
}
