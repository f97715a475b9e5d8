//! The client against a hostile WebSocket server (THREAT-MODEL: "the client libraries must not
//! crash or exhaust memory"; an outside audit of the clients): a server that ends every session
//! right after `Welcome` gets a backed-off reconnect, not a storm; a `max_frame` announced far
//! above the client's own ceiling does not let one frame past it; a server that floods pings
//! and reads nothing makes the client replace the connection, not queue pongs without end; a
//! server whose positions go backwards, or whose replay contradicts its `Recovered`, is not
//! believed (outside audit F6); what a subscription holds for an application that does not
//! read is bounded in bytes, presence events included, and a long replay to one that does is
//! not cut short (outside audit G2, G5).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{command, decode, send, welcome, Ws};
use futures::{SinkExt, StreamExt};
use quiver_client::{
    token_fixed, Client, ClientConfig, ConnectionState, Position, Recovery, SubEvent, Subscription,
    Transport,
};
use quiver_proto::{encode_event, Command, ErrorCode, Event, ServerFrame};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

mod common;

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
    /// Welcomes with a token that expired 100 s ago and answers every `Refresh` with an expiry
    /// a second later than the last, still past, counting the refreshes.
    RefreshPast,
    /// Answers every `Subscribe` with `Subscribed`, then ends the room at once with an
    /// `Unsubscribed` of this code, counting the `Subscribe`s.
    EndsEveryRoom(ErrorCode),
    /// Answers a `Subscribe` with the room's `SubscriptionStream` and 10 MiB of publications
    /// before its `Subscribed` (more than the client holds for a room).
    FloodBeforeSubscribed,
    /// Reads every command and answers none (its WebSocket layer still answers pings): a hung
    /// server. Counts connections.
    Hung,
    /// Answers every `Subscribe` with `Subscribed` carrying the same `latest` subscription id.
    SameSubscriptionId,
    /// Answers each `Ping` with a reply of another kind (`Published`) first, then the `Pong`.
    StrayReplies,
    /// Answers `Subscribe` with `Subscribed`, then ends the room with an `Unsubscribed` under
    /// the `Subscribe`'s id.
    StrayUnsubscribed,
    /// A history room (epoch 1). First session: `Subscribed` at offset 10, publication 11, and
    /// the connection closes at the client's first `Ping`. Later sessions: the resume answered
    /// `Recovered { replayed: 3 }` with `Subscribed` at 20, then only one replayed publication
    /// (12) before a live one (21).
    ShortReplay,
    /// A history room (epoch 1). First session: `Subscribed` at offset 10, then publications
    /// 11, 13, 12 (backwards), 13 (again), 14, one of epoch 2, 9 (before `Subscribed`), and one
    /// without a position (payload "end"); the connection closes at the client's first `Ping`.
    /// Later sessions: `Subscribed` at 14, `Recovered { replayed: 0 }`.
    Backwards,
    /// Answers `Subscribe` with `Subscribed` and the room's `SubscriptionStream`, then sends
    /// `Joined` events whose member's user is [`JOINED_USER`] bytes, at most [`JOINED_MAX`] of
    /// them, until the client's `Unsubscribe` comes ([`Flood`] counts them); `Ping`s are
    /// answered after the flood.
    JoinedFlood,
    /// A history room (epoch 1): a `Subscribe` is answered `Subscribed` at offset
    /// [`REPLAYED`] with `Recovered { replayed: REPLAYED }`, then the replayed publications
    /// 1..=`REPLAYED` (20-byte payloads) in one WebSocket message, then a live one ("live").
    LongReplay,
}

/// The size of a [`After::JoinedFlood`] member's user name: under the client's 1 MiB ceiling.
const JOINED_USER: usize = 512 * 1024;
/// How many `Joined` events [`After::JoinedFlood`] sends at most: 128 MiB of them.
const JOINED_MAX: usize = 256;
/// Publications a resume replays in [`After::LongReplay`] (a room with `history_size` 5,000).
const REPLAYED: u64 = 5_000;

/// What [`After::JoinedFlood`] did.
#[derive(Default)]
struct Flood {
    /// `Joined` events sent before the client's `Unsubscribe` was seen.
    sent: AtomicUsize,
    /// The client's `Unsubscribe` came.
    unsubscribed: std::sync::atomic::AtomicBool,
    /// The flood is over (unsubscribed, or all [`JOINED_MAX`] sent).
    over: std::sync::atomic::AtomicBool,
}

/// A position of epoch 1.
fn at(offset: u64) -> Option<Position> {
    Some(Position { epoch: 1, offset })
}

/// The `Subscribed` and the publications (position, payload) of a history room's session
/// (`ShortReplay`, `Backwards`); `first`: the connection's first session.
fn history_script(after: After, first: bool) -> (Event, Vec<(Option<Position>, &'static str)>) {
    let subscribed = |position, recovery| Event::Subscribed {
        room: "hist.a".into(),
        position,
        recovery,
        subscription: None,
    };
    match (after, first) {
        (After::ShortReplay, true) => (
            subscribed(at(10), Recovery::NotRequested),
            vec![(at(11), "a")],
        ),
        (After::ShortReplay, false) => (
            subscribed(at(20), Recovery::Recovered { replayed: 3 }),
            vec![(at(12), "replayed"), (at(21), "live")],
        ),
        (_, true) => (
            subscribed(at(10), Recovery::NotRequested),
            vec![
                (at(11), "a"),
                (at(13), "b"),
                (at(12), "backwards"),
                (at(13), "repeated"),
                (at(14), "c"),
                (
                    Some(Position {
                        epoch: 2,
                        offset: 99,
                    }),
                    "other epoch",
                ),
                (at(9), "before Subscribed"),
                (None, "end"),
            ],
        ),
        (_, false) => (
            subscribed(at(14), Recovery::Recovered { replayed: 0 }),
            vec![],
        ),
    }
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

/// Answers the `Subscribe` `id` with a [`history_script`]: its `Subscribed`, the room's
/// `SubscriptionStream`, then its publications.
async fn send_script(
    ws: &mut Ws,
    id: u32,
    (subscribed, publications): (Event, Vec<(Option<Position>, &'static str)>),
) -> bool {
    let room = "hist.a".to_owned();
    if !send(ws, id, subscribed).await
        || !send(ws, id, Event::SubscriptionStream { room: room.clone() }).await
    {
        return false;
    }
    for (position, payload) in publications {
        let publication = Event::Publication {
            room: room.clone(),
            position,
            payload: payload.as_bytes().to_vec().into(),
        };
        if !send(ws, 0, publication).await {
            return false;
        }
    }
    true
}

/// [`After::JoinedFlood`] once the client subscribed to `room` (answered).
async fn joined_flood(ws: Ws, room: String, flood: Arc<Flood>) {
    let (mut sink, mut stream) = ws.split();
    // The client's commands, read meanwhile: `Unsubscribe` stops the flood.
    let (pings_tx, mut pings) = tokio::sync::mpsc::unbounded_channel();
    let log = flood.clone();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Binary(data) = msg else { continue };
            let reply = match decode(&data) {
                Some((id, Command::Unsubscribe { room })) => {
                    log.unsubscribed.store(true, Ordering::SeqCst);
                    let ended = Event::Unsubscribed {
                        room,
                        code: 0,
                        reason: "unsubscribed".into(),
                    };
                    (id, ended)
                }
                Some((id, Command::Ping)) => (id, Event::Pong),
                _ => continue,
            };
            if pings_tx.send(reply).is_err() {
                return;
            }
        }
    });
    let frame = |event| Message::Binary(encode_event(&ServerFrame { id: 0, event }));
    for i in 0..JOINED_MAX {
        if flood.unsubscribed.load(Ordering::SeqCst) {
            break;
        }
        let mut user = format!("{i:08}");
        user.extend(std::iter::repeat_n('u', JOINED_USER - user.len()));
        let joined = Event::Joined {
            room: room.clone(),
            member: quiver_proto::Member {
                user,
                session: format!("s{i}"),
            },
        };
        if sink.send(frame(joined)).await.is_err() {
            flood.over.store(true, Ordering::SeqCst);
            return;
        }
        flood.sent.fetch_add(1, Ordering::SeqCst);
    }
    flood.over.store(true, Ordering::SeqCst);
    while let Some((id, event)) = pings.recv().await {
        let reply = Message::Binary(encode_event(&ServerFrame { id, event }));
        if sink.send(reply).await.is_err() {
            return;
        }
    }
}

/// [`After::LongReplay`]'s answer to the `Subscribe` `id`.
async fn long_replay(ws: &mut Ws, id: u32) -> bool {
    let room = "hist.a".to_owned();
    let subscribed = Event::Subscribed {
        room: room.clone(),
        position: at(REPLAYED),
        recovery: Recovery::Recovered {
            replayed: REPLAYED as u32,
        },
        subscription: None,
    };
    if !send(ws, id, subscribed).await
        || !send(ws, id, Event::SubscriptionStream { room: room.clone() }).await
    {
        return false;
    }
    let publication = |offset: u64, payload: String| Event::Publication {
        room: room.clone(),
        position: at(offset),
        payload: payload.into_bytes().into(),
    };
    // One message: the client's reader routes all of them before its delivery task runs.
    let mut message = Vec::new();
    for offset in 1..=REPLAYED {
        let frame = ServerFrame {
            id: 0,
            event: publication(offset, format!("{offset:020}")),
        };
        message.extend_from_slice(&encode_event(&frame));
    }
    ws.send(Message::Binary(message.into())).await.is_ok()
        && send(ws, 0, publication(REPLAYED + 1, "live".into())).await
}

/// Serves the hostile behaviour on a loopback port; the port and a count of connections.
/// (`RefreshSame` counts `Refresh` commands in the same counter.)
async fn hostile(after: After, max_frame: u32) -> anyhow::Result<(u16, Arc<AtomicUsize>)> {
    let (port, connections, _, _) = hostile_logged(after, max_frame).await?;
    Ok((port, connections))
}

/// The `resume` of each `Subscribe` the server got, in order.
type Resumes = Arc<Mutex<Vec<Option<Position>>>>;

/// [`hostile`], also logging every `Subscribe`'s `resume`, and what [`After::JoinedFlood`]
/// did.
async fn hostile_logged(
    after: After,
    max_frame: u32,
) -> anyhow::Result<(u16, Arc<AtomicUsize>, Resumes, Arc<Flood>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let resumes = Resumes::default();
    let log = resumes.clone();
    let flood = Arc::new(Flood::default());
    let flooded = flood.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let index = if matches!(
                after,
                After::RefreshSame | After::RefreshPast | After::EndsEveryRoom(_)
            ) {
                0
            } else {
                count.fetch_add(1, Ordering::SeqCst)
            };
            let refreshes = count.clone();
            let log = log.clone();
            let flood = flooded.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let Some((id, Command::Hello { .. })) = command(&mut ws).await else {
                    return;
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let mut expiry = match after {
                    After::RefreshSame => Some(now + 3),
                    After::RefreshPast => Some(now - 100),
                    _ => None,
                };
                let welcome = welcome(max_frame, 1000, expiry);
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
                    After::RefreshSame | After::RefreshPast => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let reply = match cmd {
                                Command::Refresh { .. } => {
                                    refreshes.fetch_add(1, Ordering::SeqCst);
                                    if matches!(after, After::RefreshPast) {
                                        expiry = expiry.map(|e| e + 1);
                                    }
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
                    After::FloodBeforeSubscribed => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let Command::Subscribe { room, .. } = cmd else {
                                continue;
                            };
                            let stream = Event::SubscriptionStream { room: room.clone() };
                            if !send(&mut ws, id, stream).await {
                                return;
                            }
                            for _ in 0..200 {
                                let publication = Event::Publication {
                                    room: room.clone(),
                                    position: None,
                                    payload: vec![1u8; 50_000].into(),
                                };
                                if !send(&mut ws, 0, publication).await {
                                    return;
                                }
                            }
                            if !send(&mut ws, id, subscribed(&room)).await {
                                return;
                            }
                        }
                    }
                    After::Hung => while command(&mut ws).await.is_some() {},
                    After::SameSubscriptionId => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let Command::Subscribe { room, .. } = cmd else {
                                continue;
                            };
                            let subscribed = Event::Subscribed {
                                room,
                                position: None,
                                recovery: quiver_proto::Recovery::NotRequested,
                                subscription: Some(7),
                            };
                            if !send(&mut ws, id, subscribed).await {
                                return;
                            }
                        }
                    }
                    After::EndsEveryRoom(code) => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let Command::Subscribe { room, .. } = cmd else {
                                continue;
                            };
                            refreshes.fetch_add(1, Ordering::SeqCst);
                            let subscribed = subscribed(&room);
                            let ended = Event::Unsubscribed {
                                room,
                                code: code as u16,
                                reason: "try again".into(),
                            };
                            if !send(&mut ws, id, subscribed).await
                                || !send(&mut ws, 0, ended).await
                            {
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
                    After::ShortReplay | After::Backwards => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let sent = match cmd {
                                Command::Subscribe { resume, .. } => {
                                    log.lock().unwrap().push(resume);
                                    let script = history_script(after, index == 0);
                                    send_script(&mut ws, id, script).await
                                }
                                // The test pings once it has seen the first session's
                                // publications: then the connection goes.
                                Command::Ping => index > 0 && send(&mut ws, id, Event::Pong).await,
                                _ => true,
                            };
                            if !sent {
                                return;
                            }
                        }
                    }
                    After::JoinedFlood => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let Command::Subscribe { room, .. } = cmd else {
                                continue;
                            };
                            let stream = Event::SubscriptionStream { room: room.clone() };
                            if !send(&mut ws, id, subscribed(&room)).await
                                || !send(&mut ws, id, stream).await
                            {
                                return;
                            }
                            joined_flood(ws, room, flood).await;
                            return;
                        }
                    }
                    After::LongReplay => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let sent = match cmd {
                                Command::Subscribe { resume, .. } => {
                                    log.lock().unwrap().push(resume);
                                    long_replay(&mut ws, id).await
                                }
                                Command::Ping => send(&mut ws, id, Event::Pong).await,
                                _ => true,
                            };
                            if !sent {
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
    Ok((port, connections, resumes, flood))
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

/// A `Refreshed` whose expiry moved but is still past is retried with a backoff too (outside
/// client audit 13, F3: 667 `Refresh` commands, each a call of the token provider, in 3 s).
#[tokio::test]
async fn a_refresh_whose_expiry_is_still_past_is_not_retried_in_a_loop() -> anyhow::Result<()> {
    let (port, refreshes) = hostile(After::RefreshPast, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = refreshes.load(Ordering::SeqCst);
    assert!((1..=4).contains(&n), "{n} refreshes in 3 s");
    client.close().await;
    Ok(())
}

/// A server whose session answers nothing while its WebSocket layer still answers pings is
/// hung: the client gives up on it once a `Ping` has gone unanswered for
/// `Heartbeat::unanswered`, and reconnects (outside client audit 14, M1: connected for good).
#[tokio::test]
async fn a_hung_server_is_left() -> anyhow::Result<()> {
    let (port, connections) = hostile(After::Hung, 65_536).await?;
    let mut config = config(port);
    config.heartbeat = Some(quiver_client::Heartbeat {
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(500),
        unanswered: Duration::from_secs(2),
    });
    let client = Client::connect(config).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let n = connections.load(Ordering::SeqCst);
    assert!(n >= 2, "{n} connections in 6 s");
    client.close().await;
    Ok(())
}

/// A server that gives one `latest` subscription id to two rooms (a session never does,
/// PROTOCOL.md §10) loses the connection: one room's datagrams went to the other's
/// subscription (outside client audit 14, L2).
#[tokio::test]
async fn one_subscription_id_for_two_rooms_ends_the_connection() -> anyhow::Result<()> {
    let (port, connections) = hostile(After::SameSubscriptionId, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let _a = client.subscribe("game.a").await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.subscribe("game.b")).await;
    assert!(
        leaves_connected(&client, Duration::from_secs(3)).await,
        "still connected after the id was given twice"
    );
    assert!(connections.load(Ordering::SeqCst) >= 1);
    client.close().await;
    Ok(())
}

/// A room that overflows before its `Subscribed` fails its `subscribe()` with the reason
/// (`slow_consumer`), on a connection that stays up: it said "connection lost" (outside client
/// audit 13, F6).
#[tokio::test]
async fn a_room_that_overflows_before_subscribed_says_why() -> anyhow::Result<()> {
    let (port, _) = hostile(After::FloodBeforeSubscribed, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let refused = tokio::time::timeout(Duration::from_secs(10), client.subscribe("chat.a")).await?;
    assert!(
        matches!(
            refused,
            Err(quiver_client::ClientError::Server { code: 112, .. })
        ),
        "{:?}",
        refused.err()
    );
    client.close().await;
    Ok(())
}

/// A room the server ends every time is subscribed again with a backoff that doubles (outside
/// client audit 13, F4: a fixed 0.2-0.8 s window, 20 `Subscribe`s in 10 s). With the default
/// backoff (100 ms doubling to 5 s, at least half the window, at least 200 ms) the retries in
/// 8 s are at most 7; the fixed window made at least 10.
#[tokio::test]
async fn a_room_ended_every_time_is_subscribed_again_ever_more_slowly() -> anyhow::Result<()> {
    let (port, subscribes) = hostile(After::EndsEveryRoom(ErrorCode::Unavailable), 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let _sub = client.subscribe("chat.a").await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let n = subscribes.load(Ordering::SeqCst);
    assert!((3..=8).contains(&n), "{n} Subscribes in 8 s");
    client.close().await;
    Ok(())
}

/// An unsolicited `Unsubscribed` 113 `session_closing` keeps the subscription: the client
/// subscribes again, as PROTOCOL.md's table says (outside audit 26: the room ended for the
/// application, and `quiver sub` exited). 112 `slow_consumer` still ends it: resubscribing is
/// the application's choice.
#[tokio::test]
async fn a_room_ended_as_session_closing_is_subscribed_again_and_slow_consumer_ends(
) -> anyhow::Result<()> {
    let (port, subscribes) =
        hostile(After::EndsEveryRoom(ErrorCode::SessionClosing), 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let mut sub = client.subscribe("chat.a").await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while subscribes.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        subscribes.load(Ordering::SeqCst) >= 2,
        "not subscribed again"
    );
    // (This server opens no stream, so `Resubscribed` has nothing to come before; what
    // matters is that the subscription did not end.)
    let next = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(next.is_err(), "{next:?}");
    client.close().await;

    let (port, subscribes) = hostile(After::EndsEveryRoom(ErrorCode::SlowConsumer), 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let mut sub = client.subscribe("chat.a").await?;
    let ended = tokio::time::timeout(Duration::from_secs(5), sub.next()).await?;
    assert!(
        matches!(ended, Some(SubEvent::Ended { code: 112, .. })),
        "{ended:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(subscribes.load(Ordering::SeqCst), 1);
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

/// The subscription's events up to and including the publication with payload `last` (at most
/// 10 s).
async fn events_until(sub: &mut Subscription, last: &str) -> anyhow::Result<Vec<SubEvent>> {
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = sub.next().await {
            let done = matches!(&ev, SubEvent::Publication { payload, .. } if payload == last);
            events.push(ev);
            if done {
                return;
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no publication {last:?} within 10 s; got {events:?}"))?;
    Ok(events)
}

/// A publication's position and payload; `None` for other events.
fn publication(ev: &SubEvent) -> Option<(Option<Position>, String)> {
    match ev {
        SubEvent::Publication {
            position, payload, ..
        } => Some((*position, String::from_utf8_lossy(payload).into_owned())),
        _ => None,
    }
}

/// Ends the first session (the server closes at the first `Ping`).
async fn end_first_session(client: &Client) {
    let _ = tokio::time::timeout(Duration::from_secs(5), client.ping()).await;
}

/// A resume answered `Recovered { replayed: 3 }` whose stream has one replayed publication and
/// then a live one: the application is told recovery failed (`Resubscribed { Failed }`, as for
/// a refused resume) before the live one, not left believing nothing was missed (outside audit
/// F6: the client believed the count).
#[tokio::test]
async fn a_replay_shorter_than_announced_is_reported_as_failed_recovery() -> anyhow::Result<()> {
    let (port, _, resumes, _) = hostile_logged(After::ShortReplay, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let mut sub = client.subscribe("hist.a").await?;
    let first = events_until(&mut sub, "a").await?;
    assert_eq!(first.iter().filter_map(publication).count(), 1, "{first:?}");
    end_first_session(&client).await;

    let events = events_until(&mut sub, "live").await?;
    assert_eq!(resumes.lock().unwrap().get(1).copied(), Some(at(11)));
    let expected = vec![
        SubEvent::Resubscribed {
            recovery: Recovery::Recovered { replayed: 3 },
        },
        SubEvent::Publication {
            room: "hist.a".into(),
            position: at(12),
            payload: "replayed".into(),
        },
        SubEvent::Resubscribed {
            recovery: Recovery::Failed,
        },
        SubEvent::Publication {
            room: "hist.a".into(),
            position: at(21),
            payload: "live".into(),
        },
    ];
    assert_eq!(events, expected);
    client.close().await;
    Ok(())
}

/// Publications whose positions go backwards, repeat, change epoch or fall before `Subscribed`
/// are never delivered, and never become the resume point: the next `Subscribe` resumes from
/// the highest position delivered (outside audit F6: they were delivered, and the last one
/// received was resumed from).
#[tokio::test]
async fn positions_that_do_not_move_forward_are_dropped_and_not_resumed_from() -> anyhow::Result<()>
{
    let (port, _, resumes, _) = hostile_logged(After::Backwards, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let mut sub = client.subscribe("hist.a").await?;
    let events = events_until(&mut sub, "end").await?;
    let delivered: Vec<_> = events.iter().filter_map(publication).collect();
    end_first_session(&client).await;
    let resumed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(resume) = resumes.lock().unwrap().get(1).copied() {
                return resume;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let expected = vec![
        (at(11), "a".to_owned()),
        (at(13), "b".to_owned()),
        (at(14), "c".to_owned()),
        (None, "end".to_owned()),
    ];
    assert_eq!((delivered, resumed), (expected, at(14)));
    client.close().await;
    Ok(())
}

/// Most bytes of `Joined` events the client may hold for one WebSocket subscription the
/// application does not read: 8 MiB in the socket reader's share, and the application's queue's
/// `subscription_buffer_bytes` (8 MiB by default), each plus one event; and one event the
/// delivery task holds while it waits.
const HELD_MAX: usize = 16 * 1024 * 1024 + 3 * (JOINED_USER + 1024);

/// A server that floods a subscription with large `Joined` events while the application does
/// not read it: the client holds a bounded number of bytes of them, then ends the subscription
/// itself (`slow_consumer`) and unsubscribes. Before, presence events weighed nothing: about
/// 2,000 of them were held per room, whatever their size (outside audit G2: 2 GB per room).
#[tokio::test]
async fn presence_events_an_application_does_not_read_are_bounded_in_bytes() -> anyhow::Result<()> {
    let (port, _, _, flood) = hostile_logged(After::JoinedFlood, 1024 * 1024).await?;
    let client = Client::connect(config(port)).await?;
    let mut sub = client.subscribe("chat.a").await?;
    // Nothing is read until the flood is over: the client unsubscribed, or all was sent.
    let over = tokio::time::timeout(Duration::from_secs(15), async {
        while !flood.over.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let sent = flood.sent.load(Ordering::SeqCst);
    let unsubscribed = flood.unsubscribed.load(Ordering::SeqCst);
    // Then everything the client held for the application, up to the end.
    let (mut joined, mut held, mut end) = (0, 0, None);
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        match ev {
            SubEvent::Joined { member } => {
                joined += 1;
                held += member.user.len() + member.session.len();
            }
            SubEvent::Ended { code, .. } => {
                end = Some(code);
                break;
            }
            _ => {}
        }
    }
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let what = format!(
        "the server sent {sent} Joined events of 512 KiB ({:.0} MiB; over: {}), the client \
         held {joined} ({:.1} MiB) for the application, then {end:?}",
        mib(sent * JOINED_USER),
        over.is_ok(),
        mib(held)
    );
    eprintln!("{what}");
    assert!(
        unsubscribed,
        "the client never ended the subscription: {what}"
    );
    assert_eq!(end, Some(112), "not ended as slow_consumer: {what}");
    assert!(held <= HELD_MAX, "held more than {HELD_MAX} bytes: {what}");
    client.close().await;
    Ok(())
}

/// A resume that replays 5,000 small publications at once (a room with `history_size` 5,000)
/// to an application that reads is delivered in full: the client's share of the socket is
/// bounded in bytes, not in a count (outside audit G5: the client ended the subscription as a
/// slow consumer after about 1,200).
#[tokio::test]
async fn a_long_replay_to_an_application_that_reads_is_delivered() -> anyhow::Result<()> {
    let (port, _, resumes, _) = hostile_logged(After::LongReplay, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let from = Position {
        epoch: 1,
        offset: 0,
    };
    let mut sub = client.subscribe_from("hist.a", from).await?;
    let events = events_until(&mut sub, "live").await?;
    assert_eq!(resumes.lock().unwrap().first().copied(), Some(Some(from)));
    let ended: Vec<_> = events
        .iter()
        .filter(|ev| matches!(ev, SubEvent::Ended { .. }))
        .collect();
    let positions: Vec<_> = events
        .iter()
        .filter_map(publication)
        .map(|(position, _)| position)
        .collect();
    assert!(
        ended.is_empty(),
        "ended after {} publications: {ended:?}",
        positions.len()
    );
    assert_eq!(
        events.first(),
        Some(&SubEvent::Resubscribed {
            recovery: Recovery::Recovered {
                replayed: REPLAYED as u32
            }
        })
    );
    let expected: Vec<_> = (1..=REPLAYED + 1).map(at).collect();
    assert!(positions == expected, "{} publications", positions.len());
    assert_eq!(events.len(), REPLAYED as usize + 2);
    client.close().await;
    Ok(())
}
