//! What a WebTransport session's control stream reader takes ahead of the session core while a
//! command waits (PROTOCOL.md §5): 64 frames at most, and 256 KiB of them, beside the stream's
//! own 256 KiB window, whatever the frames' size; and that its datagrams are read meanwhile.

use std::time::Duration;

use quiver_proto::datagram::PublishDatagram;
use quiver_proto::Command;
use quiver_tests::rpc::publish_held_by_its_hook_with;
use quiver_tests::*;

/// A client that reads nothing fills its outgoing queue with Pongs (so the session waits on a
/// reply), then writes 60 KB publications until the server takes no more. Returns the bytes of
/// them the server took.
async fn block_the_session(raw: &mut Raw) -> anyhow::Result<usize> {
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
    Ok(taken)
}

/// The server takes at most about half a megabyte of a blocked session's 60 KB frames (the
/// reader's 256 KiB, the stream's 256 KiB window, one frame more). It took 64 whole frames,
/// about 4 MB per session (outside audit 100, F1).
#[tokio::test]
async fn a_blocked_session_reads_a_bounded_number_of_bytes_ahead() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.limits.commands_per_second = 100_000).await?;
    let mut raw = Raw::with_stream_window(&server, &full_token("acme", "deaf"), 256).await?;
    let taken = block_the_session(&mut raw).await?;
    assert!(
        taken < 1_000_000,
        "the server took {taken} bytes of 60 KB frames ahead of a blocked session"
    );
    // More than the stream's window alone: the reader took some ahead (the bound is not zero).
    assert!(taken >= 256 * 1024 + 2 * 60_000, "only {taken} bytes taken");
    Ok(())
}

/// While a session's inbound queue is full its datagrams are still read, and dropped as `busy`
/// (PROTOCOL §10). The reader waited for the queue with them unread: they were taken late, or
/// lost uncounted past quinn's buffer (outside audit 100, F3).
#[tokio::test]
async fn a_blocked_sessions_datagrams_are_read_and_dropped_as_busy() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.limits.commands_per_second = 100_000;
        add_latest_namespace(c, "game");
    })
    .await?;
    let mut raw = Raw::with_stream_window(&server, &full_token("acme", "deaf"), 256).await?;
    block_the_session(&mut raw).await?;
    let busy = |page: &str| {
        metric_sum(
            page,
            "quiver_datagrams_dropped_total",
            &[("reason", "busy")],
        )
    };
    let before = busy(&server.metrics().await?);
    for i in 0..40u8 {
        let payload = [i; 16];
        raw.conn().send_datagram(
            PublishDatagram {
                room: "game.a",
                payload: &payload,
            }
            .encode(),
        )?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Loopback may lose a datagram now and then, not most of them.
    let deadline = tokio::time::Instant::now() + WAIT;
    let dropped = loop {
        let dropped = busy(&server.metrics().await?) - before;
        if dropped >= 30.0 || tokio::time::Instant::now() >= deadline {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        dropped >= 30.0,
        "{dropped} of 40 datagrams were dropped as busy while the session was blocked"
    );
    Ok(())
}

/// The same bound on WebSocket: a session waiting on its publish hook reads 64 messages at
/// most, and 256 KiB of them and one more, whatever their size. It took 64 whole messages, up
/// to 64 × `max_frame` (64 MB of 1 MB ones) per session (review 102). What the test can write
/// includes the TCP buffers of both ends (a few megabytes at most), hence the loose bound.
#[tokio::test]
async fn a_blocked_websocket_session_reads_a_bounded_number_of_bytes_ahead() -> anyhow::Result<()> {
    let (_server, backend, _watcher, _sub, mut publisher) =
        publish_held_by_its_hook_with(Via::WebSocket, &full_token("acme", "deaf"), |c| {
            c.limits.max_frame = 1 << 20;
            c.limits.max_payload = 1_000_000;
            c.limits.session_queue_bytes = c.limits.session_queue_bytes.max(1 << 20);
        })
        .await?;
    let frame = publish_frame(1_000, "chat.big", vec![7u8; 1_000_000]);
    let mut taken = 0usize;
    for _ in 0..100 {
        let written =
            tokio::time::timeout(Duration::from_secs(2), publisher.send_bytes(&frame)).await;
        match written {
            Ok(result) => {
                result?;
                taken += frame.len();
            }
            // The server takes no more: TCP's window is closed.
            Err(_) => break,
        }
    }
    backend.gate.add_permits(1);
    println!("taken {taken}");
    assert!(
        taken < 24_000_000,
        "the server took {taken} bytes of 1 MB messages ahead of a blocked session"
    );
    Ok(())
}
