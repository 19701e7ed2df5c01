//! The simulated network under ringkv's network seam ([`ringkv::net`]): turmoil's TCP.
//!
//! Every byte a node or client reads is folded into the run's trace ([`super::trace`]), with
//! the reading host and the simulated time, so two runs of one seed can be compared message
//! for message.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use ringkv::net::{BoxStream, Listener, Network, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// turmoil's TCP, as a [`Network`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SimNet;

/// A turmoil TCP stream whose reads are traced under the reading host's name.
pub struct SimStream(turmoil::net::TcpStream, String);

impl SimStream {
    fn new(stream: turmoil::net::TcpStream) -> SimStream {
        let host = stream
            .local_addr()
            .ok()
            .and_then(|a| turmoil::reverse_lookup(a.ip()))
            .unwrap_or_default();
        SimStream(stream, host)
    }

    /// Connects to `addr` over the simulated network.
    pub async fn connect(addr: SocketAddr) -> io::Result<SimStream> {
        Ok(SimStream::new(
            turmoil::net::TcpStream::connect(addr).await?,
        ))
    }
}

impl Stream for SimStream {
    fn reset_on_drop(&self) -> io::Result<()> {
        // turmoil resets a stream dropped with unread bytes, and drops (never holds) what a
        // partitioned link carries, so nothing sent before the drop arrives long after it.
        Ok(())
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            super::trace::record(b"tcp", &self.1, &buf.filled()[before..]);
        }
        res
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

struct SimListener(turmoil::net::TcpListener);

#[async_trait]
impl Listener for SimListener {
    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((Box::new(SimStream::new(stream)), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[async_trait]
impl Network for SimNet {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(SimListener(
            turmoil::net::TcpListener::bind(addr).await?,
        )))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<BoxStream> {
        Ok(Box::new(SimStream::connect(addr).await?))
    }
}
