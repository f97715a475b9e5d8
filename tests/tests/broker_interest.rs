//! An instance listens on NATS only to rooms it has subscribers for (interest-based, no
//! firehose), and stops listening when the last one leaves, however it leaves: counted on a
//! real nats-server's own monitoring page.

use std::time::Duration;

use quiver_proto::{Command, ErrorCode, Event};
use quiver_tests::nats::{clustered, NatsServer};
use quiver_tests::*;

/// Waits until nats-server holds `want` subscriptions.
async fn wait_subscriptions(nats: &NatsServer, want: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = nats.subscriptions().await?;
        if now == want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nats-server holds {now} subscriptions, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A subscriber dropped as slow while alone in its room takes the instance's NATS subscription
/// for the room with it, as an `Unsubscribe` does: otherwise a client could leave one behind
/// per room name, for the life of the process.
#[tokio::test]
async fn the_last_subscriber_leaving_as_slow_ends_the_rooms_nats_subscription() -> anyhow::Result<()>
{
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        clustered(&nats)(c);
        c.limits.subscriber_queue = 4;
    })
    .await?;
    wait_ready(&server).await?;
    let idle = nats.subscriptions().await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;

    // An ordinary subscriber first: subscribed, one more; unsubscribed, back.
    let mut polite = Raw::connect(&server, &full_token("acme", "polite")).await?;
    let _stream = polite.subscribe("polite").await?;
    wait_subscriptions(&nats, idle + 1).await?;
    polite
        .request(Command::Unsubscribe {
            room: "polite".into(),
        })
        .await?;
    wait_subscriptions(&nats, idle).await?;

    // A subscriber that gives its stream 1 KiB of credit and reads none of it.
    let mut slow = Raw::with_stream_window(&server, &full_token("acme", "slow"), 1024).await?;
    for room in ["slow1", "slow2"] {
        let subscribed = slow
            .request(Command::Subscribe {
                room: room.into(),
                resume: None,
            })
            .await?;
        assert!(
            matches!(subscribed, Event::Subscribed { .. }),
            "{subscribed:?}"
        );
        wait_subscriptions(&nats, idle + 1).await?;
        for i in 0..20u32 {
            publ.publish(room, &[i as u8; 500]).await?;
        }
        // Its queue overflowed: it is told, and the instance stops listening to the room.
        let ended = loop {
            match slow.recv().await?.event {
                Event::Unsubscribed { room: r, code, .. } if r == room => break code,
                Event::SubscriptionStream { .. } => continue,
                other => anyhow::bail!("unexpected {other:?}"),
            }
        };
        assert_eq!(ended, ErrorCode::SlowConsumer.as_u16());
        wait_subscriptions(&nats, idle).await?;
    }
    // The session is unharmed.
    assert!(matches!(slow.request(Command::Ping).await?, Event::Pong));
    Ok(())
}
