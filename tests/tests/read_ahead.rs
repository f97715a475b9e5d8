//! What a WebTransport session's control stream reader takes ahead of the session core while a
//! command waits (PROTOCOL.md §5): 64 frames at most, and 256 KiB of them, beside the stream's
//! own 256 KiB window, whatever the frames' size.

use std::time::Duration;

use quiver_proto::Command;
use quiver_tests::*;

/// A client that reads nothing fills its outgoing queue with Pongs (so the session waits on a
/// reply), then writes 60 KB publications: the server takes at most about half a megabyte of
/// them off the stream (the reader's 256 KiB, the stream's 256 KiB window, one frame more).
/// It took 64 whole frames, about 4 MB per session (outside audit 100, F1).
#[tokio::test]
async fn a_blocked_session_reads_a_bounded_number_of_bytes_ahead() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.limits.commands_per_second = 100_000).await?;
    let mut raw = Raw::with_stream_window(&server, &full_token("acme", "deaf"), 256).await?;
    // Its queue holds 256 replies and its window some 36 Pongs: a few more than that fill it
    // and leave few Pings in the reader's queue.
    for _ in 0..320 {
        raw.send(Command::Ping).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frame = publish_frame(1_000, "chat.big", vec![7u8; 60_000]);
    let mut taken = 0usize;
    for _ in 0..100 {
        let written = tokio::time::timeout(Duration::from_secs(2), raw.send_bytes(&frame)).await;
        match written {
            Ok(result) => {
                result?;
                taken += frame.len();
            }
            // The server takes no more: the stream's credit is spent.
            Err(_) => break,
        }
    }
    assert!(
        taken < 1_000_000,
        "the server took {taken} bytes of 60 KB frames ahead of a blocked session"
    );
    // More than the stream's window alone: the reader took some ahead (the bound is not zero).
    assert!(taken >= 256 * 1024 + 2 * 60_000, "only {taken} bytes taken");
    Ok(())
}
