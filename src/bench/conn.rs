//! The load generator's HTTP client: one hyper connection per worker, straight to a node or,
//! with key-aware routing, to each key's coordinator. Leaner than [`crate::client::Client`]
//! (no retries, no per-request allocation beyond the request), so that the generator
//! measures the ring and not itself.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use tokio::net::TcpStream;

use super::*;
use crate::error::{Error, Result};

/// One node to connect to.
pub(super) struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    /// For an `https://` node: the TLS settings and the name its certificate must carry.
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    /// `Bearer TOKEN`, with `--token`.
    authorization: Option<HeaderValue>,
}

impl Target {
    /// The address and `host` header of a normalized `http://host:port` URL.
    pub(super) async fn resolve(base: &str, auth: &crate::cli::AuthArgs) -> Result<Arc<Target>> {
        let token = auth.api_token.as_deref();
        let (https, authority) = match base.strip_prefix("https://") {
            Some(a) => (true, a),
            None => (false, base.trim_start_matches("http://")),
        };
        let tls = if https {
            let ca = auth.ca_cert.as_deref().ok_or_else(|| {
                Error::invalid(
                    "https:// nodes need the CA certificate that signed theirs: --ca-cert PEM",
                )
            })?;
            let config = crate::tls::client_config(Some(ca))?;
            Some((config, crate::tls::host_of(authority).to_string()))
        } else {
            None
        };
        let addr = tokio::net::lookup_host(authority)
            .await
            .map_err(|e| Error::invalid(format!("cannot resolve {authority}: {e}")))?
            .next()
            .ok_or_else(|| Error::invalid(format!("{authority} resolves to no address")))?;
        let host = HeaderValue::from_str(authority)
            .map_err(|_| Error::invalid(format!("bad host {authority:?}")))?;
        let authorization = token.map(crate::client::bearer).transpose()?;
        Ok(Arc::new(Target {
            addr,
            host,
            tls,
            authorization,
        }))
    }
}

/// Why a request failed without an HTTP answer.
pub(super) enum Failure {
    Connect,
    Broken,
    Timeout,
}

impl Failure {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Broken => "broken",
            Failure::Timeout => "timeout",
        }
    }
}

/// An HTTP/1.1 handshake over `io`; the connection is driven by its own task, which ends
/// when the sender is dropped.
pub(super) async fn handshake<I>(io: I) -> std::result::Result<SendRequest<Full<Bytes>>, Failure>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|_| Failure::Connect)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A task's connections to every serving ring node, for `--route`.
pub(super) struct Router {
    routes: Arc<crate::client::ring::Routes>,
    conns: std::collections::HashMap<String, Conn>,
}

impl Router {
    pub(super) async fn open(
        routes: &Arc<crate::client::ring::Routes>,
        scheme: &str,
        auth: &crate::cli::AuthArgs,
    ) -> Result<Router> {
        let mut conns = std::collections::HashMap::new();
        for addr in routes.serving() {
            let target = Target::resolve(&format!("{scheme}://{addr}"), auth).await?;
            conns.insert(addr.to_string(), Conn::open(target).await?);
        }
        Ok(Router {
            routes: routes.clone(),
            conns,
        })
    }

    /// The connection to `key`'s coordinator (a write) or one of its homes (a read).
    pub(super) fn conn_for(
        &mut self,
        key: &[u8],
        read: bool,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Option<&mut Conn> {
        let homes = self.routes.homes(key);
        let pick = match (read, homes.len()) {
            (_, 0) => return None,
            (false, _) => 0,
            (true, n) => rng.random_range(0..n),
        };
        let addr = homes[pick].to_string();
        self.conns.get_mut(&addr)
    }
}

/// One keep-alive HTTP/1.1 connection, reopened after a failure.
pub(super) struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub(super) async fn open(target: Arc<Target>) -> Result<Conn> {
        let mut conn = Conn {
            target,
            sender: None,
        };
        conn.connect()
            .await
            .map_err(|_| Error::Unreachable(format!("cannot connect to {}", conn.target.addr)))?;
        Ok(conn)
    }

    pub(super) async fn connect(&mut self) -> std::result::Result<(), Failure> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let sender = match &self.target.tls {
            None => handshake(stream).await?,
            Some((config, host)) => {
                let tls = crate::tls::connect(config, host, stream)
                    .await
                    .map_err(|_| Failure::Connect)?;
                handshake(tls).await?
            }
        };
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one request and drains the answer. Returns its status.
    pub(super) async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> std::result::Result<StatusCode, Failure> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = None;
            if let Err(f) = self.connect().await {
                tokio::time::sleep(RECONNECT_BACKOFF).await;
                return Err(f);
            }
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err(Failure::Connect);
        };
        let uri = Uri::try_from(path).map_err(|_| Failure::Broken)?;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, self.target.host.clone());
        if let Some(auth) = &self.target.authorization {
            req.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        let exchange = async {
            sender.ready().await.map_err(|_| Failure::Broken)?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|_| Failure::Broken)?;
            let status = resp.status();
            // Drained frame by frame: the value is not needed, only the connection's reuse.
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame.map_err(|_| Failure::Broken)?;
            }
            Ok(status)
        };
        let res = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(res) => res,
            Err(_) => Err(Failure::Timeout),
        };
        if res.is_err() {
            // The connection's state is unknown (an answer may still come): start afresh.
            self.sender = None;
        }
        res
    }
}

/// `/kv/key00000042` plus `query`, into `buf`.
pub(super) fn key_path(buf: &mut String, key: u64, query: &str) {
    buf.clear();
    let _ = write!(buf, "/kv/key{key:08}{query}");
}
