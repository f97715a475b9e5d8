//! The HTTP API for backends, under `/api/v1` (PROTOCOL.md §10, README "Backend API").
//!
//! Every endpoint is in one route table, [`routes`]: the router is built from it, and so is the
//! OpenAPI document at `/api/v1/openapi.json` (`openapi.rs`), so neither can miss a route.
//! Errors have one JSON shape (`error.rs`); bodies are size-limited; keys are checked in
//! constant time (`auth.rs`); positions are decimal strings (`encoding.rs`).

mod auth;
pub mod client_rate;
/// Protocol values as JSON (positions, decimal u64s), shared with the SSE adapter.
pub(crate) mod encoding;
mod error;
mod openapi;
mod publish;
mod rooms;
mod sessions;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use serde_json::{json, Value};

pub use error::{not_found, Code};

use crate::log_budget::{LogBudget, Summary};
use crate::server::Shared;

/// Where the API lives.
pub const PREFIX: &str = "/api/v1";

/// How an endpoint is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer KEY` with a key from `[api] keys`.
    ApiKey,
    /// An API key, or a client token (JWT) checked like a client's.
    ApiKeyOrToken,
    /// None.
    Public,
}

/// One endpoint: what the router serves and what the OpenAPI document says about it.
pub struct Route {
    /// `get` or `post` (lower case, as OpenAPI spells it).
    pub method: &'static str,
    /// The full path, `{name}` for a path parameter.
    pub path: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    /// The JSON request body's schema (`None`: no JSON body).
    pub request: Option<Value>,
    /// The 200 answer's schema.
    pub response: Value,
    handler: fn() -> MethodRouter<Arc<Shared>>,
}

fn position_schema() -> Value {
    json!({"$ref": "#/components/schemas/Position"})
}

/// A JSON object with exactly these properties.
fn object(required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    })
}

/// `schema` needing one (`oneOf`: exactly one; `anyOf`: at least one) of `fields`, as the
/// handler checks, so a body valid by the document is never refused for it. A field that is
/// `null` is left out (README), so it counts only when it is not `null`.
fn one_of(mut schema: Value, keyword: &str, fields: &[&str]) -> Value {
    schema[keyword] = fields
        .iter()
        .map(|f| json!({"required": [f], "properties": {*f: {"not": {"type": "null"}}}}))
        .collect();
    schema
}

fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// An optional field's schema: `null` is leaving the field out (README "Backend API"), so the
/// document takes it wherever the handler does.
fn nullable(mut schema: Value) -> Value {
    if let Some(single) = schema["type"].as_str() {
        schema["type"] = json!([single, "null"]);
    }
    schema
}

/// A tenant id as `TenantId::parse` takes it. The schemas below say what the handlers check,
/// so a body valid by the document is not refused 400 for a value in it (outside audit 111,
/// F7: `session`, `reason`, `expires_at`, `limit` and `tenant` were bare types).
pub(crate) fn tenant_schema() -> Value {
    json!({
        "type": "string",
        "pattern": format!("^[A-Za-z0-9_-]{{1,{}}}$", quiver_proto::room::MAX_TENANT_LEN),
        "description": "a tenant id; required with an admin key, a tenant's key may only name its own",
    })
}

/// A room name as `RoomName::parse` takes it (ASCII only, so characters are bytes).
pub(crate) fn room_schema() -> Value {
    json!({
        "type": "string",
        "maxLength": quiver_proto::room::MAX_ROOM_LEN,
        "pattern": format!(
            "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+){{0,{}}}$",
            quiver_proto::room::MAX_ROOM_DEPTH - 1
        ),
        "description": "dot-separated tokens of A-Z a-z 0-9 _ -, at most 128 bytes and 16 tokens",
    })
}

/// Every API endpoint.
pub fn routes() -> Vec<Route> {
    let tenant = nullable(tenant_schema());
    let room = room_schema();
    let string = json!({"type": "string"});
    // A user id or token id the way tokens carry them: 1 to 256 bytes of UTF-8 (the handlers
    // count bytes; a schema counts characters, so this is the closest it can say).
    let token_id = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": crate::auth::MAX_SUB_BYTES,
        "description": "1 to 256 bytes of UTF-8",
    });
    // A session id as `Welcome` gives it (`check_session`).
    let session = nullable(json!({
        "type": "string",
        "minLength": 1,
        "maxLength": crate::control::MAX_SESSION_BYTES,
        "description": "1 to 64 bytes: a session id as Welcome gives it",
    }));
    let reason = nullable(json!({
        "type": "string",
        "maxLength": crate::control::MAX_REASON,
        "description": "at most 256 bytes of UTF-8",
    }));
    let count = json!({"type": "integer", "minimum": 0});
    let flag = json!({"type": "boolean"});
    let base64 = json!({"type": "string", "format": "byte"});
    let position = position_schema();
    vec![
        Route {
            method: "post",
            path: "/api/v1/publish/{room}",
            summary: "Publish the raw request body into a room (`?tenant=` with an admin key).",
            auth: Auth::ApiKeyOrToken,
            request: None,
            response: object(&["position"], json!({"position": position})),
            handler: || post(publish::publish),
        },
        Route {
            method: "post",
            path: "/api/v1/broadcast",
            summary: "Publish one payload into up to 100 rooms; each room's outcome in `results`.",
            auth: Auth::ApiKey,
            request: Some(one_of(
                object(
                    &["rooms"],
                    json!({
                        "tenant": tenant,
                        "rooms": {
                            "type": "array",
                            "items": room,
                            "minItems": 1,
                            "maxItems": publish::MAX_BROADCAST_ROOMS,
                        },
                        "payload": {"type": "string", "description": "text, published as UTF-8"},
                        "payload_base64": base64,
                    }),
                ),
                "oneOf",
                &["payload", "payload_base64"],
            )),
            response: object(
                &["results"],
                json!({"results": array(json!({
                    "type": "object",
                    "required": ["room"],
                    "properties": {
                        "room": string,
                        "position": position,
                        "error": {"$ref": "#/components/schemas/ErrorBody"},
                    },
                }))}),
            ),
            handler: || post(publish::broadcast),
        },
        Route {
            method: "post",
            path: "/api/v1/presence",
            summary: "Every session subscribed to a room, on every instance (at most 1,000, \
                      sorted; `truncated` when there were more), and how many sessions and \
                      distinct users there are in all.",
            auth: Auth::ApiKey,
            request: Some(object(&["room"], json!({"tenant": tenant, "room": room}))),
            response: object(
                &["room", "members", "truncated", "sessions", "users"],
                json!({
                    "room": string,
                    "members": array(object(
                        &["user", "session"],
                        json!({"user": string, "session": string}),
                    )),
                    "truncated": flag,
                    "sessions": count,
                    "users": count,
                }),
            ),
            handler: || post(rooms::presence),
        },
        Route {
            method: "post",
            path: "/api/v1/history",
            summary: "A page of a history room after `since` (from the oldest kept when absent), \
                      oldest first.",
            auth: Auth::ApiKey,
            request: Some(object(
                &["room"],
                json!({
                    "tenant": tenant,
                    "room": room,
                    "since": position,
                    "limit": nullable(json!({
                        "type": "integer",
                        "minimum": 0,
                        "maximum": u32::MAX,
                        "default": 100,
                        "description": "a u32; over 1000 taken as 1000",
                    })),
                }),
            )),
            response: object(
                &["room", "position", "publications", "truncated"],
                json!({
                    "room": string,
                    "position": position,
                    "publications": array(object(
                        &["position", "payload"],
                        json!({"position": position, "payload": base64}),
                    )),
                    "truncated": flag,
                }),
            ),
            handler: || post(rooms::history),
        },
        Route {
            method: "post",
            path: "/api/v1/disconnect",
            summary: "End a user's or a session's sessions on every instance (goodbye 3009; \
                      with `reconnect`, goodbye 3011: the clients reconnect).",
            auth: Auth::ApiKey,
            request: Some(one_of(
                object(
                    &[],
                    json!({
                        "tenant": tenant,
                        "user": nullable(token_id.clone()),
                        "session": session,
                        "reason": reason,
                        "reconnect": nullable(flag.clone()),
                    }),
                ),
                "anyOf",
                &["user", "session"],
            )),
            response: object(&["disconnected_here"], json!({"disconnected_here": count})),
            handler: || post(sessions::disconnect),
        },
        Route {
            method: "post",
            path: "/api/v1/revoke",
            summary: "Refuse a token (by `jti`) on every instance until `expires_at` (its `exp`) \
                      plus `auth.leeway`, and end its sessions.",
            auth: Auth::ApiKey,
            request: Some(object(
                &["jti", "expires_at"],
                json!({
                    "tenant": tenant,
                    "jti": token_id,
                    "expires_at": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": u64::MAX,
                        "description": "Unix seconds: the token's `exp` (a u64)",
                    },
                }),
            )),
            response: object(&["disconnected_here"], json!({"disconnected_here": count})),
            handler: || post(sessions::revoke),
        },
        Route {
            method: "post",
            path: "/api/v1/unsubscribe",
            summary: "End a user's subscription to a room on every instance (unsolicited \
                      `Unsubscribed`, code `unsubscribed`).",
            auth: Auth::ApiKey,
            request: Some(object(
                &["user", "room"],
                json!({
                    "tenant": tenant,
                    "user": token_id,
                    "room": room,
                    "session": session,
                    "reason": reason,
                }),
            )),
            response: object(&["unsubscribed_here"], json!({"unsubscribed_here": count})),
            handler: || post(sessions::unsubscribe),
        },
        Route {
            method: "post",
            path: "/api/v1/rooms",
            summary: "The tenant's rooms with subscribers anywhere in the cluster.",
            auth: Auth::ApiKey,
            request: Some(object(&[], json!({"tenant": tenant}))),
            response: object(
                &["rooms", "truncated"],
                json!({
                    "rooms": array(object(
                        &["room", "subscribers"],
                        json!({"room": string, "subscribers": count}),
                    )),
                    "truncated": flag,
                }),
            ),
            handler: || post(rooms::rooms),
        },
        Route {
            method: "post",
            path: "/api/v1/info",
            summary: "Every instance's sessions, subscriptions and rooms (a tenant's key: its \
                      tenant's).",
            auth: Auth::ApiKey,
            request: Some(object(&[], json!({"tenant": tenant}))),
            response: object(
                &["nodes"],
                json!({"nodes": array(object(
                    &["node", "sessions", "subscriptions", "rooms"],
                    json!({
                        "node": string,
                        "sessions": count,
                        "subscriptions": count,
                        "rooms": count,
                    }),
                ))}),
            ),
            handler: || post(rooms::info),
        },
        Route {
            method: "get",
            path: "/api/v1/openapi.json",
            summary: "This document.",
            auth: Auth::Public,
            request: None,
            response: json!({"type": "object"}),
            handler: || get(openapi::serve),
        },
    ]
}

/// The `/api/v1` router, to be nested at [`PREFIX`]. Before a route's handler runs, its
/// request's credential is checked when the request has a body (401 at once, so no one without
/// a key or token can make the server hold a body), and the whole body is read within
/// `timeouts.handshake` (408 otherwise) under the route's size limit (413, at once when
/// `Content-Length` says so): the raw payload's `max_payload` for `publish`, twice that plus
/// 64 KiB for JSON bodies (base64 and JSON escapes).
pub fn router(shared: &Arc<Shared>) -> Router<Arc<Shared>> {
    let max_payload = shared.config.limits.max_payload as usize;
    let mut api = Router::new();
    for route in routes() {
        let path = route.path.strip_prefix(PREFIX).unwrap_or(route.path);
        let rule = BodyRule {
            auth: route.auth,
            size: if route.request.is_some() {
                max_payload.saturating_mul(2).saturating_add(64 * 1024)
            } else {
                max_payload
            },
            deadline: shared.config.timeouts.handshake,
        };
        let shared = shared.clone();
        let guarded = (route.handler)()
            .layer(DefaultBodyLimit::max(rule.size))
            .layer(axum::middleware::from_fn(move |request, next| {
                read_body(shared.clone(), rule, request, next)
            }));
        api = api.route(path, guarded);
    }
    api.fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(log_credential_refusals))
}

/// API requests refused for their credential logged per second at most: a peer needs no key
/// to be refused. `quiver_api_refusals_total{code="unauthorized"}` counts every one.
static CREDENTIAL_REFUSALS_LOGGED: LogBudget = LogBudget::summarised(
    20,
    Summary::Info(
        "more API requests were refused for their credential than logged (quiver_api_refusals_total counts all)",
    ),
);

/// Bytes of a refused request's path that are logged.
const MAX_LOGGED_PATH: usize = 256;

/// Logs a request answered 401 (no valid key or token) or 403 (a key or token that may not act
/// there), within [`CREDENTIAL_REFUSALS_LOGGED`]: who asked, and for what, never the
/// credential. A backend deployed with a stale key, or someone guessing keys, shows in the log
/// (outside audit 55, L7: 1,000 wrong keys left no trace).
async fn log_credential_refusals(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let remote = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    let method = request.method().clone();
    // A `Uri` clone shares its bytes: the path is only written out for a refusal.
    let uri = request.uri().clone();
    let response = next.run(request).await;
    let status = response.status();
    if matches!(status.as_u16(), 401 | 403) && CREDENTIAL_REFUSALS_LOGGED.admit_summarised() {
        // The path as the client sent it (this router is nested under [`PREFIX`]), cut: a
        // request head may be 64 KiB, and 20 lines a second of that wrote 1.3 MB of log a
        // second from one connection (outside audit 62).
        let path = uri.path();
        let cut = if path.len() > MAX_LOGGED_PATH {
            "…"
        } else {
            ""
        };
        let path = format!(
            "{PREFIX}{}{cut}",
            crate::text::prefix(path, MAX_LOGGED_PATH)
        );
        // `path` as a `&str` field: quoted and escaped in text, a plain string in JSON.
        tracing::info!(
            remote = remote.map(tracing::field::display),
            %method,
            path = path.as_str(),
            status = status.as_u16(),
            "api request refused"
        );
    }
    response
}

/// What a route asks of a request's body before its handler runs.
#[derive(Debug, Clone, Copy)]
struct BodyRule {
    auth: Auth,
    size: usize,
    deadline: std::time::Duration,
}

/// Checks the credential of a request that has a body, then reads the body whole under its
/// size limit and deadline, and hands the request on. Without this a peer that sends headers
/// and then no body (or a byte now and then) would hold its connection, and a place under
/// `max_sessions`, for ever (hyper's header timeout ends with the headers), and anyone could
/// make the server buffer bodies it will refuse.
async fn read_body(
    shared: Arc<Shared>,
    rule: BodyRule,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let has_body =
        declared.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING);
    if rule.auth == Auth::Public {
        // A public route takes no body: it answers without reading one, and a body that was
        // sent anyway is not waited for (the connection closes after the answer).
        let (parts, _) = request.into_parts();
        let response = next
            .run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::empty(),
            ))
            .await;
        return if has_body {
            with_close(response)
        } else {
            response
        };
    }
    if has_body {
        if let Err(refusal) = may_send_a_body(&shared, rule.auth, auth::bearer(headers)) {
            return with_close(refusal.into_response());
        }
    }
    let too_large = || {
        error::ApiError::new(
            Code::PayloadTooLarge,
            format!("request body larger than {} bytes", rule.size),
        )
    };
    if declared.is_some_and(|n| n > rule.size as u64) {
        return with_close(too_large().into_response());
    }
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, rule.size);
    let bytes = match tokio::time::timeout(rule.deadline, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            // `to_bytes` fails past the limit (a body without a length) or when the body
            // breaks off.
            let limited = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let refusal = if limited {
                too_large()
            } else {
                error::ApiError::bad_request(format!("request body: {e}"))
            };
            return with_close(refusal.into_response());
        }
        Err(_) => {
            let late = error::ApiError::new(
                Code::RequestTimeout,
                format!(
                    "the request body did not arrive within {} ms",
                    rule.deadline.as_millis()
                ),
            );
            return with_close(late.into_response());
        }
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// Whether the credential may send this route a body: an API key, or for `publish` a valid
/// client token. The handler checks again what the caller may do with it.
fn may_send_a_body(shared: &Shared, auth: Auth, credential: &str) -> Result<(), error::ApiError> {
    if auth::api_key(shared, credential).is_some() {
        return Ok(());
    }
    match auth {
        Auth::ApiKeyOrToken => shared
            .authenticate(credential)
            .map(drop)
            .map_err(|e| error::ApiError::not_a_credential(credential, &e)),
        _ => Err(auth::key_required(credential)),
    }
}

/// The rest of an unread body is not worth waiting for: the connection closes after the answer.
fn with_close(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}
