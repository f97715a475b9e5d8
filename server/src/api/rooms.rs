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

/// Members one presence answer lists: a room can hold any number, the answer stays bounded
/// (as the `Presence` command's is by the frame size, and `rooms` by `control::MAX_ROOMS`).
const MAX_MEMBERS: usize = 1000;

/// `POST /api/v1/presence` `{tenant?, room}`: every session subscribed to the room, on every
/// instance, as `{"room", "members": [{"user", "session"}], "truncated", "sessions", "users"}`
/// (rooms in namespaces with presence only; at most [`MAX_MEMBERS`], in sorted order; the
/// counts are of all of them).
pub async fn presence(
    State(shared): State<Arc<Shared>>,
    KeyRequest { caller, request }: KeyRequest<RoomRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant(request.tenant.as_deref())?;
    let room = room(&request.room)?;
    crate::presence::tracked(&shared.config, &room)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let name = room.to_string();
    let present = shared
        .broker
        .presence(
            RoomKey {
                tenant: tenant.clone(),
                room,
            },
            MAX_MEMBERS,
        )
        .await
        .map_err(|e| ApiError::broker(tenant.as_str(), e))?;
    let truncated = present.truncated();
    let members: Vec<Value> = present
        .members
        .into_iter()
        .map(|m| json!({"user": m.user, "session": m.session}))
        .collect();
    Ok(Json(json!({
        "room": name,
        "members": members,
        "truncated": truncated,
        "sessions": crate::presence::count(present.sessions),
        "users": crate::presence::count(present.users),
    })))
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
    let key = RoomKey {
        tenant: tenant.clone(),
        room,
    };
    let page = crate::history::page(&shared, key, since, limit, max_bytes)
        .await
        .map_err(|e| match e {
            HistoryError::NoHistory(_) => ApiError::bad_request(e.to_string()),
            HistoryError::Unrecoverable { .. } => {
                ApiError::new(Code::UnrecoverablePosition, e.to_string())
            }
            HistoryError::Broker(e) => ApiError::broker(tenant.as_str(), e),
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
        .map_err(|e| ApiError::broker(tenant.as_str(), crate::broker::BrokerError::Failed(e)))?;
    // Each instance lists its first `MAX_ROOMS` rooms by name, so the first `MAX_ROOMS` of the
    // merged list come before every cut instance's last: every instance listed each of them it
    // has, and their counts are whole. Past them a room may have subscribers on an instance
    // whose list stops short of it: none is answered (outside audit 116, F8: such a room was
    // answered with the others' subscribers alone, and the answer made up to 256,000 rooms).
    let cut = nodes.iter().any(|n| n.room_count > n.rooms.len());
    let mut rooms: BTreeMap<String, usize> = BTreeMap::new();
    for node in nodes {
        for (_, room, n) in node.rooms {
            *rooms.entry(room).or_default() += n;
        }
    }
    let truncated = cut || rooms.len() > crate::control::MAX_ROOMS;
    let rooms: Vec<Value> = rooms
        .into_iter()
        .take(crate::control::MAX_ROOMS)
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
            tenant: tenant.clone(),
            rooms: false,
        })
        .await
        .map_err(|e| {
            let told = tenant.as_deref().unwrap_or_default();
            ApiError::broker(told, crate::broker::BrokerError::Failed(e))
        })?;
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

#[cfg(test)]
mod tests {
    use crate::broker::RoomPresence;
    use quiver_proto::Member;

    /// What a broker that reads every member answers the API's `presence` (NATS: the
    /// trait's default): sorted, cut at the bound, counted whole.
    #[test]
    fn presence_answers_are_bounded_and_say_so() {
        let member = |u: &str| Member {
            user: u.into(),
            session: "s".into(),
        };
        let all = RoomPresence::of(vec![member("b"), member("a")], 2);
        assert_eq!(all.members, [member("a"), member("b")]);
        assert!(!all.truncated());
        let cut = RoomPresence::of(vec![member("c"), member("b"), member("a")], 2);
        assert_eq!(cut.members.len(), 2);
        assert_eq!(
            cut.members[1].user, "b",
            "the first in sorted order are kept"
        );
        assert!(cut.truncated());
        assert_eq!((cut.sessions, cut.users), (3, 3));
    }
}
