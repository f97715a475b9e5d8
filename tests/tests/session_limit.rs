//! `limits.max_sessions` holds against sessions admitted together: the limit is checked before
//! a session is made (429), and the count a session takes when it is made decides (one past it
//! is refused `Goodbye 3008`).

use std::time::Duration;

use quiver_proto::Command;
use quiver_tests::*;

/// Rounds of 30 WebSocket clients connecting at once to a server that takes 5 sessions: never
/// more than 5 are welcomed, nor open (outside audit 97, F3: 6 were, in 6 of 9 tries, each
/// upgrade checked against the count before any of them was counted). Every client is
/// answered: a `Welcome`, or a refusal (429, or `Goodbye 3008`).
#[tokio::test]
async fn sessions_admitted_together_stay_within_max_sessions() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.limits.max_sessions = 5).await?;
    for round in 0..5 {
        let connects = (0..30).map(|i| {
            let token = full_token("acme", &format!("u{round}-{i}"));
            let server = &server;
            async move { Raw::connect_via(Via::WebSocket, server, &token).await }
        });
        let results = futures::future::join_all(connects).await;
        let mut welcomed: Vec<Raw> = results.into_iter().filter_map(Result::ok).collect();
        assert!(
            welcomed.len() <= 5,
            "round {round}: {} welcomed with max_sessions = 5",
            welcomed.len()
        );
        assert!(
            server.sessions() <= 5,
            "round {round}: {} open",
            server.sessions()
        );
        // The welcomed ones are sessions that work.
        for raw in &mut welcomed {
            raw.request(Command::Ping).await?;
        }
        for raw in &mut welcomed {
            raw.close().await;
        }
        drop(welcomed);
        let deadline = tokio::time::Instant::now() + WAIT;
        while server.sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.sessions(), 0, "round {round}: sessions left open");
    }
    Ok(())
}
