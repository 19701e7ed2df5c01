//! [`ClientBuilder`]: a client's settings, and the node URLs it is given.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{
    CONNECT_TIMEOUT, Client, DEFAULT_READ_RETRIES, DEFAULT_TIMEOUT, Inner, NodeSlot,
    POOL_IDLE_TIMEOUT, RouteState,
};
use crate::error::{Error, Result};

/// Builds a [`Client`] with non-default settings.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    nodes: Vec<String>,
    timeout: Duration,
    connect_timeout: Duration,
    read_retries: usize,
    token: Option<String>,
    ca_cert: Option<std::path::PathBuf>,
    routing: bool,
}

impl ClientBuilder {
    /// Default settings for these node URLs.
    pub(super) fn new(nodes: Vec<String>) -> ClientBuilder {
        ClientBuilder {
            nodes,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            read_retries: DEFAULT_READ_RETRIES,
            token: None,
            ca_cert: None,
            routing: true,
        }
    }

    /// Time limit of one attempt of one request ([`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time limit of connecting to one node ([`CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Extra attempts of a GET after a 503 or a broken connection ([`DEFAULT_READ_RETRIES`]).
    pub fn read_retries(mut self, retries: usize) -> Self {
        self.read_retries = retries;
        self
    }

    /// An API token, sent as `Authorization: Bearer TOKEN` on every request (nodes started
    /// with `--api-tokens`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The certificates (PEM) that `https://` nodes' certificates must chain to; a node's
    /// self-signed certificate may be given directly.
    pub fn ca_cert(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_cert = Some(path.into());
        self
    }

    /// Key-aware routing ([`crate::client::ring`], on by default): learn the ring and send each
    /// key's requests straight to a home replica, which saves a write the hop to its
    /// coordinator. Off, requests go to the given nodes in turn.
    pub fn routing(mut self, on: bool) -> Self {
        self.routing = on;
        self
    }

    /// Checks the node URLs and builds the client. No connection is opened yet.
    pub fn build(self) -> Result<Client> {
        if self.nodes.is_empty() {
            return Err(Error::invalid("a client needs at least one node URL"));
        }
        let nodes = self
            .nodes
            .iter()
            .map(|url| {
                Ok(NodeSlot {
                    base: normalize_url(url)?,
                    down_until_ms: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let authorization = self.token.as_deref().map(bearer).transpose()?;
        if self.ca_cert.is_none() && nodes.iter().any(|n| n.base.starts_with("https://")) {
            return Err(Error::invalid(
                "https:// nodes need the CA certificate that signed theirs: --ca-cert PEM",
            ));
        }
        let tls = crate::tls::client_config(self.ca_cert.as_deref())?;
        // Routed requests go to ring nodes by their advertised addresses, with the scheme of
        // the nodes given.
        let nodes_https = nodes.iter().any(|n| n.base.starts_with("https://"));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Client {
            inner: Arc::new(Inner {
                nodes,
                http,
                next: AtomicUsize::new(0),
                epoch: Instant::now(),
                timeout: self.timeout,
                connect_timeout: self.connect_timeout,
                read_retries: self.read_retries,
                authorization,
                tls,
                scheme: if nodes_https { "https" } else { "http" },
                routes: RouteState {
                    on: self.routing,
                    stale: std::sync::atomic::AtomicBool::new(true),
                    ..RouteState::default()
                },
            }),
        })
    }
}

/// The `Authorization` header of an API token: `Bearer TOKEN`, marked sensitive.
pub fn bearer(token: &str) -> Result<hyper::header::HeaderValue> {
    let mut v = hyper::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .map_err(|_| Error::invalid("an API token must be printable ASCII"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Turns `host:port`, `http://host:port` or `http://host:port/` into `http://host:port`.
pub(crate) fn normalize_url(url: &str) -> Result<String> {
    let url = url.trim();
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let uri: hyper::Uri = full
        .parse()
        .map_err(|e| Error::invalid(format!("bad node URL {url:?}: {e}")))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        _ => {
            return Err(Error::invalid(format!(
                "bad node URL {url:?}: use http:// or https://"
            )));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(Error::invalid(format!("bad node URL {url:?}: no host")));
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(Error::invalid(format!(
            "bad node URL {url:?}: give only scheme, host and port"
        )));
    }
    Ok(format!("{scheme}://{authority}"))
}
