//! The embedded broker hands a resume's replay over a page at a time, as NATS does
//! (`server/src/broker/memory/history.rs`): a client that reads it slowly holds a page, not
//! every payload of its replay, and when history evicts part of it before it is read the
//! subscription ends `unrecoverable_position` after what was sent, never with a gap (outside
//! audit 133, F2: a replay held every payload, those history evicted too, until it was read).

use quiver_proto::{ErrorCode, Event, Position, Recovery};
use quiver_tests::*;

#[tokio::test]
async fn a_replay_cut_under_a_slow_reader_ends_after_what_was_sent() -> anyhow::Result<()> {
    const KEPT: usize = 20;
    const SIZE: usize = 30_000;
    let server = TestServer::start_with(|c| {
        add_history_namespace(c, "h", KEPT);
        c.limits.commands_per_second = 100_000;
    })
    .await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    // 600 KB kept, read a page (about 256 KiB) at a time as the stream takes it: nothing at
    // Subscribe, the first page once the replay has its turn (at once: it is the only one).
    let mut positions = Vec::new();
    for i in 0..KEPT {
        positions.push(publ.published("h.cut", &vec![i as u8; SIZE]).await?);
    }
    // A reader that gives its stream 1 KiB of credit and reads slowly.
    let mut reader = Raw::with_stream_window(&server, &full_token("acme", "r"), 1024).await?;
    let since = Position {
        offset: positions[0].offset - 1,
        ..positions[0]
    };
    let (reply, mut stream) = reader.subscribe_from("h.cut", Some(since)).await?;
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
    match stream.next().await?.event {
        Event::Publication { position, .. } => assert_eq!(position, Some(positions[0])),
        other => anyhow::bail!("{other:?}"),
    }
    // Meanwhile the room keeps only its newest KEPT: every publication of the replay is evicted.
    for _ in 0..KEPT {
        publ.published("h.cut", b"x").await?;
    }
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
                anyhow::ensure!(
                    received < KEPT,
                    "the whole replay came though history evicted it while it was read"
                );
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
        "the first page came ({received} publications), and not the evicted rest"
    );
    loop {
        let frame = reader.recv().await?;
        if let Event::Unsubscribed { room, code, .. } = frame.event {
            assert_eq!(room, "h.cut");
            assert_eq!(code, ErrorCode::UnrecoverablePosition.as_u16());
            break;
        }
    }
    // Resuming from the last one received says the rest is gone, as any resume would.
    let (reply, _stream) = reader
        .subscribe_from("h.cut", Some(positions[received - 1]))
        .await?;
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

/// Review 135, R1: the embedded broker read a resume's first page at `Subscribe`, and the
/// subscription held it while the replay waited for one of the session's turns (8 replays at
/// once), so a session that resumed many rooms and read none held a page of each. Now, as
/// over NATS, a replay is read once it has its turn; evicted before then, it ends before its
/// first publication.
#[tokio::test]
async fn a_replay_evicted_before_its_turn_ends_before_its_first_publication() -> anyhow::Result<()>
{
    const KEPT: usize = 20;
    const SIZE: usize = 30_000;
    // The session's turns (`replay::AT_ONCE`).
    const TURNS: usize = 8;
    let server = TestServer::start_with(|c| {
        add_history_namespace(c, "h", KEPT);
        c.limits.commands_per_second = 100_000;
    })
    .await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    // Rooms whose replays take every turn: more than one batch (64 KiB) each, so each holds
    // its turn while its first batch waits for stream credit the reader never gives.
    let mut busy = Vec::new();
    for r in 0..TURNS {
        let room = format!("h.busy{r}");
        let first = publ.published(&room, &vec![r as u8; SIZE]).await?;
        for _ in 1..5 {
            publ.published(&room, &vec![r as u8; SIZE]).await?;
        }
        busy.push((room, first));
    }
    let mut positions = Vec::new();
    for i in 0..KEPT {
        positions.push(publ.published("h.late", &vec![i as u8; SIZE]).await?);
    }
    let mut reader = Raw::with_stream_window(&server, &full_token("acme", "r"), 1024).await?;
    let mut streams = Vec::new();
    for (room, first) in &busy {
        let since = Position {
            offset: first.offset - 1,
            ..*first
        };
        streams.push(reader.subscribe_from(room, Some(since)).await?.1);
    }
    // The ninth replay waits for a turn: counted, nothing read.
    let since = Position {
        offset: positions[0].offset - 1,
        ..positions[0]
    };
    let (reply, mut late) = reader.subscribe_from("h.late", Some(since)).await?;
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
    // Meanwhile the room keeps only its newest KEPT: all of the replay is evicted.
    for _ in 0..KEPT {
        publ.published("h.late", b"x").await?;
    }
    // A turn comes free.
    reader
        .send(quiver_proto::Command::Unsubscribe {
            room: busy[0].0.clone(),
        })
        .await?;
    match late.next().await {
        Ok(frame) => match frame.event {
            Event::Publication { position, .. } => anyhow::bail!(
                "a publication history evicted before the replay's turn came: {position:?}"
            ),
            other => anyhow::bail!("{other:?}"),
        },
        Err(ended) => assert!(
            !ended.to_string().contains("timed out"),
            "the stream ends (reset), it does not just stop: {ended}"
        ),
    }
    loop {
        let frame = reader.recv().await?;
        if let Event::Unsubscribed { room, code, .. } = frame.event {
            if room == "h.late" {
                assert_eq!(code, ErrorCode::UnrecoverablePosition.as_u16());
                break;
            }
        }
    }
    drop(streams);
    Ok(())
}
