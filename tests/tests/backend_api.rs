//! The backend API's endpoints (README "Backend API"): broadcast, presence, history,
//! unsubscribe, rooms, info — each with its keys, tenant scoping and errors; and the cluster-wide
//! ones across two instances on a real nats-server.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use quiver_proto::{Command, ErrorCode, Event};
use quiver_tests::api::*;
use quiver_tests::nats::NatsServer;
use quiver_tests::*;
use serde_json::{json, Value};

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
    let server = TestServer::start_with(with_tenants).await?;
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
    let server = TestServer::start_with(with_tenants).await?;
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
    let server = TestServer::start_with(with_tenants).await?;
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
    let server = TestServer::start_with(with_tenants).await?;
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
        with_tenants(c);
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

/// Over two instances, a room past one instance's cut is not answered with the other's count
/// alone (outside audit 116, F8): instance A holds the first `MAX_ROOMS` + 1 rooms and lists
/// up to `r.0999`; B holds `r.0005` and `r.1000`. `r.1000` was answered with B's one
/// subscriber though A has one too; now the answer stops at A's cut, every count whole, the
/// first rooms by name (each instance keeps its first by name, not any of them).
#[tokio::test]
async fn rooms_past_an_instances_cut_are_not_answered_with_partial_counts() -> anyhow::Result<()> {
    let max = quiver_server::control::MAX_ROOMS;
    let nats = NatsServer::start().await?;
    let clustered = |c: &mut quiver_server::Config| {
        with_tenants(c);
        c.nats = Some(quiver_server::config::NatsConfig::new(nats.url()));
        c.limits.max_subscriptions = (max + 1) as u32;
        c.limits.commands_per_second = 10_000;
    };
    let a = TestServer::start_with(clustered).await?;
    let b = TestServer::start_with(clustered).await?;
    let mut on_a = Raw::connect_via(Via::WebSocket, &a, &full_token("acme", "many")).await?;
    let mut streams = Vec::new();
    // Subscribed in an order unlike the names', so a cut by arrival would show.
    for i in (0..=max).rev() {
        streams.push(on_a.subscribe(&format!("r.{i:04}")).await?);
    }
    let mut on_b = Raw::connect_via(Via::WebSocket, &b, &full_token("acme", "few")).await?;
    for room in ["r.1000", "r.0005"] {
        streams.push(on_b.subscribe(room).await?);
    }
    let (status, rooms) = api_post(&b, "rooms", ACME, json!({})).await?;
    assert_eq!(status, 200, "{rooms}");
    let listed = rooms["rooms"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), max, "{}", rooms["truncated"]);
    assert_eq!(rooms["truncated"], true);
    assert_eq!(listed[0]["room"], "r.0000");
    assert_eq!(listed[max - 1]["room"], "r.0999");
    for room in &listed {
        let want = if room["room"] == "r.0005" { 2 } else { 1 };
        assert_eq!(room["subscribers"], want, "{room}");
    }
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
