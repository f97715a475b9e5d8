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
            ..Default::default()
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
    let (reply, stream) = raw.subscribe_from(room, resume).await?;
    let Event::Subscribed {
        position, recovery, ..
    } = reply
    else {
        anyhow::bail!("subscribe refused");
    };
    Ok((position, recovery, stream))
}

async fn resume_replays_what_was_missed_then_goes_live(via: Via) -> anyhow::Result<()> {
    let server = TestServer::start_with(with_history(100)).await?;
    let mut publ = Raw::connect_via(via, &server, &full_token("acme", "p")).await?;
    for i in 0..3u8 {
        publ.publish("h.room", &[i]).await?;
    }
    let mut sub = Raw::connect_via(via, &server, &full_token("acme", "s")).await?;
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
    sub.close().await;

    // Missed while away: offsets 5..=7. Resume from 4 replays them, then live continues.
    publ.publish("h.room", &[6]).await?;
    publ.publish("h.room", &[7]).await?;
    let mut back = Raw::connect_via(via, &server, &full_token("acme", "s")).await?;
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

async fn resume_says_so_when_history_is_gone(via: Via) -> anyhow::Result<()> {
    let server = TestServer::start_with(with_history(2)).await?;
    let mut c = Raw::connect_via(via, &server, &full_token("acme", "u")).await?;
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

/// Issue 10 defect 7, embedded broker: offsets are per room, so one tenant's positions say
/// nothing about another's traffic; and resuming from any earlier position replays the rest.
#[tokio::test]
async fn positions_are_per_room_and_resume_from_any_of_them() -> anyhow::Result<()> {
    let server = TestServer::start_with(with_history(100)).await?;
    let mut a = Raw::connect(&server, &full_token("tenant-a", "u")).await?;
    let mut b = Raw::connect(&server, &full_token("tenant-b", "u")).await?;
    let a1 = a.published("h.room", b"a1").await?;
    for i in 0..5u8 {
        b.published("h.room", &[i]).await?;
        b.published("h.other", &[i]).await?;
    }
    let a2 = a.published("h.room", b"a2").await?;
    let a3 = a.published("h.room", b"a3").await?;
    assert_eq!([a1.offset, a2.offset, a3.offset], [1, 2, 3]);
    for (since, replayed) in [(0, 3), (1, 2), (2, 1), (3, 0)] {
        let resume = Position {
            offset: since,
            ..a1
        };
        let (_, recovery, _s) = subscribe(&mut a, "h.room", Some(resume)).await?;
        assert_eq!(
            recovery,
            Recovery::Recovered { replayed },
            "resume from {since}"
        );
        a.request(Command::Unsubscribe {
            room: "h.room".into(),
        })
        .await?;
    }
    Ok(())
}

/// Issue 10 defect 8: a tenant flooding history rooms with large payloads is held to its share
/// of `history_max_bytes`, and cannot push out another tenant's history.
#[tokio::test]
async fn history_memory_is_capped_per_tenant_and_in_total() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        with_history(1000)(c);
        c.limits.history_max_bytes = 2 * 1024 * 1024;
        c.limits.history_tenant_max_bytes = 1024 * 1024;
    })
    .await?;
    let big = vec![7u8; 60 * 1024];
    let mut victim = Raw::connect(&server, &full_token("victim", "v")).await?;
    let kept = victim.published("h.notes", &big).await?;
    for _ in 0..4 {
        victim.published("h.notes", &big).await?;
    }
    // Two tenants each publish 60 KiB payloads to 150 rooms (18 MB together), paced under
    // the rate limit; without a cap all of it would stay for history_ttl.
    let mut firsts = Vec::new();
    for tenant in ["flood-1", "flood-2"] {
        let mut flood = Raw::connect(&server, &full_token(tenant, "f")).await?;
        let mut first = None;
        for i in 0..150 {
            let p = flood.published(&format!("h.r{i}"), &big).await?;
            first.get_or_insert(p);
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        firsts.push((flood, first.expect("published")));
    }
    // The flood's oldest history is gone (it went over its share) ...
    for (flood, first) in &mut firsts {
        let since = Position {
            offset: 0,
            ..*first
        };
        let (_, recovery, _s) = subscribe(flood, "h.r0", Some(since)).await?;
        assert_eq!(recovery, Recovery::Failed, "a flood kept all its history");
    }
    // ... and the victim, well within its share, lost nothing.
    let since = Position { offset: 0, ..kept };
    let (_, recovery, _s) = subscribe(&mut victim, "h.notes", Some(since)).await?;
    assert_eq!(recovery, Recovery::Recovered { replayed: 5 });
    Ok(())
}

over_both_transports!(
    resume_replays_what_was_missed_then_goes_live,
    resume_says_so_when_history_is_gone,
);
