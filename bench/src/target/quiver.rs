//! Quiver over raw frames (`quiver_proto`), without the client library's reconnect machinery:
//! the generator should spend its CPU on reading, not on bookkeeping.

use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use quiver_proto::{
    decode_event, encode_command, publication_payload, ClientFrame, Command, Event, ServerFrame,
    PROTOCOL_VERSION,
};
use tokio_util::sync::CancellationToken;
use wtransport::{Connection, SendStream};

use super::quic::{ClientPool, FrameReader};
use super::{Kind, Spec};
use crate::payload::{template, Stamped};
use crate::recorder::Recorder;

/// A session past Hello/Welcome, with its control stream.
struct Session {
    conn: Connection,
    send: SendStream,
    control: FrameReader,
    next_id: u32,
}

impl Session {
    async fn open(spec: &Spec, quic: &ClientPool, addr: &str) -> Result<Self> {
        let token = spec
            .token
            .as_deref()
            .ok_or_else(|| anyhow!("quiver target needs a token"))?;
        let conn = quic
            .connect(&format!("https://{addr}/v1?token={token}"))
            .await?;
        let (send, recv) = conn.open_bi().await?.await?;
        let mut session = Self {
            conn,
            send,
            control: FrameReader::new(recv),
            next_id: 1,
        };
        session.hello("quiver-bench").await?;
        Ok(session)
    }
}

impl Control for Session {
    async fn send(&mut self, command: Command) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        self.send
            .write_all(&encode_command(&ClientFrame { id, command }))
            .await?;
        Ok(id)
    }

    async fn next_frame(&mut self) -> Result<Option<ServerFrame>> {
        match self.control.next().await? {
            Some(body) => Ok(Some(decode_event(&body)?)),
            None => Ok(None),
        }
    }

    /// Only replies and session events travel on the control stream: skip what is not it.
    async fn reply(&mut self, id: u32) -> Result<Event> {
        loop {
            let frame = self
                .next_frame()
                .await?
                .ok_or_else(|| anyhow!("control stream ended"))?;
            if let Event::Goodbye { reason, .. } = &frame.event {
                bail!("server said goodbye: {reason}");
            }
            // A `SubscriptionStream` header carries its `Subscribe`'s id too (on the control
            // stream in single-stream mode, before or after the reply): it is not the reply.
            if frame.id == id && !matches!(frame.event, Event::SubscriptionStream { .. }) {
                return Ok(frame.event);
            }
        }
    }
}

/// The command side both Quiver transports share: WebTransport's control stream, or the
/// WebSocket (`quiver_ws`).
pub(super) trait Control {
    /// Sends `command` with the next id; returns that id.
    async fn send(&mut self, command: Command) -> Result<u32>;
    /// The next server frame; `None` when the server ended the stream or socket.
    async fn next_frame(&mut self) -> Result<Option<ServerFrame>>;
    /// The frame answering `id` (a goodbye before it is an error).
    async fn reply(&mut self, id: u32) -> Result<Event>;

    /// `Hello`, answered by `Welcome`.
    async fn hello(&mut self, client: &str) -> Result<()> {
        let id = self
            .send(Command::Hello {
                version: PROTOCOL_VERSION,
                client: client.into(),
            })
            .await?;
        match self.reply(id).await? {
            Event::Welcome { .. } => Ok(()),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }

    /// Subscribes to `room` and waits for `Subscribed`; returns the `Subscribe`'s id.
    async fn subscribe(&mut self, room: &str) -> Result<u32> {
        let id = self
            .send(Command::Subscribe {
                room: room.into(),
                resume: None,
            })
            .await?;
        match self.reply(id).await? {
            Event::Subscribed { .. } => Ok(id),
            other => bail!("subscribe {room}: {other:?}"),
        }
    }

    /// Pings and waits for the Pong: the server handles commands in order, so every publish
    /// before it has been fanned out. A refusal (say `rate_limited`) is an error.
    async fn ping_pong(&mut self) -> Result<()> {
        let id = self.send(Command::Ping).await?;
        loop {
            let frame = self
                .next_frame()
                .await?
                .ok_or_else(|| anyhow!("the server ended the session before the Pong"))?;
            match frame.event {
                Event::Pong if frame.id == id => return Ok(()),
                Event::Error { code, message } => bail!("publish refused ({code}): {message}"),
                Event::Goodbye { reason, .. } => bail!("server said goodbye: {reason}"),
                _ => {}
            }
        }
    }
}

pub struct QuiverSubscriber {
    session: Session,
    rooms: Vec<String>,
    /// (room index, stream) per subscription; empty in single-stream mode.
    streams: Vec<(usize, FrameReader)>,
}

impl QuiverSubscriber {
    pub async fn connect(spec: &Spec, quic: &ClientPool, rooms: &[String]) -> Result<Self> {
        let mut session = Session::open(spec, quic, &spec.sub_addr).await?;
        for room in rooms {
            session.subscribe(room).await?;
        }
        let mut streams = Vec::new();
        if spec.kind != Kind::QuiverSingleStream {
            for _ in rooms {
                let mut reader = FrameReader::new(session.conn.accept_uni().await?);
                let header = reader
                    .next()
                    .await?
                    .ok_or_else(|| anyhow!("subscription stream ended before its header"))?;
                let room = match decode_event(&header)?.event {
                    Event::SubscriptionStream { room } => room,
                    other => bail!("expected SubscriptionStream, got {other:?}"),
                };
                let index = rooms
                    .iter()
                    .position(|r| *r == room)
                    .context("stream for a room we did not subscribe to")?;
                streams.push((index, reader));
            }
        }
        Ok(Self {
            session,
            rooms: rooms.to_vec(),
            streams,
        })
    }

    pub async fn run(self, rec: &mut Recorder, stop: &CancellationToken) -> Result<()> {
        let Self {
            mut session,
            rooms,
            streams,
        } = self;
        if streams.is_empty() {
            // Single-stream ablation: publications come on the control stream, rooms interleaved.
            loop {
                let body = tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    b = session.control.next() => match b? { Some(b) => b, None => return Ok(()) },
                };
                if let Event::Publication { room, payload, .. } = decode_event(&body)?.event {
                    let index = rooms.iter().position(|r| *r == room).unwrap_or(0);
                    rec.on_payload(index, &payload);
                }
            }
        }
        // One reader per room stream, all in this task; the recorder is shared between them
        // through an uncontended mutex (never held across an await).
        let rec = Mutex::new(rec);
        let readers = streams.into_iter().map(|(index, mut reader)| {
            let rec = &rec;
            async move {
                loop {
                    let Some(body) = reader.next().await? else {
                        return Ok::<(), anyhow::Error>(());
                    };
                    // A publication's payload is read in place; anything else on the stream
                    // (presence events) is decoded in full and ignored.
                    let payload = match publication_payload(&body) {
                        Some(payload) => payload,
                        None => {
                            decode_event(&body)?;
                            continue;
                        }
                    };
                    if let Ok(mut r) = rec.lock() {
                        r.on_payload(index, payload);
                    }
                }
            }
        });
        tokio::select! {
            _ = stop.cancelled() => Ok(()),
            r = futures::future::try_join_all(readers) => r.map(|_| ()),
        }
    }
}

/// One pre-encoded, unacknowledged `Publish` frame per room, ready to be stamped and sent
/// (the same bytes on every Quiver transport).
pub fn publish_frames(rooms: &[String], payload: usize) -> Result<Vec<Stamped>> {
    let body = template(payload);
    rooms
        .iter()
        .map(|room| {
            let bytes = encode_command(&ClientFrame {
                id: 0,
                command: Command::Publish {
                    room: room.clone(),
                    payload: body.clone().into(),
                    ack: false,
                },
            });
            Stamped::new(bytes, &body)
        })
        .collect()
}

pub struct QuiverPublisher {
    session: Session,
    /// One pre-encoded `Publish` frame per room.
    frames: Vec<Stamped>,
}

impl QuiverPublisher {
    pub async fn connect(
        spec: &Spec,
        quic: &ClientPool,
        rooms: &[String],
        payload: usize,
    ) -> Result<Self> {
        let session = Session::open(spec, quic, &spec.pub_addr).await?;
        let frames = publish_frames(rooms, payload)?;
        Ok(Self { session, frames })
    }

    pub fn rooms(&self) -> usize {
        self.frames.len()
    }

    pub async fn publish(&mut self, room: usize) -> Result<()> {
        let bytes = crate::payload::stamped_now(&mut self.frames, room)?;
        self.session.send.write_all(bytes).await?;
        Ok(())
    }

    /// Waits until the server has handled every publish (see [`Control::ping_pong`]).
    pub async fn finish(&mut self) -> Result<()> {
        self.session.ping_pong().await
    }
}
