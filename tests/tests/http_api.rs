//! The HTTP side: backend publish API, health, and development-only endpoints.

use bytes::Bytes;
use quiver_tests::api::*;
use quiver_tests::*;

#[tokio::test]
async fn backends_publish_over_http() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.limits.max_payload = 1000).await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "sub")).await?;
    let mut room = sub.subscribe("orders.new").await?;
    let http = reqwest::Client::new();
    let url = |room: &str| format!("http://{}/api/v1/publish/{room}", server.http);
    let backend = token("acme", "backend", &[], &["orders.>"], 60);

    let ok = http
        .post(url("orders.new"))
        .bearer_auth(&backend)
        .body("order 1")
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    assert_eq!(room.payload().await?, Bytes::from_static(b"order 1"));
    // The scheme is case-insensitive (RFC 9110 §11.1), as on the session transports.
    for scheme in ["bearer", "BEARER"] {
        let ok = http
            .post(url("orders.new"))
            .header("authorization", format!("{scheme} {backend}"))
            .body(scheme)
            .send()
            .await?;
        assert_eq!(ok.status(), 200, "{scheme}");
        assert_eq!(room.payload().await?, Bytes::from(scheme));
    }

    let cases = [
        (
            url("orders.new"),
            "not-a-token".to_string(),
            "x".to_string(),
            401,
        ),
        (url("billing"), backend.clone(), "x".to_string(), 403),
        (url("orders..new"), backend.clone(), "x".to_string(), 400),
        (url("orders.new"), backend.clone(), "x".repeat(1001), 413),
        // Another tenant's backend can't reach acme's room, whatever it names.
        (
            url("orders.new"),
            token("other", "b", &[], &[">"], 60),
            "leak".into(),
            200,
        ),
    ];
    for (u, t, body, status) in cases {
        let r = http.post(u).bearer_auth(t).body(body).send().await?;
        assert_eq!(r.status(), status);
        if status == 401 {
            // Either credential could have been meant: both are named (outside audit 48, F5:
            // a mistyped API key was told only that it was a malformed token).
            let answer: serde_json::Value = r.json().await?;
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("not an API key of this server, nor a valid client token"),
                "{answer}"
            );
        }
    }
    let marker = http
        .post(url("orders.new"))
        .bearer_auth(&backend)
        .body("order 2")
        .send()
        .await?;
    assert_eq!(marker.status(), 200);
    assert_eq!(
        room.payload().await?,
        Bytes::from_static(b"order 2"),
        "nothing else arrived"
    );
    Ok(())
}

#[tokio::test]
async fn health_and_no_dev_endpoints_outside_dev_mode() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let get = |path: &str| reqwest::get(format!("http://{}{path}", server.http));
    assert_eq!(get("/healthz").await?.status(), 200);
    assert_eq!(get("/readyz").await?.status(), 200);
    assert_eq!(get("/dev/bootstrap").await?.status(), 404);
    assert_eq!(get("/").await?.status(), 404);
    let js = get("/quiver.js").await?;
    assert_eq!(js.status(), 200);
    Ok(())
}

/// `GET /dev/bootstrap` with `Host` `host`: the status.
async fn bootstrap_status(server: &TestServer, host: &str) -> anyhow::Result<u16> {
    bootstrap_status_at(server, "/dev/bootstrap", host).await
}

/// The same, with the request target as given (origin or absolute form).
async fn bootstrap_status_at(server: &TestServer, target: &str, host: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.http).await?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {answer:?}"))?;
    Ok(status)
}

/// A development token goes only to a page loaded from `localhost` or an IP address: under any
/// other name the page may be a website rebound onto this machine by its DNS, which could mint
/// tokens and act as any demo user (outside HTTP audit, F3).
#[tokio::test]
async fn dev_mode_bootstrap_refuses_pages_of_other_names() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.auth.jwt_secret = None;
        c.demo = true;
    })
    .await?;
    let port = server.http.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "[::1]".into(),
    ] {
        assert_eq!(bootstrap_status(&server, &host).await?, 200, "{host}");
    }
    for host in [
        format!("evil.example:{port}"),
        "localhost.evil.example".into(),
        // Not `uri-host[:port]`: taken for the name they end in before (regression audit 12).
        format!("evil.example@127.0.0.1:{port}"),
        "%6cocalhost".into(),
        "localhost..".into(),
    ] {
        assert_eq!(bootstrap_status(&server, &host).await?, 403, "{host}");
    }
    // An absolute request target's authority is the page's, whatever `Host` says.
    let local = format!("127.0.0.1:{port}");
    for (target, status) in [
        ("http://evil.example/dev/bootstrap".to_string(), 403),
        (format!("http://{local}/dev/bootstrap"), 200),
    ] {
        assert_eq!(
            bootstrap_status_at(&server, &target, &local).await?,
            status,
            "{target}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn dev_mode_bootstrap_hands_out_a_working_token() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.auth.jwt_secret = None;
        c.demo = true;
    })
    .await?;
    let boot: serde_json::Value = reqwest::get(format!("http://{}/dev/bootstrap", server.http))
        .await?
        .json()
        .await?;
    assert_eq!(boot["cert_sha256"], hex::encode(server.hash));
    assert_eq!(boot["tenant"], "demo");
    let token = boot["token"].as_str().unwrap_or_default();
    let mut c = Raw::connect(&server, token).await?;
    // The demo publisher feeds the dashboard tiles.
    let mut tile = c.subscribe("dash.tile.0").await?;
    let payload = tile.payload().await?;
    let value: serde_json::Value = serde_json::from_slice(&payload)?;
    assert!(value["v"].is_number());
    assert_eq!(
        reqwest::get(format!("http://{}/", server.http))
            .await?
            .status(),
        200
    );
    Ok(())
}

/// The error codes the OpenAPI document lists.
async fn documented_codes(server: &TestServer) -> anyhow::Result<Vec<String>> {
    let doc = openapi(server).await?;
    Ok(
        doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Every refusal, whatever refuses it (a handler, the body limit, the router), is the same JSON
/// shape with a documented code; a malformed body is a 400 with a message, never a 500.
#[tokio::test]
async fn every_api_error_has_one_shape_and_a_documented_code() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        with_keys(c);
        c.limits.max_payload = 1000;
    })
    .await?;
    let codes = documented_codes(&server).await?;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}/api/v1/{path}", server.http);
    let huge = "x".repeat(2 * 1000 + 64 * 1024 + 1);
    let cases = vec![
        (
            http.post(url("disconnect"))
                .json(&serde_json::json!({"user": "a"})),
            401,
            "unauthorized",
        ),
        (
            http.post(url("disconnect"))
                .bearer_auth(ACME)
                .body("{not json"),
            400,
            "bad_request",
        ),
        (
            http.post(url("disconnect")).bearer_auth(ACME).body(""),
            400,
            "bad_request",
        ),
        (
            http.post(url("disconnect")).bearer_auth(ACME).body("[1,2]"),
            400,
            "bad_request",
        ),
        (
            http.post(url("disconnect"))
                .bearer_auth(ACME)
                .body(r#"{"user":"a","nope":1}"#),
            400,
            "bad_request",
        ),
        (
            http.post(url("disconnect"))
                .bearer_auth(ACME)
                .body(r#"{"user":7}"#),
            400,
            "bad_request",
        ),
        (
            http.post(url("disconnect"))
                .bearer_auth(ACME)
                .body(vec![0xff, 0xfe, 0x00]),
            400,
            "bad_request",
        ),
        (
            http.post(url("disconnect"))
                .bearer_auth(ACME)
                .body(huge.clone()),
            413,
            "payload_too_large",
        ),
        (
            http.post(url("publish/h.a")).bearer_auth(ACME).body(huge),
            413,
            "payload_too_large",
        ),
        (
            http.post(url("publish/h.a"))
                .bearer_auth(ACME)
                .body("x".repeat(1001)),
            413,
            "payload_too_large",
        ),
        (
            http.post(url("publish/h..a")).bearer_auth(ACME).body("x"),
            400,
            "invalid_room",
        ),
        (
            http.post(url("publish/h.a?tenant=a.b"))
                .bearer_auth(ADMIN)
                .body("x"),
            400,
            "bad_request",
        ),
        (
            http.post(url("publish/h.a?what=1"))
                .bearer_auth(ACME)
                .body("x"),
            400,
            "bad_request",
        ),
        (
            http.get(url("disconnect")).bearer_auth(ACME),
            405,
            "method_not_allowed",
        ),
        (
            http.post(url("nothing-here")).bearer_auth(ACME),
            404,
            "not_found",
        ),
        // Beside `/api/v1/`'s routes, in the API's shape too (they were the plain 404).
        (http.get(url("")).bearer_auth(ACME), 404, "not_found"),
        (
            http.post(format!("http://{}/api", server.http)),
            404,
            "not_found",
        ),
        (
            http.get(format!("http://{}/api/", server.http)),
            404,
            "not_found",
        ),
        (
            http.post(format!("http://{}/api/v2/publish/h.a", server.http))
                .bearer_auth(ACME),
            404,
            "not_found",
        ),
        (
            http.post(url("history"))
                .bearer_auth(ACME)
                .body(r#"{"room":"h.a","since":{"epoch":"1","offset":"1"}}"#),
            409,
            "unrecoverable_position",
        ),
    ];
    for (request, status, code) in cases {
        let response = request.send().await?;
        let got = response.status().as_u16();
        let body: serde_json::Value = response.json().await?;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(codes.iter().any(|c| c == code), "{code} is not documented");
    }
    Ok(())
}

/// A refusal's message never grows with the request: a parser's text quoting a 60 KB query key
/// or JSON field name came back whole (twice for the query: 120 KB for a 60 KB request; outside
/// HTTP audit, F2). The query's refusal is in the API's own words.
#[tokio::test]
async fn refusals_do_not_echo_what_the_request_sent() -> anyhow::Result<()> {
    let server = TestServer::start_with(with_keys).await?;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}/api/v1/{path}", server.http);
    let long = "a".repeat(60_000);
    for (request, code) in [
        (
            http.post(url(&format!("publish/h.a?{long}=1")))
                .bearer_auth(ACME)
                .body("x"),
            "bad_request",
        ),
        (
            http.post(url("disconnect"))
                .bearer_auth(ACME)
                .body(format!(r#"{{"user":"a","{long}":1}}"#)),
            "bad_request",
        ),
    ] {
        let response = request.send().await?;
        assert_eq!(response.status(), 400);
        let body = response.text().await?;
        assert!(body.len() < 1_024, "{} bytes: {}", body.len(), &body[..200]);
        let body: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let response = http
        .post(url(&format!("publish/h.a?{long}=1")))
        .bearer_auth(ACME)
        .body("x")
        .send()
        .await?;
    let body: serde_json::Value = response.json().await?;
    assert_eq!(
        body["error"]["message"],
        "query string: only `tenant` is accepted, once, as UTF-8"
    );
    Ok(())
}

/// Every 401 carries a Bearer challenge, as RFC 9110 §15.5.2 requires (outside audit 111, F5):
/// `error="invalid_token"` (RFC 6750 §3.1) when a credential was sent and refused, none when
/// there was none; never anything of the request's.
#[tokio::test]
async fn unauthorized_answers_carry_a_bearer_challenge() -> anyhow::Result<()> {
    let server = TestServer::start_with(with_keys).await?;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}/api/v1/{path}", server.http);
    let plain = r#"Bearer realm="quiver-api""#;
    let invalid = r#"Bearer realm="quiver-api", error="invalid_token""#;
    let wrong = "wrong-key-0123456789abcdef0123456789";
    let expired = token_expiring_at("acme", "u", 1);
    let client = full_token("acme", "u");
    for (what, request, challenge) in [
        ("no key", http.post(url("rooms")), plain),
        ("no key, a body", http.post(url("rooms")).body("{}"), plain),
        (
            "a wrong key",
            http.post(url("rooms")).bearer_auth(wrong),
            invalid,
        ),
        (
            "a wrong key, a body",
            http.post(url("rooms")).bearer_auth(wrong).body("{}"),
            invalid,
        ),
        (
            "a client token where a key is required",
            http.post(url("rooms")).bearer_auth(&client),
            invalid,
        ),
        (
            "no credential to publish",
            http.post(url("publish/chat.r")).body("x"),
            plain,
        ),
        (
            "an expired token, a body",
            http.post(url("publish/chat.r"))
                .bearer_auth(&expired)
                .body("x"),
            invalid,
        ),
        (
            "an expired token, no body",
            http.post(url("publish/chat.r")).bearer_auth(&expired),
            invalid,
        ),
    ] {
        let response = request.send().await?;
        assert_eq!(response.status(), 401, "{what}");
        let got: Vec<&str> = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(got, [challenge], "{what}");
    }
    // Other refusals carry none.
    let forbidden = http
        .post(url("rooms"))
        .bearer_auth(ACME)
        .json(&serde_json::json!({"tenant": "other"}))
        .send()
        .await?;
    assert_eq!(forbidden.status(), 403);
    assert!(forbidden.headers().get("www-authenticate").is_none());
    Ok(())
}

/// Publishing with an API key: a tenant's key in its tenant, an admin key naming one. Positions
/// come back as decimal strings, exactly the position subscribers see (epochs exceed 2^53).
#[tokio::test]
async fn publish_with_an_api_key_answers_positions_as_strings() -> anyhow::Result<()> {
    let server = TestServer::start_with(with_keys).await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let mut room = sub.subscribe("h.a").await?;
    let http = reqwest::Client::new();
    let url = |q: &str| format!("http://{}/api/v1/publish/h.a{q}", server.http);
    let response = http
        .post(url(""))
        .bearer_auth(ACME)
        .body("one")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await?;
    let seen = match room.next().await?.event {
        quiver_proto::Event::Publication {
            position: Some(p),
            payload,
            ..
        } => {
            assert_eq!(payload, Bytes::from_static(b"one"));
            p
        }
        other => anyhow::bail!("expected a publication, got {other:?}"),
    };
    assert_eq!(body["position"]["epoch"], seen.epoch.to_string());
    assert_eq!(body["position"]["offset"], seen.offset.to_string());
    let admin = http
        .post(url("?tenant=acme"))
        .bearer_auth(ADMIN)
        .body("two")
        .send()
        .await?;
    assert_eq!(admin.status(), 200);
    assert_eq!(room.payload().await?, Bytes::from_static(b"two"));
    for (q, key, status) in [("", ADMIN, 400), ("?tenant=other", ACME, 403)] {
        let r = http.post(url(q)).bearer_auth(key).body("x").send().await?;
        assert_eq!(r.status(), status);
    }
    // A token for another tenant can't name acme.
    let r = http
        .post(url("?tenant=acme"))
        .bearer_auth(token("other", "b", &[], &[">"], 60))
        .body("x")
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    Ok(())
}

/// Whatever body reaches an endpoint, the answer is never a server error: a 2xx, or a 4xx in
/// the one error shape.
#[tokio::test]
async fn no_body_makes_the_api_fail() -> anyhow::Result<()> {
    let server = TestServer::start_with(with_keys).await?;
    let http = reqwest::Client::new();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"{\"tenant\": 5}".to_vec(),
        b"{\"room\": \"\", \"user\": \"\", \"rooms\": [\"\"]}".to_vec(),
        b"{\"room\": \"h.a\", \"since\": {\"epoch\": -1, \"offset\": 1e99}}".to_vec(),
        b"{\"room\": \"h.a\", \"limit\": 99999999999}".to_vec(),
        b"{\"jti\": \"x\", \"expires_at\": 18446744073709551615}".to_vec(),
        deep.into_bytes(),
        vec![0xff; 300],
    ];
    for route in quiver_server::api::routes() {
        for body in &bodies {
            let request = request_for(&http, &server, &route)?;
            let response = request.bearer_auth(ACME).body(body.clone()).send().await?;
            let status = response.status().as_u16();
            assert!(status < 500, "{} {}: {status}", route.method, route.path);
            if status >= 400 {
                let answer: serde_json::Value = response.json().await?;
                assert!(
                    answer["error"]["code"].is_string(),
                    "{}: {answer}",
                    route.path
                );
            }
        }
    }
    Ok(())
}

/// What RFC 9112 says a server refuses, refused, where hyper alone let it through (outside
/// SSE/API audit 2, G2): a transfer coding other than `chunked` alone is 501 (`gzip, chunked`
/// published the still-encoded bytes), an HTTP/1.1 request without `Host` or with two is 400.
#[tokio::test]
async fn requests_framed_against_http_1_1_are_refused() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await?;
    let status = |request: String| {
        let addr = server.http;
        async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await?;
            let text = String::from_utf8_lossy(&answer).to_string();
            anyhow::Ok(text.lines().next().unwrap_or_default().to_string())
        }
    };
    let chunked = |coding: &str| {
        format!(
            "POST /api/v1/rooms HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: {coding}\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        )
    };
    for coding in [
        "gzip, chunked",
        "foo, chunked",
        "identity, chunked",
        "chunked, chunked",
    ] {
        let got = status(chunked(coding)).await?;
        assert!(got.starts_with("HTTP/1.1 501"), "{coding}: {got}");
    }
    // `chunked` alone reaches the API (401: no key), as before.
    assert!(status(chunked("chunked"))
        .await?
        .starts_with("HTTP/1.1 401"));
    let got = status("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n".into()).await?;
    assert!(got.starts_with("HTTP/1.1 400"), "no Host: {got}");
    let got =
        status("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".into())
            .await?;
    assert!(got.starts_with("HTTP/1.1 400"), "two Hosts: {got}");
    // HTTP/1.0 needs no Host.
    let got = status("GET /healthz HTTP/1.0\r\n\r\n".into()).await?;
    assert!(got.contains(" 200"), "HTTP/1.0: {got}");
    let got =
        status("GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into()).await?;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // A content coding is refused, not stored still coded (outside HTTP audit 2, F1).
    let coded = |coding: &str| {
        format!(
            "POST /api/v1/publish/chat.x HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\
             Content-Type: application/octet-stream\r\nContent-Encoding: {coding}\r\n\
             Content-Length: 2\r\n\r\nhi"
        )
    };
    for coding in ["gzip", "deflate, identity", "br"] {
        let got = status(coded(coding)).await?;
        assert!(got.starts_with("HTTP/1.1 415"), "{coding}: {got}");
    }
    assert!(status(coded("identity")).await?.starts_with("HTTP/1.1 401"));
    // A WebSocket upgrade that announces a body is refused, whichever way it is framed
    // (outside HTTP audit 2, F4: 101, and the body read as frames or not by timing).
    let upgrade = |framing: &str| {
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: q\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             {framing}\r\n"
        )
    };
    for framing in ["Content-Length: 6\r\n", "Transfer-Encoding: chunked\r\n"] {
        let got = status(upgrade(framing)).await?;
        assert!(got.starts_with("HTTP/1.1 400"), "{framing}: {got}");
    }
    let got = status(upgrade("Content-Length: 0\r\n")).await?;
    assert!(got.starts_with("HTTP/1.1 101"), "no body: {got}");
    Ok(())
}
