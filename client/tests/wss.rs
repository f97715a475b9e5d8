//! `wss://` against a small TLS WebSocket server in this test (the Quiver server serves plain
//! `ws://` in development mode, so the end-to-end suite cannot cover TLS on TCP): the client's
//! trust settings (a pinned certificate hash) apply to WebSocket too, the token travels in the
//! `Authorization` header, and every client message is exactly one frame (PROTOCOL.md 9.2).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use quiver_client::{token_fixed, Client, ClientConfig, ClientError, Limits, Transport, Trust};
use quiver_proto::{
    decode_command, encode_event, Command, Event, FrameDecoder, ServerFrame, DEFAULT_MAX_FRAME,
};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use wtransport::tls::rustls;

const WAIT: Duration = Duration::from_secs(10);

/// What the test server saw of one connection.
#[derive(Debug)]
struct Seen {
    authorization: Option<String>,
    commands: Vec<Command>,
}

/// A self-signed ECDSA P-256 certificate valid for a week (hash pinning accepts at most 14
/// days): its DER, its key's PKCS#8 DER, and its SHA-256.
fn certificate() -> anyhow::Result<(Vec<u8>, Vec<u8>, [u8; 32])> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(7);
    let cert = params.self_signed(&key)?;
    let der = cert.der().to_vec();
    let hash = Sha256::digest(&der).into();
    Ok((der, key.serialize_der(), hash))
}

/// A TLS WebSocket server that answers `Hello` with `Welcome` and `Ping` with `Pong`, and checks
/// that every binary message holds exactly one frame.
async fn serve(
    cert: Vec<u8>,
    key: Vec<u8>,
) -> anyhow::Result<(u16, mpsc::UnboundedReceiver<Seen>)> {
    let certs = vec![rustls::pki_types::CertificateDer::from(cert)];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut authorization = None;
                // The callback's error type is tungstenite's, not ours to shrink.
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, resp: Response| {
                    authorization = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await else {
                    return;
                };
                let mut commands = Vec::new();
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Binary(data) = msg else {
                        continue;
                    };
                    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
                    dec.push(&data);
                    let body = dec.next_frame().ok().flatten().expect("a whole frame");
                    assert_eq!(dec.buffered(), 0, "more than one frame in a message");
                    let frame = decode_command(&body).expect("a known command");
                    let reply = match &frame.command {
                        Command::Hello { .. } => Event::Welcome {
                            version: 1,
                            session: "s1".into(),
                            user: "u".into(),
                            tenant: "t".into(),
                            expires_at: None,
                            limits: Limits {
                                max_frame: 65_536,
                                max_payload: 60_000,
                                max_subscriptions: 16,
                                commands_per_second: 100,
                            },
                        },
                        Command::Ping => Event::Pong,
                        _ => Event::Error {
                            code: 101,
                            message: "not in this test".into(),
                        },
                    };
                    commands.push(frame.command);
                    let out = encode_event(&ServerFrame {
                        id: frame.id,
                        event: reply,
                    });
                    if ws.send(Message::Binary(out)).await.is_err() {
                        break;
                    }
                }
                let _ = tx.send(Seen {
                    authorization,
                    commands,
                });
            });
        }
    });
    Ok((port, rx))
}

fn config(port: u16, hash: [u8; 32]) -> ClientConfig {
    let mut config = ClientConfig::new("https://127.0.0.1:9/v1", token_fixed("the.jwt.token"))
        .with_ws_url(format!("wss://localhost:{port}"))
        .with_transport(Transport::WebSocket)
        .with_trust(Trust::CertHashes(vec![hash]));
    config.connect_timeout = Duration::from_secs(5);
    config
}

#[tokio::test]
async fn wss_with_a_pinned_certificate() -> anyhow::Result<()> {
    let (cert, key, hash) = certificate()?;
    let (port, mut seen) = serve(cert, key).await?;

    let client = tokio::time::timeout(WAIT, Client::connect(config(port, hash)))
        .await
        .map_err(|_| anyhow!("connect still running"))??;
    assert_eq!(client.transport(), Some(Transport::WebSocket));
    assert_eq!(client.welcome().map(|w| w.session), Some("s1".into()));
    client.ping().await?;
    client.ping().await?;
    client.close().await;
    let seen = tokio::time::timeout(WAIT, seen.recv())
        .await?
        .context("the server saw no connection")?;
    assert_eq!(seen.authorization.as_deref(), Some("Bearer the.jwt.token"));
    match seen.commands.as_slice() {
        [Command::Hello { version: 1, .. }, rest @ ..]
            if rest.len() >= 2 && rest.iter().all(|c| matches!(c, Command::Ping)) => {}
        other => bail!("unexpected commands {other:?}"),
    }

    // Another certificate's hash: the TLS handshake fails, nothing reaches the server.
    let err = Client::connect(config(port, [7; 32]))
        .await
        .err()
        .ok_or_else(|| anyhow!("connected with the wrong certificate hash"))?;
    assert!(matches!(err, ClientError::Connect(_)), "{err}");
    Ok(())
}
