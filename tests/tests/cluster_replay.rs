//! A resume's replay over NATS is read from JetStream a page at a time as the subscription's
//! stream takes it (`server/src/broker/nats/history_read.rs`): it arrives whole and in order
//! with live publications after it, on both kinds of sink; and if history loses part of it
//! before it is read, the subscription ends `unrecoverable_position` after what was sent, never
//! with a gap. `History` pages, which read only about what their frame holds, still page
//! through a room of large publications.

use std::time::Duration;

use quiver_proto::{Command, ErrorCode, Event, Position, Recovery};
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

/// A `History` page or a resume from just before the room's oldest kept publication, while
/// three publishers keep the room cut from the front: each starts at the next publication, or
/// is refused (`unrecoverable_position`, `Failed`), never silently later (outside audit: the
/// room's first publications after the position were cut between the completeness check and
/// the read, and 10 in 150 pages and 1-2 in 40 resumes began after a gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_the_edge_of_a_room_cut_from_the_front_never_skip() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const ROOM: &str = "pg.edge";
    let nats = NatsServer::start().await?;
    let server = start(&nats, 20).await?;
    let stop = Arc::new(AtomicBool::new(false));
    // Milliseconds each publisher waits between publications. A few hundred a second in all
    // at first: the room's front moves every few milliseconds, about as long as a read takes.
    // On a slower machine every read may then be cut; the wait doubles after each ten reads
    // in a row that were not whole, so that some are, while the front still moves.
    let pace = Arc::new(AtomicU64::new(6));
    let mut publishers = Vec::new();
    for p in 0..3 {
        let mut publ = Raw::connect(&server, &full_token("acme", &format!("p{p}"))).await?;
        let (stop, pace) = (stop.clone(), pace.clone());
        publishers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                publ.published(ROOM, &n.to_be_bytes()).await?;
                n += 1;
                let wait = pace.load(Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            anyhow::Ok(n)
        }));
    }
    let mut reader = Raw::connect(&server, &full_token("acme", "r")).await?;
    let (mut whole, mut refused, mut gaps) = (0, 0, Vec::new());
    // The oldest kept publication; under this churn a page of the oldest may be refused
    // (read again five times, cut each time): then the trial is skipped.
    let oldest = |event: Event| match event {
        Event::History { publications, .. } => publications.first().map(|p| p.position),
        Event::Error { code, .. }
            if ErrorCode::from_u16(code) == Some(ErrorCode::UnrecoverablePosition) =>
        {
            None
        }
        other => panic!("history: {other:?}"),
    };
    // At least 120 reads, and more (up to 400) until one was whole.
    let (mut whole_before, mut not_whole_in_a_row) = (0, 0);
    for trial in 0..400 {
        if trial >= 120 && whole > 0 {
            break;
        }
        // The trial before this one was whole, or one more in a row was not.
        if whole > whole_before {
            not_whole_in_a_row = 0;
        } else if trial > 0 {
            not_whole_in_a_row += 1;
        }
        whole_before = whole;
        if not_whole_in_a_row >= 10 {
            not_whole_in_a_row = 0;
            let wait = pace.load(Ordering::Relaxed);
            pace.store((wait * 2).min(200), Ordering::Relaxed);
        }
        let request = Command::History {
            room: ROOM.into(),
            since: None,
            limit: 1,
        };
        let Some(first) = oldest(reader.request(request).await?) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // The stream holds this room only: offsets are consecutive.
        let since = Position {
            epoch: first.epoch,
            offset: first.offset - 1,
        };
        if trial % 3 == 0 {
            let mut resumer = Raw::connect(&server, &full_token("acme", "resume")).await?;
            match resumed_first(&mut resumer, ROOM, since).await? {
                Resumed::First(p) if p.offset == since.offset + 1 => whole += 1,
                Resumed::First(p) => gaps.push(format!("resume from {}: {p:?}", since.offset)),
                Resumed::Refused => refused += 1,
            }
            continue;
        }
        let request = Command::History {
            room: ROOM.into(),
            since: Some(since),
            limit: 100,
        };
        match reader.request(request).await? {
            Event::History { publications, .. } => match publications.first() {
                Some(p) if p.position.offset == since.offset + 1 => whole += 1,
                other => gaps.push(format!(
                    "page after {}: {:?}",
                    since.offset,
                    other.map(|p| p.position)
                )),
            },
            Event::Error { code, .. }
                if ErrorCode::from_u16(code) == Some(ErrorCode::UnrecoverablePosition) =>
            {
                refused += 1
            }
            other => anyhow::bail!("history: {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        publisher.await??;
    }
    eprintln!(
        "[test] edge reads: {whole} whole, {refused} refused, {} gaps; publishers' wait {} ms",
        gaps.len(),
        pace.load(Ordering::Relaxed)
    );
    assert!(gaps.is_empty(), "reads that skipped: {gaps:?}");
    assert!(whole > 0, "no read was whole: the check proves nothing");
    Ok(())
}

/// Resumes from each of `since` and returns what each was answered.
async fn recoveries(
    server: &TestServer,
    room: &str,
    since: &[Position],
) -> anyhow::Result<Vec<Recovery>> {
    let mut answers = Vec::new();
    for at in since {
        let mut reader = Raw::connect(server, &full_token("acme", "r")).await?;
        let (reply, _stream) = reader.subscribe_from(room, Some(*at)).await?;
        let Event::Subscribed { recovery, .. } = reply else {
            anyhow::bail!("{reply:?}");
        };
        answers.push(recovery);
        reader.close().await;
    }
    Ok(answers)
}

/// A namespace's `history_size` raised between starts: the tenant's existing stream takes the
/// new limit, and no resume is answered `Recovered` across what a limit cut, whichever limit
/// the stream has when it is read (outside audit: the stream kept the old, smaller limit and
/// an instance that believed the new one replayed over a gap of 40 acknowledged
/// publications). Another room of the same stream keeps its first sequence low, so only the
/// count limit tells a cut room.
#[tokio::test]
async fn a_changed_history_size_applies_to_the_stream_and_never_hides_a_cut() -> anyhow::Result<()>
{
    let nats = NatsServer::start().await?;
    let mut server = start(&nats, 5).await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    fill(&mut publ, "pg.other", 1, 10).await?;
    publ.close().await;

    let raised = |c: &mut quiver_server::Config| {
        for ns in &mut c.namespaces {
            if ns.name == "pg" {
                ns.history_size = 10;
            }
        }
    };
    server.restart_with(raised).await?;
    wait_ready(&server).await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    let grow = fill(&mut publ, "pg.grow", 13, 10).await?;
    // Kept under the new limit: the last 10 (grow[3..]). From grow[2] nothing is missing;
    // from grow[1], grow[2] is gone.
    assert_eq!(
        recoveries(&server, "pg.grow", &[grow[2], grow[1]]).await?,
        [Recovery::Recovered { replayed: 10 }, Recovery::Failed],
        "the stream kept the old limit of 5"
    );

    // Another instance (or an operator) sets a smaller limit on the stream: this instance,
    // still configured with 10, must not take 3 kept publications for all there are.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let name = format!("QUIVER_{}_{}_{}", "acme".len(), "acme", "pg");
    let mut stream = js.get_stream(&name).await?;
    let mut config = stream.info().await?.config.clone();
    config.max_messages_per_subject = 3;
    js.update_stream(config).await?;
    // Kept now: grow[10..]. From grow[9] whole; from grow[8], grow[9] is gone.
    assert_eq!(
        recoveries(&server, "pg.grow", &[grow[9], grow[8]]).await?,
        [Recovery::Recovered { replayed: 3 }, Recovery::Failed],
        "a resume trusted the configured limit over the stream's"
    );

    // The limit raised again (a restart with 10): the room still keeps the 3 the lower limit
    // left, which no longer proves anything.
    server.restart_with(raised).await?;
    wait_ready(&server).await?;
    assert_eq!(
        recoveries(&server, "pg.grow", &[grow[9], grow[8]]).await?,
        [Recovery::Recovered { replayed: 3 }, Recovery::Failed],
        "a room cut by a lower limit, read under a raised one"
    );
    let mut stream = js.get_stream(&name).await?;
    assert_eq!(stream.info().await?.config.max_messages_per_subject, 10);
    Ok(())
}

/// Whether `e` is a subscription stream reset with `code`'s value.
/// How a resume at the edge of a cut room began.
enum Resumed {
    /// Its first publication's position.
    First(Position),
    /// `Failed`, or `Recovered` and then ended with `unrecoverable_position` before a
    /// publication was read.
    Refused,
}

/// Subscribes to `room` resuming from `since` and reads the first publication, on WebTransport.
/// A replay cut under it ends with an unsolicited `Unsubscribed { 117 }` on the control stream
/// and the stream reset with 117 (PROTOCOL §5): the reset discards what was in flight, the
/// stream's header too, and a stream reset before its header names no session, so the client
/// may never see the stream. The control stream's word counts then.
async fn resumed_first(raw: &mut Raw, room: &str, since: Position) -> anyhow::Result<Resumed> {
    let id = raw
        .send(Command::Subscribe {
            room: room.into(),
            resume: Some(since),
        })
        .await?;
    match raw.recv_reply(id).await? {
        Event::Subscribed {
            recovery: Recovery::Recovered { .. },
            ..
        } => {}
        Event::Subscribed { .. } => return Ok(Resumed::Refused),
        other => anyhow::bail!("subscribe: {other:?}"),
    }
    let conn = raw.conn().clone();
    let first = async move {
        let mut stream = RoomStream::accept(&conn).await?;
        loop {
            match stream.next().await?.event {
                Event::SubscriptionStream { .. } => continue,
                Event::Publication {
                    position: Some(p), ..
                } => return anyhow::Ok(p),
                other => anyhow::bail!("resume: {other:?}"),
            }
        }
    };
    let ended = async {
        loop {
            if let Event::Unsubscribed { code, .. } = raw.recv().await?.event {
                return anyhow::Ok(code);
            }
        }
    };
    tokio::select! {
        first = first => match first {
            Ok(p) => Ok(Resumed::First(p)),
            // Cut while it was read: ended, never a gap.
            Err(e) if reset_with(&e, ErrorCode::UnrecoverablePosition) => Ok(Resumed::Refused),
            Err(e) => Err(e),
        },
        code = ended => match ErrorCode::from_u16(code?) {
            Some(ErrorCode::UnrecoverablePosition) => Ok(Resumed::Refused),
            other => anyhow::bail!("resume ended with {other:?}"),
        },
    }
}

fn reset_with(e: &anyhow::Error, code: ErrorCode) -> bool {
    matches!(
        e.downcast_ref::<wtransport::error::StreamReadError>(),
        Some(wtransport::error::StreamReadError::Reset(c)) if c.into_inner() == u64::from(code.as_u16())
    )
}

/// A drain lets a session finish what it has read before its `Goodbye 3000`: a publisher's
/// burst into a history room, cut by the drain, has every publication answered that was stored
/// and every one stored that was answered, on both transports; what is left unanswered was not
/// carried out (PROTOCOL §7; outside cluster audit 5, F3: the goodbye came at once, 121 of 150
/// unanswered, and the one the broker was storing was stored all the same).
#[tokio::test]
async fn a_drain_answers_every_publication_it_stores() -> anyhow::Result<()> {
    use std::collections::{BTreeSet, HashMap};
    const N: u32 = 300;
    let nats = NatsServer::start().await?;
    let mut reader_server = start(&nats, 10_000).await?;
    let mut reader = Raw::connect(&reader_server, &full_token("acme", "r")).await?;
    for via in [Via::WebTransport, Via::WebSocket] {
        let room = format!("pg.drain-{}", matches!(via, Via::WebSocket));
        // The drain's deadline far from its finish (the tests' servers have 2 s): a session cut
        // off by it ends without the goodbye this test reads.
        let mut server = TestServer::start_with(|c| {
            clustered(&nats)(c);
            history(10_000)(c);
            c.timeouts.drain = std::time::Duration::from_secs(10);
        })
        .await?;
        wait_ready(&server).await?;
        let mut publ = Raw::connect_via(via, &server, &full_token("acme", "p")).await?;
        let mut sent = HashMap::new();
        for i in 0..N {
            let id = publ
                .send(Command::Publish {
                    room: room.clone(),
                    payload: bytes::Bytes::copy_from_slice(&i.to_be_bytes()),
                    ack: true,
                })
                .await?;
            sent.insert(id, i);
        }
        // Each stored publication waits for JetStream's answer, one after another: once the
        // first is answered, most of the burst is still to do when the drain begins.
        let mut answered = BTreeSet::new();
        let first = publ.recv().await?;
        anyhow::ensure!(
            matches!(first.event, Event::Published { .. }),
            "{via:?}: {first:?}"
        );
        answered.insert(sent[&first.id]);
        let stop = tokio::spawn(async move {
            server.stop().await;
            server
        });
        loop {
            let frame = publ.recv().await?;
            match frame.event {
                Event::Published { .. } => {
                    answered.insert(sent[&frame.id]);
                }
                Event::Goodbye { code, .. } => {
                    assert_eq!(code, 3000, "{via:?}");
                    break;
                }
                other => anyhow::bail!("{via:?}: {other:?}"),
            }
        }
        let _server = stop.await?;
        let mut stored = BTreeSet::new();
        for payload in reader.whole_history(&room).await? {
            stored.insert(u32::from_be_bytes(payload[..].try_into()?));
        }
        eprintln!(
            "[test] {via:?}: {} of {N} answered, {} stored",
            answered.len(),
            stored.len()
        );
        assert!(!answered.is_empty(), "{via:?}: nothing answered");
        assert_eq!(stored, answered, "{via:?}: stored and answered differ");
    }
    reader_server.stop().await;
    Ok(())
}
