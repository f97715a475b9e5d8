//! What only the TCP transports have (PROTOCOL.md §9): the WebSocket's refusal goodbye, its
//! one-frame-per-message rule, subscriptions told apart on one socket, its bounds for a reader
//! that stops and a peer that goes silent; the `Origin` allow-list on every transport.
//! Server-Sent Events are in `sse.rs`.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use quiver_proto::{encode_command, ClientFrame, CloseCode, Command, Event};
use quiver_tests::*;
use tokio_tungstenite::tungstenite::Message;

fn handshake_status(err: tokio_tungstenite::tungstenite::Error) -> Option<u16> {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

/// Reads control frames until a Goodbye; returns its code and `reconnect`.
async fn goodbye(raw: &mut Raw) -> anyhow::Result<(u16, bool)> {
    loop {
        if let Event::Goodbye {
            code, reconnect, ..
        } = raw.recv().await?.event
        {
            return Ok((code, reconnect));
        }
    }
}

#[tokio::test]
async fn websocket_token_refusals_are_a_goodbye_a_browser_can_read() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let bad = format!("{}x", full_token("acme", "u"));
    let expired = token("acme", "u", &[">"], &[">"], -60);
    for (query, code, reconnect) in [
        (format!("?token={bad}"), CloseCode::InvalidToken, false),
        (String::new(), CloseCode::InvalidToken, false),
        (format!("?token={expired}"), CloseCode::TokenExpired, true),
    ] {
        let mut raw = Raw::websocket(&server, &format!("/v1/ws{query}"), &[]).await?;
        // The only frame: no Welcome, whatever the client sends.
        let first = raw.recv().await?;
        assert_eq!(first.id, 0);
        match first.event {
            Event::Goodbye {
                code: got,
                reconnect: again,
                ..
            } => {
                assert_eq!(got, code.as_u16(), "{query}");
                assert_eq!(again, reconnect);
            }
            other => panic!("expected a goodbye, got {other:?}"),
        }
        assert_eq!(raw.close_code().await, Some(u64::from(code.as_u16())));
    }
    // The header works as well as the query, and wins.
    let good = full_token("acme", "u");
    let header = format!("Bearer {good}");
    let raw = Raw::websocket(
        &server,
        &format!("/v1/ws?token={bad}"),
        &[("authorization", &header)],
    )
    .await?;
    let mut raw = raw;
    let id = raw
        .send(Command::Hello {
            version: 1,
            client: "t".into(),
        })
        .await?;
    assert!(matches!(raw.recv_reply(id).await?, Event::Welcome { .. }));

    // Over the size limit: refused like any bad token, before it is parsed.
    let huge = "a".repeat(5000);
    let mut raw = Raw::websocket(&server, &format!("/v1/ws?token={huge}"), &[]).await?;
    assert_eq!(
        goodbye(&mut raw).await?,
        (CloseCode::InvalidToken.as_u16(), false)
    );
    let page = server.metrics().await?;
    assert!(
        metric_sum(
            &page,
            "quiver_sessions_refused_total",
            &[("transport", "websocket"), ("reason", "token_invalid")]
        ) >= 1.0
    );
    Ok(())
}

#[tokio::test]
async fn allowed_origins_refuse_other_origins_on_every_transport() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await?;
    let t = full_token("acme", "u");
    let q = format!("/v1/ws?token={t}");
    let err = Raw::websocket(&server, &q, &[("origin", "https://evil.example.com")])
        .await
        .err()
        .expect("refused");
    assert_eq!(handshake_status(err), Some(403));
    assert!(
        Raw::websocket(&server, &q, &[("origin", "https://app.example.com")])
            .await
            .is_ok()
    );
    // Native clients send no Origin.
    assert!(Raw::websocket(&server, &q, &[]).await.is_ok());

    let sse = reqwest::Client::new()
        .get(format!("http://{}/v1/sse?token={t}&room=a", server.http))
        .header("origin", "https://evil.example.com")
        .send()
        .await?;
    assert_eq!(sse.status(), 403);
    // A second Origin is refused whatever the first says (both TCP transports).
    for path in [format!("/v1/sse?token={t}&room=a"), q.clone()] {
        let request = reqwest::Client::new()
            .get(format!("http://{}{path}", server.http))
            .header("origin", "https://app.example.com")
            .header("origin", "https://evil.example.com");
        let twice = as_upgrade(request, "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await?;
        assert_eq!(twice.status(), 403, "{path}");
    }

    let endpoint = client_endpoint(server.hash)?;
    let refused = endpoint
        .connect(
            wtransport::endpoint::ConnectOptions::builder(format!("{}?token={t}", server.url()))
                .add_header("origin", "https://evil.example.com")
                .build(),
        )
        .await;
    assert!(
        matches!(
            &refused,
            Err(wtransport::error::ConnectingError::SessionRejected)
        ),
        "{refused:?}"
    );
    let accepted = endpoint
        .connect(
            wtransport::endpoint::ConnectOptions::builder(format!("{}?token={t}", server.url()))
                .add_header("origin", "https://app.example.com")
                .build(),
        )
        .await;
    assert!(accepted.is_ok());
    Ok(())
}

#[tokio::test]
async fn websocket_messages_hold_exactly_one_frame() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let t = full_token("acme", "u");
    let ping = encode_command(&ClientFrame {
        id: 7,
        command: Command::Ping,
    });
    let cases: Vec<(&str, Message)> = vec![
        (
            "two frames",
            Message::binary([ping.clone(), ping.clone()].concat()),
        ),
        (
            "half a frame",
            Message::binary(ping[..ping.len() - 1].to_vec()),
        ),
        ("text", Message::text("{\"ping\":1}")),
        (
            "oversized",
            Message::binary(vec![0u8; quiver_proto::DEFAULT_MAX_FRAME + 100]),
        ),
    ];
    let mut bystander = Raw::connect_via(Via::WebSocket, &server, &t).await?;
    for (name, message) in cases {
        let mut raw = Raw::connect_via(Via::WebSocket, &server, &t).await?;
        raw.send_ws(message).await?;
        assert_eq!(
            goodbye(&mut raw).await?,
            (CloseCode::ProtocolError.as_u16(), false),
            "{name}"
        );
        if name != "oversized" {
            assert_eq!(raw.close_code().await, Some(3001), "{name}");
        }
        // (After an oversized message the rest of it is never read, so the kernel resets the
        // connection and the close frame may be lost; the goodbye came first. PROTOCOL §9.2.)
    }
    // One frame per message is fine, and nobody else noticed.
    bystander.send_bytes(&ping).await?;
    assert!(matches!(bystander.recv_reply(7).await?, Event::Pong));
    Ok(())
}

/// On one socket, a subscription's frames all come between its `SubscriptionStream` and its
/// `Unsubscribed` (PROTOCOL §9.2), however busy the room, so a client can drop stale frames.
#[tokio::test]
async fn websocket_subscriptions_are_told_apart_by_their_header_and_end() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.limits.commands_per_second = 100_000).await?;
    let mut sub = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "s")).await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    let flood = tokio::spawn(async move {
        for i in 0..3000u32 {
            publ.send(Command::Publish {
                room: "busy".into(),
                payload: Bytes::from(i.to_be_bytes().to_vec()),
                ack: false,
            })
            .await?;
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        anyhow::Ok(())
    });
    let mut ids = Vec::new();
    for _ in 0..5 {
        let _room = sub.subscribe("busy").await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reply = sub
            .request(Command::Unsubscribe {
                room: "busy".into(),
            })
            .await?;
        assert!(matches!(reply, Event::Unsubscribed { code: 0, .. }));
        ids.push(());
    }
    flood.await??;
    // Walk the socket's order: publications of "busy" only inside a header..Unsubscribed span.
    let mut open = false;
    let mut spans = 0;
    let mut inside = 0;
    for frame in sub.ws_trace() {
        match frame.event {
            Event::SubscriptionStream { room } if room == "busy" => {
                assert!(!open, "a second header before the first subscription ended");
                open = true;
                spans += 1;
            }
            Event::Unsubscribed { room, .. } if room == "busy" => open = false,
            Event::Publication { room, .. } if room == "busy" => {
                assert!(open, "a publication outside its subscription");
                inside += 1;
            }
            _ => {}
        }
    }
    assert_eq!(spans, 5);
    assert!(inside > 0, "the room was busy while subscribed");
    Ok(())
}

/// A `Subscribe` with an `Unsubscribe` right behind it still gets its `SubscriptionStream`
/// header, before the `Unsubscribed` (PROTOCOL §9.2): the header is not left to the
/// subscription's writer, which the `Unsubscribe` may abort before it ran.
#[tokio::test]
async fn a_websocket_subscription_gets_its_header_however_soon_it_ends() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.limits.commands_per_second = 100_000).await?;
    let mut raw = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "s")).await?;
    const ROUNDS: usize = 20;
    let mut last = 0;
    for _ in 0..ROUNDS {
        raw.send(Command::Subscribe {
            room: "quick".into(),
            resume: None,
        })
        .await?;
        last = raw
            .send(Command::Unsubscribe {
                room: "quick".into(),
            })
            .await?;
    }
    assert!(matches!(
        raw.recv_reply(last).await?,
        Event::Unsubscribed { code: 0, .. }
    ));
    // Every round: header, then Subscribed, then Unsubscribed, in that order.
    let mut order = Vec::new();
    for frame in raw.ws_trace() {
        match frame.event {
            Event::SubscriptionStream { room } if room == "quick" => order.push("header"),
            Event::Subscribed { room, .. } if room == "quick" => order.push("subscribed"),
            Event::Unsubscribed { room, .. } if room == "quick" => order.push("unsubscribed"),
            _ => {}
        }
    }
    let want: Vec<&str> = std::iter::repeat_n(["header", "subscribed", "unsubscribed"], ROUNDS)
        .flatten()
        .collect();
    assert_eq!(order, want);
    Ok(())
}

/// A WebSocket client that stops reading cannot grow the server: its room's queue overflows
/// (slow consumer) and, once even its replies cannot be queued, the session is closed. Another
/// subscriber of the same room receives everything.
#[tokio::test]
async fn a_websocket_reader_that_stops_costs_only_itself() -> anyhow::Result<()> {
    let queue = 64;
    let server = TestServer::start_with(|c| {
        c.limits.subscriber_queue = queue;
        c.limits.commands_per_second = 100_000;
        c.timeouts.reply = Duration::from_secs(1);
    })
    .await?;
    // A raw socket: Hello and Subscribe, then never read again.
    let mut deaf = deaf_websocket(&server, "deaf", "feed").await?;
    let mut healthy = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "h")).await?;
    let mut feed = healthy.subscribe("feed").await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let payload = vec![7u8; 16 * 1024];
    let n = 1200; // ~19 MB: far past every socket buffer
    for i in 0..n {
        publ.send(Command::Publish {
            room: "feed".into(),
            payload: Bytes::from(payload.clone()),
            ack: false,
        })
        .await?;
        assert_eq!(feed.payload().await?.len(), payload.len(), "message {i}");
    }
    let page = server.metrics().await?;
    assert!(
        metric_sum(
            &page,
            "quiver_deliveries_dropped_total",
            &[("reason", "slow_consumer")]
        ) >= 1.0,
        "the stalled subscription was dropped"
    );
    // And the deaf session ends (its replies cannot be queued) rather than hold memory.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // deaf, healthy and the publisher; then only the last two.
        if server.sessions() <= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deaf session is still open"
        );
        // Commands it sends pile up replies nobody reads: more than the outgoing queue's places
        // its room's frames leave to replies (a quarter of them, at least 64).
        for _ in 0..40 {
            let _ = deaf
                .send(Message::binary(encode_command(&ClientFrame {
                    id: 9,
                    command: Command::Ping,
                })))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Closed as `not_reading`, a close a client reconnects after (not a protocol error).
    let page = server.metrics().await?;
    assert_eq!(
        metric_sum(
            &page,
            "quiver_sessions_closed_total",
            &[("transport", "websocket"), ("reason", "not_reading")]
        ),
        1.0
    );
    assert!(CloseCode::NotReading.reconnect());
    assert!(matches!(healthy.request(Command::Ping).await?, Event::Pong));
    Ok(())
}

/// A subscription dropped as a slow consumer on a WebSocket that stopped reading is over at
/// once: out of the subscription gauge and out of its room's presence while the session is
/// still open, not when the client reads again or the session ends (outside audit: its writer
/// waited for room in the session's outgoing queue and never saw the overflow).
#[tokio::test]
async fn a_slow_consumer_on_a_websocket_that_stopped_reading_is_dropped_at_once(
) -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.limits.subscriber_queue = 16;
        c.limits.commands_per_second = 100_000;
        c.timeouts.reply = Duration::from_secs(60);
        c.timeouts.idle = Duration::from_secs(60);
        c.namespaces.push(quiver_server::config::NamespaceConfig {
            name: "p".into(),
            presence: true,
            ..Default::default()
        });
    })
    .await?;
    let _deaf = deaf_websocket(&server, "deaf", "p.feed").await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    let present = |event: Event| match event {
        Event::Presence { members, .. } => members.iter().any(|m| m.user == "deaf"),
        other => panic!("presence: {other:?}"),
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !present(
        publ.request(Command::Presence {
            room: "p.feed".into(),
        })
        .await?,
    ) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never present");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Published to until the deaf session leaves the room's presence: its subscription was
    // dropped (`drop_sub` takes it out of presence and of the subscription gauge together). The
    // metrics are the test process's, shared with the tests running beside this one, so the
    // room's presence, this server's own, is what is watched.
    let payload = Bytes::from(vec![7u8; 16 * 1024]);
    let mut sent = 0;
    loop {
        let still = present(
            publ.request(Command::Presence {
                room: "p.feed".into(),
            })
            .await?,
        );
        if !still {
            break;
        }
        anyhow::ensure!(
            sent < 4000,
            "still subscribed after {sent} publications (deaf present: {still})"
        );
        for _ in 0..100 {
            publ.send(Command::Publish {
                room: "p.feed".into(),
                payload: payload.clone(),
                ack: false,
            })
            .await?;
        }
        sent += 100;
        assert!(matches!(publ.request(Command::Ping).await?, Event::Pong));
    }
    // The session is still open (it is not closed before `timeouts.reply`), the subscription
    // is not.
    assert_eq!(server.sessions(), 2, "both sessions are still open");
    Ok(())
}

/// A client that sends far over its rate without reading still finds its `Goodbye 3003` when
/// it reads at last: the server reads and drops what the client sent after the goodbye before
/// it closes the socket, since closing with unread data would reset the connection and the
/// reset would destroy the goodbye in the client's receive buffer.
#[tokio::test]
async fn a_goodbye_survives_a_client_that_sent_past_it() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.limits.commands_per_second = 10).await?;
    let (mut sink, mut stream) = deaf_websocket(&server, "rude", "r").await?.split();
    // 200 publications of 16 KiB, over the rate from the 11th: the session closes at the 30th
    // refusal, with megabytes still unread in the server's socket.
    let flood = tokio::spawn(async move {
        for id in 10..210 {
            let publish = encode_command(&ClientFrame {
                id,
                command: Command::Publish {
                    room: "r".into(),
                    payload: Bytes::from(vec![0u8; 16 * 1024]),
                    ack: false,
                },
            });
            if sink.send(Message::binary(publish)).await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut goodbye = None;
    let read = async {
        while let Some(message) = stream.next().await {
            let Message::Binary(data) = message? else {
                continue;
            };
            for event in events_in(&data)? {
                if let Event::Goodbye { code, .. } = event {
                    goodbye = Some(code);
                }
            }
        }
        anyhow::Ok(())
    };
    let outcome = tokio::time::timeout(WAIT, read).await?;
    flood.abort();
    assert_eq!(
        goodbye,
        Some(CloseCode::RateAbuse.as_u16()),
        "read ended with {outcome:?}"
    );
    Ok(())
}

/// A peer that goes silent (no messages, no pongs) is closed after `timeouts.idle`.
#[tokio::test]
async fn a_silent_websocket_peer_is_closed_after_the_idle_timeout() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.timeouts.idle = Duration::from_millis(800);
        c.timeouts.keep_alive = Duration::from_millis(200);
    })
    .await?;
    // Polite peers answer pings (tungstenite does, while it reads) and stay.
    let mut polite = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "p")).await?;
    // A silent one: a session, then not a byte read or written.
    let (mut silent, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/ws?token={}",
        server.http,
        full_token("acme", "s")
    ))
    .await?;
    silent.send(hello("s")).await?;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(matches!(polite.request(Command::Ping).await?, Event::Pong));
    let page = server.metrics().await?;
    assert!(
        metric_sum(
            &page,
            "quiver_sessions_closed_total",
            &[("transport", "websocket"), ("reason", "idle_timeout")]
        ) >= 1.0
    );
    // The silent side finds its socket closed once it looks: dropped, no close frame (the
    // server presumes it gone, PROTOCOL.md §9.2).
    let ended = tokio::time::timeout(WAIT, async {
        let mut closes = 0;
        while let Some(Ok(message)) = silent.next().await {
            closes += usize::from(matches!(message, Message::Close(_)));
        }
        closes
    })
    .await;
    assert_eq!(ended.ok(), Some(0));
    Ok(())
}

/// With a real certificate the TCP listener serves HTTPS and wss with it, on the UDP port's
/// number (and no `Alt-Svc`).
#[tokio::test]
async fn a_real_certificate_serves_https_and_wss_beside_http3() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;

    let (server, cert_path) = TestServer::start_with_certificate().await?;
    let pem = std::fs::read(&cert_path)?;
    let cert = rustls_pemfile_cert(&pem)?;
    let https = server
        .server
        .as_ref()
        .and_then(|s| s.https_addr)
        .expect("an https listener");
    assert_eq!(https.port(), server.wt.port(), "same port number as HTTP/3");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost")?;

    let get = |path: &'static str| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", https.port())).await?;
            let mut tls = connector.connect(name, tcp).await?;
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            tls.write_all(request.as_bytes()).await?;
            let mut response = String::new();
            tokio::time::timeout(WAIT, tls.read_to_string(&mut response)).await??;
            anyhow::Ok(response)
        }
    };
    // HTTPS: health answers. It does not advertise HTTP/3: the UDP port serves WebTransport
    // sessions only, and a browser would send its SSE and API requests there (re-audit).
    let response = get("/healthz").await?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("alt-svc"),
        "{response}"
    );
    // Metrics list every tenant: the operator's http port has them, the public port does not
    // (sixth audit).
    let response = get("/metrics").await?;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(server.metrics().await?.contains("quiver_sessions"));

    // wss: a full session.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", https.port())).await?;
    let tls = connector.connect(name, tcp).await?;
    let url = format!(
        "wss://localhost:{}/v1/ws?token={}",
        https.port(),
        full_token("acme", "u")
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await?;
    ws.send(hello("wss")).await?;
    let reply = tokio::time::timeout(WAIT, ws.next()).await?;
    let Some(Ok(Message::Binary(data))) = reply else {
        anyhow::bail!("no reply: {reply:?}");
    };
    let frame = quiver_proto::decode_event(&data[quiver_proto::LENGTH_PREFIX..])?;
    assert!(matches!(frame.event, Event::Welcome { .. }), "{frame:?}");
    Ok(())
}

/// The first certificate of a PEM file, as DER.
fn rustls_pemfile_cert(
    pem: &[u8],
) -> anyhow::Result<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    Ok(tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(pem)?)
}

/// A client's close frame is answered with one (RFC 6455 §5.5.1) before the server ends the
/// connection, and the session counts as the client's leaving.
#[tokio::test]
async fn a_websocket_close_frame_is_answered() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/ws?token={}",
        server.http,
        full_token("acme", "leaver")
    ))
    .await?;
    ws.send(hello("leaver")).await?;
    ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        },
    )))
    .await?;
    let answered = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await?;
    assert_eq!(answered, Some(1000));

    // Commands in the same write as the close frame (a browser's `send(); close()`): the
    // close is still answered (outside audit 28, F2: the answers to the commands could not be
    // sent after the client's close, and the writer gave up on the socket, echo and all).
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/ws?token={}",
        server.http,
        full_token("acme", "leaver")
    ))
    .await?;
    ws.feed(hello("leaver")).await?;
    for id in 2..5 {
        let ping = encode_command(&ClientFrame {
            id,
            command: Command::Ping,
        });
        ws.feed(Message::binary(ping)).await?;
    }
    ws.feed(Message::Close(None)).await?;
    ws.flush().await?;
    let answered = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(_) = message {
                return true;
            }
        }
        false
    })
    .await?;
    assert!(answered, "the connection ended without a close frame");
    Ok(())
}

/// HTTP refusals outside the API carry the JSON body of PROTOCOL.md §9.1: an unknown path, and
/// a request to the WebSocket endpoint that is not an upgrade.
#[tokio::test]
async fn http_refusals_have_the_json_body() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    for (path, status, label) in [
        ("/nope", 404, "not_found"),
        ("/v2/ws", 404, "not_found"),
        ("/v1/ws", 400, "bad_request"),
    ] {
        let answer = reqwest::get(format!("http://{}{path}", server.http)).await?;
        assert_eq!(answer.status().as_u16(), status, "{path}");
        let body: serde_json::Value = answer.json().await?;
        assert_eq!(body["label"], label, "{path}: {body}");
        assert!(
            body["code"].is_null() && body["message"].is_string(),
            "{path}: {body}"
        );
    }
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/ws", server.http))
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 405);
    assert_eq!(
        answer.headers().get("allow").map(|v| v.as_bytes()),
        Some(&b"GET"[..])
    );
    let body: serde_json::Value = answer.json().await?;
    assert_eq!(body["label"], "method_not_allowed", "{body}");
    // `/v1/sse` also answers its CORS preflight: its 405 says so (outside fallback audit 6,
    // F2).
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/sse", server.http))
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 405);
    assert_eq!(
        answer.headers().get("allow").map(|v| v.as_bytes()),
        Some(&b"GET, OPTIONS"[..])
    );
    // HEAD is another method too: no SSE session is opened for it, and no upgrade is tried.
    let t = full_token("acme", "u");
    for (path, allow) in [
        (format!("/v1/sse?token={t}&room=a"), "GET, OPTIONS"),
        (format!("/v1/ws?token={t}"), "GET"),
    ] {
        let request = reqwest::Client::new().head(format!("http://{}{path}", server.http));
        let answer = as_upgrade(request, "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await?;
        assert_eq!(answer.status().as_u16(), 405, "HEAD {path}");
        assert_eq!(
            answer.headers().get("allow").map(|v| v.as_bytes()),
            Some(allow.as_bytes()),
            "HEAD {path}"
        );
    }
    assert_eq!(
        metric_sum(
            &reqwest::get(format!("http://{}/metrics", server.http))
                .await?
                .text()
                .await?,
            "quiver_sessions_opened_total",
            &[("transport", "sse")]
        ),
        0.0,
        "HEAD opened an SSE session"
    );
    // A key that is not the base64 of 16 bytes is a malformed upgrade (RFC 6455 §4.1).
    for key in [
        "",
        "short",
        "!!!!!!!!!!!!!!!!!!!!!!==",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZSBhbmQgbW9yZQ==",
    ] {
        let request = reqwest::Client::new().get(format!("http://{}/v1/ws?token={t}", server.http));
        let answer = as_upgrade(request, key).send().await?;
        assert_eq!(answer.status().as_u16(), 400, "key {key:?}");
        let body: serde_json::Value = answer.json().await?;
        assert_eq!(body["label"], "bad_request", "{body}");
    }
    // The key or the version given twice is malformed too (RFC 6455 §11.3.1, §11.3.5): the
    // server would otherwise answer for one of them and ignore the other.
    for (name, second) in [
        ("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA=="),
        ("sec-websocket-version", "12"),
        ("sec-websocket-version", "13"),
    ] {
        let request = reqwest::Client::new().get(format!("http://{}/v1/ws?token={t}", server.http));
        let answer = as_upgrade(request, "dGhlIHNhbXBsZSBub25jZQ==")
            .header(name, second)
            .send()
            .await?;
        assert_eq!(answer.status().as_u16(), 400, "{name} twice");
        let body: serde_json::Value = answer.json().await?;
        assert_eq!(body["label"], "bad_request", "{body}");
    }
    // A WebSocket version the server does not speak: 426 naming the one it does (RFC 6455
    // §4.2.2).
    let answer = reqwest::Client::new()
        .get(format!("http://{}/v1/ws", server.http))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "12")
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 426);
    assert_eq!(
        answer
            .headers()
            .get("sec-websocket-version")
            .map(|v| v.as_bytes()),
        Some(&b"13"[..])
    );
    let body: serde_json::Value = answer.json().await?;
    assert_eq!(body["label"], "bad_request", "{body}");
    Ok(())
}

/// `Connection` and `Upgrade` are lists, and several lines of one are one list (RFC 9110): an
/// upgrade is taken wherever in them `upgrade` and `websocket` stand, and refused when they do
/// not (outside fallback audit 6, F1: a `Connection: keep-alive` line before `Connection:
/// Upgrade`, or `Upgrade: websocket, foo/1`, got 400). A token is a whole list element.
#[tokio::test]
async fn upgrade_headers_are_read_as_lists() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await?;
    let t = full_token("acme", "u");
    for (headers, status) in [
        (
            "Connection: keep-alive\r\nConnection: Upgrade\r\nUpgrade: websocket",
            101,
        ),
        ("Connection: keep-alive, Upgrade\r\nUpgrade: websocket", 101),
        ("Connection: Upgrade\r\nUpgrade: foo/1, websocket", 101),
        ("Connection: Upgrade\r\nUpgrade: websocket, foo/1", 101),
        (
            "Connection: Upgrade\r\nUpgrade: foo/1\r\nUpgrade: WebSocket",
            101,
        ),
        ("Connection: keep-alive\r\nUpgrade: websocket", 400),
        ("Connection: Upgrade\r\nUpgrade: foo/1, websocket-not", 400),
        // Tokens, not substrings (outside audit 28, F1: these were upgraded).
        ("Connection: notupgrade\r\nUpgrade: websocket", 400),
        ("Connection: upgrades\r\nUpgrade: websocket", 400),
        ("Connection: keep-alive;upgrade\r\nUpgrade: websocket", 400),
        ("Connection: \"upgrade\"\r\nUpgrade: websocket", 400),
        ("Connection: Upgrade\r\nUpgrade: xwebsocket", 400),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(server.http).await?;
        let request = format!(
            "GET /v1/ws?token={t} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await??;
            anyhow::ensure!(n > 0, "closed before an answer to {headers:?}");
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{headers:?}: {head}"
        );
    }
    Ok(())
}

/// `request` as a WebSocket upgrade (RFC 6455) with `key`, sent with reqwest: the answers
/// tested here come before any upgrade.
fn as_upgrade(request: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
    request
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", key)
        .header("sec-websocket-version", "13")
}

/// A client's `Hello` as the one WebSocket message it travels in.
fn hello(client: &str) -> Message {
    Message::binary(encode_command(&ClientFrame {
        id: 1,
        command: Command::Hello {
            version: 1,
            client: client.into(),
        },
    }))
}

/// WebSocket pings and pongs from the client are metered like commands (PROTOCOL.md §9.2): a
/// few are nothing, a flood ends the session with `rate_abuse` on the
/// `commands_per_second × abuse_factor`-th over the rate, as a flood of commands does (outside
/// audit: four sessions sending them flat out held the server above a core, never refused).
#[tokio::test]
async fn websocket_ping_and_pong_floods_end_in_rate_abuse() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.limits.commands_per_second = 2;
        c.limits.abuse_factor = 15;
    })
    .await?;
    for pong in [false, true] {
        let frame = |n: u32| {
            let body = Bytes::from(n.to_be_bytes().to_vec());
            if pong {
                Message::Pong(body)
            } else {
                Message::Ping(body)
            }
        };
        let mut c = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "u")).await?;
        // Within the rate (the burst of 2): the session goes on.
        c.send_ws(frame(0)).await?;
        assert_eq!(c.request(Command::Ping).await?, Event::Pong, "pong: {pong}");
        // The burst is spent: 29 refusals leave it open, the 30th closes.
        for n in 1..=29 {
            c.send_ws(frame(n)).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            c.ws_close().is_none(),
            "pong: {pong}: closed before the threshold"
        );
        for n in 30..=40 {
            c.send_ws(frame(n)).await?;
        }
        let next = c.recv().await?.event;
        assert!(
            matches!(next, Event::Goodbye { code, .. } if code == CloseCode::RateAbuse.as_u16()),
            "pong: {pong}: {next:?}"
        );
    }

    // A flood that does not stop at the goodbye: after the close the server drops at most
    // 1,024 more messages, then closes the connection (it lingers up to 5 s otherwise). The
    // flooder never reads, so nothing on its side ends the flood but the server.
    let (mut flood, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/ws?token={}",
        server.http,
        full_token("acme", "f")
    ))
    .await?;
    flood.send(hello_message("flood")).await?;
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let closed = loop {
        if started.elapsed() > Duration::from_secs(4) {
            break None;
        }
        if flood
            .send(Message::Ping(Bytes::from_static(b"x")))
            .await
            .is_err()
        {
            break Some(started.elapsed());
        }
        sent += 1;
    };
    let closed = closed.ok_or_else(|| anyhow::anyhow!("still open after {sent} pings in 4 s"))?;
    assert!(
        closed < Duration::from_secs(3),
        "closed after {closed:?} ({sent} pings)"
    );
    Ok(())
}

/// A connection's pipelined HTTP requests are served one per turn of the runtime, not as many
/// as tokio's budget allows in one go: another task of the same runtime runs between any two
/// of them (outside audit: two anonymous connections pipelining `GET /api/v1/openapi.json`
/// took every other client's p50 from 0.7 to 70 ms). Counted, not timed: a task that only
/// yields ticks once per turn it gets while 2,000 pipelined requests are answered.
#[tokio::test]
async fn pipelined_http_requests_take_turns_with_other_tasks() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const N: usize = 2_000;
    let server = TestServer::start().await?;
    let ticks = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (ticks, done) = (ticks.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                ticks.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let addr = server.http;
    // The flood runs on a thread of its own (blocking sockets), outside the runtime it tests.
    let flood = std::thread::spawn(move || -> anyhow::Result<usize> {
        let mut tcp = std::net::TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        // Small answers: all of them fit the socket's buffers, so the server never waits to
        // write, and only its own yields give the other task turns.
        let requests = "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".repeat(N);
        let mut reader = tcp.try_clone()?;
        let writer = std::thread::spawn(move || tcp.write_all(requests.as_bytes()));
        let (mut answers, mut seen, mut buf) = (0, Vec::new(), vec![0u8; 1 << 16]);
        while answers < N {
            let n = reader.read(&mut buf)?;
            anyhow::ensure!(n > 0, "closed after {answers} answers");
            seen.extend_from_slice(&buf[..n]);
            // Count status lines as they arrive; keep a tail shorter than one, in case one
            // straddles two reads.
            let text = String::from_utf8_lossy(&seen);
            answers += text.matches("HTTP/1.1 200").count();
            let keep = seen.len().saturating_sub("HTTP/1.1 200".len() - 1);
            seen.drain(..keep);
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(answers)
    });
    let answers = tokio::task::spawn_blocking(move || flood.join())
        .await?
        .map_err(|_| anyhow::anyhow!("flood panicked"))??;
    done.store(true, Ordering::Relaxed);
    ticker.await?;
    let ticks = ticks.load(Ordering::Relaxed) as usize;
    assert_eq!(answers, N);
    assert!(
        ticks >= N / 2,
        "{ticks} turns for another task while {N} pipelined requests were answered"
    );
    Ok(())
}

/// A socket that reads at most `per_tick` bytes every `tick`: a client on a slow link.
struct Throttled {
    inner: tokio::net::TcpStream,
    per_tick: usize,
    tick: tokio::time::Interval,
    allowance: usize,
}

impl tokio::io::AsyncRead for Throttled {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while self.allowance == 0 {
            std::task::ready!(self.tick.poll_tick(cx));
            self.allowance = self.per_tick;
        }
        let take = self.allowance.min(buf.remaining());
        let mut limited = buf.take(take);
        std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        // SAFETY-free: `take` views the same memory; mark what it filled as filled here.
        buf.advance(n);
        self.allowance -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Throttled {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A WebSocket client that reads steadily but slower than its room is published to loses that
/// room (`slow_consumer`) and keeps its connection: the server's writer sees progress while
/// the client reads, so the write-stall deadline (meant for peers that read nothing) does not
/// end it (outside audit: readers at 5-50 KB/s were dropped as `connection_lost` once the
/// kernel's send buffer, grown to megabytes, woke the writer too seldom).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_reader_loses_the_room_not_the_connection() -> anyhow::Result<()> {
    // About 400 KB/s, small queues and a short write-stall deadline.
    slow_reader_loses_the_room(8 * 1024, 1000, Duration::from_secs(25), |c| {
        c.timeouts.handshake = Duration::from_secs(2);
        c.limits.session_queue_bytes = 256 * 1024;
        c.limits.subscriber_queue = 64;
    })
    .await
}

/// The same at the default limits, for a reader at about 32 KB/s of 16 KB publications: its
/// room's frames may fill only a quarter of the session's outgoing queue, so the `Unsubscribed`
/// and the `Pong` wait behind at most that, not a full megabyte (before: 30 s and more at this
/// rate, and a reply that could not be queued for `timeouts.reply` ended the session
/// `not_reading`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_reader_at_the_default_limits_keeps_its_connection() -> anyhow::Result<()>
{
    slow_reader_loses_the_room(640, 16_000, Duration::from_secs(25), |_| {}).await
}

/// A reader at about 10 KB/s against a write-stall deadline of 2 s: the kernel wakes a waiting
/// write only once the unsent data drains under half of `TCP_NOTSENT_LOWAT`, which takes such a
/// reader longer than the deadline, but the bytes it acknowledges meanwhile count as progress
/// (before, its connection ended `connection_lost`: an outside audit's 5 KB/s reader at the
/// default 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_slower_than_the_kernel_wakes_writes_still_keeps_its_connection(
) -> anyhow::Result<()> {
    slow_reader_loses_the_room(200, 100, Duration::from_secs(25), |c| {
        c.timeouts.handshake = Duration::from_secs(2);
    })
    .await
}

/// A WebSocket client with a 4 KiB receive buffer that reads `per_tick` bytes from its socket
/// every 20 ms, after sending `Hello` and then `commands` (ids from 2).
async fn slow_websocket(
    server: &TestServer,
    per_tick: usize,
    commands: Vec<Command>,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<Throttled>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = socket.connect(server.http).await?;
    let slow = Throttled {
        inner: tcp,
        per_tick,
        tick: tokio::time::interval(Duration::from_millis(20)),
        allowance: 0,
    };
    let url = format!(
        "ws://{}/v1/ws?token={}",
        server.http,
        full_token("acme", "slow")
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, slow).await?;
    let hello = Command::Hello {
        version: quiver_proto::PROTOCOL_VERSION,
        client: "slow".into(),
    };
    for (id, command) in (1..).zip(std::iter::once(hello).chain(commands)) {
        ws.send(Message::binary(encode_command(&ClientFrame {
            id,
            command,
        })))
        .await?;
    }
    Ok(ws)
}

/// A reader taking `per_tick` bytes from its socket every 20 ms, subscribed to a room published
/// to (`payload` bytes each) as fast as acknowledgements come back: its room ends
/// `slow_consumer`, then a `Ping` gets its `Pong` on the same connection, within `within`.
async fn slow_reader_loses_the_room(
    per_tick: usize,
    payload: usize,
    within: Duration,
    configure: impl FnOnce(&mut quiver_server::config::Config),
) -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.limits.commands_per_second = 100_000;
        configure(c);
    })
    .await?;
    let mut ws = slow_websocket(
        &server,
        per_tick,
        vec![Command::Subscribe {
            room: "busy.room".into(),
            resume: None,
        }],
    )
    .await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(20)
            {
                if publ
                    .publish("busy.room", &vec![7u8; payload])
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let deadline = tokio::time::Instant::now() + within;
    let mut ended = None;
    let mut pinged = false;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "not both slow_consumer and a pong in {within:?} (ended: {ended:?})"
                )
            })?;
        let data = match message {
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(_)) => continue,
            other => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                anyhow::bail!("the connection ended ({other:?}) after {ended:?}");
            }
        };
        for event in events_in(&data)? {
            match event {
                Event::Unsubscribed { room, code, .. } => {
                    ended = Some((room, code));
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    if !pinged {
                        let ping = ClientFrame {
                            id: 9,
                            command: Command::Ping,
                        };
                        ws.send(Message::binary(encode_command(&ping))).await?;
                        pinged = true;
                    }
                }
                Event::Pong => {
                    publisher.abort();
                    assert_eq!(
                        ended,
                        Some((
                            "busy.room".to_owned(),
                            quiver_proto::ErrorCode::SlowConsumer.as_u16()
                        ))
                    );
                    return Ok(());
                }
                _ => {}
            }
        }
    }
}

/// A drain waits for a WebSocket client that reads slowly but steadily inside one large
/// message (review 90, F2): its last two replies, history pages of about 60 KiB, go as one
/// message each to a client reading 400 bytes every 20 ms (six seconds or more for both). The
/// first fits in the kernel's buffers; the second is written in parts as the client reads.
/// The drain gave up on it after a second because progress counted whole messages only: the
/// writer was cut off mid-page and the client never got the second page or its goodbye. The
/// bytes it acknowledges now count, so both pages, then `Goodbye 3000`, then the close frame
/// arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_reader_gets_its_last_large_reply_in_a_drain() -> anyhow::Result<()> {
    let mut server = TestServer::start_with(|c| {
        add_history_namespace(c, "h", 100);
        c.timeouts.reply = Duration::from_secs(20);
        c.timeouts.drain = Duration::from_secs(30);
        c.limits.commands_per_second = 100_000;
    })
    .await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "writer")).await?;
    for i in 0..100u8 {
        let reply = publisher.publish("h.big", &[i; 1000]).await?;
        anyhow::ensure!(matches!(reply, Event::Published { .. }), "{reply:?}");
    }
    // The helper's small receive buffer matters here: the client's TCP opens its window again
    // (and acknowledges, what the server sees) once about half of it is free (PROTOCOL §9.1),
    // here every few tenths of a second. With the default 128 KiB, a reader this slow shows
    // nothing for many seconds and counts as not reading (PROTOCOL's 3010 row).
    let page = || Command::History {
        room: "h.big".into(),
        since: None,
        limit: 1000,
    };
    let mut ws = slow_websocket(&server, 400, vec![page(), page()]).await?;
    // The second page is being written when the drain begins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drain = tokio::spawn(async move {
        server.stop().await;
        server
    });
    let (mut pages, mut goodbye, mut close) = (Vec::new(), None, None);
    let read = async {
        while let Some(message) = ws.next().await {
            match message? {
                Message::Binary(data) => {
                    for event in events_in(&data)? {
                        match event {
                            Event::History { publications, .. } => pages.push(publications.len()),
                            Event::Goodbye { code, .. } => goodbye = Some(code),
                            _ => {}
                        }
                    }
                }
                Message::Close(frame) => close = frame.map(|f| u16::from(f.code)),
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    let ended = tokio::time::timeout(Duration::from_secs(25), read).await;
    let _ = drain.await;
    assert!(
        pages.len() == 2 && pages.iter().all(|&p| p >= 50),
        "a page was cut off (pages of {pages:?} publications; goodbye {goodbye:?}, close \
         {close:?}, read {ended:?})"
    );
    assert_eq!(
        goodbye,
        Some(CloseCode::Shutdown.as_u16()),
        "close {close:?}"
    );
    assert_eq!(close, Some(CloseCode::Shutdown.as_u16()));
    Ok(())
}

/// Two `Authorization` headers are no credential (a proxy in front may have judged the other
/// one): SSE and the backend API answer 401 though each header alone would do (outside audit:
/// the first was used on TCP, the last on WebTransport).
#[tokio::test]
async fn two_authorization_headers_are_no_credential() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let token = full_token("acme", "u");
    let bearer = format!("Bearer {token}");
    let http = reqwest::Client::new();
    let sse = |n: usize| {
        let mut request = http.get(format!("http://{}/v1/sse?room=chat.a", server.http));
        for _ in 0..n {
            request = request.header("authorization", &bearer);
        }
        request.send()
    };
    assert_eq!(sse(1).await?.status(), 200);
    assert_eq!(sse(2).await?.status(), 401);
    let publish = |n: usize| {
        let mut request = http
            .post(format!("http://{}/api/v1/publish/chat.a", server.http))
            .body("x");
        for _ in 0..n {
            request = request.header("authorization", &bearer);
        }
        request.send()
    };
    assert_eq!(publish(1).await?.status(), 200);
    assert_eq!(publish(2).await?.status(), 401);
    Ok(())
}

/// Gives the test client's socket reader a turn now and then while the test writes thousands of
/// frames: a write that finds room never yields, so on the test's one thread the server's
/// goodbye waited unread in the socket until the reset that follows it (the server stops
/// reading a client that goes on sending a refused message: PROTOCOL.md §9.2) threw it away.
async fn let_the_reader_run(sent: usize) {
    if sent % 200 == 199 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A WebSocket message may come in fragments (RFC 6455), within a bound on what its frame
/// headers take beyond its payload (PROTOCOL.md §9.2): a command in a hundred fragments is read
/// like any other; a message that never ends, its continuation frames empty (each adds nothing
/// to its size, so it never reaches `max_frame`), and a complete message in thousands of empty
/// fragments are protocol violations (outside bounds audit 3, F1: two sessions sending empty
/// continuation frames held the server at 1.9 cores, never closed).
#[tokio::test]
async fn websocket_messages_in_too_many_fragments_are_refused() -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let server = TestServer::start().await?;
    let first = |data: &[u8], last: bool| {
        Message::Frame(Frame::message(
            Bytes::copy_from_slice(data),
            OpCode::Data(Data::Binary),
            last,
        ))
    };
    let more = |data: &[u8], last: bool| {
        Message::Frame(Frame::message(
            Bytes::copy_from_slice(data),
            OpCode::Data(Data::Continue),
            last,
        ))
    };
    let ping = encode_command(&ClientFrame {
        id: 7,
        command: Command::Ping,
    });
    // `empties` empty continuation frames between the command's first byte and the rest.
    async fn fragmented(
        c: &mut Raw,
        first: Message,
        empty: impl Fn() -> Message,
        empties: usize,
        rest: Option<Message>,
    ) -> anyhow::Result<()> {
        c.send_ws(first).await?;
        for i in 0..empties {
            // The server may cut the connection part way: what it said is read below.
            if c.send_ws(empty()).await.is_err() {
                return Ok(());
            }
            let_the_reader_run(i).await;
        }
        if let Some(rest) = rest {
            let _ = c.send_ws(rest).await;
        }
        Ok(())
    }

    // A hundred empty fragments and the rest byte by byte: the Ping is answered.
    let mut c = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "u")).await?;
    c.send_ws(first(&ping[..1], false)).await?;
    for _ in 0..100 {
        c.send_ws(more(&[], false)).await?;
    }
    for (i, byte) in ping[1..].iter().enumerate() {
        c.send_ws(more(&[*byte], i + 2 == ping.len())).await?;
    }
    let reply = c.recv().await?;
    assert_eq!((reply.id, reply.event), (7, Event::Pong));

    // A message that never ends: 40,000 empty continuation frames (240 KB on the wire, the
    // message still one byte).
    fragmented(
        &mut c,
        first(&ping[..1], false),
        || more(&[], false),
        40_000,
        None,
    )
    .await?;
    let bye = c.recv().await?.event;
    assert!(
        matches!(&bye, Event::Goodbye { code, reason, .. }
            if *code == CloseCode::ProtocolError.as_u16() && reason.contains("too many fragments")),
        "{bye:?}"
    );

    // A complete message in 4,000 empty fragments (24 KB of frame headers): refused when it
    // completes, though it is a valid Ping.
    let mut c = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "v")).await?;
    fragmented(
        &mut c,
        first(&ping[..1], false),
        || more(&[], false),
        4_000,
        Some(more(&ping[1..], true)),
    )
    .await?;
    let bye = c.recv().await?.event;
    assert!(
        matches!(&bye, Event::Goodbye { code, reason, .. }
            if *code == CloseCode::ProtocolError.as_u16() && reason.contains("too many fragments")),
        "{bye:?}"
    );

    // A message that never ends, a WebSocket ping between every 500 of its empty continuation
    // frames (RFC 6455 lets control frames come between fragments): a ping is no message's end
    // (outside audit 119, F2: the count started afresh at each one, and 975,000 empty
    // fragments went through in 5 s, the message then carried out).
    let mut c = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "x")).await?;
    c.send_ws(first(&ping[..1], false)).await?;
    'sending: for _ in 0..40 {
        for i in 0..500 {
            if c.send_ws(more(&[], false)).await.is_err() {
                break 'sending;
            }
            let_the_reader_run(i).await;
        }
        if c.send_ws(Message::Ping(Bytes::new())).await.is_err() {
            break;
        }
    }
    let _ = c.send_ws(more(&ping[1..], true)).await;
    let bye = c.recv().await?.event;
    assert!(
        matches!(&bye, Event::Goodbye { code, reason, .. }
            if *code == CloseCode::ProtocolError.as_u16() && reason.contains("too many fragments")),
        "{bye:?}"
    );

    // Another client noticed nothing.
    let mut other = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "w")).await?;
    assert_eq!(other.request(Command::Ping).await?, Event::Pong);
    Ok(())
}

/// A WebSocket client that writes its `Hello` and a publication and closes right behind them
/// has the publication carried out (PROTOCOL.md §3): the session used to see the close before
/// the queued `Hello` about half the time and drop everything (outside regression audit 9, R3).
#[tokio::test]
async fn a_websocket_clients_hello_and_commands_before_its_close_are_carried_out(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut observer = Raw::connect(&server, &full_token("acme", "observer")).await?;
    let mut room = observer.subscribe("pipe.room").await?;
    for i in 0..12u8 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "ws://{}/v1/ws?token={}",
            server.http,
            full_token("acme", "brief")
        ))
        .await?;
        ws.send(hello("brief")).await?;
        ws.send(Message::binary(encode_command(&ClientFrame {
            id: 2,
            command: Command::Publish {
                room: "pipe.room".into(),
                payload: Bytes::from(vec![i]),
                ack: false,
            },
        })))
        .await?;
        ws.close(None).await?;
        drop(ws);
        assert_eq!(room.payload().await?, Bytes::from(vec![i]), "run {i}");
    }
    Ok(())
}

/// What the server coalesces into one WebSocket message is bounded to 16 KiB (a frame that is
/// larger goes alone): a client hears of a message only once it has all of it, and a client on
/// a slow link behind a backlog of 64 KiB messages heard nothing for seconds, took a live
/// session for a dead one, and reconnected into a growing replay (outside audit 65: at 200
/// kbit/s, 5 reconnects in 20 s).
#[tokio::test]
async fn coalesced_websocket_messages_stay_small() -> anyhow::Result<()> {
    const COALESCED: usize = 16 * 1024;
    const PAYLOAD: usize = 1024;
    let server = TestServer::start_with(|c| {
        c.limits.commands_per_second = 1_000_000;
    })
    .await?;
    let (mut reader, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/ws?token={}",
        server.http,
        full_token("acme", "slow")
    ))
    .await?;
    reader.send(hello("slow")).await?;
    reader
        .send(Message::binary(encode_command(&ClientFrame {
            id: 2,
            command: Command::Subscribe {
                room: "t.r".into(),
                resume: None,
            },
        })))
        .await?;
    let mut subscribed = false;
    while !subscribed {
        let message = tokio::time::timeout(WAIT, reader.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed"))??;
        subscribed = message.into_data().windows(3).any(|w| w == b"t.r");
    }
    // Far more than the sockets hold while the reader reads nothing: a backlog in the
    // session's queue, which the writer coalesces.
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    let mut pipelined = Vec::new();
    for id in 0..8_000u32 {
        pipelined.extend_from_slice(&encode_command(&ClientFrame {
            id: 10 + id,
            command: Command::Publish {
                room: "t.r".into(),
                payload: Bytes::from(vec![b'x'; PAYLOAD]),
                ack: false,
            },
        }));
    }
    publisher.send_bytes(&pipelined).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut largest, mut most_frames) = (0, 0);
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(500), reader.next()).await
    {
        let data = message.into_data();
        largest = largest.max(data.len());
        most_frames = most_frames.max(data.len() / (PAYLOAD + 16));
    }
    assert!(
        most_frames > 1,
        "nothing was coalesced: the test shows nothing"
    );
    assert!(
        largest <= COALESCED + PAYLOAD + 64,
        "a message of {largest} bytes"
    );
    Ok(())
}

/// A WebSocket the server ended holds its place no longer than the close needs (review 91, F1):
/// a client whose token expires reads its `Goodbye 3002`, then neither reads on nor answers the
/// close frame. Its writer finishes at once (everything fit the socket), so the linger ends at
/// its fixed bound, 5 s; bounded by the latest the writer could have taken instead
/// (`timeouts.reply` from the session's end plus 3 s), every close was held 13 s.
#[tokio::test]
async fn a_websocket_that_does_not_answer_the_close_is_let_go_within_the_linger(
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let t = token("acme", "u", &[">"], &[">"], 3);
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token={t}", server.http)).await?;
    socket.send(hello_message("deaf")).await?;
    // Welcome, then at the expiry the goodbye; the close frame behind it is never read.
    loop {
        let Some(message) = socket.next().await else {
            anyhow::bail!("closed before the goodbye");
        };
        let Message::Binary(data) = message? else {
            continue;
        };
        let frame = quiver_proto::decode_event(&data[quiver_proto::LENGTH_PREFIX..])?;
        if let Event::Goodbye { code, .. } = frame.event {
            assert_eq!(code, CloseCode::TokenExpired.as_u16());
            break;
        }
    }
    let said_goodbye = std::time::Instant::now();
    let active = |page: &str| {
        metric_sum(
            page,
            "quiver_sessions_active",
            &[("transport", "websocket")],
        )
    };
    loop {
        let page = server.metrics().await?;
        if active(&page) == 0.0 {
            break;
        }
        assert!(
            said_goodbye.elapsed() < Duration::from_secs(9),
            "the closing WebSocket still counts {:?} after its goodbye",
            said_goodbye.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not before the linger's own bound: the client never answered.
    assert!(
        said_goodbye.elapsed() >= Duration::from_secs(3),
        "let go after {:?}",
        said_goodbye.elapsed()
    );
    drop(socket);
    Ok(())
}

/// A `Hello` (id 1) as the WebSocket message a client without `Raw` sends first.
fn hello_message(client: &str) -> Message {
    let hello = Command::Hello {
        version: quiver_proto::PROTOCOL_VERSION,
        client: client.into(),
    };
    Message::binary(encode_command(&ClientFrame {
        id: 1,
        command: hello,
    }))
}
