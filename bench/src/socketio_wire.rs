//! Socket.IO 4 (Engine.IO 4) over its websocket transport, the handshake and framing both
//! Socket.IO drivers share (the load generator's `target::socketio` and `latest-age`): `40` to
//! join the default namespace, `42[...]` events, `43<id>[...]` acknowledgements, `2`/`3`
//! heartbeats. Depends on nothing else in the crate so either binary can include it.

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Connects and joins the default namespace.
pub async fn open(addr: &str) -> Result<Ws> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
    // Engine.IO open packet ("0{...}"), then connect to the default namespace.
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected Engine.IO open, got {open:?}");
    }
    ws.send(Message::text("40")).await?;
    loop {
        let t = next_text(&mut ws).await?;
        if t.starts_with("40") {
            return Ok(ws);
        }
        if t.starts_with("44") {
            bail!("namespace connect refused: {t}");
        }
    }
}

/// The next text message, answering heartbeats on the way.
pub async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            None => bail!("websocket closed"),
            Some(msg) => match msg? {
                Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await?,
                Message::Text(t) => return Ok(t.as_str().to_owned()),
                Message::Close(_) => bail!("websocket closed"),
                _ => {}
            },
        }
    }
}

/// Waits for the acknowledgement `43<id>[...]`.
pub async fn wait_ack(ws: &mut Ws, id: u32) -> Result<()> {
    let prefix = format!("43{id}[");
    loop {
        if next_text(ws).await?.starts_with(&prefix) {
            return Ok(());
        }
    }
}

/// Ack id used by a publisher's final `sync` event.
const SYNC_ACK: u32 = 999_999;

/// Sends an acknowledged `sync` event and waits for its ack: the server handles a socket's
/// packets in order, so everything published before has been emitted to the room.
pub async fn sync(ws: &mut Ws) -> Result<()> {
    ws.send(Message::text(format!("42{SYNC_ACK}[\"sync\"]")))
        .await?;
    wait_ack(ws, SYNC_ACK).await
}
