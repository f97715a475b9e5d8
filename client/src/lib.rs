//! Native Rust client for Quiver: realtime pub/sub over WebTransport (HTTP/3, QUIC), with a
//! WebSocket fallback.
//!
//! A [`Client`] keeps one session to a Quiver server and reconnects by itself
//! (exponential backoff with full jitter, rotating through the configured URLs, asking the
//! [`TokenProvider`] for a fresh token each time). After a reconnect it subscribes to every room
//! again, resuming from the last [`Position`] it delivered ([`SubEvent::Resubscribed`] says
//! whether the gap was recovered; a recovery that the replay itself contradicts is reported
//! [`Recovery::Failed`] too, and publications whose positions do not move forward are
//! dropped), then sends the publishes made while disconnected. Tokens are
//! refreshed in-band before they expire. The wire protocol is described in `PROTOCOL.md`; the
//! frames come from [`quiver_proto`].
//!
//! ```no_run
//! use futures::StreamExt;
//! use quiver_client::{token_fixed, Client, ClientConfig, SubEvent, Trust};
//!
//! # async fn run() -> Result<(), quiver_client::ClientError> {
//! let mut config = ClientConfig::new("https://localhost:4433/v1", token_fixed("JWT"));
//! // A development server's self-signed certificate, pinned by the hash `quiver serve` prints:
//! config.trust = Trust::CertHashes(vec![quiver_client::parse_cert_hash("ab12...")?]);
//! let client = Client::connect(config).await?;
//!
//! let mut sub = client.subscribe("chat.lobby").await?;
//! client.publish("chat.lobby", "hello").await?;
//! while let Some(ev) = sub.next().await {
//!     match ev {
//!         SubEvent::Publication { payload, .. } => println!("{}", String::from_utf8_lossy(&payload)),
//!         SubEvent::Resubscribed { recovery } => println!("reconnected: {recovery:?}"),
//!         SubEvent::Joined { member } => println!("{} joined", member.user),
//!         SubEvent::Left { member } => println!("{} left", member.user),
//!         SubEvent::Ended { code, reason } => println!("ended: {code} {reason}"),
//!     }
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! A runnable version is `examples/chat.rs`:
//!
//! ```text
//! cargo run -p quiver-client --example chat -- \
//!     --url https://127.0.0.1:4433/v1 --cert-hash HEX --token JWT --room chat.lobby
//! ```
//!
//! Type lines to publish them; publications in the room are printed.
//!
//! # Transports
//!
//! [`ClientConfig::transport`] picks one (PROTOCOL.md section 9):
//!
//! - [`Transport::WebTransport`]: HTTP/3 over QUIC (UDP) at [`ClientConfig::urls`], one stream
//!   per room, so a lost packet in one room never delays another.
//! - [`Transport::WebSocket`]: TCP at [`ClientConfig::ws_urls`] (the server's HTTP port, path
//!   `/v1/ws`; `ws://` in development, `wss://` with the same trust settings), every room on the
//!   one socket. For networks that block UDP.
//! - [`Transport::Auto`] (the default): WebTransport, falling back to WebSocket when the
//!   handshake fails or is not done within [`ClientConfig::webtransport_timeout`] (2.5 s;
//!   blocked UDP is silent, not refused). A WebTransport failure followed by a working WebSocket
//!   is remembered for [`ClientConfig::webtransport_retry`] (5 minutes), so reconnects within it
//!   do not wait again; the first after it tries WebTransport again. Without `ws_urls` there is nothing to
//!   fall back to. A certificate WebTransport does not accept is not a reason to fall back:
//!   [`ClientError::Certificate`] (a stale pin would otherwise move the application to a
//!   connection that checks nothing, `ws://`).
//!
//! ```no_run
//! # use quiver_client::{token_fixed, ClientConfig, Transport};
//! let config = ClientConfig::new("https://localhost:4433/v1", token_fixed("JWT"))
//!     .with_ws_url("ws://127.0.0.1:8080/v1/ws")
//!     .with_transport(Transport::Auto);
//! ```
//!
//! [`Client::transport`] says which one the session runs on. Everything else (resume, refresh,
//! presence, pacing) works the same on both. A token refused over WebSocket is visible as such
//! ([`ClientError::TokenRefused`], [`ClientError::is_auth_failure`]): 3007 `token_invalid` stops
//! the reconnects (the client closes, [`Client::close_reason`] holds the code), 3002
//! `token_expired` reconnects with a fresh token from the [`TokenProvider`] (given the very
//! token refused as expired again, as [`token_fixed`] does, the client closes with 3002:
//! nothing fresh will come). WebTransport only
//! sees a refused CONNECT ([`ClientError::Refused`]), without the reason.
//!
//! # Noticing a dead server
//!
//! A server that crashes or hangs says nothing; the client notices by itself
//! ([`ClientConfig::heartbeat`], on by default): after 1 s without anything from the server it
//! sends a `Ping`, and if nothing at all arrives within 1.5 s of it, the connection is dropped
//! ([`ConnectionState::Disconnected`], reason "server not answering") and the client reconnects
//! elsewhere. So a dead server is noticed within 2.5 s of the last thing it sent. The
//! transport's own answers count as signs of life (QUIC acknowledgements; a WebSocket pong, as
//! a WebSocket ping goes with each heartbeat), so a live server whose session is busy with a slow
//! command is not taken for dead.
//!
//! Cost per idle session (one where nothing else flows): one `Ping` and one `Pong` per second
//! (on WebSocket also a WebSocket ping and pong), each well under 100 bytes. Measured on loopback
//! over 20 idle seconds, both directions together and everything included (QUIC keep-alives and
//! ACKs, TCP ACKs): 3 UDP datagrams per second on WebTransport, 5 TCP segments per second on
//! WebSocket. A busy session costs one `Ping` every half [`Heartbeat::unanswered`] (7.5 s),
//! so a session that stops answering while its rooms still deliver is noticed too; any other
//! traffic from the server counts as a sign of life. Each `Ping` is one command against the session's
//! rate limit. Heartbeat pings skip the client's command pacing queue, so a long paced burst
//! (a reconnect flushing buffered publishes) cannot delay them into a false alarm. This is
//! independent of the server's own idle timeout for dead clients (30 s).
//!
//! # Delivery and flow control
//!
//! Each [`Subscription`] has a queue bounded in events and in bytes
//! ([`ClientConfig::subscription_buffer`], 1,024; [`ClientConfig::subscription_buffer_bytes`],
//! 8 MiB; every event weighs what it carries, presence members included, plus 128 bytes). If
//! the application does not read it, on WebTransport the client stops reading that room's
//! stream and QUIC flow control pushes back to the server, which ends the subscription with
//! `slow_consumer` ([`SubEvent::Ended`]) rather than buffering without bound. On WebSocket,
//! where rooms share one TCP connection, the client holds at most 8 MiB more of the room's
//! events (weighed the same way: a replay of thousands of small publications fits) and then
//! ends the subscription with the same `slow_consumer` code itself (and unsubscribes on the
//! server), so one unread room never stalls the others. [`Client::publish`] is at-most-once;
//! [`Client::publish_ack`] reports the server's answer.
//!
//! # Calls
//!
//! [`Client::call`] sends a command to the application's backend and returns its answer
//! (PROTOCOL.md section 11); [`Client::call_with`] takes a deadline and an idempotency key
//! ([`CallOptions`]). Unlike publishes, calls are never buffered: while reconnecting they fail
//! with [`ClientError::NotConnected`], so a command cannot run late or twice behind the
//! application's back.

mod backoff;
mod client;
mod config;
mod connection;
mod continuity;
mod error;
mod heartbeat;
mod latest;
mod pacer;
mod subscription;
mod transport;
mod writer;

pub use backoff::Backoff;
pub use client::{CallOptions, Client, ConnectionState, WelcomeInfo};
pub use config::{
    connect_url, parse_cert_hash, token_fixed, token_fn, ws_url, ClientConfig, Heartbeat,
    TokenProvider, Transport, Trust, WS_PATH,
};
pub use error::ClientError;
pub use latest::DeliveryMode;
pub use subscription::{LatestStats, SubEvent, Subscription};

/// The README's example, compiled with the crate's doctests so it stays true (outside audit 61,
/// M2: it compiled nowhere and stopped at the first event that was not a publication).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

pub use bytes::Bytes;
pub use quiver_proto::{CloseCode, ErrorCode, HistoryItem, Limits, Member, Position, Recovery};

/// How many are in a room ([`Client::presence_stats`]), however many: a
/// [`Client::presence`] list holds only what fits in one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceStats {
    /// Sessions subscribed to the room, on every instance.
    pub sessions: u32,
    /// Distinct users among them.
    pub users: u32,
}

/// A page of a room's history ([`Client::history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryPage {
    /// The room's current position.
    pub position: Option<Position>,
    /// Oldest first.
    pub publications: Vec<HistoryItem>,
    /// More is kept after the last one than this page holds.
    pub truncated: bool,
}
