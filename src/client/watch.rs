//! Watches: a WebSocket to one node, and its messages as [`WatchEvent`]s.

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hyper::header::{ALLOW, HeaderName};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::error::{Error, Result};

/// The node a client talks to when given none: node 1 of `ringkv dev`.
use super::*;

/// The byte stream under a watch: TCP, or TLS over TCP.
pub(super) trait WatchStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> WatchStream for T {}
pub(super) type WatchIo = Box<dyn WatchStream>;

impl Client {
    /// Connects to `base` (within the connect timeout) and does the WebSocket handshake of
    /// `path` (within the request timeout).
    pub(super) async fn open_watch(
        &self,
        base: &str,
        path: &str,
    ) -> std::result::Result<WebSocketStream<WatchIo>, Failure> {
        let (tls, authority) = match base.strip_prefix("https://") {
            Some(a) => (true, a),
            None => (false, base.strip_prefix("http://").unwrap_or(base)),
        };
        let url = format!("{}://{authority}{path}", if tls { "wss" } else { "ws" });
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Failure::NotSent(Error::invalid(format!("bad watch URL {url}: {e}"))))?;
        if let Some(auth) = &self.inner.authorization {
            request
                .headers_mut()
                .insert(hyper::header::AUTHORIZATION, auth.clone());
        }
        let unreachable = |e: &dyn fmt::Display| Error::Unreachable(format!("{base}: {e}"));
        let stream =
            tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(authority))
                .await
                .map_err(|_| Failure::NotSent(unreachable(&"connect timed out")))?
                .map_err(|e| Failure::NotSent(unreachable(&e)))?;
        let _ = stream.set_nodelay(true);
        let stream: WatchIo = if tls {
            let host = crate::tls::host_of(authority);
            let opened = tokio::time::timeout(
                self.inner.connect_timeout,
                crate::tls::connect(&self.inner.tls, host, stream),
            )
            .await
            .map_err(|_| Failure::NotSent(unreachable(&"TLS handshake timed out")))?
            .map_err(|e| Failure::NotSent(unreachable(&e)))?;
            Box::new(opened)
        } else {
            Box::new(stream)
        };
        let handshake = tokio_tungstenite::client_async(request, stream);
        match tokio::time::timeout(self.inner.timeout, handshake).await {
            Err(_) => Err(Failure::Sent(Error::Timeout)),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let header = |name: HeaderName| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let ans = Answer {
                    status: resp.status(),
                    allow: header(ALLOW),
                    body: Bytes::from(resp.body().clone().unwrap_or_default()),
                    ..Answer::default()
                };
                Err(Failure::Sent(error_from_answer(&ans, path, 0)))
            }
            Ok(Err(e)) => Err(Failure::Sent(ws_error(&url, e))),
        }
    }
}

/// The changes under a watched prefix, from [`Client::watch`]: one [`WatchEvent`] per
/// change, until the connection closes. Dropping it closes the WebSocket and ends the watch.
pub struct Watch {
    pub(super) ws: WebSocketStream<WatchIo>,
    /// The node watched through, `http://host:port`.
    pub(super) node: String,
    /// The connection closed; nothing more will come.
    pub(super) done: bool,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("node", &self.node)
            .field("done", &self.done)
            .finish()
    }
}

impl Watch {
    /// The next change: `None` once the connection closed, an error if it broke or a
    /// message could not be understood (the stream goes on after a bad message).
    pub async fn recv(&mut self) -> Option<Result<WatchEvent>> {
        self.next().await
    }

    /// The next message exactly as the server sent it (its JSON text), not decoded: for
    /// tools that pass the events on.
    pub async fn recv_raw(&mut self) -> Option<Result<String>> {
        std::future::poll_fn(|cx| self.poll_text(cx)).await
    }

    /// The node this watch is connected to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Closes the WebSocket cleanly.
    pub async fn close(mut self) -> Result<()> {
        match self.ws.close(None).await {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Ok(())
            }
            Err(e) => Err(ws_error(&self.node, e)),
        }
    }

    /// The next text message; control frames are handled by the library, and a binary
    /// message (the server sends none) is skipped.
    fn poll_text(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<String>>> {
        while !self.done {
            match ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Text(text))) => return Poll::Ready(Some(Ok(text.to_string()))),
                Some(Ok(Message::Close(_))) | None => self.done = true,
                Some(Ok(_)) => {}
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(ws_error(&self.node, e))));
                }
            }
        }
        Poll::Ready(None)
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.poll_text(cx)
            .map(|msg| msg.map(|text| text.and_then(|t| decode_event(&t))))
    }
}

/// A WebSocket failure as a ringkv error: a connection that broke is [`Error::Interrupted`].
pub(super) fn ws_error(what: &str, err: tungstenite::Error) -> Error {
    match err {
        tungstenite::Error::Io(e) => Error::Interrupted(format!("{what}: {e}")),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            Error::Interrupted(format!("{what}: connection closed"))
        }
        e => Error::Protocol(format!("{what}: {e}")),
    }
}

/// Decodes one watch message: `{"op", "key", "value" (base64, puts only), "context"}` or
/// `{"op": "lagged", "missed"}`.
pub(super) fn decode_event(text: &str) -> Result<WatchEvent> {
    #[derive(Deserialize)]
    struct Wire {
        op: String,
        key: Option<String>,
        value: Option<String>,
        context: Option<String>,
        missed: Option<u64>,
    }
    let bad = |e: &dyn fmt::Display| Error::Protocol(format!("bad watch message {text:?}: {e}"));
    let w: Wire = serde_json::from_str(text).map_err(|e| bad(&e))?;
    if w.op == "lagged" {
        let missed = w.missed.ok_or_else(|| bad(&"no missed count"))?;
        return Ok(WatchEvent::Lagged { missed });
    }
    let key = w.key.ok_or_else(|| bad(&"no key"))?;
    let context: Context = w
        .context
        .ok_or_else(|| bad(&"no context"))?
        .parse()
        .map_err(|e: Error| bad(&e))?;
    match w.op.as_str() {
        "put" => {
            let value = w.value.ok_or_else(|| bad(&"a put without a value"))?;
            let value = B64.decode(value).map_err(|e| bad(&e))?;
            Ok(WatchEvent::Put {
                key,
                value: Bytes::from(value),
                context,
            })
        }
        "delete" => Ok(WatchEvent::Delete { key, context }),
        "expire" => Ok(WatchEvent::Expire { key, context }),
        op => Err(bad(&format!("unknown op {op:?}"))),
    }
}
