//! The client's side of the bulk routes, for backup and restore ([`crate::backup`]): one
//! request to one named ring node, its answer's body on success.

use bytes::Bytes;
use hyper::Method;
use hyper::header::{CONTENT_TYPE, HeaderValue};

use super::*;

impl Client {
    /// The `http(s)://host:port` of a ring node's HTTP address (`host:port`, as
    /// [`ring::Routes`] gives it), with this client's scheme.
    pub fn base_of(&self, http: &str) -> String {
        format!("{}://{}", self.inner.scheme, http)
    }

    /// One `method` of `path` (escaped, with its query) at `base`, or through the given nodes
    /// when `base` is `None`, with `body` as MessagePack: the answer's body if it is a 2xx,
    /// else the error it carries. Sent once; a bulk caller decides what to retry.
    pub(crate) async fn bulk(
        &self,
        base: Option<&str>,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes> {
        let call = Call {
            method,
            path,
            body,
            context: None,
            headers: vec![(CONTENT_TYPE, HeaderValue::from_static(crate::http::MSGPACK))],
            retryable: false,
            key: None,
        };
        let ans = match base {
            Some(base) => self.send_to(base, &call).await.map_err(|f| match f {
                Failure::NotSent(e) | Failure::Sent(e) => e,
            })?,
            None => self.call(&call).await?,
        };
        if ans.status.is_success() {
            Ok(ans.body)
        } else {
            Err(error_from_answer(&ans, path, 0))
        }
    }

    /// `GET /cluster/status` through the given nodes, as JSON.
    pub async fn cluster_status(&self) -> Result<serde_json::Value> {
        let body = self.get_json("/cluster/status").await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("bad /cluster/status answer: {e}")))
    }
}

/// Whether `err` says the node refused the caller (a token problem): no other node
/// would answer otherwise.
pub(crate) fn is_denied(err: &Error) -> bool {
    matches!(err, Error::Unauthorized(_) | Error::Forbidden(_))
}
