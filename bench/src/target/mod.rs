//! The systems under test, as seen by the load generator: connect a subscriber to some rooms and
//! read what arrives; connect a publisher and send pre-encoded, timestamped messages.
//!
//! Every target is driven by the same Rust code path (same pacing, same timestamps, same
//! histograms), so differences come from the servers, not from the clients.

pub mod bare;
pub mod nats;
pub mod quic;
pub mod quiver;
pub mod quiver_ws;
pub mod socketio;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::recorder::Recorder;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Kind {
    /// Quiver, a stream per subscribed room.
    Quiver,
    /// Quiver with `ablation.single_stream`: publications arrive on the control stream.
    QuiverSingleStream,
    /// Quiver with `transport.congestion_control = "cubic"` (the default is BBR).
    QuiverCubic,
    /// Quiver over its WebSocket transport (`/v1/ws`, plain `ws://` on the HTTP listener):
    /// every room on one TCP connection, like Socket.IO.
    QuiverWs,
    /// The bare wtransport fan-out peer (`bare-wt-fanout`).
    Bare,
    /// nats-server, core pub/sub.
    Nats,
    /// Socket.IO 4 on Node, websocket transport.
    Socketio,
    /// nats-server with TLS (`--tls`), for the connection set-up workload: a peer that pays a
    /// TLS handshake per connection as Quiver does.
    NatsTls,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Quiver => "quiver",
            Kind::QuiverSingleStream => "quiver-single-stream",
            Kind::QuiverCubic => "quiver-cubic",
            Kind::QuiverWs => "quiver-ws",
            Kind::Bare => "bare-wtransport",
            Kind::Nats => "nats",
            Kind::Socketio => "socket.io",
            Kind::NatsTls => "nats-tls",
        }
    }
}

/// How to reach a target. Subscribers and publishers may use different addresses (the
/// head-of-line test sends subscribers over the lossy link and publishers over a clean one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub kind: Kind,
    /// host:port for subscribers.
    pub sub_addr: String,
    /// host:port for publishers.
    pub pub_addr: String,
    /// SHA-256 of the server certificate (QUIC targets), hex.
    pub cert_sha256: Option<String>,
    /// Quiver token (allowed everything in its tenant).
    pub token: Option<String>,
}

impl Spec {
    pub fn cert_hash(&self) -> Result<[u8; 32]> {
        let hex = self
            .cert_sha256
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("{:?} needs a certificate hash", self.kind))?;
        let mut out = [0u8; 32];
        if hex.len() != 64 {
            anyhow::bail!("certificate hash must be 64 hex digits");
        }
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
        }
        Ok(out)
    }
}

/// A connected subscriber, subscribed to its rooms, not reading yet.
pub enum Subscriber {
    Quiver(quiver::QuiverSubscriber),
    QuiverWs(quiver_ws::QuiverWsSubscriber),
    Bare(bare::BareSubscriber),
    Nats(nats::NatsSubscriber),
    SocketIo(socketio::SocketIoSubscriber),
}

impl Subscriber {
    pub async fn connect(spec: &Spec, quic: &quic::ClientPool, rooms: &[String]) -> Result<Self> {
        Ok(match spec.kind {
            Kind::Quiver | Kind::QuiverSingleStream | Kind::QuiverCubic => {
                Self::Quiver(quiver::QuiverSubscriber::connect(spec, quic, rooms).await?)
            }
            Kind::QuiverWs => {
                Self::QuiverWs(quiver_ws::QuiverWsSubscriber::connect(spec, rooms).await?)
            }
            Kind::Bare => Self::Bare(bare::BareSubscriber::connect(spec, quic).await?),
            Kind::Nats => {
                Self::Nats(nats::NatsSubscriber::connect(&spec.sub_addr, rooms, None).await?)
            }
            Kind::NatsTls => Self::Nats(
                nats::NatsSubscriber::connect(&spec.sub_addr, rooms, Some(spec.cert_hash()?))
                    .await?,
            ),
            Kind::Socketio => {
                Self::SocketIo(socketio::SocketIoSubscriber::connect(&spec.sub_addr, rooms).await?)
            }
        })
    }

    /// Reads until `stop` is cancelled or the connection ends; returns the recorder.
    pub async fn run(self, mut rec: Recorder, stop: CancellationToken) -> Recorder {
        let result = match self {
            Self::Quiver(s) => s.run(&mut rec, &stop).await,
            Self::QuiverWs(s) => s.run(&mut rec, &stop).await,
            Self::Bare(s) => s.run(&mut rec, &stop).await,
            Self::Nats(s) => s.run(&mut rec, &stop).await,
            Self::SocketIo(s) => s.run(&mut rec, &stop).await,
        };
        if let Err(e) = result {
            if !stop.is_cancelled() {
                eprintln!("subscriber ended: {e:#}");
            }
        }
        rec
    }
}

/// A connected publisher with one pre-encoded frame per room.
pub enum Publisher {
    Quiver(quiver::QuiverPublisher),
    QuiverWs(quiver_ws::QuiverWsPublisher),
    Bare(bare::BarePublisher),
    Nats(nats::NatsPublisher),
    SocketIo(socketio::SocketIoPublisher),
}

impl Publisher {
    pub async fn connect(
        spec: &Spec,
        quic: &quic::ClientPool,
        rooms: &[String],
        payload: usize,
    ) -> Result<Self> {
        Ok(match spec.kind {
            Kind::Quiver | Kind::QuiverSingleStream | Kind::QuiverCubic => {
                Self::Quiver(quiver::QuiverPublisher::connect(spec, quic, rooms, payload).await?)
            }
            Kind::QuiverWs => {
                Self::QuiverWs(quiver_ws::QuiverWsPublisher::connect(spec, rooms, payload).await?)
            }
            Kind::Bare => Self::Bare(bare::BarePublisher::connect(spec, quic, payload).await?),
            Kind::Nats => Self::Nats(
                nats::NatsPublisher::connect(&spec.pub_addr, rooms, payload, None).await?,
            ),
            Kind::NatsTls => Self::Nats(
                nats::NatsPublisher::connect(
                    &spec.pub_addr,
                    rooms,
                    payload,
                    Some(spec.cert_hash()?),
                )
                .await?,
            ),
            Kind::Socketio => Self::SocketIo(
                socketio::SocketIoPublisher::connect(&spec.pub_addr, rooms, payload).await?,
            ),
        })
    }

    /// Rooms this publisher publishes to.
    pub fn rooms(&self) -> usize {
        match self {
            Self::Quiver(p) => p.rooms(),
            Self::QuiverWs(p) => p.rooms(),
            Self::Bare(_) => 1,
            Self::Nats(p) => p.rooms(),
            Self::SocketIo(p) => p.rooms(),
        }
    }

    /// Sends one message to `room` (an index into the rooms given at connect), stamped now.
    pub async fn publish(&mut self, room: usize) -> Result<()> {
        match self {
            Self::Quiver(p) => p.publish(room).await,
            Self::QuiverWs(p) => p.publish(room).await,
            Self::Bare(p) => p.publish().await,
            Self::Nats(p) => p.publish(room).await,
            Self::SocketIo(p) => p.publish(room).await,
        }
    }

    /// Pushes out anything buffered and, where the protocol allows, waits until the server has
    /// taken everything sent so far (so no message is lost by closing too early).
    pub async fn finish(&mut self) -> Result<()> {
        match self {
            Self::Quiver(p) => p.finish().await,
            Self::QuiverWs(p) => p.finish().await,
            Self::Bare(_) => Ok(()),
            Self::Nats(p) => p.finish().await,
            Self::SocketIo(p) => p.finish().await,
        }
    }
}
