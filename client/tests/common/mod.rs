//! What the fake WebSocket servers of these tests share: reading the client's commands and
//! writing events, one frame per WebSocket message.

#![allow(dead_code)] // each test binary uses its own part of it

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use quiver_client::{token_fixed, Backoff, Client, ClientConfig, Limits, Transport};
use quiver_proto::{
    decode_command, encode_event, Command, Event, FrameDecoder, ServerFrame, DEFAULT_MAX_FRAME,
};
use tokio_tungstenite::tungstenite::Message;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The next command the client sent; `None` once the connection is gone.
pub async fn command(ws: &mut Ws) -> Option<(u32, Command)> {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Binary(data) = msg else { continue };
        return decode(&data);
    }
    None
}

/// The command in one client message.
pub fn decode(data: &[u8]) -> Option<(u32, Command)> {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    dec.push(data);
    let body = dec.next_frame().ok().flatten()?;
    let frame = decode_command(&body).ok()?;
    Some((frame.id, frame.command))
}

/// Sends one event; whether it was written.
pub async fn send(ws: &mut Ws, id: u32, event: Event) -> bool {
    ws.send(Message::Binary(encode_event(&ServerFrame { id, event })))
        .await
        .is_ok()
}

/// A `Welcome` for user "u" of tenant "t" announcing `max_frame` and `commands_per_second`.
pub fn welcome(max_frame: u32, commands_per_second: u32, expires_at: Option<u64>) -> Event {
    Event::Welcome {
        version: 1,
        session: "s".into(),
        user: "u".into(),
        tenant: "t".into(),
        expires_at,
        limits: Limits {
            max_frame,
            max_payload: max_frame.saturating_sub(1024),
            max_subscriptions: 16,
            commands_per_second,
        },
    }
}

/// A WebSocket client of the fake server on `port` that reconnects quickly.
pub async fn connect(port: u16) -> anyhow::Result<Client> {
    let mut config = ClientConfig::new("https://127.0.0.1:9/v1", token_fixed("t"))
        .with_ws_url(format!("ws://127.0.0.1:{port}"))
        .with_transport(Transport::WebSocket);
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
    };
    Ok(Client::connect(config).await?)
}
