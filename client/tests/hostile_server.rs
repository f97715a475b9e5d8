//! The client against a hostile WebSocket server (THREAT-MODEL: "the client libraries must not
//! crash or exhaust memory"; an outside audit of the clients): a server that ends every session
//! right after `Welcome` gets a backed-off reconnect, not a storm; a `max_frame` announced far
//! above the client's own ceiling does not let one frame past it; a server that floods pings
//! and reads nothing makes the client replace the connection, not queue pongs without end; a
//! server whose positions go backwards, or whose replay contradicts its `Recovered`, is not
//! believed (outside audit F6); what a subscription holds for an application that does not
//! read is bounded in bytes, presence events included, and a long replay to one that does is
//! not cut short (outside audit G2, G5). Outside audit 103: a message over 16 KiB and one frame
//! ends the connection (F2), a resume answered `NotRequested` is a failed recovery (F3), a call
//! that gave up before it was written is never sent (F6), a `Welcome` of another protocol
//! version closes the client for good (F9).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hostile_ws::{
    at, config, hostile, hostile_logged, leaves_connected, After, JOINED_USER, REPLAYED,
};
use quiver_client::{
    Client, ClientError, ConnectionState, Position, Recovery, SubEvent, Subscription,
};
use quiver_proto::ErrorCode;

mod common;
mod hostile_ws;

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

/// A heartbeat "disabled" with `Duration::MAX` instead of `None` connects and runs: its
/// durations are bounded. Before, adding one to an `Instant` panicked inside `connect()`
/// (outside audit 115, F12).
#[tokio::test]
async fn heartbeat_durations_past_any_instant_are_bounded() -> anyhow::Result<()> {
    let (port, _) = hostile(After::NoStream, 65_536).await?;
    let mut config = config(port);
    config.heartbeat = Some(quiver_client::Heartbeat {
        interval: Duration::MAX,
        timeout: Duration::MAX,
        unanswered: Duration::MAX,
    });
    let client = Client::connect(config).await?;
    client.ping().await?;
    client.close().await;
    Ok(())
}

/// A room the server confirms and never opens a stream for (nor ends with 114, as it promises
/// within `timeouts.stream_open`) ends the connection `request_timeout` + 5 s after its
/// `Subscribed`, as a broken protocol: the client reconnects and subscribes again. Before, the
/// room stayed silently dead for the session's life (outside audit 115, F11).
#[tokio::test]
async fn a_room_whose_stream_never_comes_ends_the_connection() -> anyhow::Result<()> {
    let (port, _) = hostile(After::NoStream, 65_536).await?;
    let mut config = config(port);
    config.request_timeout = Duration::from_secs(1);
    let client = Client::connect(config).await?;
    let _sub = client.subscribe("chat.a").await?;
    let started = Instant::now();
    let reason = disconnect_reason(&client, Duration::from_secs(10)).await;
    let reason = reason.ok_or_else(|| anyhow::anyhow!("still connected after 10 s"))?;
    assert!(reason.contains("opened no stream"), "{reason}");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(5), "after {took:?}");
    client.close().await;
    Ok(())
}

/// The server's text in an `Error` (40 KB of lines that look like a log) reaches the
/// application's `ClientError` clipped and escaped, and so does an `Unsubscribed`'s reason in
/// `SubEvent::Ended` (outside audit 115, F6).
#[tokio::test]
async fn server_text_in_errors_and_ends_is_clipped() -> anyhow::Result<()> {
    let (port, _) = hostile(After::Verbose, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let shown = |text: &str| {
        assert!(text.chars().count() < 400, "{} characters", text.len());
        assert!(!text.contains(['\n', '\u{1b}']), "{text}");
        assert!(text.starts_with("refused\\nINFO"), "{text}");
    };
    let err = client.ping().await.expect_err("refused");
    assert_eq!(err.error_code(), Some(ErrorCode::Internal), "{err}");
    let quiver_client::ClientError::Server { message, .. } = &err else {
        anyhow::bail!("{err}");
    };
    shown(message);
    shown(&err.to_string().replace("server error internal (100): ", ""));
    let mut sub = client.subscribe("chat.a").await?;
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await? {
        Some(SubEvent::Ended { code: 116, reason }) => shown(&reason),
        other => anyhow::bail!("{other:?}"),
    }
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

/// The reason of the first `Disconnected` the client reports within `within`, if any.
async fn disconnect_reason(client: &Client, within: Duration) -> Option<String> {
    let mut state = client.state();
    tokio::time::timeout(within, async {
        loop {
            if let ConnectionState::Disconnected { reason, .. } = &*state.borrow_and_update() {
                return Some(reason.clone());
            }
            if state.changed().await.is_err() {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// A message over what PROTOCOL.md 9.2 lets a server send (16 KiB and one frame: here, with
/// `max_frame` 64 KiB, 81,924 bytes) ends the connection before any of it is decoded, saying
/// how large it was. Before, a message of up to 16 MiB was decoded whole into a `Vec` of
/// frames (1 MiB of 6-byte `Pong`s: 174,762 frames, each an "unexpected Pong" warning; 16 MiB
/// of them about 500 MB) and the connection went on (outside audit 103, F2).
#[tokio::test]
async fn a_message_over_16_kib_and_one_frame_ends_the_connection() -> anyhow::Result<()> {
    let (port, _) = hostile(After::PongFlood, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let reason = disconnect_reason(&client, Duration::from_secs(5)).await;
    let Some(reason) = reason else {
        anyhow::bail!("still connected 5 s after a 1 MiB message");
    };
    assert!(reason.contains("1048572 bytes"), "{reason}");
    client.close().await;
    Ok(())
}

/// A resume answered `NotRequested` (a server answers a resume `Recovered` or `Failed`,
/// PROTOCOL.md §5) is a failed recovery: `subscribe_from`'s first event says so, before the
/// stream's first publication. Before, the application got no `Resubscribed` at all and
/// silently missed 11..=500 (outside audit 103, F3).
#[tokio::test]
async fn a_resume_answered_not_requested_is_a_failed_recovery() -> anyhow::Result<()> {
    let (port, _) = hostile(After::ResumeNotRequested, 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let from = Position {
        epoch: 1,
        offset: 10,
    };
    let mut sub = client.subscribe_from("hist.a", from).await?;
    let events = events_until(&mut sub, "live").await?;
    let expected = vec![
        SubEvent::Resubscribed {
            recovery: Recovery::Failed,
        },
        SubEvent::Publication {
            room: "hist.a".into(),
            position: at(501),
            payload: "live".into(),
        },
    ];
    assert_eq!(events, expected);
    client.close().await;
    Ok(())
}

/// A `Welcome` of another protocol version closes the client for good, as `Goodbye 3004
/// unsupported_version` does (PROTOCOL.md §8): the first connect fails with it, and a reconnect
/// that meets it ends the client instead of retrying for ever (outside audit 103, F9).
#[tokio::test]
async fn a_welcome_of_another_version_closes_the_client() -> anyhow::Result<()> {
    let (port, connections) = hostile(After::OtherVersion(0), 65_536).await?;
    let refused = Client::connect(config(port)).await;
    assert!(
        matches!(refused, Err(ClientError::Closed { code: 3004, .. })),
        "{refused:?}"
    );

    let (port, connections_later) = hostile(After::OtherVersion(1), 65_536).await?;
    let client = Client::connect(config(port)).await?;
    let mut state = client.state();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while !matches!(*state.borrow_and_update(), ConnectionState::Closed) {
            if state.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "not closed; {} connections",
        connections_later.load(Ordering::SeqCst)
    );
    assert_eq!(client.close_reason().map(|(code, _)| code), Some(3004));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(connections_later.load(Ordering::SeqCst), 2);
    Ok(())
}

/// A `call` that gives up while its frame still waits for the pacer (four publishes ahead of it
/// at one command a second) withdraws it: the server never receives it. Before, it was written
/// seconds after its caller had been told `Timeout`, and the backend ran it then (outside audit
/// 103, F6).
#[tokio::test]
async fn a_call_that_gave_up_before_it_was_written_is_never_sent() -> anyhow::Result<()> {
    let (port, _, _, log) = hostile_logged(After::PacedCall, 65_536).await?;
    let mut config = config(port);
    config.request_timeout = Duration::from_secs(1);
    // No heartbeat `Ping`s taking the pacer's tokens: the publishes' timing is known.
    config.heartbeat = None;
    let client = Client::connect(config).await?;
    for i in 0..4 {
        client.publish("chat.a", format!("p{i}")).await?;
    }
    let called = client.call("charge", "").await;
    assert!(matches!(called, Err(ClientError::Timeout)), "{called:?}");
    // The publishes go out one a second; the call would have followed the last.
    tokio::time::timeout(Duration::from_secs(10), async {
        while log.publishes.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(log.calls.load(Ordering::SeqCst), 0, "the call was sent");
    client.close().await;
    Ok(())
}
