//! A draining server answers every command it carries out before its goodbye (close code 3000,
//! PROTOCOL.md section 7), so a command still unanswered at that goodbye was not carried out:
//! the client says so (`NotCarriedOut`, safe to send again), where any other end of the
//! connection leaves it unknown (`ConnectionLost`). Against a fake WebSocket server that ends
//! the session at the client's first `Call` or `Presence`.

use std::time::Duration;

use common::{command, connect, send, welcome};
use quiver_client::ClientError;
use quiver_proto::{Command, Event, DEFAULT_MAX_FRAME};
use tokio::net::TcpListener;

mod common;

/// How the fake server ends a session at a `Call` or `Presence`.
#[derive(Clone, Copy)]
enum End {
    /// `Goodbye` with this code (`reconnect: true`), then the close.
    Goodbye(u16),
    /// The connection drops: no goodbye, no close frame.
    Drop,
}

/// Serves `end` on a loopback port; later sessions answer `Ping`.
async fn server(end: End) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let Some((id, Command::Hello { .. })) = command(&mut ws).await else {
                    return;
                };
                if !send(&mut ws, id, welcome(DEFAULT_MAX_FRAME as u32, 1000, None)).await {
                    return;
                }
                while let Some((id, cmd)) = command(&mut ws).await {
                    let written = match cmd {
                        Command::Ping => send(&mut ws, id, Event::Pong).await,
                        Command::Call { .. } | Command::Presence { .. } => {
                            if let End::Goodbye(code) = end {
                                let goodbye = Event::Goodbye {
                                    code,
                                    reason: "going away".into(),
                                    reconnect: true,
                                };
                                send(&mut ws, 0, goodbye).await;
                                let _ = ws.close(None).await;
                            }
                            return;
                        }
                        _ => true,
                    };
                    if !written {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// The error a `Call` and a `Presence` each got when the session ended under them.
async fn errors_at(end: End) -> anyhow::Result<(ClientError, ClientError)> {
    let client = connect(server(end).await?).await?;
    let call = tokio::time::timeout(Duration::from_secs(10), client.call("orders.place", "x"))
        .await?
        .err()
        .ok_or_else(|| anyhow::anyhow!("the call succeeded"))?;
    // The client reconnects by itself; the next session ends at the `Presence`.
    tokio::time::timeout(Duration::from_secs(10), async {
        while client.ping().await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let presence = tokio::time::timeout(Duration::from_secs(10), client.presence("chat.a"))
        .await?
        .err()
        .ok_or_else(|| anyhow::anyhow!("the presence succeeded"))?;
    client.close().await;
    Ok((call, presence))
}

#[tokio::test]
async fn commands_a_drain_left_unanswered_were_not_carried_out() -> anyhow::Result<()> {
    let (call, presence) = errors_at(End::Goodbye(3000)).await?;
    assert!(matches!(call, ClientError::NotCarriedOut), "{call:?}");
    assert!(
        matches!(presence, ClientError::NotCarriedOut),
        "{presence:?}"
    );
    Ok(())
}

#[tokio::test]
async fn commands_another_end_left_unanswered_may_have_been_carried_out() -> anyhow::Result<()> {
    for end in [End::Drop, End::Goodbye(3005)] {
        let (call, presence) = errors_at(end).await?;
        assert!(matches!(call, ClientError::ConnectionLost), "{call:?}");
        assert!(
            matches!(presence, ClientError::ConnectionLost),
            "{presence:?}"
        );
    }
    Ok(())
}
