//! Over NATS, a resume's replay is read from JetStream a page at a time as the stream takes it
//! (`server/src/broker/nats/history_read.rs`): slow readers of a long history hold about a
//! page each, not a copy of their whole replay; and a `History` page reads about what its frame
//! can hold, not `limit` publications. Alone in its test binary, so that the process's memory
//! is this test's.

use quiver_proto::{Command, Event};
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
