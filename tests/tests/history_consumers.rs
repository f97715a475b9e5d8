//! In a cluster, history rooms must not let one client exhaust a JetStream stream's consumers
//! (a stream allows a limited number, shared by every instance and user of the tenant's
//! namespace): live delivery uses one consumer per stream and instance, and every read
//! (resume, `History`) deletes its own consumer when done. Also: a position past the room's
//! current one is refused, as the embedded broker refuses it (PROTOCOL.md §5).

use std::time::{Duration, Instant};

use quiver_proto::{Command, Event, Position, Recovery};
use quiver_server::config::{NamespaceConfig, NatsConfig};
use quiver_tests::*;

/// The tenant's stream for namespace `h` (`QUIVER_<len>_<tenant>_<ns>`).
const STREAM: &str = "QUIVER_4_acme_h";
/// More than a stream's usual consumer limit (1,000), so per-room or lingering consumers fail.
const CHURN: usize = 1_200;
/// Commands in flight at once: pipelined, then their replies awaited.
const WINDOW: usize = 100;
/// What one instance may hold on a stream: one live consumer (two while one replaces
/// another) and `history::MAX_READS` (32) read consumers.
const BOUND: usize = 2 + 32;

async fn cluster_server(nats: &quiver_tests::nats::NatsServer) -> anyhow::Result<TestServer> {
    let url = nats.url();
    TestServer::start_with(move |c| {
        c.namespaces.push(NamespaceConfig {
            name: "h".into(),
            history_size: 50,
            history_ttl: Duration::from_secs(600),
            presence: false,
            ..Default::default()
        });
        c.limits.commands_per_second = 1_000_000;
        c.limits.max_subscriptions = 2_000;
        c.nats = Some(NatsConfig::new(url));
    })
    .await
}

async fn consumers(js: &async_nats::jetstream::Context) -> anyhow::Result<usize> {
    let mut stream = js.get_stream(STREAM).await?;
    Ok(stream.info().await?.state.consumer_count)
}

/// Sends `commands` `WINDOW` at a time and checks every reply with `ok`, sampling the
/// stream's consumer count after each window; returns the highest count seen.
async fn pipelined(
    raw: &mut Raw,
    js: &async_nats::jetstream::Context,
    commands: Vec<Command>,
    ok: impl Fn(&Event) -> bool,
) -> anyhow::Result<usize> {
    let mut most = 0;
    for window in commands.chunks(WINDOW) {
        let mut ids = Vec::new();
        for command in window {
            ids.push(raw.send(command.clone()).await?);
        }
        for id in ids {
            let reply = raw.recv_reply(id).await?;
            anyhow::ensure!(ok(&reply), "unexpected reply {reply:?}");
        }
        most = most.max(consumers(js).await?);
    }
    Ok(most)
}

fn subscribe(room: String, resume: Option<Position>) -> Command {
    Command::Subscribe { room, resume }
}

#[tokio::test]
async fn churning_history_rooms_never_exhausts_the_streams_consumers() -> anyhow::Result<()> {
    let nats = quiver_tests::nats::NatsServer::start().await?;
    let a = cluster_server(&nats).await?;
    let b = cluster_server(&nats).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let started = Instant::now();

    let mut publ = Raw::connect(&a, &full_token("acme", "publisher")).await?;
    let first = publ.published("h.kept", b"one").await?;
    let mut last = (publ.published("h.kept", b"two").await?, b"two".to_vec());

    let mut churner = Raw::connect_via(Via::WebSocket, &a, &full_token("acme", "churner")).await?;
    let subscribed = |e: &Event| matches!(e, Event::Subscribed { .. });
    let unsubscribed = |e: &Event| matches!(e, Event::Unsubscribed { .. });
    let mut most = 0;

    // 1. Subscribe and unsubscribe, each time a new history room.
    let mut commands = Vec::new();
    for k in 0..CHURN {
        commands.push(subscribe(format!("h.c{k}"), None));
        commands.push(Command::Unsubscribe {
            room: format!("h.c{k}"),
        });
    }
    most = most.max(
        pipelined(&mut churner, &js, commands, |e| {
            subscribed(e) || unsubscribed(e)
        })
        .await?,
    );

    // 2. Resume (a replay each time) and unsubscribe, on a room that keeps publications.
    let mut commands = Vec::new();
    for _ in 0..CHURN {
        commands.push(subscribe("h.kept".into(), Some(first)));
        commands.push(Command::Unsubscribe {
            room: "h.kept".into(),
        });
    }
    most = most.max(
        pipelined(&mut churner, &js, commands, |e| match e {
            Event::Subscribed { recovery, .. } => *recovery == Recovery::Recovered { replayed: 1 },
            e => unsubscribed(e),
        })
        .await?,
    );

    // 3. History pages (a read consumer each).
    let commands = (0..CHURN)
        .map(|_| Command::History {
            room: "h.kept".into(),
            since: None,
            limit: 10,
        })
        .collect();
    most = most.max(
        pipelined(
            &mut churner,
            &js,
            commands,
            |e| matches!(e, Event::History { publications, .. } if publications.len() == 2),
        )
        .await?,
    );

    // 4. Hold more history rooms at once than a stream allows consumers.
    let commands = (0..CHURN)
        .map(|k| subscribe(format!("h.held{k}"), None))
        .collect();
    most = most.max(pipelined(&mut churner, &js, commands, subscribed).await?);
    assert!(
        most <= BOUND,
        "one instance held {most} consumers on the stream (bound {BOUND})"
    );

    // Another user of the tenant, on both instances, still subscribes, resumes, pages and
    // gets live publications, while the churner holds its rooms.
    for (server, live) in [(&a, b"live-a"), (&b, b"live-b")] {
        let mut other = Raw::connect(server, &full_token("acme", "other")).await?;
        // From just before the room's last publication: that one is replayed.
        let before = Position {
            offset: last.0.offset - 1,
            ..last.0
        };
        let (reply, mut room) = other.subscribe_from("h.kept", Some(before)).await?;
        match reply {
            Event::Subscribed { recovery, .. } => {
                assert_eq!(recovery, Recovery::Recovered { replayed: 1 })
            }
            other => anyhow::bail!("subscribe: {other:?}"),
        }
        assert_eq!(room.payload().await?.as_ref(), &last.1[..]);
        let page = other
            .request(Command::History {
                room: "h.kept".into(),
                since: None,
                limit: 10,
            })
            .await?;
        assert!(
            matches!(&page, Event::History { publications, .. } if publications.len() >= 2),
            "{page:?}"
        );
        last = (publ.published("h.kept", live).await?, live.to_vec());
        assert_eq!(room.payload().await?.as_ref(), live);
        other.close().await;
    }

    // The read consumers are deleted once their reads are done (not left to their inactivity
    // threshold): only the live consumers of the two instances remain.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = consumers(&js).await?;
        if now <= 2 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{now} consumers left after the reads"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everything above: well within a minute, not the consumers' 30 s thresholds times churn.
    assert!(started.elapsed() < Duration::from_secs(120));
    churner.close().await;
    publ.close().await;
    Ok(())
}

/// `P` may be any position of the room's epoch up to its current one (PROTOCOL.md §5): another
/// room's of the same stream replays what the room kept after it; one past the room's last
/// publication is beyond its current position and answered `Failed`, as the embedded broker
/// answers it.
#[tokio::test]
async fn positions_past_a_rooms_current_one_are_refused() -> anyhow::Result<()> {
    let nats = quiver_tests::nats::NatsServer::start().await?;
    let a = cluster_server(&nats).await?;
    let mut publ = Raw::connect(&a, &full_token("acme", "publisher")).await?;
    let x1 = publ.published("h.x", b"x1").await?;
    let y1 = publ.published("h.y", b"y1").await?;
    let x2 = publ.published("h.x", b"x2").await?;
    publ.published("h.y", b"y2").await?;

    let mut reader = Raw::connect(&a, &full_token("acme", "reader")).await?;
    let recovery = |reply: Event| match reply {
        Event::Subscribed {
            recovery, position, ..
        } => (recovery, position),
        other => panic!("subscribe: {other:?}"),
    };
    // Past x's last publication (x2 < y2's sequence): beyond x's current position.
    let past = Position {
        epoch: x2.epoch,
        offset: x2.offset + 1,
    };
    let (got, position) = recovery(reader.subscribe_from("h.x", Some(past)).await?.0);
    assert_eq!(got, Recovery::Failed);
    assert_eq!(position, Some(x2));
    reader
        .request(Command::Unsubscribe { room: "h.x".into() })
        .await?;
    let page = reader
        .request(Command::History {
            room: "h.x".into(),
            since: Some(past),
            limit: 10,
        })
        .await?;
    assert!(
        matches!(page, Event::Error { code, .. }
            if code == quiver_proto::ErrorCode::UnrecoverablePosition.as_u16()),
        "{page:?}"
    );
    // Room y's position inside what x keeps: x2 follows it.
    let (got, _) = recovery(reader.subscribe_from("h.x", Some(y1)).await?.0);
    assert_eq!(got, Recovery::Recovered { replayed: 1 });
    reader
        .request(Command::Unsubscribe { room: "h.x".into() })
        .await?;
    // x's own positions resume.
    let (got, _) = recovery(reader.subscribe_from("h.x", Some(x1)).await?.0);
    assert_eq!(got, Recovery::Recovered { replayed: 1 });
    let (got, _) = recovery(reader.subscribe_from("h.y", Some(y1)).await?.0);
    assert_eq!(got, Recovery::Recovered { replayed: 1 });
    Ok(())
}
