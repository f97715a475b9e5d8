//! A resume's replay over NATS is read from JetStream a page at a time as the subscription's
//! stream takes it (`server/src/broker/nats/history_read.rs`): it arrives whole and in order
//! with live publications after it, on both kinds of sink; and if history loses part of it
//! before it is read, the subscription ends `unrecoverable_position` after what was sent, never
//! with a gap. `History` pages, which read only about what their frame holds, still page
//! through a room of large publications.

use std::time::Duration;

use quiver_proto::{ErrorCode, Event, Position, Recovery};
use quiver_server::config::NamespaceConfig;
use quiver_tests::nats::{clustered, NatsServer};
use quiver_tests::*;

fn history(size: usize) -> impl Fn(&mut quiver_server::Config) {
    move |c| {
        c.namespaces.push(NamespaceConfig {
            name: "pg".into(),
            history_size: size,
            history_ttl: Duration::from_secs(60),
            presence: false,
            ..Default::default()
        });
        c.limits.commands_per_second = 100_000;
    }
}

async fn start(nats: &NatsServer, size: usize) -> anyhow::Result<TestServer> {
    let server = TestServer::start_with(|c| {
        clustered(nats)(c);
        history(size)(c);
    })
    .await?;
    wait_ready(&server).await?;
    Ok(server)
}

/// Publishes `n` payloads of `size` bytes (each filled with its index) and returns their
/// positions.
async fn fill(publ: &mut Raw, room: &str, n: usize, size: usize) -> anyhow::Result<Vec<Position>> {
    let mut positions = Vec::new();
    for i in 0..n {
        positions.push(publ.published(room, &vec![i as u8; size]).await?);
    }
    Ok(positions)
}

#[tokio::test]
async fn a_long_replay_arrives_whole_in_order_then_live() -> anyhow::Result<()> {
    const N: usize = 120;
    const SIZE: usize = 20_000;
    let nats = NatsServer::start().await?;
    let a = start(&nats, 1000).await?;
    let b = start(&nats, 1000).await?;
    let mut publ = Raw::connect(&a, &full_token("acme", "p")).await?;
    // 2.4 MB: about ten pages.
    let positions = fill(&mut publ, "pg.long", N, SIZE).await?;
    let mut expected: Vec<(Position, Vec<u8>)> = positions
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, vec![i as u8; SIZE]))
        .collect();
    for via in [Via::WebTransport, Via::WebSocket] {
        let mut reader = Raw::connect_via(via, &b, &full_token("acme", "r")).await?;
        let since = Position {
            offset: positions[0].offset - 1,
            ..positions[0]
        };
        let (reply, mut stream) = reader.subscribe_from("pg.long", Some(since)).await?;
        let Event::Subscribed {
            recovery, position, ..
        } = reply
        else {
            anyhow::bail!("{reply:?}");
        };
        assert_eq!(
            recovery,
            Recovery::Recovered {
                replayed: expected.len() as u32
            },
            "{via:?}: the count covers the pages still to read"
        );
        assert_eq!(position, expected.last().map(|(p, _)| *p));
        // A live publication while the replay is read: it comes after it, once.
        let live = publ.published("pg.long", b"live").await?;
        for (i, (at, content)) in expected.iter().enumerate() {
            match stream.next().await?.event {
                Event::Publication {
                    position, payload, ..
                } => {
                    assert_eq!(position, Some(*at), "{via:?}: publication {i}");
                    assert!(
                        &payload[..] == content,
                        "{via:?}: publication {i}'s payload"
                    );
                }
                other => anyhow::bail!("{via:?}: publication {i}: {other:?}"),
            }
        }
        match stream.next().await?.event {
            Event::Publication {
                position, payload, ..
            } => {
                assert_eq!(position, Some(live), "{via:?}: live after the replay");
                assert_eq!(&payload[..], b"live");
            }
            other => anyhow::bail!("{via:?}: {other:?}"),
        }
        expected.push((live, b"live".to_vec()));
        reader.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_replay_cut_under_a_slow_reader_ends_after_what_was_sent() -> anyhow::Result<()> {
    const KEPT: usize = 20;
    const SIZE: usize = 30_000;
    let nats = NatsServer::start().await?;
    let server = start(&nats, KEPT).await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    // 600 KB kept: listed at Subscribe, read about 256 KiB at a time as the stream takes it.
    let positions = fill(&mut publ, "pg.cut", KEPT, SIZE).await?;
    // A reader that gives its stream 1 KiB of credit and reads slowly.
    let mut reader = Raw::with_stream_window(&server, &full_token("acme", "r"), 1024).await?;
    let since = Position {
        offset: positions[0].offset - 1,
        ..positions[0]
    };
    let (reply, mut stream) = reader.subscribe_from("pg.cut", Some(since)).await?;
    assert!(
        matches!(
            reply,
            Event::Subscribed {
                recovery: Recovery::Recovered { replayed },
                ..
            } if replayed as usize == KEPT
        ),
        "{reply:?}"
    );
    // The first publication: the server has read the first page of the replay.
    match stream.next().await?.event {
        Event::Publication { position, .. } => assert_eq!(position, Some(positions[0])),
        other => anyhow::bail!("{other:?}"),
    }
    // Meanwhile the room keeps only its newest KEPT: every publication of the replay is cut.
    fill(&mut publ, "pg.cut", KEPT, 1).await?;
    // The reader reads on: what the server had in hand comes, in order, then the stream ends.
    let mut received = 1;
    let ended = loop {
        let frame = match stream.next().await {
            Ok(frame) => frame,
            Err(e) => break e,
        };
        match frame.event {
            Event::Publication {
                position, payload, ..
            } => {
                assert_eq!(position, Some(positions[received]), "no gap");
                assert!(payload.len() == SIZE && payload[0] == received as u8);
                received += 1;
            }
            other => anyhow::bail!("{other:?}"),
        }
    };
    assert!(
        !ended.to_string().contains("timed out"),
        "the stream ends (reset), it does not just stop: {ended}"
    );
    assert!(
        (2..KEPT).contains(&received),
        "the first page came ({received} publications), and not the cut rest"
    );
    // And the session is told why, with the code to resume by.
    loop {
        let frame = reader.recv().await?;
        if let Event::Unsubscribed { room, code, .. } = frame.event {
            assert_eq!(room, "pg.cut");
            assert_eq!(code, ErrorCode::UnrecoverablePosition.as_u16());
            break;
        }
    }
    // Resuming from the last one received says the rest is gone, as any resume would.
    let resume_from = positions[received - 1];
    let (reply, _stream) = reader.subscribe_from("pg.cut", Some(resume_from)).await?;
    assert!(
        matches!(
            reply,
            Event::Subscribed {
                recovery: Recovery::Failed,
                ..
            }
        ),
        "{reply:?}"
    );
    Ok(())
}

#[tokio::test]
async fn history_pages_of_large_publications_page_through_the_whole_room() -> anyhow::Result<()> {
    const N: usize = 10;
    const SIZE: usize = 30_000;
    let nats = NatsServer::start().await?;
    let server = start(&nats, 1000).await?;
    let mut c = Raw::connect(&server, &full_token("acme", "p")).await?;
    let positions = fill(&mut c, "pg.pages", N, SIZE).await?;
    // Each page reads from JetStream only about what its frame holds (a few of these), and
    // paging on from its last publication reaches every one, in order, once.
    let mut seen = Vec::new();
    let mut since = None;
    loop {
        let page = c
            .request(quiver_proto::Command::History {
                room: "pg.pages".into(),
                since,
                limit: 1000,
            })
            .await?;
        let Event::History {
            publications,
            truncated,
            ..
        } = page
        else {
            anyhow::bail!("{page:?}");
        };
        assert!(!publications.is_empty(), "a page holds at least one");
        assert!(publications.len() < N, "a frame cannot hold them all");
        for item in &publications {
            assert_eq!(item.payload.len(), SIZE);
            assert_eq!(item.payload[0] as usize, seen.len());
            seen.push(item.position);
        }
        since = seen.last().copied();
        if !truncated {
            break;
        }
        anyhow::ensure!(seen.len() < N, "truncated with nothing left");
    }
    assert_eq!(seen, positions);
    Ok(())
}
