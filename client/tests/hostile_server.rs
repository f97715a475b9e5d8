//! The client against a hostile WebSocket server (THREAT-MODEL: "the client libraries must not
//! crash or exhaust memory"; an outside audit of the clients): a server that ends every session
//! right after `Welcome` gets a backed-off reconnect, not a storm; a `max_frame` announced far
//! above the client's own ceiling does not let one frame past it; a server that floods pings
//! and reads nothing makes the client replace the connection, not queue pongs without end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use quiver_client::{token_fixed, Client, ClientConfig, ConnectionState, Limits, Transport};
use quiver_proto::{
    decode_command, encode_event, Command, Event, FrameDecoder, ServerFrame, DEFAULT_MAX_FRAME,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// What the hostile server does once it has answered `Hello`.
#[derive(Clone, Copy)]
enum After {
    /// Closes the connection at once.
    Close,
    /// Answers `Subscribe` with `Subscribed`, then sends one publication of this many bytes.
    BigPublication(usize),
    /// Stops reading and sends pings as fast as the socket takes them (at most 20 s).
    PingFlood,
    /// Welcomes with a token expiring in 3 s and answers every `Refresh` with that same
    /// expiry, counting the refreshes.
    RefreshSame,
    /// Answers each `Ping` with a reply of another kind (`Published`) first, then the `Pong`.
    StrayReplies,
    /// Answers `Subscribe` with `Subscribed`, then ends the room with an `Unsubscribed` under
    /// the `Subscribe`'s id.
    StrayUnsubscribed,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The next command the client sent.
async fn command(ws: &mut Ws) -> Option<(u32, Command)> {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Binary(data) = msg else { continue };
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.push(&data);
        let body = dec.next_frame().ok().flatten()?;
        let frame = decode_command(&body).ok()?;
        return Some((frame.id, frame.command));
    }
    None
}

/// `Subscribed` to a room without history.
fn subscribed(room: &str) -> Event {
    Event::Subscribed {
        room: room.to_owned(),
        position: None,
        recovery: quiver_proto::Recovery::NotRequested,
        subscription: None,
    }
}

async fn send(ws: &mut Ws, id: u32, event: Event) -> bool {
    ws.send(Message::Binary(encode_event(&ServerFrame { id, event })))
        .await
        .is_ok()
}

/// Serves the hostile behaviour on a loopback port; the port and a count of connections.
/// (`RefreshSame` counts `Refresh` commands in the same counter.)
async fn hostile(after: After, max_frame: u32) -> anyhow::Result<(u16, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if !matches!(after, After::RefreshSame) {
                count.fetch_add(1, Ordering::SeqCst);
            }
            let refreshes = count.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let Some((id, Command::Hello { .. })) = command(&mut ws).await else {
                    return;
                };
                let expiry = matches!(after, After::RefreshSame).then(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                        + 3
                });
                let welcome = Event::Welcome {
                    version: 1,
                    session: "s".into(),
                    user: "u".into(),
                    tenant: "t".into(),
                    expires_at: expiry,
                    limits: Limits {
                        max_frame,
                        max_payload: max_frame.saturating_sub(1024),
                        max_subscriptions: 16,
                        commands_per_second: 1000,
                    },
                };
                if !send(&mut ws, id, welcome).await {
                    return;
                }
                match after {
                    After::Close => drop(ws),
                    After::BigPublication(size) => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let Command::Subscribe { room, .. } = cmd else {
                                continue;
                            };
                            let subscribed = subscribed(&room);
                            let publication = Event::Publication {
                                room,
                                position: None,
                                payload: vec![7u8; size].into(),
                            };
                            if !send(&mut ws, id, subscribed).await
                                || !send(&mut ws, 0, publication).await
                            {
                                return;
                            }
                        }
                    }
                    After::RefreshSame => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let reply = match cmd {
                                Command::Refresh { .. } => {
                                    refreshes.fetch_add(1, Ordering::SeqCst);
                                    Event::Refreshed { expires_at: expiry }
                                }
                                Command::Ping => Event::Pong,
                                _ => continue,
                            };
                            if !send(&mut ws, id, reply).await {
                                return;
                            }
                        }
                    }
                    After::StrayUnsubscribed => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let Command::Subscribe { room, .. } = cmd else {
                                continue;
                            };
                            let subscribed = subscribed(&room);
                            let ended = Event::Unsubscribed {
                                room,
                                code: 0,
                                reason: "stray".into(),
                            };
                            if !send(&mut ws, id, subscribed).await
                                || !send(&mut ws, id, ended).await
                            {
                                return;
                            }
                        }
                    }
                    After::StrayReplies => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            if !matches!(cmd, Command::Ping) {
                                continue;
                            }
                            if !send(&mut ws, id, Event::Published { position: None }).await
                                || !send(&mut ws, id, Event::Pong).await
                            {
                                return;
                            }
                        }
                    }
                    After::PingFlood => {
                        let started = Instant::now();
                        while started.elapsed() < Duration::from_secs(20) {
                            let ping = Message::Ping(vec![0u8; 125].into());
                            if ws.send(ping).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok((port, connections))
}

fn config(port: u16) -> ClientConfig {
    ClientConfig::new("https://127.0.0.1:9/v1", token_fixed("t"))
        .with_ws_url(format!("ws://127.0.0.1:{port}"))
        .with_transport(Transport::WebSocket)
}

/// Waits (at most `within`) until the client is not connected; whether it happened.
async fn leaves_connected(client: &Client, within: Duration) -> bool {
    let mut state = client.state();
    tokio::time::timeout(within, async {
        loop {
            if !matches!(
                *state.borrow_and_update(),
                ConnectionState::Connected { .. }
            ) {
                return;
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// The backoff starts over only after a session that lasted: before, every `Welcome` reset it,
/// and a server ending each session at once got 16-20 reconnects a second.
#[tokio::test]
async fn sessions_ended_right_after_welcome_are_retried_with_a_growing_backoff(
) -> anyhow::Result<()> {
    let (port, connections) = hostile(After::Close, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = connections.load(Ordering::SeqCst);
    // 100 ms doubling up to 5 s with full jitter: about 6 attempts in 3 s; without the backoff
    // about 60.
    assert!(n <= 15, "{n} connections in 3 s");
    client.close().await;
    Ok(())
}

/// A server may announce any `max_frame` up to 4 GiB; the client accepts no frame over its own
/// ceiling (1 MiB by default): a 2 MiB publication ends the connection, and is never delivered.
#[tokio::test]
async fn an_announced_max_frame_never_raises_the_clients_ceiling() -> anyhow::Result<()> {
    let (port, _) = hostile(After::BigPublication(2 * 1024 * 1024), u32::MAX).await?;
    let client = Client::connect(config(port)).await?;
    let mut sub = client.subscribe("chat.a").await?;
    assert!(
        leaves_connected(&client, Duration::from_secs(10)).await,
        "the client kept the connection that sent a 2 MiB frame"
    );
    let next = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    if let Ok(Some(quiver_client::SubEvent::Publication { payload, .. })) = next {
        panic!("a {}-byte publication was delivered", payload.len());
    }
    client.close().await;
    Ok(())
}

/// A server that floods pings and reads nothing: the pongs that cannot be written are bounded,
/// and past the bound the connection is replaced (before, they piled up without end, 1 GiB in
/// 12 s, while the pings kept the connection looking alive).
#[tokio::test]
async fn a_ping_flood_that_reads_nothing_ends_the_connection() -> anyhow::Result<()> {
    let (port, _) = hostile(After::PingFlood, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    assert!(
        leaves_connected(&client, Duration::from_secs(20)).await,
        "still connected after 20 s of pings it could not answer"
    );
    client.close().await;
    Ok(())
}

/// A `Refreshed` that leaves the expiry where it was is retried with a backoff of at least a
/// second, not at once (outside audit: 190 `Refresh` a second for as long as the server kept
/// the session).
#[tokio::test]
async fn a_refresh_that_does_not_move_the_expiry_is_not_retried_in_a_loop() -> anyhow::Result<()> {
    let (port, refreshes) = hostile(After::RefreshSame, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    // The first refresh is due 1.5 s in; then 2.5 s of the expiry not moving.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n = refreshes.load(Ordering::SeqCst);
    assert!((1..=5).contains(&n), "{n} refreshes in 4 s");
    client.close().await;
    Ok(())
}

/// A reply of the wrong kind under a waiting command's id leaves that command waiting: before,
/// it was taken and dropped, and the `Ping` failed although its `Pong` came next.
#[tokio::test]
async fn a_reply_of_the_wrong_kind_leaves_the_command_waiting() -> anyhow::Result<()> {
    let (port, _) = hostile(After::StrayReplies, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    client.ping().await?;
    client.close().await;
    Ok(())
}

/// An `Unsubscribed` that answers no `Unsubscribe` of the client's (here under the
/// `Subscribe`'s id) still ends the room for the application, which is told: before, the room
/// just went quiet (outside audit).
#[tokio::test]
async fn an_unsubscribed_under_another_commands_id_is_reported() -> anyhow::Result<()> {
    let (port, _) = hostile(After::StrayUnsubscribed, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let mut sub = client.subscribe("chat.a").await?;
    let next = tokio::time::timeout(Duration::from_secs(5), sub.next()).await?;
    assert!(
        matches!(next, Some(quiver_client::SubEvent::Ended { .. })),
        "{next:?}"
    );
    client.close().await;
    Ok(())
}
