//! WebSocket (PROTOCOL.md section 9): the upgrade with the token in an `Authorization` header,
//! one frame per binary message from the client, one or more frames per message from the
//! server, and every subscription's frames interleaved on the one socket.
//!
//! The reader splits the socket back into what WebTransport would have delivered separately:
//! control events go to the state machine, each subscription's frames to a [`super::SubStream`]
//! of its own, keyed by room (`websocket/router.rs`). Per room only the latest `SubscriptionStream` counts; frames naming a room
//! with no current share are stale and dropped, and `Unsubscribed` ends the room's share (the
//! server sends nothing of a subscription after it). Whether a share belongs to the client's
//! *latest* `Subscribe` is the state machine's check (`SubscriptionStream` id), as on
//! WebTransport.
//!
//! TCP has no per-room flow control, so a room whose application queue is full must not stop the
//! socket (that would stall every room, replies and pings): its share holds
//! [`super::WS_SUB_BYTES`] of frames (each weighing what it carries and a fixed overhead:
//! [`super::event_bytes`]), and past that the subscription ends as a slow consumer on the
//! client side (`ConnEvent::Overflow`), as the server would end it on WebTransport.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use quiver_proto::{
    decode_event, encode_command, ClientFrame, Command, DecodeError, FrameDecoder,
    DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{
    connect_async_tls_with_config, Connector, MaybeTlsStream, WebSocketStream,
};
use wtransport::tls::rustls;

use super::{handshake_reply, Link, RunCtx};
use crate::client::WelcomeInfo;
use crate::config::{redact, ws_url, ClientConfig};
use crate::connection::HELLO_ID;
use crate::error::{clip, ClientError};
use crate::writer::{writer, FrameSink, WriterHandle};

mod router;

use router::{max_message, reader, Router};

pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type WsSink = Arc<Mutex<SplitSink<Ws, Message>>>;

/// Most bytes waiting to be written to the socket (tungstenite's write buffer).
const MAX_WRITE_BUFFER: usize = 2 * quiver_proto::MAX_MAX_FRAME as usize + 128 * 1024;

/// How long a close frame may take to go out before the socket is just dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// WebSocket close reasons are at most 123 bytes.
const MAX_CLOSE_REASON: usize = 123;

/// Whether `url` needs TLS.
pub(super) fn is_secure(url: &str) -> bool {
    url.get(..4).is_some_and(|s| s.eq_ignore_ascii_case("wss:"))
}

/// The rustls configuration for `wss://`: the client's trust settings (system roots, a CA file
/// or pinned hashes) on the `ring` provider, with HTTP/1.1 as ALPN for the upgrade.
pub(super) async fn tls_config(
    cfg: &ClientConfig,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut tls = cfg.tls_config().await?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Upgrade, `Hello`, `Welcome`.
pub(super) async fn connect(
    base: &str,
    cfg: &ClientConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: &str,
) -> Result<(WsIo, WelcomeInfo), ClientError> {
    let url = ws_url(base)?;
    // The configured URL may carry a token (the server reads only the header's, but a URL
    // copied from a WebTransport one may hold it): never logged nor put in an error as is.
    let shown = redact(base);
    tracing::debug!(url = %redact(&url), "connecting over WebSocket");
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Connect(format!("invalid URL {shown:?}: {e}")))?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ClientError::Token("the token is not a valid HTTP header value".into()))?;
    auth.set_sensitive(true);
    request.headers_mut().insert(AUTHORIZATION, auth);
    // No message larger than the largest this client could take from any session (its frame
    // ceiling, PROTOCOL.md 9.2's batching): the reader bounds each by the session's own
    // `max_frame` once `Welcome` said it; this bounds the first, and what tungstenite buffers.
    let largest = max_message(cfg.frame_ceiling());
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(largest))
        .max_frame_size(Some(largest))
        // What waits to be written is bounded: a server that sends pings and reads nothing
        // made the answering pongs pile up without end (outside audit: 1 GiB in 12 s, and the
        // pings kept the connection looking alive). Past it the connection fails and is
        // replaced. Room for the largest frame the client may send, twice.
        .max_write_buffer_size(MAX_WRITE_BUFFER);
    let connector = tls.map(Connector::Rustls);
    let (mut ws, _response) =
        connect_async_tls_with_config(request, Some(ws_config), true, connector)
            .await
            .map_err(|e| match e {
                WsError::Http(response) if response.status().is_client_error() => {
                    ClientError::Refused {
                        url: shown.clone(),
                        status: Some(response.status().as_u16()),
                    }
                }
                other => ClientError::Connect(format!("{shown}: {other}")),
            })?;

    let hello = encode_command(&ClientFrame {
        id: HELLO_ID,
        command: Command::Hello {
            version: PROTOCOL_VERSION,
            client: cfg.client_name.clone(),
        },
    });
    // A refused token is a goodbye sent right behind the upgrade, and the server drops the
    // connection without reading (PROTOCOL.md §9.1): the Hello may find the socket reset. The
    // goodbye came before the reset, so it is read and reported; the send's failure only
    // when nothing came.
    let unsent = ws
        .send(Message::Binary(hello.into()))
        .await
        .err()
        .map(|e| ClientError::Connect(format!("sending Hello: {e}")));

    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    loop {
        let msg = match ws.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                return Err(
                    unsent.unwrap_or_else(|| ClientError::Connect(format!("before Welcome: {e}")))
                )
            }
            None => {
                return Err(unsent.unwrap_or_else(|| {
                    ClientError::Connect("socket closed before Welcome".into())
                }))
            }
        };
        let data = match msg {
            Message::Binary(data) => data,
            Message::Close(frame) => {
                // A refusal always comes with a Goodbye first; a bare close with one of our
                // codes means the same.
                let (code, reason) = close_frame_info(frame);
                let reconnect =
                    quiver_proto::CloseCode::from_u16(code).is_none_or(|c| c.reconnect());
                return Err(if code == 0 {
                    ClientError::Connect(format!("socket closed before Welcome: {reason}"))
                } else {
                    super::goodbye_error(code, reason, reconnect)
                });
            }
            Message::Text(_) => {
                return Err(ClientError::Protocol(
                    "server sent a text message (PROTOCOL.md 9.2: binary only)".into(),
                ))
            }
            _ => continue,
        };
        // The first known frame decides the handshake. What follows it in the same message
        // stays in the decoder for the reader, which checks the message against the session's
        // `max_frame`, known only from that `Welcome`.
        let first = data.len();
        dec.push(&data);
        while let Some(body) = dec
            .next_frame()
            .map_err(|e| ClientError::Protocol(format!("bad frame: {e}")))?
        {
            let frame = match decode_event(&body) {
                Ok(frame) => frame,
                Err(DecodeError::UnknownType { id, kind }) => {
                    tracing::debug!(id, kind, "ignoring unknown event type");
                    continue;
                }
                Err(e) => return Err(ClientError::Protocol(format!("malformed frame: {e}"))),
            };
            let welcome = handshake_reply(frame)?;
            return Ok((WsIo { ws, dec, first }, welcome));
        }
        if dec.buffered() != 0 {
            return Err(ClientError::Protocol(
                "a frame spans two WebSocket messages (PROTOCOL.md 9.2)".into(),
            ));
        }
    }
}

/// A close frame's code when it is one of Quiver's (3000–4999), else 0 with the WebSocket code
/// in the reason.
pub(super) fn close_frame_info(frame: Option<CloseFrame>) -> (u16, String) {
    match frame {
        Some(CloseFrame { code, reason }) => {
            let code = u16::from(code);
            if (3000..5000).contains(&code) {
                (code, clip(reason.as_str()))
            } else {
                (
                    0,
                    format!("WebSocket close {code}: {}", clip(reason.as_str())),
                )
            }
        }
        None => (0, "WebSocket closed without a code".into()),
    }
}

/// A WebSocket session after `Welcome`.
pub(crate) struct WsIo {
    ws: Ws,
    /// Holds what followed `Welcome` in its message.
    dec: FrameDecoder,
    /// The size of that message.
    first: usize,
}

impl WsIo {
    pub(super) fn run(self, ctx: RunCtx, tasks: &mut JoinSet<()>) -> (Link, WriterHandle) {
        let (sink, stream) = self.ws.split();
        let sink: WsSink = Arc::new(Mutex::new(sink));
        let (handle, write_task) = writer(
            MessageSink(sink.clone()),
            ctx.pacer,
            ctx.events.clone(),
            ctx.epoch,
        );
        tasks.spawn(write_task);
        let router = Router::new(ctx.events, ctx.control_credit, ctx.epoch);
        tasks.spawn(reader(
            stream,
            self.dec,
            self.first,
            ctx.max_frame,
            router,
            ctx.liveness,
        ));
        (Link::WebSocket(WsCloser(sink)), handle)
    }

    pub(super) fn abandon(mut self, reason: &str) {
        let frame = close_frame(reason);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.close(Some(frame))).await;
        });
    }
}

fn close_frame(reason: &str) -> CloseFrame {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code: WsCloseCode::Normal,
        reason: reason[..end].into(),
    }
}

/// Closes the socket (code 1000), in the background and bounded by [`CLOSE_GRACE`].
pub(crate) struct WsCloser(WsSink);

impl WsCloser {
    pub(super) fn close(&self, reason: &str) {
        let sink = self.0.clone();
        let frame = close_frame(reason);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLOSE_GRACE, async move {
                let mut sink = sink.lock().await;
                let _ = sink.send(Message::Close(Some(frame))).await;
            })
            .await;
        });
    }
}

/// Each frame its own binary message (PROTOCOL.md 9.2), flushed once per batch.
struct MessageSink(WsSink);

impl FrameSink for MessageSink {
    async fn write(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String> {
        let mut sink = self.0.lock().await;
        for frame in frames {
            sink.feed(Message::Binary(frame.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
        sink.flush().await.map_err(|e| e.to_string())
    }

    /// A WebSocket ping with the `Ping` command: the server's WebSocket stack answers it as soon
    /// as it reads it, even while the session is busy with a slow command (one waiting on the
    /// broker), so a stalled session is not mistaken for a dead server.
    async fn write_heartbeat(&mut self, frame: Vec<u8>) -> Result<(), String> {
        let mut sink = self.0.lock().await;
        sink.feed(Message::Ping(Default::default()))
            .await
            .map_err(|e| e.to_string())?;
        sink.feed(Message::Binary(frame.into()))
            .await
            .map_err(|e| e.to_string())?;
        sink.flush().await.map_err(|e| e.to_string())
    }

    /// A close frame (1000) behind the last message: the server carries out what came before
    /// it and answers with its own close, which ends the client's wait.
    async fn finish(&mut self) {
        let mut sink = self.0.lock().await;
        let _ = sink
            .send(Message::Close(Some(close_frame("closed by client"))))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        let f = |code: u16, reason: &str| {
            Some(CloseFrame {
                code: WsCloseCode::from(code),
                reason: reason.into(),
            })
        };
        assert_eq!(close_frame_info(f(3007, "bad")), (3007, "bad".into()));
        assert_eq!(close_frame_info(f(1001, "away")).0, 0);
        assert_eq!(close_frame_info(None).0, 0);
        let long = "é".repeat(100);
        let cf = close_frame(&long);
        assert!(cf.reason.as_str().len() <= MAX_CLOSE_REASON);
    }
}
