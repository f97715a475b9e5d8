//! A resumed subscription's replay is encoded as its stream takes it (`server/src/replay.rs`):
//! clients that resume a long history and then read slowly make the server hold references to
//! that history and a batch each, not an encoded copy of the whole replay each. Alone in its
//! test binary, so that the process's memory is this test's.

use std::time::Duration;

use quiver_proto::{Event, Position, Recovery};
use quiver_tests::*;

/// The process's resident memory, in bytes.
fn rss() -> anyhow::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(kib * 1024)
}

#[tokio::test]
async fn slow_readers_of_a_long_replay_hold_no_copy_of_it() -> anyhow::Result<()> {
    const PUBLICATIONS: usize = 60;
    const SIZE: usize = 60_000;
    const READERS: usize = 30;
    let server = TestServer::start_with(|c| {
        add_history_namespace(c, "h", 100);
        c.limits.commands_per_second = 100_000;
    })
    .await?;
    let mut publ = Raw::connect(&server, &full_token("acme", "p")).await?;
    let first = publ.published("h.big", &[0u8; SIZE]).await?;
    for i in 1..PUBLICATIONS {
        publ.published("h.big", &[i as u8; SIZE]).await?;
    }
    // 3.6 MB of history; each reader resumes all of it and gives its stream 1 KiB of credit.
    let before = rss()?;
    let mut readers = Vec::new();
    for n in 0..READERS {
        let mut reader =
            Raw::with_stream_window(&server, &full_token("acme", &format!("r{n}")), 1024).await?;
        let (subscribed, stream) = reader
            .subscribe_from("h.big", Some(Position { offset: 0, ..first }))
            .await?;
        assert!(
            matches!(
                subscribed,
                Event::Subscribed {
                    recovery: Recovery::Recovered { replayed },
                    ..
                } if replayed as usize == PUBLICATIONS
            ),
            "{subscribed:?}"
        );
        readers.push((reader, stream));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = rss()?.saturating_sub(before);
    // An encoded copy per reader would be 30 x 3.6 MB = 108 MB.
    assert!(
        grown < 40 << 20,
        "{} MB more for {READERS} slow readers of a 3.6 MB replay",
        grown >> 20
    );
    // And the replay is whole and in order for a reader that reads.
    let (_, stream) = &mut readers[0];
    for i in 0..PUBLICATIONS {
        let payload = tokio::time::timeout(Duration::from_secs(10), stream.payload()).await??;
        assert!(
            payload.len() == SIZE && payload[0] == i as u8,
            "publication {i}"
        );
    }
    Ok(())
}
