//! The transport's own ceiling: a fan-out server written directly on wtransport, with none of
//! Quiver's layers (no auth, no protocol, no rooms, no per-subscriber queues or batching).
//!
//! A session opens a bidirectional stream and writes one role byte. `S` (subscriber): the server
//! opens one unidirectional stream to it and writes every message on it, one `write_all` per
//! message. `P` (publisher): the session then writes length-prefixed messages (4-byte big-endian
//! length, body) on that stream; the server forwards each whole frame, as received, to every
//! subscriber through a broadcast channel (one allocation per message, shared by all).
//!
//! Prints `BARE_READY {"webtransport":"ADDR","cert_sha256":"HEX"}` once listening.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use tokio::sync::broadcast;
use wtransport::endpoint::IncomingSession;
use wtransport::quinn::{TransportConfig, VarInt};
use wtransport::tls::{Certificate, CertificateChain, PrivateKey};
use wtransport::{Endpoint, Identity, RecvStream, ServerConfig};

/// Messages a subscriber may lag behind before it skips ahead (broadcast semantics).
const CHANNEL: usize = 16 * 1024;
/// Largest message accepted from a publisher.
const MAX_MESSAGE: usize = 64 * 1024;

#[tokio::main]
async fn main() -> Result<()> {
    let listen: SocketAddr = std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .context("--listen ADDR")?;
    let identity = identity()?;
    let hash = identity.certificate_chain().as_slice()[0].hash();
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(4))
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .max_idle_timeout(Some(VarInt::from_u32(30_000).into()));
    let config = ServerConfig::builder()
        .with_bind_address(listen)
        .with_custom_transport(identity, transport)
        .build();
    let endpoint = Endpoint::server(config)?;
    let addr = endpoint.local_addr()?;
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    println!("BARE_READY {{\"webtransport\":\"{addr}\",\"cert_sha256\":\"{hex}\"}}");

    let (tx, _) = broadcast::channel::<Bytes>(CHANNEL);
    loop {
        let incoming = endpoint.accept().await;
        let tx = tx.clone();
        tokio::spawn(async move {
            // Sessions end when clients go away; that is not an error worth reporting.
            let _ = session(incoming, tx).await;
        });
    }
}

/// A self-signed ECDSA P-256 certificate valid for less than 14 days: what clients (browsers
/// included) accept when pinning it by hash.
fn identity() -> Result<Identity> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(13);
    let cert = params.self_signed(&key)?;
    let chain = CertificateChain::single(Certificate::from_der(cert.der().to_vec())?);
    Ok(Identity::new(
        chain,
        PrivateKey::from_der_pkcs8(key.serialize_der()),
    ))
}

async fn session(incoming: IncomingSession, tx: broadcast::Sender<Bytes>) -> Result<()> {
    let request = incoming.await?;
    let conn = request.accept().await?;
    let (_send, mut recv) = conn.accept_bi().await?;
    let mut role = [0u8; 1];
    recv.read_exact(&mut role).await?;
    match role[0] {
        b'S' => {
            let mut rx = tx.subscribe();
            let mut stream = conn.open_uni().await?.await?;
            loop {
                match rx.recv().await {
                    Ok(frame) => stream.write_all(&frame).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
        b'P' => publish(recv, tx).await,
        other => bail!("unknown role {other}"),
    }
}

/// Cuts the publisher's stream into frames and broadcasts each one, prefix included.
async fn publish(mut recv: RecvStream, tx: broadcast::Sender<Bytes>) -> Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > MAX_MESSAGE {
                bail!("message of {len} bytes");
            }
            if buf.len() < 4 + len {
                break;
            }
            let frame = buf.split_to(4 + len).freeze();
            // No subscribers is fine.
            let _ = tx.send(frame);
        }
        match recv.read(&mut chunk).await? {
            Some(n) => buf.extend_from_slice(&chunk[..n]),
            None => return Ok(()),
        }
    }
}
