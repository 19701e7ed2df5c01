//! The in-process clusters' network: real loopback TCP through ringkv's network seam
//! ([`ringkv::net`]), plus links a test can cut. Cutting is a property of the test network,
//! not a hook in the product: a cut link refuses new connections at once, and breaks the open
//! ones (their reads and writes fail with a reset), as a dead switch port would look to TCP.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use ringkv::net::{BoxStream, Listener, Network, Stream, Tcp};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// One node's side of the test network: its outbound links, by peer address.
#[derive(Clone, Default)]
pub struct TestNet {
    /// The live token of each peer address this node connected to; cancelled while cut.
    links: Arc<Mutex<HashMap<SocketAddr, CancellationToken>>>,
}

impl TestNet {
    /// Cuts (or restores) this node's link to `addr`: connections from this node to it.
    pub fn set_cut(&self, addr: SocketAddr, cut: bool) {
        let mut links = self.links.lock().unwrap();
        let token = links.entry(addr).or_default();
        if cut {
            token.cancel();
        } else if token.is_cancelled() {
            *token = CancellationToken::new();
        }
    }

    fn token(&self, addr: SocketAddr) -> CancellationToken {
        self.links.lock().unwrap().entry(addr).or_default().clone()
    }
}

#[async_trait]
impl Network for TestNet {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        Tcp.bind(addr).await
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<BoxStream> {
        let token = self.token(addr);
        if token.is_cancelled() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the test cut the link to {addr}"),
            ));
        }
        let inner = Tcp.connect(addr).await?;
        Ok(Box::new(Cuttable {
            inner,
            cut: Box::pin(token.cancelled_owned()),
        }))
    }
}

/// A stream that fails once its link is cut. Polling the cut future registers the task, so a
/// read waiting for data is woken by the cut, as a reset would wake it.
struct Cuttable {
    inner: BoxStream,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Cuttable {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.cut.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the test cut this link",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Cuttable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Stream for Cuttable {
    fn reset_on_drop(&self) -> io::Result<()> {
        self.inner.reset_on_drop()
    }
}
