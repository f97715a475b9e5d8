//! Development mode's dashboard feed: eight tiles in the demo tenant, each a room updated at
//! 20 Hz with a random walk, published through the broker like any client publication.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quiver_proto::{RoomName, TenantId};

use crate::hub::RoomKey;
use crate::server::Shared;

const TILES: usize = 8;
const INTERVAL: Duration = Duration::from_millis(50);

pub async fn publisher(shared: Arc<Shared>) {
    let Ok(tenant) = TenantId::parse(crate::http::DEMO_TENANT) else {
        return;
    };
    let keys: Vec<RoomKey> = (0..TILES)
        .filter_map(|i| RoomName::parse(&format!("dash.tile.{i}")).ok())
        .map(|room| RoomKey {
            tenant: tenant.clone(),
            room,
        })
        .collect();
    let mut values = [50.0f64; TILES];
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        for (key, value) in keys.iter().zip(values.iter_mut()) {
            *value = (*value + (rand::random::<f64>() - 0.5) * 8.0).clamp(0.0, 100.0);
            let payload = format!("{{\"v\":{value:.2},\"t\":{now_ms}}}");
            let _ = shared
                .broker
                .publish(key.clone(), Bytes::from(payload))
                .await;
        }
    }
}
