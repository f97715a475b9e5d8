use tracing::debug;
use wtransport_proto::bytes::IoReadError;
use wtransport_proto::capsule::capsules;
use wtransport_proto::capsule::Capsule;
use wtransport_proto::error::ErrorCode;
use wtransport_proto::frame::Frame;
use wtransport_proto::frame::FrameKind;
use wtransport_proto::varint::VarInt;

use super::session::StreamSession;
use super::ProtoReadError;
use crate::driver::DriverError;
use crate::error::ApplicationClose;
use std::future::pending;

pub struct ConnectStream {
    stream: Option<StreamSession>,
    /// QUIVER PATCH (cancel-safe frame reads, PATCHES.md 5): bytes of a frame not read whole
    /// yet, kept across the driver's loop turns.
    pending: super::PendingFrame,
    /// QUIVER PATCH (capsules as a byte stream, PATCHES.md 6).
    capsules: Capsules,
}

impl ConnectStream {
    pub fn empty() -> Self {
        Self {
            stream: None,
            pending: super::PendingFrame::default(),
            capsules: Capsules::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stream.is_none()
    }

    pub fn set_stream(&mut self, stream: StreamSession) {
        self.stream = Some(stream);
    }

    pub async fn run(&mut self) -> DriverError {
        let stream = match self.stream.as_mut() {
            Some(stream) => stream,
            None => pending().await,
        };

        loop {
            if let Some(close) = self.capsules.next_close() {
                let close_session = match close {
                    Ok(close_session) => close_session,
                    Err(error_code) => return DriverError::Proto(error_code),
                };
                // reset right away to avoid receiving additional data which requires resetting with ErrorCode::Message.
                if let Some(mut stream) = self.stream.take() {
                    stream.reset(ErrorCode::NoError.to_code());
                }
                return DriverError::ApplicationClosed(ApplicationClose::new(
                    close_session.error_code(),
                    close_session
                        .reason()
                        .as_bytes()
                        .to_vec()
                        .into_boxed_slice(),
                ));
            }
            // QUIVER PATCH (cancel-safe frame reads, PATCHES.md 5): capsules read whole leave
            // no capacity behind for the wait, which may last the session's life.
            self.capsules.0.shed();
            return match stream.read_frame_pending(&mut self.pending).await {
                Ok(frame) => {
                    if matches!(frame.kind(), FrameKind::Data) {
                        self.capsules.push(frame.payload());
                    } else {
                        debug!("Skipping non-data frame of kind {:?}", frame.kind());
                    }
                    continue;
                }
                Err(ProtoReadError::H3(error_code)) => DriverError::Proto(error_code),
                Err(ProtoReadError::IO(io_error)) => match io_error {
                    // A capsule cut short by the end of the stream is malformed (RFC 9297 §3.3).
                    IoReadError::ImmediateFin if self.capsules.is_cut() => {
                        DriverError::Proto(ErrorCode::Datagram)
                    }
                    // Cleanly terminating a CONNECT stream without a CLOSE_WEBTRANSPORT_SESSION
                    // capsule SHALL be semantically equivalent to terminating it with a
                    // CLOSE_WEBTRANSPORT_SESSION capsule that has an error code of 0 and an empty error string.
                    IoReadError::ImmediateFin => DriverError::ApplicationClosed(
                        ApplicationClose::new(VarInt::from_u32(0), Box::new([])),
                    ),
                    IoReadError::UnexpectedFin | IoReadError::Reset => {
                        DriverError::Proto(ErrorCode::ClosedCriticalStream)
                    }
                    IoReadError::NotConnected => DriverError::NotConnected,
                },
            };
        }
    }
}

/// QUIVER PATCH (capsules as a byte stream, PATCHES.md 6): the CONNECT stream's capsules,
/// read across the DATA frames that carry them (RFC 9297 §3.3: a capsule may span frames, and
/// a frame hold several). Only a CLOSE_WEBTRANSPORT_SESSION is kept until whole (at most 4 +
/// 1,024 bytes of payload); any other capsule is skipped as it arrives.
/// (Its bytes, and what is left to skip of a capsule of another type, as a control stream's
/// frames are kept: `PendingFrame`.)
#[derive(Default)]
struct Capsules(super::PendingFrame);

/// CLOSE_WEBTRANSPORT_SESSION.
const CLOSE_SESSION: u64 = 0x2843;
/// Its longest payload: the error code and a reason of at most 1,024 bytes.
const MAX_CLOSE_PAYLOAD: u64 = 4 + 1024;

impl Capsules {
    fn push(&mut self, data: &[u8]) {
        self.0.bytes.extend_from_slice(data);
    }

    /// A stream ended here would cut a capsule short.
    fn is_cut(&self) -> bool {
        !self.0.bytes.is_empty() || self.0.skip > 0
    }

    /// The session's close, once a CLOSE_WEBTRANSPORT_SESSION capsule is whole (or found
    /// malformed: `H3_DATAGRAM_ERROR`); `None` while there is none yet.
    fn next_close(&mut self) -> Option<Result<capsules::CloseWebTransportSession, ErrorCode>> {
        use wtransport_proto::bytes::{BufferReader, BytesReader};
        let pending = &mut self.0;
        loop {
            if !pending.skipped() {
                return None;
            }
            let (kind, len, head) = {
                let mut reader = BufferReader::new(&pending.bytes);
                let kind = reader.get_varint()?.into_inner();
                let len = reader.get_varint()?.into_inner();
                (kind, len, reader.offset())
            };
            if kind != CLOSE_SESSION {
                debug!("Skipping a capsule of type {kind:#x}, {len} bytes");
                pending.bytes.drain(..head);
                pending.skip = len;
                continue;
            }
            if !(4..=MAX_CLOSE_PAYLOAD).contains(&len) {
                return Some(Err(ErrorCode::Datagram));
            }
            let end = head + len as usize;
            if pending.bytes.len() < end {
                return None;
            }
            let frame = Frame::new_data(std::borrow::Cow::Borrowed(&pending.bytes[..end]));
            return Some(match Capsule::with_frame(&frame) {
                Some(capsule) => capsules::CloseWebTransportSession::with_capsule(&capsule),
                None => Err(ErrorCode::Datagram),
            });
        }
    }
}
