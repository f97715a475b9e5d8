//! Positions, history and resume on one instance (the embedded broker).

use std::time::Duration;

use bytes::Bytes;
use quiver_proto::{Command, Event, Position, Recovery, ServerFrame};
use quiver_server::config::NamespaceConfig;
use quiver_tests::*;

fn with_history(size: usize) -> impl FnOnce(&mut quiver_server::Config) {
    move |c| {
        c.namespaces.push(NamespaceConfig {
            name: "h".into(),
            history_size: size,
            history_ttl: Duration::from_secs(60),
            presence: false,
        })
    }
}

fn publication(frame: ServerFrame) -> (Option<Position>, Bytes) {
    match frame.event {
        Event::Publication {
            position, payload, ..
        } => (position, payload),
        other => panic!("expected a publication, got {other:?}"),
    }
}

async fn subscribe(
    raw: &mut Raw,
    room: &str,
    resume: Option<Position>,
) -> anyhow::Result<(Option<Position>, Recovery, RoomStream)> {
    let id = raw
        .send(Command::Subscribe {
            room: room.into(),
            resume,
        })
        .await?;
    let Event::Subscribed {
        position, recovery, ..
    } = raw.recv_reply(id).await?
    else {
        anyhow::bail!("subscribe refused");
    };
    let mut stream = RoomStream::accept(raw.conn()).await?;
    stream.next().await?; // header
    Ok((position, recovery, stream))
}

#[tokio::test]
async fn resume_replays_what_was_missed_then_goes_live() -> anyhow::Result<()> {
    let server = TestServer::start_with(with_history(100)).await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    for i in 0..3u8 {
        publ.publish("h.room", &[i]).await?;
    }
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let (start, recovery, mut stream) = subscribe(&mut sub, "h.room", None).await?;
    assert_eq!(recovery, Recovery::NotRequested);
    let start = start.expect("history rooms have positions");
    assert_eq!(start.offset, 3);
    publ.publish("h.room", &[3]).await?;
    let (seen, payload) = publication(stream.next().await?);
    assert_eq!(payload, Bytes::from_static(&[3]));
    let seen = seen.expect("position");
    assert_eq!(seen.offset, 4);
    assert!(
        matches!(publ.publish("h.room", &[99]).await?, Event::Published { position: Some(p) } if p.offset == 5)
    );
    drop(stream);
    sub.conn().close(0u32.into(), b"");

    // Missed while away: offsets 5..=7. Resume from 4 replays them, then live continues.
    publ.publish("h.room", &[6]).await?;
    publ.publish("h.room", &[7]).await?;
    let mut back = Raw::connect(&server, &full_token("acme", "s")).await?;
    let (now, recovery, mut stream) = subscribe(&mut back, "h.room", Some(seen)).await?;
    assert_eq!(recovery, Recovery::Recovered { replayed: 3 });
    assert_eq!(now.map(|p| p.offset), Some(7));
    publ.publish("h.room", &[8]).await?;
    let mut offsets = Vec::new();
    for _ in 0..4 {
        offsets.push(
            publication(stream.next().await?)
                .0
                .expect("position")
                .offset,
        );
    }
    assert_eq!(offsets, [5, 6, 7, 8], "no gap, no duplicate at the seam");
    Ok(())
}

#[tokio::test]
async fn resume_says_so_when_history_is_gone() -> anyhow::Result<()> {
    let server = TestServer::start_with(with_history(2)).await?;
    let mut c = Raw::connect(&server, &full_token("acme", "u")).await?;
    let mut first = None;
    for i in 0..5u8 {
        if let Event::Published { position } = c.publish("h.x", &[i]).await? {
            first = first.or(position);
        }
    }
    // Offset 1 was trimmed (only 4 and 5 are kept): recovery fails, and says where we are now.
    let (now, recovery, _s) = subscribe(&mut c, "h.x", first).await?;
    assert_eq!(recovery, Recovery::Failed);
    assert_eq!(now.map(|p| p.offset), Some(5));
    // A live-only room can never recover.
    let (now, recovery, _l) = subscribe(&mut c, "live", first).await?;
    assert_eq!((now, recovery), (None, Recovery::Failed));
    Ok(())
}

#[tokio::test]
async fn a_restart_changes_the_epoch() -> anyhow::Result<()> {
    let mut server = TestServer::start_with(with_history(10)).await?;
    let mut c = Raw::connect(&server, &full_token("acme", "u")).await?;
    let Event::Published {
        position: Some(before),
    } = c.publish("h.r", b"x").await?
    else {
        anyhow::bail!("no position");
    };
    drop(c);
    server.restart().await?;
    let mut c = Raw::connect(&server, &full_token("acme", "u")).await?;
    let (now, recovery, _s) = subscribe(&mut c, "h.r", Some(before)).await?;
    assert_eq!(
        recovery,
        Recovery::Failed,
        "memory history does not survive a restart"
    );
    assert_ne!(now.map(|p| p.epoch), Some(before.epoch));
    Ok(())
}
