//! The backend API's endpoints (README "Backend API"): broadcast, presence, history,
//! unsubscribe, rooms, info — each with its keys, tenant scoping and errors; and the cluster-wide
//! ones across two instances on a real nats-server.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use quiver_proto::{Command, ErrorCode, Event};
use quiver_server::config::{ApiKey, NamespaceConfig, NatsConfig};
use quiver_tests::nats::NatsServer;
use quiver_tests::*;
use serde_json::{json, Value};

const ADMIN: &str = "admin-key-0123456789abcdef0123456789";
const ACME: &str = "acme-key-0123456789abcdef0123456789ab";
const OTHER: &str = "other-key-0123456789abcdef0123456789a";

fn configure(c: &mut quiver_server::Config) {
    c.api.keys = vec![
        ApiKey {
            key: ADMIN.into(),
            tenant: None,
        },
        ApiKey {
            key: ACME.into(),
            tenant: Some("acme".into()),
        },
        ApiKey {
            key: OTHER.into(),
            tenant: Some("other".into()),
        },
    ];
    for (name, history_size, presence) in [("h", 100, false), ("p", 0, true)] {
        c.namespaces.push(NamespaceConfig {
            name: name.into(),
            history_size,
            history_ttl: Duration::from_secs(60),
            presence,
            ..Default::default()
        });
    }
}

/// Two instances of the test configuration clustered over `nats`.
async fn two_instances(nats: &NatsServer) -> anyhow::Result<(TestServer, TestServer)> {
    let clustered = |c: &mut quiver_server::Config| {
        configure(c);
        c.nats = Some(NatsConfig::new(nats.url()));
    };
    Ok((
        TestServer::start_with(clustered).await?,
        TestServer::start_with(clustered).await?,
    ))
}

/// Asserts an error answer: its status and its stable code.
async fn refused(
    server: &TestServer,
    path: &str,
    key: &str,
    body: Value,
    status: u16,
    code: &str,
) -> anyhow::Result<()> {
    let (got, answer) = api_post(server, path, key, body.clone()).await?;
    assert_eq!(got, status, "{path} {body}: {answer}");
    assert_eq!(answer["error"]["code"], code, "{path} {body}: {answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    Ok(())
}

/// The next unsolicited `Unsubscribed` on the control stream: (room, code).
async fn unsubscribed(raw: &mut Raw) -> anyhow::Result<(String, u16)> {
    loop {
        let frame = raw.recv().await?;
        if let (0, Event::Unsubscribed { room, code, .. }) = (frame.id, frame.event) {
            return Ok((room, code));
        }
    }
}

#[tokio::test]
async fn broadcast_reaches_every_named_room_of_one_tenant() -> anyhow::Result<()> {
    let server = TestServer::start_with(configure).await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let mut a = sub.subscribe("news.a").await?;
    let mut b = sub.subscribe("h.b").await?;
    let mut other = Raw::connect(&server, &full_token("other", "s")).await?;
    let mut theirs = other.subscribe("news.a").await?;

    let (status, answer) = api_post(
        &server,
        "broadcast",
        ACME,
        json!({"rooms": ["news.a", "h.b"], "payload": "hello"}),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(a.payload().await?, Bytes::from_static(b"hello"));
    assert_eq!(b.payload().await?, Bytes::from_static(b"hello"));
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["room"], "news.a");
    assert!(
        results[0]["position"].is_null(),
        "a live room has no position"
    );
    assert!(results[1]["position"]["offset"].is_string(), "{answer}");

    // Bytes by base64; an admin key names the tenant.
    let raw_bytes = [0u8, 159, 146, 150];
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw_bytes);
    let (status, _) = api_post(
        &server,
        "broadcast",
        ADMIN,
        json!({"tenant": "other", "rooms": ["news.a"], "payload_base64": b64}),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(theirs.payload().await?, Bytes::copy_from_slice(&raw_bytes));

    let many: Vec<String> = (0..101).map(|i| format!("r.{i}")).collect();
    for (key, body, status, code) in [
        (
            ACME,
            json!({"rooms": ["a", "a"], "payload": "x"}),
            400,
            "bad_request",
        ),
        (
            ACME,
            json!({"rooms": many, "payload": "x"}),
            400,
            "bad_request",
        ),
        (
            ACME,
            json!({"rooms": [], "payload": "x"}),
            400,
            "bad_request",
        ),
        (
            ACME,
            json!({"rooms": ["a..b"], "payload": "x"}),
            400,
            "invalid_room",
        ),
        (
            ACME,
            json!({"rooms": ["a"], "payload": "x", "payload_base64": "eA=="}),
            400,
            "bad_request",
        ),
        (
            ACME,
            json!({"rooms": ["a"], "payload_base64": "!!"}),
            400,
            "bad_request",
        ),
        (ACME, json!({"rooms": ["a"]}), 400, "bad_request"),
        (
            ADMIN,
            json!({"rooms": ["a"], "payload": "x"}),
            400,
            "bad_request",
        ),
        (
            ACME,
            json!({"tenant": "other", "rooms": ["a"], "payload": "x"}),
            403,
            "permission_denied",
        ),
        (
            "wrong",
            json!({"rooms": ["a"], "payload": "x"}),
            401,
            "unauthorized",
        ),
        // A client's token is not an API key.
        (
            &full_token("acme", "s") as &str,
            json!({"rooms": ["a"], "payload": "x"}),
            401,
            "unauthorized",
        ),
    ] {
        refused(&server, "broadcast", key, body, status, code).await?;
    }
    // A payload over max_payload refuses the whole request, with a key or without (without
    // one it was a 200 holding an error per room: outside audit 93, F3), and is not published.
    let big = "x".repeat(server_max_payload() + 1);
    let (status, answer) = api_post(
        &server,
        "broadcast",
        ACME,
        json!({"rooms": ["news.a", "news.b"], "payload": big}),
    )
    .await?;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large");
    // Nothing of the refused ones arrived: the next is a marker.
    api_post(
        &server,
        "broadcast",
        ACME,
        json!({"rooms": ["news.a"], "payload": "marker"}),
    )
    .await?;
    assert_eq!(a.payload().await?, Bytes::from_static(b"marker"));
    Ok(())
}

fn server_max_payload() -> usize {
    quiver_server::Config::default().limits.max_payload as usize
}

#[tokio::test]
async fn presence_and_history_of_a_room() -> anyhow::Result<()> {
    let server = TestServer::start_with(configure).await?;
    let mut alice = Raw::connect(&server, &full_token("acme", "alice")).await?;
    let mut bob = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "bob")).await?;
    let _a = alice.subscribe("p.room").await?;
    let _b = bob.subscribe("p.room").await?;
    let (status, answer) = api_post(&server, "presence", ACME, json!({"room": "p.room"})).await?;
    assert_eq!(status, 200, "{answer}");
    let users: Vec<&str> = answer["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user"].as_str())
        .collect();
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(answer["truncated"], false, "{answer}");
    let (_, theirs) = api_post(&server, "presence", OTHER, json!({"room": "p.room"})).await?;
    assert_eq!(
        theirs["members"],
        json!([]),
        "another tenant's room is another room"
    );
    for (path, key, body, status, code) in [
        (
            "presence",
            ACME,
            json!({"room": "news.x"}),
            400,
            "bad_request",
        ),
        (
            "presence",
            ACME,
            json!({"tenant": "other", "room": "p.room"}),
            403,
            "permission_denied",
        ),
        (
            "presence",
            ACME,
            json!({"room": "p.room", "extra": 1}),
            400,
            "bad_request",
        ),
    ] {
        refused(&server, path, key, body, status, code).await?;
    }

    let mut positions = Vec::new();
    for i in 0..5u8 {
        positions.push(alice.published("h.log", &[b'a' + i]).await?);
    }
    let (status, page) = api_post(
        &server,
        "history",
        ACME,
        json!({"room": "h.log", "limit": 2}),
    )
    .await?;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["truncated"], true);
    let items = page["publications"].as_array().expect("publications");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["payload"], "YQ==", "base64 of a");
    // Positions are strings, exactly the client's (an epoch is beyond 2^53).
    let last = positions[4];
    assert_eq!(
        page["position"],
        json!({"epoch": last.epoch.to_string(), "offset": last.offset.to_string()})
    );
    let since = items[1]["position"].clone();
    let (_, rest) = api_post(
        &server,
        "history",
        ACME,
        json!({"room": "h.log", "since": since}),
    )
    .await?;
    let payloads: Vec<&str> = rest["publications"]
        .as_array()
        .expect("rest")
        .iter()
        .filter_map(|p| p["payload"].as_str())
        .collect();
    assert_eq!(payloads, ["Yw==", "ZA==", "ZQ=="]);
    assert_eq!(rest["truncated"], false);
    // Numbers are accepted too (as documented), when they fit.
    let (status, _) = api_post(
        &server,
        "history",
        ACME,
        json!({"room": "h.log", "since": {"epoch": 1, "offset": 2}}),
    )
    .await?;
    assert_eq!(status, 409, "another epoch: unrecoverable");
    // A number past u64 is refused in words, not in the server's type names.
    let answer = reqwest::Client::new()
        .post(format!("http://{}/api/v1/history", server.http))
        .bearer_auth(ACME)
        .header("content-type", "application/json")
        .body(r#"{"room": "h.log", "since": {"epoch": 18446744073709551616, "offset": 0}}"#)
        .send()
        .await?;
    assert_eq!(answer.status(), 400);
    let answer: Value = answer.json().await?;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("a u64") && !message.contains("U64In"),
        "{message}"
    );
    for (path, key, body, status, code) in [
        // The fields of a request by position: serde takes it, the API does not.
        (
            "history",
            ACME,
            json!([null, "h.log", null, 1]),
            400,
            "bad_request",
        ),
        (
            "history",
            ACME,
            json!({"room": "h.log", "since": {"epoch": last.epoch.to_string(), "offset": "x"}}),
            400,
            "bad_request",
        ),
        (
            "history",
            ACME,
            json!({"room": "h.log", "since": {"epoch": format!("+{}", last.epoch), "offset": "1"}}),
            400,
            "bad_request",
        ),
        (
            "history",
            ACME,
            json!({"room": "news.x"}),
            400,
            "bad_request",
        ),
        (
            "history",
            OTHER,
            json!({"tenant": "acme", "room": "h.log"}),
            403,
            "permission_denied",
        ),
    ] {
        refused(&server, path, key, body, status, code).await?;
    }
    let (_, theirs) = api_post(&server, "history", OTHER, json!({"room": "h.log"})).await?;
    assert_eq!(theirs["publications"], json!([]));
    Ok(())
}

#[tokio::test]
async fn unsubscribe_ends_one_room_of_one_user_and_keeps_the_session() -> anyhow::Result<()> {
    let server = TestServer::start_with(configure).await?;
    let mut alice_wt = Raw::connect(&server, &full_token("acme", "alice")).await?;
    let mut alice_ws =
        Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "alice")).await?;
    let mut bob = Raw::connect(&server, &full_token("acme", "bob")).await?;
    let mut other_alice = Raw::connect(&server, &full_token("other", "alice")).await?;
    let _wt_a = alice_wt.subscribe("news.a").await?;
    let mut wt_b = alice_wt.subscribe("news.b").await?;
    let _ws_a = alice_ws.subscribe("news.a").await?;
    let mut bob_a = bob.subscribe("news.a").await?;
    let mut other_a = other_alice.subscribe("news.a").await?;

    let (status, answer) = api_post(
        &server,
        "unsubscribe",
        ACME,
        json!({"user": "alice", "room": "news.a", "reason": "moderated"}),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["unsubscribed_here"], 2);
    let code = ErrorCode::Unsubscribed.as_u16();
    assert_eq!(unsubscribed(&mut alice_wt).await?, ("news.a".into(), code));
    assert_eq!(unsubscribed(&mut alice_ws).await?, ("news.a".into(), code));
    // The rest goes on: alice's other room, bob, the other tenant's alice; the session too.
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    publ.publish("news.a", b"after").await?;
    publ.publish("news.b", b"still").await?;
    assert_eq!(bob_a.payload().await?, Bytes::from_static(b"after"));
    assert_eq!(wt_b.payload().await?, Bytes::from_static(b"still"));
    let mut publ_other = Raw::connect(&server, &full_token("other", "p")).await?;
    publ_other.publish("news.a", b"theirs").await?;
    assert_eq!(other_a.payload().await?, Bytes::from_static(b"theirs"));
    assert!(matches!(
        alice_wt.request(Command::Ping).await?,
        Event::Pong
    ));
    // The room is no longer subscribed, and may be subscribed again.
    assert!(matches!(
        alice_wt.request(Command::Unsubscribe { room: "news.a".into() }).await?,
        Event::Error { code, .. } if code == ErrorCode::NotSubscribed.as_u16()
    ));
    let mut again = alice_wt.subscribe("news.a").await?;
    publ.publish("news.a", b"again").await?;
    assert_eq!(again.payload().await?, Bytes::from_static(b"again"));

    for (path, key, body, status, code) in [
        (
            "unsubscribe",
            ACME,
            json!({"user": "alice"}),
            400,
            "bad_request",
        ),
        (
            "unsubscribe",
            ACME,
            json!({"user": "alice", "room": "a.>"}),
            400,
            "invalid_room",
        ),
        (
            "unsubscribe",
            ACME,
            json!({"tenant": "other", "user": "alice", "room": "news.a"}),
            403,
            "permission_denied",
        ),
        (
            "unsubscribe",
            "",
            json!({"user": "alice", "room": "news.a"}),
            401,
            "unauthorized",
        ),
        (
            "unsubscribe",
            ACME,
            json!({"user": "alice", "room": "news.a", "reason": "x".repeat(300)}),
            400,
            "bad_request",
        ),
        // User ids no token can carry name nobody: told, not a silent 0.
        (
            "unsubscribe",
            ACME,
            json!({"user": "", "room": "news.a"}),
            400,
            "bad_request",
        ),
        (
            "disconnect",
            ACME,
            json!({"user": "u".repeat(257)}),
            400,
            "bad_request",
        ),
        // Session ids no session has: refused here, not passed on for every instance to
        // refuse as malformed (outside audit 93, F4).
        (
            "disconnect",
            ACME,
            json!({"session": ""}),
            400,
            "bad_request",
        ),
        (
            "disconnect",
            ACME,
            json!({"user": "bob", "session": "s".repeat(65)}),
            400,
            "bad_request",
        ),
        (
            "unsubscribe",
            ACME,
            json!({"user": "alice", "room": "news.a", "session": "s".repeat(65)}),
            400,
            "bad_request",
        ),
    ] {
        refused(&server, path, key, body, status, code).await?;
    }
    Ok(())
}

#[tokio::test]
async fn rooms_and_info_of_one_instance_by_tenant() -> anyhow::Result<()> {
    let server = TestServer::start_with(configure).await?;
    let mut s1 = Raw::connect(&server, &full_token("acme", "u1")).await?;
    let mut s2 = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "u2")).await?;
    let mut s3 = Raw::connect(&server, &full_token("other", "u3")).await?;
    let _k = [
        s1.subscribe("room.x").await?,
        s2.subscribe("room.x").await?,
        s2.subscribe("room.y").await?,
        s3.subscribe("room.z").await?,
    ];
    let (status, rooms) = api_post(&server, "rooms", ACME, json!({})).await?;
    assert_eq!(status, 200, "{rooms}");
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "room.x", "subscribers": 2}, {"room": "room.y", "subscribers": 1}])
    );
    assert_eq!(rooms["truncated"], false);
    let (_, theirs) = api_post(&server, "rooms", ADMIN, json!({"tenant": "other"})).await?;
    assert_eq!(
        theirs["rooms"],
        json!([{"room": "room.z", "subscribers": 1}])
    );
    refused(&server, "rooms", ADMIN, json!({}), 400, "bad_request").await?;
    refused(
        &server,
        "rooms",
        ACME,
        json!({"tenant": "other"}),
        403,
        "permission_denied",
    )
    .await?;

    let (status, info) = api_post(&server, "info", ADMIN, json!({})).await?;
    assert_eq!(status, 200, "{info}");
    let nodes = info["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["sessions"], 3);
    assert_eq!(nodes[0]["subscriptions"], 4);
    assert_eq!(nodes[0]["rooms"], 3);
    let (_, mine) = api_post(&server, "info", ACME, json!({})).await?;
    assert_eq!(
        mine["nodes"][0]["sessions"], 2,
        "a tenant's key sees its tenant"
    );
    assert_eq!(mine["nodes"][0]["subscriptions"], 3);
    refused(&server, "info", "nope", json!({}), 401, "unauthorized").await?;
    // JSON endpoints take their tenant in the body only: a query is refused, not ignored.
    refused(
        &server,
        "presence?tenant=beta",
        ADMIN,
        json!({"tenant": "acme", "room": "p.a"}),
        400,
        "bad_request",
    )
    .await?;
    Ok(())
}

/// Unsubscribe, rooms and info reach every instance over NATS: an API call on one instance
/// acts on (and counts) the sessions of the other.
#[tokio::test]
async fn unsubscribe_rooms_and_info_are_cluster_wide() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let (a, b) = two_instances(&nats).await?;
    let mut on_a = Raw::connect(&a, &full_token("acme", "bob")).await?;
    let mut on_b = Raw::connect(&b, &full_token("acme", "alice")).await?;
    let _bob_room = on_a.subscribe("room.x").await?;
    let _alice_room = on_b.subscribe("room.x").await?;
    let _alice_other = on_b.subscribe("room.y").await?;
    // What the backend of a tenant named `cluster` may be allowed (`quiver.<tenant>.>`): the
    // instances' statistics requests must not pass there (an outside audit answered them).
    let tenant_backend = async_nats::connect(nats.url()).await?;
    let mut cluster_tenant = tenant_backend.subscribe("quiver.cluster.>").await?;
    tenant_backend.flush().await?;
    // The control plane subscribes as the instance starts; give NATS a moment to register it.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, rooms) = api_post(&a, "rooms", ACME, json!({})).await?;
    assert_eq!(status, 200, "{rooms}");
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "room.x", "subscribers": 2}, {"room": "room.y", "subscribers": 1}])
    );
    let (_, info) = api_post(&b, "info", ADMIN, json!({})).await?;
    let nodes = info["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{info}");
    let sessions: u64 = nodes.iter().filter_map(|n| n["sessions"].as_u64()).sum();
    let subscriptions: u64 = nodes
        .iter()
        .filter_map(|n| n["subscriptions"].as_u64())
        .sum();
    assert_eq!((sessions, subscriptions), (2, 3));
    assert_ne!(nodes[0]["node"], nodes[1]["node"]);
    let overheard = tokio::time::timeout(Duration::from_millis(200), cluster_tenant.next()).await;
    assert!(
        overheard.is_err(),
        "a tenant's subjects carried {:?}",
        overheard.ok().flatten().map(|m| m.subject)
    );

    let started = Instant::now();
    let (status, answer) = api_post(
        &a,
        "unsubscribe",
        ACME,
        json!({"user": "alice", "room": "room.x"}),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["unsubscribed_here"], 0, "alice is on b");
    assert_eq!(
        unsubscribed(&mut on_b).await?,
        ("room.x".into(), ErrorCode::Unsubscribed.as_u16())
    );
    eprintln!("cross-instance unsubscribe took {:?}", started.elapsed());
    assert!(matches!(on_b.request(Command::Ping).await?, Event::Pong));
    let (_, rooms) = api_post(&b, "rooms", ACME, json!({})).await?;
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "room.x", "subscribers": 1}, {"room": "room.y", "subscribers": 1}])
    );
    Ok(())
}

/// An instance lists at most `MAX_ROOMS` rooms (and says it cut the list); its counts stay whole.
#[tokio::test]
async fn rooms_are_listed_up_to_the_bound() -> anyhow::Result<()> {
    let max = quiver_server::control::MAX_ROOMS;
    let server = TestServer::start_with(|c| {
        configure(c);
        c.limits.max_subscriptions = (max + 1) as u32;
        c.limits.commands_per_second = 10_000;
    })
    .await?;
    let mut raw = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "many")).await?;
    let mut streams = Vec::new();
    for i in 0..=max {
        streams.push(raw.subscribe(&format!("r.{i:04}")).await?);
    }
    let (status, rooms) = api_post(&server, "rooms", ACME, json!({})).await?;
    assert_eq!(status, 200);
    assert_eq!(rooms["rooms"].as_array().map(Vec::len), Some(max));
    assert_eq!(rooms["truncated"], true);
    let (_, info) = api_post(&server, "info", ACME, json!({})).await?;
    assert_eq!(info["nodes"][0]["rooms"], max + 1);
    assert_eq!(info["nodes"][0]["subscriptions"], max + 1);
    Ok(())
}

/// `POST /api/v1/publish/{room}` with `Idempotency-Key` headers (as many as given).
async fn publish_keyed(
    server: &TestServer,
    room: &str,
    key: &str,
    idempotency: &[&str],
    body: &'static str,
) -> anyhow::Result<(u16, Value)> {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/api/v1/publish/{room}", server.http))
        .bearer_auth(key)
        .body(body);
    for value in idempotency {
        // From bytes: a non-ASCII key must reach the server to be refused there.
        let value = reqwest::header::HeaderValue::from_bytes(value.as_bytes())?;
        request = request.header("Idempotency-Key", value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

#[tokio::test]
async fn a_retried_publication_with_an_idempotency_key_is_published_once() -> anyhow::Result<()> {
    let server = TestServer::start_with(configure).await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let mut history = sub.subscribe("h.x").await?;
    let mut live = sub.subscribe("news.y").await?;

    let (status, first) = publish_keyed(&server, "h.x", ACME, &["order-1"], "one").await?;
    assert_eq!(status, 200, "{first}");
    assert!(first["position"]["offset"].is_string(), "{first}");
    let (status, again) = publish_keyed(&server, "h.x", ACME, &["order-1"], "one").await?;
    assert_eq!(
        (status, &again),
        (200, &first),
        "a repeat gets the first position"
    );
    let page = server.metrics().await?;
    assert_eq!(metric(&page, "quiver_api_idempotent_repeats_total"), 1.0);
    // The same key for a different payload is a mistake, not a repeat.
    let (status, reused) = publish_keyed(&server, "h.x", ACME, &["order-1"], "two").await?;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");
    // Keys are per room and per tenant.
    let (status, _) = publish_keyed(&server, "news.y", ACME, &["order-1"], "one").await?;
    assert_eq!(status, 200);
    let (status, theirs) = publish_keyed(&server, "h.x", OTHER, &["order-1"], "one").await?;
    assert_eq!(status, 200, "{theirs}");
    // Without a key, every request publishes.
    let (status, _) = publish_keyed(&server, "h.x", ACME, &[], "unkeyed").await?;
    assert_eq!(status, 200);
    assert_eq!(history.payload().await?, Bytes::from_static(b"one"));
    assert_eq!(history.payload().await?, Bytes::from_static(b"unkeyed"));
    assert_eq!(live.payload().await?, Bytes::from_static(b"one"));

    // A broadcast retried with its key publishes only where it has not yet.
    let body = json!({"rooms": ["news.y", "h.x"], "payload": "both"});
    let mut answers = Vec::new();
    for _ in 0..2 {
        let request = reqwest::Client::new()
            .post(format!("http://{}/api/v1/broadcast", server.http))
            .bearer_auth(ACME)
            .header("Idempotency-Key", "fanout-7")
            .json(&body);
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), 200);
        answers.push(response.json::<Value>().await?);
    }
    assert_eq!(answers[0], answers[1], "a repeat gets the first results");
    let (status, _) = publish_keyed(&server, "news.y", ACME, &[], "after").await?;
    assert_eq!(status, 200);
    assert_eq!(live.payload().await?, Bytes::from_static(b"both"));
    assert_eq!(live.payload().await?, Bytes::from_static(b"after"));
    assert_eq!(history.payload().await?, Bytes::from_static(b"both"));

    // A broadcast whose key names another payload in any room is refused whole: nothing is
    // published, not even in the rooms the key has not been used in.
    let request = reqwest::Client::new()
        .post(format!("http://{}/api/v1/broadcast", server.http))
        .bearer_auth(ACME)
        .header("Idempotency-Key", "fanout-7")
        .json(&json!({"rooms": ["news.y", "h.fresh"], "payload": "other"}));
    let response = request.send().await?;
    assert_eq!(response.status().as_u16(), 422);

    // A client token's keys are its user's own: the backend's key with the backend's payload
    // publishes again (it neither probes nor takes over the backend's keys).
    let client = full_token("acme", "mallory");
    let (status, _) = publish_keyed(&server, "news.y", &client, &["order-1"], "one").await?;
    assert_eq!(status, 200);
    assert_eq!(live.payload().await?, Bytes::from_static(b"one"));
    let (status, _) = publish_keyed(&server, "news.y", &client, &["order-1"], "one").await?;
    assert_eq!(status, 200, "the user's own repeat");

    // Malformed keys are a 400, and nothing is published.
    let long = "k".repeat(129);
    for idempotency in [
        &[""][..],
        &[long.as_str()],
        &["caf\u{e9}"],
        &["a b"],
        &["a", "b"],
    ] {
        let (status, answer) = publish_keyed(&server, "news.y", ACME, idempotency, "bad").await?;
        assert_eq!(status, 400, "{idempotency:?}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
    }
    let (status, _) = publish_keyed(&server, "news.y", ACME, &[], "last").await?;
    assert_eq!(status, 200);
    assert_eq!(live.payload().await?, Bytes::from_static(b"last"));
    Ok(())
}

/// With NATS the instances share idempotency keys: a retry that a load balancer sends to
/// another instance gets the first answer and publishes nothing.
#[tokio::test]
async fn an_idempotency_key_holds_across_instances() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let (a, b) = two_instances(&nats).await?;
    let mut on_b = Raw::connect(&b, &full_token("acme", "s")).await?;
    let mut history = on_b.subscribe("h.x").await?;
    let mut live = on_b.subscribe("news.y").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for room in ["h.x", "news.y"] {
        let (status, first) = publish_keyed(&a, room, ACME, &["pay-9"], "once").await?;
        assert_eq!(status, 200, "{first}");
        let (status, again) = publish_keyed(&b, room, ACME, &["pay-9"], "once").await?;
        assert_eq!((status, &again), (200, &first), "{room}: the repeat on b");
        let (status, reused) = publish_keyed(&b, room, ACME, &["pay-9"], "other").await?;
        assert_eq!(status, 422, "{reused}");
        // Another tenant's same key is its own.
        let (status, _) = publish_keyed(&b, room, OTHER, &["pay-9"], "once").await?;
        assert_eq!(status, 200);
        let (status, _) = publish_keyed(&a, room, ACME, &[], "next").await?;
        assert_eq!(status, 200);
    }
    for stream in [&mut history, &mut live] {
        assert_eq!(stream.payload().await?, Bytes::from_static(b"once"));
        assert_eq!(stream.payload().await?, Bytes::from_static(b"next"));
    }

    // A claim left unfinished (its instance died while publishing): a repeat is told to retry,
    // until the claim is older than the takeover time; then the repeat publishes.
    use quiver_server::idempotency::{self, cluster};
    let kv = async_nats::jetstream::new(async_nats::connect(nats.url()).await?)
        .get_key_value("quiver_idempotency")
        .await?;
    let tenant = quiver_proto::TenantId::parse("acme")?;
    let room = quiver_proto::RoomName::parse("news.y")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let digest = hex::encode(idempotency::digest(b"orphan"));
    for (key, age, status) in [
        ("fresh", Duration::ZERO, 409),
        ("stale", cluster::TAKEOVER + Duration::from_secs(1), 200),
    ] {
        let at_ms = now_ms - age.as_millis() as u64;
        let record = json!({"digest": digest, "at_ms": at_ms, "done": false, "position": null});
        kv.put(
            cluster::bucket_key(
                &tenant,
                &room,
                &idempotency::scoped(idempotency::BACKEND, key),
            ),
            record.to_string().into(),
        )
        .await?;
        let (got, answer) = publish_keyed(&a, "news.y", ACME, &[key], "orphan").await?;
        assert_eq!(got, status, "{key}: {answer}");
    }
    assert_eq!(live.payload().await?, Bytes::from_static(b"orphan"));
    let (status, _) = publish_keyed(&b, "news.y", ACME, &["stale"], "orphan").await?;
    assert_eq!(status, 200, "the takeover's publication is recorded");
    let (status, _) = publish_keyed(&a, "news.y", ACME, &[], "last").await?;
    assert_eq!(status, 200);
    assert_eq!(live.payload().await?, Bytes::from_static(b"last"));
    Ok(())
}

/// A keyed broadcast refused in a later room leaves nothing claimed in the cluster (outside
/// audit 93, F1): its earlier rooms' claims were forgotten on their instance only, so the key
/// stayed pending in the shared record, and a retry into such a room was told 409 "still
/// publishing" for 10 s and one with another payload 422 "used for a different payload" for the
/// record's five minutes, on every instance, though nothing was published. The claims are now
/// released in the cluster too (a moment after the answer: polled, for at most 3 s).
#[tokio::test]
async fn a_keyed_broadcast_refused_partway_leaves_no_claim_in_the_cluster() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let (a, b) = two_instances(&nats).await?;
    let (status, _) = publish_keyed(&a, "news.b", ACME, &["k-93"], "first").await?;
    assert_eq!(status, 200);
    let broadcast = |payload: &'static str| {
        reqwest::Client::new()
            .post(format!("http://{}/api/v1/broadcast", a.http))
            .bearer_auth(ACME)
            .header("Idempotency-Key", "k-93")
            .json(&json!({"rooms": ["news.a", "news.b"], "payload": payload}))
            .send()
    };
    // Refused whole at news.b (another payload there), after news.a was claimed.
    assert_eq!(broadcast("second").await?.status().as_u16(), 422);
    // The backend drops news.b and retries: published, not 409 (the same payload) ...
    let retry = |server: &TestServer, payload: &'static str| {
        let server = server.http;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            loop {
                let response = reqwest::Client::new()
                    .post(format!("http://{server}/api/v1/publish/news.a"))
                    .bearer_auth(ACME)
                    .header("Idempotency-Key", "k-93")
                    .body(payload)
                    .send()
                    .await?;
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or_default();
                if status == 200 || tokio::time::Instant::now() >= deadline {
                    return anyhow::Ok((status, answer));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (status, answer) = retry(&b, "second").await?;
    assert_eq!(status, 200, "{answer}");
    // ... and a broadcast refused again leaves news.c free for another payload, not 422.
    let other = reqwest::Client::new()
        .post(format!("http://{}/api/v1/broadcast", b.http))
        .bearer_auth(ACME)
        .header("Idempotency-Key", "k-94")
        .json(&json!({"rooms": ["news.c", "news.b"], "payload": "x"}));
    let (status, _) = publish_keyed(&a, "news.b", ACME, &["k-94"], "y").await?;
    assert_eq!(status, 200);
    assert_eq!(other.send().await?.status().as_u16(), 422);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let status = loop {
        let (status, answer) = publish_keyed(&a, "news.c", ACME, &["k-94"], "z").await?;
        if status == 200 || tokio::time::Instant::now() >= deadline {
            break (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.0, 200, "{}", status.1);
    Ok(())
}

/// An instance releases or completes only its own claim (review 94, F1): a claim it left
/// pending and another instance took over (or a retry made again) is that instance's record,
/// and neither the first one's late release nor its late "done" touches it; deleting it let a
/// repeat publish twice.
#[tokio::test]
async fn a_late_release_leaves_a_claim_taken_over_alone() -> anyhow::Result<()> {
    use quiver_server::idempotency::{self, cluster};
    let nats = NatsServer::start().await?;
    let keys = cluster::ClusterKeys::new(async_nats::connect(nats.url()).await?);
    let digest = idempotency::digest(b"payload");
    let cluster::Remote::Claimed(mine) = keys
        .claim("acme.k", &digest)
        .await
        .map_err(anyhow::Error::msg)?
    else {
        anyhow::bail!("a fresh key was not claimed");
    };
    // Another instance's claim replaces it (a takeover, or a retry after a release).
    let kv = async_nats::jetstream::new(async_nats::connect(nats.url()).await?)
        .get_key_value("quiver_idempotency")
        .await?;
    let theirs =
        json!({"digest": hex::encode(digest), "at_ms": 0, "done": false, "position": null});
    kv.put("acme.k", theirs.to_string().into()).await?;
    keys.forget("acme.k", mine).await;
    assert!(
        keys.done("acme.k", mine, &digest, None).await.is_err(),
        "recorded over another instance's claim"
    );
    let entry = kv.entry("acme.k").await?;
    assert!(
        entry.is_some_and(|e| e.operation == async_nats::jetstream::kv::Operation::Put
            && e.value == theirs.to_string().as_bytes()),
        "the other instance's claim was deleted or overwritten"
    );
    // Its own claim, still its own, it does release.
    let cluster::Remote::Claimed(own) = keys
        .claim("acme.j", &digest)
        .await
        .map_err(anyhow::Error::msg)?
    else {
        anyhow::bail!("a fresh key was not claimed");
    };
    keys.forget("acme.j", own).await;
    let entry = kv.entry("acme.j").await?;
    assert!(
        !entry.is_some_and(|e| e.operation == async_nats::jetstream::kv::Operation::Put),
        "its own claim was not released"
    );
    Ok(())
}

/// A key claimed on one instance is answered on another whose budget for the tenant's clients
/// (10,000 new keys per 5 minutes, per instance) is spent (outside audit 93, F2: 429, where
/// README promises repeats of known keys an answer), and a repeat within the budget uses none
/// of it. Two instances' key stores on one NATS, driven directly: 10,000 claims through HTTP
/// would take the test far longer.
#[tokio::test]
async fn a_key_known_in_the_cluster_is_answered_at_an_instances_budget() -> anyhow::Result<()> {
    use quiver_server::idempotency::{self, Claim, Claimant, IdempotencyKeys};
    use std::sync::Arc;
    let nats = NatsServer::start().await?;
    let a = Arc::new(IdempotencyKeys::new(Some(
        async_nats::connect(nats.url()).await?,
    )));
    let b = Arc::new(IdempotencyKeys::new(Some(
        async_nats::connect(nats.url()).await?,
    )));
    let tenant = quiver_proto::TenantId::parse("acme")?;
    let room = quiver_proto::RoomName::parse("live.x")?;
    let digest = idempotency::digest(b"payload");
    let position = quiver_proto::Position {
        epoch: 1,
        offset: 7,
    };
    let claim = |keys: &Arc<IdempotencyKeys>, key: String| {
        let (keys, tenant, room) = (keys.clone(), tenant.clone(), room.clone());
        async move {
            keys.claim(
                Claimant::Client,
                &tenant,
                &room,
                &key,
                digest,
                Instant::now(),
            )
            .await
            .map_err(anyhow::Error::msg)
        }
    };
    for key in ["early", "late"] {
        let Claim::New(guard) = claim(&a, key.into()).await? else {
            anyhow::bail!("{key}: not claimed on a");
        };
        guard.done(Some(position)).await;
    }
    // A repeat on b within its budget is answered, and uses none of it.
    assert!(matches!(
        claim(&b, "early".into()).await?,
        Claim::Done(Some(p)) if p == position
    ));
    // b's budget for the tenant's clients, spent on new keys (claimed, then left unfinished).
    let budget = idempotency::MAX_CLIENT_KEYS_PER_TENANT;
    let mut guards = Vec::with_capacity(budget);
    for chunk in (0..budget).collect::<Vec<_>>().chunks(200) {
        let claims = chunk.iter().map(|i| claim(&b, format!("new-{i}")));
        for claimed in futures::future::join_all(claims).await {
            match claimed? {
                Claim::New(guard) => guards.push(guard),
                other => anyhow::bail!(
                    "claim {} of the budget: {}",
                    guards.len(),
                    match other {
                        Claim::TooMany(_) => "too many (the repeat used a place)",
                        _ => "not new",
                    }
                ),
            }
        }
    }
    assert!(matches!(
        claim(&b, "one-more".into()).await?,
        Claim::TooMany(_)
    ));
    // At the budget, a key the cluster knows is still answered, with its position.
    assert!(matches!(
        claim(&b, "late".into()).await?,
        Claim::Done(Some(p)) if p == position
    ));
    let other = idempotency::digest(b"other");
    assert!(matches!(
        b.claim(
            Claimant::Client,
            &tenant,
            &room,
            "late",
            other,
            Instant::now()
        )
        .await
        .map_err(anyhow::Error::msg)?,
        Claim::Mismatch
    ));
    drop(guards);
    Ok(())
}

/// Claims of new idempotency keys by tenant `acme`'s clients in room `live.x`, driven directly
/// on an `IdempotencyKeys` over `client` (the budget tests below: a budget's worth of claims
/// through HTTP would take far longer).
struct ClientClaims {
    keys: std::sync::Arc<quiver_server::idempotency::IdempotencyKeys>,
    tenant: quiver_proto::TenantId,
    room: quiver_proto::RoomName,
    digest: [u8; 32],
}

impl ClientClaims {
    fn new(client: async_nats::Client) -> anyhow::Result<Self> {
        use quiver_server::idempotency::{self, IdempotencyKeys};
        Ok(Self {
            keys: std::sync::Arc::new(IdempotencyKeys::new(Some(client))),
            tenant: quiver_proto::TenantId::parse("acme")?,
            room: quiver_proto::RoomName::parse("live.x")?,
            digest: idempotency::digest(b"payload"),
        })
    }

    async fn claim(&self, key: String) -> Result<quiver_server::idempotency::Claim, String> {
        self.keys
            .claim(
                quiver_server::idempotency::Claimant::Client,
                &self.tenant,
                &self.room,
                &key,
                self.digest,
                Instant::now(),
            )
            .await
    }
}

/// Keyed publishes refused 503 because the cluster's record could not be reached spend no
/// place in their tenant's new-key budget (outside audit 111, F8): each spent one, so a backend
/// or its clients retrying through an outage (a fresh key per message) were refused `429
/// quota_exceeded` for up to 5 minutes once NATS was back. A budget's worth of claims refused
/// while NATS is away, then a new key once it is back: claimed. Driven directly, as above:
/// 10,000 refusals through HTTP would take the test far longer.
#[tokio::test]
async fn keyed_claims_refused_while_nats_is_away_leave_the_budget_alone() -> anyhow::Result<()> {
    use async_nats::connection::State;
    use quiver_server::idempotency::{self, Claim};
    let mut nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url()).await?;
    let claims = ClientClaims::new(client.clone())?;
    let claim = |key: String| claims.claim(key);
    let until = |state: State| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while client.connection_state() != state {
                anyhow::ensure!(Instant::now() < deadline, "NATS client never {state:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        }
    };
    nats.kill();
    until(State::Disconnected).await?;
    for i in 0..idempotency::MAX_CLIENT_KEYS_PER_TENANT {
        anyhow::ensure!(
            claim(format!("outage-{i}")).await.is_err(),
            "claim {i} while NATS is away was not refused"
        );
    }
    nats.restart().await?;
    until(State::Connected).await?;
    match claim("after".into()).await.map_err(anyhow::Error::msg)? {
        Claim::New(guard) => guard.done(None).await,
        Claim::TooMany(_) => anyhow::bail!("refused 429: the outage's refusals spent the budget"),
        _ => anyhow::bail!("a fresh key was not claimed"),
    }
    Ok(())
}

/// A keyed claim that NATS did not answer in time keeps its place in the tenant's new-key
/// budget (review 113, F4): NATS stalled (not known to be away), the create waits in the
/// client's queue, the claim is answered 503 after 3 s, and NATS stores the pending record
/// once it resumes. Giving the place back left records in the shared bucket that no budget
/// counted, up to a queue's worth per stall. At the budget but one: two claims stalled, NATS
/// resumed, their records land, and a new key is refused 429 (it was claimed before).
#[tokio::test]
async fn keyed_claims_unanswered_while_nats_stalls_keep_their_place() -> anyhow::Result<()> {
    use quiver_server::idempotency::{self, Claim, Claimant};
    let nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url()).await?;
    let claims = ClientClaims::new(client.clone())?;
    let claim = |key: String| claims.claim(key);
    // Held, as publications under way are; in the record, so they keep their places anyway.
    let held: Vec<_> = futures::stream::iter(0..idempotency::MAX_CLIENT_KEYS_PER_TENANT - 1)
        .map(|i| claim(format!("k-{i}")))
        .buffer_unordered(64)
        .collect()
        .await;
    for (i, claimed) in held.iter().enumerate() {
        anyhow::ensure!(
            matches!(claimed, Ok(Claim::New(_))),
            "claim {i} within the budget not claimed"
        );
    }
    nats.pause()?;
    let stalled = futures::future::join_all((0..2).map(|i| claim(format!("stalled-{i}")))).await;
    nats.resume()?;
    anyhow::ensure!(
        stalled.iter().all(|c| c.is_err()),
        "claims while NATS was stalled were answered"
    );
    // What the stall left queued is stored now: a repeat of a stalled key finds it pending.
    let deadline = Instant::now() + WAIT;
    loop {
        match claim("stalled-0".into()).await {
            Ok(Claim::InProgress) => break,
            Ok(Claim::New(_)) => anyhow::bail!("the stalled claim was never stored"),
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "the stalled claim never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match claim("after".into()).await.map_err(anyhow::Error::msg)? {
        Claim::TooMany(Claimant::Client) => {}
        Claim::New(_) => {
            anyhow::bail!(
                "a new key claimed: the stalled claims gave back places their records hold"
            )
        }
        _ => anyhow::bail!("a fresh key was neither claimed nor refused"),
    }
    drop(held);
    Ok(())
}

/// While NATS is away, every API action that needs it answers 503 instead of waiting for it:
/// statistics, disconnect and unsubscribe used to hang until NATS came back, and presence,
/// revocation and keyed publishes waited out the NATS client's 10 s request timeout (an
/// outside audit). The client gives each request 8 s.
#[tokio::test]
async fn api_actions_answer_at_once_while_nats_is_away() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let (a, _b) = two_instances(&nats).await?;
    // Presence set up while NATS is there, so it is the outage that is answered.
    let (status, answer) = api_post(&a, "presence", ACME, json!({"room": "p.room"})).await?;
    assert_eq!(status, 200, "{answer}");
    // Alice, on instance a: the actions reach her there, and their 503 says so.
    let mut alice = Raw::connect(&a, &full_token("acme", "alice")).await?;
    let _room = alice.subscribe("news.a").await?;
    nats.kill();
    let deadline = tokio::time::Instant::now() + WAIT;
    while reqwest::get(format!("http://{}/readyz", a.http))
        .await?
        .status()
        != 503
    {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "still ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()?;
    let exp = quiver_server::auth::unix_now() + 3600;
    // The operator's actions are applied here before NATS is asked: the 503 counts what they
    // did here (in `error`, beside `code` and `message`).
    for (path, key, body, here) in [
        ("info", ADMIN, json!({}), None),
        ("rooms", ACME, json!({}), None),
        (
            "unsubscribe",
            ACME,
            json!({"user": "alice", "room": "news.a"}),
            Some(("unsubscribed_here", 1)),
        ),
        (
            "disconnect",
            ACME,
            json!({"user": "alice"}),
            Some(("disconnected_here", 1)),
        ),
        (
            "revoke",
            ACME,
            json!({"tenant": "acme", "jti": "tok-9", "expires_at": exp}),
            Some(("disconnected_here", 0)),
        ),
        ("presence", ACME, json!({"room": "p.room"}), None),
    ] {
        let answer = client
            .post(format!("http://{}/api/v1/{path}", a.http))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{path}: no answer: {e}"))?;
        assert_eq!(answer.status().as_u16(), 503, "{path}");
        let error = &answer.json::<serde_json::Value>().await?["error"];
        assert_eq!(error["code"], "unavailable", "{path}");
        if let Some((field, count)) = here {
            assert_eq!(error[field], count, "{path}: {error}");
        }
    }
    for room in ["news.a", "h.a"] {
        let answer = client
            .post(format!("http://{}/api/v1/publish/{room}", a.http))
            .bearer_auth(ACME)
            .header("Idempotency-Key", "k-1")
            .body("x")
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("keyed publish to {room}: no answer: {e}"))?;
        assert_eq!(answer.status().as_u16(), 503, "keyed publish to {room}");
        // Said in general terms: the broker's own words (a full bucket among them) are the
        // operator's, and would tell a tenant about the others' volume (tenancy audit 3, F3).
        let error = &answer.json::<serde_json::Value>().await?["error"];
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("idempotency") && !message.to_lowercase().contains("nats"),
            "{error}"
        );
    }
    // A client's reads of history are refused at once too, as its publications are.
    let mut bob = Raw::connect(&a, &full_token("acme", "bob")).await?;
    for command in [
        Command::Subscribe {
            room: "h.a".into(),
            resume: None,
        },
        Command::History {
            room: "h.a".into(),
            since: None,
            limit: 10,
        },
    ] {
        let asked = std::time::Instant::now();
        let answer = bob.request(command.clone()).await?;
        assert!(
            matches!(answer, Event::Error { code, .. } if code == ErrorCode::Unavailable.as_u16()),
            "{command:?}: {answer:?}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{command:?} answered after {:?}",
            asked.elapsed()
        );
    }
    // A live room needs no history: subscribed, to receive once NATS is back; in a presence
    // room too, without waiting out the presence store (it took 3 s a room, holding up every
    // command behind it: a regression audit).
    for room in ["news.z", "p.b", "p.c"] {
        let asked = Instant::now();
        let answer = bob
            .request(Command::Subscribe {
                room: room.into(),
                resume: None,
            })
            .await?;
        assert!(
            matches!(answer, Event::Subscribed { .. }),
            "{room}: {answer:?}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{room}: {:?}",
            asked.elapsed()
        );
    }
    let asked = Instant::now();
    bob.request(Command::Unsubscribe { room: "p.b".into() })
        .await?;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    Ok(())
}
