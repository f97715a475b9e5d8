//! The Rust client against fake WebSocket servers that misbehave, or say "not now": one ends a
//! session with a bare close code (no `Goodbye` frame before it) and never answers a
//! `Subscribe`, one refuses a resubscribe for a quota. What the client may and may not
//! conclude from that.

use quiver_client::{token_fixed, Client, ClientConfig, ClientError, Transport};
use quiver_tests::*;
use tokio::net::TcpListener;

/// What a fake server does with a command (after `Hello`, which every session gets a
/// `Welcome` for, and `Ping`, answered `Pong`).
enum Answer {
    /// These events, each with the command's id.
    Events(Vec<quiver_proto::Event>),
    /// These events, then the connection dropped (no close frame).
    EventsThenDrop(Vec<quiver_proto::Event>),
    /// A bare close frame with this code, no `Goodbye` frame before it.
    Close(u16),
    Nothing,
}

/// A fake server on WebSocket; `session` makes each session's answerer, given the session's
/// number (1, 2, ...). Returns its URL.
async fn fake_server<A>(session: impl Fn(u32) -> A + Send + 'static) -> anyhow::Result<String>
where
    A: FnMut(quiver_proto::Command) -> Answer + Send + 'static,
{
    use futures::{SinkExt, StreamExt};
    use quiver_proto::{Command, Event, FrameDecoder, Limits, ServerFrame};
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
    use tokio_tungstenite::tungstenite::Message;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/v1/ws", listener.local_addr()?);
    tokio::spawn(async move {
        let mut sessions = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            sessions += 1;
            let (number, mut answer) = (sessions, session(sessions));
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let mut decoder = FrameDecoder::new(1 << 20);
                while let Some(Ok(message)) = ws.next().await {
                    let Message::Binary(data) = message else {
                        continue;
                    };
                    decoder.push(&data);
                    while let Ok(Some(body)) = decoder.next_frame() {
                        let Ok(frame) = quiver_proto::decode_command(&body) else {
                            return;
                        };
                        let (events, then_drop) = match frame.command {
                            Command::Hello { .. } => {
                                let welcome = Event::Welcome {
                                    version: quiver_proto::PROTOCOL_VERSION,
                                    session: format!("s{number}"),
                                    user: "u".into(),
                                    tenant: "acme".into(),
                                    expires_at: None,
                                    limits: Limits {
                                        max_frame: 1 << 20,
                                        max_payload: 1 << 16,
                                        max_subscriptions: 100,
                                        commands_per_second: 1000,
                                    },
                                };
                                (vec![welcome], false)
                            }
                            Command::Ping => (vec![Event::Pong], false),
                            command => match answer(command) {
                                Answer::Events(events) => (events, false),
                                Answer::EventsThenDrop(events) => (events, true),
                                Answer::Close(code) => {
                                    let close = CloseFrame {
                                        code: CloseCode::from(code),
                                        reason: "server shutting down".into(),
                                    };
                                    let _ = ws.close(Some(close)).await;
                                    return;
                                }
                                Answer::Nothing => continue,
                            },
                        };
                        for event in events {
                            let bytes = quiver_proto::encode_event(&ServerFrame {
                                id: frame.id,
                                event,
                            });
                            if ws
                                .send(Message::Binary(bytes.to_vec().into()))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        if then_drop {
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(url)
}

/// Welcomes every session and answers `Ping`, never `Subscribe`; the first session's first
/// `Publish` is answered by a bare close frame 3000, with no `Goodbye` frame before it.
/// Sends its session's number for every `Publish` it reads.
async fn closing_at_the_first_publish(
    publishes: tokio::sync::mpsc::UnboundedSender<u32>,
) -> anyhow::Result<String> {
    use quiver_proto::{Command, Event};
    fake_server(move |session| {
        let publishes = publishes.clone();
        move |command| match command {
            Command::Publish { .. } => {
                let _ = publishes.send(session);
                if session == 1 {
                    Answer::Close(3000)
                } else {
                    Answer::Events(vec![Event::Published { position: None }])
                }
            }
            _ => Answer::Nothing,
        }
    })
    .await
}

/// A client of a fake server: WebSocket only, reconnecting within 100–300 ms.
fn client_config(url: String, user: &str) -> ClientConfig {
    let mut config = ClientConfig::new(String::new(), token_fixed(full_token("acme", user)))
        .with_transport(Transport::WebSocket);
    config.ws_urls = vec![url];
    config.backoff = quiver_client::Backoff {
        initial: std::time::Duration::from_millis(100),
        max: std::time::Duration::from_millis(300),
    };
    config
}

/// A close code 3000 without its `Goodbye` frame does not say that the server answered every
/// command it read before it (PROTOCOL §7: the answers may be lost with the connection), so an
/// acknowledged publish still unanswered is reported `ConnectionLost`, never sent again: it
/// may have been published (outside audit 68, 2: sent again, it was published twice).
#[tokio::test]
async fn a_bare_shutdown_close_sends_no_acknowledged_publish_again() -> anyhow::Result<()> {
    let (tx, mut publishes) = tokio::sync::mpsc::unbounded_channel();
    let url = closing_at_the_first_publish(tx).await?;
    let config = client_config(url, "p");
    let client = Client::connect(config).await?;
    match client.publish_ack("r.a", "once").await {
        Err(ClientError::ConnectionLost) => {}
        other => anyhow::bail!("expected ConnectionLost, got {other:?}"),
    }
    assert_eq!(publishes.recv().await, Some(1));
    // Back on a second session, which hears no publish.
    let deadline = tokio::time::Instant::now() + WAIT;
    while client.ping().await.is_err() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(publishes.try_recv().is_err(), "the publish was sent again");
    client.close().await;
    Ok(())
}

/// A subscribe that timed out and was never answered is taken over by the next subscribe to
/// the room, which waits for the answer in its turn: it was refused `already_subscribed`, for
/// a room the application had no handle of (outside audit 68, 5).
#[tokio::test]
async fn a_subscribe_after_one_that_timed_out_waits_for_the_answer() -> anyhow::Result<()> {
    let (tx, _publishes) = tokio::sync::mpsc::unbounded_channel();
    let url = closing_at_the_first_publish(tx).await?;
    let mut config = client_config(url, "s");
    config.request_timeout = std::time::Duration::from_millis(300);
    let client = Client::connect(config).await?;
    for attempt in 0..2 {
        match client.subscribe("r.a").await {
            Err(ClientError::Timeout) => {}
            other => anyhow::bail!("attempt {attempt}: expected Timeout, got {other:?}"),
        }
    }
    client.close().await;
    Ok(())
}

/// A subscribe from another position does not take over one still in flight: the server
/// answers for the position that was sent, and the later caller would silently miss what lies
/// between (outside audit 73). It is refused `already_subscribed` at once, saying why; one
/// from the same position still takes over.
#[tokio::test]
async fn a_subscribe_from_another_position_does_not_take_over_one_in_flight() -> anyhow::Result<()>
{
    use quiver_client::Position;
    let (tx, _publishes) = tokio::sync::mpsc::unbounded_channel();
    let url = closing_at_the_first_publish(tx).await?;
    let mut config = client_config(url, "s");
    config.request_timeout = std::time::Duration::from_millis(300);
    let client = Client::connect(config).await?;
    let (sent, other) = (
        Position {
            epoch: 7,
            offset: 10,
        },
        Position {
            epoch: 7,
            offset: 2,
        },
    );
    match client.subscribe_from("r.a", sent).await {
        Err(ClientError::Timeout) => {}
        other => anyhow::bail!("expected Timeout, got {other:?}"),
    }
    match client.subscribe_from("r.a", other).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, quiver_proto::ErrorCode::AlreadySubscribed as u16);
            assert!(message.contains("another position"), "{message}");
        }
        other => anyhow::bail!("expected already_subscribed, got {other:?}"),
    }
    match client.subscribe("r.a").await {
        Err(ClientError::Server { code, .. })
            if code == quiver_proto::ErrorCode::AlreadySubscribed as u16 => {}
        other => anyhow::bail!(
            "a subscribe without a position: expected already_subscribed, got {other:?}"
        ),
    }
    match client.subscribe_from("r.a", sent).await {
        Err(ClientError::Timeout) => {}
        other => anyhow::bail!("the same position takes over: expected Timeout, got {other:?}"),
    }
    client.close().await;
    Ok(())
}

/// Its first session confirms every `Subscribe` and then drops the connection; on the next
/// session the first `Subscribe` is refused 115 `quota_exceeded` and the later ones confirmed.
/// Sends the session's number with each `Subscribe` it reads.
async fn refusing_a_resubscribe_for_now(
    subscribes: tokio::sync::mpsc::UnboundedSender<u32>,
) -> anyhow::Result<String> {
    use quiver_proto::{Command, ErrorCode, Event, Recovery};
    fake_server(move |session| {
        let subscribes = subscribes.clone();
        let mut refused = false;
        move |command| match command {
            Command::Subscribe { room, .. } => {
                let _ = subscribes.send(session);
                if session == 2 && !refused {
                    refused = true;
                    return Answer::Events(vec![Event::Error {
                        code: ErrorCode::QuotaExceeded.as_u16(),
                        message: "the tenant is at its subscriptions quota".into(),
                    }]);
                }
                // As a server does on WebSocket: the room's stream is announced, then
                // confirmed (PROTOCOL.md, section 2).
                let events = vec![
                    Event::SubscriptionStream { room: room.clone() },
                    Event::Subscribed {
                        room,
                        position: None,
                        recovery: Recovery::NotRequested,
                        subscription: None,
                    },
                ];
                if session == 1 {
                    Answer::EventsThenDrop(events)
                } else {
                    Answer::Events(events)
                }
            }
            _ => Answer::Nothing,
        }
    })
    .await
}

/// A resubscribe refused 115 `quota_exceeded` ("no effect, retry later", PROTOCOL §11) is
/// tried again, as after 111 and 429-like refusals, and as the TypeScript client does: it
/// ended the subscription for good (outside audit 73).
#[tokio::test]
async fn a_resubscribe_refused_for_a_quota_is_tried_again() -> anyhow::Result<()> {
    use quiver_client::{Recovery, SubEvent};
    let (tx, mut subscribes) = tokio::sync::mpsc::unbounded_channel();
    let url = refusing_a_resubscribe_for_now(tx).await?;
    let config = client_config(url, "q");
    let client = Client::connect(config).await?;
    let mut sub = client.subscribe("r.a").await?;
    assert_eq!(subscribes.recv().await, Some(1));
    assert_eq!(
        subscribes.recv().await,
        Some(2),
        "no resubscribe after the reconnect"
    );
    let again = tokio::time::timeout(WAIT, subscribes.recv()).await;
    assert_eq!(
        again.ok().flatten(),
        Some(2),
        "the refused resubscribe was not tried again"
    );
    match tokio::time::timeout(WAIT, sub.recv()).await {
        Ok(Some(SubEvent::Resubscribed {
            recovery: Recovery::NotRequested,
        })) => {}
        other => anyhow::bail!("expected Resubscribed, got {other:?}"),
    }
    client.close().await;
    Ok(())
}
