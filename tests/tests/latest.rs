//! The `latest` lane (issue 15, PROTOCOL.md §10): values of `latest` rooms go as QUIC datagrams
//! when they fit, else on the room's stream with their sequence; a subscriber that cannot keep
//! up gets the newest value, never a queue and never `slow_consumer`; clients publish to them by
//! datagram, checked like any publish.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use quiver_proto::datagram::{Latest, PublishDatagram};
use quiver_proto::{
    decode_event, Command, ErrorCode, Event, FrameDecoder, ServerFrame, DEFAULT_MAX_FRAME,
};
use quiver_tests::relay::Relay;
use quiver_tests::*;
use tokio_tungstenite::tungstenite::Message;

/// `game` delivers `latest`; everything else is reliable.
async fn server(tweak: impl FnOnce(&mut quiver_server::Config)) -> Result<TestServer> {
    TestServer::start_with(|c| {
        add_latest_namespace(c, "game");
        tweak(c);
    })
    .await
}

fn subscription_id(reply: &Event) -> Option<u64> {
    match reply {
        Event::Subscribed { subscription, .. } => *subscription,
        _ => None,
    }
}

/// The next datagram of the session, decoded.
async fn datagram(raw: &Raw) -> Result<(u64, u64, Bytes)> {
    let d = tokio::time::timeout(WAIT, raw.conn().receive_datagram())
        .await
        .context("no datagram")??;
    let payload = d.payload();
    let latest = Latest::decode(&payload)?;
    Ok((
        latest.subscription,
        latest.sequence,
        Bytes::copy_from_slice(latest.payload),
    ))
}

/// Reads `Latest` values from a room's stream (each payload starting with its sequence, big
/// endian) until the one numbered `last`; how many came.
async fn values_until(stream: &mut RoomStream, last: u32) -> Result<u32> {
    let mut received = 0;
    loop {
        match stream.next().await?.event {
            Event::Latest {
                sequence, payload, ..
            } => {
                received += 1;
                assert_eq!(&payload[..4], &(sequence as u32).to_be_bytes());
                if sequence == u64::from(last) {
                    return Ok(received);
                }
            }
            other => bail!("unexpected {other:?}"),
        }
    }
}

/// Sends one datagram publication per room; returns once the backend holds the first (the
/// others wait behind it in the session's lane).
async fn datagrams_behind_a_held_hook(
    publisher: &Raw,
    backend: &quiver_tests::rpc::GatedBackend,
    rooms: &[&str],
    payload: &[u8],
) -> Result<()> {
    for room in rooms {
        publisher
            .conn()
            .send_datagram(PublishDatagram { room, payload }.encode())?;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while backend.asked.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no hook asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The rest reach the lane.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// A server whose `game` namespace has a publish hook (failing closed after 20 s) asked of a
/// backend that holds every answer until the test opens its gate.
async fn with_gated_publish_hook(
) -> Result<(TestServer, std::sync::Arc<quiver_tests::rpc::GatedBackend>)> {
    gated_publish_hook_and(|_| {}).await
}

/// [`with_gated_publish_hook`], the configuration tweaked.
async fn gated_publish_hook_and(
    tweak: impl FnOnce(&mut quiver_server::Config),
) -> Result<(TestServer, std::sync::Arc<quiver_tests::rpc::GatedBackend>)> {
    let (url, backend) = quiver_tests::rpc::gated_backend().await?;
    let server = server(|c| {
        tweak(c);
        c.rpc.url = Some(url);
        c.rpc.hooks = vec![quiver_server::rpc::HookConfig {
            namespace: "game".into(),
            subscribe: false,
            publish: true,
            timeout: Duration::from_secs(20),
            fail_open: false,
        }];
    })
    .await?;
    Ok((server, backend))
}

/// Publishes with an ack (so the value is in the subscribers' slots when this returns).
async fn publish(raw: &mut Raw, room: &str, payload: Vec<u8>) -> Result<()> {
    match raw.publish(room, &payload).await? {
        Event::Published { .. } => Ok(()),
        other => bail!("publish to {room}: {other:?}"),
    }
}

#[tokio::test]
async fn latest_values_arrive_as_datagrams_with_the_subscription_id() -> Result<()> {
    let server = server(|_| {}).await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    let (reply, _stream) = sub.subscribe_from("game.arena", None).await?;
    let id = subscription_id(&reply).context("a latest room's Subscribed carries an id")?;
    let (reliable, _other) = sub.subscribe_from("chat.x", None).await?;
    assert_eq!(subscription_id(&reliable), None, "{reliable:?}");

    let mut last = 0;
    for n in 1..=5u8 {
        publish(&mut publisher, "game.arena", vec![n; 40]).await?;
        let (got_id, sequence, payload) = datagram(&sub).await?;
        assert_eq!(got_id, id);
        assert!(sequence > last, "sequences grow: {sequence} after {last}");
        last = sequence;
        assert_eq!(payload, vec![n; 40]);
    }
    let page = server.metrics().await?;
    assert!(metric_sum(&page, "quiver_datagrams_sent_total", &[]) >= 5.0);
    Ok(())
}

/// Subscription ids are counted per session: another tenant's (or session's) subscriptions do
/// not move them, so they say nothing about the rest of the server; a session never reuses one,
/// and its datagrams carry its own.
#[tokio::test]
async fn subscription_ids_are_per_session_and_say_nothing_about_others() -> Result<()> {
    let server = server(|_| {}).await?;
    let mut acme = Raw::connect(&server, &full_token("acme", "a")).await?;
    let mut other = Raw::connect(&server, &full_token("other", "o")).await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    let (first, _s1) = acme.subscribe_from("game.a", None).await?;
    for room in ["game.x", "game.y", "game.z", "chat.q"] {
        let _ = other.subscribe_from(room, None).await?;
    }
    let (reply, _s2) = other.subscribe_from("game.w", None).await?;
    assert_eq!(subscription_id(&reply), Some(5));
    let (second, _s3) = acme.subscribe_from("game.b", None).await?;
    assert_eq!(subscription_id(&first), Some(1));
    assert_eq!(subscription_id(&second), Some(2));
    // Unsubscribed and subscribed again: a new id, never a reused one.
    let gone = acme
        .request(Command::Unsubscribe {
            room: "game.a".into(),
        })
        .await?;
    assert!(
        matches!(gone, Event::Unsubscribed { code: 0, .. }),
        "{gone:?}"
    );
    let (again, _s4) = acme.subscribe_from("game.a", None).await?;
    assert_eq!(subscription_id(&again), Some(3));
    publish(&mut publisher, "game.a", vec![7; 10]).await?;
    let (id, _, payload) = datagram(&acme).await?;
    assert_eq!((id, payload), (3, Bytes::from(vec![7; 10])));
    Ok(())
}

#[tokio::test]
async fn a_value_too_large_for_a_datagram_goes_on_the_stream_with_its_sequence() -> Result<()> {
    let server = server(|_| {}).await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    let (reply, mut stream) = sub.subscribe_from("game.map", None).await?;
    let id = subscription_id(&reply).context("id")?;
    let max = sub.conn().max_datagram_size().context("datagrams")?;

    publish(&mut publisher, "game.map", vec![1; 8]).await?;
    let (_, first, _) = datagram(&sub).await?;
    publish(&mut publisher, "game.map", vec![2; max + 100]).await?;
    match stream.next().await?.event {
        Event::Latest {
            room,
            sequence,
            payload,
        } => {
            assert_eq!(room, "game.map");
            assert_eq!(
                sequence,
                first + 1,
                "the stream value is in the same sequence"
            );
            assert_eq!(payload.len(), max + 100);
        }
        other => bail!("expected Latest on the stream, got {other:?}"),
    }
    publish(&mut publisher, "game.map", vec![3; 8]).await?;
    let (got_id, third, payload) = datagram(&sub).await?;
    assert_eq!(
        (got_id, third, &payload[..]),
        (id, first + 2, &[3u8; 8][..])
    );
    Ok(())
}

/// A subscriber that reads nothing while 400 values of 16 KiB (too large for datagrams, so on
/// its stream) are published: far past its stream's flow-control window and the queue a
/// reliable room allows (`subscriber_queue` 8). A reliable room's subscriber is dropped as a
/// slow consumer; the `latest` one keeps its subscription, and once it reads it gets a few
/// values, the last of them the newest.
#[tokio::test]
async fn a_stalled_reader_gets_the_newest_value_not_a_queue_and_is_never_a_slow_consumer(
) -> Result<()> {
    let server = server(|c| {
        c.limits.subscriber_queue = 8;
        c.limits.commands_per_second = 10_000;
        // A stream that takes nothing for this long ends a reliable room (`slow_consumer`),
        // never a `latest` one.
        c.timeouts.reply = Duration::from_millis(500);
    })
    .await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    let (_, mut game) = sub.subscribe_from("game.big", None).await?;
    let (_, _chat) = sub.subscribe_from("chat.big", None).await?;
    let n = 400u32;
    for i in 1..=n {
        let mut payload = vec![0u8; 16 * 1024];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        publish(&mut publisher, "game.big", payload.clone()).await?;
        if i <= 200 {
            publish(&mut publisher, "chat.big", payload).await?;
        }
    }
    // Stalled for well past the stall deadline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // On the control stream: the reliable room ended as a slow consumer, the latest one not.
    let ping = sub.send(Command::Ping).await?;
    let mut ended = Vec::new();
    loop {
        let frame = sub.recv().await?;
        if let Event::Unsubscribed { room, code, .. } = &frame.event {
            ended.push((room.clone(), *code));
        }
        if frame.id == ping {
            break;
        }
    }
    assert_eq!(
        ended,
        vec![("chat.big".to_owned(), ErrorCode::SlowConsumer.as_u16())]
    );

    let received = values_until(&mut game, n).await?;
    assert!(
        received < n / 2,
        "{received} of {n} values reached the reader: stale values were queued"
    );
    let page = server.metrics().await?;
    assert!(metric_sum(&page, "quiver_latest_conflated_total", &[]) > 0.0);
    // Still subscribed, still delivering.
    publish(&mut publisher, "game.big", vec![7; 16 * 1024]).await?;
    assert!(
        matches!(game.next().await?.event, Event::Latest { sequence, .. } if sequence == u64::from(n) + 1)
    );
    Ok(())
}

/// The same over WebSocket: a socket nobody reads, 1,000 values of 16 KiB into its `latest`
/// room, no `slow_consumer`, and the reader then gets far fewer values than were published,
/// ending with the newest.
#[tokio::test]
async fn websocket_latest_rooms_are_conflated_server_side() -> Result<()> {
    let server = server(|c| {
        c.limits.subscriber_queue = 8;
        c.limits.commands_per_second = 10_000;
    })
    .await?;
    let mut deaf = deaf_websocket(&server, "deaf", "game.ws").await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    // Read up to the `Subscribed` reply, then stop reading.
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    'subscribed: loop {
        let message = tokio::time::timeout(WAIT, deaf.next())
            .await
            .context("no Subscribed")?
            .context("socket ended")??;
        if let Message::Binary(data) = message {
            decoder.push(&data);
            while let Some(body) = decoder.next_frame()? {
                if let Event::Subscribed { subscription, .. } = decode_event(&body)?.event {
                    assert!(
                        subscription.is_some(),
                        "a latest room over WebSocket has an id too"
                    );
                    break 'subscribed;
                }
            }
        }
    }
    let n = 1000u32;
    for i in 1..=n {
        let mut payload = vec![0u8; 16 * 1024];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        publisher
            .send(Command::Publish {
                room: "game.ws".into(),
                payload: Bytes::from(payload),
                ack: i == n,
            })
            .await?;
    }
    loop {
        if matches!(publisher.recv().await?.event, Event::Published { .. }) {
            break;
        }
    }
    let mut latest = 0;
    let mut received = 0;
    while latest < u64::from(n) {
        let message = tokio::time::timeout(WAIT, deaf.next())
            .await
            .context("socket went quiet")?
            .context("socket ended")??;
        let Message::Binary(data) = message else {
            continue;
        };
        decoder.push(&data);
        while let Some(body) = decoder.next_frame()? {
            let ServerFrame { event, .. } = decode_event(&body)?;
            match event {
                Event::Latest {
                    sequence, payload, ..
                } => {
                    assert!(sequence > latest, "in order on one socket");
                    assert_eq!(&payload[..4], &(sequence as u32).to_be_bytes());
                    latest = sequence;
                    received += 1;
                }
                Event::Unsubscribed { code, .. } => bail!("subscription ended ({code})"),
                Event::Goodbye { code, reason, .. } => bail!("closed ({code}: {reason})"),
                _ => {}
            }
        }
    }
    assert!(
        received < n / 2,
        "{received} of {n} values were written: stale values were queued"
    );
    deaf.close(None).await?;
    Ok(())
}

/// Datagram publications are checked like `Publish`: the room must be a `latest` one the token
/// may publish to, the payload within `max_payload`, the datagram well formed. Refusals are
/// dropped silently (there is no one to answer) and counted by reason.
#[tokio::test]
async fn datagram_publications_are_checked_like_any_publish() -> Result<()> {
    let server = server(|c| c.limits.max_payload = 100).await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let (reply, _a) = sub.subscribe_from("game.a", None).await?;
    let id = subscription_id(&reply).context("id")?;
    let (_, _b) = sub.subscribe_from("game.b", None).await?;
    let (_, mut chat) = sub.subscribe_from("chat.c", None).await?;
    let publisher =
        Raw::connect(&server, &token("acme", "p", &[], &["game.a", "chat.c"], 60)).await?;
    let send = |room: &str, payload: &[u8]| {
        publisher
            .conn()
            .send_datagram(PublishDatagram { room, payload }.encode())
    };
    // Refused ones first; then one that passes, so everything before it was looked at.
    send("game.b", b"no permission")?;
    send("chat.c", b"not a latest room")?;
    send("game.a", &[9; 101])?;
    send("Game..A", b"bad name")?;
    publisher.conn().send_datagram([0x85u8, 0x80])?;
    let mut sent = 0u8;
    let payload = loop {
        // Datagrams may be lost, even on loopback: resend until one arrives.
        sent += 1;
        send("game.a", &[sent; 100])?;
        match tokio::time::timeout(Duration::from_millis(500), sub.conn().receive_datagram()).await
        {
            Ok(d) => break d?.payload(),
            Err(_) if sent < 10 => continue,
            Err(_) => bail!("no datagram publication arrived"),
        }
    };
    let latest = Latest::decode(&payload)?;
    assert_eq!(latest.subscription, id);
    assert_eq!(latest.payload.len(), 100);
    // Nothing reached the other rooms.
    sub.send(Command::Publish {
        room: "chat.c".into(),
        payload: Bytes::from_static(b"marker"),
        ack: true,
    })
    .await?;
    match chat.next().await?.event {
        Event::Publication { payload, .. } => assert_eq!(&payload[..], b"marker"),
        other => bail!("{other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), datagram(&sub))
            .await
            .is_err()
            || sent > 1,
        "game.b got a datagram it was not allowed"
    );
    let page = server.metrics().await?;
    for reason in [
        "permission_denied",
        "not_latest",
        "payload_too_large",
        "invalid_room",
        "malformed",
    ] {
        assert!(
            metric_sum(
                &page,
                "quiver_datagrams_dropped_total",
                &[("reason", reason)]
            ) >= 1.0,
            "no drop counted as {reason}"
        );
    }
    Ok(())
}

/// A datagram flood over `commands_per_second` is metered like commands: the excess is dropped
/// as `rate_limited`, and a flood far past it closes the session as `rate_abuse`.
#[tokio::test]
async fn datagram_publications_count_against_the_command_rate() -> Result<()> {
    let _metric = RATE_LIMITED_DATAGRAMS.lock().await;
    let server = server(|c| {
        c.limits.commands_per_second = 10;
        c.limits.abuse_factor = 3;
    })
    .await?;
    let publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    for _ in 0..20 {
        publisher.conn().send_datagram(
            PublishDatagram {
                room: "game.r",
                payload: b"x",
            }
            .encode(),
        )?;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = server.metrics().await?;
        if metric_sum(
            &page,
            "quiver_datagrams_dropped_total",
            &[("reason", "rate_limited")],
        ) >= 1.0
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no datagram was rate limited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Far over: 30 refusals within the window is abuse. Datagrams can be lost, so keep sending
    // (bounded) until the server closes.
    let mut closed = None;
    for _ in 0..50 {
        for _ in 0..20 {
            let _ = publisher.conn().send_datagram(
                PublishDatagram {
                    room: "game.r",
                    payload: b"x",
                }
                .encode(),
            );
        }
        if let Ok(e) =
            tokio::time::timeout(Duration::from_millis(100), publisher.conn().closed()).await
        {
            closed = Some(e);
            break;
        }
    }
    match closed {
        Some(wtransport::error::ConnectionError::ApplicationClosed(close)) => assert_eq!(
            close.code().into_inner(),
            u64::from(quiver_proto::CloseCode::RateAbuse.as_u16())
        ),
        other => bail!("expected a rate_abuse close, got {other:?}"),
    }
    Ok(())
}

/// Held by the tests that look at `quiver_datagrams_dropped_total{reason="rate_limited"}`: the
/// metrics registry is shared by every server of this test process, and one of them makes the
/// count grow on purpose.
static RATE_LIMITED_DATAGRAMS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Rust client paces `publish_unreliable` with its commands, which the server meters
/// together: 200 back to back against `commands_per_second = 20` were sent at once and refused
/// `rate_limited`, and the refusals closed the session as `rate_abuse` (outside audit 108, F1).
/// Now the excess waits as the room's newest value, which goes when a token frees up.
#[tokio::test]
async fn the_rust_client_paces_datagram_publications_and_the_newest_value_goes() -> Result<()> {
    use quiver_client::{token_fixed, ConnectionState, SubEvent};
    let _metric = RATE_LIMITED_DATAGRAMS.lock().await;
    let server = server(|c| c.limits.commands_per_second = 20).await?;
    let rate_limited = |page: &str| {
        metric(
            page,
            "quiver_datagrams_dropped_total{reason=\"rate_limited\"}",
        )
    };
    let before = rate_limited(&server.metrics().await?);
    let subscriber = quiver_client::Client::connect(client_config(
        &server,
        token_fixed(full_token("acme", "s")),
    ))
    .await?;
    let mut sub = subscriber.subscribe("game.fast").await?;
    let client = quiver_client::Client::connect(client_config(
        &server,
        token_fixed(full_token("acme", "p")),
    ))
    .await?;
    assert_eq!(
        client.transport(),
        Some(quiver_client::Transport::WebTransport)
    );
    let session = client.welcome().context("welcome")?.session;
    let mut state = client.state();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while state.changed().await.is_ok() {
            seen.push(state.borrow_and_update().clone());
        }
        seen
    });
    for n in 0..200u8 {
        client.publish_unreliable("game.fast", vec![n; 8]).await?;
    }
    client.ping().await?;
    // The newest value goes once a token frees up (about 50 ms at 19 a second).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(SubEvent::Publication { payload, .. })) if payload[..] == [199; 8] => break,
            Ok(Some(SubEvent::Publication { .. })) => {}
            other => bail!("the newest value did not arrive: {other:?}"),
        }
    }
    client.ping().await?;
    assert_eq!(client.welcome().context("welcome")?.session, session);
    assert_eq!(client.datagrams_dropped(), 0);
    client.close().await;
    let seen = tokio::time::timeout(WAIT, watcher).await??;
    assert!(
        !seen
            .iter()
            .any(|s| matches!(s, ConnectionState::Disconnected { .. })),
        "{seen:?}"
    );
    assert_eq!(rate_limited(&server.metrics().await?), before);
    subscriber.close().await;
    Ok(())
}

/// `Client::flush` waits for the values held for the pacer: after a burst of
/// `publish_unreliable` over the command rate, it resolves once the room's newest value has been
/// sent (and then a `Ping` answered), so a client dropped right after, which drops what still
/// waits, has lost nothing: the subscriber's last value is the newest. A flush that only pinged
/// (as `quiver pub --unreliable` did) went ahead of the held value, the `Ping` taking the pacer's
/// next token, and the value was dropped with the client (h9).
#[tokio::test]
async fn flush_sends_the_values_held_for_the_pacer_first() -> Result<()> {
    held_values_go(true).await
}

/// `Client::close` sends the values held for the pacer before it ends the control stream: the
/// subscriber's last value is the newest (they were dropped). The server reads the datagrams
/// it has received before it takes the control stream's end, right behind them, as the
/// session's end (before, it had read 2 of the 3 sent: `take_datagrams_left` in
/// `server/src/transport/webtransport.rs`).
#[tokio::test]
async fn close_sends_the_values_held_for_the_pacer() -> Result<()> {
    held_values_go(false).await
}

/// A burst of `publish_unreliable` over the command rate, then `flush()` and a drop of the client
/// (`flush`), or `close()`: the subscriber ends with the newest value.
async fn held_values_go(flush: bool) -> Result<()> {
    use quiver_client::{token_fixed, ClientError, SubEvent};
    // The client paces at 3 a second, bursts of 2: the third value on waits, a third of a
    // second a token.
    let server = server(|c| c.limits.commands_per_second = 4).await?;
    let subscriber = quiver_client::Client::connect(client_config(
        &server,
        token_fixed(full_token("acme", "s")),
    ))
    .await?;
    let mut sub = subscriber.subscribe("game.flush").await?;
    let client = quiver_client::Client::connect(client_config(
        &server,
        token_fixed(full_token("acme", "p")),
    ))
    .await?;
    assert_eq!(
        client.transport(),
        Some(quiver_client::Transport::WebTransport)
    );
    for n in 0..30u8 {
        client.publish_unreliable("game.flush", vec![n; 8]).await?;
    }
    if flush {
        client.flush().await?;
        assert_eq!(client.datagrams_dropped(), 0);
        // Closed at once, without `close`'s wait: what still waits for the pacer is dropped.
        drop(client);
    } else {
        client.close().await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    while seen.last() != Some(&29) {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(SubEvent::Publication { payload, .. })) => seen.push(payload[0]),
            other => bail!("the newest value did not arrive: {other:?}; got {seen:?}"),
        }
    }
    subscriber.close().await;
    assert!(
        matches!(subscriber.flush().await, Err(ClientError::Closed { .. })),
        "a closed client's flush"
    );
    Ok(())
}

/// The Rust client: a `latest` subscription says so, yields values as they come (by datagram
/// over WebTransport, by `Latest` frames over WebSocket), and `publish_unreliable` reaches it.
async fn client_applies_the_newest_value(via: quiver_client::Transport) -> Result<()> {
    use quiver_client::{token_fixed, DeliveryMode, SubEvent};
    let server = server(|_| {}).await?;
    let config = |user: &str| {
        let mut c = client_config(&server, token_fixed(full_token("acme", user)));
        c.ws_urls = vec![format!("ws://{}/v1/ws", server.http)];
        c.transport = via;
        c
    };
    let sub_client = quiver_client::Client::connect(config("s")).await?;
    let publisher = quiver_client::Client::connect(config("p")).await?;
    let mut sub = sub_client.subscribe("game.dots").await?;
    assert_eq!(sub.mode(), DeliveryMode::Latest);
    assert_eq!(
        sub_client.subscribe("chat.dots").await?.mode(),
        DeliveryMode::Reliable
    );
    // Datagrams may be lost: publish until a value arrives, then check the newest wins.
    let mut got = None;
    for n in 0..50u8 {
        publisher
            .publish_unreliable("game.dots", vec![n; 16])
            .await?;
        if let Ok(Some(SubEvent::Publication {
            payload, position, ..
        })) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await
        {
            assert_eq!(position, None);
            got = Some(payload);
            break;
        }
    }
    let got = got.context("no value arrived")?;
    assert_eq!(got.len(), 16);
    // An acknowledged publish is reliable to the server: its value arrives (or a newer one).
    publisher.publish_ack("game.dots", vec![200u8; 16]).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, sub.recv()).await? {
            Some(SubEvent::Publication { payload, .. }) if payload[0] == 200 => break,
            Some(SubEvent::Publication { .. }) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    let stats = sub.latest_stats();
    match via {
        quiver_client::Transport::WebSocket => {
            assert_eq!(stats.by_datagram, 0);
            assert!(stats.by_stream >= 2, "{stats:?}");
        }
        _ => assert!(stats.by_datagram >= 1, "{stats:?}"),
    }
    sub_client.close().await;
    publisher.close().await;
    Ok(())
}

#[tokio::test]
async fn the_rust_client_applies_latest_values_over_webtransport() -> Result<()> {
    client_applies_the_newest_value(quiver_client::Transport::WebTransport).await
}

#[tokio::test]
async fn the_rust_client_applies_latest_values_over_websocket() -> Result<()> {
    client_applies_the_newest_value(quiver_client::Transport::WebSocket).await
}

/// `publish_unreliable` into a room the client is subscribed to and knows to be reliable is an
/// ordinary publish on every transport: over WebTransport it went as a datagram the server
/// drops (`not_latest`), so the same code published over WebSocket and lost everything over
/// WebTransport (outside audit 61, M3).
#[tokio::test]
async fn publish_unreliable_into_a_known_reliable_room_is_published() -> Result<()> {
    use quiver_client::{token_fixed, DeliveryMode, SubEvent};
    let server = server(|_| {}).await?;
    let client = quiver_client::Client::connect(client_config(
        &server,
        token_fixed(full_token("acme", "u")),
    ))
    .await?;
    assert_eq!(
        client.transport(),
        Some(quiver_client::Transport::WebTransport)
    );
    let mut sub = client.subscribe("chat.unreliable").await?;
    assert_eq!(sub.mode(), DeliveryMode::Reliable);
    for n in 0..3u8 {
        client
            .publish_unreliable("chat.unreliable", vec![n; 8])
            .await?;
    }
    for n in 0..3u8 {
        match tokio::time::timeout(WAIT, sub.recv()).await? {
            Some(SubEvent::Publication { payload, .. }) => assert_eq!(payload, vec![n; 8]),
            other => bail!("expected publication {n}, got {other:?}"),
        }
    }
    client.close().await;
    Ok(())
}

/// A datagram may overtake the `Hello` on the network: it is dropped, never taken for a first
/// frame that is not `Hello` (which would close the session as a protocol error). Every one is
/// counted as `before_hello`, also those sent before the control stream exists, which the server
/// reads rather than leaving them to quinn's 64 KiB datagram buffer to drop uncounted.
#[tokio::test]
async fn datagrams_before_hello_do_not_break_the_session() -> Result<()> {
    let server = server(|_| {}).await?;
    let before_hello = |page: &str| {
        metric_sum(
            page,
            "quiver_datagrams_dropped_total",
            &[("reason", "before_hello")],
        )
    };
    let counted = before_hello(&server.metrics().await?);
    let conn = open_session(
        &server,
        &format!("/v1?token={}", full_token("acme", "early")),
    )
    .await?;
    // 200 KB: three times what quinn's receive buffer would hold.
    const SENT: usize = 200;
    for i in 0..SENT {
        conn.send_datagram(
            PublishDatagram {
                room: "game.early",
                payload: &[0; 1000],
            }
            .encode(),
        )?;
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Let them arrive before the control stream opens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dropped = before_hello(&server.metrics().await?) - counted;
    assert!(
        dropped >= 150.0,
        "{dropped} of {SENT} datagrams counted before Hello"
    );
    let mut raw = Raw::on(conn).await?;
    let welcome = raw
        .request(Command::Hello {
            version: quiver_proto::PROTOCOL_VERSION,
            client: "early".into(),
        })
        .await?;
    assert!(matches!(welcome, Event::Welcome { .. }), "{welcome:?}");
    assert!(matches!(raw.request(Command::Ping).await?, Event::Pong));
    Ok(())
}

/// In a cluster, a datagram publication on one instance reaches a `latest` subscriber on
/// another as a datagram: the lane rides the same broker path as every publication.
#[tokio::test]
async fn latest_values_cross_instances_over_nats() -> Result<()> {
    let nats = quiver_tests::nats::NatsServer::start().await?;
    let clustered = |c: &mut quiver_server::Config| {
        c.nats = Some(quiver_server::config::NatsConfig::new(nats.url()));
        add_latest_namespace(c, "game");
    };
    let a = TestServer::start_with(clustered).await?;
    let b = TestServer::start_with(clustered).await?;
    let mut sub = Raw::connect(&b, &full_token("acme", "s")).await?;
    let (reply, _stream) = sub.subscribe_from("game.far", None).await?;
    let id = subscription_id(&reply).context("id")?;
    let publisher = Raw::connect(&a, &full_token("acme", "p")).await?;
    // Interest travels through NATS, and datagrams may be lost: resend until one arrives.
    for n in 1..=50u8 {
        publisher.conn().send_datagram(
            PublishDatagram {
                room: "game.far",
                payload: &[n; 4],
            }
            .encode(),
        )?;
        if let Ok(Ok(d)) =
            tokio::time::timeout(Duration::from_millis(200), sub.conn().receive_datagram()).await
        {
            let payload = d.payload();
            let latest = Latest::decode(&payload)?;
            assert_eq!(latest.subscription, id);
            assert_eq!(latest.payload.len(), 4);
            return Ok(());
        }
    }
    bail!("no value crossed the instances")
}

/// A publish hook on a `latest` namespace is asked for datagram publications away from the
/// command loop: while the backend has not answered, the session still answers commands; the
/// values that arrive meanwhile replace each other (one per room waits), so the backend is asked
/// a few times, not once per datagram, and the newest value is what subscribers get.
#[tokio::test]
async fn a_slow_publish_hook_never_delays_commands_and_the_newest_datagram_wins() -> Result<()> {
    use std::sync::atomic::Ordering;

    let (server, backend) = with_gated_publish_hook().await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let (_, _stream) = sub.subscribe_from("game.a", None).await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    let send = |n: u8| {
        publisher.conn().send_datagram(
            PublishDatagram {
                room: "game.a",
                payload: &[n],
            }
            .encode(),
        )
    };
    for n in 1..=50u8 {
        send(n)?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The newest value, a few times over (a datagram may be lost even on loopback).
    for _ in 0..3 {
        send(51)?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The backend holds the first datagram's hook: the session still answers a command.
    let pong = tokio::time::timeout(WAIT, publisher.request(Command::Ping)).await;
    assert!(
        matches!(pong, Ok(Ok(Event::Pong))),
        "a command waited for datagram hooks: {pong:?}"
    );
    // Nor does a `Publish` command wait behind the held datagrams: they have a lane of their own.
    let published = tokio::time::timeout(WAIT, publisher.publish("chat.x", b"p")).await;
    assert!(
        matches!(published, Ok(Ok(Event::Published { .. }))),
        "a Publish waited for datagram hooks: {published:?}"
    );
    assert_eq!(
        backend.asked.load(Ordering::SeqCst),
        1,
        "one hook at a time"
    );

    backend.gate.add_permits(1000);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, _, payload) = datagram(&sub).await?;
        if payload[..] == [51] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never got 51");
    }
    // The first value, then the newest that replaced the others while it waited (and perhaps
    // a repeat of it that came later): far fewer than the 53 datagrams.
    let asked = backend.asked.load(Ordering::SeqCst);
    assert!(
        (2..=4).contains(&asked),
        "the backend was asked {asked} times"
    );
    let page = server.metrics().await?;
    assert!(
        metric_sum(
            &page,
            "quiver_datagrams_dropped_total",
            &[("reason", "superseded")]
        ) >= 40.0,
        "{page}"
    );
    Ok(())
}

/// A client that grants 16 MiB of credit to its `latest` room's stream, then acknowledges
/// nothing while 300 values of 30 KB (too large for datagrams: on the stream) are published:
/// the server holds at most its send window (1 MiB a connection) of them written, the rest
/// conflate. Once the client acknowledges again it gets what was written and then the newest,
/// not all 300 (outside audit: quinn's default 10 MB send window held about 330 values,
/// 11.5 MB, per stalled connection until the idle timeout).
#[tokio::test]
async fn a_client_that_acknowledges_nothing_holds_at_most_the_send_window() -> Result<()> {
    let server = server(|c| {
        c.limits.commands_per_second = 10_000;
        c.timeouts.idle = Duration::from_secs(30);
    })
    .await?;
    let relay = Relay::to(server.wt.port()).await?;
    let mut sub = Raw::with_stream_window_at(
        relay.port,
        server.hash,
        &full_token("acme", "s"),
        16 * 1024 * 1024,
    )
    .await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    let (_, mut game) = sub.subscribe_from("game.held", None).await?;
    relay.cut(true);
    let n = 300u32;
    for i in 1..=n {
        let mut payload = vec![0u8; 30_000];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        publish(&mut publisher, "game.held", payload).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.cut(false);
    let received = values_until(&mut game, n).await?;
    // 1 MiB is 35 values; a few more were in flight when the window filled.
    assert!(
        received <= 45,
        "{received} of {n} values were held for the stalled client"
    );
    Ok(())
}

/// Datagram publications waiting for their publish hook when a `Refresh` takes the right to
/// publish away are dropped before `Refreshed`: nothing checked against the old token reaches
/// subscribers after it (outside audit: values were published 1.3 s and 2.8 s later).
#[tokio::test]
async fn a_refresh_drops_datagram_publications_waiting_for_their_hook() -> Result<()> {
    let (server, backend) = with_gated_publish_hook().await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let (_, _a) = sub.subscribe_from("game.a", None).await?;
    let (_, _b) = sub.subscribe_from("game.b", None).await?;
    let publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    // The first is with the backend, the second waits behind it.
    datagrams_behind_a_held_hook(&publisher, &backend, &["game.a", "game.b"], b"old token").await?;
    let mut publisher = publisher;
    let read_only = token("acme", "p", &[">"], &[], 600);
    let refreshed = publisher
        .request(Command::Refresh { token: read_only })
        .await?;
    assert!(
        matches!(refreshed, Event::Refreshed { .. }),
        "{refreshed:?}"
    );
    backend.gate.add_permits(1000);
    let late =
        tokio::time::timeout(Duration::from_millis(700), sub.conn().receive_datagram()).await;
    assert!(late.is_err(), "published after Refreshed: {late:?}");
    let page = server.metrics().await?;
    assert_eq!(
        metric(
            &page,
            r#"quiver_datagrams_dropped_total{reason="refreshed"}"#
        ),
        2.0
    );
    Ok(())
}

/// Datagram publications waiting for their publish hook when their session ends are never
/// published, and each is counted (`session_ended`), as a `Refresh` counts them (outside lanes
/// audit 3, F3: they vanished uncounted).
#[tokio::test]
async fn datagram_publications_waiting_for_their_hook_when_the_session_ends_are_counted(
) -> Result<()> {
    let (server, backend) = with_gated_publish_hook().await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let (_, _a) = sub.subscribe_from("game.ea", None).await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    // The first is with the backend, the others wait behind it.
    let rooms = ["game.ea", "game.eb", "game.ec"];
    datagrams_behind_a_held_hook(&publisher, &backend, &rooms, b"left behind").await?;
    publisher.close().await;
    wait_metric(
        &server,
        "quiver_datagrams_dropped_total",
        &[("reason", "session_ended")],
        |n| n >= 3.0,
    )
    .await?;
    backend.gate.add_permits(1000);
    let late =
        tokio::time::timeout(Duration::from_millis(500), sub.conn().receive_datagram()).await;
    assert!(late.is_err(), "published after its session ended: {late:?}");
    Ok(())
}

/// A drain drops the datagram publications waiting for their publish hook as it begins, counted
/// (`session_ended`), while it waits for a call (outside audit 117, F6): the drain polled only
/// what answers a command, so the lane sat unread, its hook request unanswered at the backend,
/// until the session ended.
#[tokio::test]
async fn a_drain_drops_the_datagram_publications_waiting_for_their_hook_as_it_begins() -> Result<()>
{
    let (mut server, backend) =
        gated_publish_hook_and(|c| c.timeouts.drain = Duration::from_secs(30)).await?;
    let token = quiver_tests::rpc::call_token("acme", "p", &["order.*"]);
    let mut publisher = Raw::connect(&server, &token).await?;
    let rooms = ["game.da", "game.db", "game.dc"];
    datagrams_behind_a_held_hook(&publisher, &backend, &rooms, b"held").await?;
    // A call the gated backend holds too: the drain waits for it.
    publisher
        .send(Command::Call {
            method: "order.wait".into(),
            payload: Bytes::new(),
            timeout_ms: 0,
            idempotency_key: String::new(),
        })
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while backend.asked.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the call was not asked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let http = server.http;
    let ended = || async move {
        let page = reqwest::get(format!("http://{http}/metrics"))
            .await?
            .text()
            .await?;
        anyhow::Ok(metric_sum(
            &page,
            "quiver_datagrams_dropped_total",
            &[("reason", "session_ended")],
        ))
    };
    let before = ended().await?;
    let stop = tokio::spawn(async move { server.stop().await });
    // Within the call's deadline (5 s), while the drain waits for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while ended().await? < before + 3.0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the lane was not dropped as the drain began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    backend.gate.add_permits(1000);
    stop.await?;
    Ok(())
}

/// Values held for the pacer never keep `Client::close` from ending the control stream behind
/// its publishes (review 131, R1): commands take the pacer's tokens first, so three rooms' values
/// held behind four publishes at about one a second got none before the 5 s deadline, the
/// control stream was never ended, and the close at the deadline could discard what the server
/// had not read. They now wait half the flush at most, then are dropped and counted.
#[tokio::test]
async fn held_values_never_keep_close_from_ending_the_control_stream() -> Result<()> {
    use quiver_client::token_fixed;
    let server = server(|c| c.limits.commands_per_second = 2).await?;
    let client = std::sync::Arc::new(
        quiver_client::Client::connect(client_config(
            &server,
            token_fixed(full_token("acme", "p")),
        ))
        .await?,
    );
    let mut publishes = Vec::new();
    for n in 0..4u8 {
        let client = client.clone();
        publishes.push(tokio::spawn(async move {
            client.publish("chat.close", vec![n; 8]).await
        }));
    }
    for room in ["game.r0", "game.r1", "game.r2"] {
        client.publish_unreliable(room, vec![1; 8]).await?;
    }
    tokio::time::timeout(WAIT, client.close()).await?;
    for publish in publishes {
        tokio::time::timeout(WAIT, publish).await???;
    }
    assert!(
        client.datagrams_dropped() >= 1,
        "the held values were not given up: the control stream's end waited for them"
    );
    Ok(())
}
