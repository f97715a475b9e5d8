//! A refused token on WebSocket (PROTOCOL.md §9.1): the server accepts the upgrade, sends one
//! `Goodbye` and a close frame, and drops the connection without reading, so the client's
//! `Hello`, written right behind the upgrade, may fail (the socket reset). The goodbye is
//! already in the client's hands then: the client reports the refusal (and stops), not a
//! network failure it would retry forever with the same bad token (outside audit 19, L7).

use std::time::Duration;

use quiver_client::{token_fixed, Client, ClientConfig, ClientError, Transport};
use quiver_proto::{encode_event, Event, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// An unmasked server frame of `opcode` holding `payload` (under 126 bytes).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![0x80 | opcode, payload.len() as u8];
    frame.extend_from_slice(payload);
    frame
}

/// Accepts one connection, answers its upgrade with the refusal's bytes (101, the `Goodbye`
/// message, the close frame) in one write, then resets the connection at once (SO_LINGER 0).
async fn refusing_server(code: u16) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&request);
        let Some(key) = text.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        }) else {
            return;
        };
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        let goodbye = encode_event(&ServerFrame {
            id: 0,
            event: Event::Goodbye {
                code,
                reason: "bad signature".into(),
                reconnect: false,
            },
        });
        answer.extend(ws_frame(0x2, &goodbye));
        let mut close = code.to_be_bytes().to_vec();
        close.extend_from_slice(b"bad signature");
        answer.extend(ws_frame(0x8, &close));
        if tcp.write_all(&answer).await.is_err() {
            return;
        }
        // A reset, not a FIN: the client's Hello finds the socket gone.
        let _ = tcp.set_zero_linger();
        drop(tcp);
    });
    Ok(port)
}

/// The single-threaded runtime runs the server's whole answer, reset included, before the
/// client reads it, so the client's `Hello` is written to a socket already reset.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_token_is_reported_even_when_the_hello_cannot_be_sent() -> anyhow::Result<()> {
    let port = refusing_server(3007).await?;
    let config = ClientConfig::new("https://127.0.0.1:9/v1", token_fixed("t"))
        .with_ws_url(format!("ws://127.0.0.1:{port}"))
        .with_transport(Transport::WebSocket);
    let outcome = tokio::time::timeout(Duration::from_secs(10), Client::connect(config)).await?;
    match outcome {
        Err(e @ ClientError::TokenRefused { code: 3007, .. }) => {
            assert!(e.is_auth_failure(), "{e}");
            Ok(())
        }
        Err(other) => anyhow::bail!("expected the token refusal, got {other:?}"),
        Ok(_) => anyhow::bail!("connected to a server that refused the token"),
    }
}

/// A token put in a configured URL never shows in the errors that name the URL: a refused
/// upgrade (HTTP 403) or a failed connect (nothing listening). Before, both carried the URL as
/// configured, token included, into the error, the `Disconnected` reason and a warning
/// (outside audit 103, F7).
#[tokio::test]
async fn a_token_in_a_configured_url_never_shows_in_errors() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let refusing = listener.local_addr()?.port();
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tcp
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await;
    });
    // A port nothing listens on (any more).
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    for port in [refusing, closed] {
        let config = ClientConfig::new("https://127.0.0.1:9/v1", token_fixed("t"))
            .with_ws_url(format!("ws://127.0.0.1:{port}/v1/ws?token=SECRET"))
            .with_transport(Transport::WebSocket);
        let outcome =
            tokio::time::timeout(Duration::from_secs(10), Client::connect(config)).await?;
        let Err(e) = outcome else {
            anyhow::bail!("connected to port {port}");
        };
        let shown = format!("{e} / {e:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("token=***"), "{shown}");
        if port == refusing {
            assert!(
                matches!(
                    e,
                    ClientError::Refused {
                        status: Some(403),
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }
    Ok(())
}
