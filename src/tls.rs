//! TLS on the HTTP port (`--tls-cert PEM --tls-key PEM`) and in the client (`https://` URLs,
//! `--ca-cert PEM`), with rustls and its `ring` provider: no OpenSSL, so the static binary
//! stays static.
//!
//! With TLS on, the HTTP port speaks only HTTPS (WebSockets too: `wss://`). The server offers
//! TLS 1.3 and 1.2 with rustls's default cipher suites and ALPN `http/1.1`. A client trusts
//! the certificates of the `--ca-cert` file (a self-signed node certificate can be its own
//! CA); without one it trusts nothing, so an `https://` URL needs `--ca-cert`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, Result};

/// How long a client has to complete the TLS handshake after it connected: a client that
/// connects and stalls must not hold a connection slot longer than one that never sends
/// its request headers.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: an acceptor for the node's certificate chain and key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::invalid(format!("--tls-cert {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::invalid(format!(
            "--tls-cert {}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::invalid(format!("--tls-key {}: {e}", key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::invalid(format!("--tls-cert/--tls-key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The client side: a configuration trusting the certificates in `ca` (PEM), or nothing.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::invalid(format!("--ca-cert {}: {e}", ca.display())))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(Error::invalid(format!(
                "--ca-cert {}: no usable certificate in the file",
                ca.display()
            )));
        }
    }
    // No ALPN here: hyper-rustls sets its own (http/1.1), and raw connections (watches,
    // the load generator) need none, HTTP/1.1 being the server's only protocol.
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens TLS over `stream` to `host` (the name the certificate must carry).
pub async fn connect<S>(
    config: &Arc<rustls::ClientConfig>,
    host: &str,
    stream: S,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
}

/// The host part of an authority (`host:port`, `[v6]:port`), for SNI and name checks.
pub fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_authorities() {
        assert_eq!(host_of("localhost:8001"), "localhost");
        assert_eq!(host_of("127.0.0.1:8001"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8001"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }
}
