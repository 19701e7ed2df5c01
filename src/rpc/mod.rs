//! The node-to-node RPC protocol over TCP.
//!
//! Each node keeps one persistent connection to each peer it talks to ([`client::Pool`]).
//! Many requests share it: every request carries an id and the response carries the same id,
//! so responses may come back in any order and a slow request never blocks a fast one.
//!
//! A connection opens with a [`Hello`] from each side. It carries the cluster id and the
//! range of protocol versions the sender speaks: two rings that happen to share a network
//! refuse each other instead of mixing data, and the connection uses the highest version
//! both ends speak, so a ring of mixed builds keeps working ([`crate::compat`]). Builds
//! with no version in common refuse each other.
//!
//! Frames are length + CRC32 + MessagePack ([`crate::codec`]). Anything a peer sends that does
//! not decode (bad checksum, oversized, unknown message) closes that one connection; it is
//! counted (the node's `rpc_frames_rejected` counter) and logged, and the node keeps
//! serving everything else. The requester sees its pending calls fail and reconnects on the
//! next call.
//!
//! Messages are requests or responses, each a documented enum. Errors that cross the link keep
//! their [`Error`] variant. The data they carry is defined in [`types`], so that the protocol
//! depends on nothing above the pure cores.
//!
//! Every request is answered by one handler, `serve_*`, on the part of the node that owns it
//! (the replica, the coordinator, anti-entropy, watches); `impl Service for Node` in
//! [`crate::node`] is the one dispatch. A new request
//! is a variant here (and its data in [`types`]), a handler next to its feature, and one
//! line in that dispatch.
//!
//! A request made on behalf of a client carries a [`Trace`]: the client request's id and the
//! node coordinating it. The serving node handles it inside a `rpc` tracing span with both, so
//! one grep for a request id finds its lines in the logs of every node it touched.

pub mod auth;
pub mod client;
pub mod server;
pub mod types;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::compat::Protocols;
use crate::error::{Error, Result};
use crate::merkle::NodeRef;
use crate::version::{Context, VersionSet};

pub use types::{
    Announcement, Event, ListEntry, ListPage, NodeStatus, Op, SegmentId, Write, WriteQuorum,
};

/// The newest protocol version this build speaks ([`crate::compat::PROTOCOL_MAX`]). History:
/// 4: `Coordinate` carries the client's [`Write`] itself. 5: the hello carries the nonces
/// and proofs of the cluster secret ([`auth`]); the previous release, 0.1.0, speaks only 5.
/// From 0.2.0 the hello also carries the range a node speaks, and each connection uses the
/// highest version both ends speak ([`Hello::negotiate`]). 6: an answer may be
/// [`Error::MemoryFull`] ([`answer_for`]).
pub const PROTOCOL_VERSION: u32 = crate::compat::PROTOCOL_MAX;

/// An answer as a connection at `protocol` can carry it: before protocol 6 there is no
/// [`Error::MemoryFull`] (the previous release's decoder would refuse the whole frame), so it
/// goes as the [`Error::Rejected`] an older coordinator already counts as a refused copy.
pub fn answer_for(protocol: u32, body: Result<Response>) -> Result<Response> {
    match body {
        Err(err @ Error::MemoryFull { .. }) if protocol < 6 => {
            Err(Error::Rejected(err.to_string()))
        }
        other => other,
    }
}

/// The first frame each side sends on a new connection.
///
/// It is the one message sent as a MessagePack *map* ([`Hello::encode`]): the previous
/// release decodes a map by field name and skips names it does not know, so fields added
/// here after 0.1.0 (`protocol_max`) reach new peers and are ignored by old ones. Every other
/// message is an array, whose length the previous release checks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// Nodes of different clusters never exchange data.
    pub cluster_id: String,
    /// The lowest protocol version the sender speaks. The previous release speaks only 5 and
    /// refuses a hello whose `protocol` is not 5, which is why this is the low end.
    pub protocol: u32,
    /// The sender's node id: a client checks it is the node it meant to reach.
    pub node: String,
    /// The sender's generation (its start time), checked with `node`: a restarted node is
    /// a new generation, and the old one's address may now belong to another process.
    #[serde(default)]
    pub generation: Option<u64>,
    /// With a cluster secret: the sender's fresh nonce ([`auth`]).
    #[serde(default)]
    pub nonce: Option<Bytes>,
    /// With a cluster secret, from the server: its proof ([`auth`]).
    #[serde(default)]
    pub proof: Option<Bytes>,
    /// The highest protocol version the sender speaks; absent from the previous release,
    /// which speaks `protocol` only.
    #[serde(default)]
    pub protocol_max: Option<u32>,
}

impl Hello {
    /// The hello of a node of this build.
    pub fn ours(cluster_id: String, node: String, generation: Option<u64>) -> Hello {
        Hello::speaking(cluster_id, node, generation, Protocols::OURS)
    }

    /// A hello that offers `protocols` (tests offer other ranges than this build's).
    pub fn speaking(
        cluster_id: String,
        node: String,
        generation: Option<u64>,
        protocols: Protocols,
    ) -> Hello {
        Hello {
            cluster_id,
            protocol: protocols.min,
            node,
            generation,
            nonce: None,
            proof: None,
            protocol_max: Some(protocols.max),
        }
    }

    /// The protocol versions the sender speaks.
    pub fn protocols(&self) -> Protocols {
        Protocols {
            min: self.protocol,
            max: self
                .protocol_max
                .unwrap_or(self.protocol)
                .max(self.protocol),
        }
    }

    /// Encodes the hello as one frame, as a map (see the type's docs).
    pub fn encode(&self, dst: &mut bytes::BytesMut) -> Result<()> {
        crate::codec::encode_named(self, dst)
    }

    /// Checks a peer's hello against ours, and returns the protocol version the connection
    /// uses. A peer of another cluster is a protocol error; a peer whose versions do not
    /// meet ours is [`VersionMismatch`].
    pub fn negotiate(&self, ours: &Hello) -> std::result::Result<u32, HelloRefused> {
        if self.cluster_id != ours.cluster_id {
            return Err(HelloRefused::Cluster(Error::Protocol(format!(
                "peer {} is in cluster {:?}, we are in {:?}",
                self.node, self.cluster_id, ours.cluster_id
            ))));
        }
        let (theirs, mine) = (self.protocols(), ours.protocols());
        mine.negotiate(theirs)
            .ok_or_else(|| HelloRefused::Version(VersionMismatch { theirs, ours: mine }))
    }

    /// [`Hello::negotiate`], as both ends of a connection act on it: the version to use, or the
    /// error to close with, a version mismatch counted and logged by `refusals`.
    pub fn accept(&self, ours: &Hello, refusals: &auth::Refusals) -> Result<u32> {
        match self.negotiate(ours) {
            Ok(v) => Ok(v),
            Err(HelloRefused::Cluster(err)) => Err(err),
            Err(HelloRefused::Version(mismatch)) => Err(refusals.version(&self.node, mismatch)),
        }
    }
}

/// Why a hello was refused.
#[derive(Debug)]
pub enum HelloRefused {
    /// Another cluster's node: a protocol error, counted as a bad frame.
    Cluster(Error),
    /// A build whose protocol versions do not meet ours: refused, counted as a refused
    /// handshake and logged at a bounded rate ([`auth::Refusals`]).
    Version(VersionMismatch),
}

/// Two hellos whose protocol ranges do not meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionMismatch {
    pub theirs: Protocols,
    pub ours: Protocols,
}

impl std::fmt::Display for VersionMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the peer speaks protocol {}, this build speaks {}",
            self.theirs, self.ours
        )
    }
}

/// Which client request an RPC serves, for logs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Trace {
    /// The request id (`x-request-id`, or one the receiving node made up).
    pub request: Arc<str>,
    /// The node coordinating the request.
    pub coordinator: Arc<str>,
}

tokio::task_local! {
    /// The trace of the client request the current task works for, if any. Every RPC sent
    /// from inside it carries it.
    pub static TRACE: Trace;
}

/// The current task's trace.
pub fn current_trace() -> Option<Trace> {
    TRACE.try_with(Clone::clone).ok()
}

/// `fut`, run inside the current task's trace and tracing span: for work a request spawns.
pub fn in_current_trace<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    let trace = current_trace();
    async move {
        match trace {
            Some(t) => TRACE.scope(t, fut).await,
            None => fut.await,
        }
    }
    .instrument(tracing::Span::current())
}

/// Every frame after the hello.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Message {
    /// A call; the peer answers with a `Response` of the same id.
    Request {
        id: u64,
        body: Request,
        trace: Option<Trace>,
    },
    /// The answer to the request with this id.
    Response { id: u64, body: Result<Response> },
}

/// What one node asks of another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Merge these versions of a key into your store (replication and read repair). With
    /// `hint_for`, you are a fallback: keep them as a hint for that home replica instead.
    Replicate {
        key: Bytes,
        versions: VersionSet,
        hint_for: Option<String>,
    },
    /// Merge all of these into your store (hint delivery, anti-entropy).
    ReplicateMany { items: Vec<(Bytes, VersionSet)> },
    /// Send me the versions of a key you store (empty if none).
    Read { key: Bytes },
    /// Send me your versions of these keys, in order, stopping early once the answer passes
    /// [`ANSWER_BUDGET`] bytes (at least one key is always answered).
    ReadMany { keys: Vec<Bytes> },
    /// Send me the fingerprints of these keys (0 if absent), in order.
    Fingerprints { keys: Vec<Bytes> },
    /// Tombstone GC: every member holds these tombstones (key, fingerprint) or nothing;
    /// drop each one you still hold with that fingerprint.
    Purge { items: Vec<(Bytes, u64)> },
    /// Anti-entropy, step 1: here is a digest of the roots of every segment whose home
    /// replicas include both of us, on the ring with fingerprint `ring`. Equal: answer
    /// `AeSame`; otherwise send your roots of those segments, in segment order.
    AeDigest {
        ring: u64,
        from: String,
        digest: u64,
    },
    /// Anti-entropy, step 2: send the children hashes of these tree nodes.
    AeChildren {
        ring: u64,
        nodes: Vec<(SegmentId, NodeRef)>,
    },
    /// Anti-entropy, step 3: send the keys and fingerprints in these leaves, stopping after
    /// the leaf that takes the answer past [`ANSWER_BUDGET`] bytes.
    AeLeafKeys {
        ring: u64,
        leaves: Vec<(SegmentId, u32)>,
    },
    /// Coordinate this client write yourself: you are the key's first live replica in my view.
    /// `quorum` is the write's `w` and `pw` as I resolved them (my defaults filled in). The
    /// receiver never forwards again, so views that disagree for a moment cannot make a
    /// request bounce between nodes.
    Coordinate { write: Write, quorum: WriteQuorum },
    /// Send me your keys starting with `prefix` after `after`, in key order, at most `limit`,
    /// with their versions stripped of values.
    List {
        prefix: Bytes,
        after: Option<Bytes>,
        limit: u32,
    },
    /// These changes happened; hand them to your watchers.
    Events { events: Vec<Event> },
    /// `node`'s watchers follow these prefixes now: send it the matching events.
    Watching {
        node: String,
        announcement: Announcement,
    },
    /// Send me your status, for the status page.
    Status,
}

impl Request {
    /// The request's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Replicate { .. } => "replicate",
            Request::ReplicateMany { .. } => "replicate_many",
            Request::Read { .. } => "read",
            Request::ReadMany { .. } => "read_many",
            Request::Fingerprints { .. } => "fingerprints",
            Request::Purge { .. } => "purge",
            Request::AeDigest { .. } => "ae_digest",
            Request::AeChildren { .. } => "ae_children",
            Request::AeLeafKeys { .. } => "ae_leaf_keys",
            Request::Coordinate { .. } => "coordinate",
            Request::List { .. } => "list",
            Request::Events { .. } => "events",
            Request::Watching { .. } => "watching",
            Request::Status => "status",
        }
    }
}

/// Successful answers, one per [`Request`] kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// The versions were merged.
    Replicated,
    /// The replica's versions of the key.
    Versions(VersionSet),
    /// The coordinated write met its quorum; the context of the new version.
    Written(Context),
    /// Answer to `ReadMany`: versions of the first `len()` keys asked for.
    VersionsMany(Vec<VersionSet>),
    /// Answer to `Fingerprints`.
    Fingerprints(Vec<u64>),
    /// Answer to `AeDigest`: our roots agree.
    AeSame,
    /// Answer to `AeDigest`: our roots of the shared segments, in segment order.
    AeRoots(Vec<u64>),
    /// Answer to `AeChildren`, one entry per node asked (`None` for a leaf or unknown node).
    AeChildren(Vec<Option<Vec<u64>>>),
    /// Answer to `AeLeafKeys`: how many of the leaves asked for are covered, and their keys
    /// with fingerprints and whether each is an expired tombstone (only tombstones, older
    /// than the grace period).
    AeKeys {
        covered: usize,
        keys: Vec<(Bytes, u64, bool)>,
    },
    /// Answer to `List`.
    Listed(ListPage),
    /// Answer to `Status`.
    Status(NodeStatus),
    /// Done (`Events`, `Watching`).
    Done,
}

/// Size above which list answers stop growing, so that no answer approaches the frame limit
/// (which must still fit one maximum-size value).
pub const ANSWER_BUDGET: usize = 1024 * 1024;

/// What serves requests on the RPC port: the node.
pub trait Service: Send + Sync + 'static {
    /// Answers one request.
    fn call(self: Arc<Self>, req: Request) -> impl Future<Output = Result<Response>> + Send;

    /// Whether answering `req` may wait (on other replicas, or on the disk). The server runs
    /// such requests beside the connection's reader, so they do not hold up the requests
    /// behind them; the others it answers inline, which costs no task.
    fn may_wait(&self, req: &Request) -> bool {
        matches!(req, Request::Coordinate { .. })
    }
}

/// A writer stops coalescing queued frames past this many bytes, so one batch never holds
/// many large values.
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Sends every message from `rx` to `wr` as frames, until `rx` closes or a write fails.
///
/// Frames waiting in the channel are coalesced into one buffer and one `write_all`, so under
/// load many requests cost one syscall; when idle, a lone frame goes out at once.
pub(crate) async fn write_frames<W>(
    mut wr: W,
    rx: &mut tokio::sync::mpsc::Receiver<Message>,
    mut mac: Option<auth::FrameMac>,
) -> Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;

    let mut buf = bytes::BytesMut::with_capacity(8 * 1024);
    while let Some(msg) = rx.recv().await {
        buf.clear();
        auth::encode(&msg, &mut buf, &mut mac)?;
        while buf.len() < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(msg) => auth::encode(&msg, &mut buf, &mut mac)?,
                Err(_) => break,
            }
        }
        wr.write_all(&buf).await?;
    }
    Ok(())
}

/// Reads one frame and decodes it as `T`, or fails if the stream ends first.
pub(crate) async fn read_one<R, T>(
    reader: &mut tokio_util::codec::FramedRead<R, crate::codec::FrameCodec>,
) -> Result<T>
where
    R: tokio::io::AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    use futures_util::StreamExt;
    match reader.next().await {
        Some(frame) => crate::codec::decode_payload(&frame?),
        None => Err(Error::Unreachable("connection closed".into())),
    }
}

/// Servers and pools over [`crate::net::mem`], for the RPC layer's and its users' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::client::{Pool, PoolConfig};
    use super::server::{ServerContext, serve};
    use super::{Hello, Service};
    use crate::net::Network;
    use crate::net::mem::MemNet;

    /// The hello of every test node.
    pub(crate) fn hello(node: &str) -> Hello {
        Hello::ours("test".into(), node.into(), None)
    }

    /// Serves `service` on a fresh address of `net`, with `max_in_flight` requests that may
    /// wait per connection, until the returned context's `shutdown` fires.
    pub(crate) async fn start_server<S: Service>(
        net: &MemNet,
        service: Arc<S>,
        max_in_flight: usize,
    ) -> (SocketAddr, Arc<ServerContext<S>>) {
        start_server_saying(net, service, max_in_flight, hello("server")).await
    }

    /// As [`start_server`], answering handshakes with `hello`.
    pub(crate) async fn start_server_saying<S: Service>(
        net: &MemNet,
        service: Arc<S>,
        max_in_flight: usize,
        hello: Hello,
    ) -> (SocketAddr, Arc<ServerContext<S>>) {
        let listener = net
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctx = Arc::new(ServerContext {
            service,
            hello,
            max_payload: 1024 * 1024,
            frames_rejected: Arc::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            auth: None,
            refusals: Arc::new(super::auth::Refusals::new(Arc::default())),
            max_in_flight,
            in_flight_refused: Arc::new(AtomicU64::new(0)),
        });
        tokio::spawn(serve(listener, ctx.clone()));
        (addr, ctx)
    }

    /// A pool over `net` whose calls time out after `timeout`.
    pub(crate) fn pool(net: Arc<MemNet>, timeout: Duration) -> Pool {
        pool_expecting(net, timeout, None)
    }

    /// As [`pool`], checking who answers at each address with `expect`.
    pub(crate) fn pool_expecting(
        net: Arc<MemNet>,
        timeout: Duration,
        expect: Option<super::client::Expect>,
    ) -> Pool {
        pool_saying(net, timeout, expect, hello("client"))
    }

    /// As [`pool_expecting`], opening connections with `hello`.
    pub(crate) fn pool_saying(
        net: Arc<MemNet>,
        timeout: Duration,
        expect: Option<super::client::Expect>,
        hello: Hello,
    ) -> Pool {
        Pool::new(PoolConfig {
            net,
            hello,
            max_payload: 1024 * 1024,
            timeout,
            frames_rejected: Arc::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            auth: None,
            refusals: Arc::new(super::auth::Refusals::new(Arc::default())),
            expect,
        })
    }

    /// A peer that answers `Done` to everything and keeps the watch events it is sent.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub(crate) events: std::sync::Mutex<Vec<super::Event>>,
    }

    impl Recorder {
        /// The keys of the events received so far, in order.
        pub(crate) fn keys(&self) -> Vec<bytes::Bytes> {
            let events = crate::lock(&self.events);
            events.iter().map(|e| e.key.clone()).collect()
        }
    }

    impl Service for Recorder {
        async fn call(self: Arc<Self>, req: super::Request) -> crate::Result<super::Response> {
            if let super::Request::Events { events } = req {
                self.events
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(events);
            }
            Ok(super::Response::Done)
        }
    }

    /// Waits until `cond` holds, at most 10 s (of tokio time: instant when paused).
    pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
