//! Publishing from a backend: one room (`POST /api/v1/publish/{room}`, the payload as the raw
//! body) or many rooms in one request (`POST /api/v1/broadcast`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use quiver_proto::{Position, RoomName, TenantId};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{api_key, bearer, KeyRequest};
use super::client_rate;
use super::encoding;
use super::error::{ApiError, Code};
use crate::hub::RoomKey;
use crate::idempotency::{self, scoped, Claim, Claimant, BACKEND};
use crate::metrics as m;
use crate::rpc::{Caller, Decision, Hook};
use crate::server::Shared;

/// Most rooms one broadcast may name: each is a publication, so this bounds one request's work.
pub const MAX_BROADCAST_ROOMS: usize = 100;

pub fn room(name: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(name)
        .map_err(|e| ApiError::new(Code::InvalidRoom, format!("room {name:?}: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishQuery {
    tenant: Option<String>,
}

/// `POST /api/v1/publish/{room}[?tenant=T]`, the payload as the raw body. With an API key it
/// publishes in the key's tenant (an admin key names it in `tenant`); with a token it is checked
/// exactly like a client's (tenant, `publish` patterns, size, the publish hook, the tenant's
/// publish quota), so a backend can get a token scoped to what it may publish.
pub async fn publish(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PublishQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let credential = bearer(&headers);
    // In the API's own words: the parser's would quote the whole query back.
    let Query(query) = query.map_err(|_| {
        ApiError::bad_request("query string: only `tenant` is accepted, once, as UTF-8")
    })?;
    let (tenant, grant, claimant) = match api_key(&shared, credential) {
        Some(caller) => (
            caller.tenant(query.tenant.as_deref())?,
            None,
            claimant(&caller),
        ),
        None => {
            let grant = shared
                .authenticate(credential)
                .map_err(|e| ApiError::not_a_credential(credential, &e))?;
            if query
                .tenant
                .as_deref()
                .is_some_and(|t| t != grant.tenant.as_str())
            {
                return Err(ApiError::new(
                    Code::PermissionDenied,
                    "the token is for another tenant",
                ));
            }
            (grant.tenant.clone(), Some(grant), Claimant::Client)
        }
    };
    let Path(name) =
        path.map_err(|_| ApiError::new(Code::InvalidRoom, "room in the path: not valid UTF-8"))?;
    let room = room(&name)?;
    // Keys are the backend's (any API key) or one user's (a client token): a client can
    // neither probe the backend's payloads through the backend's keys nor claim them first.
    let once = idempotency_key(&headers)?.map(|key| match &grant {
        None => scoped(BACKEND, &key),
        Some(grant) => scoped(&format!("{}{}", idempotency::USER, grant.user), &key),
    });
    let mut payload = body?;
    // A repeat is recognised by the payload as sent, before a hook may replace it.
    let digest = once.as_ref().map(|_| idempotency::digest(&payload));
    if let Some(grant) = grant {
        // Permission first: a token that may not publish here takes no place in the meter's
        // table, which every tenant's client tokens share (outside audit 106, F1).
        if !grant.may_publish(&room) {
            return Err(ApiError::new(
                Code::PermissionDenied,
                format!("no publish permission for room {room}"),
            ));
        }
        // A client's token is metered like its session's commands, per user.
        shared
            .api_clients
            .take(&grant.tenant, &grant.user, std::time::Instant::now())
            .map_err(|refused| match refused {
                client_rate::Refused::Rate => ApiError::new(
                    Code::RateLimited,
                    format!(
                        "over {} publications per second for this user; retry later",
                        shared.config.limits.commands_per_second
                    ),
                ),
                client_rate::Refused::Busy => ApiError::new(
                    Code::RateLimited,
                    "this tenant's clients hold their share of the API's publishing meters \
                     right now; retry later",
                ),
            })?;
        check_size(&shared, &payload)?;
        // A client's token publishes here as it would on its session: the namespace's publish
        // hook has its say (an API key is the backend itself and is not asked about).
        if let Some(replaced) = publish_hook(&shared, &grant, &room, &payload).await? {
            payload = replaced;
        }
        // The tenant's publish quota, from the same buckets its sessions draw on: a client
        // cannot step around its quota through the API (API keys are the backend, unmetered).
        shared
            .tenant_quotas
            .publish(&grant.tenant, payload.len(), std::time::Instant::now())
            .map_err(ApiError::from)?;
    }
    let key = RoomKey { tenant, room };
    let position = match once.zip(digest) {
        Some((once, digest)) => {
            publish_once(&shared, claimant, key, payload, &once, digest).await?
        }
        None => publish_one(&shared, key, payload, None).await?,
    };
    Ok(Json(json!({ "position": encoding::position(position) })))
}

/// The request's `Idempotency-Key`, if it sent one (at most one, checked).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "Idempotency-Key: sent more than once",
        ));
    }
    idempotency::check_key(value.as_bytes())
        .map(|key| Some(key.to_owned()))
        .map_err(ApiError::bad_request)
}

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The routes that take an `Idempotency-Key` (for the OpenAPI document).
pub const IDEMPOTENT_ROUTES: [&str; 2] = ["/api/v1/publish/{room}", "/api/v1/broadcast"];

/// The routes that name their tenant in the query (`PublishQuery`), for the OpenAPI document:
/// their request body is the payload, so the tenant cannot travel in it.
pub const TENANT_QUERY_ROUTES: [&str; 1] = ["/api/v1/publish/{room}"];

/// Publishes once per (tenant, room, idempotency key) within `idempotency::WINDOW`: a repeat
/// gets the first publication's position.
async fn publish_once(
    shared: &Arc<Shared>,
    claimant: Claimant,
    key: RoomKey,
    payload: Bytes,
    once: &str,
    digest: [u8; 32],
) -> Result<Option<Position>, ApiError> {
    check_size(shared, &payload)?;
    match claim(shared, claimant, &key, once, digest).await? {
        Claim::New(guard) => publish_claimed(shared, key, payload, once, guard).await,
        known => answer(known),
    }
}

/// Whose keys an API key's claims are: a tenant's own backend's, or the operator's.
fn claimant(caller: &super::auth::Caller) -> Claimant {
    match caller {
        super::auth::Caller::Admin => Claimant::Operator,
        super::auth::Caller::Tenant(_) => Claimant::TenantBackend,
    }
}

/// The cluster's key record failures logged per second at most: one per keyed request while
/// the record is unreachable or full.
static RECORD_FAILURES_LOGGED: crate::log_budget::LogBudget =
    crate::log_budget::LogBudget::per_second(5);

/// Claims `once` for a publication into `key`'s room. When the cluster's record fails, the
/// caller is told so in general terms: the broker's own words (a full bucket among them) are
/// the operator's, and would tell one tenant about the volume of the others.
async fn claim(
    shared: &Shared,
    claimant: Claimant,
    key: &RoomKey,
    once: &str,
    digest: [u8; 32],
) -> Result<Claim, ApiError> {
    let now = std::time::Instant::now();
    shared
        .idempotency
        .claim(claimant, &key.tenant, &key.room, once, digest, now)
        .await
        .map_err(|error| {
            if let Some(not_logged) = RECORD_FAILURES_LOGGED.admit() {
                tracing::warn!(%error, not_logged, "idempotency key not recorded");
            }
            ApiError::unavailable(
                "idempotency keys cannot be recorded right now (the cluster's record of them is unreachable or full); retry later",
            )
        })
}

/// The answer to a claim that found the key (not [`Claim::New`]).
fn answer(claim: Claim) -> Result<Option<Position>, ApiError> {
    match claim {
        Claim::Done(position) => {
            metrics::counter!(m::API_IDEMPOTENT_REPEATS).increment(1);
            Ok(position)
        }
        other => Err(refusal(&other).unwrap_or_else(in_progress)),
    }
}

/// Why a claim cannot publish now: the key names another payload, or is still publishing.
fn refusal(claim: &Claim) -> Option<ApiError> {
    match claim {
        Claim::InProgress => Some(in_progress()),
        Claim::Mismatch => Some(ApiError::new(
            Code::IdempotencyKeyReused,
            "this Idempotency-Key was used in this room for a different payload",
        )),
        Claim::TooMany(claimant) => Some(ApiError::new(
            Code::QuotaExceeded,
            format!(
                "this tenant's {} used {} idempotency keys in the last 5 minutes on this instance; retry later",
                match claimant {
                    Claimant::Client => "clients",
                    _ => "API keys",
                },
                claimant.limit().unwrap_or_default()
            ),
        )),
        Claim::New(_) | Claim::Done(_) => None,
    }
}

fn in_progress() -> ApiError {
    ApiError::new(
        Code::IdempotencyInProgress,
        "a request with this Idempotency-Key is still publishing into this room; retry",
    )
}

/// Publishes under a claimed key. The publication runs in its own task, so a backend that
/// gives up on the request does not leave the key unsure of whether it went out. A failure
/// lets go of the key, so the request can be retried: the broker drops the retry of a stored
/// publication whose first try was stored after all (its ack timed out), by its message id.
/// The id is made of the claim's digest: the payload as the request sent it, not as a
/// publish hook may have replaced it (a hook answering each try differently made each retry
/// another message; outside audit 72, F4).
async fn publish_claimed(
    shared: &Arc<Shared>,
    key: RoomKey,
    payload: Bytes,
    once: &str,
    guard: idempotency::Guard,
) -> Result<Option<Position>, ApiError> {
    let shared = shared.clone();
    let id = idempotency::message_id(&key, once, guard.digest());
    let publication = tokio::spawn(async move {
        match publish_one(&shared, key, payload, Some(id)).await {
            Ok(position) => {
                guard.done(position).await;
                Ok(position)
            }
            Err(e) => {
                guard.forget().await;
                Err(e)
            }
        }
    });
    publication
        .await
        .map_err(|e| ApiError::unavailable(format!("publication task: {e}")))?
}

/// The session id a hook is told for a publication made through the API with a client token.
pub const API_SESSION: &str = "api";

/// Asks the room's publish hook, if its namespace has one, about a token's publication:
/// `Some(payload)` when the backend replaced it.
async fn publish_hook(
    shared: &Shared,
    grant: &crate::auth::Grant,
    room: &RoomName,
    payload: &Bytes,
) -> Result<Option<Bytes>, ApiError> {
    let rpc = &shared.rpc;
    let Some(settings) = rpc.hook(Hook::Publish, room) else {
        return Ok(None);
    };
    let caller = Caller {
        user: grant.user.clone(),
        tenant: grant.tenant.clone(),
        session: API_SESSION.into(),
    };
    match rpc
        .decide(Hook::Publish, settings, &caller, room, Some(payload))
        .await
    {
        Decision::Allow => Ok(None),
        Decision::Replace(payload) => Ok(Some(payload)),
        Decision::Deny(reason) | Decision::Undecided(reason) => {
            Err(ApiError::new(Code::PermissionDenied, reason))
        }
    }
}

fn check_size(shared: &Shared, payload: &Bytes) -> Result<(), ApiError> {
    let max = shared.config.limits.max_payload as usize;
    if payload.len() > max {
        return Err(ApiError::new(
            Code::PayloadTooLarge,
            format!("payload of {} bytes exceeds {max}", payload.len()),
        ));
    }
    Ok(())
}

/// Checks a payload's size and hands it to the broker.
/// `once`: the broker's message id, for a publication under an idempotency key.
async fn publish_one(
    shared: &Shared,
    key: RoomKey,
    payload: Bytes,
    once: Option<String>,
) -> Result<Option<Position>, ApiError> {
    check_size(shared, &payload)?;
    // The tenant's traffic whoever published it (its sessions count theirs in TenantSession).
    let tenant = shared.tenant_quotas.label(&key.tenant);
    let told = key.tenant.clone();
    let published = match once {
        Some(id) => shared.broker.publish_once(key, payload, id).await,
        None => shared.broker.publish(key, payload).await,
    };
    let position = published.map_err(|e| ApiError::broker(told.as_str(), e))?;
    m::hot::publications().increment(1);
    metrics::counter!(m::TENANT_PUBLICATIONS, "tenant" => tenant).increment(1);
    Ok(position)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    #[serde(default)]
    tenant: Option<String>,
    rooms: Vec<String>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
}

/// `POST /api/v1/broadcast` `{tenant?, rooms: [...], payload | payload_base64}`: the same
/// payload into every room (API keys only). The request is refused as a whole when a room name
/// is invalid or repeated; otherwise each room's outcome is in `results`, in request order:
/// `{"room", "position"}` or `{"room", "error": {"code", "message"}}`.
pub async fn broadcast(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    KeyRequest { caller, request }: KeyRequest<BroadcastRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant: TenantId = caller.tenant(request.tenant.as_deref())?;
    let once = idempotency_key(&headers)?;
    if request.rooms.is_empty() || request.rooms.len() > MAX_BROADCAST_ROOMS {
        return Err(ApiError::bad_request(format!(
            "rooms: 1 to {MAX_BROADCAST_ROOMS} rooms"
        )));
    }
    let mut rooms = Vec::with_capacity(request.rooms.len());
    for name in &request.rooms {
        let room = room(name)?;
        if rooms.contains(&room) {
            return Err(ApiError::bad_request(format!("rooms: {room} named twice")));
        }
        rooms.push(room);
    }
    let payload = encoding::payload(request.payload, request.payload_base64.as_deref())?;
    let keys = rooms.into_iter().map(|room| RoomKey {
        tenant: tenant.clone(),
        room,
    });
    // With a key, every room is claimed before any is published: a key used for another
    // payload, or still publishing, in any room refuses the whole request (422, 409), so one
    // key never names two payloads. Rooms published already answer their first position.
    let mut claims = Vec::with_capacity(keys.len());
    let once = once.map(|once| scoped(BACKEND, &once));
    // The payload is the same for every room: one too large refuses the whole request (413),
    // with a key or without (without one it was a 200 holding a `payload_too_large` per room,
    // which a backend reading the status took for success: outside audit 93, F3).
    check_size(&shared, &payload)?;
    match &once {
        Some(once) => {
            let digest = idempotency::digest(&payload);
            for key in keys {
                let claim = claim(&shared, claimant(&caller), &key, once, digest).await?;
                if let Some(refused) = refusal(&claim) {
                    // Dropping the claims made so far forgets them.
                    return Err(refused);
                }
                claims.push((key, Some(claim)));
            }
        }
        None => claims.extend(keys.map(|key| (key, None))),
    }
    let publications = claims.into_iter().map(|(key, claim)| {
        let payload = payload.clone();
        let shared = &shared;
        let once = once.as_deref().unwrap_or_default();
        async move {
            let room = key.room.to_string();
            let published = match claim {
                Some(Claim::New(guard)) => publish_claimed(shared, key, payload, once, guard).await,
                Some(known) => answer(known),
                None => publish_one(shared, key, payload, None).await,
            };
            match published {
                Ok(position) => json!({"room": room, "position": encoding::position(position)}),
                Err(e) => {
                    json!({"room": room, "error": {"code": e.code.label(), "message": e.message}})
                }
            }
        }
    });
    let results = futures::future::join_all(publications).await;
    Ok(Json(json!({ "results": results })))
}
