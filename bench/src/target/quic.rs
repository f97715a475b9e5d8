//! QUIC client plumbing shared by the Quiver and bare-wtransport targets: a pool of client
//! endpoints (sockets) so thousands of sessions do not all go through one UDP socket, and a
//! length-prefixed frame reader.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use quiver_proto::FrameDecoder;
use wtransport::endpoint::endpoint_side::Client;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream};

/// Sessions per client endpoint (UDP socket).
const SESSIONS_PER_ENDPOINT: usize = 100;

/// Client endpoints, created on demand, handed out round-robin.
pub struct ClientPool {
    endpoints: Vec<Endpoint<Client>>,
    next: AtomicUsize,
}

impl ClientPool {
    /// Enough endpoints for `sessions` sessions, pinning the server certificate by `hash` (or
    /// none for targets that are not QUIC).
    pub fn new(hash: Option<[u8; 32]>, sessions: usize) -> Result<Self> {
        Self::bound(hash, sessions, std::net::Ipv4Addr::UNSPECIFIED)
    }

    /// Like [`ClientPool::new`], with sockets bound to `ip` (e.g. 127.0.0.2: another client
    /// address on loopback, for the server's per-address limits).
    pub fn bound(hash: Option<[u8; 32]>, sessions: usize, ip: std::net::Ipv4Addr) -> Result<Self> {
        Self::build(hash, sessions, ip, true)
    }

    /// Like [`ClientPool::new`]; with `resume` false no endpoint keeps TLS sessions, so every
    /// handshake is a full one (what a first visit costs) even when the server issues tickets.
    pub fn with_resumption(hash: Option<[u8; 32]>, sessions: usize, resume: bool) -> Result<Self> {
        Self::build(hash, sessions, std::net::Ipv4Addr::UNSPECIFIED, resume)
    }

    fn build(
        hash: Option<[u8; 32]>,
        sessions: usize,
        ip: std::net::Ipv4Addr,
        resume: bool,
    ) -> Result<Self> {
        let mut endpoints = Vec::new();
        if let Some(hash) = hash {
            let count = sessions.div_ceil(SESSIONS_PER_ENDPOINT).max(1);
            for _ in 0..count {
                endpoints.push(endpoint(hash, ip, resume)?);
            }
        }
        Ok(Self {
            endpoints,
            next: AtomicUsize::new(0),
        })
    }

    pub async fn connect(&self, url: &str) -> Result<Connection> {
        anyhow::ensure!(!self.endpoints.is_empty(), "no QUIC endpoints in the pool");
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        let conn = tokio::time::timeout(Duration::from_secs(10), self.endpoints[i].connect(url))
            .await
            .context("connect timed out")??;
        Ok(conn)
    }

    /// Closes every session and waits (bounded) until the server has been told. Without this a
    /// generator that exits leaves its sessions open on the server until the idle timeout, and
    /// the next measurement on that server would pay for fanning out to the dead ones.
    pub async fn close(&self) {
        for endpoint in &self.endpoints {
            endpoint.close(wtransport::VarInt::from_u32(0), b"benchmark done");
        }
        let idle = futures::future::join_all(self.endpoints.iter().map(|e| e.wait_idle()));
        let _ = tokio::time::timeout(Duration::from_secs(3), idle).await;
    }
}

/// Socket buffer size asked for (Linux caps it at net.core.rmem_max / wmem_max).
const SOCKET_BUFFER: usize = 4 << 20;

/// wtransport's own client TLS set-up pinning the server certificate by its SHA-256.
pub(super) fn pinned_tls(hash: [u8; 32]) -> wtransport::tls::rustls::ClientConfig {
    wtransport::tls::client::build_default_tls_config(
        Arc::new(wtransport::tls::rustls::RootCertStore::empty()),
        Some(Arc::new(
            wtransport::tls::client::ServerHashVerification::new([
                wtransport::tls::Sha256Digest::new(hash),
            ]),
        )),
    )
}

fn endpoint(hash: [u8; 32], ip: std::net::Ipv4Addr, resume: bool) -> Result<Endpoint<Client>> {
    // With the default ~200 KB receive buffer, a burst of fan-out traffic to 100 sessions
    // overflows the socket and the kernel drops datagrams (RcvbufErrors in /proc/net/snmp): the
    // generator would then measure its own loss recovery. Ask for a large buffer.
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&std::net::SocketAddr::from((ip, 0)).into())?;
    // rustls' resumption store (one per endpoint: up to 256 sessions) kept or turned off.
    let mut tls = pinned_tls(hash);
    if !resume {
        tls.resumption = wtransport::tls::rustls::client::Resumption::disabled();
    }
    let mut config = ClientConfig::builder()
        .with_bind_socket(socket.into())
        .with_custom_tls(tls)
        .build();
    let mut transport = wtransport::quinn::TransportConfig::default();
    // A subscriber here has at most a couple of subscription streams.
    transport.max_concurrent_uni_streams(16u32.into());
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config
        .quic_config_mut()
        .transport_config(Arc::new(transport));
    Ok(Endpoint::client(config)?)
}

/// Reads length-prefixed frames from one stream.
pub struct FrameReader {
    stream: RecvStream,
    decoder: FrameDecoder,
}

/// Most bytes taken from quinn at once.
const READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    pub fn new(stream: RecvStream) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(quiver_proto::DEFAULT_MAX_FRAME),
        }
    }

    /// The next frame body; `None` when the stream ended cleanly.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            // quinn's own buffers, in order, with no copy into one of ours first (and no 64 KiB
            // buffer per stream: thousands of them only evict each other from the cache).
            let chunk = self
                .stream
                .quic_stream_mut()
                .read_chunk(READ_CHUNK, true)
                .await?;
            match chunk {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}
