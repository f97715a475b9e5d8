//! The TLS side of the TCP listener: with a real certificate, HTTPS and `wss://` (the WebSocket
//! and SSE fallbacks, health, metrics, the API) are served with the same certificate as HTTP/3,
//! by default on the same port number over TCP, and every response advertises HTTP/3 with
//! `Alt-Svc`. Development mode keeps plain HTTP on 127.0.0.1 (see `http.rs`).
//!
//! Each connection's TLS handshake runs in its own task under `timeouts.handshake`, so a client
//! that never finishes one holds nothing but its socket until then, and never the accept loop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use crate::server::Shared;

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] tokio_rustls::rustls::Error),
}

/// A rustls configuration for HTTP/1.1 over TLS with the server's identity.
pub fn acceptor(identity: &wtransport::Identity) -> Result<TlsAcceptor, HttpsError> {
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let chain: Vec<CertificateDer<'static>> = identity
        .certificate_chain()
        .as_slice()
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        identity.private_key().secret_der().to_vec(),
    ));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` over TLS until shutdown (and the drain after it).
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, tls: TlsAcceptor, app: Router) {
    let addr = listener.local_addr().ok();
    info!(https = ?addr, "https listening");
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = crate::http::drained(&shared) => break,
        };
        // As on the plain listener: no Nagle delay on small frames.
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let app = app.clone();
        let deadline = shared.config.timeouts.handshake;
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(deadline, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%remote, "TLS handshake timed out"),
            };
            let service = TowerToHyperService::new(app.layer(axum::Extension(ConnectInfo(remote))));
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%remote, error = %e, "https connection ended");
            }
        });
    }
    let open = shared.sessions.load(Ordering::Relaxed);
    debug!(open, "https listener closed");
}

/// The `Alt-Svc` value that points browsers at HTTP/3 on the WebTransport port.
pub fn alt_svc(webtransport: SocketAddr) -> String {
    format!("h3=\":{}\"; ma=86400", webtransport.port())
}
