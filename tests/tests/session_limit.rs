//! `limits.max_sessions` holds against sessions admitted together: the limit is checked before
//! a session is made (429), and the count a session takes when it is made decides (one past it
//! is refused `Goodbye 3008`).

use std::time::Duration;

use quiver_proto::{CloseCode, Command, Event, PROTOCOL_VERSION};
use quiver_tests::*;

enum Outcome {
    Welcomed(Box<Raw>),
    Refused,
}

/// A WebSocket client's Hello: welcomed, or refused as the limit says (the upgrade answered
/// 429, or the session closed as it opened with `Goodbye 3008`); anything else is an error.
async fn connect(server: &TestServer, token: &str) -> anyhow::Result<Outcome> {
    use tokio_tungstenite::tungstenite::Error;
    let mut raw = match Raw::websocket(server, &format!("/v1/ws?token={token}"), &[]).await {
        Ok(raw) => raw,
        Err(Error::Http(response)) if response.status() == 429 => return Ok(Outcome::Refused),
        Err(e) => anyhow::bail!("upgrade: {e}"),
    };
    raw.send(Command::Hello {
        version: PROTOCOL_VERSION,
        client: "limit".into(),
    })
    .await?;
    match raw.recv().await?.event {
        Event::Welcome { .. } => Ok(Outcome::Welcomed(Box::new(raw))),
        Event::Goodbye { code, .. } if code == CloseCode::OverQuota.as_u16() => {
            Ok(Outcome::Refused)
        }
        other => anyhow::bail!("neither Welcome nor Goodbye 3008: {other:?}"),
    }
}

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
            async move { connect(server, &token).await }
        });
        let mut welcomed = Vec::new();
        for outcome in futures::future::join_all(connects).await {
            match outcome? {
                Outcome::Welcomed(raw) => welcomed.push(raw),
                Outcome::Refused => {}
            }
        }
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
