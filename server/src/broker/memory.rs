//! The embedded default: one process, so publishing is delivering.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::{ready, BoxFuture};
use quiver_proto::Position;

use super::{Broker, BrokerError};
use crate::hub::{Hub, RoomKey};

pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Broker for MemoryBroker {
    fn publish(
        &self,
        key: RoomKey,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<Option<Position>, BrokerError>> {
        self.hub.deliver(&key, None, payload);
        Box::pin(ready(Ok(None)))
    }

    fn add_interest(&self, _key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(ready(Ok(())))
    }

    fn remove_interest(&self, _key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(ready(Ok(())))
    }

    fn is_ready(&self) -> bool {
        true
    }
}
