//! The TLS side of the TCP listener: with a real certificate, HTTPS and `wss://` (the WebSocket
//! and SSE fallbacks, health, the API) are served with the same certificate as HTTP/3 (one
//! [`SharedCert`], so a reload changes both), by default on the same port number over TCP. No
//! response advertises HTTP/3 (`Alt-Svc`): the
//! UDP port serves WebTransport sessions only, and a browser told of it would send its ordinary
//! requests (SSE, the API) there, to be refused. Development mode keeps plain HTTP on 127.0.0.1
//! (see `http.rs`). Its connections are served, bounded and counted by `crate::tcp`.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::tls::SharedCert;

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] tokio_rustls::rustls::Error),
}

/// A rustls configuration for HTTP/1.1 over TLS (1.2 or 1.3) presenting the certificate `certs`
/// holds at each handshake: the one the WebTransport endpoint presents, reloaded with it.
pub fn acceptor(certs: Arc<SharedCert>) -> Result<TlsAcceptor, HttpsError> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
