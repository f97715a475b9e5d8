//! A resumed subscription's replay is encoded as its stream takes it (`server/src/replay.rs`):
//! clients that resume a long history and then read slowly make the server hold references to
//! that history and a batch each, not an encoded copy of the whole replay each. Alone in its
//! test binary, so that the process's memory is this test's.

use quiver_tests::memory::slow_readers_of_a_long_replay;
use quiver_tests::*;

#[tokio::test]
async fn slow_readers_of_a_long_replay_hold_no_copy_of_it() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        add_history_namespace(c, "h", 100);
        c.limits.commands_per_second = 100_000;
    })
    .await?;
    let grown = slow_readers_of_a_long_replay(&server).await?;
    // An encoded copy per reader would be 30 x 3.6 MB = 108 MB.
    assert!(
        grown < 40 << 20,
        "{} MB more for 30 slow readers of a 3.6 MB replay",
        grown >> 20
    );
    Ok(())
}
