//! The Rust client library: [`Client`] talks to a ring over its HTTP API.
//!
//! A client is given the URLs of some of the ring's nodes. Every node accepts every request,
//! so the client spreads requests round-robin over them and, when one cannot be reached,
//! moves on to the next one. It keeps pooled keep-alive connections (hyper-util's legacy
//! client), and it is cheap to clone: clones share the pool and the round-robin position.
//!
//! ## Retries
//!
//! - A request that could not be *sent* (connection refused, connect timeout) is always
//!   tried on the next node: the ring never saw it. The node is then skipped for
//!   [`DOWN_COOLDOWN`], unless every node is in that state.
//! - A GET answered 503 (quorum not met), or whose connection broke or timed out, is retried
//!   on the next node up to [`DEFAULT_READ_RETRIES`] times: reads have no side effect.
//! - A PUT or DELETE is *not* retried after it was sent, because a 503 write may still have
//!   been applied on some replicas. Retrying with the same context is safe but may leave a
//!   duplicate sibling, so it is the caller's choice: [`WriteOptions::retry`].
//!
//! ## Contexts and siblings
//!
//! Every answer carries the causal [`Context`] it came with. [`Client::get`] returns a
//! [`Read`]: one value, several concurrent *siblings*, or nothing, each with its context.
//! Writing with the context of a read supersedes everything that read saw; writing without
//! one overwrites what the key's coordinator holds. [`Client::put_resolved`] does the whole
//! read, merge, write-back cycle.
//!
//! ## Expiry, content types and conditional writes
//!
//! [`Client::put_opts`] takes [`PutOptions`]: a time to live, a content type (returned by
//! every read), and a precondition: *if absent* (no live value) or *if match* (the key's
//! versions are exactly those a context covers). A condition that does not hold fails with
//! [`Error::PreconditionFailed`], which carries the key's current context.
//!
//! ## Listing and watching
//!
//! [`Client::list`] reads one page of the live keys under a prefix, [`Client::list_all`]
//! walks every page. [`Client::watch`] opens a WebSocket that streams each change under a
//! prefix as a [`WatchEvent`], at most once and only while connected (see [`crate::watch`]).
//!
//! ```no_run
//! use ringkv::Client;
//! use ringkv::client::Read;
//!
//! # async fn demo() -> ringkv::Result<()> {
//! let client = Client::new(["http://127.0.0.1:8001", "http://127.0.0.1:8002"])?;
//! client.put("greeting", "hello").await?;
//! match client.get("greeting").await? {
//!     Read::Value { value, .. } => println!("{}", String::from_utf8_lossy(&value)),
//!     Read::Siblings { values, .. } => println!("{} concurrent values", values.len()),
//!     Read::NotFound { .. } => println!("no such key"),
//! }
//! // Resolve siblings, if any, by keeping the longest value.
//! client
//!     .put_resolved("greeting", |siblings| {
//!         siblings.iter().max_by_key(|v| v.len()).cloned().unwrap_or_default()
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod builder;
mod bulk;
pub mod ring;
mod transport;
mod types;
mod watch;

pub(crate) use builder::normalize_url;
pub use builder::{ClientBuilder, bearer};
pub(crate) use bulk::is_denied;
pub use types::{
    Context, Member, Membership, MemoryUse, Page, PutOptions, Read, ReadOptions, Replica,
    WatchEvent, WriteOptions,
};
pub use watch::Watch;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, IF_MATCH};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
use serde::Deserialize;
use tracing::debug;

use crate::config::DEFAULT_LIST_LIMIT;
use crate::error::{Error, Result};
use crate::http::CONTEXT_HEADER;

/// The node a client talks to when given none: node 1 of `ringkv dev`.
pub const DEFAULT_NODE: &str = "http://127.0.0.1:8001";
/// How long one request may take, from connecting to the last byte of the answer. A healthy
/// ring answers in milliseconds; a replica that hangs is cut off by the node's own RPC timeout
/// (2 s by default), so this only fires when the node itself is stuck.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to a node may take before the client moves on to the next one. Short,
/// because a refused or unroutable node should cost little when others can serve.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra attempts a GET gets, on the next nodes, after a 503 or a broken connection. Two
/// covers one node with a stale view plus one transient quorum miss without stretching a
/// real outage into a long wait.
pub const DEFAULT_READ_RETRIES: usize = 2;
/// Pause before retry *k* is `k` times this: short enough not to matter to a caller, long
/// enough for a failure detector tick or a replica's restart to make a difference.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// How long a node that refused a connection is skipped. A dead node then costs one failed
/// connect per cooldown instead of one per request; a node that came back is used again
/// within this time.
pub const DOWN_COOLDOWN: Duration = Duration::from_secs(1);
/// Idle pooled connections are closed after this. It is below the server's 30 s header-read
/// timeout, so the client never picks a connection the server is about to drop.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer body read. A 300 carries every sibling in base64, so this is several times
/// the server's default 8 MiB value limit; it only guards against a runaway peer.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// How often [`Client::wait_ready`] asks a node again. Short: a ring gets ready in well under a
/// second, and a script waiting for it should not add much to that.
pub const READY_POLL: Duration = Duration::from_millis(50);

/// The content type of a value written without one, as reads report it.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Bytes of a key that go into a URL path (or a query value) unescaped. `/` stays as is (keys
/// may contain it and the server takes the whole rest of the path); everything else but
/// unreserved characters is percent-encoded, so any binary key round-trips.
const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// A client of a ringkv ring. Cheap to clone; clones share connections.
///
/// This example starts a one-node ring in the process and talks to it:
///
/// ```
/// use std::net::SocketAddr;
/// use ringkv::client::{Read, WriteOptions};
/// use ringkv::{Client, Config, GossipTransport, NodeHandle};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
/// let mut config = Config::new("solo", any_port, any_port, any_port);
/// (config.replicas, config.read_quorum, config.write_quorum) = (1, 1, 1);
/// let node = NodeHandle::start(config, GossipTransport::Udp).await?;
///
/// let client = Client::new([format!("http://{}", node.http_addr())])?;
/// let first = client.put("color", "red").await?;
///
/// // Two writers that both start from `first` are concurrent: siblings.
/// client.put_with("color", "green", &WriteOptions::with_context(first.clone())).await?;
/// client.put_with("color", "blue", &WriteOptions::with_context(first)).await?;
/// let read = client.get("color").await?;
/// assert!(matches!(&read, Read::Siblings { values, .. } if values.len() == 2));
///
/// // Merge them and write the merge back with the context of what was merged.
/// client
///     .put_resolved("color", |siblings| {
///         let mut names: Vec<String> = siblings
///             .iter()
///             .map(|v| String::from_utf8_lossy(v).into_owned())
///             .collect();
///         names.sort();
///         names.join("+")
///     })
///     .await?;
/// assert_eq!(client.get("color").await?.value().map(|v| v.as_ref()), Some(&b"blue+green"[..]));
///
/// client.delete("color").await?;
/// assert!(!client.get("color").await?.is_found());
/// node.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<NodeSlot>,
    http: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Round-robin position: each request starts at the next node.
    next: AtomicUsize,
    /// Origin of the `down_until_ms` clocks.
    epoch: Instant,
    timeout: Duration,
    connect_timeout: Duration,
    read_retries: usize,
    /// `Bearer TOKEN`, if the client has a token.
    authorization: Option<hyper::header::HeaderValue>,
    /// For `https://` nodes (watches open their TLS themselves).
    tls: Arc<rustls::ClientConfig>,
    /// `http` or `https`: how routed requests reach ring nodes.
    scheme: &'static str,
    routes: RouteState,
}

/// What a client knows of the ring for key-aware routing ([`crate::client::ring`]).
#[derive(Default)]
struct RouteState {
    on: bool,
    current: std::sync::RwLock<Option<Arc<crate::client::ring::Routes>>>,
    /// An answer carried another version, or none was fetched yet: fetch the ring again.
    stale: std::sync::atomic::AtomicBool,
    /// One fetch at a time; requests meanwhile route by what is known.
    fetching: tokio::sync::Mutex<()>,
    /// Reads take turns over a key's homes.
    turn: AtomicUsize,
}

struct NodeSlot {
    /// `http://host:port`, no trailing slash.
    base: String,
    /// Skip this node until this many ms after `epoch` (0: never was down).
    down_until_ms: AtomicU64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.nodes())
            .field("timeout", &self.inner.timeout)
            .field("read_retries", &self.inner.read_retries)
            .finish()
    }
}

/// One request, as the retry loop needs to resend it.
struct Call<'a> {
    method: Method,
    /// Path and query, already escaped.
    path: &'a str,
    body: Bytes,
    context: Option<&'a Context>,
    /// More request headers (`if-match`, `content-type`).
    headers: Vec<(HeaderName, HeaderValue)>,
    /// May be sent again after it may have been applied (a 503, a timeout, a broken link).
    retryable: bool,
    /// The key, for key-aware routing.
    key: Option<&'a [u8]>,
}

/// An answer with its status, before it is interpreted.
#[derive(Default)]
struct Answer {
    status: StatusCode,
    /// `x-ringkv-ring`: the version of the ring the node routes by.
    ring: Option<String>,
    context: Option<Context>,
    allow: Option<String>,
    content_type: Option<String>,
    /// `x-ringkv-expires-at`, as sent.
    expires_at: Option<String>,
    body: Bytes,
}

/// Why one attempt failed.
enum Failure {
    /// The request never reached the node: trying another node is always safe.
    NotSent(Error),
    /// The request may have reached the node.
    Sent(Error),
}

impl Client {
    /// A client of the ring reachable at these node URLs (`http://host:port`), with the
    /// default settings.
    pub fn new<I, S>(nodes: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::builder(nodes).build()
    }

    /// A builder, to change timeouts or retries.
    pub fn builder<I, S>(nodes: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder::new(nodes.into_iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// The node URLs, normalized, in round-robin order.
    pub fn nodes(&self) -> Vec<&str> {
        self.inner.nodes.iter().map(|n| n.base.as_str()).collect()
    }

    /// Reads a key with the node's default read quorum.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv::Client) -> ringkv::Result<()> {
    /// if let Some(value) = client.get("user/42").await?.value() {
    ///     println!("{} bytes", value.len());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Read> {
        self.get_with(key, &ReadOptions::default()).await
    }

    /// Reads a key with options (`r`, `pr`).
    pub async fn get_with(&self, key: impl AsRef<[u8]>, opts: &ReadOptions) -> Result<Read> {
        let mut path = kv_path(key.as_ref());
        let params: Vec<String> = [("r", opts.r), ("pr", opts.pr)]
            .iter()
            .filter_map(|(name, v)| v.map(|v| format!("{name}={v}")))
            .collect();
        if !params.is_empty() {
            path.push('?');
            path.push_str(&params.join("&"));
        }
        let call = Call {
            method: Method::GET,
            path: &path,
            body: Bytes::new(),
            context: None,
            headers: Vec::new(),
            retryable: true,
            key: Some(key.as_ref()),
        };
        let ans = self.call(&call).await?;
        match ans.status {
            StatusCode::OK => Ok(Read::Value {
                context: required_context(ans.context, &path)?,
                content_type: ans
                    .content_type
                    .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string()),
                expires_at: ans.expires_at.as_deref().map(parse_time).transpose()?,
                value: ans.body,
            }),
            StatusCode::MULTIPLE_CHOICES => decode_siblings(&ans.body),
            StatusCode::NOT_FOUND => Ok(Read::NotFound {
                context: ans.context,
            }),
            _ => Err(error_from_answer(&ans, &path, 0)),
        }
    }

    /// Writes a value without a context: it supersedes whatever the key's coordinator holds.
    /// Returns the new version's context.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl Into<Bytes>) -> Result<Context> {
        self.put_with(key, value, &WriteOptions::default()).await
    }

    /// Writes a value with options: a context, `w`, `pw`, retries.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv::Client) -> ringkv::Result<()> {
    /// use ringkv::client::WriteOptions;
    /// let read = client.get("counter").await?;
    /// let opts = WriteOptions { context: read.context().cloned(), w: Some(3), ..Default::default() };
    /// client.put_with("counter", "7", &opts).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        opts: &WriteOptions,
    ) -> Result<Context> {
        let opts = PutOptions::from(opts.clone());
        self.write(Method::PUT, key.as_ref(), value.into(), &opts)
            .await
    }

    /// Writes a value with every option of a PUT: those of [`Client::put_with`], plus a time
    /// to live, a content type and `if_absent`. A condition (`if_absent`, `if_match`) that
    /// does not hold fails with [`Error::PreconditionFailed`] and the key's current context.
    ///
    /// This example runs a one-node ring in the process:
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::{Duration, SystemTime};
    /// use ringkv::client::{PutOptions, Read};
    /// use ringkv::{Client, Config, Error, GossipTransport, NodeHandle};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> ringkv::Result<()> {
    /// let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    /// let mut config = Config::new("solo", any_port, any_port, any_port);
    /// (config.replicas, config.read_quorum, config.write_quorum) = (1, 1, 1);
    /// let node = NodeHandle::start(config, GossipTransport::Udp).await?;
    /// let client = Client::new([format!("http://{}", node.http_addr())])?;
    ///
    /// // Create once: the second attempt finds a live value.
    /// let create = PutOptions::new()
    ///     .if_absent()
    ///     .content_type("application/json")
    ///     .ttl(Duration::from_secs(3600));
    /// let first = client.put_opts("doc", r#"{"v":1}"#, &create).await?;
    /// let Err(Error::PreconditionFailed { context }) = client.put_opts("doc", "{}", &create).await
    /// else {
    ///     panic!("the key exists");
    /// };
    /// assert_eq!(context.parse::<ringkv::client::Context>()?, first);
    ///
    /// let read = client.get("doc").await?;
    /// assert_eq!(read.content_type(), Some("application/json"));
    /// assert!(read.expires_at().is_some_and(|t| t > SystemTime::now()));
    ///
    /// // Compare and swap: only a writer that saw the current version wins.
    /// let swap = PutOptions::new().if_match(first.clone());
    /// client.put_opts("doc", r#"{"v":2}"#, &swap).await?;
    /// assert!(matches!(
    ///     client.put_opts("doc", r#"{"v":3}"#, &swap).await,
    ///     Err(Error::PreconditionFailed { .. })
    /// ));
    /// assert!(matches!(client.get("doc").await?, Read::Value { value, .. } if value == r#"{"v":2}"#));
    /// node.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_opts(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        opts: &PutOptions,
    ) -> Result<Context> {
        self.write(Method::PUT, key.as_ref(), value.into(), opts)
            .await
    }

    /// Deletes a key (writes a tombstone). Returns the tombstone's context.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<Context> {
        self.delete_with(key, &WriteOptions::default()).await
    }

    /// Deletes a key with options: a context, `if_match`, `w`, `pw`, retries.
    pub async fn delete_with(&self, key: impl AsRef<[u8]>, opts: &WriteOptions) -> Result<Context> {
        let opts = PutOptions::from(opts.clone());
        self.write(Method::DELETE, key.as_ref(), Bytes::new(), &opts)
            .await
    }

    /// Reads the key, hands its live values to `resolve` and writes what it returns with the
    /// context of that read, so the write supersedes every value `resolve` saw. Returns the
    /// new context.
    ///
    /// `resolve` gets the siblings when there are several, the value when there is one (a
    /// read-modify-write), and an empty slice when the key does not exist. A write that
    /// lands between the read and the write-back is not lost: it stays a sibling.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv::Client) -> ringkv::Result<()> {
    /// // A set of comma-separated names: the union of all siblings.
    /// client
    ///     .put_resolved("team", |siblings| {
    ///         let mut names: Vec<&[u8]> = siblings.iter().flat_map(|v| v.split(|b| *b == b',')).collect();
    ///         names.sort();
    ///         names.dedup();
    ///         names.join(&b","[..])
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_resolved<F, V>(&self, key: impl AsRef<[u8]>, resolve: F) -> Result<Context>
    where
        F: FnOnce(&[Bytes]) -> V,
        V: Into<Bytes>,
    {
        let key = key.as_ref();
        let read = self.get(key).await?;
        let merged = resolve(read.values()).into();
        let opts = WriteOptions {
            context: read.context().cloned(),
            ..WriteOptions::default()
        };
        self.put_with(key, merged, &opts).await
    }

    /// One page of the live keys under `prefix` (empty: every key), sorted: at most `limit`
    /// keys (1 to 10 000) after the cursor `after`, which is the `next` of the previous page
    /// (`None` for the first page). Expired and deleted keys are not listed.
    ///
    /// Each page is a consistent read of the replicas that answered (`r` of them per part of
    /// the ring); keys written or deleted while the pages are walked may or may not appear.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv::Client) -> ringkv::Result<()> {
    /// let mut after = None;
    /// loop {
    ///     let page = client.list("user/", after.as_deref(), 100).await?;
    ///     for key in &page.keys {
    ///         println!("{key}");
    ///     }
    ///     match page.next {
    ///         Some(next) => after = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list(
        &self,
        prefix: impl AsRef<[u8]>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page> {
        let mut path = format!("/kv?prefix={}&limit={limit}", escape_key(prefix.as_ref()));
        if let Some(after) = after {
            path.push_str(&format!("&after={}", escape_key(after.as_bytes())));
        }
        let body = self.get_json(&path).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(format!("bad /kv answer: {e}")))
    }

    /// Every live key under `prefix`, sorted: [`Client::list`] page after page, until the
    /// last.
    pub async fn list_all(&self, prefix: impl AsRef<[u8]>) -> Result<Vec<String>> {
        let prefix = prefix.as_ref();
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .list(prefix, after.as_deref(), DEFAULT_LIST_LIMIT)
                .await?;
            keys.extend(page.keys);
            match page.next {
                // A cursor that does not move would loop forever.
                Some(next) if after.as_ref() == Some(&next) => {
                    return Err(Error::Protocol(format!(
                        "listing did not advance past cursor {next}"
                    )));
                }
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Watches the keys under `prefix` (empty: every key): opens a WebSocket to one of the
    /// client's nodes (the next in the rotation that accepts a connection) and returns the
    /// stream of changes.
    ///
    /// The node tells every live peer about the watch before it completes the handshake, so
    /// every change acknowledged after this returns is delivered, whichever node coordinated
    /// it; at most once, and only while connected. The stream ends when the connection
    /// closes (the node shut down): watch again, and re-read to catch up. See
    /// [`crate::watch`] for the exact guarantee.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv::Client) -> ringkv::Result<()> {
    /// use ringkv::client::WatchEvent;
    ///
    /// let mut watch = client.watch("jobs/").await?;
    /// while let Some(event) = watch.recv().await {
    ///     match event? {
    ///         WatchEvent::Put { key, value, .. } => println!("{key} = {value:?}"),
    ///         WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. } => {
    ///             println!("{key} is gone")
    ///         }
    ///         WatchEvent::Lagged { missed } => println!("missed {missed} changes, re-reading"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`Watch`] is also a [`futures_util::Stream`], for `futures` combinators.
    pub async fn watch(&self, prefix: impl AsRef<[u8]>) -> Result<Watch> {
        let query = format!("/watch?prefix={}", escape_key(prefix.as_ref()));
        let nodes = &self.inner.nodes;
        let order = self.node_order();
        let mut last_err = None;
        // A watch has no side effect: any node that cannot open it is skipped.
        for i in order {
            let node = &nodes[i];
            match self.open_watch(&node.base, &query).await {
                Ok(ws) => {
                    node.down_until_ms.store(0, Ordering::Relaxed);
                    return Ok(Watch {
                        ws,
                        node: node.base.clone(),
                        done: false,
                    });
                }
                Err(Failure::NotSent(err)) => {
                    debug!(node = %node.base, %err, "node unreachable, watching through the next one");
                    let until = self.now_ms() + DOWN_COOLDOWN.as_millis() as u64;
                    node.down_until_ms.store(until, Ordering::Relaxed);
                    last_err = Some(err);
                }
                // A malformed request is malformed on every node.
                Err(Failure::Sent(
                    err
                    @ (Error::InvalidInput(_) | Error::NotFound(_) | Error::MethodNotAllowed(_)),
                )) => return Err(err),
                Err(Failure::Sent(err)) => {
                    debug!(node = %node.base, %err, "watch failed, trying the next node");
                    last_err = Some(err);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Unreachable("no node to watch through".into())))
    }

    /// Waits until every node of this client answers `GET /ready` with 200, polling every
    /// [`READY_POLL`]. Fails with [`Error::Unreachable`] naming a
    /// node that is still not ready after `timeout`, with its last reason.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let call = Call {
            method: Method::GET,
            path: "/ready",
            body: Bytes::new(),
            context: None,
            headers: Vec::new(),
            retryable: false,
            key: None,
        };
        for i in 0..self.inner.nodes.len() {
            loop {
                let why = match self.send_once(i, &call).await {
                    Ok(ans) if ans.status == StatusCode::OK => break,
                    Ok(ans) => serde_json::from_slice::<serde_json::Value>(&ans.body)
                        .ok()
                        .and_then(|v| v["reason"].as_str().map(str::to_string))
                        .unwrap_or_else(|| format!("answered {}", ans.status)),
                    Err(Failure::NotSent(err) | Failure::Sent(err)) => err.to_string(),
                };
                if tokio::time::Instant::now() + READY_POLL > deadline {
                    return Err(Error::Unreachable(format!(
                        "{} not ready after {timeout:?}: {why}",
                        self.inner.nodes[i].base
                    )));
                }
                tokio::time::sleep(READY_POLL).await;
            }
        }
        Ok(())
    }

    /// The ring's members as one node sees them.
    pub async fn members(&self) -> Result<Vec<Member>> {
        Ok(self.membership().await?.members)
    }

    /// The ring's members as one node sees them, with the ring's active features.
    pub async fn membership(&self) -> Result<Membership> {
        let body = self.get_json("/cluster/members").await?;
        serde_json::from_slice::<Membership>(&body)
            .map_err(|e| Error::Protocol(format!("bad /cluster/members answer: {e}")))
    }

    /// The key's N home replicas (node ids), in preference order, dead or alive.
    pub async fn replicas(&self, key: impl AsRef<[u8]>) -> Result<Vec<Replica>> {
        /// A node before 0.2.0 names each home by its id alone.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Id(String),
            Home(Replica),
        }
        #[derive(Deserialize)]
        struct Replicas {
            replicas: Vec<Wire>,
        }
        let path = format!("/cluster/replicas/{}", escape_key(key.as_ref()));
        let body = self.get_json(&path).await?;
        let wire = serde_json::from_slice::<Replicas>(&body)
            .map_err(|e| Error::Protocol(format!("bad /cluster/replicas answer: {e}")))?;
        Ok(wire
            .replicas
            .into_iter()
            .map(|r| match r {
                Wire::Id(id) => Replica { id, zone: None },
                Wire::Home(r) => r,
            })
            .collect())
    }

    /// Asks the client's node to decommission itself (`POST /cluster/leave`). Only allowed on
    /// a client of exactly one node, since a round-robin pick would decommission any of them.
    pub async fn leave(&self) -> Result<()> {
        self.single_node("leave")?;
        let call = Call {
            method: Method::POST,
            path: "/cluster/leave",
            body: Bytes::new(),
            context: None,
            headers: Vec::new(),
            retryable: false,
            key: None,
        };
        let ans = self.call(&call).await?;
        if ans.status.is_success() {
            Ok(())
        } else {
            Err(error_from_answer(&ans, call.path, 0))
        }
    }

    /// The node's `/admin/stats` JSON. Only on a client of exactly one node, since the
    /// counters are per node.
    pub async fn stats(&self) -> Result<serde_json::Value> {
        self.single_node("stats")?;
        let body = self.get_json("/admin/stats").await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("bad /admin/stats answer: {e}")))
    }

    fn single_node(&self, what: &str) -> Result<()> {
        if self.inner.nodes.len() == 1 {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "{what} needs a client of exactly one node, this one has {}",
                self.inner.nodes.len()
            )))
        }
    }

    async fn get_json(&self, path: &str) -> Result<Bytes> {
        let call = Call {
            method: Method::GET,
            path,
            body: Bytes::new(),
            context: None,
            headers: Vec::new(),
            retryable: true,
            key: None,
        };
        let ans = self.call(&call).await?;
        if ans.status == StatusCode::OK {
            Ok(ans.body)
        } else {
            Err(error_from_answer(&ans, path, 0))
        }
    }

    /// A PUT (`opts` whole) or a DELETE (`opts.write` only: a caller never sets the rest).
    async fn write(
        &self,
        method: Method,
        key: &[u8],
        value: Bytes,
        opts: &PutOptions,
    ) -> Result<Context> {
        let write = &opts.write;
        // Whole seconds, rounded up: a value never expires before the caller asked.
        let ttl = opts
            .ttl
            .map(|t| t.as_secs() + u64::from(t.subsec_nanos() > 0));
        let mut path = kv_path(key);
        let mut sep = '?';
        let params = [
            ("w", write.w.map(|v| v as u64)),
            ("pw", write.pw.map(|v| v as u64)),
            ("ttl", ttl),
        ];
        for (name, v) in params {
            if let Some(v) = v {
                path.push_str(&format!("{sep}{name}={v}"));
                sep = '&';
            }
        }
        if opts.if_absent {
            path.push_str(&format!("{sep}if_absent=true"));
        }
        let mut headers = Vec::new();
        if let Some(ctx) = &write.if_match {
            headers.push((IF_MATCH, header_value(ctx.as_str(), "if-match context")?));
        }
        if let Some(ct) = &opts.content_type {
            headers.push((CONTENT_TYPE, header_value(ct, "content type")?));
        }
        let size = value.len() as u64;
        let call = Call {
            method,
            path: &path,
            body: value,
            context: write.context.as_ref(),
            headers,
            retryable: write.retry,
            key: Some(key),
        };
        let ans = self.call(&call).await?;
        if ans.status == StatusCode::NO_CONTENT {
            required_context(ans.context, &path)
        } else {
            Err(error_from_answer(&ans, &path, size))
        }
    }
}

/// An RFC 3339 time from the server (`x-ringkv-expires-at`, `expires_at`).
fn parse_time(s: &str) -> Result<SystemTime> {
    humantime::parse_rfc3339(s).map_err(|e| Error::Protocol(format!("bad time {s:?}: {e}")))
}

/// A request header value, checked before anything is sent.
fn header_value(value: &str, what: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value)
        .map_err(|_| Error::invalid(format!("bad {what} {value:?}: not printable ASCII")))
}

/// An error and its sources, `: `-separated: hyper's own message ("client error (Connect)")
/// does not say what happened, its source does ("Connection refused").
fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// `/kv/{escaped key}`.
fn kv_path(key: &[u8]) -> String {
    format!("/kv/{}", escape_key(key))
}

fn escape_key(key: &[u8]) -> percent_encoding::PercentEncode<'_> {
    percent_encode(key, KEY_ESCAPE)
}

fn required_context(ctx: Option<Context>, path: &str) -> Result<Context> {
    ctx.ok_or_else(|| Error::Protocol(format!("answer to {path} has no {CONTEXT_HEADER}")))
}

/// Decodes a 300's `{"context", "siblings": [base64…], "content_types", "expires_at"}`.
fn decode_siblings(body: &[u8]) -> Result<Read> {
    #[derive(Deserialize)]
    struct Siblings {
        context: String,
        siblings: Vec<String>,
        #[serde(default)]
        content_types: Vec<String>,
        #[serde(default)]
        expires_at: Option<String>,
    }
    let bad = |e: &dyn fmt::Display| Error::Protocol(format!("bad siblings answer: {e}"));
    let parsed: Siblings = serde_json::from_slice(body).map_err(|e| bad(&e))?;
    let values = parsed
        .siblings
        .iter()
        .map(|s| B64.decode(s).map(Bytes::from).map_err(|e| bad(&e)))
        .collect::<Result<Vec<_>>>()?;
    let mut content_types = parsed.content_types;
    if content_types.is_empty() {
        // A server that predates content types.
        content_types = vec![DEFAULT_CONTENT_TYPE.to_string(); values.len()];
    } else if content_types.len() != values.len() {
        return Err(bad(&format!(
            "{} content types for {} siblings",
            content_types.len(),
            values.len()
        )));
    }
    Ok(Read::Siblings {
        values,
        context: parsed.context.parse()?,
        content_types,
        expires_at: parsed.expires_at.as_deref().map(parse_time).transpose()?,
    })
}

/// Rebuilds the server's [`Error`] from an error answer ([`crate::http::error_from_answer`]).
fn error_from_answer(ans: &Answer, path: &str, sent_bytes: u64) -> Error {
    crate::http::error_from_answer(
        &crate::http::ErrorAnswer {
            status: ans.status,
            body: &ans.body,
            allow: ans.allow.as_deref(),
            context: ans.context.as_ref().map(|c| c.to_string()),
        },
        path,
        sent_bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::watch::decode_event;
    use super::*;
    use serde_json::json;

    fn answer(err: &Error) -> Answer {
        let body = crate::http::error_body(err);
        Answer {
            status: crate::http::status_of(err),
            context: None,
            allow: match err {
                Error::MethodNotAllowed(a) => Some(a.clone()),
                _ => None,
            },
            body: Bytes::from(body.to_string()),
            ..Answer::default()
        }
    }

    /// Every error the server can answer, once.
    fn server_errors() -> Vec<Error> {
        vec![
            Error::invalid("bad key"),
            Error::NotFound("/kv/x".into()),
            Error::MethodNotAllowed("GET".into()),
            Error::ValueTooLarge { size: 10, limit: 5 },
            Error::PreconditionFailed {
                context: "current".into(),
            },
            Error::Unavailable {
                replied: 1,
                required: 2,
            },
            Error::Unauthorized("no token".into()),
            Error::Forbidden("read only".into()),
            Error::RequestTimeout,
            Error::Rejected("hint store full".into()),
            Error::Interrupted("link dropped".into()),
            Error::Timeout,
            Error::Unreachable("n3".into()),
            Error::Shutdown,
            Error::Storage("no space left".into()),
            Error::Protocol("bad frame".into()),
            Error::Io(Arc::new(std::io::Error::other("disk"))),
            Error::internal(std::fmt::Error),
        ]
    }

    /// Every error the server can answer comes back as the same variant, decoded by its
    /// kind, so callers can match on what went wrong whichever side of HTTP it happened on.
    #[test]
    fn server_errors_round_trip_through_http() {
        for err in server_errors() {
            let ans = answer(&err);
            let body: serde_json::Value = serde_json::from_slice(&ans.body).unwrap();
            assert_eq!(body["kind"], err.kind(), "{body}");
            let back = error_from_answer(&ans, "/kv/x", 10);
            assert_eq!(
                back.to_string(),
                err.to_string(),
                "{err:?} came back as {back:?}"
            );
            assert_eq!(back.kind(), err.kind(), "{err:?} came back as {back:?}");
            if let (
                Error::PreconditionFailed { context: a },
                Error::PreconditionFailed { context: b },
            ) = (&err, &back)
            {
                assert_eq!(a, b, "the current context comes back");
            }
        }
    }

    /// The kind decides, not the message or the status: a message that reads like another
    /// variant's does not fool the decoding.
    #[test]
    fn errors_decode_by_kind() {
        let mut ans = answer(&Error::Unreachable(Error::Shutdown.to_string()));
        assert!(matches!(
            error_from_answer(&ans, "/kv/x", 0),
            Error::Unreachable(msg) if msg == "node is shutting down"
        ));
        ans.status = StatusCode::IM_A_TEAPOT;
        assert_eq!(error_from_answer(&ans, "/kv/x", 0).kind(), "unreachable");
    }

    /// An answer without a kind (from a node that predates kinds) is decoded by its status;
    /// a 503 without quorum counts, which the status alone cannot place, is unreachable.
    #[test]
    fn answers_without_a_kind_decode_by_status() {
        for err in server_errors() {
            let mut ans = answer(&err);
            let mut body: serde_json::Value = serde_json::from_slice(&ans.body).unwrap();
            body.as_object_mut().unwrap().remove("kind");
            ans.body = Bytes::from(body.to_string());
            let back = error_from_answer(&ans, "/kv/x", 10);
            let want = match err.kind() {
                "rejected" | "interrupted" | "timeout" | "shutdown" | "storage" => "unreachable",
                "internal" => "io",
                kind => kind,
            };
            assert_eq!(back.kind(), want, "{err:?} came back as {back:?}");
            assert_eq!(crate::http::status_of(&back), ans.status, "{err:?}");
        }
        let teapot = Answer {
            status: StatusCode::IM_A_TEAPOT,
            body: Bytes::from_static(b"short and stout"),
            ..Answer::default()
        };
        assert!(matches!(
            error_from_answer(&teapot, "/kv/x", 0),
            Error::Protocol(msg) if msg.contains("418") && msg.contains("short and stout")
        ));
    }

    #[test]
    fn node_urls_are_normalized_and_checked() {
        assert_eq!(
            normalize_url("127.0.0.1:8001").unwrap(),
            "http://127.0.0.1:8001"
        );
        assert_eq!(normalize_url("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(normalize_url(" http://h:1 ").unwrap(), "http://h:1");
        assert_eq!(normalize_url("https://h:1/").unwrap(), "https://h:1");
        for bad in ["http://h:1/kv", "http://", "ftp://x", "http://h:1/?a=b"] {
            assert!(
                matches!(normalize_url(bad), Err(Error::InvalidInput(_))),
                "{bad} accepted"
            );
        }
        assert!(matches!(
            Client::new(Vec::<String>::new()),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn keys_are_escaped_so_any_bytes_round_trip() {
        assert_eq!(kv_path(b"a/b c"), "/kv/a/b%20c");
        assert_eq!(kv_path(&[0, 0xff, b'?', b'%', b'#']), "/kv/%00%FF%3F%25%23");
        let decoded: Vec<u8> =
            percent_encoding::percent_decode_str(&escape_key(&[1, 2, 200, b'&']).to_string())
                .collect();
        assert_eq!(decoded, vec![1, 2, 200, b'&']);
    }

    #[test]
    fn siblings_answers_decode() {
        let body = json!({
            "context": "abc",
            "siblings": [B64.encode("x"), B64.encode([0u8, 1])],
            "content_types": ["text/plain", "application/octet-stream"],
            "expires_at": "2030-01-02T03:04:05.678Z",
        });
        let read = decode_siblings(body.to_string().as_bytes()).unwrap();
        assert_eq!(read.values(), [Bytes::from("x"), Bytes::from(vec![0u8, 1])]);
        assert_eq!(read.context().map(Context::as_str), Some("abc"));
        assert_eq!(
            read.content_types(),
            ["text/plain", "application/octet-stream"]
        );
        let expiry = std::time::UNIX_EPOCH + Duration::from_millis(1_893_553_445_678);
        assert_eq!(read.expires_at(), Some(expiry));
        // Without content types or expiry (an older server): the defaults.
        let body = json!({"context": "abc", "siblings": [B64.encode("x"), B64.encode("y")]});
        let read = decode_siblings(body.to_string().as_bytes()).unwrap();
        assert_eq!(read.content_types(), [DEFAULT_CONTENT_TYPE; 2]);
        assert_eq!(read.expires_at(), None);
        for bad in [
            json!({"context": "a", "siblings": ["!!"]}),
            json!({"context": "a", "siblings": ["eA=="], "content_types": ["a", "b"]}),
            json!({"context": "a", "siblings": ["eA=="], "expires_at": "tomorrow"}),
        ] {
            assert!(
                matches!(
                    decode_siblings(bad.to_string().as_bytes()),
                    Err(Error::Protocol(_))
                ),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn watch_messages_decode() {
        let ctx = "Y3R4";
        let put = json!({"op": "put", "key": "a/1", "value": B64.encode("v"), "context": ctx});
        assert_eq!(
            decode_event(&put.to_string()).unwrap(),
            WatchEvent::Put {
                key: "a/1".into(),
                value: Bytes::from("v"),
                context: ctx.parse().unwrap(),
            }
        );
        let del = json!({"op": "delete", "key": "a/1", "context": ctx});
        assert!(
            matches!(decode_event(&del.to_string()), Ok(WatchEvent::Delete { key, .. }) if key == "a/1")
        );
        let exp = json!({"op": "expire", "key": "a/2", "context": ctx});
        assert!(
            matches!(decode_event(&exp.to_string()), Ok(WatchEvent::Expire { key, .. }) if key == "a/2")
        );
        assert_eq!(
            decode_event(r#"{"op":"lagged","missed":7}"#).unwrap(),
            WatchEvent::Lagged { missed: 7 }
        );
        for bad in [
            json!({"op": "put", "key": "k", "context": ctx}),
            json!({"op": "delete", "key": "k"}),
            json!({"op": "rename", "key": "k", "context": ctx}),
            json!({"op": "lagged"}),
            json!("not an object"),
        ] {
            assert!(
                matches!(decode_event(&bad.to_string()), Err(Error::Protocol(_))),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn put_options_chain() {
        let ctx: Context = "abc".parse().unwrap();
        let opts = PutOptions::new()
            .if_match(ctx.clone())
            .ttl(Duration::from_millis(1500))
            .content_type("text/plain")
            .w(2)
            .retry(true);
        assert_eq!(opts.write.if_match, Some(ctx));
        assert_eq!(opts.ttl, Some(Duration::from_millis(1500)));
        assert_eq!(opts.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            (opts.write.w, opts.write.retry, opts.if_absent),
            (Some(2), true, false)
        );
        assert!(PutOptions::from(WriteOptions::default()).ttl.is_none());
    }

    #[test]
    fn contexts_must_fit_in_a_header() {
        assert!("abc".parse::<Context>().is_ok());
        assert!("".parse::<Context>().is_err());
        assert!("a\nb".parse::<Context>().is_err());
    }
}
