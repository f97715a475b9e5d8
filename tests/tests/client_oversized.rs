//! The native client against an in-process server, over both transports: a command too large
//! for the session's `max_frame` (a room name of 70 KB, a call's method name of 70 KB) fails
//! that request alone, locally, with a typed error. Sent, the server would take it as a
//! protocol error and close the session for good (3001, `reconnect: false`), every
//! subscription with it (outside audit 115, F1).

use quiver_client::{token_fixed, Client, ClientConfig, ConnectionState, ErrorCode, SubEvent};
use quiver_client::{Subscription, Transport};
use quiver_tests::*;

over_both_client_transports!(commands_over_max_frame_fail_alone_and_locally);

fn config_for(server: &TestServer, via: Transport) -> ClientConfig {
    let mut config = client_config(server, token_fixed(full_token("acme", "alice")));
    config.ws_urls = vec![format!("ws://{}/v1/ws", server.http)];
    config.transport = via;
    config
}

/// The payload of the next event of `sub` (within [`WAIT`]), which must be a publication.
async fn payload(sub: &mut Subscription) -> anyhow::Result<bytes::Bytes> {
    match tokio::time::timeout(WAIT, sub.recv()).await {
        Ok(Some(SubEvent::Publication { payload, .. })) => Ok(payload),
        other => anyhow::bail!("expected a publication on {}, got {other:?}", sub.room()),
    }
}

async fn commands_over_max_frame_fail_alone_and_locally(via: Transport) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let client = Client::connect(config_for(&server, via)).await?;
    let max_frame = client.welcome().expect("welcome").limits.max_frame as usize;
    let mut ok = client.subscribe("chat.ok").await?;

    let long_room = format!("chat.{}", "a".repeat(max_frame + 4_000));
    let invalid_room = |res: Result<(), quiver_client::ClientError>, what: &str| {
        let err = res.expect_err(what);
        assert_eq!(
            err.error_code(),
            Some(ErrorCode::InvalidRoom),
            "{what}: {err}"
        );
        assert!(err.to_string().contains("checked locally"), "{what}: {err}");
    };
    invalid_room(client.subscribe(&long_room).await.map(drop), "subscribe");
    invalid_room(client.presence(&long_room).await.map(drop), "presence");
    invalid_room(
        client.presence_stats(&long_room).await.map(drop),
        "presence_stats",
    );
    invalid_room(
        client.history(&long_room, None, 10).await.map(drop),
        "history",
    );
    let err = client
        .call(&"m".repeat(max_frame + 4_000), "x")
        .await
        .expect_err("call");
    assert_eq!(err.error_code(), Some(ErrorCode::PayloadTooLarge), "{err}");

    // None of them reached the server: the session, and its subscription, go on.
    assert!(
        matches!(*client.state().borrow(), ConnectionState::Connected { .. }),
        "{:?}",
        client.close_reason()
    );
    client.ping().await?;
    client.publish_ack("chat.ok", "still here").await?;
    assert_eq!(payload(&mut ok).await?, "still here");
    let mut other = client.subscribe("chat.other").await?;
    client.publish("chat.other", "and here").await?;
    assert_eq!(payload(&mut other).await?, "and here");
    client.close().await;
    Ok(())
}
