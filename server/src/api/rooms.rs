//! Reading rooms and the cluster: `presence` and `history` of a room, `rooms` with subscriber
//! counts, `info` (sessions and subscriptions per instance).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::KeyRequest;
use super::encoding::{self, PositionIn};
use super::error::{ApiError, Code};
use super::publish::room;
use crate::control::StatsRequest;
use crate::history::HistoryError;
use crate::hub::RoomKey;
use crate::server::Shared;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRequest {
    #[serde(default)]
    tenant: Option<String>,
    room: String,
}

/// `POST /api/v1/presence` `{tenant?, room}`: every session subscribed to the room, on every
/// instance, as `{"room", "members": [{"user", "session"}]}` (rooms in namespaces with
/// presence only).
pub async fn presence(
    State(shared): State<Arc<Shared>>,
    KeyRequest { caller, request }: KeyRequest<RoomRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant(request.tenant.as_deref())?;
    let room = room(&request.room)?;
    crate::presence::tracked(&shared.config, &room)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let name = room.to_string();
    let mut members = shared
        .broker
        .members(RoomKey { tenant, room })
        .await
        .map_err(ApiError::unavailable)?;
    members.sort();
    let members: Vec<Value> = members
        .into_iter()
        .map(|m| json!({"user": m.user, "session": m.session}))
        .collect();
    Ok(Json(json!({"room": name, "members": members})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRequest {
    #[serde(default)]
    tenant: Option<String>,
    room: String,
    #[serde(default)]
    since: Option<PositionIn>,
    #[serde(default)]
    limit: Option<u32>,
}

/// Publications one history page holds when the request names no `limit`.
const DEFAULT_LIMIT: u32 = 100;

/// `POST /api/v1/history` `{tenant?, room, since?, limit?}`: a page of the room's history as
/// the `History` command has it: `{"room", "position", "publications": [{"position",
/// "payload"}], "truncated"}`, payloads base64.
pub async fn history(
    State(shared): State<Arc<Shared>>,
    KeyRequest { caller, request }: KeyRequest<HistoryRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant(request.tenant.as_deref())?;
    let room = room(&request.room)?;
    let since = request.since.map(|p| p.parse("since")).transpose()?;
    let name = room.to_string();
    let max_bytes = shared.config.limits.max_frame as usize;
    let limit = request.limit.unwrap_or(DEFAULT_LIMIT);
    let page = crate::history::page(&shared, RoomKey { tenant, room }, since, limit, max_bytes)
        .await
        .map_err(|e| match e {
            HistoryError::NoHistory(_) => ApiError::bad_request(e.to_string()),
            HistoryError::Unrecoverable { .. } => {
                ApiError::new(Code::UnrecoverablePosition, e.to_string())
            }
            HistoryError::Broker(e) => ApiError::unavailable(e),
        })?;
    let publications: Vec<Value> = page
        .publications
        .iter()
        .map(|(p, payload)| {
            json!({"position": encoding::position(Some(*p)), "payload": encoding::base64(payload)})
        })
        .collect();
    Ok(Json(json!({
        "room": name,
        "position": encoding::position(page.current),
        "publications": publications,
        "truncated": page.truncated,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRequest {
    #[serde(default)]
    tenant: Option<String>,
}

/// `POST /api/v1/rooms` `{tenant?}`: the tenant's rooms with subscribers anywhere in the
/// cluster, `{"rooms": [{"room", "subscribers"}], "truncated"}` (subscribers summed over the
/// instances; each instance lists at most `control::MAX_ROOMS` rooms).
pub async fn rooms(
    State(shared): State<Arc<Shared>>,
    KeyRequest { caller, request }: KeyRequest<TenantRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant(request.tenant.as_deref())?;
    let nodes = shared
        .control
        .cluster_stats(&StatsRequest {
            tenant: Some(tenant.to_string()),
            rooms: true,
        })
        .await
        .map_err(ApiError::unavailable)?;
    let truncated = nodes.iter().any(|n| n.room_count > n.rooms.len());
    let mut rooms: BTreeMap<String, usize> = BTreeMap::new();
    for node in nodes {
        for (_, room, n) in node.rooms {
            *rooms.entry(room).or_default() += n;
        }
    }
    let rooms: Vec<Value> = rooms
        .into_iter()
        .map(|(room, n)| json!({"room": room, "subscribers": n}))
        .collect();
    Ok(Json(json!({"rooms": rooms, "truncated": truncated})))
}

/// `POST /api/v1/info` `{}`: every instance that answered, `{"nodes": [{"node", "sessions",
/// "subscriptions", "rooms"}]}`; with a tenant's key (or an admin key naming a `tenant`), that
/// tenant's counts only.
pub async fn info(
    State(shared): State<Arc<Shared>>,
    KeyRequest { caller, request }: KeyRequest<TenantRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = match (&caller, request.tenant.as_deref()) {
        (super::auth::Caller::Admin, None) => None,
        (_, named) => Some(caller.tenant(named)?.to_string()),
    };
    let nodes = shared
        .control
        .cluster_stats(&StatsRequest {
            tenant,
            rooms: false,
        })
        .await
        .map_err(ApiError::unavailable)?;
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|n| {
            json!({
                "node": n.node,
                "sessions": n.sessions,
                "subscriptions": n.subscriptions,
                "rooms": n.room_count,
            })
        })
        .collect();
    Ok(Json(json!({"nodes": nodes})))
}
