//! The OpenAPI 3.1 document of the API, built from the route table ([`super::routes`]) so it
//! lists exactly what the router serves.

use serde_json::{json, Map, Value};

use super::error::Code;
use super::{routes, Auth};

/// The document, built once: it describes the routes, which never change while the process
/// runs, and building it for every request made it the costliest thing an anonymous peer could
/// ask for (outside audit: pipelined requests for it slowed every other client).
pub async fn serve() -> impl axum::response::IntoResponse {
    static DOCUMENT: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| bytes::Bytes::from(document().to_string().into_bytes()));
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.clone(),
    )
}

pub fn document() -> Value {
    let codes: Vec<&str> = Code::ALL.iter().map(|c| c.label()).collect();
    let error = json!({"$ref": "#/components/schemas/Error"});
    let mut paths = Map::new();
    for route in routes() {
        let mut operation = json!({
            "summary": route.summary,
            "responses": {
                "200": {
                    "description": "done",
                    "content": {"application/json": {"schema": route.response}},
                },
                "default": {
                    "description": format!("refused; `error.code` is one of {}", codes.join(", ")),
                    "content": {"application/json": {"schema": error}},
                },
            },
        });
        match route.auth {
            Auth::ApiKey => operation["security"] = json!([{"apiKey": []}]),
            Auth::ApiKeyOrToken => {
                operation["security"] = json!([{"apiKey": []}, {"token": []}]);
            }
            Auth::Public => operation["security"] = json!([]),
        }
        if let Some(schema) = route.request {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": schema}},
            });
        } else if route.method == "post" {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                }},
            });
        }
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                let schema = match name {
                    "room" => super::room_schema(),
                    _ => json!({"type": "string"}),
                };
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        if super::publish::TENANT_QUERY_ROUTES.contains(&route.path) {
            parameters.push(json!({
                "name": "tenant",
                "in": "query",
                "required": false,
                "description": "the tenant to publish in, with an admin key (another key's or a token's own tenant otherwise, and only that one)",
                "schema": super::tenant_schema(),
            }));
        }
        if super::publish::IDEMPOTENT_ROUTES.contains(&route.path) {
            parameters.push(json!({
                "name": "Idempotency-Key",
                "in": "header",
                "required": false,
                "description": "a repeat within 5 minutes publishes nothing and gets the first answer",
                "schema": {"type": "string", "minLength": 1, "maxLength": crate::idempotency::MAX_KEY_LEN},
            }));
        }
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method] = operation;
    }
    let number = json!({"type": ["string", "integer"], "pattern": "^[0-9]+$"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Quiver backend API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a key from `[api] keys`",
                },
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "a client token (publish only)",
                },
            },
            "schemas": {
                "Position": {
                    "description": "a position in a room's history; its numbers are decimal \
                                    strings (they exceed 2^53); requests may send numbers",
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["epoch", "offset"],
                            "properties": {"epoch": number, "offset": number},
                        },
                    ],
                },
                "ErrorBody": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": codes},
                        "message": {"type": "string"},
                        "disconnected_here": {
                            "type": "integer",
                            "description": "on a 503 from disconnect or revoke: the sessions \
                                            it ended on the instance that answered (applied \
                                            there, not told to the others; retry)",
                        },
                        "unsubscribed_here": {
                            "type": "integer",
                            "description": "on a 503 from unsubscribe: the subscriptions it \
                                            ended on the instance that answered",
                        },
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"$ref": "#/components/schemas/ErrorBody"}},
                },
            },
        },
    })
}
