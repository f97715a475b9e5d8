//! A `latest` room's newest value is its own (PROTOCOL.md §10): on a congested connection it
//! waits in its subscription's slot until the datagram buffer has room, and no other room's
//! values push it out; and a peer that takes datagrams too small for any value gets its values
//! on the stream.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use quiver_proto::datagram::Latest;
use quiver_proto::Event;
use quiver_tests::relay::Relay;
use quiver_tests::*;

async fn server() -> Result<TestServer> {
    TestServer::start_with(|c| {
        // A window that does not grow without acknowledgements (BBR's start-up sends on), so a
        // held path congests the connection and its datagram buffer fills.
        c.transport.congestion_control = quiver_server::config::CongestionControl::NewReno;
        add_latest_namespace(c, "game");
        c.limits.commands_per_second = 10_000;
        c.timeouts.idle = Duration::from_secs(30);
    })
    .await
}

fn subscription_id(reply: &Event) -> Result<u64> {
    match reply {
        Event::Subscribed {
            subscription: Some(id),
            ..
        } => Ok(*id),
        other => bail!("expected Subscribed with an id, got {other:?}"),
    }
}

async fn publish(raw: &mut Raw, room: &str, payload: &[u8]) -> Result<()> {
    match raw.publish(room, payload).await? {
        Event::Published { .. } => Ok(()),
        other => bail!("publish to {room}: {other:?}"),
    }
}

/// A subscriber whose path is congested (the server's packets held a while, then delivered: a
/// slow path that loses nothing) watches a room
/// flooded with values and a quiet room that gets one new value in the middle of the flood:
/// once the path clears, the quiet room's newest value arrives. It was sent into a full
/// datagram buffer, where quinn makes room by dropping the oldest datagram, whichever room it
/// was for: the flood behind it pushed it out, counted as sent, never sent again (outside
/// audit 108, F2).
#[tokio::test]
async fn a_flooded_room_does_not_push_out_another_rooms_newest_value() -> Result<()> {
    let server = server().await?;
    let relay = Relay::to(server.wt.port()).await?;
    let mut sub = Raw::with_stream_window_at(
        relay.port,
        server.hash,
        &full_token("acme", "s"),
        256 * 1024,
    )
    .await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    let (quiet, _quiet_stream) = sub.subscribe_from("game.quiet", None).await?;
    let quiet = subscription_id(&quiet)?;
    let (_, _flood_stream) = sub.subscribe_from("game.flood", None).await?;
    relay.hold();
    for i in 0..100u32 {
        publish(&mut publisher, "game.flood", &[i as u8; 1_000]).await?;
    }
    publish(&mut publisher, "game.quiet", b"newest-quiet").await?;
    for i in 0..200u32 {
        publish(&mut publisher, "game.flood", &[i as u8; 1_000]).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.release().await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let datagram = tokio::time::timeout_at(deadline, sub.conn().receive_datagram())
            .await
            .context("the quiet room's newest value never arrived")??;
        let payload = datagram.payload();
        let latest = Latest::decode(&payload)?;
        if latest.subscription == quiet {
            assert_eq!(latest.payload, b"newest-quiet");
            return Ok(());
        }
    }
}

/// A peer whose `max_datagram_frame_size` leaves no room for a datagram's header takes its
/// `latest` values on the stream. The patched wtransport's size computation underflowed: with
/// overflow checks on (debug builds, tests) the subscription's writer panicked and the
/// subscriber got nothing (outside audit 108, F3).
#[tokio::test]
async fn a_peer_taking_only_tiny_datagrams_gets_its_values_on_the_stream() -> Result<()> {
    let server = server().await?;
    let mut sub = Raw::with_transport_at(
        server.wt.port(),
        server.hash,
        &full_token("acme", "tiny"),
        |t| {
            t.datagram_receive_buffer_size(Some(5));
        },
    )
    .await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    let (_, mut stream) = sub.subscribe_from("game.tiny", None).await?;
    publish(&mut publisher, "game.tiny", b"on the stream").await?;
    let frame = tokio::time::timeout(WAIT, stream.next())
        .await
        .context("no value on the stream")??;
    match frame.event {
        Event::Latest { payload, .. } => assert_eq!(&payload[..], b"on the stream"),
        other => bail!("expected a Latest frame, got {other:?}"),
    }
    Ok(())
}
