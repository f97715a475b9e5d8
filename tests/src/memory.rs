//! This process's memory, for tests that bound what clients can make the server hold. Such a
//! test runs alone in its binary (the in-process server's memory is then the test's).

use anyhow::{anyhow, Result};
use quiver_proto::{Event, Position, Recovery};

use crate::{full_token, Raw, TestServer};

/// Resident memory, in bytes.
pub fn rss() -> Result<usize> {
    status("VmRSS:")
}

/// Forgets the peak so far: [`peak`] then reports the highest resident memory from here on.
pub fn reset_peak() -> Result<()> {
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0 and later).
    Ok(std::fs::write("/proc/self/clear_refs", "5")?)
}

/// The highest resident memory since [`reset_peak`] (or the start), in bytes.
pub fn peak() -> Result<usize> {
    status("VmHWM:")
}

fn status(field: &str) -> Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .ok_or_else(|| anyhow!("no {field}"))?;
    Ok(kib * 1024)
}

/// Publishes 60 publications of 60 kB (3.6 MB) to `h.big` (a history room of tenant `acme`
/// keeping at least 60), then has 30 sessions resume all of it while giving their streams 1 KiB
/// of credit. Returns how much resident memory grew while they subscribed (and 300 ms after),
/// once one of them has read its whole replay, in order.
pub async fn slow_readers_of_a_long_replay(server: &TestServer) -> Result<usize> {
    const PUBLICATIONS: usize = 60;
    const SIZE: usize = 60_000;
    const READERS: usize = 30;
    let mut publ = Raw::connect(server, &full_token("acme", "p")).await?;
    let first = publ.published("h.big", &[0u8; SIZE]).await?;
    for i in 1..PUBLICATIONS {
        publ.published("h.big", &[i as u8; SIZE]).await?;
    }
    let before = rss()?;
    let mut readers = Vec::new();
    for n in 0..READERS {
        let mut reader =
            Raw::with_stream_window(server, &full_token("acme", &format!("r{n}")), 1024).await?;
        let since = Position {
            offset: first.offset - 1,
            ..first
        };
        let (subscribed, stream) = reader.subscribe_from("h.big", Some(since)).await?;
        anyhow::ensure!(
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
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let grown = rss()?.saturating_sub(before);
    let (_, stream) = &mut readers[0];
    for i in 0..PUBLICATIONS {
        let payload = stream.payload().await?;
        anyhow::ensure!(
            payload.len() == SIZE && payload[0] == i as u8,
            "publication {i} of the replay"
        );
    }
    Ok(grown)
}
