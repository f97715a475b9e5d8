//! Hooks cut off by the session's end (PROTOCOL.md §5, §6, §11.3): a client that left gets
//! what it wrote carried out for a bounded time, not one hook timeout per command; a token that
//! expires while a hook waits ends the session at `exp`; and the backend's unsubscribe of a
//! room stops its deliveries while a hook waits. A test binary of its own: the hook
//! decisions they cut off are counted in the process-wide metrics that
//! `rpc_outage_fairness.rs` asserts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use quiver_server::rpc::HookConfig;
use quiver_tests::rpc::{cut_off_unanswered_and_unpublished, publish_held_by_its_hook};
use quiver_tests::*;

/// A server with a publish and subscribe hook on `hk` whose backend never answers (each hook
/// times out after 1 s), and 2 s (`timeouts.reply`) for a departed client's commands.
async fn server_whose_hooks_never_answer(
) -> Result<(TestServer, Arc<quiver_tests::rpc::GatedBackend>)> {
    let (url, backend) = quiver_tests::rpc::gated_backend().await?;
    let server = TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        c.timeouts.reply = Duration::from_secs(2);
        c.timeouts.keep_alive = Duration::from_secs(1);
        c.rpc.hooks = vec![HookConfig {
            namespace: "hk".into(),
            subscribe: true,
            publish: true,
            timeout: Duration::from_secs(1),
            fail_open: false,
        }];
    })
    .await?;
    Ok((server, backend))
}

/// Waits (bounded) until the server has no session; how long it took.
async fn sessions_gone(server: &TestServer, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    while server.sessions() > 0 {
        anyhow::ensure!(
            started.elapsed() < within,
            "{} sessions still open {:?} after their clients left",
            server.sessions(),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(started.elapsed())
}

/// A WebSocket client that writes a hundred hooked publications and half-closes its connection
/// (a FIN, its socket kept open) gets what it wrote carried out for `timeouts.reply` after it
/// left, not one hook timeout per publication: its session ends within seconds, and the
/// backend is asked a few times, not a hundred (PROTOCOL.md §5; outside bounds audit 3, F2: a
/// session held for hours, one hook at a time).
#[tokio::test]
async fn a_departed_websocket_clients_hooked_commands_get_a_bounded_time() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, backend) = server_whose_hooks_never_answer().await?;
    let mut tcp = tokio::net::TcpStream::connect(server.http).await?;
    tcp.write_all(
        format!(
            "GET /v1/ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            full_token("acme", "leaver"),
            server.http
        )
        .as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await?);
    }
    anyhow::ensure!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    // Masked binary messages of one frame each: the Hello, then the publications.
    let message = |command| {
        let frame = quiver_proto::encode_command(&quiver_proto::ClientFrame { id: 1, command });
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut message = vec![
            0x82,
            0x80 | 126,
            (frame.len() >> 8) as u8,
            frame.len() as u8,
        ];
        message.extend_from_slice(&mask);
        message.extend(frame.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        message
    };
    let mut wire = message(quiver_proto::Command::Hello {
        version: quiver_proto::PROTOCOL_VERSION,
        client: "leaver".into(),
    });
    for _ in 0..100 {
        wire.extend(message(quiver_proto::Command::Publish {
            room: "hk.room".into(),
            payload: Bytes::from(vec![b'x'; 200]),
            ack: false,
        }));
    }
    tcp.write_all(&wire).await?;
    tcp.shutdown().await?;
    let took = sessions_gone(&server, Duration::from_secs(15)).await?;
    let asked = backend.asked.load(Ordering::SeqCst);
    assert!(
        asked <= 5,
        "the backend was asked {asked} times in {took:?}"
    );
    drop(tcp);
    Ok(())
}

/// An SSE request for rooms with a subscribe hook whose client goes away has nothing left to
/// carry out: its session ends once the server notices (a keep-alive), its remaining rooms'
/// hooks never asked (outside bounds audit 3, F3: 200 rooms kept a session ~400 s after its
/// client left, and 300 such requests filled `max_sessions`).
#[tokio::test]
async fn a_departed_sse_clients_hooked_rooms_are_not_asked_for() -> Result<()> {
    let (server, backend) = server_whose_hooks_never_answer().await?;
    let rooms: String = (0..30).map(|i| format!("&room=hk.r{i}")).collect();
    let response = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/sse?token={}{rooms}",
            server.http,
            full_token("acme", "reader")
        ))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    backend.wait_asked().await?;
    drop(response);
    let took = sessions_gone(&server, Duration::from_secs(10)).await?;
    let asked = backend.asked.load(Ordering::SeqCst);
    assert!(
        asked <= 4,
        "the backend was asked {asked} times in {took:?}"
    );
    // Its reader left: counted as an SSE response's end is, not as a backend's disconnect
    // (regression audit 9, R5).
    let page = server.metrics().await?;
    let closed = |reason: &str| {
        metric_sum(
            &page,
            "quiver_sessions_closed_total",
            &[("transport", "sse"), ("reason", reason)],
        )
    };
    assert_eq!(
        (closed("client_closed"), closed("disconnected")),
        (1.0, 0.0)
    );
    Ok(())
}

/// A token that expires while the session's publish hook waits ends the session at `exp`, and
/// the command with it: no reply (the goodbye is its answer), nothing published, though the
/// backend allows it afterwards, and nothing queued behind it runs (PROTOCOL.md §6, §11.3;
/// outside conformance audit 4, C4-3: the session outlived its token by the hook's wait and
/// published; regression audit 9, R1: the commands behind it ran).
#[tokio::test]
async fn a_publish_whose_token_expires_during_its_hook_is_not_published() -> Result<()> {
    let exp = quiver_server::auth::unix_now() + 2;
    let (_server, backend, watcher, mut sub, mut publisher) =
        publish_held_by_its_hook(Via::WebSocket, &token_expiring_at("acme", "lapsing", exp))
            .await?;
    // Queued behind it: a publication into a room without a hook, and a Refresh. Neither may
    // run once the token has expired (outside regression audit 9, R1: both did, and the
    // Refresh kept the session).
    publisher
        .send(quiver_proto::Command::Publish {
            room: "plain.room".into(),
            payload: Bytes::from_static(b"after exp"),
            ack: true,
        })
        .await?;
    publisher
        .send(quiver_proto::Command::Refresh {
            token: full_token("acme", "lapsing"),
        })
        .await?;
    let goodbye = cut_off_unanswered_and_unpublished(&mut publisher, &backend, &mut sub).await?;
    assert_eq!(goodbye, quiver_proto::CloseCode::TokenExpired.as_u16());
    watcher.close().await;
    Ok(())
}

/// A server whose `hk` rooms have the hooks asked for, waiting 10 s on a backend whose gate
/// the test holds, and an API key of tenant `acme` ([`quiver_tests::rpc::ACME_KEY`]).
async fn server_with_gated_hooks(
    subscribe: bool,
    publish: bool,
) -> Result<(TestServer, Arc<quiver_tests::rpc::GatedBackend>)> {
    let (url, backend) = quiver_tests::rpc::gated_backend().await?;
    let server = TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        c.api.keys = vec![quiver_server::config::ApiKey {
            key: quiver_tests::rpc::ACME_KEY.into(),
            tenant: Some("acme".into()),
        }];
        c.rpc.hooks = vec![HookConfig {
            namespace: "hk".into(),
            subscribe,
            publish,
            timeout: Duration::from_secs(10),
            fail_open: false,
        }];
    })
    .await?;
    Ok((server, backend))
}

/// The backend's unsubscribe of one room stops its deliveries at once even while the session's
/// hooked command waits, and is told (`Unsubscribed` 116) once the command is done (PROTOCOL.md
/// §11.3; outside regression audit 8, N1: deliveries went on until the hook was answered, up to
/// twice its timeout).
#[tokio::test]
async fn an_api_unsubscribe_stops_deliveries_while_a_hook_waits() -> Result<()> {
    use quiver_proto::{Command, ErrorCode, Event};
    for via in [Via::WebTransport, Via::WebSocket] {
        let (server, backend) = server_with_gated_hooks(false, true).await?;
        let mut reader = Raw::connect_via(via, &server, &full_token("acme", "reader")).await?;
        let mut news = reader.subscribe("news").await?;
        let mut other = Raw::connect_via(via, &server, &full_token("acme", "other")).await?;
        other.publish("news", b"before").await?;
        assert_eq!(
            news.payload().await?,
            Bytes::from_static(b"before"),
            "{via:?}"
        );
        // The reader's hooked Publish waits on the backend.
        let id = reader
            .send(Command::Publish {
                room: "hk.x".into(),
                payload: Bytes::from_static(b"hooked"),
                ack: true,
            })
            .await?;
        backend.wait_asked().await?;
        let (status, answer) = api_post(
            &server,
            "unsubscribe",
            quiver_tests::rpc::ACME_KEY,
            serde_json::json!({"user": "reader", "room": "news", "reason": "moderated"}),
        )
        .await?;
        assert_eq!(status, 200, "{via:?}: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        other.publish("news", b"after").await?;
        // Nothing more of `news` reaches the reader (its stream may end).
        if let Ok(Ok(frame)) = tokio::time::timeout(Duration::from_millis(1_000), news.next()).await
        {
            assert!(
                !matches!(frame.event, Event::Publication { .. }),
                "{via:?}: delivered after the unsubscribe: {frame:?}"
            );
        }
        // The command, then the unsubscribe, in order.
        backend.gate.add_permits(1);
        assert!(
            matches!(reader.recv_reply(id).await?, Event::Published { .. }),
            "{via:?}"
        );
        let told = reader.recv().await?.event;
        assert!(
            matches!(&told, Event::Unsubscribed { room, code, .. } if room == "news" && *code == ErrorCode::Unsubscribed.as_u16()),
            "{via:?}: {told:?}"
        );
        assert_eq!(reader.request(Command::Ping).await?, Event::Pong, "{via:?}");
    }
    Ok(())
}

/// An SSE response whose only room's subscribe hook waits on the backend, on a server whose
/// hooks wait 10 s; the test's backend (its gate closed) has been asked.
async fn sse_held_by_its_hook(
    token: &str,
) -> Result<(
    TestServer,
    Arc<quiver_tests::rpc::GatedBackend>,
    quiver_tests::sse::SseReader,
)> {
    let (server, backend) = server_with_gated_hooks(true, false).await?;
    let mut sse =
        quiver_tests::sse::SseReader::open(&server, &format!("token={token}&room=hk.a"), None)
            .await?;
    sse.expect("welcome").await?;
    backend.wait_asked().await?;
    Ok((server, backend, sse))
}

/// The next event of `sse` must be its goodbye, and the response must end after it.
async fn sse_goodbye(sse: &mut quiver_tests::sse::SseReader) -> Result<serde_json::Value> {
    let event = sse
        .next()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the response ended without a goodbye"))?;
    anyhow::ensure!(event.event == "goodbye", "{event:?}");
    anyhow::ensure!(sse.next().await?.is_none(), "the response went on");
    Ok(event.data)
}

/// An SSE response ended while its last room's subscribe hook waits says why it ended: the
/// token's expiry (3002, reconnect with a fresh token), the backend's disconnect (3009 with the
/// backend's reason), not "every room was refused" (outside audit 23, F1: 3009 with that
/// reason in both cases, so a reader whose token expired was told never to come back).
#[tokio::test]
async fn an_sse_response_ended_while_its_rooms_hook_waits_says_why() -> Result<()> {
    let exp = quiver_server::auth::unix_now() + 2;
    let (_server, _backend, mut sse) =
        sse_held_by_its_hook(&token_expiring_at("acme", "lapsing", exp)).await?;
    let bye = sse_goodbye(&mut sse).await?;
    assert_eq!(
        bye["code"],
        quiver_proto::CloseCode::TokenExpired.as_u16(),
        "{bye}"
    );
    assert_eq!(bye["reconnect"], true, "{bye}");

    let (server, _backend, mut sse) = sse_held_by_its_hook(&full_token("acme", "kicked")).await?;
    let (status, answer) = api_post(
        &server,
        "disconnect",
        quiver_tests::rpc::ACME_KEY,
        serde_json::json!({"user": "kicked", "reason": "kicked-by-backend"}),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    let bye = sse_goodbye(&mut sse).await?;
    assert_eq!(
        bye["code"],
        quiver_proto::CloseCode::Disconnected.as_u16(),
        "{bye}"
    );
    assert_eq!(bye["reason"], "kicked-by-backend", "{bye}");
    Ok(())
}
