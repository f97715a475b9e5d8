//! Client side of the bare wtransport fan-out peer (`src/bin/bare_wt_fanout.rs`): the session
//! opens a bidirectional stream and writes one role byte; a subscriber then gets one server-opened
//! unidirectional stream of length-prefixed payloads, a publisher writes length-prefixed payloads
//! on its bidirectional stream. One room, nothing else.

use anyhow::Result;
use tokio_util::sync::CancellationToken;
use wtransport::{Connection, SendStream};

use super::quic::{ClientPool, FrameReader};
use super::Spec;
use crate::payload::{template, Stamped};
use crate::recorder::Recorder;

pub const ROLE_SUBSCRIBE: u8 = b'S';
pub const ROLE_PUBLISH: u8 = b'P';

pub struct BareSubscriber {
    _conn: Connection,
    _control: SendStream,
    reader: FrameReader,
}

impl BareSubscriber {
    pub async fn connect(spec: &Spec, quic: &ClientPool) -> Result<Self> {
        let conn = quic.connect(&format!("https://{}/", spec.sub_addr)).await?;
        let (mut control, _recv) = conn.open_bi().await?.await?;
        control.write_all(&[ROLE_SUBSCRIBE]).await?;
        let stream = conn.accept_uni().await?;
        Ok(Self {
            _conn: conn,
            _control: control,
            reader: FrameReader::new(stream),
        })
    }

    pub async fn run(mut self, rec: &mut Recorder, stop: &CancellationToken) -> Result<()> {
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                f = self.reader.next() => f?,
            };
            match frame {
                Some(payload) => rec.on_payload(0, &payload),
                None => return Ok(()),
            }
        }
    }
}

pub struct BarePublisher {
    _conn: Connection,
    send: SendStream,
    frame: Stamped,
}

impl BarePublisher {
    pub async fn connect(spec: &Spec, quic: &ClientPool, payload: usize) -> Result<Self> {
        let conn = quic.connect(&format!("https://{}/", spec.pub_addr)).await?;
        let (mut send, _recv) = conn.open_bi().await?.await?;
        send.write_all(&[ROLE_PUBLISH]).await?;
        let body = template(payload);
        let mut bytes = Vec::with_capacity(body.len() + 4);
        quiver_proto::frame::write_frame(&body, &mut bytes);
        Ok(Self {
            _conn: conn,
            send,
            frame: Stamped::new(bytes, &body)?,
        })
    }

    pub async fn publish(&mut self) -> Result<()> {
        let bytes = self.frame.at(crate::clock::now_ns());
        self.send.write_all(bytes).await?;
        Ok(())
    }
}
