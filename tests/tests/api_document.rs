//! The backend API's OpenAPI document against the router and the handlers: every route is in
//! it, its request schemas require what the handlers require and bound what they bound, and
//! `null` for an optional field is the same as leaving it out. Apart from `http_api.rs`.

use quiver_tests::api::*;
use quiver_tests::*;

/// Where the handler needs one of two fields, the document says so (`oneOf` / `anyOf`), so a
/// body a generated client or validator takes for valid is not refused 400 (outside audit): a
/// body with neither field breaks the schema and is refused; one with a field is served.
#[tokio::test]
async fn request_schemas_require_what_the_handlers_require() -> anyhow::Result<()> {
    let server = TestServer::start_with(with_keys).await?;
    let doc = openapi(&server).await?;
    let schema = |path: &str| {
        doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"].clone()
    };
    let alternatives = |schema: &serde_json::Value, keyword: &str| -> Vec<String> {
        schema[keyword]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["required"][0].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        alternatives(&schema("/api/v1/broadcast"), "oneOf"),
        ["payload", "payload_base64"]
    );
    assert_eq!(
        alternatives(&schema("/api/v1/disconnect"), "anyOf"),
        ["user", "session"]
    );
    // `null` is leaving a field out: it does not count as the one named (`{"user": null}` is
    // refused 400).
    for (path, keyword) in [
        ("/api/v1/disconnect", "anyOf"),
        ("/api/v1/broadcast", "oneOf"),
    ] {
        for alternative in schema(path)[keyword].as_array().into_iter().flatten() {
            let field = alternative["required"][0].as_str().unwrap_or_default();
            assert_eq!(
                alternative["properties"][field]["not"]["type"], "null",
                "{path} {field}"
            );
        }
    }
    for (path, field) in [
        ("/api/v1/disconnect", "user"),
        ("/api/v1/unsubscribe", "user"),
        ("/api/v1/revoke", "jti"),
    ] {
        assert_eq!(
            schema(path)["properties"][field]["minLength"],
            1,
            "{path} {field}"
        );
    }
    // The handlers' bounds on values, in the document too (outside audit 111, F7): each of
    // these bodies was valid by the document and refused 400.
    let tenant_pattern = "^[A-Za-z0-9_-]{1,64}$";
    for (path, field, keyword, value) in [
        (
            "/api/v1/disconnect",
            "session",
            "minLength",
            serde_json::json!(1),
        ),
        (
            "/api/v1/disconnect",
            "session",
            "maxLength",
            serde_json::json!(64),
        ),
        (
            "/api/v1/unsubscribe",
            "session",
            "minLength",
            serde_json::json!(1),
        ),
        (
            "/api/v1/unsubscribe",
            "session",
            "maxLength",
            serde_json::json!(64),
        ),
        (
            "/api/v1/disconnect",
            "reason",
            "maxLength",
            serde_json::json!(256),
        ),
        (
            "/api/v1/unsubscribe",
            "reason",
            "maxLength",
            serde_json::json!(256),
        ),
        ("/api/v1/history", "limit", "minimum", serde_json::json!(0)),
        (
            "/api/v1/history",
            "limit",
            "maximum",
            serde_json::json!(u32::MAX),
        ),
        (
            "/api/v1/revoke",
            "expires_at",
            "minimum",
            serde_json::json!(0),
        ),
        (
            "/api/v1/revoke",
            "expires_at",
            "maximum",
            serde_json::json!(u64::MAX),
        ),
        (
            "/api/v1/presence",
            "room",
            "maxLength",
            serde_json::json!(128),
        ),
        (
            "/api/v1/history",
            "room",
            "maxLength",
            serde_json::json!(128),
        ),
        (
            "/api/v1/unsubscribe",
            "room",
            "maxLength",
            serde_json::json!(128),
        ),
    ] {
        assert_eq!(
            schema(path)["properties"][field][keyword],
            value,
            "{path} {field} {keyword}"
        );
    }
    let routes = quiver_server::api::routes();
    for route in routes.iter().filter(|r| r.request.is_some()) {
        assert_eq!(
            schema(route.path)["properties"]["tenant"]["pattern"],
            tenant_pattern,
            "{} tenant",
            route.path
        );
    }
    assert_eq!(
        doc["paths"]["/api/v1/publish/{room}"]["post"]["parameters"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "tenant"))
            .map(|p| p["schema"]["pattern"].clone()),
        Some(serde_json::json!(tenant_pattern)),
        "publish ?tenant="
    );
    let room_pattern = schema("/api/v1/presence")["properties"]["room"]["pattern"].clone();
    assert!(room_pattern.is_string(), "room names have a pattern");
    assert_eq!(
        schema("/api/v1/broadcast")["properties"]["rooms"]["items"]["pattern"],
        room_pattern
    );
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("http://{}{path}", server.http))
            .bearer_auth(ACME)
            .json(&body)
            .send()
    };
    for (path, without, with) in [
        (
            "/api/v1/broadcast",
            serde_json::json!({"rooms": ["chat.x"]}),
            serde_json::json!({"rooms": ["chat.x"], "payload_base64": "aGk="}),
        ),
        (
            "/api/v1/disconnect",
            serde_json::json!({"reason": "bye"}),
            serde_json::json!({"session": "nobody"}),
        ),
        (
            "/api/v1/disconnect",
            serde_json::json!({"user": null, "session": null}),
            serde_json::json!({"user": null, "session": "nobody"}),
        ),
        // An empty user id names nobody: refused, and the schema says 1 character at least.
        (
            "/api/v1/disconnect",
            serde_json::json!({"user": ""}),
            serde_json::json!({"user": "nobody"}),
        ),
        // At the bounds the document gives, served; past them, refused.
        (
            "/api/v1/disconnect",
            serde_json::json!({"session": "s".repeat(65)}),
            serde_json::json!({"session": "s".repeat(64)}),
        ),
        (
            "/api/v1/unsubscribe",
            serde_json::json!({"user": "u", "room": "chat.x", "session": ""}),
            serde_json::json!({"user": "u", "room": "chat.x", "session": "s"}),
        ),
        (
            "/api/v1/disconnect",
            serde_json::json!({"user": "u", "reason": "r".repeat(257)}),
            serde_json::json!({"user": "u", "reason": "r".repeat(256)}),
        ),
        (
            "/api/v1/history",
            serde_json::json!({"room": "h.a", "limit": u64::from(u32::MAX) + 1}),
            serde_json::json!({"room": "h.a", "limit": u32::MAX}),
        ),
        (
            "/api/v1/revoke",
            serde_json::json!({"jti": "j", "expires_at": -1}),
            serde_json::json!({"jti": "j", "expires_at": u64::MAX}),
        ),
        (
            "/api/v1/rooms",
            serde_json::json!({"tenant": "ac.me"}),
            serde_json::json!({"tenant": "acme"}),
        ),
    ] {
        assert_eq!(post(path, without).await?.status(), 400, "{path}");
        assert_eq!(post(path, with).await?.status(), 200, "{path}");
    }
    Ok(())
}

/// README: "`null` for an optional field is the same as leaving it out". Every optional field
/// of every JSON route takes `null`, in the document and in the handler (outside audit 111,
/// F3: `"reconnect": null` was a 400 "invalid type: null"). `payload` and `payload_base64` are
/// the broadcast's one-of-two, not optional: left out.
#[tokio::test]
async fn null_optional_fields_are_absent_ones() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        with_keys(c);
        c.namespaces.push(quiver_server::config::NamespaceConfig {
            name: "p".into(),
            presence: true,
            ..Default::default()
        });
    })
    .await?;
    let doc = openapi(&server).await?;
    let exp = quiver_server::auth::unix_now() + 3600;
    // A body each route serves; with `user` and `session` both, either may be null.
    let base = |path: &str| match path {
        "/api/v1/broadcast" => Some(serde_json::json!({"rooms": ["chat.x"], "payload": "x"})),
        "/api/v1/presence" => Some(serde_json::json!({"room": "p.x"})),
        "/api/v1/history" => Some(serde_json::json!({"room": "h.a"})),
        "/api/v1/disconnect" => Some(serde_json::json!({"user": "u", "session": "nobody"})),
        "/api/v1/revoke" => Some(serde_json::json!({"jti": "j", "expires_at": exp})),
        "/api/v1/unsubscribe" => Some(serde_json::json!({"user": "u", "room": "chat.x"})),
        "/api/v1/rooms" | "/api/v1/info" => Some(serde_json::json!({})),
        _ => None,
    };
    let http = reqwest::Client::new();
    let mut tried = 0;
    for route in quiver_server::api::routes() {
        if route.request.is_none() {
            continue;
        }
        // As the served document says it.
        let schema = &doc["paths"][route.path]["post"]["requestBody"]["content"]
            ["application/json"]["schema"];
        let base = base(route.path).ok_or_else(|| anyhow::anyhow!("no body for {}", route.path))?;
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|f| f.as_str()).collect())
            .unwrap_or_default();
        let properties = schema["properties"].as_object().expect("properties");
        for (field, property) in properties {
            if required.contains(&field.as_str()) || field.starts_with("payload") {
                continue;
            }
            let documented = property["type"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "null"))
                || property["$ref"] == "#/components/schemas/Position";
            assert!(
                documented,
                "{} {field}: the schema refuses null",
                route.path
            );
            let mut body = base.clone();
            body[field.as_str()] = serde_json::Value::Null;
            let response = http
                .post(format!("http://{}{}", server.http, route.path))
                .bearer_auth(ACME)
                .json(&body)
                .send()
                .await?;
            let status = response.status().as_u16();
            let answer = response.text().await?;
            assert_eq!(status, 200, "{} {body}: {answer}", route.path);
            tried += 1;
        }
    }
    assert!(tried >= 16, "{tried} optional fields tried");
    Ok(())
}

/// The OpenAPI document lists every route of the route table the router is built from, and
/// nothing else; every listed route is served (answers neither 404 nor 405).
#[tokio::test]
async fn every_route_is_in_the_openapi_document() -> anyhow::Result<()> {
    let server = TestServer::start_with(with_keys).await?;
    let doc = openapi(&server).await?;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let routes = quiver_server::api::routes();
    let mut operations = 0;
    for (path, item) in paths {
        operations += item.as_object().map_or(0, |o| o.len());
        assert!(path.starts_with("/api/v1/"), "{path}");
    }
    assert_eq!(operations, routes.len(), "one operation per route, no more");
    for path in ["/api/v1/publish/{room}", "/api/v1/broadcast"] {
        let parameters = doc["paths"][path]["post"]["parameters"].as_array();
        assert!(
            parameters.is_some_and(|p| p
                .iter()
                .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")),
            "{path} documents its Idempotency-Key header"
        );
    }
    // The raw-body publish names its tenant in the query, and says so.
    let parameters = doc["paths"]["/api/v1/publish/{room}"]["post"]["parameters"].as_array();
    assert!(
        parameters.is_some_and(|p| p
            .iter()
            .any(|p| p["name"] == "tenant" && p["in"] == "query")),
        "publish documents ?tenant="
    );
    let http = reqwest::Client::new();
    for route in &routes {
        let operation = &doc["paths"][route.path][route.method];
        assert!(
            operation.is_object(),
            "{} {} is not documented",
            route.method,
            route.path
        );
        assert!(operation["responses"]["200"].is_object());
        assert!(operation["responses"]["default"].is_object());
        let request = request_for(&http, &server, route)?;
        let status = request
            .bearer_auth(ACME)
            .body("{}")
            .send()
            .await?
            .status()
            .as_u16();
        assert!(
            status != 404 && status != 405,
            "{} {}: {status}",
            route.method,
            route.path
        );
    }
    Ok(())
}
