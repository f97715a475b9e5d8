//! Quiver over raw frames (`quiver_proto`), without the client library's reconnect machinery:
//! the generator should spend its CPU on reading, not on bookkeeping.

use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use quiver_proto::{
    decode_event, encode_command, ClientFrame, Command, Event, ServerFrame, PROTOCOL_VERSION,
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
        let id = session
            .send(Command::Hello {
                version: PROTOCOL_VERSION,
                client: "quiver-bench".into(),
            })
            .await?;
        match session.reply(id).await? {
            Event::Welcome { .. } => Ok(session),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }

    async fn send(&mut self, command: Command) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        self.send
            .write_all(&encode_command(&ClientFrame { id, command }))
            .await?;
        Ok(id)
    }

    /// The next control frame answering `id`; other frames are skipped.
    async fn reply(&mut self, id: u32) -> Result<Event> {
        loop {
            let body = self
                .control
                .next()
                .await?
                .ok_or_else(|| anyhow!("control stream ended"))?;
            let frame: ServerFrame = decode_event(&body)?;
            if let Event::Goodbye { reason, .. } = &frame.event {
                bail!("server said goodbye: {reason}");
            }
            if frame.id == id {
                return Ok(frame.event);
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
            let id = session
                .send(Command::Subscribe {
                    room: room.clone(),
                    resume: None,
                })
                .await?;
            match session.reply(id).await? {
                Event::Subscribed { .. } => {}
                other => bail!("subscribe {room}: {other:?}"),
            }
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
                    if let Event::Publication { payload, .. } = decode_event(&body)?.event {
                        if let Ok(mut r) = rec.lock() {
                            r.on_payload(index, &payload);
                        }
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
        let body = template(payload);
        let mut frames = Vec::new();
        for room in rooms {
            let bytes = encode_command(&ClientFrame {
                id: 0,
                command: Command::Publish {
                    room: room.clone(),
                    payload: body.clone().into(),
                    ack: false,
                },
            });
            frames.push(Stamped::new(bytes, &body)?);
        }
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

    /// Pings and waits for the Pong: the server handles commands in order, so every publish
    /// before it has been fanned out. A refusal (say `rate_limited`) is an error.
    pub async fn finish(&mut self) -> Result<()> {
        let id = self.session.send(Command::Ping).await?;
        loop {
            let body = self
                .session
                .control
                .next()
                .await?
                .ok_or_else(|| anyhow!("control stream ended"))?;
            let frame = decode_event(&body)?;
            match frame.event {
                Event::Pong if frame.id == id => return Ok(()),
                Event::Error { code, message } => bail!("publish refused ({code}): {message}"),
                _ => {}
            }
        }
    }
}
