//! The RPC protocol against the previous release (0.1.0, commit fc31b74, protocol 5).
//!
//! `tests/fixtures/protocol-5.frames` holds frames the previous release encoded: its hello,
//! then one message of every request, response and error variant ([`samples`]). It was
//! recorded by compiling `tests/protocol/samples.rs` against a checkout of that commit, with
//! a test that wrote the hello and `samples()` as frames (`ringkv::codec::encode`) to the
//! file. A protocol change that the previous release would not read the same way makes these
//! tests fail: it needs a new protocol version, negotiated per connection
//! ([`ringkv::compat`]).

#[path = "protocol/samples.rs"]
mod samples;

use bytes::{Bytes, BytesMut};
use ringkv::codec::{self, FrameCodec};
use ringkv::compat::Protocols;
use ringkv::rpc::{Hello, Message};
use serde::Deserialize;
use tokio_util::codec::Decoder;

const FIXTURE: &[u8] = include_bytes!("fixtures/protocol-5.frames");

fn frames() -> Vec<Bytes> {
    let mut buf = BytesMut::from(FIXTURE);
    let mut codec = FrameCodec::new(1 << 20);
    let mut out = Vec::new();
    while let Some(frame) = codec.decode(&mut buf).expect("a valid frame") {
        out.push(frame);
    }
    assert!(buf.is_empty(), "trailing bytes in the fixture");
    out
}

fn encode<T: serde::Serialize>(msg: &T) -> Bytes {
    let mut buf = BytesMut::new();
    codec::encode(msg, &mut buf).expect("encode");
    let mut codec = FrameCodec::new(1 << 20);
    codec.decode(&mut buf).expect("frame").expect("whole")
}

#[test]
fn the_previous_releases_hello_is_read_as_protocol_5() {
    let frames = frames();
    let hello: Hello = codec::decode_payload(&frames[0]).expect("its hello decodes");
    assert_eq!(hello.cluster_id, "ring-1");
    assert_eq!(hello.node, "n1");
    assert_eq!(hello.generation, Some(1_700_000_000_001));
    assert_eq!(hello.nonce.as_deref(), Some(&[7u8; 32][..]));
    assert_eq!(hello.proof.as_deref(), Some(&[9u8; 32][..]));
    assert_eq!(hello.protocol_max, None);
    assert_eq!(hello.protocols(), Protocols::LEGACY);
    // This build meets it at 5.
    let ours = Hello::ours("ring-1".into(), "n2".into(), Some(1));
    assert_eq!(hello.negotiate(&ours).expect("compatible"), 5);
    assert_eq!(ours.negotiate(&hello).expect("compatible"), 5);
}

/// The previous release's `Hello`, field for field: what its decoder expects.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct PreviousHello {
    cluster_id: String,
    protocol: u32,
    node: String,
    #[serde(default)]
    generation: Option<u64>,
    #[serde(default)]
    nonce: Option<Bytes>,
    #[serde(default)]
    proof: Option<Bytes>,
}

#[test]
fn the_previous_release_reads_our_hello_and_sees_protocol_5() {
    let mut ours = Hello::ours("ring-1".into(), "n2".into(), Some(3));
    ours.nonce = Some(Bytes::from_static(&[1; 32]));
    ours.proof = Some(Bytes::from_static(&[2; 32]));
    let mut buf = BytesMut::new();
    ours.encode(&mut buf).expect("encode");
    let payload = FrameCodec::new(1 << 20)
        .decode(&mut buf)
        .expect("frame")
        .expect("whole");
    let old: PreviousHello = codec::decode_payload(&payload).expect("the old decoder reads it");
    assert_eq!(old.protocol, 5, "the previous release refuses any other");
    assert_eq!(old.cluster_id, "ring-1");
    assert_eq!(old.node, "n2");
    assert_eq!(old.generation, Some(3));
    assert_eq!(old.nonce.as_deref(), Some(&[1u8; 32][..]));
    assert_eq!(old.proof.as_deref(), Some(&[2u8; 32][..]));
    // The array form the previous release sent would not do: it refuses a longer array.
    let array = encode(&ours);
    assert!(codec::decode_payload::<PreviousHello>(&array).is_err());
    // And our own decoder reads both forms.
    let back: Hello = codec::decode_payload(&payload).expect("ours reads it");
    assert_eq!(back, ours);
}

#[test]
fn every_message_of_the_previous_release_decodes_and_encodes_back_byte_for_byte() {
    let frames = frames();
    let samples = samples::samples();
    assert_eq!(
        frames.len(),
        1 + samples.len(),
        "hello plus one frame per sample"
    );
    let mut seen = std::collections::BTreeSet::new();
    for (i, (frame, sample)) in frames[1..].iter().zip(&samples).enumerate() {
        let decoded: Message = codec::decode_payload(frame)
            .unwrap_or_else(|e| panic!("frame {i} of the previous release: {e}"));
        seen.insert(variant(&decoded));
        // Decoded and encoded again: the same bytes, so nothing was lost or reinterpreted.
        assert_eq!(&encode(&decoded), frame, "frame {i} re-encoded");
        // This build's encoding of the same value is the previous release's, exactly.
        assert_eq!(&encode(sample), frame, "sample {i} ({sample:?})");
    }
    // Every variant of the protocol is in the fixture.
    assert_eq!(seen.len(), VARIANTS, "{seen:?}");
}

/// How many arms [`variant`] has.
const VARIANTS: usize = 14 + 12 + 18;

/// The name of a message's variant. Exhaustive, without a wildcard: a new variant does not
/// compile here until it is named, and a variant the previous release does not know must only
/// be sent on connections of a newer protocol version (`ringkv::compat`).
fn variant(m: &Message) -> String {
    use ringkv::Error as E;
    use ringkv::rpc::{Request as Q, Response as A};
    let name = match m {
        Message::Request { body, .. } => match body {
            Q::Replicate { .. } => "replicate",
            Q::ReplicateMany { .. } => "replicate_many",
            Q::Read { .. } => "read",
            Q::ReadMany { .. } => "read_many",
            Q::Fingerprints { .. } => "fingerprints",
            Q::Purge { .. } => "purge",
            Q::AeDigest { .. } => "ae_digest",
            Q::AeChildren { .. } => "ae_children",
            Q::AeLeafKeys { .. } => "ae_leaf_keys",
            Q::Coordinate { .. } => "coordinate",
            Q::List { .. } => "list",
            Q::Events { .. } => "events",
            Q::Watching { .. } => "watching",
            Q::Status => "status",
        },
        Message::Response { body: Ok(body), .. } => match body {
            A::Replicated => "replicated",
            A::Versions(_) => "versions",
            A::Written(_) => "written",
            A::VersionsMany(_) => "versions_many",
            A::Fingerprints(_) => "fingerprints",
            A::AeSame => "ae_same",
            A::AeRoots(_) => "ae_roots",
            A::AeChildren(_) => "ae_children",
            A::AeKeys { .. } => "ae_keys",
            A::Listed(_) => "listed",
            A::Status(_) => "status",
            A::Done => "done",
        },
        Message::Response { body: Err(err), .. } => match err {
            E::InvalidInput(_)
            | E::NotFound(_)
            | E::MethodNotAllowed(_)
            | E::Unauthorized(_)
            | E::Forbidden(_)
            | E::RequestTimeout
            | E::ValueTooLarge { .. }
            | E::PreconditionFailed { .. }
            | E::Unavailable { .. }
            | E::Rejected(_)
            | E::Interrupted(_)
            | E::Timeout
            | E::Unreachable(_)
            | E::Protocol(_)
            | E::Shutdown
            | E::Storage(_)
            | E::Io(_)
            | E::Internal(_) => err.kind(),
            // Protocol 6 only: not in the previous release's fixture.
            E::MemoryFull { .. } => "memory_full (protocol 6)",
        },
    };
    let side = match m {
        Message::Request { .. } => "request",
        Message::Response { body: Ok(_), .. } => "response",
        Message::Response { body: Err(_), .. } => "error",
    };
    format!("{side}:{name}")
}

/// `MemoryFull` is new in protocol 6: a connection at 5 (the previous release) gets the
/// `Rejected` it already reads, and counts it as a refused copy.
#[test]
fn memory_full_reaches_the_previous_release_as_a_rejected_copy() {
    use ringkv::rpc::answer_for;
    let full = || Err(ringkv::Error::MemoryFull { used: 9, limit: 8 });
    let old = Message::Response {
        id: 1,
        body: answer_for(5, full()),
    };
    assert_eq!(variant(&old), "error:rejected");
    // It is a message the previous release decodes: one of the variants of its fixture.
    let frame = encode(&old);
    let back: Message = codec::decode_payload(&frame).expect("decodes");
    match back {
        Message::Response {
            body: Err(ringkv::Error::Rejected(msg)),
            ..
        } => assert!(msg.starts_with("memory full"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let new = Message::Response {
        id: 1,
        body: answer_for(6, full()),
    };
    assert_eq!(variant(&new), "error:memory_full (protocol 6)");
}
