//! The HTTP API for backends: publish into a room without holding a WebTransport session.
//!
//! `POST /api/v1/publish/{room}` with the payload as the raw body and `Authorization: Bearer JWT`.
//! The token is checked exactly like a client's (tenant, `publish` patterns), so a backend gets a
//! token scoped to what it may publish.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use quiver_proto::RoomName;
use serde_json::json;

use crate::hub::RoomKey;
use crate::metrics as m;
use crate::server::Shared;

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

pub async fn publish(
    State(shared): State<Arc<Shared>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let grant = match shared.verifier.verify(token.trim()) {
        Ok(grant) => grant,
        Err(e) => return error(StatusCode::UNAUTHORIZED, e.label(), e.to_string()),
    };
    let room = match RoomName::parse(&room) {
        Ok(room) => room,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_room", e.to_string()),
    };
    if !grant.may_publish(&room) {
        return error(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("no publish permission for room {room}"),
        );
    }
    let max = shared.config.limits.max_payload as usize;
    if body.len() > max {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("payload of {} bytes exceeds {max}", body.len()),
        );
    }
    let key = RoomKey {
        tenant: grant.tenant,
        room,
    };
    match shared.broker.publish(key, body).await {
        Ok(position) => {
            metrics::counter!(m::PUBLICATIONS).increment(1);
            Json(json!({ "position": position.map(|p| json!({"epoch": p.epoch, "offset": p.offset})) }))
                .into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}
