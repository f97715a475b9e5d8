//! Runs of publications (issue 14, `server/src/cork.rs`): publications that queue up behind
//! each other in one session are handed to the hub together and each subscriber's stream takes
//! them in one write. What a subscriber sees must not change: every publication, in the hub's
//! order, with no run holding another room's publications while its session waits.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use quiver_proto::{Command, Event, ServerFrame};
use quiver_tests::*;

const WAIT: Duration = Duration::from_secs(10);

/// `count` Publish commands for `room` in one buffer, so they arrive together and run as one;
/// their payloads say who sent which (`a17` is a's 18th: `tag` and `first` + n).
fn burst(room: &str, tag: &str, first: u32, count: u32) -> Vec<u8> {
    (first..first + count)
        .flat_map(|n| publish_frame(1 + n, room, format!("{tag}{n}")))
        .collect()
}

/// The next publication on a room's stream: its offset (history rooms) and payload.
async fn next_publication(stream: &mut RoomStream) -> Result<(u64, Bytes)> {
    match tokio::time::timeout(WAIT, stream.next()).await?? {
        ServerFrame {
            event: Event::Publication {
                position, payload, ..
            },
            ..
        } => Ok((position.map_or(0, |p| p.offset), payload)),
        other => bail!("expected a publication, got {other:?}"),
    }
}

/// Bursts from two publishers and the backend API into one history room at once: every
/// subscriber gets every publication once, in offset order (a frame written past a run's held
/// frames would arrive before lower offsets), and each publisher's own in the order it sent.
/// Two worker threads, so that the others' publications can come between a run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_beside_other_publishers_arrive_whole_and_in_order() -> Result<()> {
    const BURSTS: u32 = 20;
    const PER_BURST: u32 = 10;
    const API: u32 = 100;
    let server = TestServer::start_with(|c| {
        add_history_namespace(c, "feed", 10_000);
        // Bursts, not a runaway client.
        c.limits.commands_per_second = 10_000;
    })
    .await?;
    let mut streams = Vec::new();
    let mut subscribers = Vec::new();
    for n in 0..3 {
        let mut sub = Raw::connect(&server, &full_token("acme", &format!("s{n}"))).await?;
        streams.push(sub.subscribe("feed.x").await?);
        subscribers.push(sub);
    }
    let mut publishers = Vec::new();
    for tag in ["a", "b"] {
        let mut publisher = Raw::connect(&server, &full_token("acme", tag)).await?;
        publishers.push(tokio::spawn(async move {
            for b in 0..BURSTS {
                let bytes = burst("feed.x", tag, b * PER_BURST, PER_BURST);
                publisher.send_bytes(&bytes).await?;
                tokio::task::yield_now().await;
            }
            // Answered after every publication before it (one session's commands in order).
            publisher.request(Command::Ping).await?;
            anyhow::Ok(())
        }));
    }
    let backend = token("acme", "backend", &[], &["feed.>"], 60);
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/v1/publish/feed.x", server.http);
    for n in 0..API {
        let sent = http
            .post(&url)
            .bearer_auth(&backend)
            .body(format!("h{n}"))
            .send()
            .await?;
        assert_eq!(sent.status(), 200);
    }
    for publisher in publishers {
        publisher.await??;
    }
    let total = 2 * BURSTS * PER_BURST + API;
    for stream in &mut streams {
        let mut last_offset = 0;
        let mut next = std::collections::HashMap::new();
        for _ in 0..total {
            let (offset, payload) = next_publication(stream).await?;
            assert_eq!(
                offset,
                last_offset + 1,
                "offsets arrive in order, none missing"
            );
            last_offset = offset;
            let text = std::str::from_utf8(&payload)?;
            let (who, n) = text.split_at(1);
            let n: u32 = n.parse()?;
            let expected = next.entry(who.to_owned()).or_insert(0u32);
            assert_eq!(n, *expected, "{who}'s publications in the order sent");
            *expected += 1;
        }
        assert_eq!(next.get("a"), Some(&(BURSTS * PER_BURST)));
        assert_eq!(next.get("b"), Some(&(BURSTS * PER_BURST)));
        assert_eq!(next.get("h"), Some(&API));
    }
    Ok(())
}

/// A run's publications are on their subscribers' streams before the session waits for a
/// publish hook: a burst into a plain room followed by a publication the backend holds must
/// not hold the plain room's publications with it.
#[tokio::test]
async fn a_run_is_written_before_its_session_waits_for_a_hook() -> Result<()> {
    let (url, backend) = quiver_tests::rpc::gated_backend().await?;
    let server = TestServer::start_with(|c| {
        c.rpc.url = Some(url);
        c.rpc.hooks = vec![quiver_server::rpc::HookConfig {
            namespace: "vetted".into(),
            subscribe: false,
            publish: true,
            timeout: Duration::from_secs(30),
            fail_open: false,
        }];
    })
    .await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let mut plain = sub.subscribe("chat.x").await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "p")).await?;
    let mut bytes = burst("chat.x", "c", 0, 5);
    bytes.extend(burst("vetted.x", "v", 5, 1));
    publisher.send_bytes(&bytes).await?;
    for n in 0..5 {
        let (_, payload) = next_publication(&mut plain)
            .await
            .map_err(|e| e.context("a run waited with its session for the hook"))?;
        assert_eq!(payload, Bytes::from(format!("c{n}")));
    }
    // It was the hook the session waited for.
    let deadline = tokio::time::Instant::now() + WAIT;
    while backend.asked.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hook was never asked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    backend.gate.add_permits(10);
    Ok(())
}

/// Over NATS, a room's messages that arrived together are one run on the receiving instance:
/// a publisher's bursts reach a subscriber on another instance whole and in order.
#[tokio::test]
async fn bursts_cross_instances_whole_and_in_order() -> Result<()> {
    const TOTAL: u32 = 300;
    let nats = quiver_tests::nats::NatsServer::start().await?;
    let instance = || {
        TestServer::start_with(|c| {
            quiver_tests::nats::clustered(&nats)(c);
            c.limits.commands_per_second = 10_000;
        })
    };
    let (a, b) = (instance().await?, instance().await?);
    let mut subscriber = Raw::connect(&b, &full_token("acme", "s")).await?;
    let mut stream = subscriber.subscribe("live.x").await?;
    // Read by a task of its own, so that waiting for the first publication cancels no read.
    let (got, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok((_, payload)) = next_publication(&mut stream).await {
            if got.send(payload).is_err() {
                break;
            }
        }
    });
    let mut publisher = Raw::connect(&a, &full_token("acme", "p")).await?;
    // Interest travels through NATS: probe until a publication gets across.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publisher.publish("live.x", b"probe").await?;
        if tokio::time::timeout(Duration::from_millis(100), received.recv())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no interest across NATS"
        );
    }
    for first in (0..TOTAL).step_by(50) {
        publisher
            .send_bytes(&burst("live.x", "p", first, 50))
            .await?;
    }
    let mut n = 0;
    while n < TOTAL {
        let payload = tokio::time::timeout(WAIT, received.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended after {n} publications"))?;
        // Probes that crossed late come first; after them, every publication in order.
        if payload[..] == b"probe"[..] && n == 0 {
            continue;
        }
        assert_eq!(payload, Bytes::from(format!("p{n}")));
        n += 1;
    }
    reader.abort();
    Ok(())
}
