//! How long a session's transport close may hold a drain (`End::cut_short`): a client that
//! reads nothing holds it `CLOSE_GRACE` (1 s) from the drain's start, also when its close had
//! begun before the drain, with the longer grace a close has outside a drain.

use std::time::{Duration, Instant};

use quiver_proto::{CloseCode, Command};
use quiver_server::config::ApiKey;
use quiver_tests::*;

const ACME: &str = "acme-key-0123456789abcdef0123456789ab";

/// A WebTransport client that reads nothing (a 256-byte window, filled by its Welcome and
/// Pongs) is disconnected through the backend API: its close waits up to 2 s for the goodbye
/// to reach it. A drain begun 0.1 s into that close cuts it `CLOSE_GRACE` after the drain's
/// start, as WebSocket does (review 90, F9: WebTransport chose its grace when the close began,
/// so the drain waited out the 2 s). The client sees the QUIC close with the disconnect's code.
#[tokio::test]
async fn a_drain_begun_during_a_close_waits_one_close_grace() -> anyhow::Result<()> {
    let mut server = TestServer::start_with(|c| {
        c.api.keys = vec![ApiKey {
            key: ACME.into(),
            tenant: Some("acme".into()),
        }];
    })
    .await?;
    let mut deaf = Raw::with_stream_window(&server, &full_token("acme", "deaf"), 256).await?;
    for _ in 0..64 {
        deaf.send(Command::Ping).await?;
    }
    // The Pongs reach the server's side of the stream, past what the window lets through.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, answer) = api_post(
        &server,
        "disconnect",
        ACME,
        serde_json::json!({"user": "deaf"}),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.sessions(), 1, "the deaf client's close ended early");

    let server = server
        .server
        .take()
        .ok_or_else(|| anyhow::anyhow!("not running"))?;
    let drain = tokio::spawn(server.shutdown());
    let began = Instant::now();
    let code = deaf.close_code().await;
    let took = began.elapsed();
    drain.await?;
    assert_eq!(
        code,
        Some(u64::from(CloseCode::Disconnected.as_u16())),
        "closed {took:?} into the drain"
    );
    // CLOSE_GRACE is 1 s; what is left of the close's 2 s would be 1.9 s.
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(1500),
        "the close was cut {took:?} into the drain, not a CLOSE_GRACE (1 s) after its start"
    );
    Ok(())
}
