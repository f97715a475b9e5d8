//! Socket.IO 4 (Engine.IO 4) over its websocket transport, spoken directly: `40` to join the
//! default namespace, `42[...]` events, `42<id>[...]`/`43<id>[...]` acknowledgements, `2`/`3`
//! heartbeats. The Node peer (`bench/peers/socketio/server.js`) answers `join` with an ack and
//! re-emits `pub` to the room as `msg`.

use anyhow::{anyhow, Result};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::payload::template;
use crate::recorder::Recorder;
use crate::socketio_wire::{open, sync, wait_ack, Ws};

pub struct SocketIoSubscriber {
    ws: Ws,
    rooms: Vec<String>,
}

impl SocketIoSubscriber {
    pub async fn connect(addr: &str, rooms: &[String]) -> Result<Self> {
        let mut ws = open(addr).await?;
        for (i, room) in rooms.iter().enumerate() {
            ws.send(Message::text(format!("42{i}[\"join\",\"{room}\"]")))
                .await?;
            wait_ack(&mut ws, i as u32).await?;
        }
        Ok(Self {
            ws,
            rooms: rooms.to_vec(),
        })
    }

    pub async fn run(mut self, rec: &mut Recorder, stop: &CancellationToken) -> Result<()> {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                m = self.ws.next() => m,
            };
            let text = match msg {
                None => return Ok(()),
                Some(m) => match m? {
                    Message::Text(t) => t,
                    Message::Close(_) => return Ok(()),
                    _ => continue,
                },
            };
            let text = text.as_str();
            if text == "2" {
                self.ws.send(Message::text("3")).await?;
                continue;
            }
            // 42["msg","<room>","<payload>"]
            let Some(rest) = text.strip_prefix("42[\"msg\",\"") else {
                continue;
            };
            let (room, rest) = rest
                .split_once("\",\"")
                .ok_or_else(|| anyhow!("bad msg event"))?;
            let payload = rest.strip_suffix("\"]").unwrap_or(rest);
            let index = self.rooms.iter().position(|r| r == room).unwrap_or(0);
            rec.on_payload(index, payload.as_bytes());
        }
    }
}

pub struct SocketIoPublisher {
    ws: Ws,
    /// `42["pub","<room>","` per room; the payload and `"]` are appended per message.
    heads: Vec<String>,
    payload: Vec<u8>,
}

impl SocketIoPublisher {
    pub async fn connect(addr: &str, rooms: &[String], payload: usize) -> Result<Self> {
        let ws = open(addr).await?;
        Ok(Self {
            ws,
            heads: rooms
                .iter()
                .map(|r| format!("42[\"pub\",\"{r}\",\""))
                .collect(),
            payload: template(payload),
        })
    }

    pub fn rooms(&self) -> usize {
        self.heads.len()
    }

    pub async fn publish(&mut self, room: usize) -> Result<()> {
        let head = self
            .heads
            .get(room)
            .ok_or_else(|| anyhow!("no room {room}"))?;
        crate::payload::stamp(&mut self.payload, crate::clock::now_ns());
        let mut text = String::with_capacity(head.len() + self.payload.len() + 2);
        text.push_str(head);
        // The template is ASCII digits and 'x': valid UTF-8 by construction.
        text.push_str(std::str::from_utf8(&self.payload)?);
        text.push_str("\"]");
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends an acknowledged `sync` event and waits for its ack: the server handles a socket's
    /// packets in order, so everything published before has been emitted to the room.
    pub async fn finish(&mut self) -> Result<()> {
        sync(&mut self.ws).await
    }
}
