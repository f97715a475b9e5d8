//! JetStream out of room: nats-server's store is shared by every tenant, so its refusals
//! ("insufficient memory resources available", "maximum bytes exceeded") tell of the other
//! tenants' use of it. A client, or a tenant's backend through the API, is told only that the
//! broker failed; the broker's words go to the server's log (outside tenancy audit 41, F1: a
//! client got "jetstream error: insufficient memory resources available (code 500, error code
//! 10028)"; THREAT-MODEL R37).

use std::time::Duration;

use anyhow::Result;
use quiver_client::{token_fixed, Client, ErrorCode};
use quiver_server::config::{ApiKey, NatsConfig};
use quiver_tests::nats::NatsServer;
use quiver_tests::*;

/// JetStream may keep at most this in memory: less than one tenant's history stream reserves.
const NATS_CONF: &str = "jetstream {\n  max_memory_store: 4MB\n  max_file_store: 4MB\n}\n";

const ACME: &str = "acme-key-0123456789abcdef0123456789ab";

#[tokio::test]
async fn a_full_store_is_reported_without_the_brokers_words() -> Result<()> {
    let nats = NatsServer::start_with_config(NATS_CONF).await?;
    let server = TestServer::start_with(|c| {
        c.nats = Some(NatsConfig::new(nats.url()));
        add_history_namespace(c, "h", 100);
        // One tenant's stream reserves this much, more than the store has.
        c.limits.history_tenant_max_bytes = 16 * 1024 * 1024;
        c.api.keys = vec![ApiKey {
            key: ACME.into(),
            tenant: Some("acme".into()),
        }];
    })
    .await?;
    wait_ready(&server).await?;
    let alice = Client::connect(client_config(
        &server,
        token_fixed(full_token("acme", "alice")),
    ))
    .await?;
    let said = |what: &str, message: &str| {
        let lower = message.to_lowercase();
        for word in [
            "insufficient",
            "resources",
            "memory",
            "10028",
            "jetstream",
            "maximum",
        ] {
            assert!(!lower.contains(word), "{what}: {word:?} in {message:?}");
        }
        assert_eq!(message, quiver_server::broker::BROKER_FAILED, "{what}");
    };
    // The broker's refusal, in each way a client or backend reaches a history room's store.
    match alice.publish_ack("h.x", "one").await {
        Err(e) => {
            assert_eq!(e.error_code(), Some(ErrorCode::Unavailable), "{e}");
            let quiver_client::ClientError::Server { message, .. } = &e else {
                panic!("{e}")
            };
            said("Publish", message);
        }
        Ok(position) => panic!("stored at {position:?} beyond the store's room"),
    }
    match alice.history("h.x", None, 10).await {
        Err(quiver_client::ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Unavailable.as_u16());
            said("History", &message);
        }
        other => panic!("History: {other:?}"),
    }
    let answer = reqwest::Client::new()
        .post(format!("http://{}/api/v1/publish/h.x", server.http))
        .bearer_auth(ACME)
        .body("x")
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 503);
    let error = &answer.json::<serde_json::Value>().await?["error"];
    assert_eq!(error["code"], "unavailable", "{error}");
    said("API publish", error["message"].as_str().unwrap_or_default());
    // A Subscribe waits for the room's listener, which the broker refuses too: after the wait,
    // that refusal, not "timed out" (outside audit 42, 2).
    match alice.subscribe("h.y").await {
        Err(quiver_client::ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Unavailable.as_u16());
            said("Subscribe", &message);
        }
        other => panic!("Subscribe: {:?}", other.map(|_| ())),
    }
    // A room without history does not touch the store: the session works on.
    alice.publish_ack("chat.x", "live").await?;
    Ok(())
}

/// A history room whose stream JetStream refuses takes its listener's whole set-up deadline (3
/// s) to be refused. Meanwhile another room's subscribe, another tenant's live room here, is
/// not held up (the set-up held the lock of every room's interest: 14.7 s behind five such
/// subscribes; outside audit 67, F2), and a second subscriber of the refused room waits for the
/// set-up and hears the refusal too (it was told `Subscribed` at once, before the room was
/// listened to, and then received nothing; F3); every subscriber that waited for the set-up
/// hears its refusal, not a set-up of its own after it (audit 72, F1).
#[tokio::test]
async fn a_refused_history_room_holds_up_no_other_room_and_refuses_every_subscriber() -> Result<()>
{
    use quiver_proto::{Command, ErrorCode, Event};
    let nats = NatsServer::start_with_config(NATS_CONF).await?;
    let server = TestServer::start_with(|c| {
        c.nats = Some(NatsConfig::new(nats.url()));
        add_history_namespace(c, "h", 100);
        c.limits.history_tenant_max_bytes = 16 * 1024 * 1024;
    })
    .await?;
    wait_ready(&server).await?;
    let mut first = Raw::connect(&server, &full_token("acme", "first")).await?;
    let mut second = Raw::connect(&server, &full_token("acme", "second")).await?;
    let mut third = Raw::connect(&server, &full_token("acme", "third")).await?;
    let mut other = Raw::connect(&server, &full_token("other", "bystander")).await?;
    let subscribe = |room: &str| Command::Subscribe {
        room: room.into(),
        resume: None,
    };
    let first_id = first.send(subscribe("h.x")).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second_id = second.send(subscribe("h.x")).await?;
    let third_id = third.send(subscribe("h.x")).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Answered while the refused room's set-up still runs.
    let other_id = other.send(subscribe("live.y")).await?;
    let answer = other.recv_reply(other_id).await?;
    assert!(matches!(answer, Event::Subscribed { .. }), "{answer:?}");
    let still_waiting = tokio::time::timeout(Duration::from_millis(50), first.recv()).await;
    assert!(
        still_waiting.is_err(),
        "the refused room's set-up ended before the other room was answered: {still_waiting:?}"
    );
    let mut answered = Vec::new();
    for (raw, id) in [
        (&mut first, first_id),
        (&mut second, second_id),
        (&mut third, third_id),
    ] {
        match raw.recv_reply(id).await? {
            Event::Error { code, .. } => assert_eq!(code, ErrorCode::Unavailable.as_u16()),
            other => anyhow::bail!("a subscriber of the refused room was answered {other:?}"),
        }
        answered.push(tokio::time::Instant::now());
    }
    // The subscribers that waited for the one set-up share its refusal: each set-up waits
    // 3 s for JetStream, and one apiece answered the third 6 s after the first (outside
    // audit 72, F1).
    let spread = answered[2] - answered[0];
    assert!(
        spread < Duration::from_millis(1500),
        "the waiting subscribers were answered {spread:?} apart: a set-up each"
    );
    Ok(())
}

/// A publication under an idempotency key carries a message id NATS knows it by: published
/// again with it (the API lets go of the key after a failure, and an ack that timed out may
/// have been stored after all), JetStream stores it once and answers the first position
/// (outside audit 67, F4: the retry was stored twice).
#[tokio::test]
async fn a_stored_publication_published_again_with_its_id_is_stored_once() -> Result<()> {
    use quiver_server::broker::Broker;
    let nats = NatsServer::start().await?;
    let mut config = quiver_server::Config::default();
    add_history_namespace(&mut config, "h", 100);
    let hub = std::sync::Arc::new(quiver_server::hub::Hub::with_namespaces(["h"]));
    let broker = quiver_server::broker::nats::NatsBroker::connect(
        &NatsConfig::new(nats.url()),
        hub,
        std::sync::Arc::new(config),
    )
    .await?;
    let key = quiver_server::hub::RoomKey {
        tenant: quiver_proto::TenantId::parse("acme")?,
        room: quiver_proto::RoomName::parse("h.once")?,
    };
    let one = quiver_server::idempotency::digest(b"one");
    let id = quiver_server::idempotency::message_id(&key, "key-1", &one);
    let mut first = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while first.is_none() {
        // The broker's first connection may still be on its way.
        match broker
            .publish_once(key.clone(), bytes::Bytes::from_static(b"one"), id.clone())
            .await
        {
            Ok(position) => first = position,
            Err(e) => anyhow::ensure!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = broker
        .publish_once(key.clone(), bytes::Bytes::from_static(b"one"), id)
        .await?;
    assert_eq!(again, first, "the repeat answers the first one's position");
    // Another key, or the same key with another payload: another publication.
    let two = quiver_server::idempotency::digest(b"two");
    assert_ne!(
        quiver_server::idempotency::message_id(&key, "key-1", &two),
        quiver_server::idempotency::message_id(&key, "key-1", &one)
    );
    let other = quiver_server::idempotency::message_id(&key, "key-2", &two);
    let next = broker
        .publish_once(key.clone(), bytes::Bytes::from_static(b"two"), other)
        .await?
        .ok_or_else(|| anyhow::anyhow!("a history room has positions"))?;
    let first = first.ok_or_else(|| anyhow::anyhow!("a history room has positions"))?;
    assert_eq!(
        next.offset,
        first.offset + 1,
        "stored once: the next one follows it"
    );
    Ok(())
}
