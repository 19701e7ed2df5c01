//! The tests' one raw HTTP client.
//!
//! Every test that speaks HTTP to a node builds its requests with [`request`] and reads the
//! answers with [`Reply::read`]: the in-process and real-process tests through [`Http`] (a
//! keep-alive pool on real TCP), the fault test through the same, and the simulator over its
//! own turmoil streams. Tests need the raw answer (status, headers, body) to assert the HTTP
//! contract, so they do not use the product's `ringkv::Client`, which interprets it; the load
//! generator keeps its lean fast path in `src/bench/conn.rs`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ringkv::http::CONTEXT_HEADER;

/// How long [`Http`] waits for a whole answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Reads a whole answer; `Err` says why it could not be read.
    pub async fn read<B>(resp: Response<B>) -> Result<Reply, String>
    where
        B: Body,
        B::Error: std::fmt::Display,
    {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// The `x-ringkv-context` header, if any.
    pub fn context(&self) -> Option<String> {
        self.headers
            .get(CONTEXT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The sibling values of a 300 (or JSON 200) answer, decoded and sorted.
    pub fn siblings(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self.json()["siblings"]
            .as_array()
            .expect("siblings array")
            .iter()
            .map(|s| B64.decode(s.as_str().expect("string")).expect("base64"))
            .collect();
        out.sort();
        out
    }

    /// The sibling values of a JSON GET answer as (lossy) strings, in the order sent; `None`
    /// if the body is not the JSON a GET answers with.
    pub fn values(&self) -> Option<Vec<String>> {
        let json: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        json["siblings"]
            .as_array()?
            .iter()
            .map(|v| {
                let raw = B64.decode(v.as_str()?).ok()?;
                Some(String::from_utf8_lossy(&raw).into_owned())
            })
            .collect()
    }
}

/// A request; `headers` are (name, value) pairs.
pub fn request(
    method: Method,
    uri: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(body.into())).expect("valid request")
}

/// A keep-alive HTTP/1 client.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends one request; `headers` are (name, value) pairs. Panics if it fails.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.try_send(method, url, body, headers)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends one request; a failure to get a whole answer within [`TIMEOUT`] is an `Err`
    /// saying why.
    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let req = request(method, url, body, headers);
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request to {url} failed: {e}"))?;
            Reply::read(resp)
                .await
                .map_err(|e| format!("answer from {url}: {e}"))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("request to {url} timed out"))?
    }

    pub async fn try_get(&self, url: &str) -> Result<Reply, String> {
        self.try_send(Method::GET, url, Bytes::new(), &[]).await
    }

    pub async fn try_put(&self, url: &str, body: impl Into<Bytes>) -> Result<Reply, String> {
        self.try_send(Method::PUT, url, body, &[]).await
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(Method::GET, url, Bytes::new(), &[]).await
    }

    pub async fn put(&self, url: &str, body: impl Into<Bytes>) -> Reply {
        self.send(Method::PUT, url, body, &[]).await
    }

    pub async fn put_ctx(&self, url: &str, body: impl Into<Bytes>, ctx: &str) -> Reply {
        self.send(Method::PUT, url, body, &[(CONTEXT_HEADER, ctx)])
            .await
    }

    pub async fn delete(&self, url: &str) -> Reply {
        self.send(Method::DELETE, url, Bytes::new(), &[]).await
    }
}
