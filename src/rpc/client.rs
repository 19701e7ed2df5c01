//! Outbound RPC: one persistent, multiplexed connection per peer address.
//!
//! A call registers a one-shot reply slot under a fresh request id, queues the request on the
//! peer's connection and waits for the slot with a timeout. The connection task writes queued
//! requests in batches and routes each response to its slot by id.
//!
//! Connections are keyed by the peer's RPC *address*: a peer restarted on a new port simply
//! gets a new connection, and the old one dies with its socket. A broken connection fails
//! every call pending on it at once (they do not wait for their timeouts), leaves the pool,
//! and the next call opens a fresh one. The pool holds only connections that are open or
//! opening, so the addresses of departed peers do not pile up in it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::auth::{FrameMac, Proof, Refusals, Role, RpcAuth};
use super::{Hello, Message, Request, Response, read_one};
use crate::codec::{self, FrameCodec};
use crate::error::{Error, Result};
use crate::lock;

/// How long to wait for a TCP connect plus hello. Short: on loopback or a LAN a live peer
/// answers in microseconds, and a dead one should not hold a client request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Requests queued per connection before callers wait.
const REQUEST_QUEUE: usize = 1024;

type Slot = oneshot::Sender<Result<Response>>;

/// A call waiting for its answer.
struct Waiter {
    slot: Slot,
    /// Some of its bytes may have reached the socket. Until then, a broken connection means
    /// the peer never saw it: the caller may safely try another replica.
    sent: bool,
}

/// A fixed hasher: when a connection dies its callers wake in an order that depends only on
/// their ids, so one simulation seed replays one run.
type Pending = Arc<Mutex<HashMap<u64, Waiter, xxhash_rust::xxh3::Xxh3Builder>>>;

struct Conn {
    tx: mpsc::Sender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    dead: Arc<AtomicBool>,
    /// Resets the connection (see [`Pool::call_with_timeout`]).
    abort: CancellationToken,
    /// The protocol version the handshake settled on; 0 until it did.
    protocol: Arc<AtomicU32>,
}

/// The settings every connection shares.
pub struct PoolConfig {
    /// Where connections come from ([`crate::net`]).
    pub net: Arc<dyn crate::net::Network>,
    pub hello: Hello,
    pub max_payload: usize,
    pub timeout: Duration,
    /// Counts connections closed for a bad frame from the peer (the node's
    /// `rpc_frames_rejected`).
    pub frames_rejected: Arc<AtomicU64>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// With a cluster secret: servers must prove it, and so do we ([`super::auth`]).
    pub auth: Option<Arc<RpcAuth>>,
    /// Handshakes refused (a wrong secret, or no protocol version in common).
    pub refusals: Arc<Refusals>,
    /// Who should answer at an address (node id and generation), if anyone is known there:
    /// see [`crate::membership::expect_from_view`].
    pub expect: Option<Expect>,
}

/// Who should answer at an address, by the current view.
pub type Expect = Arc<dyn Fn(SocketAddr) -> Option<(String, u64)> + Send + Sync>;

type Conns = Arc<Mutex<HashMap<SocketAddr, Arc<Conn>>>>;

/// Connections to peers, opened on first use.
pub struct Pool {
    cfg: Arc<PoolConfig>,
    /// Open or opening connections: each one's task removes it when the connection ends.
    conns: Conns,
}

impl Pool {
    /// An empty pool.
    pub fn new(cfg: PoolConfig) -> Pool {
        Pool {
            cfg: Arc::new(cfg),
            conns: Conns::default(),
        }
    }

    /// Connections held (open, or opening).
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        lock(&self.conns).len()
    }

    /// The protocol version of the open connection to `addr`, once its handshake is done.
    pub fn protocol(&self, addr: SocketAddr) -> Option<u32> {
        let conns = lock(&self.conns);
        let v = conns.get(&addr)?.protocol.load(Ordering::Acquire);
        (v != 0).then_some(v)
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.cfg.timeout
    }

    /// Sends `req` to the peer at `addr` and waits for its answer, at most the pool timeout.
    pub async fn call(&self, addr: SocketAddr, req: Request) -> Result<Response> {
        self.call_with_timeout(addr, req, self.cfg.timeout).await
    }

    /// As [`Pool::call`] with an explicit timeout.
    pub async fn call_with_timeout(
        &self,
        addr: SocketAddr,
        req: Request,
        timeout: Duration,
    ) -> Result<Response> {
        let conn = self.conn(addr);
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (slot_tx, slot_rx) = oneshot::channel();
        lock(&conn.pending).insert(
            id,
            Waiter {
                slot: slot_tx,
                sent: false,
            },
        );
        // Register before sending: the connection task fails every registered slot when it
        // dies, and closes its queue first, so a request is either answered, failed, or
        // refused here; it is never left waiting for its timeout on a dead connection.
        // The whole call, queueing included, is bounded by the timeout: a peer that stops
        // reading without closing fills the queue, and callers must not wait on it forever.
        let deadline = tokio::time::Instant::now() + timeout;
        let queued = conn.tx.send(Message::Request {
            id,
            body: req,
            trace: super::current_trace(),
        });
        match tokio::time::timeout_at(deadline, queued).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                lock(&conn.pending).remove(&id);
                return Err(Error::Unreachable(format!("connection to {addr} closed")));
            }
            Err(_) => {
                lock(&conn.pending).remove(&id);
                // Never handed to the writer: not sent, safe to try elsewhere.
                return Err(Error::Unreachable(format!("connection to {addr} is stuck")));
            }
        }
        match tokio::time::timeout_at(deadline, slot_rx).await {
            Ok(Ok(res)) => res,
            // The slot was dropped with the request possibly delivered: outcome unknown.
            Ok(Err(_)) => Err(Error::Interrupted(format!("connection to {addr} lost"))),
            Err(_) => {
                lock(&conn.pending).remove(&id);
                // The request may still sit unsent in this connection's socket (a cut link
                // holds it in the kernel's send buffer, retransmitted when the link heals). A
                // write the caller reported as failed must not be applied minutes later, over
                // writes acknowledged since: reset the connection, which discards whatever the
                // peer has not received yet (SO_LINGER 0). Its other calls fail with it; the
                // next call reconnects.
                conn.dead.store(true, Ordering::Release);
                conn.abort.cancel();
                forget(&self.conns, addr, &conn);
                Err(Error::Timeout)
            }
        }
    }

    fn conn(&self, addr: SocketAddr) -> Arc<Conn> {
        let mut conns = lock(&self.conns);
        if let Some(conn) = conns.get(&addr)
            && !conn.dead.load(Ordering::Acquire)
        {
            return conn.clone();
        }
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let conn = Arc::new(Conn {
            tx,
            pending: Arc::default(),
            next_id: AtomicU64::new(1),
            dead: Arc::default(),
            abort: CancellationToken::new(),
            protocol: Arc::default(),
        });
        conns.insert(addr, conn.clone());
        let cfg = self.cfg.clone();
        let pending = conn.pending.clone();
        let protocol = conn.protocol.clone();
        let dead = conn.dead.clone();
        let abort = conn.abort.clone();
        let (conns, this) = (self.conns.clone(), Arc::downgrade(&conn));
        self.cfg.tracker.spawn(async move {
            let mut rx = rx;
            let res = tokio::select! {
                biased;
                _ = cfg.shutdown.cancelled() => Err(Error::Shutdown),
                _ = abort.cancelled() => Err(Error::Timeout),
                res = run(addr, &cfg, &mut rx, &pending, &protocol) => res,
            };
            dead.store(true, Ordering::Release);
            rx.close();
            fail_all(&pending);
            // A weak handle: the pool's entry, not this task, decides how long the `Conn`
            // (and its queue's sender) lives.
            if let Some(conn) = Weak::upgrade(&this) {
                forget(&conns, addr, &conn);
            }
            match res {
                Err(err @ Error::Protocol(_)) => {
                    cfg.frames_rejected.fetch_add(1, Ordering::Relaxed);
                    warn!(%addr, %err, "closing rpc connection: bad frame from peer");
                }
                Err(err) => debug!(%addr, %err, "rpc connection ended"),
                Ok(()) => {}
            }
        });
        conn
    }
}

/// Removes `conn` from the pool, unless a newer connection to `addr` replaced it already.
fn forget(conns: &Conns, addr: SocketAddr, conn: &Arc<Conn>) {
    let mut conns = lock(conns);
    if conns.get(&addr).is_some_and(|c| Arc::ptr_eq(c, conn)) {
        conns.remove(&addr);
    }
}

/// Fails every pending call. A request none of whose bytes reached the socket (the
/// connection never came up, or broke before writing it) was never seen by the peer, so its
/// caller may safely try elsewhere (`Unreachable`). One that may have been sent may have been
/// applied, so its outcome is unknown (`Interrupted`) and must not be retried blindly: a
/// forwarded write retried on another coordinator would be applied twice.
fn fail_all(pending: &Pending) {
    for (_, waiter) in lock(pending).drain() {
        let err = if waiter.sent {
            Error::Interrupted("connection lost with the request in flight".into())
        } else {
            Error::Unreachable("connection lost before the request was sent".into())
        };
        let _ = waiter.slot.send(Err(err));
    }
}

/// Writes queued requests to the socket in batches, marking each request `sent` before any
/// of its bytes go out (and unmarking a batch that failed before any byte went out).
async fn send_requests<W>(
    mut wr: W,
    rx: &mut mpsc::Receiver<Message>,
    pending: &Pending,
    mut mac: Option<FrameMac>,
) -> Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let mut buf = bytes::BytesMut::with_capacity(8 * 1024);
    let mut ids = Vec::new();
    while let Some(msg) = rx.recv().await {
        buf.clear();
        ids.clear();
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            if let Message::Request { id, .. } = &msg {
                ids.push(*id);
            }
            super::auth::encode(&msg, &mut buf, &mut mac)?;
            if buf.len() < super::MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let mark = |sent: bool| {
            let mut p = lock(pending);
            for id in &ids {
                if let Some(w) = p.get_mut(id) {
                    w.sent = sent;
                }
            }
        };
        mark(true);
        let mut written = 0;
        while written < buf.len() {
            match wr.write(&buf[written..]).await {
                Ok(0) => return Err(Error::Unreachable("the connection closed".into())),
                Ok(n) => written += n,
                Err(err) => {
                    if written == 0 {
                        mark(false);
                    }
                    return Err(err.into());
                }
            }
        }
    }
    Ok(())
}

/// Connects, says hello, then pumps requests out and responses in until something breaks.
async fn run(
    addr: SocketAddr,
    cfg: &PoolConfig,
    rx: &mut mpsc::Receiver<Message>,
    pending: &Pending,
    protocol: &AtomicU32,
) -> Result<()> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, cfg.net.connect(addr))
        .await
        .map_err(|_| Error::Unreachable(format!("connect to {addr} timed out")))?
        .map_err(|e| Error::Unreachable(format!("connect to {addr}: {e}")))?;
    // Closing resets the connection and drops unsent requests (see `call_with_timeout`).
    stream.reset_on_drop()?;
    let (rd, mut wr) = tokio::io::split(stream);
    let mut reader = FramedRead::new(rd, FrameCodec::new(cfg.max_payload));
    let mut hello = cfg.hello.clone();
    let nc = cfg.auth.as_ref().map(|_| RpcAuth::nonce());
    hello.nonce = nc.clone();
    let mut buf = bytes::BytesMut::new();
    hello.encode(&mut buf)?;
    tokio::io::AsyncWriteExt::write_all(&mut wr, &buf).await?;
    let theirs: Hello = tokio::time::timeout(CONNECT_TIMEOUT, read_one(&mut reader))
        .await
        .map_err(|_| Error::Unreachable(format!("no hello from {addr}")))??;
    let version = theirs.accept(&cfg.hello, &cfg.refusals)?;
    if let Some((node, generation)) = cfg.expect.as_ref().and_then(|expect| expect(addr)) {
        let same_generation = theirs.generation.is_none_or(|g| g == generation);
        if theirs.node != node || !same_generation {
            return Err(Error::Unreachable(format!(
                "{addr} answers as {} (generation {:?}), not as {node} (generation {generation}): \
                 the address changed hands",
                theirs.node, theirs.generation
            )));
        }
    }
    let (send_mac, mut recv_mac) = match (&cfg.auth, nc) {
        (Some(auth), Some(nc)) => {
            let ns = theirs.nonce.clone().unwrap_or_default();
            auth.check(Role::Server, &nc, &ns, theirs.proof.as_deref())?;
            buf.clear();
            let proof = Proof {
                proof: auth.client_proof(&nc, &ns),
            };
            codec::encode(&proof, &mut buf)?;
            tokio::io::AsyncWriteExt::write_all(&mut wr, &buf).await?;
            let (send, recv) = auth.frame_keys(Role::Client, &nc, &ns);
            (Some(send), Some(recv))
        }
        _ => (None, None),
    };

    protocol.store(version, Ordering::Release);
    debug!(%addr, peer = %theirs.node, protocol = version, "rpc connection open");
    let writer = send_requests(wr, rx, pending, send_mac);
    let reader_loop = async {
        while let Some(frame) = reader.next().await {
            let payload = super::auth::open(&mut recv_mac, frame?)?;
            match codec::decode_payload::<Message>(&payload)? {
                Message::Response { id, body } => {
                    if let Some(waiter) = lock(pending).remove(&id) {
                        let _ = waiter.slot.send(body);
                    }
                }
                Message::Request { .. } => {
                    return Err(Error::Protocol("server sent a request".into()));
                }
            }
        }
        Err(Error::Unreachable(format!("{addr} closed the connection")))
    };
    tokio::select! {
        biased;
        res = writer => res,
        res = reader_loop => res,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::mem::MemNet;
    use crate::rpc::testing::{Recorder, pool, pool_expecting, start_server, wait_until};

    /// A process that took over a departed node's address is not taken for that node: the
    /// call fails as unreachable (nothing was sent), so a reader asks another replica instead
    /// of counting the stranger's "nothing here".
    #[tokio::test]
    async fn a_peer_that_is_not_the_expected_node_is_refused() {
        let net = Arc::new(MemNet::default());
        let (addr, _server) = start_server(&net, Arc::new(Recorder::default()), 8).await;
        let expecting = |node: &'static str| -> Option<Expect> {
            Some(Arc::new(move |a| {
                (a == addr).then(|| (node.to_string(), 7))
            }))
        };
        let stranger = pool_expecting(net.clone(), Duration::from_secs(5), expecting("n1"));
        let res = stranger.call(addr, Request::Status).await;
        assert!(matches!(res, Err(Error::Unreachable(_))), "{res:?}");
        // The node the view expects there (the test server says "server") is served.
        let known = pool_expecting(net.clone(), Duration::from_secs(5), expecting("server"));
        let res = known.call(addr, Request::Status).await;
        assert!(matches!(res, Ok(Response::Done)), "{res:?}");
    }

    fn speaking(node: &str, min: u32, max: Option<u32>) -> Hello {
        let mut hello = Hello::speaking(
            "test".into(),
            node.into(),
            None,
            crate::compat::Protocols { min, max: min },
        );
        hello.protocol_max = max;
        hello
    }

    /// Each connection uses the highest version both ends speak: a peer of the previous
    /// release (a hello without a range) gets 5, two newer builds their common newest; builds
    /// with no version in common are refused, counted and never served.
    #[tokio::test]
    async fn a_connection_uses_the_newest_version_both_ends_speak() {
        use crate::rpc::testing::{pool_saying, start_server_saying};
        let net = Arc::new(MemNet::default());
        let recorder = Arc::new(Recorder::default());
        let cases = [
            // (server, client, negotiated)
            (speaking("s", 5, Some(6)), speaking("c", 5, None), Some(5)),
            (speaking("s", 5, None), speaking("c", 5, Some(6)), Some(5)),
            (
                speaking("s", 5, Some(6)),
                speaking("c", 5, Some(7)),
                Some(6),
            ),
            (speaking("s", 5, Some(5)), speaking("c", 6, Some(7)), None),
            (speaking("s", 6, Some(7)), speaking("c", 5, None), None),
        ];
        for (server_hello, client_hello, expected) in cases {
            let what = format!("{server_hello:?} with {client_hello:?}");
            let (addr, server) = start_server_saying(&net, recorder.clone(), 8, server_hello).await;
            let pool = pool_saying(net.clone(), Duration::from_secs(5), None, client_hello);
            let res = pool.call(addr, Request::Status).await;
            let refused = server.refusals.count.load(Ordering::Relaxed);
            match expected {
                Some(v) => {
                    assert!(matches!(res, Ok(Response::Done)), "{what}: {res:?}");
                    assert_eq!(pool.protocol(addr), Some(v), "{what}");
                    assert_eq!(refused, 0, "{what}");
                }
                None => {
                    assert!(matches!(res, Err(Error::Unreachable(_))), "{what}: {res:?}");
                    assert_eq!(refused, 1, "{what}: counted as a refused handshake");
                    assert_eq!(server.frames_rejected.load(Ordering::Relaxed), 0, "{what}");
                }
            }
            server.shutdown.cancel();
        }
    }

    #[tokio::test]
    async fn a_connection_that_ends_leaves_the_pool() {
        let net = Arc::new(MemNet::default());
        let (addr, server) = start_server(&net, Arc::new(Recorder::default()), 8).await;
        let pool = pool(net.clone(), Duration::from_secs(5));
        let res = pool.call(addr, Request::Status).await;
        assert!(matches!(res, Ok(Response::Done)), "{res:?}");
        assert_eq!(pool.connections(), 1);
        // The peer goes away: its connection leaves the pool at once, with no further call
        // to that address.
        server.shutdown.cancel();
        wait_until("the dead connection left the pool", || {
            pool.connections() == 0
        })
        .await;
        // A connection that never comes up leaves nothing behind either.
        let res = pool.call(addr, Request::Status).await;
        assert!(matches!(res, Err(Error::Unreachable(_))), "{res:?}");
        wait_until("the failed connection left the pool", || {
            pool.connections() == 0
        })
        .await;
        // Another peer, reached afresh, is held while it lives.
        let (other, _server) = start_server(&net, Arc::new(Recorder::default()), 8).await;
        let res = pool.call(other, Request::Status).await;
        assert!(matches!(res, Ok(Response::Done)), "{res:?}");
        assert_eq!(pool.connections(), 1);
    }

    /// The task of a connection the pool already replaced must not remove its successor.
    #[test]
    fn forgetting_a_replaced_connection_keeps_its_successor() {
        let conn = || {
            Arc::new(Conn {
                tx: mpsc::channel(1).0,
                pending: Pending::default(),
                next_id: AtomicU64::new(1),
                dead: Arc::default(),
                abort: CancellationToken::new(),
                protocol: Arc::default(),
            })
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let (old, new) = (conn(), conn());
        let conns = Conns::default();
        lock(&conns).insert(addr, new.clone());
        forget(&conns, addr, &old);
        assert!(
            lock(&conns)
                .get(&addr)
                .is_some_and(|c| Arc::ptr_eq(c, &new))
        );
        forget(&conns, addr, &new);
        assert!(lock(&conns).is_empty());
    }
}
