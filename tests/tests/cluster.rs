//! Several instances over a real nats-server: fan-out across instances, tenant isolation,
//! resume on another instance after a crash, and surviving a NATS restart.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use quiver_client::{token_fn, Client, SubEvent};
use quiver_proto::{Command, Event, Position, Recovery};
use quiver_server::config::{NamespaceConfig, NatsConfig};
use quiver_tests::nats::{clustered, NatsServer};
use quiver_tests::process::QuiverProcess;
use quiver_tests::*;

async fn instances(nats: &NatsServer, n: usize) -> anyhow::Result<Vec<TestServer>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TestServer::start_with(clustered(nats)).await?);
    }
    Ok(out)
}

async fn ready_at(http: std::net::SocketAddr) -> anyhow::Result<u16> {
    Ok(reqwest::get(format!("http://{http}/readyz"))
        .await?
        .status()
        .as_u16())
}

async fn wait_ready(server: &TestServer, want: u16) -> anyhow::Result<()> {
    wait_ready_at(server.http, want).await
}

async fn wait_ready_at(http: std::net::SocketAddr, want: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while ready_at(http).await? != want {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "/readyz never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn publications_cross_instances_in_order() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let servers = instances(&nats, 3).await?;
    for s in &servers {
        wait_ready(s, 200).await?;
    }
    let mut publ = Raw::connect(&servers[0], &full_token("acme", "p")).await?;
    let mut b = Raw::connect(&servers[1], &full_token("acme", "b")).await?;
    let mut c = Raw::connect(&servers[2], &full_token("acme", "c")).await?;
    let mut live_b = b.subscribe("live.room").await?;
    let mut live_c = c.subscribe("live.room").await?;
    let mut hist_b = b.subscribe("h.room").await?;
    let mut hist_c = c.subscribe("h.room").await?;
    // Interest travels through NATS: give the subscriptions a moment to reach it.
    tokio::time::sleep(Duration::from_millis(200)).await;

    for i in 0..50u8 {
        publ.publish("live.room", &[i]).await?;
        publ.publish("h.room", &[i]).await?;
    }
    for stream in [&mut live_b, &mut live_c, &mut hist_b, &mut hist_c] {
        for i in 0..50u8 {
            assert_eq!(stream.payload().await?, Bytes::from(vec![i]));
        }
    }
    Ok(())
}

#[tokio::test]
async fn tenants_stay_apart_across_instances() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let servers = instances(&nats, 2).await?;
    let mut a = Raw::connect(&servers[0], &full_token("tenant-a", "u")).await?;
    let mut b = Raw::connect(&servers[1], &full_token("tenant-b", "u")).await?;
    let mut room_b = b.subscribe("chat").await?;
    let mut room_a = a.subscribe("chat").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.publish("chat", b"a's secret").await?;
    b.publish("chat", b"for b").await?;
    assert_eq!(room_b.payload().await?, Bytes::from_static(b"for b"));
    assert_eq!(room_a.payload().await?, Bytes::from_static(b"a's secret"));
    Ok(())
}

#[tokio::test]
async fn resume_on_another_instance_after_one_is_killed() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("quiver.toml");
    std::fs::write(
        &config,
        "[[namespaces]]\nname = \"h\"\nhistory_size = 10000\nhistory_ttl = \"5m\"\n",
    )?;
    let nats_flag = ["--nats", &nats.url()];
    let mut a = QuiverProcess::start(dir.path(), Some(&config), &nats_flag)?;
    let b = QuiverProcess::start(dir.path(), Some(&config), &nats_flag)?;

    // The client knows both instances and starts on A.
    let mut client_config = quiver_client::ClientConfig::new(
        a.url(),
        token_fn(|| async { Ok(full_token("acme", "reader")) }),
    );
    client_config.urls = vec![a.url(), b.url()];
    // A SIGKILLed server says nothing: the client's heartbeat (and, as a backstop, the QUIC
    // idle timeout) is how it notices.
    client_config.idle_timeout = Duration::from_secs(2);
    client_config.keep_alive = Duration::from_millis(500);
    client_config.trust = quiver_client::Trust::CertHashes(vec![a.hash, b.hash]);
    let client = Client::connect(client_config).await?;
    let mut sub = client.subscribe("h.ticker").await?;

    // A publisher on B publishes a numbered sequence while A dies in the middle.
    let total = 300u32;
    let b_url = b.url();
    let b_hash = b.hash;
    let publisher = tokio::spawn(async move {
        let mut cfg = quiver_client::ClientConfig::new(
            b_url,
            token_fn(|| async { Ok(full_token("acme", "writer")) }),
        );
        cfg.trust = quiver_client::Trust::CertHashes(vec![b_hash]);
        let p = Client::connect(cfg).await?;
        for i in 0..total {
            p.publish_ack("h.ticker", i.to_be_bytes().to_vec()).await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(())
    });

    let mut got: Vec<(u32, Position)> = Vec::new();
    let mut killed = false;
    let mut resumed = None;
    while got.len() < total as usize {
        let event = tokio::time::timeout(WAIT * 3, sub.next())
            .await
            .map_err(|_| anyhow::anyhow!("stalled after {} messages", got.len()))?;
        match event {
            Some(SubEvent::Publication {
                payload, position, ..
            }) => {
                let n = u32::from_be_bytes(payload.as_ref().try_into()?);
                got.push((n, position.ok_or_else(|| anyhow::anyhow!("no position"))?));
                if got.len() == 50 && !killed {
                    a.kill();
                    killed = true;
                }
            }
            Some(SubEvent::Resubscribed { recovery }) => resumed = Some(recovery),
            Some(SubEvent::Joined { .. } | SubEvent::Left { .. }) => {}
            Some(SubEvent::Ended { code, reason }) => anyhow::bail!("ended: {code} {reason}"),
            None => anyhow::bail!("subscription closed"),
        }
    }
    publisher.await??;
    assert!(killed);
    assert!(
        matches!(resumed, Some(Recovery::Recovered { .. })),
        "resumed with {resumed:?}"
    );
    let numbers: Vec<u32> = got.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (0..total).collect::<Vec<_>>(),
        "every message exactly once, in order"
    );
    assert!(
        got.windows(2).all(|w| w[0].1.offset < w[1].1.offset),
        "positions increase"
    );
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn resume_from_a_position_that_left_jetstream_history_fails() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        c.nats = Some(NatsConfig::new(nats.url()));
        c.namespaces.push(NamespaceConfig {
            name: "short".into(),
            history_size: 3,
            history_ttl: Duration::from_secs(60),
            presence: false,
            ..Default::default()
        });
    })
    .await?;
    wait_ready(&server, 200).await?;
    let mut c = Raw::connect(&server, &full_token("acme", "u")).await?;
    let mut positions = Vec::new();
    for i in 0..6u8 {
        match c.publish("short.r", &[i]).await? {
            Event::Published { position: Some(p) } => positions.push(p),
            other => anyhow::bail!("publish: {other:?}"),
        }
    }
    let resume = |p: Position| Command::Subscribe {
        room: "short.r".into(),
        resume: Some(p),
    };
    // Offset of the 1st is long gone (only the last 3 are kept): failed, and says where we are.
    match c.request(resume(positions[0])).await? {
        Event::Subscribed {
            recovery, position, ..
        } => {
            assert_eq!(recovery, Recovery::Failed);
            assert_eq!(position, Some(positions[5]));
        }
        other => anyhow::bail!("{other:?}"),
    }
    c.request(Command::Unsubscribe {
        room: "short.r".into(),
    })
    .await?;
    // From the 4th (still kept), the 5th and 6th are replayed.
    match c.request(resume(positions[3])).await? {
        Event::Subscribed { recovery, .. } => {
            assert_eq!(recovery, Recovery::Recovered { replayed: 2 })
        }
        other => anyhow::bail!("{other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_nats_restart_is_survived_and_reported() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let servers = instances(&nats, 2).await?;
    for s in &servers {
        wait_ready(s, 200).await?;
    }
    let mut publ = Raw::connect(&servers[0], &full_token("acme", "p")).await?;
    let mut sub = Raw::connect(&servers[1], &full_token("acme", "s")).await?;
    let mut room = sub.subscribe("live.x").await?;
    let mut history_room = sub.subscribe("h.z").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publ.publish("live.x", b"before").await?;
    assert_eq!(room.payload().await?, Bytes::from_static(b"before"));
    let mut last = None;
    for i in 0..5u8 {
        if let Event::Published { position } = publ.publish("h.z", &[i]).await? {
            last = position;
        }
        assert_eq!(history_room.payload().await?, Bytes::from(vec![i]));
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("history publications have positions"))?;

    // Traffic keeps flowing into the instance while NATS goes away and comes back.
    let traffic_server = servers[0].wt.port();
    let traffic_hash = servers[0].hash;
    let traffic = tokio::spawn(async move {
        let mut c = Raw::connect_at(traffic_server, traffic_hash, &full_token("acme", "t")).await?;
        for i in 0..400u32 {
            c.send(Command::Publish {
                room: "live.x".into(),
                payload: Bytes::from(i.to_be_bytes().to_vec()),
                ack: false,
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Still answering after all that.
        anyhow::ensure!(matches!(c.request(Command::Ping).await?, Event::Pong));
        anyhow::Ok(())
    });

    nats.kill();
    for s in &servers {
        wait_ready(s, 503).await?;
    }
    // Sessions stay up meanwhile, and publishing to a history room says it can't be stored.
    assert!(matches!(sub.request(Command::Ping).await?, Event::Pong));
    let dropped = |page: &str| {
        metric(
            page,
            "quiver_publications_dropped_total{reason=\"broker_unavailable\"}",
        )
    };
    let dropped_before = dropped(&servers[0].metrics().await?);
    let refused = publ.publish("h.y", b"lost").await?;
    assert!(
        matches!(refused, Event::Error { code, .. } if code == 111),
        "{refused:?}"
    );
    // A live room too (issue 11 §4): an ack means "handed to NATS", and NATS is not there,
    // so it is refused rather than queued and flushed later to whoever resubscribed by then.
    let refused = publ.publish("live.x", b"would be lost").await?;
    assert!(
        matches!(refused, Event::Error { code, .. } if code == 111),
        "a live publish during the outage was answered {refused:?}"
    );
    // Both are counted.
    assert!(dropped(&servers[0].metrics().await?) >= dropped_before + 2.0);

    nats.restart().await?;
    for s in &servers {
        wait_ready(s, 200).await?;
    }
    traffic.await??;
    // NATS (memory storage) lost the history room's stream: its positions start a new epoch
    // (offsets continuing above the old ones). The subscription made across the restart is
    // not fed the new epoch, whose positions do not follow its last (clients drop those): it
    // is ended with 117 unrecoverable_position, and subscribing again, resuming, says recovery
    // failed and goes on in the new epoch (outside failover audit 2, N3).
    let after = match publ.publish("h.z", b"after").await? {
        Event::Published { position: Some(p) } => p,
        other => anyhow::bail!("history publish after the restart: {other:?}"),
    };
    assert!(
        after.offset > last.offset && after.epoch != last.epoch,
        "{after:?} after {last:?}"
    );
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match sub.recv().await?.event {
                Event::Unsubscribed { room, code, .. } if room == "h.z" => return anyhow::Ok(code),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the subscription across the new epoch was not ended"))??;
    assert_eq!(ended, 117);
    assert!(
        history_room.payload().await.is_err(),
        "the old subscription's stream went on"
    );
    let (reply, mut history_room) = sub.subscribe_from("h.z", Some(last)).await?;
    match reply {
        Event::Subscribed {
            recovery, position, ..
        } => {
            assert_eq!(recovery, Recovery::Failed);
            assert_eq!(position, Some(after));
        }
        other => anyhow::bail!("resubscribe: {other:?}"),
    }
    publ.publish("h.z", b"after-2").await?;
    assert_eq!(
        history_room.payload().await?,
        Bytes::from_static(b"after-2")
    );
    // Subscriptions made before the outage receive again once NATS is back (after whatever of
    // the traffic made it through).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publ.publish("live.x", b"after").await?;
        match tokio::time::timeout(Duration::from_millis(500), room.payload()).await {
            Ok(payload) => {
                if payload? == Bytes::from_static(b"after") {
                    break;
                }
            }
            Err(_) => anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no delivery after the NATS restart"
            ),
        }
    }
    Ok(())
}

/// The next event's payload as text, if it is a publication.
async fn next_text(sub: &mut quiver_client::Subscription) -> anyhow::Result<String> {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(SubEvent::Publication { payload, .. })) => {
            Ok(String::from_utf8_lossy(&payload).into_owned())
        }
        other => Err(anyhow::anyhow!("expected a publication, got {other:?}")),
    }
}

/// Outside failover audit 2, N3: the Rust client subscribed to a history room while NATS
/// (memory storage) restarts. The room's history is gone and its positions start a new epoch;
/// the client dropped every later publication as "not moving forward" (no recovery report)
/// until some unrelated reconnect. Now the server ends the subscription (117), the client
/// subscribes again resuming, reports the recovery failed, and delivers what follows.
#[tokio::test]
async fn the_rust_client_hears_recovery_failed_and_goes_on_after_nats_loses_history(
) -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let servers = instances(&nats, 2).await?;
    for s in &servers {
        wait_ready(s, 200).await?;
    }
    let reader = Client::connect(client_config(
        &servers[1],
        token_fn(|| async { Ok(full_token("acme", "reader")) }),
    ))
    .await?;
    let mut sub = reader.subscribe("h.lost").await?;
    let mut publ = Raw::connect(&servers[0], &full_token("acme", "p")).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publ.publish("h.lost", b"before").await?;
    assert_eq!(next_text(&mut sub).await?, "before");

    nats.kill();
    for s in &servers {
        wait_ready(s, 503).await?;
    }
    nats.restart().await?;
    for s in &servers {
        wait_ready(s, 200).await?;
    }
    match publ.publish("h.lost", b"after").await? {
        Event::Published { position: Some(_) } => {}
        other => anyhow::bail!("history publish after the restart: {other:?}"),
    }
    // The resume cannot recover the lost epoch: said so, then the room goes on.
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(SubEvent::Resubscribed { recovery })) => assert_eq!(recovery, Recovery::Failed),
        other => anyhow::bail!("expected a failed recovery, got {other:?}"),
    }
    publ.publish("h.lost", b"after-2").await?;
    assert_eq!(next_text(&mut sub).await?, "after-2");
    Ok(())
}

/// Issue 11 §2: after nats-server restarts on the same (file) storage, history rooms must
/// deliver again soon, and `/readyz` must not say ready before they do. Real processes: the
/// `quiver` binary, configured by a TOML whose `[nats]` table has no `url` (it comes from
/// `--nats`: issue 11 §6), and a real nats-server killed and started again.
#[tokio::test]
async fn history_rooms_deliver_soon_after_nats_restarts() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("quiver.toml");
    std::fs::write(
        &config,
        "[limits]\ncommands_per_second = 5000\n\n[[namespaces]]\nname = \"h\"\nhistory_size = 10000\nhistory_ttl = \"60s\"\n\n[nats]\nstorage = \"file\"\n",
    )?;
    let quiver = QuiverProcess::start(dir.path(), Some(&config), &["--nats", &nats.url()])?;
    let http: std::net::SocketAddr = ([127, 0, 0, 1], quiver.http_port).into();
    wait_ready_at(http, 200).await?;
    let (port, hash) = (quiver.wt_port, quiver.hash);
    let connect = async |user: &str| -> anyhow::Result<Raw> {
        Raw::connect_at(port, hash, &full_token("acme", user)).await
    };
    let mut sub = connect("s").await?;
    let mut room = sub.subscribe("h.restart").await?;
    // Other history rooms with subscribers (each has a consumer to rebuild) and some stored
    // history for the restarted server to load.
    let mut others = Vec::new();
    for i in 0..20 {
        others.push(sub.subscribe(&format!("h.other{i}")).await?);
    }
    let mut loader = connect("l").await?;
    for i in 0..1000u32 {
        loader
            .send(Command::Publish {
                room: format!("h.other{}", i % 20),
                payload: Bytes::from(vec![1u8; 1024]),
                ack: i == 999,
            })
            .await?;
    }
    loader.recv_reply(1001).await?;
    // Every delivery, with when it arrived.
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match room.payload().await {
                Ok(payload) => {
                    if got_tx.send((payload, std::time::Instant::now())).is_err() {
                        break;
                    }
                }
                // A quiet stream is not an ended one (reads are cancel-safe).
                Err(e) if e.to_string().contains("timed out") => {}
                Err(_) => break,
            }
        }
    });
    let mut publ = connect("p").await?;
    assert!(matches!(
        publ.publish("h.restart", b"before").await?,
        Event::Published { .. }
    ));
    let (first, _) = tokio::time::timeout(WAIT, got_rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("subscriber gone"))?;
    assert_eq!(first, Bytes::from_static(b"before"));

    nats.restart().await?;
    let restarted = std::time::Instant::now();
    // The history is on disk: `storage = "file"` from the TOML took effect.
    let stream_dir = nats.store_dir().join("jetstream/$G/streams").join(
        quiver_server::broker::nats::stream_name(&quiver_proto::TenantId::parse("acme")?, "h"),
    );
    anyhow::ensure!(
        stream_dir.is_dir(),
        "no file-stored stream at {stream_dir:?}"
    );
    // Traffic: a numbered publication every 20 ms, acknowledged or refused, until one is
    // acknowledged after the restart; note whether /readyz said ready before it.
    let mut n = 0u32;
    let (acked, ready_before_ack) = loop {
        anyhow::ensure!(
            restarted.elapsed() < WAIT * 3,
            "no publication acknowledged after the restart"
        );
        n += 1;
        let ready_now = ready_at(http).await? == 200;
        match publ.publish("h.restart", &n.to_be_bytes()).await? {
            Event::Published { .. } => break (std::time::Instant::now(), ready_now),
            Event::Error { code: 111, .. } => {}
            other => anyhow::bail!("publish during the restart: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = acked + WAIT * 2;
    let delivered = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (payload, at) = tokio::time::timeout(left, got_rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("publication {n} never delivered"))?
            .ok_or_else(|| anyhow::anyhow!("subscriber gone"))?;
        if payload == Bytes::copy_from_slice(&n.to_be_bytes()) {
            break at;
        }
    };
    let gap = delivered.saturating_duration_since(acked);
    eprintln!(
        "nats restart: first publication acknowledged {:?} after nats-server listened again, \
         delivered {:?} after it (gap {gap:?}); /readyz said ready before that publish: {ready_before_ack}",
        acked - restarted,
        delivered.saturating_duration_since(restarted),
    );
    assert!(
        gap < Duration::from_secs(5),
        "first acknowledged publication after the restart took {gap:?} to be delivered"
    );
    Ok(())
}

/// Issue 10 defect 7: one tenant's positions must say nothing about another tenant's traffic.
#[tokio::test]
async fn positions_reveal_nothing_about_other_tenants() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let servers = instances(&nats, 2).await?;
    for s in &servers {
        wait_ready(s, 200).await?;
    }
    let mut a = Raw::connect(&servers[0], &full_token("tenant-a", "u")).await?;
    let mut b = Raw::connect(&servers[1], &full_token("tenant-b", "u")).await?;
    let a1 = a.published("h.room", b"a1").await?;
    // Tenant B is busy in the same namespace, same room name and others.
    for i in 0..7u8 {
        b.published("h.room", &[i]).await?;
        b.published("h.other", &[i]).await?;
    }
    let a2 = a.published("h.room", b"a2").await?;
    assert_eq!(
        a2.offset - a1.offset,
        1,
        "tenant A's offsets moved by {} while only tenant B published",
        a2.offset - a1.offset
    );
    // And what A sees on subscribing is its own position.
    match a
        .request(Command::Subscribe {
            room: "h.room".into(),
            resume: None,
        })
        .await?
    {
        Event::Subscribed { position, .. } => assert_eq!(position, Some(a2)),
        other => anyhow::bail!("{other:?}"),
    }
    Ok(())
}

/// PROTOCOL §5: resuming from any position P replays everything after P still in history,
/// including a P between two of the room's own offsets.
#[tokio::test]
async fn resume_from_between_a_rooms_offsets_replays_what_followed() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let servers = instances(&nats, 1).await?;
    wait_ready(&servers[0], 200).await?;
    let mut c = Raw::connect(&servers[0], &full_token("acme", "u")).await?;
    // Two rooms of one namespace interleave, so the room's offsets have gaps: x at 1, 3, 5.
    let mut x = Vec::new();
    for i in 0..3u8 {
        x.push(c.published("h.x", &[i]).await?);
        c.published("h.y", &[i]).await?;
    }
    assert!(
        x[1].offset > x[0].offset + 1,
        "offsets {x:?} have no gap to test"
    );
    let mut reader = Raw::connect(&servers[0], &full_token("acme", "r")).await?;
    for (since, expected) in [
        // Between x[0] and x[1]: x[1] and x[2] follow.
        (x[0].offset + 1, vec![1u8, 2]),
        (x[1].offset + 1, vec![2]),
        // Before anything: everything, as nothing was ever trimmed.
        (0, vec![0, 1, 2]),
        // At the end: nothing to replay, and nothing missing.
        (x[2].offset, vec![]),
    ] {
        let id = reader
            .send(Command::Subscribe {
                room: "h.x".into(),
                resume: Some(Position {
                    offset: since,
                    ..x[0]
                }),
            })
            .await?;
        match reader.recv_reply(id).await? {
            Event::Subscribed { recovery, .. } => assert_eq!(
                recovery,
                Recovery::Recovered {
                    replayed: expected.len() as u32
                },
                "resume from {since}"
            ),
            other => anyhow::bail!("resume from {since}: {other:?}"),
        }
        let mut stream = RoomStream::accept(reader.conn()).await?;
        stream.next().await?; // header
        for want in expected {
            assert_eq!(stream.payload().await?, Bytes::from(vec![want]));
        }
        reader
            .request(Command::Unsubscribe { room: "h.x".into() })
            .await?;
    }
    Ok(())
}

/// Issue 11 §2: `/readyz` must not say ready while history rooms cannot deliver, even though
/// the NATS connection itself is up (here: a nats-server without JetStream for a while).
#[tokio::test]
async fn readyz_waits_for_history_delivery_not_just_the_connection() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        let mut n = NatsConfig::new(nats.url());
        n.storage = "file".into();
        c.nats = Some(n);
        c.namespaces.push(NamespaceConfig {
            name: "h".into(),
            history_size: 100,
            history_ttl: Duration::from_secs(60),
            presence: false,
            ..Default::default()
        });
    })
    .await?;
    wait_ready(&server, 200).await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let mut room = sub.subscribe("h.r").await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    publ.published("h.r", b"before").await?;
    assert_eq!(room.payload().await?, Bytes::from_static(b"before"));

    nats.restart_without_jetstream().await?;
    // Connected again: live rooms work...
    let deadline = tokio::time::Instant::now() + WAIT;
    while !matches!(publ.publish("live.x", b"x").await?, Event::Published { .. }) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... but history rooms cannot deliver, and /readyz says so the whole time.
    for _ in 0..20 {
        assert_eq!(
            ready_at(server.http).await?,
            503,
            "/readyz said ready while JetStream was away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    nats.restart().await?;
    wait_ready(&server, 200).await?;
    // Once it says ready, history delivers: the room's consumer was rebuilt.
    publ.published("h.r", b"after").await?;
    assert_eq!(room.payload().await?, Bytes::from_static(b"after"));
    Ok(())
}

/// A nats-server that stops answering with its sockets still open (SIGSTOP: a hung process, a
/// dead path) is noticed within a few seconds, like one that is gone: `/readyz` says 503 and a
/// live publish is refused `unavailable` instead of taken; once it answers again, ready again.
#[tokio::test]
async fn a_frozen_nats_is_noticed_within_seconds() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let servers = instances(&nats, 1).await?;
    let server = &servers[0];
    wait_ready(server, 200).await?;
    let mut publ = Raw::connect(server, &full_token("acme", "p")).await?;
    assert!(matches!(
        publ.publish("live.x", b"before").await?,
        Event::Published { .. }
    ));
    nats.pause()?;
    let frozen = tokio::time::Instant::now();
    let noticed = wait_ready(server, 503).await;
    let took = frozen.elapsed();
    let refused = publ.publish("live.x", b"into the void").await;
    // A history publish is refused at once too, not after its 3 s store wait: it is never
    // handed to a connection that would send it on reconnect, after its `unavailable`.
    let asked = tokio::time::Instant::now();
    let refused_stored = publ.publish("h.frozen", b"not stored").await;
    let answered_in = asked.elapsed();
    nats.resume()?;
    noticed?;
    for refused in [refused?, refused_stored?] {
        assert!(
            matches!(refused, Event::Error { code, .. } if code == 111),
            "{refused:?}"
        );
    }
    assert!(answered_in < Duration::from_millis(2500), "{answered_in:?}");
    // Three ping intervals of 2 s, and the readiness poll: well under async-nats' default 3 min.
    assert!(took < Duration::from_secs(12), "noticed after {took:?}");
    wait_ready(server, 200).await?;
    assert!(matches!(
        publ.publish("live.x", b"after").await?,
        Event::Published { .. }
    ));
    // Nothing refused was stored after all.
    let page = publ
        .request(Command::History {
            room: "h.frozen".into(),
            since: None,
            limit: 10,
        })
        .await?;
    assert!(
        matches!(&page, Event::History { publications, .. } if publications.is_empty()),
        "{page:?}"
    );
    Ok(())
}

/// A session the API ends while its instance is frozen leaves the room's presence when the
/// instance wakes, as its `Left` says, not when the presence TTL (15 s) expires: the refresh
/// overdue at the wake re-put the entries of the sessions being ended (outside cluster audit
/// 3, F3).
#[tokio::test]
async fn a_session_ended_while_its_instance_was_frozen_leaves_presence_when_it_wakes(
) -> anyhow::Result<()> {
    const KEY: &str = "acme-key-0123456789abcdef0123456789ab";
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("quiver.toml");
    std::fs::write(
        &config,
        format!(
            "[[namespaces]]\nname = \"chat\"\npresence = true\n\
             [api]\nkeys = [{{ key = \"{KEY}\", tenant = \"acme\" }}]\n"
        ),
    )?;
    let nats_flag = ["--nats", &nats.url()];
    let a = QuiverProcess::start(dir.path(), Some(&config), &nats_flag)?;
    let b = QuiverProcess::start(dir.path(), Some(&config), &nats_flag)?;
    let mut kicked = Raw::connect_at(b.wt_port, b.hash, &full_token("acme", "kicked")).await?;
    let _room = kicked.subscribe("chat.g").await?;
    let mut stays = Raw::connect_at(b.wt_port, b.hash, &full_token("acme", "stays")).await?;
    let _room2 = stays.subscribe("chat.g").await?;
    let api = reqwest::Client::new();
    let members = || async {
        let answer: serde_json::Value = api
            .post(format!("http://127.0.0.1:{}/api/v1/presence", a.http_port))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"room": "chat.g"}))
            .send()
            .await?
            .json()
            .await?;
        let mut users: Vec<String> = answer["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["user"].as_str().map(str::to_owned))
            .collect();
        users.sort();
        anyhow::Ok(users)
    };
    let deadline = std::time::Instant::now() + WAIT;
    while members().await? != ["kicked", "stays"] {
        anyhow::ensure!(std::time::Instant::now() < deadline, "never both present");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Frozen past a refresh's turn (a third of the 15 s TTL): the disconnect waits for it.
    b.pause()?;
    let answer = api
        .post(format!(
            "http://127.0.0.1:{}/api/v1/disconnect",
            a.http_port
        ))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"user": "kicked"}))
        .send()
        .await?;
    assert_eq!(answer.status(), 200);
    tokio::time::sleep(Duration::from_secs(6)).await;
    b.resume()?;
    let woke = std::time::Instant::now();
    loop {
        if members().await? == ["stays"] {
            break;
        }
        anyhow::ensure!(
            woke.elapsed() < Duration::from_secs(5),
            "still listed {:?} after the wake: {:?}",
            woke.elapsed(),
            members().await?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it stays gone past the next refresh.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(members().await?, ["stays"]);
    Ok(())
}

/// What something other than Quiver publishes on a room's NATS subject (a tenant's backend may,
/// docs/deployment.md) never reaches subscribers as a frame over the `max_frame` their `Welcome`
/// announced: a message larger than `max_payload` is dropped in a live room, and a history
/// room's stream refuses it, so a `History` page is never stuck behind one (outside cluster
/// audit 6, F1: a 200,000-byte frame reached subscribers, and paging answered `[]` +
/// `truncated` for ever).
#[tokio::test]
async fn oversized_messages_on_a_rooms_subject_never_reach_subscribers() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(clustered(&nats)).await?;
    let mut c = Raw::connect(&server, &full_token("acme", "bob")).await?;
    let mut live = c.subscribe("room.x").await?;
    let mut stored = c.subscribe("h.x").await?;
    let outsider = async_nats::connect(nats.url()).await?;
    let big = Bytes::from(vec![b'x'; 200_000]);
    outsider
        .publish("quiver.acme.room.room.x", big.clone())
        .await?;
    outsider.publish("quiver.acme.room.h.x", big).await?;
    outsider
        .publish("quiver.acme.room.room.x", Bytes::from_static(b"after"))
        .await?;
    outsider.flush().await?;
    // The subscription's decoder takes frames up to the announced `max_frame` only.
    assert_eq!(live.payload().await?, &b"after"[..]);
    assert!(matches!(
        c.publish("h.x", b"small").await?,
        Event::Published { .. }
    ));
    assert_eq!(stored.payload().await?, &b"small"[..]);
    match c
        .request(Command::History {
            room: "h.x".into(),
            since: None,
            limit: 100,
        })
        .await?
    {
        Event::History {
            publications,
            truncated,
            ..
        } => {
            assert!(!truncated);
            let payloads: Vec<&[u8]> = publications.iter().map(|p| &p.payload[..]).collect();
            assert_eq!(payloads, [&b"small"[..]]);
        }
        other => anyhow::bail!("expected History, got {other:?}"),
    }

    // A stream made before the limit (here: the limit taken off by hand) gets it from the next
    // instance that uses it, like the other history limits.
    let js = async_nats::jetstream::new(outsider.clone());
    let name = format!("QUIVER_{}_{}_{}", "acme".len(), "acme", "h");
    let mut stream = js.get_stream(&name).await?;
    let mut config = stream.info().await?.config.clone();
    let limit = config.max_message_size;
    assert!(limit > 0, "created without a message size limit");
    config.max_message_size = -1;
    js.update_stream(config).await?;
    let other = TestServer::start_with(clustered(&nats)).await?;
    let mut d = Raw::connect(&other, &full_token("acme", "dan")).await?;
    let _stored = d.subscribe("h.x").await?;
    let mut stream = js.get_stream(&name).await?;
    assert_eq!(stream.info().await?.config.max_message_size, limit);
    Ok(())
}
