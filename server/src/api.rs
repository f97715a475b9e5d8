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
    let grant = match shared.authenticate(token.trim()) {
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

/// A refusal of the admin API, as its JSON error response.
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1, self.2)
    }
}

/// What every admin endpoint checks first: an API key, a well-formed JSON body, and a tenant
/// the key may act on.
fn admin_request<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    tenant_of: impl Fn(&T) -> &str,
) -> Result<(T, quiver_proto::TenantId), ApiError> {
    let Some(scope) = api_scope(shared, headers) else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an API key is required (Authorization: Bearer KEY)".into(),
        ));
    };
    let request: T = serde_json::from_slice(body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let tenant = quiver_proto::TenantId::parse(tenant_of(&request)).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("tenant: {e}"),
        )
    })?;
    if let Scope::Tenant(own) = &scope {
        if own != tenant.as_str() {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "this API key is for another tenant".into(),
            ));
        }
    }
    Ok((request, tenant))
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
    let (request, tenant) =
        match admin_request(&shared, &headers, &body, |r: &DisconnectRequest| {
            r.tenant.as_str()
        }) {
            Ok(ok) => ok,
            Err(refused) => return refused.into_response(),
        };
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
            jti_key: None,
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    tenant: String,
    jti: String,
    /// The token's `exp` (Unix seconds): the revocation is kept until then (at most 30 days).
    expires_at: u64,
}

/// `POST /api/v1/revoke` `{tenant, jti, expires_at}`: the token with this `jti` opens and
/// refreshes no session on any instance until `expires_at`, and the sessions using it end
/// (goodbye `disconnected`).
pub async fn revoke(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (request, tenant) = match admin_request(&shared, &headers, &body, |r: &RevokeRequest| {
        r.tenant.as_str()
    }) {
        Ok(ok) => ok,
        Err(refused) => return refused.into_response(),
    };
    if request.jti.is_empty() || request.jti.len() > 256 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "jti: 1 to 256 bytes",
        );
    }
    let now = crate::auth::unix_now();
    let until = request
        .expires_at
        .min(now + crate::control::MAX_REVOCATION.as_secs());
    if until <= now {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expires_at is past: that token is refused anyway",
        );
    }
    match shared.control.revoke(&tenant, &request.jti, until).await {
        Ok(local) => Json(json!({"disconnected_here": local})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}
