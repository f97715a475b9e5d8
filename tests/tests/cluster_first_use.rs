//! A tenant's history namespace at its first use on an instance (its JetStream stream set up
//! then), and a room's first publication racing a `History` page (outside audit 21).

use std::time::{Duration, Instant};

use quiver_proto::{Command, Event, Position};
use quiver_server::config::NatsConfig;
use quiver_tests::nats::NatsServer;
use quiver_tests::*;

async fn start(nats: &NatsServer) -> anyhow::Result<TestServer> {
    TestServer::start_with(|c| {
        c.nats = Some(NatsConfig::new(nats.url()));
        add_history_namespace(c, "h", 100);
    })
    .await
}

/// A `Publish` waiting for its stored ack set up the tenant's stream inside its own future,
/// which the session polls only between commands: the `History` or `Subscribe` right behind it
/// waited for that set-up, and both were refused `unavailable` after 3 s (F2).
#[tokio::test]
async fn a_command_behind_the_first_stored_publish_is_not_held_up() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = start(&nats).await?;
    for (tenant, behind) in [
        (
            "first1",
            Command::History {
                room: "h.a".into(),
                since: None,
                limit: 10,
            },
        ),
        (
            "first2",
            Command::Subscribe {
                room: "h.a".into(),
                resume: None,
            },
        ),
    ] {
        let mut raw = Raw::connect(&server, &full_token(tenant, "u")).await?;
        let started = Instant::now();
        let publish = raw
            .send(Command::Publish {
                room: "h.a".into(),
                payload: "one".into(),
                ack: true,
            })
            .await?;
        let next = raw.send(behind).await?;
        // The two replies in either order.
        let (mut published, mut answered) = (None, None);
        while published.is_none() || answered.is_none() {
            let frame = raw.recv().await?;
            if frame.id == publish {
                published = Some(frame.event);
            } else if frame.id == next {
                answered = Some(frame.event);
            }
        }
        let (published, answered) = (published.unwrap(), answered.unwrap());
        assert!(
            matches!(published, Event::Published { position: Some(_) }),
            "{tenant}: {published:?}"
        );
        assert!(
            matches!(answered, Event::History { .. } | Event::Subscribed { .. }),
            "{tenant}: {answered:?}"
        );
        // Not the 3 s of a broker timeout (generous for a loaded machine).
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{tenant}: {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

/// A page of an empty room answered while the room's first publication is stored: its position
/// must not cover a publication the page does not hold, or a client resuming from it never gets
/// that publication (F1: 5-10 rounds in 10 failed before). Each round a fresh room, the
/// `History` and the `Publish` sent at once from two sessions.
#[tokio::test]
async fn an_empty_page_never_covers_a_publication_it_does_not_hold() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = start(&nats).await?;
    let mut reader = Raw::connect(&server, &full_token("acme", "reader")).await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "publisher")).await?;
    // The stream exists before the rounds: the race is the room's, not the set-up's.
    publisher.published("h.warm", b"w").await?;
    for round in 0..20 {
        let room = format!("h.r{round}");
        let (page, stored) = tokio::join!(
            reader.request(Command::History {
                room: room.clone(),
                since: None,
                limit: 10,
            }),
            publisher.published(&room, b"first"),
        );
        let stored: Position = stored?;
        let Event::History {
            position,
            publications,
            ..
        } = page?
        else {
            anyhow::bail!("round {round}: History refused");
        };
        let position = position.expect("history rooms have positions");
        if publications.is_empty() {
            assert!(
                position.epoch != stored.epoch || position.offset < stored.offset,
                "round {round}: an empty page at {position:?} covers the publication at {stored:?}"
            );
        } else {
            assert_eq!(publications[0].position, stored, "round {round}");
        }
    }
    Ok(())
}

/// A publication in an instance's first moments, while its first NATS connection is still
/// pending, waits for it (within the broker's 3 s deadline) instead of being refused
/// `unavailable` (a CI run under load: "NATS is disconnected" for the first publish after
/// start). NATS is frozen (SIGSTOP) while the instance starts, so its connection cannot
/// complete; it is let go half a second after the publications were sent.
#[tokio::test]
async fn publications_while_the_first_nats_connection_is_pending_wait_for_it() -> anyhow::Result<()>
{
    let nats = NatsServer::start().await?;
    nats.pause()?;
    let resumed = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nats.resume()
    };
    let publishing = async {
        let server = start(&nats).await?;
        let mut raw = Raw::connect(&server, &full_token("acme", "early")).await?;
        let live = raw.publish("live", b"x").await?;
        let stored = raw.publish("h.a", b"y").await?;
        anyhow::Ok((live, stored))
    };
    let (published, resumed) = tokio::join!(publishing, resumed);
    resumed?;
    let (live, stored) = published?;
    assert!(matches!(live, Event::Published { .. }), "{live:?}");
    assert!(
        matches!(
            stored,
            Event::Published {
                position: Some(_),
                ..
            }
        ),
        "{stored:?}"
    );
    Ok(())
}
