//! The network seam: how a node listens and connects, for HTTP and RPC.
//!
//! The node never opens a socket itself: [`NodeHandle::start_with`](crate::NodeHandle) takes a
//! [`Network`], and [`Tcp`] is the real one. A test network can wrap it (cut, delay or drop
//! links: the in-process clusters of `tests/common` do), TLS or a cluster secret can wrap it,
//! and a simulated network can replace it. Gossip has its own seam, chitchat's `Transport`
//! ([`crate::membership::GossipTransport`]).
//!
//! One guarantee is an explicit operation of the seam, because correctness depends on it:
//! [`Stream::reset_on_drop`]. The RPC client asks for it on every connection; when a call
//! times out it drops the connection, and bytes the peer had not received yet (a write the
//! caller was told failed) must be discarded, never delivered minutes later when a cut link
//! heals (see [`crate::rpc::client`]).

use std::io;
use std::net::SocketAddr;

use crate::error::Error;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// Fails (exit code 2) if `addr`, what this node advertises for `bind_flag`, is a wildcard
/// address that no peer could reach, naming the flag to set instead.
pub fn check_advertised(
    bind_flag: &str,
    advertise_flag: &str,
    addr: SocketAddr,
) -> crate::error::Result<()> {
    if addr.ip().is_unspecified() {
        return Err(crate::error::Error::InvalidInput(format!(
            "{bind_flag} binds {addr}, which peers cannot reach: set {advertise_flag} HOST:PORT \
             to the address they reach this node at"
        )));
    }
    Ok(())
}

/// How often seeds given as host names are resolved again while none of them resolves.
pub const SEED_RESOLVE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Longest one name lookup may take before it counts as failed for this round.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The addresses `host_port` (`HOST:PORT`, or an address) stands for now, or why it stands
/// for none: for seeds, binds and advertised addresses alike.
pub async fn resolve(host_port: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = host_port.parse() {
        return Ok(vec![addr]);
    }
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(host_port)).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer in {} s", RESOLVE_TIMEOUT.as_secs())),
    }
}

/// What stands between a node and its first gossip round: `None` once some seed other than
/// `own` resolves (or every seed is `own`, or there are none), else which seeds do not
/// resolve and why. Containers and pods start in any order, so a seed's name may not exist
/// yet when a node starts: the caller waits and asks again ([`SEED_RESOLVE_RETRY`]) rather
/// than fail.
pub async fn unresolved_seeds(seeds: &[String], own: SocketAddr) -> Option<String> {
    let mut failed = Vec::new();
    for seed in seeds {
        match resolve(seed).await {
            Ok(addrs) if addrs.iter().any(|a| *a != own) => return None,
            Ok(_) => {}
            Err(why) => failed.push(format!("{seed} ({why})")),
        }
    }
    (!failed.is_empty()).then(|| format!("no seed resolves yet: {}", failed.join(", ")))
}

/// A byte stream between a node and a peer or client.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// From now on, dropping this stream discards whatever the other side has not received
    /// (TCP: SO_LINGER 0, so the close is a reset).
    fn reset_on_drop(&self) -> io::Result<()>;
}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// A bound listener.
#[async_trait]
pub trait Listener: Send + Sync + 'static {
    /// The next connection and its peer's address.
    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)>;
    /// The address actually bound (port 0 picks one).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Where a node listens and what it connects to.
#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// Binds a listener on `addr`.
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>>;
    /// Connects to `addr`.
    async fn connect(&self, addr: SocketAddr) -> io::Result<BoxStream>;
}

/// The real network: TCP, with Nagle off (requests are small and latency-bound).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

impl Stream for TcpStream {
    fn reset_on_drop(&self) -> io::Result<()> {
        self.set_zero_linger()
    }
}

struct TcpListen(TcpListener);

#[async_trait]
impl Listener for TcpListen {
    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        // Best effort: a socket that cannot turn Nagle off still works.
        let _ = stream.set_nodelay(true);
        Ok((Box::new(stream), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[async_trait]
impl Network for Tcp {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(TcpListen(TcpListener::bind(addr).await?)))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<BoxStream> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }
}

/// An in-memory [`Network`] for unit tests: connections are [`tokio::io::duplex`] pipes, so
/// they need no sockets and work under paused tokio time (every step is a task wake-up,
/// never an I/O wait the clock could jump past).
/// A listener that would not bind because of its address (taken, absent, privileged): a
/// configuration error (exit code 2) naming the flag and the address. `None` for any other
/// cause, which the caller reports as it is.
pub fn bind_refusal(
    flag: &str,
    addr: SocketAddr,
    proto: &str,
    kind: io::ErrorKind,
) -> Option<Error> {
    let why = match kind {
        io::ErrorKind::AddrInUse => {
            "the address is already in use (another ringkv node, or another program, listens \
             there): choose another port"
        }
        io::ErrorKind::AddrNotAvailable => "no interface of this machine has that address",
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges): choose a higher port"
        }
        _ => return None,
    };
    Some(Error::InvalidInput(format!("{flag} {addr}/{proto}: {why}")))
}

#[cfg(test)]
pub(crate) mod mem {
    use std::collections::HashMap;
    use std::io;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU16, Ordering};

    use async_trait::async_trait;
    use tokio::io::DuplexStream;
    use tokio::sync::mpsc;

    use super::{BoxStream, Listener, Network, Stream};

    /// Bytes a pipe buffers in each direction.
    const PIPE: usize = 256 * 1024;

    impl Stream for DuplexStream {
        fn reset_on_drop(&self) -> io::Result<()> {
            // Dropping either end closes the pipe and discards what it held.
            Ok(())
        }
    }

    type Accepted = (BoxStream, SocketAddr);

    /// Listeners by address; port 0 picks the next free one.
    #[derive(Default)]
    pub(crate) struct MemNet {
        listeners: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Accepted>>>,
        next_port: AtomicU16,
    }

    struct MemListener {
        addr: SocketAddr,
        rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Accepted>>,
    }

    #[async_trait]
    impl Listener for MemListener {
        async fn accept(&self) -> io::Result<Accepted> {
            match self.rx.lock().await.recv().await {
                Some(conn) => Ok(conn),
                None => Err(io::Error::other("the network is gone")),
            }
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(self.addr)
        }
    }

    #[async_trait]
    impl Network for MemNet {
        async fn bind(&self, mut addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
            if addr.port() == 0 {
                addr.set_port(10_000 + self.next_port.fetch_add(1, Ordering::Relaxed));
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let mut listeners = crate::lock(&self.listeners);
            if listeners.get(&addr).is_some_and(|l| !l.is_closed()) {
                return Err(io::ErrorKind::AddrInUse.into());
            }
            listeners.insert(addr, tx);
            Ok(Box::new(MemListener {
                addr,
                rx: tokio::sync::Mutex::new(rx),
            }))
        }

        async fn connect(&self, addr: SocketAddr) -> io::Result<BoxStream> {
            let (ours, theirs) = tokio::io::duplex(PIPE);
            let from = SocketAddr::from(([127, 0, 0, 2], 1));
            let listeners = crate::lock(&self.listeners);
            match listeners.get(&addr) {
                Some(l) if l.send((Box::new(theirs), from)).is_ok() => Ok(Box::new(ours)),
                _ => Err(io::ErrorKind::ConnectionRefused.into()),
            }
        }
    }
}
