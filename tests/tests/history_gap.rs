//! A history room's subscription on an instance whose live consumer fell behind the room's
//! limits (outside cluster audit 112, F3). JetStream keeps `history_size` publications per
//! room whether an instance's consumer got them or not; an instance frozen (or cut off from
//! NATS) while the room outran that limit skipped what was removed meanwhile and kept its
//! subscriptions open, with no sign of the gap (PROTOCOL.md §5: never a gap).

use std::time::Duration;

use quiver_proto::{Event, ServerFrame};
use quiver_tests::nats::NatsServer;
use quiver_tests::process::QuiverProcess;
use quiver_tests::*;

fn numbered(i: u32) -> [u8; 4] {
    i.to_be_bytes()
}

/// Instance B is frozen while 2,000 publications go into a room that keeps 20 through
/// instance A. B's consumer had asked for at most a batch of them before the freeze; the rest
/// the room's limit removed before B could get them. B's subscriber receives every
/// publication in order up to where B missed some, then is ended with 117: never a skip. A
/// room of the same stream that lost nothing (its one publication still kept) stays open
/// (review 113, F2: every room of the stream was ended), and so do one that keeps nothing and
/// one whose only publication came within the gap (stop 61: both were ended).
#[tokio::test]
async fn a_history_subscription_that_missed_trimmed_publications_is_ended_not_left_with_a_gap(
) -> anyhow::Result<()> {
    const TOTAL: u32 = 2_000;
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("quiver.toml");
    std::fs::write(
        &config,
        "[limits]\ncommands_per_second = 100000\nsubscriber_queue = 8192\n\n\
         [[namespaces]]\nname = \"h\"\nhistory_size = 20\nhistory_ttl = \"5m\"\n",
    )?;
    let nats_flag = ["--nats", &nats.url()];
    let a = QuiverProcess::start(dir.path(), Some(&config), &nats_flag)?;
    let b = QuiverProcess::start(dir.path(), Some(&config), &nats_flag)?;
    let mut reader = Raw::connect_at(b.wt_port, b.hash, &full_token("acme", "reader")).await?;
    let mut room = reader.subscribe("h.x").await?;
    let mut publ = Raw::connect_at(a.wt_port, a.hash, &full_token("acme", "p")).await?;
    // B's consumer delivers: from here on, whatever it misses is owed to the subscriber.
    publ.published("h.x", &numbered(0)).await?;
    assert_eq!(room.payload().await?, &numbered(0)[..]);
    let mut quiet = reader.subscribe("h.y").await?;
    publ.published("h.y", b"y-before").await?;
    assert_eq!(quiet.payload().await?, &b"y-before"[..]);
    // A room that keeps nothing (none was ever published there), and one whose only
    // publication comes during the freeze, after the gap's start: neither lost anything (the
    // stream's front is intact and neither is at its count limit), so neither is ended.
    let mut empty = reader.subscribe("h.z").await?;
    let mut later = reader.subscribe("h.w").await?;

    b.pause()?;
    let published = async {
        for i in 1..=TOTAL {
            publ.published("h.x", &numbered(i)).await?;
            if i == TOTAL / 2 {
                publ.published("h.w", b"w-during").await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    b.resume()?;
    published?;

    let mut next = 1u32;
    while next <= TOTAL {
        match room.next().await {
            Ok(ServerFrame {
                event: Event::Publication { payload, .. },
                ..
            }) => {
                let got = u32::from_be_bytes(payload[..].try_into()?);
                anyhow::ensure!(
                    got == next,
                    "publication {got} came after {}: B skipped {} publications and kept the \
                     subscription open",
                    next - 1,
                    got.saturating_sub(next)
                );
                next += 1;
            }
            Ok(other) => anyhow::bail!("expected a publication, got {other:?}"),
            // The stream ended (or nothing more came): the subscription must say why.
            Err(_) => break,
        }
    }
    // Every publication arrived: the scenario made no gap, and the test would prove nothing.
    anyhow::ensure!(
        next <= TOTAL,
        "no gap was produced: the scenario did not run"
    );
    {
        let code = tokio::time::timeout(WAIT, async {
            loop {
                match reader.recv().await?.event {
                    Event::Unsubscribed { room, code, .. } if room == "h.x" => {
                        return anyhow::Ok(code)
                    }
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the subscription stopped at {} with no Unsubscribed",
                next - 1
            )
        })??;
        assert_eq!(code, 117, "ended after {} publications", next - 1);
        // The room goes on for whoever subscribes again. At once: B finds a second gap right
        // behind the first (h.w's publication splits the missed run in two) and checks the
        // stream's rooms for it meanwhile. A room left and subscribed again since the gap was
        // found lost nothing of it; its new subscription was ended with the old room's
        // (no stream, an Unsubscribed 117 instead), in about 6 runs of 10 on a busy machine.
        let (reply, mut again) = reader.subscribe_from("h.x", None).await?;
        anyhow::ensure!(matches!(reply, Event::Subscribed { .. }), "{reply:?}");
        // And counted, as publications this instance never got.
        let page = reqwest::get(format!("http://127.0.0.1:{}/metrics", b.http_port))
            .await?
            .text()
            .await?;
        let missed = metric(
            &page,
            "quiver_deliveries_dropped_total{reason=\"broker_gap\"}",
        );
        assert!(missed > 0.0, "the missed publications were not counted");
        publ.published("h.x", b"after").await?;
        let after = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if again.payload().await? == b"after"[..] {
                    return anyhow::Ok(());
                }
            }
        })
        .await;
        after.map_err(|_| anyhow::anyhow!("nothing delivered after the gap"))??;
        // The rooms that lost nothing were never ended: their subscriptions go on, h.w's
        // publication from within the gap delivered.
        let w = tokio::time::timeout(Duration::from_secs(5), later.payload()).await;
        match w {
            Ok(Ok(payload)) => assert_eq!(payload, &b"w-during"[..]),
            other => anyhow::bail!("h.w, which lost nothing, was ended by the gap: {other:?}"),
        }
        for (room, sub) in [
            ("h.y", &mut quiet),
            ("h.z", &mut empty),
            ("h.w", &mut later),
        ] {
            publ.published(room, b"after-gap").await?;
            let got = tokio::time::timeout(Duration::from_secs(5), sub.payload()).await;
            match got {
                Ok(Ok(payload)) => assert_eq!(payload, &b"after-gap"[..], "{room}"),
                other => {
                    anyhow::bail!("{room}, which lost nothing, was ended by the gap: {other:?}")
                }
            }
        }
    }
    Ok(())
}
