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
