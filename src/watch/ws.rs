//! The WebSocket side of watches: an event as a JSON message, and the task that streams a
//! subscription to one socket.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use serde_json::json;

// Events and announcements cross the wire: they are defined with the protocol, and their
// client-facing and gossiped forms are here.

use super::*;

impl Event {
    /// The WebSocket message: `{"op", "key", "value" (base64, puts only), "context"}`, with
    /// the key in base64url if `base64_key`.
    pub fn to_json(&self, base64_key: bool) -> String {
        let mut msg = json!({
            "op": self.op,
            "key": show_key(&self.key, base64_key),
            "context": self.context,
        });
        if let Some(v) = &self.value {
            msg["value"] = json!(B64.encode(v));
        }
        msg.to_string()
    }
}

/// A key as shown to clients: text (invalid UTF-8 replaced), or base64url for binary keys.
pub fn show_key(key: &[u8], base64: bool) -> String {
    if base64 {
        URL_SAFE_NO_PAD.encode(key)
    } else {
        String::from_utf8_lossy(key).into_owned()
    }
}

/// The message a watcher gets in place of the `missed` events that did not fit its buffer.
pub fn lagged_json(missed: u64) -> String {
    json!({"op": "lagged", "missed": missed}).to_string()
}

/// Streams a subscription's events to a WebSocket until either side closes or the node
/// shuts down. A `lagged` message stands in for the events that overflowed the buffer.
pub async fn stream<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    mut sub: Subscription,
    base64_keys: bool,
    shutdown: tokio_util::sync::CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            ev = sub.events.recv() => {
                let Some(ev) = ev else { return };
                let missed = sub.take_missed();
                if missed > 0 && ws.send(Message::text(lagged_json(missed))).await.is_err() {
                    return;
                }
                if ws.send(Message::text(ev.to_json(base64_keys))).await.is_err() {
                    return;
                }
            }
            msg = ws.next() => match msg {
                // Pings are answered by the library; anything else from the client is
                // ignored, until it closes.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
