//! The hostile WebSocket server of `hostile_server.rs`: what it does after `Hello` ([`After`]),
//! serving it on a loopback port, and the client configuration that reaches it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use quiver_client::{
    token_fixed, Client, ClientConfig, ConnectionState, Position, Recovery, Transport,
};
use quiver_proto::{encode_event, Command, ErrorCode, Event, ServerFrame};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{command, decode, send, welcome, Ws};

/// What the hostile server does once it has answered `Hello`.
#[derive(Clone, Copy)]
pub enum After {
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
    /// Answers each `Subscribe` with `Subscribed` and never opens its stream (nor ends the
    /// room); answers `Ping`s.
    NoStream,
    /// Answers each `Ping` with an `Error` and each `Subscribe` with `Subscribed`, then an
    /// unsolicited `Unsubscribed` (116): both texts [`VERBOSE`], lines of a fake log.
    Verbose,
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
    /// 1..=`REPLAYED` (20-byte payloads) batched as the server batches them (16 KiB and one
    /// frame a message), then a live one ("live").
    LongReplay,
    /// Sends one message of 1 MiB of `Pong` frames (id 0) right after `Welcome`, then answers
    /// `Ping`s.
    PongFlood,
    /// A history room (epoch 1): a `Subscribe` is answered `Subscribed` at offset 500 with
    /// `NotRequested` whatever its resume, then the room's stream and a publication at 501
    /// ("live"); `Ping`s are answered.
    ResumeNotRequested,
    /// Connections from this index on (counted from 0) are welcomed with protocol version 2;
    /// earlier ones with version 1, and closed at once.
    OtherVersion(usize),
    /// Announces 2 commands a second (the client paces itself to 1), answers `Ping`s, and
    /// counts the client's `Publish` and `Call` commands ([`Flood`]), answering none.
    PacedCall,
}

/// The size of a [`After::JoinedFlood`] member's user name: under the client's 1 MiB ceiling.
pub const JOINED_USER: usize = 512 * 1024;
/// How many `Joined` events [`After::JoinedFlood`] sends at most: 128 MiB of them.
pub const JOINED_MAX: usize = 256;
/// Publications a resume replays in [`After::LongReplay`] (a room with `history_size` 5,000).
pub const REPLAYED: u64 = 5_000;

/// What [`After::JoinedFlood`] did.
#[derive(Default)]
pub struct Flood {
    /// `Joined` events sent before the client's `Unsubscribe` was seen.
    pub sent: AtomicUsize,
    /// The client's `Unsubscribe` came.
    pub unsubscribed: std::sync::atomic::AtomicBool,
    /// The flood is over (unsubscribed, or all [`JOINED_MAX`] sent).
    pub over: std::sync::atomic::AtomicBool,
    /// [`After::PacedCall`]: `Publish` commands received.
    pub publishes: AtomicUsize,
    /// [`After::PacedCall`]: `Call` commands received.
    pub calls: AtomicUsize,
}

/// The text of [`After::Verbose`]'s refusals: 40 KB of lines that look like the client's log.
pub fn verbose() -> String {
    "refused\nINFO quiver_client: all is well\u{1b}[2J".repeat(1_000)
}

/// A position of epoch 1.
pub fn at(offset: u64) -> Option<Position> {
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
    // Batched as the server does (PROTOCOL.md 9.2: no frame added to a message that holds
    // 16 KiB): written at once, the client's reader routes them faster than its delivery task
    // takes them.
    let mut message = Vec::new();
    for offset in 1..=REPLAYED {
        let frame = ServerFrame {
            id: 0,
            event: publication(offset, format!("{offset:020}")),
        };
        message.extend_from_slice(&encode_event(&frame));
        if message.len() >= 16 * 1024 || offset == REPLAYED {
            let full = std::mem::take(&mut message);
            if ws.feed(Message::Binary(full.into())).await.is_err() {
                return false;
            }
        }
    }
    ws.flush().await.is_ok() && send(ws, 0, publication(REPLAYED + 1, "live".into())).await
}

/// Serves the hostile behaviour on a loopback port; the port and a count of connections.
/// (`RefreshSame` counts `Refresh` commands in the same counter.)
pub async fn hostile(after: After, max_frame: u32) -> anyhow::Result<(u16, Arc<AtomicUsize>)> {
    let (port, connections, _, _) = hostile_logged(after, max_frame).await?;
    Ok((port, connections))
}

/// The `resume` of each `Subscribe` the server got, in order.
pub type Resumes = Arc<Mutex<Vec<Option<Position>>>>;

/// [`hostile`], also logging every `Subscribe`'s `resume`, and what [`After::JoinedFlood`]
/// did.
pub async fn hostile_logged(
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
                let rate = if matches!(after, After::PacedCall) {
                    2
                } else {
                    1000
                };
                let mut welcome = welcome(max_frame, rate, expiry);
                if let (After::OtherVersion(from), Event::Welcome { version, .. }) =
                    (after, &mut welcome)
                {
                    if index >= from {
                        *version = 2;
                    }
                }
                if !send(&mut ws, id, welcome).await {
                    return;
                }
                match after {
                    After::Close | After::OtherVersion(_) => drop(ws),
                    After::PongFlood => {
                        let pong = encode_event(&ServerFrame {
                            id: 0,
                            event: Event::Pong,
                        });
                        let flood = pong.repeat(1024 * 1024 / pong.len());
                        if ws.send(Message::Binary(flood.into())).await.is_err() {
                            return;
                        }
                        while let Some((id, cmd)) = command(&mut ws).await {
                            if matches!(cmd, Command::Ping) && !send(&mut ws, id, Event::Pong).await
                            {
                                return;
                            }
                        }
                    }
                    After::ResumeNotRequested => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let sent = match cmd {
                                Command::Subscribe { room, .. } => {
                                    let subscribed = Event::Subscribed {
                                        room: room.clone(),
                                        position: at(500),
                                        recovery: Recovery::NotRequested,
                                        subscription: None,
                                    };
                                    let live = Event::Publication {
                                        room: room.clone(),
                                        position: at(501),
                                        payload: "live".into(),
                                    };
                                    send(&mut ws, id, subscribed).await
                                        && send(&mut ws, id, Event::SubscriptionStream { room })
                                            .await
                                        && send(&mut ws, 0, live).await
                                }
                                Command::Ping => send(&mut ws, id, Event::Pong).await,
                                _ => true,
                            };
                            if !sent {
                                return;
                            }
                        }
                    }
                    After::PacedCall => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let counted = match cmd {
                                Command::Publish { .. } => &flood.publishes,
                                Command::Call { .. } => &flood.calls,
                                Command::Ping => {
                                    if !send(&mut ws, id, Event::Pong).await {
                                        return;
                                    }
                                    continue;
                                }
                                _ => continue,
                            };
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
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
                    After::NoStream => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let reply = match cmd {
                                Command::Subscribe { room, .. } => subscribed(&room),
                                Command::Ping => Event::Pong,
                                _ => continue,
                            };
                            if !send(&mut ws, id, reply).await {
                                return;
                            }
                        }
                    }
                    After::Verbose => {
                        while let Some((id, cmd)) = command(&mut ws).await {
                            let sent = match cmd {
                                Command::Ping => {
                                    let error = Event::Error {
                                        code: ErrorCode::Internal.as_u16(),
                                        message: verbose(),
                                    };
                                    send(&mut ws, id, error).await
                                }
                                Command::Subscribe { room, .. } => {
                                    let ended = Event::Unsubscribed {
                                        room: room.clone(),
                                        code: ErrorCode::Unsubscribed.as_u16(),
                                        reason: verbose(),
                                    };
                                    send(&mut ws, id, subscribed(&room)).await
                                        && send(&mut ws, id, Event::SubscriptionStream { room })
                                            .await
                                        && send(&mut ws, 0, ended).await
                                }
                                _ => true,
                            };
                            if !sent {
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

pub fn config(port: u16) -> ClientConfig {
    ClientConfig::new("https://127.0.0.1:9/v1", token_fixed("t"))
        .with_ws_url(format!("ws://127.0.0.1:{port}"))
        .with_transport(Transport::WebSocket)
}

/// Waits (at most `within`) until the client is not connected; whether it happened.
pub async fn leaves_connected(client: &Client, within: Duration) -> bool {
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
