//! The data that crosses the wire inside [`Request`](super::Request) and
//! [`Response`](super::Response).
//!
//! These are plain data, defined here so that the protocol depends on nothing above the pure
//! cores ([`crate::version`], [`crate::merkle`]). The features that own them re-export them
//! under their old paths (`crate::coordinator::Write`, `crate::store::ListPage`,
//! `crate::watch::Event`, `crate::stats::NodeStatus`, ...) and keep the methods that need
//! feature code: the WebSocket form of an [`Event`] and the gossiped form of an
//! [`Announcement`] live in [`crate::watch`].
//!
//! Any change to a type here that MessagePack would not read the same way is a change of the
//! protocol. Structs cross as MessagePack arrays, and the previous release refuses an array
//! longer than it expects: even a field added at the end, with `#[serde(default)]`, breaks
//! it. Such a change needs a new protocol version ([`crate::compat::PROTOCOL_MAX`]), and the
//! old form on every connection that negotiated the old version. `tests/protocol.rs` holds
//! frames recorded from the previous release, which must decode and re-encode byte for byte.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::version::{Condition, Context, Meta};

/// A client write, as the coordinator runs it. A node that is not the key's coordinator
/// forwards this same value ([`Request::Coordinate`](super::Request::Coordinate)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub key: Bytes,
    /// The value; `None` deletes.
    pub value: Option<Bytes>,
    /// Content type and expiry.
    pub meta: Option<Box<Meta>>,
    /// What the client has seen; `None` for everything the coordinator holds.
    pub context: Option<Context>,
    pub condition: Condition,
    /// Acknowledgements to wait for (default W).
    pub w: Option<usize>,
    /// Of those, acknowledgements from home replicas (default 0).
    pub pw: Option<usize>,
}

/// What a write waits for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteQuorum {
    /// Acknowledgements from any replica, home or fallback (sloppy quorum).
    pub w: usize,
    /// Of those, acknowledgements that must come from home replicas (Riak's `pw`).
    pub pw: usize,
}

/// A segment's position in the ring's segment list ([`crate::ring::Ring::segments`]): the
/// same on every node with the same ring.
pub type SegmentId = u32;

/// One key of a listing page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    pub key: Bytes,
    /// [`VersionSet::fingerprint`](crate::version::VersionSet::fingerprint): replicas with
    /// equal fingerprints hold the same writes.
    pub fingerprint: u64,
    /// [`VersionSet::live_until`](crate::version::VersionSet::live_until).
    pub live_until: u64,
}

/// One node's answer to a listing ([`crate::store::Store::list`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    /// Keys in order.
    pub entries: Vec<ListEntry>,
    /// Whether keys after the last entry may match.
    pub more: bool,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Delete,
    Expire,
}

/// One change, as sent to watchers ([`crate::watch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub op: Op,
    pub key: Bytes,
    /// The value written (puts only).
    pub value: Option<Bytes>,
    /// The key's context after the change, as a client would send it back.
    pub context: String,
}

/// What one node watches, as announced: a version (newest wins) and its prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Announcements of one node only grow, across restarts too: a version is at least the
    /// wall-clock time in ms of the change it announces.
    pub version: u64,
    pub prefixes: Vec<Bytes>,
}

impl Announcement {
    /// The gossiped form: JSON with base64url prefixes.
    pub fn encode(&self) -> String {
        let p: Vec<String> = self
            .prefixes
            .iter()
            .map(|p| URL_SAFE_NO_PAD.encode(p))
            .collect();
        json!({"v": self.version, "p": p}).to_string()
    }

    /// Parses [`Announcement::encode`]; `None` for anything else.
    pub fn decode(s: &str) -> Option<Announcement> {
        #[derive(Deserialize)]
        struct Wire {
            v: u64,
            p: Vec<String>,
        }
        let w: Wire = serde_json::from_str(s).ok()?;
        let prefixes =
            w.p.iter()
                .map(|p| URL_SAFE_NO_PAD.decode(p).ok().map(Bytes::from))
                .collect::<Option<Vec<_>>>()?;
        Some(Announcement {
            version: w.v,
            prefixes,
        })
    }

    pub(crate) fn matches(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }
}

/// What the status page shows of one node (`GET /cluster/status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub keys: u64,
    pub tombstones: u64,
    pub bytes: u64,
    pub hints_pending: u64,
    pub ae_rounds: u64,
    pub ae_keys_repaired: u64,
    pub ae_bytes_sent: u64,
    pub ae_bytes_received: u64,
    /// HTTP requests answered since the node started.
    pub requests: u64,
    /// Connected WebSocket watchers.
    pub watchers: u64,
    /// The members this node routes requests to (serving), with their generations: a node
    /// that just started asks its peers for this to learn that they see it
    /// ([`crate::readiness`]'s `announced`). Defaults to empty from an older peer.
    #[serde(default)]
    pub serving: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::codec::{self, FrameCodec};
    use crate::rpc::Request;

    /// A forwarded write reaches its coordinator as the same value, every field kept.
    #[test]
    fn a_forwarded_write_crosses_the_wire_whole() {
        let write = Write {
            key: Bytes::from_static(b"k"),
            value: Some(Bytes::from_static(b"v")),
            meta: Meta {
                content_type: Some("text/plain".into()),
                expires_at: Some(42),
            }
            .boxed(),
            context: Some(Context::default()),
            condition: Condition::IfAbsent,
            w: Some(2),
            pw: None,
        };
        let quorum = WriteQuorum { w: 2, pw: 1 };
        let mut buf = BytesMut::new();
        codec::encode(
            &Request::Coordinate {
                write: write.clone(),
                quorum,
            },
            &mut buf,
        )
        .unwrap();
        let payload = FrameCodec::new(1024).decode(&mut buf).unwrap().unwrap();
        match codec::decode_payload(&payload).unwrap() {
            Request::Coordinate {
                write: got,
                quorum: q,
            } => {
                assert_eq!(got, write);
                assert_eq!(q, quorum);
            }
            other => panic!("decoded as {other:?}"),
        }
    }
}
