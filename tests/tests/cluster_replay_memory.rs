//! Over NATS, a resume's replay is read from JetStream a page at a time as the stream takes it
//! (`server/src/broker/nats/history_read.rs`): slow readers of a long history hold about a
//! page each, not a copy of their whole replay; one session resuming many rooms holds a few
//! pages, not one per room; and a `History` page reads about what its frame can hold, not
//! `limit` publications. Alone in its test binary, so that the process's memory
//! is this test's.

use quiver_proto::{Command, Event, Position, Recovery};
use quiver_tests::memory::{peak, reset_peak, rss, slow_readers_of_a_long_replay};
use quiver_tests::nats::{clustered, NatsServer};
use quiver_tests::*;

#[tokio::test]
async fn long_reads_from_jetstream_hold_about_a_page_each() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        clustered(&nats)(c);
        c.limits.commands_per_second = 100_000;
    })
    .await?;
    wait_ready(&server).await?;

    // One session resumes 100 rooms of 300 kB and reads none of them: its replays take turns
    // (8 at once), so it holds a few pages, not one per room (27 MB before).
    const ROOMS: usize = 100;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    let mut firsts = Vec::new();
    for room in 0..ROOMS {
        let name = format!("h.many{room}");
        firsts.push(publ.published(&name, &[0u8; 30_000]).await?);
        for i in 1..10u8 {
            publ.published(&name, &[i; 30_000]).await?;
        }
    }
    let before = rss()?;
    let mut greedy = Raw::with_stream_window(&server, &full_token("acme", "greedy"), 1024).await?;
    let mut streams = Vec::new();
    for (room, first) in firsts.iter().enumerate() {
        let since = Position {
            offset: first.offset - 1,
            ..*first
        };
        let (reply, stream) = greedy
            .subscribe_from(&format!("h.many{room}"), Some(since))
            .await?;
        assert!(
            matches!(
                reply,
                Event::Subscribed {
                    recovery: Recovery::Recovered { replayed: 10 },
                    ..
                }
            ),
            "{reply:?}"
        );
        streams.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let grown = rss()?.saturating_sub(before);
    assert!(
        grown < 12 << 20,
        "{} MB more for one session resuming {ROOMS} rooms of 300 kB",
        grown >> 20
    );
    drop((greedy, streams));

    let grown = slow_readers_of_a_long_replay(&server).await?;
    // A copy of the replay per reader would be 30 x 3.6 MB = 108 MB; a page each is about 10.
    assert!(
        grown < 40 << 20,
        "{} MB more for 30 slow readers of a 3.6 MB replay",
        grown >> 20
    );

    // History pages of the whole room, 32 at once (the instance's read slots), each asking for
    // up to 1,000 publications: a page's frame holds one of these, so reading 60 each would be
    // 32 x 3.6 MB = 115 MB at the peak.
    let mut pagers = Vec::new();
    for n in 0..32 {
        pagers.push(Raw::connect(&server, &full_token("acme", &format!("h{n}"))).await?);
    }
    // The peak from here on (writing 5 to clear_refs resets VmHWM to the current RSS).
    reset_peak()?;
    let before = rss()?;
    let pages = futures::future::join_all(pagers.iter_mut().map(|p| {
        p.request(Command::History {
            room: "h.big".into(),
            since: None,
            limit: 1000,
        })
    }))
    .await;
    let peak = peak()?.saturating_sub(before);
    for page in pages {
        match page? {
            Event::History {
                publications,
                truncated,
                ..
            } => assert!(
                !publications.is_empty() && truncated,
                "a page as large as its frame allows, and more after it"
            ),
            other => anyhow::bail!("{other:?}"),
        }
    }
    assert!(
        peak < 40 << 20,
        "{} MB more at the peak for 32 history pages of a 3.6 MB room",
        peak >> 20
    );
    Ok(())
}
