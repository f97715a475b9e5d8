//! The publication hot path's bounds and counts (outside audit 120): what a session holds for
//! subscriptions whose streams take nothing stays within twice `limits.session_queue_bytes`
//! (F1), `quiver_deliveries_dropped_total{reason="slow_consumer"}` counts one per subscription
//! ended (F2), and `quiver_delivery_bytes_total` counts the bytes handed to streams once
//! (F3). Also the hot path's order and seams under runs and resumes (the audit's probes that
//! found them sound).
//!
//! The metrics are the process's, shared by every test here (every delivery counts its bytes):
//! each test takes [`METRICS`] in turn.

use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_proto::{Command, ErrorCode, Event, Position, Recovery};
use quiver_tests::*;

static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SLOW: &str = "quiver_deliveries_dropped_total";

async fn slow_consumer_count(server: &TestServer) -> anyhow::Result<f64> {
    Ok(metric_sum(
        &server.metrics().await?,
        SLOW,
        &[("reason", "slow_consumer")],
    ))
}

/// A client with small stream windows reads one publication of each of 32 rooms and then
/// nothing: each room's writer then takes what waits in its queue into its next write batch
/// (up to 64 KiB), which waits for credit that never comes. Those batches stay counted against
/// the session's budget, so the server holds at most twice `session_queue_bytes` beyond what
/// the client's windows take (PROTOCOL.md §5, `delivery_queue.rs`); the batches were given
/// back at the take, and the same session held 11.3 × its budget, no room ended (outside
/// audit 120, F1).
#[tokio::test]
async fn stalled_writers_batches_stay_within_twice_the_session_budget() -> anyhow::Result<()> {
    let _metrics = METRICS.lock().await;
    const BUDGET: usize = 64 * 1024;
    const ROOMS: usize = 32;
    const WINDOW: u32 = 1000;
    const PER_ROOM: usize = 4;
    let server = TestServer::start_with(|c| {
        c.limits.commands_per_second = 1_000_000;
        c.limits.session_queue_bytes = BUDGET;
    })
    .await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "pub")).await?;
    let mut deaf = Raw::with_stream_window(&server, &full_token("acme", "deaf"), WINDOW).await?;
    let mut streams = Vec::new();
    for r in 0..ROOMS {
        streams.push(deaf.subscribe(&format!("stall.r{r}")).await?);
    }
    let payload = Bytes::from(vec![3u8; 8000]);
    let frame = quiver_proto::encode_publication("stall.r10", None, &payload).len();
    // Rooms whose first publication the client read (the others were ended meanwhile).
    let mut read_first = [false; ROOMS];
    for (r, stream) in streams.iter_mut().enumerate() {
        let mut bytes = Vec::new();
        for _ in 0..PER_ROOM {
            bytes.extend(publish_frame(0, &format!("stall.r{r}"), payload.clone()));
        }
        publ.send_bytes(&bytes).await?;
        assert!(matches!(publ.request(Command::Ping).await?, Event::Pong));
        // The writer's first write completes once this is read, and it takes what waits in
        // its queue into its next batch; then the client reads nothing more.
        read_first[r] = tokio::time::timeout(Duration::from_secs(5), stream.payload())
            .await
            .is_ok_and(|read| read.is_ok());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The rooms ended (`slow_consumer`), told on the control stream before the Pong.
    let id = deaf.send(Command::Ping).await?;
    let mut ended = std::collections::HashSet::new();
    loop {
        let f = deaf.recv().await?;
        if let Event::Unsubscribed { room, code, .. } = &f.event {
            assert_eq!(ErrorCode::from_u16(*code), Some(ErrorCode::SlowConsumer));
            ended.insert(room.to_string());
        }
        if f.id == id {
            break;
        }
    }
    // A room still subscribed took all its publications; the client's window holds up to
    // WINDOW bytes of those after the first, the server the rest.
    let alive: Vec<usize> = (0..ROOMS)
        .filter(|r| !ended.contains(&format!("stall.r{r}")))
        .collect();
    for r in &alive {
        assert!(
            read_first[*r],
            "room {r} is subscribed but its first publication never came"
        );
    }
    let held = alive.len() * ((PER_ROOM - 1) * frame - WINDOW as usize);
    eprintln!(
        "budget {BUDGET} B; {} of {ROOMS} stalled rooms still subscribed ({} ended), holding ≈ {held} B = {:.1} × the budget",
        alive.len(),
        ended.len(),
        held as f64 / BUDGET as f64
    );
    assert!(
        held <= 2 * BUDGET,
        "the server holds ≈ {held} B for a session whose budget is {BUDGET} B (bound: twice)"
    );
    assert!(!alive.is_empty(), "the budget's first rooms are kept");
    Ok(())
}

/// Publications `from..from + count` of `room` (each payload 1,000 bytes, its number first), in
/// one write; back once the publisher's session has handed them all to the hub.
async fn publish_numbered(publ: &mut Raw, room: &str, from: u32, count: u32) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    for n in from..from + count {
        bytes.extend(publish_frame(0, room, numbered(n)));
    }
    publ.send_bytes(&bytes).await?;
    assert!(matches!(publ.request(Command::Ping).await?, Event::Pong));
    Ok(())
}

fn numbered(n: u32) -> Bytes {
    let mut payload = vec![0u8; 1000];
    payload[..4].copy_from_slice(&n.to_be_bytes());
    Bytes::from(payload)
}

/// A room the client reads, whose stream's credit ran out for a moment: its writer takes at
/// most the room's share of `session_queue_bytes` (and a frame) into one write
/// (`Receiver::batch_limit`), so the credit the client gives back once it reads takes whole
/// writes, whose bytes leave the session's budget; the room then takes its next publications.
/// Without the cap the writer took all that waited (up to 64 KiB) into one write, which waited
/// for credit for all of it and stayed counted meanwhile: the room's next publications found
/// the budget spent and the room past its share, and it ended `slow_consumer` though the
/// client read it (review 124, R1).
#[tokio::test]
async fn a_room_read_after_its_credit_ran_out_writes_at_most_its_share_at_once(
) -> anyhow::Result<()> {
    const BUDGET: usize = 64 * 1024;
    // The session's queues: each one's share is 2 KiB, three frames a write.
    const ROOMS: usize = 32;
    const WINDOW: usize = 32 * 1024;
    // Waiting in the room's queue once its window is full; read by the client; published after.
    const QUEUED: u32 = 48;
    const READ: u32 = 30;
    const AFTER: u32 = 30;
    let server = TestServer::start_with(|c| {
        c.limits.commands_per_second = 1_000_000;
        c.limits.session_queue_bytes = BUDGET;
    })
    .await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "pub")).await?;
    let mut reader =
        Raw::with_stream_window(&server, &full_token("acme", "reader"), WINDOW as u32).await?;
    let room = "share.r0";
    let mut stream = reader.subscribe(room).await?;
    let mut quiet = Vec::new();
    for r in 1..ROOMS {
        quiet.push(reader.subscribe(&format!("share.r{r}")).await?);
    }
    let frame = quiver_proto::encode_publication(room, None, &numbered(0)).len();
    // What fills the window, and two frames more (in part): the writer takes those two for its
    // first write, which waits for credit.
    let filling = (WINDOW / frame) as u32 + 2;
    publish_numbered(&mut publ, room, 0, filling).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Queued behind that write: about 48 KiB, within the budget while the other rooms are
    // quiet. Uncapped, the writer's next write takes them all.
    publish_numbered(&mut publ, room, filling, QUEUED).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The client reads 30 frames (~30 KiB) and stops: that much credit comes back.
    let recv = stream.recv_stream();
    let mut left = READ as usize * frame;
    let mut buf = vec![0u8; left];
    while left > 0 {
        let n = tokio::time::timeout(WAIT, recv.read(&mut buf[..left]))
            .await??
            .ok_or_else(|| anyhow::anyhow!("{room}'s stream ended"))?;
        left -= n;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Capped, writes of three frames took that credit and gave their bytes back (the room holds
    // about 24 KiB); uncapped, one write of 48 KiB still waits, and these take the room past
    // the budget.
    publish_numbered(&mut publ, room, filling + QUEUED, AFTER).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = reader.send(Command::Ping).await?;
    loop {
        let f = reader.recv().await?;
        if let Event::Unsubscribed { room, code, .. } = &f.event {
            anyhow::bail!(
                "{room} ended ({:?}) though the client reads it: a write waiting for credit \
                 held more than the room's share",
                ErrorCode::from_u16(*code)
            );
        }
        if f.id == id {
            break;
        }
    }
    // The client reads the rest: every publication, in order.
    for n in READ..filling + QUEUED + AFTER {
        let payload = stream.payload().await?;
        assert_eq!(payload[..4], n.to_be_bytes(), "publication {n}");
    }
    Ok(())
}

/// A subscriber that never reads its stream, in a room whose publisher pipelines its
/// publications (a run holds the direct writes, `cork.rs`): each subscription ends once
/// (`Unsubscribed` 112, stream reset 112) and is counted once. A run's flush and the hub's next
/// pass each counted it, 39 and 40 for 20 subscriptions (outside audit 120, F2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_ends_are_counted_once_each() -> anyhow::Result<()> {
    let _metrics = METRICS.lock().await;
    let server = TestServer::start_with(|c| {
        c.limits.commands_per_second = 1_000_000;
        c.limits.subscriber_queue = 4;
    })
    .await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "pub")).await?;
    let mut deaf = Raw::with_stream_window(&server, &full_token("acme", "deaf"), 3000).await?;
    let before = slow_consumer_count(&server).await?;
    let rounds = 20;
    let mut ended = 0;
    let mut streams = Vec::new();
    for round in 0..rounds {
        streams.push(deaf.subscribe("feed").await?);
        // 64 publications in one write: they queue up in the publisher's inbox (runs of 16).
        let mut bytes = Vec::new();
        for i in 0..64u32 {
            let mut p = vec![0u8; 700];
            p[..4].copy_from_slice(&(round * 1000 + i).to_be_bytes());
            bytes.extend(publish_frame(0, "feed", p));
        }
        publ.send_bytes(&bytes).await?;
        assert!(matches!(publ.request(Command::Ping).await?, Event::Pong));
        loop {
            let frame = deaf.recv().await?;
            if let Event::Unsubscribed { code, .. } = frame.event {
                assert_eq!(ErrorCode::from_u16(code), Some(ErrorCode::SlowConsumer));
                ended += 1;
                break;
            }
        }
    }
    for s in &mut streams {
        let end = s.drain().await?;
        assert!(
            matches!(end, Err(wtransport::error::StreamReadError::Reset(code)) if code.into_inner() == 112),
            "{end:?}"
        );
    }
    // More publications find no subscriber left to count again.
    for _ in 0..8 {
        publ.send_bytes(&publish_frame(0, "feed", vec![1u8; 700]))
            .await?;
    }
    assert!(matches!(publ.request(Command::Ping).await?, Event::Pong));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted = slow_consumer_count(&server).await? - before;
    assert_eq!(counted, f64::from(ended), "one per subscription ended");
    Ok(())
}

/// A subscription whose stream takes nothing for `timeouts.reply` while frames wait ends as a
/// slow consumer (`subscription::Stall`), and is counted like any other: it was counted nowhere
/// (outside audit 120, F2).
#[tokio::test]
async fn a_stall_deadline_end_is_counted() -> anyhow::Result<()> {
    let _metrics = METRICS.lock().await;
    let server = TestServer::start_with(|c| c.timeouts.reply = Duration::from_secs(1)).await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "pub")).await?;
    let mut parked = Raw::with_stream_window(&server, &full_token("acme", "parked"), 1024).await?;
    let _stream = parked.subscribe("quiet").await?;
    let before = slow_consumer_count(&server).await?;
    // Three publications: more than the window, far less than the queue or the budget.
    for _ in 0..3 {
        publ.send_bytes(&publish_frame(0, "quiet", vec![7u8; 1000]))
            .await?;
    }
    let started = Instant::now();
    let code = loop {
        if let Event::Unsubscribed { code, .. } = parked.recv().await?.event {
            break code;
        }
    };
    assert_eq!(ErrorCode::from_u16(code), Some(ErrorCode::SlowConsumer));
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(slow_consumer_count(&server).await? - before, 1.0);
    Ok(())
}

/// `quiver_delivery_bytes_total` ("bytes handed to subscribers' streams") against the bytes one
/// subscriber got: a reader with a roomy stream window, then one whose small window makes a
/// run's held frames spill to its writer, then publications one at a time through the backend
/// API (no run) into a small window, so that the hub's direct write takes part of a frame. The
/// spilled frames were counted when held and again when the writer wrote them (18 % over), and
/// the part of a frame a stream took at once was counted nowhere (outside audit 120, F3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_bytes_count_what_the_streams_took_once() -> anyhow::Result<()> {
    let _metrics = METRICS.lock().await;
    let server = TestServer::start_with(|c| c.limits.commands_per_second = 1_000_000).await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "pub")).await?;
    const N: usize = 64;
    let payload = Bytes::from(vec![5u8; 700]);
    let frame_len = quiver_proto::encode_publication("feed", None, &payload).len();
    let http = reqwest::Client::new();
    for (window, one_at_a_time) in [(10_000_000u32, false), (3000, false), (1000, true)] {
        let mut sub = Raw::with_stream_window(&server, &full_token("acme", "sub"), window).await?;
        let name = "quiver_delivery_bytes_total";
        let before = metric_sum(&server.metrics().await?, name, &[]);
        let id_before = sub.send(Command::Ping).await?;
        let _ = sub.recv_reply(id_before).await?;
        let mut stream = sub.subscribe("feed").await?;
        let header = quiver_proto::encode_event(&quiver_proto::ServerFrame {
            id: id_before + 1,
            event: Event::SubscriptionStream {
                room: "feed".into(),
            },
        })
        .len();
        if one_at_a_time {
            // Nothing read meanwhile: the second frame finds room for part of it only.
            for _ in 0..N {
                let posted = http
                    .post(format!("http://{}/api/v1/publish/feed", server.http))
                    .bearer_auth(full_token("acme", "api"))
                    .body(payload.clone())
                    .send()
                    .await?;
                assert_eq!(posted.status().as_u16(), 200);
            }
        } else {
            let mut bytes = Vec::new();
            for _ in 0..N {
                bytes.extend(publish_frame(0, "feed", payload.clone()));
            }
            publ.send_bytes(&bytes).await?;
            assert!(matches!(publ.request(Command::Ping).await?, Event::Pong));
        }
        for _ in 0..N {
            stream.payload().await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let counted = metric_sum(&server.metrics().await?, name, &[]) - before;
        assert_eq!(
            counted,
            (header + N * frame_len) as f64,
            "window {window}: the metric against the bytes sent"
        );
        sub.request(Command::Unsubscribe {
            room: "feed".into(),
        })
        .await?;
        sub.close().await;
    }
    Ok(())
}

fn offset_of(event: &Event) -> Option<(u64, Bytes)> {
    match event {
        Event::Publication {
            position: Some(p),
            payload,
            ..
        } => Some((p.offset, payload.clone())),
        _ => None,
    }
}

/// Subscribe, read a few, unsubscribe, resubscribe resuming from the last position seen, while
/// a publisher keeps publishing: offsets come 1, 2, 3, … with no gap and no duplicate (the
/// writer skips, and gives back to the budget, what the replay covered).
async fn resume_churn(via: Via) -> anyhow::Result<()> {
    let _metrics = METRICS.lock().await;
    const N: u64 = 400;
    let server = TestServer::start_with(|c| {
        c.limits.commands_per_second = 100_000;
        add_history_namespace(c, "h", 10_000);
    })
    .await?;
    let mut publ = Raw::connect_via(via, &server, &full_token("acme", "pub")).await?;
    let mut sub = Raw::connect_via(via, &server, &full_token("acme", "sub")).await?;
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            let p = publ.published("h.churn", &i.to_be_bytes()).await?;
            anyhow::ensure!(p.offset == i, "publish {i} got offset {}", p.offset);
            if i % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        anyhow::Ok(())
    });
    let mut last: Option<Position> = None;
    let mut cycles = 0;
    let mut rng = 17u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while last.map_or(0, |p| p.offset) < N {
        anyhow::ensure!(Instant::now() < deadline, "took too long");
        cycles += 1;
        let (reply, mut stream) = sub.subscribe_from("h.churn", last).await?;
        match (last, &reply) {
            (Some(_), Event::Subscribed { recovery, .. }) => anyhow::ensure!(
                matches!(recovery, Recovery::Recovered { .. }),
                "cycle {cycles}: resume from {last:?} answered {reply:?}"
            ),
            // The stream starts after the position announced.
            (None, Event::Subscribed { position, .. }) => last = *position,
            _ => anyhow::bail!("{reply:?}"),
        }
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let take = 1 + (rng >> 33) % 25;
        for _ in 0..take {
            if last.map_or(0, |p| p.offset) >= N {
                break;
            }
            let frame = stream.next().await?;
            let Some((offset, payload)) = offset_of(&frame.event) else {
                anyhow::bail!("cycle {cycles}: not a publication: {frame:?}");
            };
            let expected = last.map_or(1, |p| p.offset + 1);
            anyhow::ensure!(
                offset == expected,
                "cycle {cycles}: got offset {offset}, expected {expected}"
            );
            anyhow::ensure!(payload.as_ref() == offset.to_be_bytes(), "payload/offset");
            if let Event::Publication { position, .. } = frame.event {
                last = position;
            }
        }
        let r = sub
            .request(Command::Unsubscribe {
                room: "h.churn".into(),
            })
            .await?;
        anyhow::ensure!(
            matches!(r, Event::Unsubscribed { code: 0, .. }),
            "unsubscribe: {r:?}"
        );
        drop(stream);
    }
    publisher.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_over_and_over_under_a_live_publisher_webtransport() -> anyhow::Result<()> {
    resume_churn(Via::WebTransport).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_over_and_over_under_a_live_publisher_websocket() -> anyhow::Result<()> {
    resume_churn(Via::WebSocket).await
}

/// Three publishers at once, pipelining (runs hold the direct writes, `cork.rs`), twelve
/// subscribers over WebTransport and WebSocket: every one sees one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_several_publishers_reach_everyone_in_one_order() -> anyhow::Result<()> {
    const PUBLISHERS: usize = 3;
    const EACH: usize = 400;
    const SUBSCRIBERS: usize = 12;
    let _metrics = METRICS.lock().await;
    let server = TestServer::start_with(|c| {
        c.limits.commands_per_second = 1_000_000;
        c.limits.subscriber_queue = 100_000;
    })
    .await?;
    let mut subs = Vec::new();
    let mut streams = Vec::new();
    for i in 0..SUBSCRIBERS {
        let via = if i % 3 == 0 {
            Via::WebSocket
        } else {
            Via::WebTransport
        };
        let mut s = Raw::connect_via(via, &server, &full_token("acme", &format!("s{i}"))).await?;
        streams.push(s.subscribe("live.order").await?);
        subs.push(s);
    }
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let mut publ = Raw::connect(&server, &full_token("acme", &format!("p{p}"))).await?;
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while i < EACH {
                let mut bytes = Vec::new();
                for _ in 0..20 {
                    bytes.extend(publish_frame(0, "live.order", format!("{p}-{i}")));
                    i += 1;
                }
                publ.send_bytes(&bytes).await?;
            }
            assert!(matches!(publ.request(Command::Ping).await?, Event::Pong));
            anyhow::Ok(publ)
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut seen = Vec::new();
    for s in &mut streams {
        let mut got = Vec::new();
        for _ in 0..PUBLISHERS * EACH {
            got.push(s.payload().await?);
        }
        seen.push(got);
    }
    for (i, got) in seen.iter().enumerate().skip(1) {
        let differ = got.iter().zip(&seen[0]).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "subscriber {i} differs at {differ} places");
    }
    Ok(())
}
