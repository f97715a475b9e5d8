//! The example's whole story against a real nats-server and a real Quiver: place an order by
//! call, follow its room (the owner only, by the subscribe hook), see its statuses.

use std::time::Duration;

use futures::StreamExt;
use quiver_client::{token_fixed, Client, ErrorCode, SubEvent};
use quiver_server::config::NatsConfig;
use quiver_server::rpc::HookConfig;
use quiver_tests::nats::NatsServer;
use quiver_tests::rpc::call_token;
use quiver_tests::{client_config, token, TestServer, WAIT};

#[tokio::test]
async fn place_an_order_and_follow_it() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        c.nats = Some(NatsConfig::new(nats.url()));
        c.rpc.hooks = vec![HookConfig {
            namespace: "order".into(),
            subscribe: true,
            publish: false,
            timeout: Duration::from_secs(5),
            fail_open: false,
        }];
    })
    .await?;
    let _backend = quiver_order_backend::start(quiver_order_backend::Settings {
        nats_url: nats.url(),
        tenant: "acme".into(),
        api_url: format!("http://{}", server.http),
        token: token("acme", "order-backend", &[], &["order.>"], 3600),
        step: Duration::from_secs(1),
    })
    .await?;
    let connect = |user: &str| {
        let config = client_config(&server, token_fixed(call_token("acme", user, &["order.*"])));
        Client::connect(config)
    };
    let alice = connect("alice").await?;
    let bob = connect("bob").await?;

    let refused = alice
        .call("order.place", r#"{"item":"widget","qty":0}"#)
        .await;
    let err = refused.expect_err("qty 0 is refused");
    assert_eq!(err.error_code(), Some(ErrorCode::BadRequest), "{err}");

    let answer = alice
        .call("order.place", r#"{"item":"widget","qty":2}"#)
        .await?;
    let answer: serde_json::Value = serde_json::from_slice(&answer)?;
    let id = answer["order"].as_str().expect("an order id").to_owned();
    let room = format!("order.{id}");
    let mut follow = alice.subscribe(&room).await?;

    let err = bob.subscribe(&room).await.expect_err("not bob's order");
    assert_eq!(err.error_code(), Some(ErrorCode::PermissionDenied));
    assert!(err.to_string().contains("owner"), "{err}");

    let mut statuses = Vec::new();
    while statuses.len() < 3 {
        match tokio::time::timeout(WAIT, follow.next()).await? {
            Some(SubEvent::Publication { payload, .. }) => {
                let event: serde_json::Value = serde_json::from_slice(&payload)?;
                assert_eq!(event["order"], id.as_str());
                statuses.push(event["status"].as_str().unwrap_or_default().to_owned());
            }
            Some(_) => {}
            None => anyhow::bail!("the order's subscription ended"),
        }
    }
    assert_eq!(statuses, quiver_order_backend::STATUSES);
    alice.close().await;
    bob.close().await;
    Ok(())
}
