//! One value of every RPC message variant, with fields filled in: what
//! `tests/fixtures/protocol-5.frames` recorded from the previous release (0.1.0, commit
//! fc31b74), and what this build must still encode byte for byte for a protocol-5 peer.
//!
//! This file uses only what the previous release's public API has, so the same file was
//! compiled against it to record the fixture (see `tests/protocol.rs`).

use bytes::Bytes;
use ringkv::Error;
use ringkv::merkle::NodeRef;
use ringkv::rpc::{
    Announcement, Event, ListEntry, ListPage, Message, NodeStatus, Op, Request, Response, Trace,
    Write, WriteQuorum,
};
use ringkv::version::{Actor, Condition, Context, Meta, VersionSet};

/// A version set with two siblings, one carrying metadata, and a tombstone over a third.
fn versions() -> VersionSet {
    let (a, b) = (Actor::new("n1", 1_700_000_000_001), Actor::new("n2", 7));
    let mut set = VersionSet::new();
    let first = set.write(&a, None, Some(Bytes::from_static(b"v1")));
    let meta = Meta {
        content_type: Some("text/plain".into()),
        expires_at: Some(1_800_000_000_000),
    };
    set.write_above(&b, None, Some(Bytes::from_static(b"v2")), meta.boxed(), 3);
    set.write(&a, Some(&first), None);
    set
}

fn context() -> Context {
    versions().context()
}

fn write() -> Write {
    Write {
        key: Bytes::from_static(b"key/1"),
        value: Some(Bytes::from_static(b"value")),
        meta: Meta {
            content_type: Some("application/json".into()),
            expires_at: Some(42),
        }
        .boxed(),
        context: Some(context()),
        condition: Condition::IfMatch(context()),
        w: Some(2),
        pw: Some(1),
    }
}

fn page() -> ListPage {
    ListPage {
        entries: vec![ListEntry {
            key: Bytes::from_static(b"a"),
            fingerprint: 0xdead_beef,
            live_until: u64::MAX,
        }],
        more: true,
    }
}

fn request(id: u64, body: Request) -> Message {
    let trace = id.is_multiple_of(2).then(|| Trace {
        request: "req-1".into(),
        coordinator: "n1".into(),
    });
    Message::Request { id, body, trace }
}

/// Every request variant, then every response variant, then an error response of every
/// error variant that crosses the wire.
pub fn samples() -> Vec<Message> {
    let key = || Bytes::from_static(b"k");
    let requests = vec![
        Request::Replicate {
            key: key(),
            versions: versions(),
            hint_for: Some("n3".into()),
        },
        Request::ReplicateMany {
            items: vec![
                (key(), versions()),
                (Bytes::from_static(b"empty"), VersionSet::new()),
            ],
        },
        Request::Read { key: key() },
        Request::ReadMany {
            keys: vec![key(), Bytes::from_static(b"\x00\xff")],
        },
        Request::Fingerprints { keys: vec![key()] },
        Request::Purge {
            items: vec![(key(), 99)],
        },
        Request::AeDigest {
            ring: 1,
            from: "n2".into(),
            digest: 2,
        },
        Request::AeChildren {
            ring: 1,
            nodes: vec![(3, NodeRef { level: 1, index: 5 })],
        },
        Request::AeLeafKeys {
            ring: 1,
            leaves: vec![(3, 17)],
        },
        Request::Coordinate {
            write: write(),
            quorum: WriteQuorum { w: 2, pw: 1 },
        },
        Request::Coordinate {
            write: Write {
                key: key(),
                condition: Condition::IfAbsent,
                ..Write::default()
            },
            quorum: WriteQuorum { w: 1, pw: 0 },
        },
        Request::List {
            prefix: Bytes::from_static(b"p/"),
            after: Some(Bytes::from_static(b"p/1")),
            limit: 100,
        },
        Request::Events {
            events: vec![Event {
                op: Op::Put,
                key: key(),
                value: Some(Bytes::from_static(b"v")),
                context: context().encode(),
            }],
        },
        Request::Watching {
            node: "n4".into(),
            announcement: Announcement {
                version: 5,
                prefixes: vec![Bytes::from_static(b"a/")],
            },
        },
        Request::Status,
    ];
    let responses = vec![
        Response::Replicated,
        Response::Versions(versions()),
        Response::Written(context()),
        Response::VersionsMany(vec![versions(), VersionSet::new()]),
        Response::Fingerprints(vec![0, u64::MAX]),
        Response::AeSame,
        Response::AeRoots(vec![1, 2, 3]),
        Response::AeChildren(vec![Some(vec![1; 16]), None]),
        Response::AeKeys {
            covered: 2,
            keys: vec![(key(), 7, false), (Bytes::from_static(b"t"), 8, true)],
        },
        Response::Listed(page()),
        Response::Status(NodeStatus {
            keys: 1,
            tombstones: 2,
            bytes: 3,
            hints_pending: 4,
            ae_rounds: 5,
            ae_keys_repaired: 6,
            ae_bytes_sent: 7,
            ae_bytes_received: 8,
            requests: 9,
            watchers: 10,
            serving: vec![("n1".into(), 11)],
        }),
        Response::Done,
    ];
    let errors = vec![
        Error::InvalidInput("bad".into()),
        Error::NotFound("/x".into()),
        Error::MethodNotAllowed("GET".into()),
        Error::Unauthorized("no token".into()),
        Error::Forbidden("read only".into()),
        Error::RequestTimeout,
        Error::ValueTooLarge { size: 2, limit: 1 },
        Error::PreconditionFailed {
            context: context().encode(),
        },
        Error::Unavailable {
            replied: 1,
            required: 2,
        },
        Error::Rejected("busy".into()),
        Error::Interrupted("lost".into()),
        Error::Timeout,
        Error::Unreachable("down".into()),
        Error::Protocol("garbage".into()),
        Error::Shutdown,
        Error::Storage("disk full".into()),
        Error::from(std::io::Error::other("io")),
        Error::internal("a library failed"),
    ];
    let mut out = Vec::new();
    let mut id = 0;
    for body in requests {
        id += 1;
        out.push(request(id, body));
    }
    for body in responses {
        id += 1;
        out.push(Message::Response { id, body: Ok(body) });
    }
    for err in errors {
        id += 1;
        out.push(Message::Response { id, body: Err(err) });
    }
    out
}
