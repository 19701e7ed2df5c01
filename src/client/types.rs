//! What the client hands out and takes: contexts, reads, options, pages, watch events and
//! the ring's membership as `/cluster/members` reports it.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An opaque causal context, as the ring hands it out (`x-ringkv-context`).
///
/// Pass it back on a write to say which versions that write supersedes. The client never
/// looks inside; the server checks its integrity and answers 400 to a corrupt one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context(String);

impl Context {
    /// The context as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Context {
    type Err = Error;

    /// Accepts any string that can travel in an HTTP header; the server validates the rest.
    fn from_str(s: &str) -> Result<Context> {
        let s = s.trim();
        if s.is_empty() || HeaderValue::from_str(s).is_err() {
            return Err(Error::invalid(
                "malformed context: empty or not printable ASCII",
            ));
        }
        Ok(Context(s.to_string()))
    }
}

/// What a GET found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// No live value: the key was never written, it was deleted, or its value expired. A
    /// deleted or expired key carries its tombstone's context.
    NotFound { context: Option<Context> },
    /// Exactly one value.
    Value {
        value: Bytes,
        context: Context,
        /// As written ([`DEFAULT_CONTENT_TYPE`](super::DEFAULT_CONTENT_TYPE) when the write gave none).
        content_type: String,
        /// When the value expires, if it was written with a time to live.
        expires_at: Option<SystemTime>,
    },
    /// Two or more concurrent values. Write back with `context` to resolve them.
    Siblings {
        values: Vec<Bytes>,
        context: Context,
        /// One per value, in the same order.
        content_types: Vec<String>,
        /// The earliest expiry among the values, if any has one.
        expires_at: Option<SystemTime>,
    },
}

impl Read {
    /// The live values: none, one, or the siblings.
    pub fn values(&self) -> &[Bytes] {
        match self {
            Read::NotFound { .. } => &[],
            Read::Value { value, .. } => std::slice::from_ref(value),
            Read::Siblings { values, .. } => values,
        }
    }

    /// The single value, if there is exactly one.
    pub fn value(&self) -> Option<&Bytes> {
        match self {
            Read::Value { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The content type of each live value, in the order of [`Read::values`].
    pub fn content_types(&self) -> &[String] {
        match self {
            Read::NotFound { .. } => &[],
            Read::Value { content_type, .. } => std::slice::from_ref(content_type),
            Read::Siblings { content_types, .. } => content_types,
        }
    }

    /// The content type of the single value, if there is exactly one.
    pub fn content_type(&self) -> Option<&str> {
        match self {
            Read::Value { content_type, .. } => Some(content_type),
            _ => None,
        }
    }

    /// When the live value expires (the earliest expiry among siblings); `None` if it does
    /// not, or if nothing live was found.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match self {
            Read::NotFound { .. } => None,
            Read::Value { expires_at, .. } | Read::Siblings { expires_at, .. } => *expires_at,
        }
    }

    /// The context to write back with, if the key has any version (a tombstone included).
    pub fn context(&self) -> Option<&Context> {
        match self {
            Read::NotFound { context } => context.as_ref(),
            Read::Value { context, .. } | Read::Siblings { context, .. } => Some(context),
        }
    }

    /// True unless nothing live was found.
    pub fn is_found(&self) -> bool {
        !matches!(self, Read::NotFound { .. })
    }
}

/// Per-call options of a read.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Replies to wait for (`?r=`), 1..N; the node's default when `None`.
    pub r: Option<usize>,
    /// Replies that must come from home replicas (`?pr=`, 0..r; Riak's primary read quorum):
    /// with `pr = r` after a write acknowledged at `pw = w`, and r + w > N, the read returns
    /// that write or a successor. `None`: 0, a sloppy read.
    pub pr: Option<usize>,
}

/// Per-call options of a write or delete.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// The context this write supersedes; `None` overwrites what the coordinator holds.
    pub context: Option<Context>,
    /// Apply the write only if the key's versions are exactly those this context covers
    /// (`if-match`), as checked against a read quorum; otherwise fail with
    /// [`Error::PreconditionFailed`]. Without [`WriteOptions::context`], a write that passes
    /// supersedes the versions it matched.
    pub if_match: Option<Context>,
    /// Acknowledgements to wait for (`?w=`), 1..N; the node's default when `None`.
    pub w: Option<usize>,
    /// How many of those must be home replicas (`?pw=`).
    pub pw: Option<usize>,
    /// Retry on the next node after a 503, a timeout or a connection that broke after the
    /// request was sent. Off by default: such a write may have been applied, and the retry
    /// then adds a second version (a sibling if the context is the same). A conditional write
    /// that was applied fails its retry with [`Error::PreconditionFailed`].
    pub retry: bool,
}

impl WriteOptions {
    /// Options that write with `context` and nothing else set.
    pub fn with_context(context: Context) -> WriteOptions {
        WriteOptions {
            context: Some(context),
            ..WriteOptions::default()
        }
    }
}

/// Per-call options of a PUT: those of every write, plus expiry, content type and
/// `if_absent`. Built field by field or with the chained setters.
///
/// ```no_run
/// # async fn demo(client: ringkv::Client) -> ringkv::Result<()> {
/// use std::time::Duration;
/// use ringkv::Error;
/// use ringkv::client::PutOptions;
///
/// // A lock that frees itself after 30 s unless renewed.
/// let opts = PutOptions::new()
///     .if_absent()
///     .ttl(Duration::from_secs(30))
///     .content_type("text/plain");
/// match client.put_opts("locks/report", "worker-7", &opts).await {
///     Ok(_) => println!("lock taken"),
///     Err(Error::PreconditionFailed { context }) => println!("held by someone else ({context})"),
///     Err(err) => return Err(err),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Context, `if_match`, quorum and retry, as for any write.
    pub write: WriteOptions,
    /// Expire the value this long after the receiving node got the write (`?ttl=`). The server
    /// counts whole seconds, so a fraction is rounded up; from 1 s to 10 years.
    pub ttl: Option<Duration>,
    /// Stored with the value and returned by reads (`content-type`); [`DEFAULT_CONTENT_TYPE`](super::DEFAULT_CONTENT_TYPE)
    /// when `None`.
    pub content_type: Option<String>,
    /// Apply the write only if the key has no live value (`?if_absent=true`); otherwise fail
    /// with [`Error::PreconditionFailed`]. Excludes [`WriteOptions::if_match`].
    pub if_absent: bool,
}

impl PutOptions {
    /// No option set: the same as [`Client::put`](super::Client::put).
    pub fn new() -> PutOptions {
        PutOptions::default()
    }

    /// Supersede the versions `context` covers.
    pub fn context(mut self, context: Context) -> Self {
        self.write.context = Some(context);
        self
    }

    /// Write only if the key's versions are exactly those `context` covers.
    pub fn if_match(mut self, context: Context) -> Self {
        self.write.if_match = Some(context);
        self
    }

    /// Write only if the key has no live value.
    pub fn if_absent(mut self) -> Self {
        self.if_absent = true;
        self
    }

    /// Expire the value after `ttl` (rounded up to whole seconds).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Store `content_type` with the value.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Acknowledgements to wait for (1..N).
    pub fn w(mut self, w: usize) -> Self {
        self.write.w = Some(w);
        self
    }

    /// Home replicas among the acknowledgements.
    pub fn pw(mut self, pw: usize) -> Self {
        self.write.pw = Some(pw);
        self
    }

    /// Retry after a 503 or a broken connection (see [`WriteOptions::retry`]).
    pub fn retry(mut self, retry: bool) -> Self {
        self.write.retry = retry;
        self
    }
}

impl From<WriteOptions> for PutOptions {
    fn from(write: WriteOptions) -> PutOptions {
        PutOptions {
            write,
            ..PutOptions::default()
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Live keys under the prefix, sorted by their bytes. A key that is not UTF-8 comes as
    /// the server renders it, with U+FFFD for the invalid bytes.
    pub keys: Vec<String>,
    /// An opaque cursor: pass it as `after` to read the next page. `None` on the last page.
    pub next: Option<String>,
}

/// A change under a watched prefix, as [`Watch`](super::Watch) yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A value was written; `context` is the key's context after the write.
    Put {
        key: String,
        value: Bytes,
        context: Context,
    },
    /// The key was deleted.
    Delete { key: String, context: Context },
    /// The key's last live value expired.
    Expire { key: String, context: Context },
    /// The watcher fell behind and `missed` events were dropped in its place. Re-read what
    /// matters (list the prefix, read the keys) to catch up.
    Lagged { missed: u64 },
}

impl WatchEvent {
    /// The key the event is about (`None` for [`WatchEvent::Lagged`]).
    pub fn key(&self) -> Option<&str> {
        match self {
            WatchEvent::Put { key, .. }
            | WatchEvent::Delete { key, .. }
            | WatchEvent::Expire { key, .. } => Some(key),
            WatchEvent::Lagged { .. } => None,
        }
    }
}

/// A ring member as `GET /cluster/members` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// `alive`, `joining`, `stopping`, `leaving` or `dead` (see the README's member statuses).
    pub status: String,
    /// HTTP address (`host:port`), once gossip carried it.
    pub http: Option<String>,
    /// Node-to-node RPC address.
    pub rpc: Option<String>,
    /// Start time of the member's current incarnation, in ms since the epoch.
    pub generation: u64,
    /// Its zone (`--zone`; absent from nodes before 0.2.0).
    #[serde(default)]
    pub zone: Option<String>,
    /// Its build version; `None` for a build before 0.2.0, which does not gossip it.
    #[serde(default)]
    pub version: Option<String>,
    /// The RPC protocol versions it speaks, `5` or a range `5-6` (absent from nodes before
    /// 0.2.0, which speak 5).
    #[serde(default)]
    pub protocol: Option<String>,
    /// The feature gates its build supports.
    #[serde(default)]
    pub features: Vec<String>,
    /// Its memory use and `--max-memory` (absent until it gossiped them, and from nodes
    /// before 0.2.0).
    #[serde(default)]
    pub memory: Option<MemoryUse>,
}

/// A member's memory use and limit in bytes (`limit` 0: none), rounded to MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUse {
    pub used: u64,
    pub limit: u64,
}

/// One home replica of a key, as `GET /cluster/replicas/{key}` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub id: String,
    /// Its zone (`None` from a node before 0.2.0).
    pub zone: Option<String>,
}

/// `GET /cluster/members`: the members, and the features every one of them supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub members: Vec<Member>,
    /// The ring's active features (absent from nodes before 0.2.0).
    #[serde(default)]
    pub features: Vec<String>,
}
