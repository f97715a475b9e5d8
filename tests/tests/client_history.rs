//! The Rust client's `history()`, `subscribe_from()`, and a backend unsubscribe as the client
//! sees it, over WebTransport and WebSocket.

use std::time::Duration;

use futures::StreamExt;
use quiver_client::{Client, ClientError, ErrorCode, Recovery, SubEvent, Transport};
use quiver_proto::Position;
use quiver_server::config::{ApiKey, NamespaceConfig};
use quiver_tests::*;

const ACME: &str = "acme-key-0123456789abcdef0123456789ab";

fn configure(c: &mut quiver_server::Config) {
    c.namespaces.push(NamespaceConfig {
        name: "h".into(),
        history_size: 10,
        history_ttl: Duration::from_secs(60),
        presence: false,
        ..Default::default()
    });
    c.api.keys = vec![ApiKey {
        key: ACME.into(),
        tenant: Some("acme".into()),
    }];
}

async fn client(server: &TestServer, via: Via) -> anyhow::Result<Client> {
    let tok = full_token("acme", "rust");
    let mut config = client_config(server, quiver_client::token_fixed(tok));
    config.ws_urls = vec![format!("ws://{}/v1/ws", server.http)];
    config.transport = match via {
        Via::WebTransport => Transport::WebTransport,
        Via::WebSocket => Transport::WebSocket,
    };
    Ok(Client::connect(config).await?)
}

async fn next(sub: &mut quiver_client::Subscription) -> anyhow::Result<SubEvent> {
    tokio::time::timeout(WAIT, sub.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("subscription ended"))
}

fn payload(event: SubEvent) -> anyhow::Result<bytes::Bytes> {
    match event {
        SubEvent::Publication { payload, .. } => Ok(payload),
        other => anyhow::bail!("expected a publication, got {other:?}"),
    }
}

async fn history_and_subscribe_from(via: Via) -> anyhow::Result<()> {
    let server = TestServer::start_with(configure).await?;
    let c = client(&server, via).await?;
    let mut positions = Vec::new();
    for i in 0..5u8 {
        positions.push(c.publish_ack("h.r", vec![i]).await?.expect("a position"));
    }
    let page = c.history("h.r", None, 2).await?;
    assert_eq!(page.publications.len(), 2);
    assert!(page.truncated);
    assert_eq!(page.position, Some(positions[4]));
    assert_eq!(page.publications[1].position, positions[1]);
    let rest = c.history("h.r", Some(positions[1]), 100).await?;
    let got: Vec<u8> = rest.publications.iter().map(|p| p.payload[0]).collect();
    assert_eq!(got, [2, 3, 4]);
    assert!(!rest.truncated);
    let gone = Position {
        epoch: positions[0].epoch ^ 2,
        offset: 1,
    };
    match c.history("h.r", Some(gone), 10).await {
        Err(ClientError::Server { code, .. }) => {
            assert_eq!(code, ErrorCode::UnrecoverablePosition.as_u16())
        }
        other => anyhow::bail!("expected unrecoverable_position, got {other:?}"),
    }

    // Resume from a saved position: the outcome first, then what came after it, then live.
    let mut sub = c.subscribe_from("h.r", positions[2]).await?;
    assert_eq!(
        next(&mut sub).await?,
        SubEvent::Resubscribed {
            recovery: Recovery::Recovered { replayed: 2 }
        }
    );
    assert_eq!(payload(next(&mut sub).await?)?.as_ref(), &[3]);
    assert_eq!(payload(next(&mut sub).await?)?.as_ref(), &[4]);
    c.publish_ack("h.r", vec![5]).await?;
    assert_eq!(payload(next(&mut sub).await?)?.as_ref(), &[5]);
    let mut failed = c.subscribe_from("h.other", gone).await?;
    assert_eq!(
        next(&mut failed).await?,
        SubEvent::Resubscribed {
            recovery: Recovery::Failed
        }
    );

    // The backend ends the subscription: the client sees it end with `unsubscribed` and does not resubscribe.
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/unsubscribe", server.http))
        .bearer_auth(ACME)
        .json(&serde_json::json!({"user": "rust", "room": "h.r"}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    match next(&mut sub).await? {
        SubEvent::Ended { code, .. } => assert_eq!(code, ErrorCode::Unsubscribed.as_u16()),
        other => anyhow::bail!("expected the end, got {other:?}"),
    }
    assert!(tokio::time::timeout(WAIT, sub.next()).await?.is_none());
    c.ping().await?;
    Ok(())
}

over_both_transports!(history_and_subscribe_from);
