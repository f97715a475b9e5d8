//! Peers that do not take what the server sends them (THREAT-MODEL.md): a client that gives a
//! stream no credit, takes no answer to its CONNECT, or reads nothing from its TCP socket must
//! not make the server hold a task, a stream, a buffer or a place under `max_sessions` for
//! longer than a deadline.

use std::time::Duration;

use quiver_proto::{Command, Event, Position, Recovery};
use quiver_tests::*;
use wtransport::quinn;

/// A server (with `tweak`) whose history room `h.room` holds `n` publications of 1,000 bytes,
/// the i-th filled with byte i; and the position of the first.
async fn server_with_history(
    n: u8,
    tweak: impl FnOnce(&mut quiver_server::Config),
) -> anyhow::Result<(TestServer, Position)> {
    let server = TestServer::start_with(|c| {
        tweak(c);
        add_history_namespace(c, "h", 100);
    })
    .await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    let first = publ.published("h.room", &[0u8; 1000]).await?;
    for i in 1..n {
        publ.published("h.room", &[i; 1000]).await?;
    }
    Ok((server, first))
}

/// An `Unsubscribe` ends its writer even while the client gives the stream no credit: the stream
/// is reset (code 0), so the writer's task, its stream and the replay it held are freed at
/// once, however often a client subscribes with a long replay and unsubscribes unread.
#[tokio::test]
async fn unsubscribing_resets_a_stream_the_client_gives_no_credit() -> anyhow::Result<()> {
    let (server, first) = server_with_history(50, |_| {}).await?;
    // 50 KB of history to replay; the subscriber gives each stream 1 KiB of credit.
    let mut sub = Raw::with_stream_window(&server, &full_token("acme", "s"), 1024).await?;
    const PAIRS: usize = 20;
    let mut streams = Vec::new();
    for _ in 0..PAIRS {
        let since = Position { offset: 0, ..first };
        let subscribed = sub
            .request(Command::Subscribe {
                room: "h.room".into(),
                resume: Some(since),
            })
            .await?;
        assert!(
            matches!(
                subscribed,
                Event::Subscribed {
                    recovery: Recovery::Recovered { replayed: 50 },
                    ..
                }
            ),
            "{subscribed:?}"
        );
        // The stream has arrived, so its writer is writing the replay, and blocked on credit.
        streams.push(RoomStream::accept(sub.conn()).await?);
        let unsubscribed = sub
            .request(Command::Unsubscribe {
                room: "h.room".into(),
            })
            .await?;
        assert!(
            matches!(unsubscribed, Event::Unsubscribed { code: 0, .. }),
            "{unsubscribed:?}"
        );
    }
    // Read now, each stream ends in a reset: the rest of its replay was not waited for (had
    // its writer gone on, reading would give it credit and the whole replay would follow).
    for (n, mut stream) in streams.into_iter().enumerate() {
        let end = stream.drain().await?;
        assert!(
            matches!(end, Err(wtransport::error::StreamReadError::Reset(code)) if code.into_inner() == 0),
            "stream {n}: {end:?}"
        );
    }
    // The session is unharmed.
    assert!(matches!(sub.request(Command::Ping).await?, Event::Pong));
    Ok(())
}

/// A QUIC connection that sends HTTP/3 SETTINGS and a CONNECT to `path`, then takes none of the
/// answer: every stream gets one byte of credit, and the CONNECT stream is never read. (The
/// server's own streams are read, so the exchange gets as far as the answer.) Returned with
/// the streams that must stay open.
async fn connect_and_take_no_answer(
    server: &TestServer,
    path: &str,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection, Vec<quinn::SendStream>)> {
    use wtransport::proto::session::SessionRequest;
    use wtransport::proto::settings::Settings;
    let endpoint = quic_client(server, |t| {
        t.keep_alive_interval(Some(Duration::from_millis(200)));
        t.stream_receive_window(1u32.into());
    })?;
    let conn = endpoint.connect(server.wt, "localhost")?.await?;
    let drain = conn.clone();
    tokio::spawn(async move {
        while let Ok(mut stream) = drain.accept_uni().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(Some(_)) = stream.read(&mut buf).await {}
            });
        }
    });
    let mut settings = vec![0x00]; // the control stream's type
    Settings::builder()
        .enable_webtransport()
        .enable_connect_protocol()
        .enable_h3_datagrams()
        .build()
        .generate_frame()
        .write(&mut settings)
        .expect("a Vec has room");
    let mut control = conn.open_uni().await?;
    control.write_all(&settings).await?;
    let request = SessionRequest::new(format!("https://localhost:{}{path}", server.wt.port()))?;
    let mut connect = Vec::new();
    request
        .headers()
        .generate_frame()
        .write(&mut connect)
        .expect("a Vec has room");
    let (mut send, recv) = conn.open_bi().await?;
    send.write_all(&connect).await?;
    // Dropping the receiving half would stop it (STOP_SENDING), which ends the answer at once.
    std::mem::forget(recv);
    Ok((endpoint, conn, vec![control, send]))
}

/// The answer to a CONNECT (a 403 without a token, a 200 with one) is under the handshake
/// deadline too: a client that withholds the credit it needs is closed at the deadline, and
/// its place under `max_sessions` is free again.
#[tokio::test]
async fn a_connect_answer_nobody_takes_is_given_up_at_the_deadline() -> anyhow::Result<()> {
    let token = full_token("acme", "deaf");
    for (what, path) in [
        ("refused, no token", "/v1".to_owned()),
        ("accepted", format!("/v1?token={token}")),
    ] {
        let server = TestServer::start_with(|c| {
            c.timeouts.handshake = Duration::from_millis(1500);
            c.limits.max_sessions = 1;
        })
        .await?;
        let (_endpoint, deaf, _streams) = connect_and_take_no_answer(&server, &path).await?;
        // It holds the one place meanwhile.
        let refused = Raw::connect(&server, &full_token("acme", "late")).await;
        assert!(refused.is_err(), "{what}: a second connection was admitted");
        let reason = tokio::time::timeout(WAIT, deaf.closed())
            .await
            .map_err(|_| anyhow::anyhow!("{what}: never closed"))?;
        // Code 0: the answer was written, only not taken (PROTOCOL §1).
        assert!(
            matches!(&reason, quinn::ConnectionError::ApplicationClosed(close) if close.error_code.into_inner() == 0),
            "{what}: {reason:?}"
        );
        let mut c = Raw::connect(&server, &full_token("acme", "late")).await?;
        assert!(
            matches!(c.request(Command::Ping).await?, Event::Pong),
            "{what}"
        );
    }
    Ok(())
}

/// A TCP peer that reads nothing holds its connection (and its place) no longer than
/// `timeouts.handshake` past the server's last progress writing to it, whatever it asked for:
/// here pipelined requests for the browser client (77 KB each) that fill every buffer.
#[tokio::test]
async fn a_tcp_peer_that_reads_nothing_is_closed_at_the_deadline() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| {
        c.timeouts.handshake = Duration::from_secs(1);
        c.quotas.per_address.max_connections = 1;
    })
    .await?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut deaf = socket.connect(server.http).await?;
    let requests = "GET /quiver.js HTTP/1.1\r\nhost: q\r\n\r\n".repeat(100);
    deaf.write_all(requests.as_bytes()).await?;
    // The address's one place is taken meanwhile.
    assert_eq!(
        healthz(&server).await?.as_deref(),
        Some("HTTP/1.1 429 Too Many Requests")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(healthz(&server).await?.as_deref(), Some("HTTP/1.1 200 OK"));
    // What was already in the buffers arrives, then the end: far from all 100 answers.
    let mut answers = Vec::new();
    let _ = tokio::time::timeout(WAIT, deaf.read_to_end(&mut answers)).await?;
    let answered = String::from_utf8_lossy(&answers)
        .matches("HTTP/1.1 200 OK")
        .count();
    assert!(answered < 100, "{answered} answers");
    Ok(())
}

/// A subscription stream that takes nothing while frames wait for it ends as a slow consumer
/// after `timeouts.reply`, even in a quiet room where its queue never overflows: a client
/// cannot park a resumed room's replay (or any frames) on the server by withholding credit.
#[tokio::test]
async fn a_stream_that_takes_nothing_ends_as_a_slow_consumer() -> anyhow::Result<()> {
    let (server, first) =
        server_with_history(20, |c| c.timeouts.reply = Duration::from_secs(1)).await?;
    let mut sub = Raw::with_stream_window(&server, &full_token("acme", "parked"), 1024).await?;
    let started = tokio::time::Instant::now();
    let subscribed = sub
        .request(Command::Subscribe {
            room: "h.room".into(),
            resume: Some(Position { offset: 0, ..first }),
        })
        .await?;
    assert!(
        matches!(subscribed, Event::Subscribed { .. }),
        "{subscribed:?}"
    );
    let mut stream = RoomStream::accept(sub.conn()).await?;
    let ended = match sub.recv().await?.event {
        Event::Unsubscribed { room, code, .. } if room == "h.room" => code,
        other => anyhow::bail!("unexpected {other:?}"),
    };
    assert_eq!(ended, quiver_proto::ErrorCode::SlowConsumer.as_u16());
    assert!(started.elapsed() >= Duration::from_secs(1));
    // Its stream was reset, not left waiting, with the slow_consumer code (PROTOCOL §2).
    let end = stream.drain().await?;
    assert!(
        matches!(end, Err(wtransport::error::StreamReadError::Reset(code)) if code.into_inner() == 112),
        "{end:?}"
    );
    assert!(matches!(sub.request(Command::Ping).await?, Event::Pong));
    Ok(())
}

/// The stall deadline measures progress, not how long a stream takes: a reader that keeps
/// taking a little (1 KiB of credit, a publication every 300 ms, three times the deadline in
/// all) gets every publication and keeps its subscription.
#[tokio::test]
async fn a_slow_reader_that_keeps_taking_is_not_a_slow_consumer() -> anyhow::Result<()> {
    let (server, first) =
        server_with_history(10, |c| c.timeouts.reply = Duration::from_secs(1)).await?;
    let mut sub = Raw::with_stream_window(&server, &full_token("acme", "slow"), 1024).await?;
    let (_, mut stream) = sub
        .subscribe_from("h.room", Some(Position { offset: 0, ..first }))
        .await?;
    for n in 0..10u8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stream.payload().await?.as_ref(), &[n; 1000][..]);
    }
    // Nothing ended it meanwhile: the next frame on the control stream is the Pong.
    let ping = sub.send(Command::Ping).await?;
    let next = sub.recv().await?;
    assert!(
        next.id == ping && matches!(next.event, Event::Pong),
        "{next:?}"
    );
    Ok(())
}

/// A session that stops reading holds at most `limits.session_queue_bytes` of queued
/// publications over all its subscriptions: past it, the subscription whose delivery would go
/// over ends as a slow consumer, though its queue never reaches `subscriber_queue` publications
/// (an outside audit grew a server by 220 MB with one WebSocket reader that never read, before
/// its write deadline closed it).
#[tokio::test]
async fn a_reader_that_stops_holds_at_most_its_byte_budget() -> anyhow::Result<()> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    const PAYLOAD: usize = 60_000;
    // 42 MB: more than the sockets' buffers, the outgoing queue (256 frames) and the budget
    // together, and far fewer publications than `subscriber_queue`.
    const PUBLISHED: usize = 700;
    let server = TestServer::start_with(|c| {
        c.limits.session_queue_bytes = 1 << 20;
        c.limits.subscriber_queue = 1024;
        c.limits.commands_per_second = 100_000;
        // Neither the reply deadline nor the write deadline may end the session first.
        c.timeouts.reply = Duration::from_secs(60);
        c.timeouts.handshake = Duration::from_secs(60);
    })
    .await?;
    let deaf = deaf_websocket(&server, "deaf", "feed").await?;
    // The deaf session's subscription is in place once its own publication comes back to
    // nobody's reader: wait for the gauge instead.
    wait_metric(&server, "quiver_subscriptions_active", &[], |n| n >= 1.0).await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "pub")).await?;
    for _ in 0..PUBLISHED {
        publisher.publish("feed", &[7u8; PAYLOAD]).await?;
    }
    // Now read: the publications that were in flight, then the subscription's end.
    let (_sink, mut stream) = deaf.split();
    let mut publications = 0usize;
    let ended = tokio::time::timeout(WAIT * 3, async {
        while let Some(message) = stream.next().await {
            let Message::Binary(data) = message? else {
                continue;
            };
            for event in events_in(&data)? {
                match event {
                    Event::Publication { .. } => publications += 1,
                    Event::Unsubscribed { room, code, .. } if room == "feed" => {
                        return anyhow::Ok(Some(code));
                    }
                    _ => {}
                }
            }
        }
        Ok(None)
    })
    .await??;
    assert_eq!(
        ended,
        Some(quiver_proto::ErrorCode::SlowConsumer.as_u16()),
        "{publications} publications read, then no slow_consumer"
    );
    assert!(publications < PUBLISHED, "{publications}");
    Ok(())
}

/// A client that reads nothing but keeps asking for large answers (history pages, each a new
/// encoding the server holds for it) makes the server hold at most the outgoing queue's bound
/// in bytes (`transport::out_queue_bytes`, 1 MiB here), not 256 largest frames: once that
/// much waits, its next answer waits too, and past `timeouts.reply` the session ends as
/// `not_reading`. 40 pages of ~60 KB (2.4 MB) are far under 256 answers, so only the bound
/// in bytes ends it. Another client is unaffected.
#[tokio::test]
async fn large_unread_answers_are_bounded_in_bytes() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.timeouts.reply = Duration::from_millis(500);
        add_history_namespace(c, "h", 100);
    })
    .await?;
    assert_eq!(
        quiver_server::transport::out_queue_bytes(&server.config.limits),
        1 << 20
    );
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    for i in 0..60u8 {
        publ.published("h.big", &[i; 30_000]).await?;
    }
    let mut deaf = Raw::with_stream_window(&server, &full_token("acme", "deaf"), 1024).await?;
    for _ in 0..40 {
        deaf.send(Command::History {
            room: "h.big".into(),
            since: None,
            limit: 2,
        })
        .await?;
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), deaf.close_code()).await;
    assert_eq!(
        closed.ok().flatten(),
        Some(u64::from(quiver_proto::CloseCode::NotReading.as_u16())),
        "the session held its unread answers"
    );
    assert!(matches!(publ.request(Command::Ping).await?, Event::Pong));
    Ok(())
}

/// A room whose stream the client stops reading cannot push the session's other rooms out: its
/// queue fills the session's byte budget (`limits.session_queue_bytes`), and then it is that
/// room that ends as a slow consumer, while a room the client reads keeps every publication,
/// bursts included (a burst queues behind the stream's credit for a moment). The budget used to
/// go to whichever room queued next, which ended the healthy room.
#[tokio::test]
async fn a_room_the_client_stops_reading_cannot_push_out_another() -> anyhow::Result<()> {
    const BURSTS: usize = 50;
    const PER_BURST: usize = 4;
    let server = TestServer::start_with(|c| {
        c.limits.session_queue_bytes = 100_000;
        c.limits.subscriber_queue = 10_000;
        c.limits.commands_per_second = 100_000;
    })
    .await?;
    // 8 KiB of credit per stream: the unread one blocks at once, and a burst of 20 KB into the
    // one that is read queues partly until the client reads.
    let mut sub = Raw::with_stream_window(&server, &full_token("acme", "s"), 8 * 1024).await?;
    let _unread = sub.subscribe("chat.unread").await?;
    let mut read = sub.subscribe("chat.read").await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    let (progress, mut seen) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        for i in 0..BURSTS * PER_BURST {
            let payload = read.payload().await?;
            anyhow::ensure!(
                payload.len() == 5_000 && payload[0] == i as u8,
                "publication {i}"
            );
            progress.send_replace(i + 1);
        }
        anyhow::Ok(())
    });
    let publication = |id: u32, room: &str, byte: u8| publish_frame(id, room, vec![byte; 5_000]);
    let mut id = 1000;
    for burst in 0..BURSTS {
        let mut frames = publication(id, "chat.unread", burst as u8);
        for n in 0..PER_BURST {
            id += 1;
            frames.extend(publication(id, "chat.read", (burst * PER_BURST + n) as u8));
        }
        id += 1;
        publ.send_bytes(&frames).await?;
        // The client catches up with the room it reads before the next burst.
        let caught_up = tokio::time::timeout(
            Duration::from_secs(10),
            seen.wait_for(|n| *n == (burst + 1) * PER_BURST),
        )
        .await;
        anyhow::ensure!(
            matches!(caught_up, Ok(Ok(_))),
            "the room being read stopped at burst {burst}: {:?}",
            reader.is_finished()
        );
    }
    reader.await??;
    // The unread room is the one that ended.
    let ended = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await??;
    assert!(
        matches!(
            &ended.event,
            Event::Unsubscribed { room, code, .. }
                if room == "chat.unread" && *code == quiver_proto::ErrorCode::SlowConsumer.as_u16()
        ),
        "{ended:?}"
    );
    Ok(())
}
