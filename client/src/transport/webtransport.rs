//! WebTransport (PROTOCOL.md sections 1–2): the CONNECT, the control stream (commands out,
//! replies in), and one server-opened unidirectional stream per subscription.

use std::time::Duration;

use bytes::Bytes;
use quiver_proto::{
    decode_event, encode_command, ClientFrame, Command, DecodeError, Event, FrameDecoder,
    ServerFrame, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::task::JoinSet;
use wtransport::endpoint::endpoint_side;
use wtransport::error::{ConnectingError, ConnectionError};
use wtransport::{Connection, Endpoint, RecvStream, SendStream, VarInt};

use super::{frame_room, handshake_reply, Link, RunCtx, SubStream};
use crate::client::WelcomeInfo;
use crate::config::{connect_url, redact, ClientConfig};
use crate::connection::{ConnEvent, EventTx, HELLO_ID};
use crate::error::{clip, ClientError};
use crate::heartbeat::Liveness;
use crate::writer::{writer, FrameSink, WriterHandle};

/// Read size for streams.
const READ_CHUNK: usize = 16 * 1024;

/// The client's QUIC endpoint, made once per client.
pub(crate) struct WtEndpoint(Endpoint<endpoint_side::Client>);

impl WtEndpoint {
    pub(crate) async fn new(cfg: &ClientConfig) -> Result<Self, ClientError> {
        let config = cfg.wtransport_config().await?;
        Endpoint::client(config)
            .map(WtEndpoint)
            .map_err(|e| ClientError::Connect(format!("cannot create endpoint: {e}")))
    }

    /// CONNECT, control stream, `Hello`, `Welcome`.
    pub(crate) async fn connect(
        &self,
        base: &str,
        cfg: &ClientConfig,
        token: &str,
    ) -> Result<(WtIo, WelcomeInfo), ClientError> {
        let url = connect_url(base, token)?;
        tracing::debug!(url = %redact(&url), "connecting over WebTransport");
        let conn = self.0.connect(url.as_str()).await.map_err(|e| match e {
            // The configured URL may carry a token of its own (`connect_url` replaces it, but
            // the base is what errors name): never put it in an error or a log line.
            ConnectingError::SessionRejected => ClientError::Refused {
                url: redact(base),
                status: None,
            },
            // rustls's verdict on the certificate, carried by the QUIC close the client sent.
            ConnectingError::ConnectionError(ConnectionError::QuicProto(ref proto))
                if proto.to_string().contains("invalid peer certificate") =>
            {
                // rustls says `UnknownIssuer` for a certificate whose hash is not pinned: say
                // what that means here (outside audit 61, L6).
                let pinned = match &cfg.trust {
                    crate::Trust::CertHashes(_) => {
                        " (with Trust::CertHashes: its SHA-256 is none of the pinned hashes, or it is valid for more than 14 days)"
                    }
                    _ => "",
                };
                ClientError::Certificate(format!("{}: {proto}{pinned}", redact(base)))
            }
            other => ClientError::Connect(format!("{}: {other}", redact(base))),
        })?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Connect(format!("opening control stream: {e}")))?
            .await
            .map_err(|e| ClientError::Connect(format!("opening control stream: {e}")))?;
        let hello = encode_command(&ClientFrame {
            id: HELLO_ID,
            command: Command::Hello {
                version: PROTOCOL_VERSION,
                client: cfg.client_name.clone(),
            },
        });
        send.write_all(&hello)
            .await
            .map_err(|e| ClientError::Connect(format!("sending Hello: {e}")))?;

        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        loop {
            while let Some(body) = dec
                .next_frame()
                .map_err(|e| ClientError::Protocol(format!("control stream: {e}")))?
            {
                let frame = match decode_event(&body) {
                    Ok(f) => f,
                    Err(DecodeError::UnknownType { .. }) => continue,
                    Err(e) => return Err(ClientError::Protocol(format!("control stream: {e}"))),
                };
                return match handshake_reply(frame) {
                    Ok(welcome) => Ok((
                        WtIo {
                            conn,
                            send,
                            recv,
                            dec,
                        },
                        welcome,
                    )),
                    Err(e) => {
                        close(&conn, "handshake failed");
                        Err(e)
                    }
                };
            }
            match read_chunk(&mut recv).await {
                Ok(Some(bytes)) => dec.push(&bytes),
                Ok(None) => {
                    return Err(ClientError::Connect(
                        "control stream closed before Welcome".into(),
                    ))
                }
                Err(e) => {
                    // The server announces closes with a Goodbye, but the QUIC close may win
                    // the race: look at the connection's close code.
                    let (code, reason) = close_info(&conn.closed().await);
                    return Err(if crate::connection::code_forbids_reconnect(code) {
                        super::goodbye_error(code, reason, false)
                    } else {
                        ClientError::Connect(format!(
                            "connection closed before Welcome: {e}; {reason}"
                        ))
                    });
                }
            }
        }
    }
}

/// A WebTransport session after `Welcome`.
pub(crate) struct WtIo {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    dec: FrameDecoder,
}

impl WtIo {
    pub(super) fn run(self, ctx: RunCtx, tasks: &mut JoinSet<()>) -> (Link, WriterHandle) {
        let WtIo {
            conn,
            send,
            recv,
            mut dec,
        } = self;
        // The handshake's decoder took frames up to the default only; from `Welcome` on, the
        // session's `max_frame` holds on every stream (PROTOCOL.md §3), control stream included:
        // a `History` page, a `Presence` list or a `Call`'s `Reply` fills up to it (outside
        // audit 103, F1: replies over 64 KiB ended the session, over and over).
        dec.set_max_frame(ctx.max_frame);
        let (handle, write_task) =
            writer(ControlSink(send), ctx.pacer, ctx.events.clone(), ctx.epoch);
        tasks.spawn(write_task);
        tasks.spawn(control_reader(
            recv,
            dec,
            ctx.events.clone(),
            ctx.control_credit.clone(),
            ctx.epoch,
            ctx.liveness.clone(),
        ));
        tasks.spawn(accept_streams(
            conn.clone(),
            ctx.max_frame,
            ctx.header_timeout,
            Breaker {
                events: ctx.events.clone(),
                epoch: ctx.epoch,
            },
            ctx.liveness,
        ));
        tasks.spawn(read_datagrams(conn.clone(), ctx.latest_routes));
        tasks.spawn(watch_closed(conn.clone(), ctx.events, ctx.epoch));
        (Link::WebTransport(conn), handle)
    }

    pub(super) fn abandon(self, reason: &str) {
        close(&self.conn, reason);
    }
}

pub(super) fn close(conn: &Connection, reason: &str) {
    conn.close(VarInt::from_u32(0), reason.as_bytes());
}

/// The control stream's send side. Finished only by the client's close, behind its last
/// commands (FACTS.md: no `finish()` on hot paths); otherwise the connection's close ends it.
struct ControlSink(SendStream);

impl FrameSink for ControlSink {
    async fn write(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String> {
        let bytes = if frames.len() == 1 {
            frames.into_iter().next().unwrap_or_default()
        } else {
            frames.concat()
        };
        self.0.write_all(&bytes).await.map_err(|e| e.to_string())
    }

    /// The FIN, behind the last frame: the server carries out what came before it, then closes
    /// the connection (code 0), which ends the client's wait. The wait for the FIN's
    /// acknowledgement that `finish` adds ends with the connection (or the close's bound).
    async fn finish(&mut self) {
        let _ = self.0.finish().await;
    }
}

/// The application close code and reason of a closed connection, if it has them.
pub(crate) fn close_info(err: &ConnectionError) -> (u16, String) {
    match err {
        ConnectionError::ApplicationClosed(close) => (
            u16::try_from(close.code().into_inner()).unwrap_or(0),
            clip(&String::from_utf8_lossy(close.reason())),
        ),
        other => (0, other.to_string()),
    }
}

/// Reads the control stream and hands every frame to the state machine.
async fn control_reader(
    mut recv: RecvStream,
    mut dec: FrameDecoder,
    events: EventTx,
    credit: std::sync::Arc<tokio::sync::Semaphore>,
    epoch: u64,
    liveness: std::sync::Arc<Liveness>,
) {
    let lost = |reason: String| (epoch, ConnEvent::Lost { code: 0, reason });
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(body)) => match decode_event(&body) {
                    Ok(frame) => {
                        // Waits while the state machine is behind (`CONTROL_CREDIT`): the
                        // stream's flow control then holds the server back.
                        let Ok(place) = credit.clone().acquire_owned().await else {
                            return;
                        };
                        if events
                            .send((epoch, ConnEvent::Frame(frame, place)))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(DecodeError::UnknownType { id, kind }) => {
                        tracing::debug!(id, kind, "ignoring unknown event type");
                    }
                    Err(e) => {
                        let _ = events.send(lost(format!("malformed control frame: {e}")));
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let _ = events.send(lost(format!("bad control frame: {e}")));
                    return;
                }
            }
        }
        match read_chunk(&mut recv).await {
            Ok(Some(bytes)) => {
                liveness.touch();
                dec.push(&bytes);
            }
            // The server ended the control stream or the connection: the QUIC close (watched
            // by `watch_closed`) usually carries the code; wait briefly for it.
            Ok(None) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = events.send(lost("control stream ended".into()));
                return;
            }
        }
    }
}

/// Hands the server's datagrams (values of `latest` rooms) to their subscriptions.
async fn read_datagrams(conn: Connection, routes: crate::latest::LatestRoutes) {
    while let Ok(datagram) = conn.receive_datagram().await {
        // One naming another session is for none (the patched wtransport hands it over).
        if datagram.session_id() == conn.session_id() {
            crate::latest::route(&routes, &datagram.payload());
        }
    }
}

/// Reports the connection's close (with the server's close code, if any).
async fn watch_closed(conn: Connection, events: EventTx, epoch: u64) {
    let err = conn.closed().await;
    let (code, reason) = close_info(&err);
    if code != 0 {
        // A server that closes with a code said `Goodbye` first on the control stream, and
        // what it answered before it counts only if that frame is handled first (a drain's
        // unanswered acknowledged publishes go again): the control reader gets a moment to
        // hand it over (outside audit 73). Less than the reader's own wait after the stream
        // ends, so the code still comes first.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = events.send((epoch, ConnEvent::Lost { code, reason }));
}

/// Ends the connection for a frame that breaks the protocol on a subscription stream: reports
/// it lost to the state machine, which closes it, reconnects with backoff and resubscribes
/// from the last delivered position, as for a bad frame on the control stream or on WebSocket
/// (where every room shares the socket). Ending only that stream left the room quiet and the
/// application never told. The connection's own close code stays 0 (the client's close, as
/// the WebSocket reader's 1000): the protocol's codes are the server's (3001 would say the
/// *client* broke the protocol).
#[derive(Clone)]
struct Breaker {
    events: EventTx,
    epoch: u64,
}

impl Breaker {
    fn broken(&self, reason: String) {
        tracing::warn!(%reason, "ending the connection");
        // Tagged with the connection's epoch: after a teardown it is ignored.
        let _ = self
            .events
            .send((self.epoch, ConnEvent::Lost { code: 0, reason }));
    }
}

/// Largest `SubscriptionStream` header taken (its room name is at most 128 bytes): a stream the
/// server opens holds no more than this of the client's memory until it names its room (outside
/// audit 103, F5: 259 streams each announcing a first frame of almost `max_frame` and stalling
/// held about 580 MB).
const MAX_HEADER: usize = 4 * 1024;

/// Accepts server-opened subscription streams and reads their `SubscriptionStream` header, each
/// within `header_timeout` of the stream's arrival.
async fn accept_streams(
    conn: Connection,
    max_frame: usize,
    header_timeout: Duration,
    breaker: Breaker,
    liveness: std::sync::Arc<Liveness>,
) {
    let mut headers = JoinSet::new();
    loop {
        tokio::select! {
            res = conn.accept_uni() => match res {
                Ok(recv) => {
                    let stream = WtStream {
                        recv,
                        dec: FrameDecoder::new(MAX_HEADER),
                        breaker: breaker.clone(),
                        room: None,
                    };
                    let header = read_header(stream, max_frame, liveness.clone());
                    let breaker = breaker.clone();
                    headers.spawn(async move {
                        // A server writes the header as it opens the stream: one that does not
                        // within the bound is broken or hostile, and must not hold the stream
                        // (and its buffered bytes) for the connection's life.
                        if tokio::time::timeout(header_timeout, header).await.is_err() {
                            breaker.broken(format!(
                                "a unidirectional stream sent no SubscriptionStream header \
                                 within {header_timeout:?}"
                            ));
                        }
                    });
                }
                Err(_) => return,
            },
            Some(_) = headers.join_next(), if !headers.is_empty() => {}
        }
    }
}

async fn read_header(mut stream: WtStream, max_frame: usize, liveness: std::sync::Arc<Liveness>) {
    match stream.next(&liveness).await {
        Some(ServerFrame {
            id,
            event: Event::SubscriptionStream { room },
        }) => {
            // The room's frames may be as large as the session allows.
            stream.dec.set_max_frame(max_frame);
            stream.room = Some(room.clone());
            let Breaker { events, epoch } = stream.breaker.clone();
            let _ = events.send((
                epoch,
                ConnEvent::Stream {
                    id,
                    room,
                    stream: SubStream::WebTransport(stream),
                    credit: None,
                },
            ));
        }
        // The id only: the frame may be a large publication.
        Some(other) => stream.breaker.broken(format!(
            "a unidirectional stream began without its SubscriptionStream header (frame id {})",
            other.id
        )),
        // Finished or reset before its header: nothing of a subscription to lose.
        None => {}
    }
}

/// One server-opened subscription stream.
pub(crate) struct WtStream {
    recv: RecvStream,
    dec: FrameDecoder,
    /// Where a frame that breaks the protocol is reported.
    breaker: Breaker,
    /// The room its header named: the only room its frames may name (PROTOCOL.md §2).
    room: Option<String>,
}

impl WtStream {
    /// The next known frame; `None` when the stream finished, was reset, or went bad (a bad
    /// frame has then ended the connection: see [`Breaker`]). A frame naming another room than
    /// the header's is bad: delivered, it would be taken for that room's message, and its
    /// position for this room's resume point (outside audit G3).
    pub(super) async fn next(&mut self, liveness: &Liveness) -> Option<ServerFrame> {
        loop {
            match self.dec.next_frame() {
                Ok(Some(body)) => match decode_event(&body) {
                    Ok(frame) => {
                        let foreign = self.room.as_deref().is_some_and(|room| {
                            frame_room(&frame.event).is_some_and(|named| named != room)
                        });
                        if foreign {
                            // Neither name logged: the server chose them, up to `max_frame`.
                            self.breaker.broken(format!(
                                "a frame naming another room on a room's stream (frame id {})",
                                frame.id
                            ));
                            return None;
                        }
                        return Some(frame);
                    }
                    Err(DecodeError::UnknownType { .. }) => continue,
                    Err(e) => {
                        self.breaker
                            .broken(format!("malformed frame on a subscription stream: {e}"));
                        return None;
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    let what = if self.room.is_some() {
                        "frame"
                    } else {
                        "header"
                    };
                    self.breaker
                        .broken(format!("bad {what} on a subscription stream: {e}"));
                    return None;
                }
            }
            match read_chunk(&mut self.recv).await {
                Ok(Some(bytes)) => {
                    liveness.touch();
                    self.dec.push(&bytes);
                }
                // Finished (unsubscribed or ended by the server) or reset, or the connection died.
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Reads and discards a stale subscription stream until it ends.
    pub(super) async fn drain(mut self) {
        while let Ok(Some(_)) = read_chunk(&mut self.recv).await {}
    }
}

/// Reads whatever the stream has (up to [`READ_CHUNK`] bytes) without a per-stream buffer:
/// quinn hands out its own `Bytes`. `Ok(None)` when the stream finished.
async fn read_chunk(recv: &mut RecvStream) -> Result<Option<Bytes>, String> {
    match recv.quic_stream_mut().read_chunk(READ_CHUNK, true).await {
        Ok(Some(chunk)) => Ok(Some(chunk.bytes)),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}
