//! Key-aware routing for clients (Cassandra drivers call it token-aware): a client that knows
//! the ring sends each request straight to a home replica of its key, so a write skips the
//! hop from the node that received it to the key's coordinator.
//!
//! A client learns the ring from `GET /cluster/ring` ([`crate::api`]): its version, N, the
//! vnode count, and every ring node with its HTTP address, whether it serves, its tokens and
//! its zone. It rebuilds the ring with [`Ring::with_zones`] and checks that its tokens are
//! the node's (so a node that hashes differently is never routed by a wrong ring). Every answer carries the
//! version in `x-ringkv-ring`; a client that sees another version fetches the ring again.
//!
//! Routing is a first choice, never a requirement: the client sends a write to the key's
//! first serving home, a read to one of its serving homes in turn, and if that node cannot be
//! reached it falls back to the nodes it was given, as without routing.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ring::{NodeId, Ring, Segment, Zone};

/// The ring as a client routes by it.
#[derive(Debug)]
pub struct Routes {
    /// The version the node sent (`x-ringkv-ring`).
    pub version: String,
    replicas: usize,
    ring: Ring,
    /// HTTP address (`host:port`) of each serving ring node.
    serving: HashMap<NodeId, String>,
    /// The ring's `--cluster-id`; empty from nodes before 0.2.0, which do not say.
    pub cluster_id: String,
}

#[derive(Deserialize)]
struct WireRing {
    version: String,
    replicas: usize,
    vnodes: usize,
    hash: String,
    nodes: Vec<WireNode>,
    #[serde(default)]
    cluster_id: String,
}

#[derive(Deserialize)]
struct WireNode {
    id: String,
    http: Option<String>,
    serving: bool,
    tokens: Vec<u64>,
    /// The zone placement puts it in; absent from nodes before 0.2.0, which place by
    /// position alone.
    #[serde(default)]
    zone: Option<String>,
}

impl Routes {
    /// Reads a `GET /cluster/ring` answer. Fails if the ring is not one this client can
    /// rebuild exactly (another hash, other tokens).
    pub fn from_json(body: &[u8]) -> Result<Routes> {
        let wire: WireRing = serde_json::from_slice(body)
            .map_err(|e| Error::Protocol(format!("bad /cluster/ring answer: {e}")))?;
        if wire.hash != "xxh3_64" {
            return Err(Error::Protocol(format!(
                "the ring hashes keys with {}, this client with xxh3_64",
                wire.hash
            )));
        }
        let ring = Ring::with_zones(
            wire.nodes.iter().map(|n| {
                let zone = n.zone.as_deref().unwrap_or(crate::ring::DEFAULT_ZONE);
                (NodeId::from(n.id.as_str()), Zone::from(zone))
            }),
            wire.vnodes,
        );
        for n in &wire.nodes {
            let mut theirs = n.tokens.clone();
            theirs.sort_unstable();
            if ring.tokens_of(&n.id) != theirs {
                return Err(Error::Protocol(format!(
                    "node {}'s tokens differ from this client's ring",
                    n.id
                )));
            }
        }
        let serving = wire
            .nodes
            .into_iter()
            .filter(|n| n.serving)
            .filter_map(|n| Some((NodeId::from(n.id.as_str()), n.http?)))
            .collect();
        Ok(Routes {
            cluster_id: wire.cluster_id,
            version: wire.version,
            replicas: wire.replicas,
            ring,
            serving,
        })
    }

    /// The HTTP addresses of every serving ring node.
    pub fn serving(&self) -> impl Iterator<Item = &str> {
        self.serving.values().map(String::as_str)
    }

    /// N.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Every ring node, serving or not.
    pub fn nodes(&self) -> &[NodeId] {
        self.ring.nodes()
    }

    /// The ring cut into segments as the nodes cut it ([`Ring::segments`]), each with the
    /// HTTP addresses of its serving home replicas (none if no home serves).
    pub fn segments(&self) -> Vec<(Segment, Vec<String>)> {
        self.ring
            .segments(self.replicas)
            .into_iter()
            .map(|seg| {
                let homes = seg
                    .homes
                    .iter()
                    .filter_map(|id| self.serving.get(id).cloned())
                    .collect();
                (seg, homes)
            })
            .collect()
    }

    /// The HTTP addresses of `key`'s serving home replicas, in preference order: the first
    /// coordinates its writes.
    pub fn homes(&self, key: &[u8]) -> Vec<&str> {
        self.ring
            .preference_list(key, self.replicas)
            .iter()
            .filter_map(|id| self.serving.get(id).map(String::as_str))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(vnodes: usize, serving: &[bool; 3], tokens_from: Option<&Ring>) -> Vec<u8> {
        let ids = ["n1", "n2", "n3"];
        let ring = Ring::new(ids.iter().map(|i| NodeId::from(*i)), vnodes);
        let nodes: Vec<serde_json::Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                serde_json::json!({
                    "id": id,
                    "http": format!("127.0.0.1:800{}", i + 1),
                    "serving": serving[i],
                    "tokens": tokens_from.unwrap_or(&ring).tokens_of(id),
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "version": "v1", "replicas": 2, "vnodes": vnodes, "hash": "xxh3_64", "nodes": nodes,
        }))
        .unwrap()
    }

    #[test]
    fn homes_follow_the_nodes_ring_and_skip_those_not_serving() {
        let routes = Routes::from_json(&answer(16, &[true, true, true], None)).unwrap();
        let ring = Ring::new(["n1", "n2", "n3"].map(NodeId::from), 16);
        for key in [&b"a"[..], b"user/42", b"zz"] {
            let want: Vec<String> = ring
                .preference_list(key, 2)
                .iter()
                .map(|id| format!("127.0.0.1:800{}", &id[1..]))
                .collect();
            assert_eq!(routes.homes(key), want, "{key:?}");
        }
        let one_down = Routes::from_json(&answer(16, &[false, true, true], None)).unwrap();
        for key in [&b"a"[..], b"user/42", b"zz"] {
            assert!(!one_down.homes(key).contains(&"127.0.0.1:8001"));
        }
    }

    /// With zones, the client places keys as the ring does: by zone.
    #[test]
    fn homes_follow_the_zones_the_ring_sends() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&answer(16, &[true, true, true], None)).unwrap();
        let zones = ["a", "a", "b"];
        for (node, zone) in v["nodes"].as_array_mut().unwrap().iter_mut().zip(zones) {
            node["zone"] = zone.into();
        }
        let routes = Routes::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
        let ring = Ring::with_zones(
            ["n1", "n2", "n3"]
                .into_iter()
                .zip(zones)
                .map(|(n, z)| (NodeId::from(n), Zone::from(z))),
            16,
        );
        for i in 0..200 {
            let key = format!("key-{i}");
            let want: Vec<String> = ring
                .preference_list(key.as_bytes(), 2)
                .iter()
                .map(|id| format!("127.0.0.1:800{}", &id[1..]))
                .collect();
            assert_eq!(routes.homes(key.as_bytes()), want, "{key}");
            // One home in each zone.
            assert!(
                want.contains(&"127.0.0.1:8003".to_string()),
                "{key}: {want:?}"
            );
        }
    }

    #[test]
    fn a_ring_this_client_cannot_rebuild_is_refused() {
        let other = Ring::new(["n1", "n2", "n3"].map(NodeId::from), 8);
        assert!(Routes::from_json(&answer(16, &[true; 3], Some(&other))).is_err());
        let mut v: serde_json::Value =
            serde_json::from_slice(&answer(16, &[true; 3], None)).unwrap();
        v["hash"] = "md5".into();
        assert!(Routes::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
        assert!(Routes::from_json(b"garbage").is_err());
    }
}
