//! The native client against an in-process server, over both transports: `Client::close`
//! carries out what `publish` accepted before it closes (outside audit 115, F2: the
//! publications still queued, or waiting for the pacer, were dropped with the connection).

use std::time::Duration;

use quiver_client::{token_fixed, Client, ClientConfig, SubEvent, Transport};
use quiver_tests::*;

over_both_client_transports!(close_carries_out_the_publishes_it_accepted);

fn config_for(server: &TestServer, via: Transport, user: &str) -> ClientConfig {
    let mut config = client_config(server, token_fixed(full_token("acme", user)));
    config.ws_urls = vec![format!("ws://{}/v1/ws", server.http)];
    config.transport = via;
    config
}

/// More than the server's burst of commands (200 by default), so most of them wait for the
/// pacer when `close()` is called, and two acknowledged ones in flight.
const PUBLISHES: usize = 300;

async fn close_carries_out_the_publishes_it_accepted(via: Transport) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let subscriber = Client::connect(config_for(&server, via, "bob")).await?;
    let mut sub = subscriber.subscribe("chat.flush").await?;
    let publisher = Client::connect(config_for(&server, via, "alice")).await?;

    for i in 0..PUBLISHES {
        publisher.publish("chat.flush", format!("{i}")).await?;
    }
    // Acknowledged ones, not awaited: their answers are what the close waits for.
    let acked = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let first = publisher.publish_ack("chat.flush", "ack-1");
            let second = publisher.publish_ack("chat.flush", "ack-2");
            let (first, second) = tokio::join!(first, second);
            first.is_ok() && second.is_ok()
        })
    };
    tokio::task::yield_now().await;
    let started = std::time::Instant::now();
    tokio::time::timeout(WAIT, publisher.close()).await?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "close() took {took:?}");
    assert_eq!(publisher.close_reason().map(|(code, _)| code), Some(0));

    let mut got = Vec::new();
    while got.len() < PUBLISHES + 2 {
        match tokio::time::timeout(WAIT, sub.recv()).await {
            Ok(Some(SubEvent::Publication { payload, .. })) => {
                got.push(String::from_utf8_lossy(&payload).into_owned());
            }
            Ok(other) => anyhow::bail!("after {} publications: {other:?}", got.len()),
            Err(_) => anyhow::bail!(
                "{} of {} publications arrived; the last {:?}",
                got.len(),
                PUBLISHES + 2,
                got.last()
            ),
        }
    }
    let want: Vec<String> = (0..PUBLISHES).map(|i| i.to_string()).collect();
    assert_eq!(got[..PUBLISHES], want[..], "in order, none lost");
    assert!(
        acked.await?,
        "the acknowledged ones were answered before the close"
    );
    subscriber.close().await;
    Ok(())
}
