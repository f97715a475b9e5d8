//! Native Rust client for Quiver: realtime pub/sub over WebTransport (HTTP/3, QUIC).
//!
//! A [`Client`] keeps one WebTransport session to a Quiver server and reconnects by itself
//! (exponential backoff with full jitter, rotating through the configured URLs, asking the
//! [`TokenProvider`] for a fresh token each time). After a reconnect it subscribes to every room
//! again, resuming from the last [`Position`] it delivered ([`SubEvent::Resubscribed`] says
//! whether the gap was recovered), then sends the publishes made while disconnected. Tokens are
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
//! # Delivery and flow control
//!
//! Each [`Subscription`] has a bounded queue. If the application does not read it, the client
//! stops reading that room's stream and QUIC flow control pushes back to the server, which ends
//! the subscription with `slow_consumer` ([`SubEvent::Ended`]) rather than buffering without
//! bound. [`Client::publish`] is at-most-once; [`Client::publish_ack`] reports the server's
//! answer.

mod backoff;
mod client;
mod config;
mod connection;
mod error;
mod heartbeat;
mod pacer;
mod subscription;
mod transport;
mod writer;

pub use backoff::Backoff;
pub use client::{Client, ConnectionState, WelcomeInfo};
pub use config::{
    connect_url, parse_cert_hash, token_fixed, token_fn, ws_url, ClientConfig, Heartbeat,
    TokenProvider, Transport, Trust, WS_PATH,
};
pub use error::ClientError;
pub use subscription::{SubEvent, Subscription};

pub use bytes::Bytes;
pub use quiver_proto::{CloseCode, ErrorCode, Limits, Member, Position, Recovery};
