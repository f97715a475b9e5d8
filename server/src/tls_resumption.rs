//! The WebTransport endpoint's TLS configuration, tuned for handshake cost (issue 14):
//!
//! - **Cipher suite**: the server picks TLS13_AES_128_GCM_SHA256 whatever the client's order.
//!   rustls clients (ours, the bench generator) prefer AES-256-GCM-SHA384, whose HKDF runs on
//!   SHA-384 (SHA-512 inside): measurably more handshake CPU for no gain here. Browsers already
//!   prefer AES-128.
//! - **Session resumption**: stateless TLS 1.3 session tickets (encrypted by a key that rotates
//!   every 6 hours, the previous one still accepted, so a ticket lives up to 12 hours; nothing
//!   kept per client on the server), so a client that reconnects skips the
//!   certificate signature and its verification. The Rust client keeps one QUIC endpoint (and so
//!   one rustls resumption store) for its lifetime; browsers keep their own.
//! - **No 0-RTT**: `max_early_data_size` stays 0, so a peer can never have data (the CONNECT
//!   with its token, or commands) accepted before the handshake completes; early data would be
//!   replayable. See PROTOCOL.md §9.4.
//!
//! The certificate comes from the [`SharedCert`] the HTTPS listener shares: a reload swaps it
//! there, and this configuration (its ticket key included) stays.

use std::sync::Arc;

use wtransport::tls::{rustls, WEBTRANSPORT_ALPN};

use crate::tls::{SharedCert, TlsError};

/// Counter: TLS handshakes that resumed a session from a ticket this server issued.
pub const TLS_RESUMED: &str = "quiver_tls_resumed_total";

/// Registers [`TLS_RESUMED`] at zero with its description (at recorder start).
pub fn register_metrics() {
    metrics::counter!(TLS_RESUMED).absolute(0);
    metrics::describe_counter!(
        TLS_RESUMED,
        "WebTransport TLS handshakes resumed from a session ticket this server issued (no \
         certificate signature); compare with quiver_sessions_opened_total"
    );
}

/// Tickets sent after a full handshake. One is enough for a client with one session (each
/// resumed handshake brings a fresh one); rustls' default of two costs a second encryption
/// and packet for every connection.
const TICKETS_PER_HANDSHAKE: usize = 1;

/// The rustls server configuration for the WebTransport endpoint: TLS 1.3 only, ring, ALPN
/// `h3` (as wtransport's default), AES-128-GCM-SHA256 chosen first, session tickets when
/// `tickets` is set, and the certificate `certs` holds at each handshake.
pub fn webtransport_tls(
    certs: Arc<SharedCert>,
    tickets: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(provider_aes128_first());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Pem(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![WEBTRANSPORT_ALPN.to_vec()];
    // Our order, not the client's: see the module comment.
    config.ignore_client_order = true;
    if tickets {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::Pem(format!("session ticket key: {e}")))?;
        config.ticketer = Arc::new(CountingTicketer(ticketer));
        config.send_tls13_tickets = TICKETS_PER_HANDSHAKE;
    } else {
        config.send_tls13_tickets = 0;
    }
    // Stateless tickets only: no per-client session cache on the server.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// ring's provider with the TLS 1.3 suites in the order the server wants them.
fn provider_aes128_first() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    provider
}

/// Counts tickets that decrypt, i.e. resumptions offered with a ticket this server issued
/// (rustls then checks the PSK binder; a bad binder fails the handshake).
#[derive(Debug)]
struct CountingTicketer(Arc<dyn rustls::server::ProducesTickets>);

impl rustls::server::ProducesTickets for CountingTicketer {
    fn enabled(&self) -> bool {
        self.0.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.0.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.0.decrypt(cipher);
        if plain.is_some() {
            metrics::counter!(TLS_RESUMED).increment(1);
        }
        plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    fn identity() -> Arc<SharedCert> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let identity = wtransport::Identity::new(
            wtransport::tls::CertificateChain::single(
                wtransport::tls::Certificate::from_der(cert.der().to_vec()).unwrap(),
            ),
            wtransport::tls::PrivateKey::from_der_pkcs8(key.serialize_der()),
        );
        SharedCert::new(crate::tls::certified_key(&identity).unwrap())
    }

    /// A client that prefers AES-256 (rustls' default order) gets AES-128.
    #[test]
    fn server_picks_aes128_over_client_preference() {
        let server = Arc::new(webtransport_tls(identity(), true).unwrap());
        let client = Arc::new(client_config());
        let (c, s) = handshake(&client, &server);
        assert_eq!(
            s.negotiated_cipher_suite().unwrap().suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(
            c.negotiated_cipher_suite().unwrap().suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }

    /// The second handshake from the same client configuration resumes; without tickets it
    /// does not.
    #[test]
    fn second_handshake_resumes_only_with_tickets() {
        for tickets in [true, false] {
            let server = Arc::new(webtransport_tls(identity(), tickets).unwrap());
            let client = Arc::new(client_config());
            let (_, first) = handshake(&client, &server);
            assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
            let (_, second) = handshake(&client, &server);
            let expected = if tickets {
                rustls::HandshakeKind::Resumed
            } else {
                rustls::HandshakeKind::Full
            };
            assert_eq!(
                second.handshake_kind(),
                Some(expected),
                "tickets: {tickets}"
            );
        }
    }

    /// A certificate swapped in the shared resolver is what the next handshake gets, with the
    /// configuration (and its ticket key) unchanged.
    #[test]
    fn swapped_certificate_reaches_new_handshakes() {
        let certs = identity();
        let first = certs.current();
        let server = Arc::new(webtransport_tls(certs.clone(), true).unwrap());
        let leaf = |c: &rustls::ClientConnection| c.peer_certificates().unwrap()[0].to_vec();
        let (c, _) = handshake(&Arc::new(client_config()), &server);
        assert_eq!(leaf(&c), first.cert[0].to_vec());
        let next = identity().current();
        certs.set(next.clone());
        let (c, _) = handshake(&Arc::new(client_config()), &server);
        assert_eq!(leaf(&c), next.cert[0].to_vec());
        assert_ne!(leaf(&c), first.cert[0].to_vec());
    }

    /// No early data is ever accepted (0-RTT would be replayable).
    #[test]
    fn no_early_data() {
        let server = webtransport_tls(identity(), true).unwrap();
        assert_eq!(server.max_early_data_size, 0);
    }

    fn client_config() -> rustls::ClientConfig {
        let mut c = wtransport::tls::client::build_default_tls_config(
            Arc::new(rustls::RootCertStore::empty()),
            Some(Arc::new(
                wtransport::tls::client::NoServerVerification::new(),
            )),
        );
        c.alpn_protocols = vec![WEBTRANSPORT_ALPN.to_vec()];
        c
    }

    /// A full TLS 1.3 handshake in memory, then the server's post-handshake tickets delivered.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
    ) -> (rustls::ClientConnection, rustls::ServerConnection) {
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(client.clone(), name).unwrap();
        let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
        for _ in 0..10 {
            pump(&mut c, &mut s);
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        // Tickets go out after the handshake; the client stores them when it reads them.
        pump(&mut c, &mut s);
        assert!(!c.is_handshaking() && !s.is_handshaking());
        (c, s)
    }

    fn pump(c: &mut rustls::ClientConnection, s: &mut rustls::ServerConnection) {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
}
