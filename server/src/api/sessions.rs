//! Acting on sessions wherever they are (through the control plane, `control.rs`): disconnect
//! a user or a session, revoke a token, unsubscribe a user from a room.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::KeyRequest;
use super::error::ApiError;
use crate::registry::Selector;
use crate::server::Shared;

/// Longest `reason` a request may carry: it travels to the client in a frame.
const MAX_REASON: usize = crate::control::MAX_REASON;

fn reason(reason: Option<String>, default: &str) -> Result<String, ApiError> {
    match reason {
        Some(r) if r.len() > MAX_REASON => Err(ApiError::bad_request(format!(
            "reason: at most {MAX_REASON} bytes"
        ))),
        Some(r) => Ok(r),
        None => Ok(default.to_owned()),
    }
}

/// A session id as `Welcome` gives it: an empty one, or one longer than any, names no session
/// and was passed on to every instance, which refused it as malformed (outside audit 93, F4).
fn check_session(session: Option<&str>) -> Result<(), ApiError> {
    let max = crate::control::MAX_SESSION_BYTES;
    if session.is_some_and(|s| s.is_empty() || s.len() > max) {
        return Err(ApiError::bad_request(format!(
            "session: 1 to {max} bytes, a session id as Welcome gives it"
        )));
    }
    Ok(())
}

/// A user id the way tokens carry them (`sub`: 1 to 256 bytes): any other names nobody, and
/// is a mistake the backend should hear about rather than a silent `0`.
fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > crate::auth::MAX_SUB_BYTES {
        return Err(ApiError::bad_request(format!(
            "user: 1 to {} bytes, as a token's sub",
            crate::auth::MAX_SUB_BYTES
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// `null` is leaving it out (false), as for every optional field: a `bool` refused it 400
    /// (outside audit 111, F3).
    #[serde(default)]
    reconnect: Option<bool>,
}

/// `POST /api/v1/disconnect` `{tenant?, user?, session?, reason?, reconnect?}`: ends the
/// matching sessions on every instance (goodbye `disconnected`, 3009: no reconnect; with
/// `reconnect`, goodbye `reconnect`, 3011: the clients come back, with a fresh token if their
/// token source gives one, and resume). At least `user` or `session`.
pub async fn disconnect(
    State(shared): State<Arc<Shared>>,
    KeyRequest { caller, request }: KeyRequest<DisconnectRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant(request.tenant.as_deref())?;
    if request.user.is_none() && request.session.is_none() {
        return Err(ApiError::bad_request("name a user, a session, or both"));
    }
    if let Some(user) = &request.user {
        check_user(user)?;
    }
    check_session(request.session.as_deref())?;
    let reconnect = request.reconnect.unwrap_or(false);
    let disconnect = crate::control::Disconnect {
        selector: Selector {
            tenant: tenant.to_string(),
            user: request.user,
            session: request.session,
            jti_key: None,
        },
        reason: if reconnect {
            reason(request.reason, "reconnect asked by the backend")?
        } else {
            reason(request.reason, "disconnected by the backend")?
        },
        reconnect,
    };
    let local = shared
        .control
        .disconnect(&tenant, disconnect)
        .await
        .map_err(|e| ApiError::not_spread("disconnected_here", tenant.as_str(), e))?;
    Ok(Json(json!({"disconnected_here": local})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    tenant: Option<String>,
    jti: String,
    /// The token's `exp` (Unix seconds): the revocation is kept until then, however far, and
    /// `auth.leeway` past it (while the token is still valid).
    expires_at: u64,
}

/// `POST /api/v1/revoke` `{tenant?, jti, expires_at}`: the token with this `jti` opens and
/// refreshes no session on any instance until `expires_at`, and the sessions using it end
/// (goodbye `disconnected`).
pub async fn revoke(
    State(shared): State<Arc<Shared>>,
    KeyRequest { caller, request }: KeyRequest<RevokeRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant(request.tenant.as_deref())?;
    if request.jti.is_empty() || request.jti.len() > crate::auth::MAX_JTI_BYTES {
        return Err(ApiError::bad_request("jti: 1 to 256 bytes"));
    }
    let now = crate::auth::unix_now();
    // Kept until the token's own expiry, however far, and its leeway past it: the token is
    // valid while `now < exp + leeway` (auth.rs), and a revocation that ended at `exp` let it
    // open sessions again for the leeway, and one made within the leeway was refused as
    // needless (outside audit 98, F1).
    let leeway = shared.config.auth.leeway.as_secs();
    let until = request.expires_at.saturating_add(leeway);
    if until <= now {
        return Err(ApiError::bad_request(
            "expires_at is past (with auth.leeway): that token is refused anyway",
        ));
    }
    // A tenant's own key, counted: every revocation goes into the store all tenants share.
    if matches!(caller, super::auth::Caller::Tenant(_))
        && !shared
            .revocations
            .admit_tenant_key(&tenant, std::time::Instant::now())
    {
        return Err(ApiError::new(
            super::error::Code::QuotaExceeded,
            format!(
                "this tenant's API keys made {} revocations in the last hour on this instance; \
                 retry later (an admin key is not limited)",
                crate::revocation::MAX_TENANT_API_REVOCATIONS
            ),
        ));
    }
    let local = shared
        .control
        .revoke(&tenant, &request.jti, until)
        .await
        .map_err(|e| ApiError::not_spread("disconnected_here", tenant.as_str(), e))?;
    Ok(Json(json!({"disconnected_here": local})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeRequest {
    #[serde(default)]
    tenant: Option<String>,
    user: String,
    room: String,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/unsubscribe` `{tenant?, user, room, session?, reason?}`: ends the user's (or
/// one of its sessions') subscription to the room on every instance; each such session gets an
/// unsolicited `Unsubscribed` with code `unsubscribed` and stays open.
pub async fn unsubscribe(
    State(shared): State<Arc<Shared>>,
    KeyRequest { caller, request }: KeyRequest<UnsubscribeRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant(request.tenant.as_deref())?;
    check_user(&request.user)?;
    check_session(request.session.as_deref())?;
    let room = super::publish::room(&request.room)?;
    let unsubscribe = crate::control::Unsubscribe {
        selector: Selector {
            tenant: tenant.to_string(),
            user: Some(request.user),
            session: request.session,
            jti_key: None,
        },
        room: room.to_string(),
        reason: reason(request.reason, "unsubscribed by the backend")?,
    };
    let local = shared
        .control
        .unsubscribe(&tenant, unsubscribe)
        .await
        .map_err(|e| ApiError::not_spread("unsubscribed_here", tenant.as_str(), e))?;
    Ok(Json(json!({"unsubscribed_here": local})))
}
