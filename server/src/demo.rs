//! Development mode's feeds, published through the broker like any client publication: eight
//! dashboard tiles in the demo tenant, each a room updated at 20 Hz with a random walk, and the
//! arena: dozens of dots bouncing at 60 Hz, all positions in one `latest` room (PROTOCOL.md §10),
//! small enough for one datagram.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quiver_proto::{RoomName, TenantId};

use crate::hub::RoomKey;
use crate::server::Shared;

const TILES: usize = 8;
const INTERVAL: Duration = Duration::from_millis(50);

/// The arena's room (namespace `arena` is `latest` in development mode) and its dots.
pub const ARENA_ROOM: &str = "arena.dots";
const DOTS: usize = 48;
/// 60 Hz.
const ARENA_INTERVAL: Duration = Duration::from_micros(16_667);

/// One arena frame: the publish time (Unix milliseconds, f64 big-endian, for the page's "age
/// of the newest value"), then x and y of every dot as big-endian u16 (0..=65535): 200 bytes.
fn arena_frame(now_ms: f64, dots: &[(f64, f64, f64, f64)]) -> Bytes {
    let mut out = Vec::with_capacity(8 + dots.len() * 4);
    out.extend_from_slice(&now_ms.to_be_bytes());
    for &(x, y, _, _) in dots {
        out.extend_from_slice(&((x * 65535.0) as u16).to_be_bytes());
        out.extend_from_slice(&((y * 65535.0) as u16).to_be_bytes());
    }
    Bytes::from(out)
}

pub async fn arena(shared: Arc<Shared>) {
    let (Ok(tenant), Ok(room)) = (
        TenantId::parse(crate::http::DEMO_TENANT),
        RoomName::parse(ARENA_ROOM),
    ) else {
        return;
    };
    let key = RoomKey { tenant, room };
    // Position and velocity (per second) of each dot, in the unit square.
    let mut dots: Vec<(f64, f64, f64, f64)> = (0..DOTS)
        .map(|_| {
            (
                rand::random::<f64>(),
                rand::random::<f64>(),
                rand::random::<f64>() * 0.6 - 0.3,
                rand::random::<f64>() * 0.6 - 0.3,
            )
        })
        .collect();
    let mut tick = tokio::time::interval(ARENA_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let dt = ARENA_INTERVAL.as_secs_f64();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Nobody watching: nothing to compute or send.
        if !shared.hub.has_subscribers(&key) {
            continue;
        }
        for (x, y, vx, vy) in dots.iter_mut() {
            *x += *vx * dt;
            *y += *vy * dt;
            if !(0.0..=1.0).contains(x) {
                *vx = -*vx;
                *x = x.clamp(0.0, 1.0);
            }
            if !(0.0..=1.0).contains(y) {
                *vy = -*vy;
                *y = y.clamp(0.0, 1.0);
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or_default();
        let _ = shared
            .broker
            .publish(key.clone(), arena_frame(now_ms, &dots))
            .await;
    }
}

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
