//! The bytes in front of this protocol's own on a WebTransport session, written and checked
//! literally as PROTOCOL.md §1 spells them for a client without a WebTransport library: QUIC
//! variable-length integers (`40 41 00` for the control stream of the session on stream 0,
//! `40 54 00` for the server's subscription streams, `00` in front of every datagram), not the
//! LEB128 varints of §3 that follow them.

use anyhow::{bail, Context, Result};
use quiver_proto::datagram::{Latest, PublishDatagram};
use quiver_proto::{encode_command, ClientFrame, Command, Event, FrameDecoder, DEFAULT_MAX_FRAME};
use quiver_tests::*;
use wtransport::quinn::RecvStream;

/// The control stream's prefix: frame type 0x41 (a two-byte QUIC varint), session id 0.
const CONTROL_PREFIX: [u8; 3] = [0x40, 0x41, 0x00];
/// A subscription stream's prefix: stream type 0x54 (two bytes), session id 0.
const SUBSCRIPTION_PREFIX: [u8; 3] = [0x40, 0x54, 0x00];
/// A datagram's prefix: the quarter stream id of stream 0.
const DATAGRAM_PREFIX: u8 = 0x00;

/// The next event on `stream`, within [`WAIT`].
async fn next_event(stream: &mut RecvStream, decoder: &mut FrameDecoder) -> Result<Event> {
    let frame = tokio::time::timeout(WAIT, read_frame(stream, decoder))
        .await
        .context("no frame")??;
    Ok(frame.event)
}

fn command(id: u32, command: Command) -> Vec<u8> {
    encode_command(&ClientFrame { id, command })
}

/// The control stream's first bytes, its prefix written by hand: the prefix, then `Hello` (id 1).
fn hello_bytes() -> Vec<u8> {
    let mut bytes = CONTROL_PREFIX.to_vec();
    bytes.extend(command(
        1,
        Command::Hello {
            version: quiver_proto::PROTOCOL_VERSION,
            client: "wire".into(),
        },
    ));
    bytes
}

#[tokio::test]
async fn session_prefixes_are_quic_varints() -> Result<()> {
    let server = TestServer::start_with(|c| add_latest_namespace(c, "game")).await?;
    let session = h3::raw_session(&server, &full_token("acme", "wire")).await?;

    // The control stream, its prefix written by hand, then Hello and Subscribe.
    let (mut send, mut recv) = session.conn.open_bi().await?;
    let mut bytes = hello_bytes();
    bytes.extend(command(
        2,
        Command::Subscribe {
            room: "game.a".into(),
            resume: None,
        },
    ));
    send.write_all(&bytes).await?;
    let mut control = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let welcome = next_event(&mut recv, &mut control).await?;
    assert!(matches!(welcome, Event::Welcome { .. }), "{welcome:?}");
    let subscription = match next_event(&mut recv, &mut control).await? {
        Event::Subscribed {
            subscription: Some(id),
            ..
        } => id,
        other => bail!("expected Subscribed with a subscription id, got {other:?}"),
    };

    // The server's subscription stream: its prefix, then SubscriptionStream. The server's
    // HTTP/3 control and QPACK streams (types 0x00, 0x02, 0x03: one byte each) come too, in
    // any order; they are kept open (the server's critical streams).
    let mut http3_streams = Vec::new();
    let mut room = loop {
        let mut stream = tokio::time::timeout(WAIT, session.conn.accept_uni())
            .await
            .context("no subscription stream")??;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await?;
        if first[0] != SUBSCRIPTION_PREFIX[0] {
            assert!(
                [0x00, 0x02, 0x03].contains(&first[0]),
                "stream type {first:?}"
            );
            http3_streams.push(stream);
            continue;
        }
        let mut rest = [0u8; 2];
        stream.read_exact(&mut rest).await?;
        assert_eq!(rest, SUBSCRIPTION_PREFIX[1..]);
        break stream;
    };
    assert!(http3_streams.len() <= 3);
    let mut frames = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let header = next_event(&mut room, &mut frames).await?;
    assert!(
        matches!(&header, Event::SubscriptionStream { room } if room == "game.a"),
        "{header:?}"
    );

    // A datagram publication with the quarter stream id in front comes back as a value, with
    // the same prefix.
    let mut datagram = vec![DATAGRAM_PREFIX];
    datagram.extend(
        PublishDatagram {
            room: "game.a",
            payload: b"v1",
        }
        .encode(),
    );
    session.conn.send_datagram(datagram.into())?;
    let received = tokio::time::timeout(WAIT, session.conn.read_datagram())
        .await
        .context("no datagram")??;
    assert_eq!(received.first(), Some(&DATAGRAM_PREFIX));
    let value = Latest::decode(&received[1..])?;
    assert_eq!(
        (value.subscription, value.sequence, value.payload),
        (subscription, 1, &b"v1"[..])
    );
    Ok(())
}

/// A datagram whose quarter stream id names no session (the session is on stream 0; 5 names
/// stream 20) was discarded by wtransport uncounted, so a session could send them without
/// end, costing the server their parsing, while the same flood under its own id was ended by
/// the datagram rate limit (outside audit 41, F2). Now each is metered as a datagram and
/// dropped as `malformed`: past the rate, `rate_abuse`.
#[tokio::test]
async fn datagrams_for_no_session_are_metered() -> Result<()> {
    let server = TestServer::start_with(|c| {
        add_latest_namespace(c, "game");
        c.limits.commands_per_second = 10;
        c.limits.abuse_factor = 3;
    })
    .await?;
    let session = h3::raw_session(&server, &full_token("acme", "wire")).await?;
    let (mut send, mut recv) = session.conn.open_bi().await?;
    let bytes = hello_bytes();
    send.write_all(&bytes).await?;
    let mut control = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let welcome = next_event(&mut recv, &mut control).await?;
    assert!(matches!(welcome, Event::Welcome { .. }), "{welcome:?}");
    let mut datagram = vec![0x05];
    datagram.extend(
        PublishDatagram {
            room: "game.a",
            payload: b"v1",
        }
        .encode(),
    );
    // Bounded: 50 rounds of 20, until the server closes (datagrams may be lost).
    let mut closed = None;
    for _ in 0..50 {
        for _ in 0..20 {
            let _ = session.conn.send_datagram(datagram.clone().into());
        }
        if let Ok(e) =
            tokio::time::timeout(std::time::Duration::from_millis(100), session.conn.closed()).await
        {
            closed = Some(e);
            break;
        }
    }
    match closed {
        Some(wtransport::quinn::ConnectionError::ApplicationClosed(close)) => assert_eq!(
            close.error_code.into_inner(),
            u64::from(quiver_proto::CloseCode::RateAbuse.as_u16())
        ),
        other => bail!("expected a rate_abuse close, got {other:?}"),
    }
    let page = server.metrics().await?;
    assert!(
        metric_sum(
            &page,
            "quiver_datagrams_dropped_total",
            &[("reason", "malformed")]
        ) >= 1.0,
        "not counted as malformed"
    );
    Ok(())
}

/// A unidirectional stream the client opens after the `200` and before its control stream is
/// refused at once (STOP_SENDING, PROTOCOL §2), not parked with its window until the control
/// stream opens or the `Hello` deadline (outside audit 100, F2).
#[tokio::test]
async fn a_unidirectional_stream_before_the_control_stream_is_refused_at_once() -> Result<()> {
    let server =
        TestServer::start_with(|c| c.timeouts.hello = std::time::Duration::from_secs(20)).await?;
    let session = h3::raw_session(&server, &full_token("acme", "wire")).await?;
    let mut uni = session.conn.open_uni().await?;
    let mut bytes = SUBSCRIPTION_PREFIX.to_vec();
    bytes.extend([7u8; 1_000]);
    uni.write_all(&bytes).await?;
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(3), uni.stopped())
        .await
        .context("the stream was not refused within 3 s")??;
    assert_eq!(stopped, Some(wtransport::quinn::VarInt::from_u32(0x010b)));
    Ok(())
}

/// Datagrams of a connection whose session does not exist yet (no CONNECT sent) are read as
/// they come and dropped but one, counted `before_session` (outside audit 117, F1): they were
/// left in quinn's 64 KiB receive buffer, each pinning its packet's allocation, so a peer that
/// never sent its CONNECT made the server hold ~220 KB of tiny datagrams per connection until
/// the handshake's deadline.
#[tokio::test]
async fn datagrams_before_the_session_exists_are_not_kept() -> Result<()> {
    let server = TestServer::start().await?;
    let endpoint = quic_client(&server, |_| {})?;
    let conn = endpoint.connect(server.wt, "localhost")?.await?;
    let dropped = || async {
        let page = server.metrics().await?;
        anyhow::Ok(metric_sum(
            &page,
            "quiver_datagrams_dropped_total",
            &[("reason", "before_session")],
        ))
    };
    let before = dropped().await?;
    // Fewer than quinn's send buffer holds, paced so that none is lost on loopback.
    const SENT: usize = 400;
    for i in 0..SENT {
        conn.send_datagram(vec![0x00, (i % 256) as u8].into())?;
        if i % 50 == 49 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = dropped().await? - before;
        // All but the one kept (a few more: other tests' connections share the counter, and
        // loopback may still lose one).
        if now >= (SENT - 10) as f64 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{now} of {SENT} datagrams counted dropped before the session: the rest are held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    conn.close(0u32.into(), b"");
    Ok(())
}
