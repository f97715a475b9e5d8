use crate::driver::utils::streamid_q2w;
use crate::driver::utils::varint_q2w;
use crate::driver::utils::varint_w2q;
use crate::error::ClosedStream;
use crate::error::StreamReadError;
use crate::error::StreamReadExactError;
use crate::error::StreamWriteError;
use crate::SessionId;
use crate::StreamId;
use crate::VarInt;
use std::pin::Pin;
use std::task::ready;
use std::task::Context;
use std::task::Poll;
use tokio::io::ReadBuf;
use wtransport_proto::frame::Frame;
use wtransport_proto::session::SessionRequest;
use wtransport_proto::stream as stream_proto;
use wtransport_proto::stream::Stream as StreamProto;
use wtransport_proto::stream_header::StreamHeader;
use wtransport_proto::stream_header::StreamKind;

pub type ProtoReadError = wtransport_proto::stream::IoReadError;
pub type ProtoWriteError = wtransport_proto::stream::IoWriteError;

/// QUIVER PATCH (cancel-safe frame reads, PATCHES.md 5): a control stream's bytes not yet
/// taken as a frame, kept across the driver's loop turns, and what is left to skip of a frame
/// of a type this crate does not know.
#[derive(Debug, Default)]
pub struct PendingFrame {
    bytes: Vec<u8>,
    skip: u64,
}

/// QUIVER PATCH (cancel-safe frame reads): the most bytes one `fill` takes from the stream.
const FILL_CHUNK: usize = 512;

impl PendingFrame {
    /// Gives the buffer's capacity back when nothing waits in it, before a wait that may last
    /// the connection's life (a frame taken, an unknown one skipped, a capsule read whole).
    pub(crate) fn shed(&mut self) {
        if self.bytes.is_empty() && self.bytes.capacity() > 0 {
            self.bytes = Vec::new();
        }
    }

    /// Drops what is left of an unknown frame from the buffered bytes; `true` when nothing is.
    fn skipped(&mut self) -> bool {
        let now = self.skip.min(self.bytes.len() as u64);
        self.bytes.drain(..now as usize);
        self.skip -= now;
        self.skip == 0
    }

    /// At a frame of a type this crate does not act on (RFC 9114 §9: GOAWAY, MAX_PUSH_ID,
    /// CANCEL_PUSH, PRIORITY_UPDATE, reserved types 0x1f * N + 0x21, unassigned types: to be
    /// ignored), drops its type and length and starts skipping its payload: `Ok(true)`.
    /// `Ok(false)` when the next frame is one the stream's parser takes (DATA, HEADERS,
    /// SETTINGS, WEBTRANSPORT_STREAM), or its type or length has not arrived whole. A client
    /// never sends PUSH_PROMISE, and HTTP/2's frame types are reserved in HTTP/3 (§7.2.8):
    /// `H3_FRAME_UNEXPECTED`.
    fn skip_unknown(&mut self) -> Result<bool, ProtoReadError> {
        use wtransport_proto::bytes::BytesReader;
        let mut reader = wtransport_proto::bytes::BufferReader::new(&self.bytes);
        let Some(kind) = reader.get_varint() else {
            return Ok(false);
        };
        match kind.into_inner() {
            0x00 | 0x01 | 0x04 | 0x41 => return Ok(false),
            0x02 | 0x05 | 0x06 | 0x08 | 0x09 => {
                return Err(ProtoReadError::H3(
                    wtransport_proto::error::ErrorCode::FrameUnexpected,
                ))
            }
            _ => {}
        }
        let Some(len) = reader.get_varint() else {
            return Ok(false);
        };
        let head = reader.offset();
        self.bytes.drain(..head);
        self.skip = len.into_inner();
        Ok(true)
    }

    /// The next frame of `recv` that `parse` (the stream's own parser, which validates the
    /// frame for the stream) takes, frames of unknown types skipped; cancel-safe.
    async fn read(
        &mut self,
        recv: &mut QuicRecvStream,
        mut parse: impl FnMut(
            &mut wtransport_proto::bytes::BufferReader<'_>,
        )
            -> Result<Option<Frame<'static>>, wtransport_proto::error::ErrorCode>,
    ) -> Result<Frame<'static>, ProtoReadError> {
        loop {
            // What is left of an unknown frame first, then any unknown frames whole.
            while self.skipped() && self.skip_unknown()? {}
            if self.skip == 0 && !self.bytes.is_empty() {
                let mut reader = wtransport_proto::bytes::BufferReader::new(&self.bytes);
                let parsed = parse(&mut reader).map_err(ProtoReadError::H3)?;
                let used = reader.offset();
                if let Some(frame) = parsed {
                    self.bytes.drain(..used);
                    return Ok(frame);
                }
            }
            self.fill(recv).await?;
        }
    }

    /// Reads what the stream has (quinn's `read_chunk` is cancel-safe: it reads something or
    /// nothing). The end of the stream is a clean end only between frames.
    ///
    /// A chunk quinn hands over, not a buffer in this future: the driver holds this read
    /// pending for the connection's whole life (the SETTINGS stream and the CONNECT stream
    /// each), so a buffer here made every connection's driver task larger, idle or not.
    async fn fill(&mut self, recv: &mut QuicRecvStream) -> Result<(), ProtoReadError> {
        use wtransport_proto::bytes::IoReadError;
        self.shed();
        match recv.read_chunk(FILL_CHUNK).await {
            Ok(Some(chunk)) => {
                self.bytes.extend_from_slice(&chunk);
                Ok(())
            }
            Ok(None) if self.bytes.is_empty() && self.skip == 0 => {
                Err(ProtoReadError::IO(IoReadError::ImmediateFin))
            }
            Ok(None) => Err(ProtoReadError::H3(
                wtransport_proto::error::ErrorCode::Frame,
            )),
            Err(StreamReadError::Reset(_)) => Err(ProtoReadError::IO(IoReadError::Reset)),
            Err(_) => Err(ProtoReadError::IO(IoReadError::NotConnected)),
        }
    }
}

/// QUIVER PATCH (cancel-safe frame reads): a frame parsed from `pending`, copied out of it.
fn owned_frame(frame: &Frame<'_>) -> Frame<'static> {
    use std::borrow::Cow;
    use wtransport_proto::frame::FrameKind;
    let payload = Cow::Owned(frame.payload().to_vec());
    match (frame.kind(), frame.session_id()) {
        (FrameKind::WebTransport, Some(session_id)) => Frame::new_webtransport(session_id),
        (FrameKind::Headers, _) => Frame::new_headers(payload),
        (FrameKind::Settings, _) => Frame::new_settings(payload),
        (FrameKind::Exercise(id), _) => Frame::new_exercise(id, payload),
        _ => Frame::new_data(payload),
    }
}

#[derive(Debug)]
pub struct AlreadyStop;

#[derive(Debug)]
pub struct QuicSendStream(quinn::SendStream);

impl QuicSendStream {
    #[inline(always)]
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, StreamWriteError> {
        let written = self.0.write(buf).await?;
        Ok(written)
    }

    #[inline(always)]
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), StreamWriteError> {
        self.0.write_all(buf).await?;
        Ok(())
    }

    #[inline(always)]
    pub async fn finish(&mut self) -> Result<(), StreamWriteError> {
        let _ = self.0.finish();
        let result = self.stopped().await;
        if matches!(result, StreamWriteError::Closed) {
            Ok(())
        } else {
            Err(result)
        }
    }

    #[inline(always)]
    pub fn set_priority(&self, priority: i32) {
        let _ = self.0.set_priority(priority);
    }

    #[inline(always)]
    /// # Panics
    ///
    /// If `reset` was called.
    pub fn priority(&self) -> i32 {
        self.0.priority().expect("Stream has been reset")
    }

    pub async fn stopped(&mut self) -> StreamWriteError {
        match self.0.stopped().await {
            Ok(None) => StreamWriteError::Closed,
            Ok(Some(code)) => StreamWriteError::Stopped(varint_q2w(code)),
            Err(quinn::StoppedError::ConnectionLost(_)) => StreamWriteError::NotConnected,
            Err(quinn::StoppedError::ZeroRttRejected) => StreamWriteError::QuicProto,
        }
    }

    #[inline(always)]
    pub fn reset(&mut self, error_code: VarInt) -> Result<(), ClosedStream> {
        self.0
            .reset(varint_w2q(error_code))
            .map_err(|_| ClosedStream)
    }

    #[inline(always)]
    pub fn id(&self) -> StreamId {
        streamid_q2w(self.0.id())
    }

    #[cfg(feature = "quinn")]
    #[cfg_attr(docsrs, doc(cfg(feature = "quinn")))]
    #[inline(always)]
    pub fn quic_stream(&self) -> &quinn::SendStream {
        &self.0
    }

    #[cfg(feature = "quinn")]
    #[cfg_attr(docsrs, doc(cfg(feature = "quinn")))]
    #[inline(always)]
    pub fn quic_stream_mut(&mut self) -> &mut quinn::SendStream {
        &mut self.0
    }
}

impl wtransport_proto::bytes::AsyncWrite for QuicSendStream {
    #[inline(always)]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }
}

impl tokio::io::AsyncWrite for QuicSendStream {
    #[inline(always)]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, std::io::Error>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    #[inline(always)]
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), std::io::Error>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    #[inline(always)]
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), std::io::Error>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
    }

    #[inline(always)]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<Result<usize, std::io::Error>> {
        tokio::io::AsyncWrite::poll_write_vectored(Pin::new(&mut self.0), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        tokio::io::AsyncWrite::is_write_vectored(&self.0)
    }
}

#[derive(Debug)]
pub struct QuicRecvStream(quinn::RecvStream);

impl QuicRecvStream {
    #[inline(always)]
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, StreamReadError> {
        match self.0.read(buf).await? {
            Some(read) => Ok(Some(read)),
            None => Ok(None),
        }
    }

    /// QUIVER PATCH (cancel-safe frame reads): at most `max` bytes, in order, as quinn holds
    /// them (no buffer of the caller's); `None` at the stream's end.
    #[inline(always)]
    pub async fn read_chunk(
        &mut self,
        max: usize,
    ) -> Result<Option<bytes::Bytes>, StreamReadError> {
        Ok(self.0.read_chunk(max, true).await?.map(|chunk| chunk.bytes))
    }

    #[inline(always)]
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), StreamReadExactError> {
        self.0
            .read_exact(buf)
            .await
            .map_err(|quic_error| match quic_error {
                quinn::ReadExactError::FinishedEarly(read) => {
                    StreamReadExactError::FinishedEarly(read)
                }
                quinn::ReadExactError::ReadError(read) => StreamReadExactError::Read(read.into()),
            })
    }

    #[inline(always)]
    pub fn stop(&mut self, error_code: VarInt) -> Result<(), AlreadyStop> {
        self.0.stop(varint_w2q(error_code)).map_err(|_| AlreadyStop)
    }

    #[inline(always)]
    pub fn id(&self) -> StreamId {
        streamid_q2w(self.0.id())
    }

    #[cfg(feature = "quinn")]
    #[cfg_attr(docsrs, doc(cfg(feature = "quinn")))]
    #[inline(always)]
    pub fn quic_stream(&self) -> &quinn::RecvStream {
        &self.0
    }

    #[cfg(feature = "quinn")]
    #[cfg_attr(docsrs, doc(cfg(feature = "quinn")))]
    #[inline(always)]
    pub fn quic_stream_mut(&mut self) -> &mut quinn::RecvStream {
        &mut self.0
    }
}

impl wtransport_proto::bytes::AsyncRead for QuicRecvStream {
    #[inline(always)]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut buffer = ReadBuf::new(buf);

        match ready!(tokio::io::AsyncRead::poll_read(
            Pin::new(&mut self.0),
            cx,
            &mut buffer
        )) {
            Ok(()) => Poll::Ready(Ok(buffer.filled().len())),
            Err(io_error) => Poll::Ready(Err(io_error)),
        }
    }
}

impl tokio::io::AsyncRead for QuicRecvStream {
    #[inline(always)]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, buf)
    }
}

#[derive(Debug)]
pub struct Stream<S, P> {
    stream: S,
    proto: P,
}

pub mod biremote {
    use super::*;

    pub type StreamBiRemoteQuic =
        Stream<(QuicSendStream, QuicRecvStream), stream_proto::biremote::StreamBiRemoteQuic>;

    pub type StreamBiRemoteH3 =
        Stream<(QuicSendStream, QuicRecvStream), stream_proto::biremote::StreamBiRemoteH3>;

    pub type StreamBiRemoteWT =
        Stream<(QuicSendStream, QuicRecvStream), stream_proto::biremote::StreamBiRemoteWT>;

    impl StreamBiRemoteQuic {
        pub async fn accept_bi(quic_connection: &quinn::Connection) -> Option<Self> {
            let stream = quic_connection.accept_bi().await.ok()?;
            Some(Self {
                stream: (QuicSendStream(stream.0), QuicRecvStream(stream.1)),
                proto: StreamProto::accept_bi(),
            })
        }

        pub fn upgrade(self) -> StreamBiRemoteH3 {
            StreamBiRemoteH3 {
                stream: self.stream,
                proto: self.proto.upgrade(),
            }
        }

        #[inline(always)]
        pub fn id(&self) -> StreamId {
            self.stream.0.id()
        }
    }

    impl StreamBiRemoteH3 {
        pub async fn read_frame<'a>(&mut self) -> Result<Frame<'a>, ProtoReadError> {
            self.proto.read_frame_async(&mut self.stream.1).await
        }

        pub fn stop(&mut self, error_code: VarInt) -> Result<(), AlreadyStop> {
            self.stream.1.stop(error_code)
        }

        pub fn upgrade(self, session_id: SessionId) -> StreamBiRemoteWT {
            StreamBiRemoteWT {
                stream: self.stream,
                proto: self.proto.upgrade(session_id),
            }
        }

        pub fn id(&self) -> StreamId {
            self.stream.0.id()
        }

        pub fn into_session(self, session_request: SessionRequest) -> session::StreamSession {
            session::StreamSession {
                stream: self.stream,
                proto: self.proto.into_session(session_request),
            }
        }
    }

    impl StreamBiRemoteWT {
        #[inline(always)]
        pub fn session_id(&self) -> SessionId {
            self.proto.session_id()
        }

        #[inline(always)]
        pub fn id(&self) -> StreamId {
            self.stream.0.id()
        }

        #[inline(always)]
        pub fn into_stream(self) -> (QuicSendStream, QuicRecvStream) {
            self.stream
        }
    }
}

pub mod bilocal {
    use super::*;

    pub type StreamBiLocalQuic =
        Stream<(QuicSendStream, QuicRecvStream), stream_proto::bilocal::StreamBiLocalQuic>;

    pub type StreamBiLocalH3 =
        Stream<(QuicSendStream, QuicRecvStream), stream_proto::bilocal::StreamBiLocalH3>;

    pub type StreamBiLocalWT =
        Stream<(QuicSendStream, QuicRecvStream), stream_proto::bilocal::StreamBiLocalWT>;

    impl StreamBiLocalQuic {
        pub async fn open_bi(quic_connection: &quinn::Connection) -> Option<Self> {
            let stream = quic_connection.open_bi().await.ok()?;
            Some(Self {
                stream: (QuicSendStream(stream.0), QuicRecvStream(stream.1)),
                proto: StreamProto::open_bi(),
            })
        }

        pub fn upgrade(self) -> StreamBiLocalH3 {
            StreamBiLocalH3 {
                stream: self.stream,
                proto: self.proto.upgrade(),
            }
        }
    }

    impl StreamBiLocalH3 {
        pub async fn upgrade(
            mut self,
            session_id: SessionId,
        ) -> Result<StreamBiLocalWT, ProtoWriteError> {
            let proto = self
                .proto
                .upgrade_async(session_id, &mut self.stream.0)
                .await?;

            Ok(StreamBiLocalWT {
                stream: self.stream,
                proto,
            })
        }

        pub fn into_session(self, session_request: SessionRequest) -> session::StreamSession {
            session::StreamSession {
                stream: self.stream,
                proto: self.proto.into_session(session_request),
            }
        }
    }

    impl StreamBiLocalWT {
        pub fn into_stream(self) -> (QuicSendStream, QuicRecvStream) {
            self.stream
        }
    }
}

pub mod uniremote {
    use super::*;

    pub type StreamUniRemoteQuic =
        Stream<QuicRecvStream, stream_proto::uniremote::StreamUniRemoteQuic>;

    pub type StreamUniRemoteH3 = Stream<QuicRecvStream, stream_proto::uniremote::StreamUniRemoteH3>;

    pub type StreamUniRemoteWT = Stream<QuicRecvStream, stream_proto::uniremote::StreamUniRemoteWT>;

    impl StreamUniRemoteQuic {
        pub async fn accept_uni(quic_connection: &quinn::Connection) -> Option<Self> {
            let stream = quic_connection.accept_uni().await.ok()?;
            Some(Self {
                stream: QuicRecvStream(stream),
                proto: StreamProto::accept_uni(),
            })
        }

        pub async fn upgrade(mut self) -> Result<StreamUniRemoteH3, ProtoReadError> {
            let proto = self.proto.upgrade_async(&mut self.stream).await?;
            Ok(StreamUniRemoteH3 {
                stream: self.stream,
                proto,
            })
        }

        #[inline(always)]
        pub fn id(&self) -> StreamId {
            self.stream.id()
        }
    }

    impl StreamUniRemoteH3 {
        /// QUIVER PATCH (cancel-safe frame reads, PATCHES.md 5): replaces `read_frame`: bytes
        /// read before the future is dropped wait in `pending` for the next call, so it may be
        /// raced in a `select!` (the driver's loop drops it at every other event).
        pub async fn read_frame_pending(
            &mut self,
            pending: &mut PendingFrame,
        ) -> Result<Frame<'static>, ProtoReadError> {
            let proto = &mut self.proto;
            pending
                .read(&mut self.stream, |reader| {
                    Ok(proto
                        .read_frame_from_buffer(reader)?
                        .map(|frame| owned_frame(&frame)))
                })
                .await
        }

        pub fn kind(&self) -> StreamKind {
            self.proto.kind()
        }

        pub fn upgrade(self) -> StreamUniRemoteWT {
            StreamUniRemoteWT {
                stream: self.stream,
                proto: self.proto.upgrade(),
            }
        }

        pub fn stream_mut(&mut self) -> &mut QuicRecvStream {
            &mut self.stream
        }
    }

    impl StreamUniRemoteWT {
        #[inline(always)]
        pub fn session_id(&self) -> SessionId {
            self.proto.session_id()
        }

        #[inline(always)]
        pub fn id(&self) -> StreamId {
            self.stream.id()
        }

        #[inline(always)]
        pub fn into_stream(self) -> QuicRecvStream {
            self.stream
        }
    }
}

pub mod unilocal {
    use super::*;

    pub type StreamUniLocalQuic =
        Stream<QuicSendStream, stream_proto::unilocal::StreamUniLocalQuic>;

    pub type StreamUniLocalH3 = Stream<QuicSendStream, stream_proto::unilocal::StreamUniLocalH3>;

    pub type StreamUniLocalWT = Stream<QuicSendStream, stream_proto::unilocal::StreamUniLocalWT>;

    impl StreamUniLocalQuic {
        pub async fn open_uni(quic_connection: &quinn::Connection) -> Option<Self> {
            let stream = quic_connection.open_uni().await.ok()?;
            Some(Self {
                stream: QuicSendStream(stream),
                proto: StreamProto::open_uni(),
            })
        }

        pub async fn upgrade(
            mut self,
            stream_header: StreamHeader,
        ) -> Result<StreamUniLocalH3, ProtoWriteError> {
            let proto = self
                .proto
                .upgrade_async(stream_header, &mut self.stream)
                .await?;

            Ok(StreamUniLocalH3 {
                stream: self.stream,
                proto,
            })
        }
    }

    impl StreamUniLocalH3 {
        pub async fn write_frame(&mut self, frame: Frame<'_>) -> Result<(), ProtoWriteError> {
            self.proto.write_frame_async(frame, &mut self.stream).await
        }

        pub fn kind(&self) -> StreamKind {
            self.proto.kind()
        }

        pub async fn stopped(&mut self) -> StreamWriteError {
            self.stream.stopped().await
        }

        pub fn upgrade(self) -> StreamUniLocalWT {
            StreamUniLocalWT {
                stream: self.stream,
                proto: self.proto.upgrade(),
            }
        }
    }

    impl StreamUniLocalWT {
        pub fn into_stream(self) -> QuicSendStream {
            self.stream
        }
    }
}

pub mod session {
    use super::*;

    pub type StreamSession =
        Stream<(QuicSendStream, QuicRecvStream), stream_proto::session::StreamSession>;

    impl StreamSession {
        pub async fn read_frame<'a>(&mut self) -> Result<Frame<'a>, ProtoReadError> {
            self.proto.read_frame_async(&mut self.stream.1).await
        }

        /// QUIVER PATCH (cancel-safe frame reads, PATCHES.md 5): see
        /// `StreamUniRemoteH3::read_frame_pending`.
        pub async fn read_frame_pending(
            &mut self,
            pending: &mut PendingFrame,
        ) -> Result<Frame<'static>, ProtoReadError> {
            let proto = &mut self.proto;
            pending
                .read(&mut self.stream.1, |reader| {
                    Ok(proto
                        .read_frame_from_buffer(reader)?
                        .map(|frame| owned_frame(&frame)))
                })
                .await
        }

        pub async fn write_frame(&mut self, frame: Frame<'_>) -> Result<(), ProtoWriteError> {
            self.proto
                .write_frame_async(frame, &mut self.stream.0)
                .await
        }

        pub fn stop(&mut self, error_code: VarInt) -> Result<(), AlreadyStop> {
            self.stream.1.stop(error_code)
        }

        pub fn id(&self) -> StreamId {
            self.stream.0.id()
        }

        pub fn session_id(&self) -> SessionId {
            SessionId::try_from_session_stream(self.id()).expect("Session stream must be valid")
        }

        pub fn request(&self) -> &SessionRequest {
            self.proto.request()
        }

        pub async fn finish(&mut self) {
            let _ = self.stream.0.finish().await;
        }

        pub fn reset(&mut self, error_code: VarInt) {
            let _ = self.stream.0.reset(error_code);
        }
    }
}

impl From<quinn::WriteError> for StreamWriteError {
    fn from(error: quinn::WriteError) -> Self {
        match error {
            quinn::WriteError::Stopped(code) => StreamWriteError::Stopped(varint_q2w(code)),
            quinn::WriteError::ConnectionLost(_) | quinn::WriteError::ClosedStream => {
                StreamWriteError::NotConnected
            }
            quinn::WriteError::ZeroRttRejected => StreamWriteError::QuicProto,
        }
    }
}

impl From<quinn::ReadError> for StreamReadError {
    fn from(error: quinn::ReadError) -> Self {
        match error {
            quinn::ReadError::Reset(code) => StreamReadError::Reset(varint_q2w(code)),
            quinn::ReadError::ConnectionLost(_) | quinn::ReadError::ClosedStream => {
                StreamReadError::NotConnected
            }
            quinn::ReadError::IllegalOrderedRead => StreamReadError::QuicProto,
            quinn::ReadError::ZeroRttRejected => StreamReadError::QuicProto,
        }
    }
}

pub mod connect;
pub mod qpack;
pub mod settings;
