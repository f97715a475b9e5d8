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

/// Who an API key speaks for.
enum Scope {
    Admin,
    Tenant(String),
}

/// Checks `Authorization: Bearer KEY` against the configured API keys. Keys are compared by
/// their SHA-256 digests, so the comparison's timing says nothing about a key's bytes.
fn api_scope(shared: &Shared, headers: &HeaderMap) -> Option<Scope> {
    use sha2::{Digest, Sha256};
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let digest = Sha256::digest(presented.as_bytes());
    let found = shared
        .config
        .api
        .keys
        .iter()
        .filter(|k| !k.key.is_empty())
        .find(|k| Sha256::digest(k.key.as_bytes()) == digest);
    found.map(|k| k.tenant.clone().map_or(Scope::Admin, Scope::Tenant))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    tenant: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/disconnect` `{tenant, user?, session?, reason?}`: ends the matching sessions
/// on every instance (goodbye `disconnected`, 3009: no reconnect). At least `user` or `session`.
pub async fn disconnect(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(scope) = api_scope(&shared, &headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an API key is required (Authorization: Bearer KEY)",
        );
    };
    let request: DisconnectRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let tenant = match quiver_proto::TenantId::parse(&request.tenant) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("tenant: {e}"),
            )
        }
    };
    if let Scope::Tenant(own) = &scope {
        if *own != request.tenant {
            return error(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "this API key is for another tenant",
            );
        }
    }
    if request.user.is_none() && request.session.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name a user, a session, or both",
        );
    }
    let disconnect = crate::control::Disconnect {
        selector: crate::registry::Selector {
            tenant: request.tenant.clone(),
            user: request.user,
            session: request.session,
            jti: None,
        },
        reason: request
            .reason
            .unwrap_or_else(|| "disconnected by the backend".into()),
    };
    match shared.control.disconnect(&tenant, disconnect).await {
        Ok(local) => Json(json!({"disconnected_here": local})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}
