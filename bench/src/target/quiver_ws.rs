//! Quiver over its WebSocket transport (`GET /v1/ws`, PROTOCOL.md §9.2), spoken with raw frames
//! like the WebTransport target: one complete frame per client message; the server sends one or
//! more complete frames per message, replies and every subscription's frames interleaved on the
//! one socket.
//!
//! The generator checks the transport's framing rules as it goes (a frame split across two
//! messages, a text message, a publication of a room whose `SubscriptionStream` has not arrived):
//! a server that breaks them fails the run instead of skewing it.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use quiver_proto::{
    decode_event, encode_command, ClientFrame, Command, Event, ServerFrame, LENGTH_PREFIX,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::quiver::Control;
use super::Spec;
use crate::payload::Stamped;
use crate::recorder::Recorder;

type Ws = WebSocketStream<TcpStream>;

/// How long a subscriber spends sending its close frame at the end of a run.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Splits one server message into its frame bodies. Every message must hold whole frames only
/// (PROTOCOL §9.2): a partial frame at the end is the server's error, not something to buffer.
fn frames(message: &Bytes) -> impl Iterator<Item = Result<Bytes>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= message.len() {
            return None;
        }
        let Some(prefix) = message.get(at..at + LENGTH_PREFIX) else {
            at = message.len();
            return Some(Err(anyhow!("message ends inside a length prefix")));
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let start = at + LENGTH_PREFIX;
        if len == 0 || start + len > message.len() {
            at = message.len();
            return Some(Err(anyhow!(
                "frame of {len} bytes does not fit its message ({} bytes left): a frame spans \
                 two messages",
                message.len() - start
            )));
        }
        at = start + len;
        Some(Ok(message.slice(start..start + len)))
    })
}

/// A session past Hello/Welcome on its WebSocket.
struct Session {
    ws: Ws,
    next_id: u32,
    /// Frames read while waiting for something else, in arrival order.
    pending: std::collections::VecDeque<ServerFrame>,
}

impl Session {
    async fn open(spec: &Spec, addr: &str) -> Result<Self> {
        let token = spec
            .token
            .as_deref()
            .ok_or_else(|| anyhow!("quiver-ws target needs a token"))?;
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let url = format!("ws://{addr}/v1/ws?token={token}");
        let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
        let mut session = Self {
            ws,
            next_id: 1,
            pending: Default::default(),
        };
        session.hello("quiver-bench-ws").await?;
        Ok(session)
    }

    /// Leaves as a client should (a close frame, 1000), bounded: the run is over.
    async fn close(&mut self) {
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "benchmark done".into(),
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, self.ws.close(Some(bye))).await;
    }
}

impl Control for Session {
    async fn send(&mut self, command: Command) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode_command(&ClientFrame { id, command });
        self.ws.send(Message::Binary(frame.into())).await?;
        Ok(id)
    }

    /// From what is pending, else from the socket.
    async fn next_frame(&mut self) -> Result<Option<ServerFrame>> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Ok(Some(frame));
            }
            let Some(message) = self.ws.next().await else {
                return Ok(None);
            };
            match message? {
                Message::Binary(data) => {
                    for body in frames(&data) {
                        self.pending.push_back(decode_event(&body?)?);
                    }
                }
                Message::Text(_) => bail!("the server sent a text message"),
                Message::Close(_) => return Ok(None),
                // tungstenite answers pings by itself.
                _ => {}
            }
        }
    }

    /// The frame answering `id`. Frames before it that answer something else are kept in
    /// order for later, except a goodbye, which ends the session.
    async fn reply(&mut self, id: u32) -> Result<Event> {
        let mut kept = std::collections::VecDeque::new();
        let found = loop {
            let frame = self
                .next_frame()
                .await?
                .ok_or_else(|| anyhow!("websocket closed"))?;
            if let Event::Goodbye { reason, .. } = &frame.event {
                bail!("server said goodbye: {reason}");
            }
            if frame.id == id && !matches!(frame.event, Event::SubscriptionStream { .. }) {
                break frame.event;
            }
            kept.push_back(frame);
        };
        kept.append(&mut self.pending);
        self.pending = kept;
        Ok(found)
    }
}

/// Per subscribed room: its name, the id of its `Subscribe`, and whether its
/// `SubscriptionStream` (with that id) has arrived, so publications may be accepted.
struct Sub {
    room: String,
    id: u32,
    open: bool,
}

pub struct QuiverWsSubscriber {
    session: Session,
    subs: Vec<Sub>,
}

impl QuiverWsSubscriber {
    pub async fn connect(spec: &Spec, rooms: &[String]) -> Result<Self> {
        let mut session = Session::open(spec, &spec.sub_addr).await?;
        let mut subs = Vec::new();
        for room in rooms {
            let id = session.subscribe(room).await?;
            subs.push(Sub {
                room: room.clone(),
                id,
                open: false,
            });
        }
        let mut this = Self { session, subs };
        // Every subscription's header, before or after its reply (PROTOCOL §9.2); nothing is
        // published yet, so nothing else can arrive meanwhile but replies already seen.
        while this.subs.iter().any(|s| !s.open) {
            let frame = this
                .session
                .next_frame()
                .await?
                .ok_or_else(|| anyhow!("websocket closed before every SubscriptionStream"))?;
            this.on_frame(frame, None)?;
        }
        Ok(this)
    }

    /// Handles one frame: opens a subscription on its header, records a publication of an open
    /// one, and discards a stale one (PROTOCOL §9.2).
    fn on_frame(&mut self, frame: ServerFrame, rec: Option<&mut Recorder>) -> Result<()> {
        match frame.event {
            Event::SubscriptionStream { room } => {
                if let Some(s) = self.subs.iter_mut().find(|s| s.room == room) {
                    s.open = s.id == frame.id;
                }
            }
            Event::Publication { room, payload, .. } => {
                let index = self.subs.iter().position(|s| s.room == room && s.open);
                if let (Some(index), Some(rec)) = (index, rec) {
                    rec.on_payload(index, &payload);
                }
            }
            Event::Goodbye { reason, .. } => bail!("server said goodbye: {reason}"),
            Event::Unsubscribed { room, reason, .. } => {
                bail!("server ended the subscription of {room}: {reason}")
            }
            _ => {}
        }
        Ok(())
    }

    pub async fn run(mut self, rec: &mut Recorder, stop: &CancellationToken) -> Result<()> {
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => break,
                f = self.session.next_frame() => match f? { Some(f) => f, None => return Ok(()) },
            };
            self.on_frame(frame, Some(rec))?;
        }
        self.session.close().await;
        Ok(())
    }
}

pub struct QuiverWsPublisher {
    session: Session,
    /// One pre-encoded `Publish` frame per room.
    frames: Vec<Stamped>,
}

impl QuiverWsPublisher {
    pub async fn connect(spec: &Spec, rooms: &[String], payload: usize) -> Result<Self> {
        let session = Session::open(spec, &spec.pub_addr).await?;
        let frames = super::quiver::publish_frames(rooms, payload)?;
        Ok(Self { session, frames })
    }

    pub fn rooms(&self) -> usize {
        self.frames.len()
    }

    /// One frame, one binary message (PROTOCOL §9.2), sent at once like the other targets'.
    pub async fn publish(&mut self, room: usize) -> Result<()> {
        let bytes = crate::payload::stamped_now(&mut self.frames, room)?;
        self.session
            .ws
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await?;
        Ok(())
    }

    /// Waits until the server has handled every publish (see [`Control::ping_pong`]), then
    /// leaves with a close frame: `finish` is a publisher's last call.
    pub async fn finish(&mut self) -> Result<()> {
        self.session.ping_pong().await?;
        self.session.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn splits_whole_frames() {
        let mut m = frame(b"abc");
        m.extend(frame(b"de"));
        let bodies: Vec<Bytes> = frames(&Bytes::from(m))
            .collect::<Result<_>>()
            .expect("whole frames");
        assert_eq!(
            bodies,
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de")]
        );
    }

    #[test]
    fn refuses_a_frame_cut_by_the_message_end() {
        let mut m = frame(b"abc");
        m.extend(&frame(b"defg")[..6]);
        let results: Vec<Result<Bytes>> = frames(&Bytes::from(m)).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert!(results[1].is_err());
        assert!(frames(&Bytes::from_static(&[0, 0]))
            .next()
            .is_some_and(|r| r.is_err()));
        assert!(frames(&Bytes::from_static(&[0, 0, 0, 0]))
            .next()
            .is_some_and(|r| r.is_err()));
    }
}
