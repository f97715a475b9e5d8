//! The broker carries publications between instances. Sessions only ever talk to this trait, so
//! the embedded in-process broker and a NATS backplane are interchangeable.
//!
//! Contract: `publish` hands the payload to the broker; every instance with local interest in
//! the room (including this one) then passes it to its `Hub::deliver`, in one order per room.
//! `add_interest`/`remove_interest` are called when a room gets its first local subscriber and
//! loses its last one.

pub mod memory;

use bytes::Bytes;
use futures::future::BoxFuture;
use quiver_proto::Position;

use crate::hub::RoomKey;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

pub trait Broker: Send + Sync + 'static {
    /// Publishes; resolves when the broker has accepted the message (with its position when the
    /// room keeps history).
    fn publish(
        &self,
        key: RoomKey,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<Option<Position>, BrokerError>>;
    fn add_interest(&self, key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>>;
    fn remove_interest(&self, key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Whether the broker can take publications now (for `/readyz`).
    fn is_ready(&self) -> bool;
}
