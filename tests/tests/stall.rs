//! A broker stall is the server's problem, not the client's (issue 11 §3): a publication that
//! waits on the broker holds up none of the session's other commands, a read that waits on it
//! holds up no `Ping`, and the backlog it leaves is never billed against the client's rate
//! limit.

use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_proto::{Command, ErrorCode, Event};
use quiver_server::config::{NamespaceConfig, NatsConfig};
use quiver_tests::nats::NatsServer;
use quiver_tests::*;

async fn history_server(
    nats: &NatsServer,
    tweak: impl FnOnce(&mut quiver_server::Config),
) -> anyhow::Result<TestServer> {
    let server = TestServer::start_with(|c| {
        tweak(c);
        c.nats = Some(NatsConfig::new(nats.url()));
        c.namespaces.push(NamespaceConfig {
            name: "log".into(),
            history_size: 100,
            history_ttl: Duration::from_secs(60),
            presence: false,
            ..Default::default()
        });
    })
    .await?;
    let deadline = Instant::now() + WAIT;
    while reqwest::get(format!("http://{}/readyz", server.http))
        .await?
        .status()
        != 200
    {
        anyhow::ensure!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(server)
}

/// A client of a history server whose stored publish went through, and then NATS frozen, not
/// gone: the connection looks up, so a stored publish waits for its ack (a NATS known to be
/// down refuses it at once).
async fn frozen_after_a_stored_publish(nats: &NatsServer) -> anyhow::Result<(TestServer, Raw)> {
    let server = history_server(nats, |_| {}).await?;
    let mut c = Raw::connect(&server, &full_token("acme", "u")).await?;
    assert!(matches!(
        c.publish("log.a", b"stored").await?,
        Event::Published { .. }
    ));
    nats.pause()?;
    Ok((server, c))
}

#[tokio::test]
async fn a_stalled_publish_does_not_hold_up_other_commands() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let (_server, mut c) = frozen_after_a_stored_publish(&nats).await?;
    let stored = c
        .send(Command::Publish {
            room: "log.a".into(),
            payload: Bytes::from_static(b"waits"),
            ack: true,
        })
        .await?;
    let ping = c.send(Command::Ping).await?;
    let sub = c
        .send(Command::Subscribe {
            room: "live".into(),
            resume: None,
        })
        .await?;
    // Pong and the subscription come first; the stored publish is answered after.
    let mut order = Vec::new();
    while order.len() < 3 {
        let frame = c.recv().await?;
        if [stored, ping, sub].contains(&frame.id) {
            order.push((frame.id, frame.event));
        }
    }
    assert_eq!(order[0].0, ping, "{order:?}");
    assert!(matches!(order[0].1, Event::Pong));
    nats.resume()?;
    assert_eq!(order[2].0, stored, "{order:?}");
    assert!(
        matches!(order[2].1, Event::Error { code, .. } if code == ErrorCode::Unavailable.as_u16()),
        "{order:?}"
    );
    Ok(())
}

/// A drain does not promise what it stopped waiting for (review 92, F3): a publication still
/// with the broker (NATS frozen, so JetStream's answer is 3 s away) when the drain has waited
/// its first second plus `rpc.max_timeout` (200 ms here) and a quarter second ends the session
/// with the close code 3000 alone. It sent `Goodbye 3000`, which says that every command left
/// unanswered was not carried out, and the client would publish it again, though the broker may
/// yet store it.
#[tokio::test]
async fn a_drain_that_stops_waiting_for_the_broker_promises_nothing() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let mut server = history_server(&nats, |c| {
        c.rpc.timeout = Duration::from_millis(200);
        c.rpc.max_timeout = Duration::from_millis(200);
        c.timeouts.reply = Duration::from_millis(200);
        c.timeouts.drain = Duration::from_secs(20);
    })
    .await?;
    let mut c = Raw::connect(&server, &full_token("acme", "u")).await?;
    assert!(matches!(
        c.publish("log.a", b"stored").await?,
        Event::Published { .. }
    ));
    nats.pause()?;
    let waiting = c
        .send(Command::Publish {
            room: "log.a".into(),
            payload: Bytes::from_static(b"waits"),
            ack: true,
        })
        .await?;
    // It reaches the broker, and waits there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let stop = tokio::spawn(async move {
        server.stop().await;
    });
    let mut frames = Vec::new();
    while let Ok(frame) = c.recv().await {
        frames.push(frame);
    }
    let code = c.close_code().await;
    let took = started.elapsed();
    nats.resume()?;
    stop.await?;
    assert!(
        !frames
            .iter()
            .any(|f| f.id == waiting || matches!(f.event, Event::Goodbye { .. })),
        "{frames:?}"
    );
    assert_eq!(code, Some(3000), "{frames:?}");
    // Before the broker's own answer (3 s): the drain stopped waiting for it.
    assert!(took < Duration::from_millis(2800), "{took:?}");
    Ok(())
}

/// A publisher within its rate (here 20/s against a limit of 25/s) keeps publishing while the
/// broker is away; however the answers bunch up when it returns, none is `rate_limited`.
#[tokio::test]
async fn a_backlog_after_a_stall_is_not_billed_to_the_client() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let server = history_server(&nats, |c| c.limits.commands_per_second = 25).await?;
    let mut c = Raw::connect(&server, &full_token("acme", "u")).await?;
    assert!(matches!(
        c.publish("log.a", b"first").await?,
        Event::Published { .. }
    ));
    nats.kill();
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nats.restart().await.map(|()| nats)
    });
    let n = 80; // 4 s at 20/s, across the outage
    let mut sent = Vec::new();
    for i in 0..n {
        sent.push(
            c.send(Command::Publish {
                room: "log.a".into(),
                payload: Bytes::from(vec![i as u8]),
                ack: true,
            })
            .await?,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _nats = restart.await??;
    let mut limited = 0;
    let mut answered = 0;
    while answered < n {
        let frame = c.recv().await?;
        if !sent.contains(&frame.id) {
            continue;
        }
        answered += 1;
        if let Event::Error { code, .. } = frame.event {
            if code == ErrorCode::RateLimited.as_u16() {
                limited += 1;
            }
        }
    }
    assert_eq!(
        limited, 0,
        "publishes within the rate were refused as rate_limited"
    );
    assert!(matches!(c.request(Command::Ping).await?, Event::Pong));
    Ok(())
}

/// A publication refused after it waited on the broker (`unavailable`) is answered with an
/// `Error` carrying its command's id whether or not it asked for an ack, and whatever its id
/// (0 included): only datagram publications go untold.
#[tokio::test]
async fn a_refusal_after_a_wait_is_answered_for_every_publish_command() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let (_server, mut c) = frozen_after_a_stored_publish(&nats).await?;
    let mut frames = Vec::new();
    for id in [7u32, 0] {
        frames.extend_from_slice(&quiver_proto::encode_command(&quiver_proto::ClientFrame {
            id,
            command: Command::Publish {
                room: "log.a".into(),
                payload: Bytes::from_static(b"waits"),
                ack: false,
            },
        }));
    }
    c.send_bytes(&frames).await?;
    let mut refused = Vec::new();
    while refused.len() < 2 {
        let frame = c.recv().await?;
        match frame.event {
            Event::Error { code, .. } if code == ErrorCode::Unavailable.as_u16() => {
                refused.push(frame.id)
            }
            other => anyhow::bail!("unexpected {other:?} (id {})", frame.id),
        }
    }
    nats.resume()?;
    assert_eq!(refused, vec![7, 0]);
    Ok(())
}

/// Sends `History` of the frozen history room, then `after`, and returns the frames that
/// answer them in the order they came (PROTOCOL §5 "Ping": a `Ping` at the head of the queue
/// while a command waits on the broker is answered beside it).
async fn behind_a_waiting_history(
    c: &mut Raw,
    after: &[Command],
) -> anyhow::Result<Vec<(u32, Event)>> {
    let history = c
        .send(Command::History {
            room: "log.a".into(),
            since: None,
            limit: 10,
        })
        .await?;
    let mut ids = vec![history];
    for command in after {
        ids.push(c.send(command.clone()).await?);
    }
    let mut order = Vec::new();
    while order.len() < ids.len() {
        let frame = c.recv().await?;
        if ids.contains(&frame.id) {
            order.push((frame.id, frame.event));
        }
    }
    Ok(order)
}

/// A heartbeat that judges by `Pong` alone (the TypeScript client in a browser) must not take
/// a session paging history through a NATS stall for a dead one; the session's other commands
/// still run in the order they came. Failed before the inbox: the `Pong` came after the
/// `History`'s `unavailable`, 3 s later.
#[tokio::test]
async fn a_ping_behind_a_history_read_on_a_stalled_broker_is_answered_at_once() -> anyhow::Result<()>
{
    let nats = NatsServer::start().await?;
    let (_server, mut c) = frozen_after_a_stored_publish(&nats).await?;
    let subscribe = Command::Subscribe {
        room: "live".into(),
        resume: None,
    };
    let order =
        behind_a_waiting_history(&mut c, &[Command::Ping, subscribe, Command::Ping]).await?;
    nats.resume()?;
    let events: Vec<&Event> = order.iter().map(|(_, event)| event).collect();
    assert!(matches!(events[0], Event::Pong), "{order:?}");
    assert!(
        matches!(events[1], Event::Error { code, .. } if *code == ErrorCode::Unavailable.as_u16()),
        "{order:?}"
    );
    // The Subscribe was read while the History waited: it runs after it, and the Ping
    // behind it after both.
    assert!(matches!(events[2], Event::Subscribed { .. }), "{order:?}");
    assert!(matches!(events[3], Event::Pong), "{order:?}");
    Ok(())
}

/// A datagram publication at the head of the queue while a command waits stops nothing (outside
/// audit 117, F3): it is no command, so the `Ping` behind it is still answered beside the
/// waiting `History`. Held like a command, it stopped the reading: a client publishing
/// positions by datagram lost its heartbeat whenever a command waited. Of the datagrams read
/// meanwhile the newest runs after the command, an older one is dropped as `superseded`
/// (review 118, F4: dropping them all lost a publisher's last value).
#[tokio::test]
async fn a_datagram_at_the_head_of_the_queue_does_not_hold_up_the_ping_behind_it(
) -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = history_server(&nats, |c| add_latest_namespace(c, "game")).await?;
    let mut c = Raw::connect(&server, &full_token("acme", "u")).await?;
    assert!(matches!(
        c.publish("log.a", b"stored").await?,
        Event::Published { .. }
    ));
    let mut watcher = Raw::connect(&server, &full_token("acme", "w")).await?;
    let (reply, _stream) = watcher.subscribe_from("game.pos", None).await?;
    assert!(matches!(reply, Event::Subscribed { .. }), "{reply:?}");
    let superseded = || async {
        let page = server.metrics().await?;
        anyhow::Ok(metric_sum(
            &page,
            "quiver_datagrams_dropped_total",
            &[("reason", "superseded")],
        ))
    };
    let superseded_before = superseded().await?;
    nats.pause()?;
    let history = c
        .send(Command::History {
            room: "log.a".into(),
            since: None,
            limit: 10,
        })
        .await?;
    // Behind the History, on their way to the session before the Ping.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for payload in [&b"stale"[..], b"newest"] {
        c.conn().send_datagram(
            quiver_proto::datagram::PublishDatagram {
                room: "game.pos",
                payload,
            }
            .encode(),
        )?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ping = c.send(Command::Ping).await?;
    let first = tokio::time::timeout(Duration::from_secs(2), c.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no Pong while the History waited"))??;
    nats.resume()?;
    assert!(
        first.id == ping && matches!(first.event, Event::Pong),
        "{first:?}"
    );
    let reply = c.recv().await?;
    assert_eq!(reply.id, history, "{reply:?}");
    assert!(
        superseded().await? > superseded_before,
        "the older datagram was not dropped as superseded"
    );
    // The newest is published once the History is answered.
    let value = tokio::time::timeout(WAIT, watcher.conn().receive_datagram())
        .await
        .map_err(|_| anyhow::anyhow!("the newest datagram was never published"))??;
    let payload = value.payload();
    let latest = quiver_proto::datagram::Latest::decode(&payload)?;
    assert_eq!(latest.payload, b"newest");
    Ok(())
}

/// The Pings answered beside one waiting command are bounded (four): the rest wait their turn,
/// so a flood of Pings is never answered unmetered.
#[tokio::test]
async fn pings_answered_beside_a_waiting_command_are_bounded() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let (_server, mut c) = frozen_after_a_stored_publish(&nats).await?;
    let order = behind_a_waiting_history(&mut c, &vec![Command::Ping; 10]).await?;
    nats.resume()?;
    let early = order
        .iter()
        .take_while(|(_, event)| matches!(event, Event::Pong))
        .count();
    assert_eq!(early, 4, "{order:?}");
    assert!(
        matches!(order[4].1, Event::Error { code, .. } if code == ErrorCode::Unavailable.as_u16()),
        "{order:?}"
    );
    assert!(order[5..]
        .iter()
        .all(|(_, event)| matches!(event, Event::Pong)));
    Ok(())
}

/// A WebSocket ping frame between the waiting command and a `Ping` (a client whose WebSocket
/// library keeps the connection alive itself) needs no answer: it is taken and metered, and
/// the `Ping` behind it is still answered beside the waiting command.
#[tokio::test]
async fn a_websocket_ping_frame_does_not_hold_up_the_ping_behind_it() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = history_server(&nats, |_| {}).await?;
    let mut c = Raw::connect_via(Via::WebSocket, &server, &full_token("acme", "u")).await?;
    assert!(matches!(
        c.publish("log.a", b"stored").await?,
        Event::Published { .. }
    ));
    nats.pause()?;
    let history = c
        .send(Command::History {
            room: "log.a".into(),
            since: None,
            limit: 10,
        })
        .await?;
    c.ws_ping().await?;
    let ping = c.send(Command::Ping).await?;
    let mut order = Vec::new();
    while order.len() < 2 {
        let frame = c.recv().await?;
        if [history, ping].contains(&frame.id) {
            order.push(frame.id);
        }
    }
    nats.resume()?;
    assert_eq!(order, vec![ping, history]);
    Ok(())
}

/// A publisher that pipelines stored publishes while the broker stalls fills the session's
/// publish queue (64), and the session reads no command until the broker answers: that wait is
/// credited like a handler's (PROTOCOL §5), so what the client sent within the rate meanwhile is
/// not refused when it is read, all at once, afterwards. Failed before (outside delivery audit
/// 2, D2): the credit stayed the unused burst whatever the wait, here about 150 `rate_limited`.
#[tokio::test]
async fn publishes_pipelined_behind_a_full_publish_queue_are_credited_the_wait(
) -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = history_server(&nats, |c| c.limits.commands_per_second = 100).await?;
    let mut c = Raw::connect(&server, &full_token("acme", "u")).await?;
    assert!(matches!(
        c.publish("log.a", b"stored").await?,
        Event::Published { .. }
    ));
    // A full bucket (100) to start from.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    nats.pause()?;
    // 250 at once: the burst covers 100; 2 s of waiting on the broker earn 200 more.
    let mut sent = Vec::new();
    for i in 0..250u32 {
        sent.push(
            c.send(Command::Publish {
                room: "log.a".into(),
                payload: Bytes::from(i.to_be_bytes().to_vec()),
                ack: true,
            })
            .await?,
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.resume()?;
    let (mut published, mut limited) = (0, 0);
    while published + limited < sent.len() {
        let frame = c.recv().await?;
        if !sent.contains(&frame.id) {
            continue;
        }
        match frame.event {
            Event::Published { .. } => published += 1,
            Event::Error { code, .. } if code == ErrorCode::RateLimited.as_u16() => limited += 1,
            other => anyhow::bail!("publish {}: {other:?}", frame.id),
        }
    }
    assert_eq!(limited, 0, "{published} published");
    Ok(())
}

/// A heartbeat through a stall that filled the publish queue: 64 stored publications wait on the
/// frozen broker, the session reads no further command, yet the Pings behind them are answered
/// at once (PROTOCOL §5 "Ping"; outside conformance audit 3, C3-1: the Pong came with the 111s,
/// 2.6 s later).
#[tokio::test]
async fn pings_behind_a_full_publish_queue_are_answered_during_the_stall() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let (_server, mut c) = frozen_after_a_stored_publish(&nats).await?;
    let mut publishes = Vec::new();
    for i in 0..64u32 {
        publishes.push(
            c.send(Command::Publish {
                room: "log.a".into(),
                payload: Bytes::from(i.to_be_bytes().to_vec()),
                ack: true,
            })
            .await?,
        );
    }
    let pings = [c.send(Command::Ping).await?, c.send(Command::Ping).await?];
    let mut pongs = 0;
    let mut before = 0;
    while pongs < pings.len() {
        let frame = c.recv().await?;
        if pings.contains(&frame.id) {
            assert!(matches!(frame.event, Event::Pong), "{:?}", frame.event);
            pongs += 1;
        } else if publishes.contains(&frame.id) {
            before += 1;
        }
    }
    nats.resume()?;
    assert_eq!(before, 0, "publications answered before the Pongs");
    Ok(())
}
