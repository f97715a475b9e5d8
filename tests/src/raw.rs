//! A client that speaks raw frames, over WebTransport or WebSocket, for what the real client
//! library would never send (malformed frames, floods, pipelined commands) and for tests that
//! must run over both transports ([`Via`]).
//!
//! Over WebSocket one socket carries everything (PROTOCOL.md §9.2): a reader task routes the
//! frames that name a subscribed room to that room's [`RoomStream`], the rest to the control
//! queue, and drops stale frames of rooms not subscribed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use quiver_proto::{
    decode_event, encode_command, ClientFrame, Command, Event, FrameDecoder, ServerFrame,
    DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wtransport::error::StreamReadError;
use wtransport::{Connection, RecvStream, SendStream};

use crate::{open_session_at, TestServer, WAIT};

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type RoomRoutes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<ServerFrame>>>>;

/// Which transport a raw client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    WebTransport,
    WebSocket,
}

/// A client that speaks raw frames.
pub struct Raw {
    wire: Wire,
    next_id: u32,
    pub welcome: Option<Event>,
}

enum Wire {
    Wt {
        conn: Connection,
        send: SendStream,
        recv: RecvStream,
        decoder: FrameDecoder,
    },
    Ws {
        sink: futures::stream::SplitSink<WsStream, Message>,
        /// Control frames, or why the socket ended.
        control: mpsc::UnboundedReceiver<std::result::Result<ServerFrame, String>>,
        rooms: RoomRoutes,
        /// The close frame's code and reason, once the server sent one.
        close: Arc<Mutex<Option<(u16, String)>>>,
        /// Every frame received, in socket order (for ordering assertions).
        trace: Trace,
    },
}

type Trace = Arc<Mutex<Vec<ServerFrame>>>;

impl Raw {
    pub async fn connect(server: &TestServer, token: &str) -> Result<Self> {
        Self::connect_via(Via::WebTransport, server, token).await
    }

    pub async fn connect_via(via: Via, server: &TestServer, token: &str) -> Result<Self> {
        match via {
            Via::WebTransport => Self::connect_at(server.wt.port(), server.hash, token).await,
            Via::WebSocket => {
                let raw = Self::websocket(server, &format!("/v1/ws?token={token}"), &[]).await?;
                raw.hello().await
            }
        }
    }

    /// Connects to a server known by port and certificate hash (another process).
    pub async fn connect_at(port: u16, hash: [u8; 32], token: &str) -> Result<Self> {
        let conn = open_session_at(port, hash, &format!("/v1?token={token}"))
            .await
            .context("session")?;
        Self::on(conn).await?.hello().await
    }

    async fn hello(mut self) -> Result<Self> {
        let id = self
            .send(Command::Hello {
                version: PROTOCOL_VERSION,
                client: "raw-test".into(),
            })
            .await?;
        let welcome = self.recv_reply(id).await?;
        if !matches!(welcome, Event::Welcome { .. }) {
            bail!("expected Welcome, got {welcome:?}");
        }
        self.welcome = Some(welcome);
        Ok(self)
    }

    /// A WebTransport session whose every stream gets only `window` bytes of credit (a client
    /// that reads slowly, or not at all), after its Hello.
    pub async fn with_stream_window(server: &TestServer, token: &str, window: u32) -> Result<Self> {
        Self::with_stream_window_at(server.wt.port(), server.hash, token, window).await
    }

    /// [`Self::with_stream_window`] to a server known by port and certificate hash.
    pub async fn with_stream_window_at(
        port: u16,
        hash: [u8; 32],
        token: &str,
        window: u32,
    ) -> Result<Self> {
        Self::with_transport_at(port, hash, token, |t| {
            t.stream_receive_window(window.into());
        })
        .await
    }

    /// A WebTransport session with its QUIC transport configured by `tweak`, after its Hello.
    pub async fn with_transport_at(
        port: u16,
        hash: [u8; 32],
        token: &str,
        tweak: impl FnOnce(&mut wtransport::quinn::TransportConfig),
    ) -> Result<Self> {
        let endpoint = crate::client_endpoint_with(hash, tweak)?;
        let conn = endpoint
            .connect(format!("https://127.0.0.1:{port}/v1?token={token}"))
            .await?;
        Self::on(conn).await?.hello().await
    }

    /// Opens the control stream on an existing session without saying Hello.
    pub async fn on(conn: Connection) -> Result<Self> {
        let (send, recv) = conn.open_bi().await?.await?;
        Ok(Self {
            wire: Wire::Wt {
                conn,
                send,
                recv,
                decoder: FrameDecoder::new(DEFAULT_MAX_FRAME),
            },
            next_id: 1,
            welcome: None,
        })
    }

    /// Opens a WebSocket to `path_and_query` on the server's HTTP port with extra request
    /// headers, without saying Hello. The error is the handshake's (for asserting statuses).
    pub async fn websocket(
        server: &TestServer,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> std::result::Result<Self, tokio_tungstenite::tungstenite::Error> {
        Ok(Self::websocket_answered(server, path_and_query, headers)
            .await?
            .0)
    }

    /// [`Raw::websocket`], with the upgrade's answer (its headers: the selected subprotocol).
    /// A header given twice goes as two header lines.
    pub async fn websocket_answered(
        server: &TestServer,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> std::result::Result<
        (
            Self,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}{path_and_query}", server.http).into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().append(
                http_name(name),
                value.parse().expect("header values in tests are valid"),
            );
        }
        let (socket, answer) = tokio_tungstenite::connect_async(request).await?;
        let (sink, stream) = socket.split();
        let (control_tx, control) = mpsc::unbounded_channel();
        let rooms = RoomRoutes::default();
        let close = Arc::new(Mutex::new(None));
        let trace = Trace::default();
        tokio::spawn(route(
            stream,
            control_tx,
            rooms.clone(),
            close.clone(),
            trace.clone(),
        ));
        let raw = Self {
            wire: Wire::Ws {
                sink,
                control,
                rooms,
                close,
                trace,
            },
            next_id: 1,
            welcome: None,
        };
        Ok((raw, answer))
    }

    /// The WebTransport session (WebTransport-only tests).
    pub fn conn(&self) -> &Connection {
        match &self.wire {
            Wire::Wt { conn, .. } => conn,
            Wire::Ws { .. } => panic!("not a WebTransport client"),
        }
    }

    /// The WebSocket close frame's code and reason, once the server sent one.
    pub fn ws_close(&self) -> Option<(u16, String)> {
        match &self.wire {
            Wire::Ws { close, .. } => close.lock().expect("not poisoned").clone(),
            Wire::Wt { .. } => None,
        }
    }

    /// The transport's close code once the server closed: the QUIC application close code, or
    /// the WebSocket close frame's status. `None` if it did not close within [`WAIT`] or closed
    /// without a code.
    pub async fn close_code(&self) -> Option<u64> {
        match &self.wire {
            Wire::Wt { conn, .. } => match tokio::time::timeout(WAIT, conn.closed()).await.ok()? {
                wtransport::error::ConnectionError::ApplicationClosed(close) => {
                    Some(close.code().into_inner())
                }
                _ => None,
            },
            Wire::Ws { close, .. } => {
                let deadline = tokio::time::Instant::now() + WAIT;
                while tokio::time::Instant::now() < deadline {
                    if let Some((code, _)) = close.lock().expect("not poisoned").clone() {
                        return Some(u64::from(code));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                None
            }
        }
    }

    /// Every frame the WebSocket carried so far, in order.
    pub fn ws_trace(&self) -> Vec<ServerFrame> {
        match &self.wire {
            Wire::Ws { trace, .. } => trace.lock().expect("not poisoned").clone(),
            Wire::Wt { .. } => Vec::new(),
        }
    }

    /// Leaves: closes the WebTransport session (code 0) or sends a WebSocket close frame.
    pub async fn close(&mut self) {
        match &mut self.wire {
            Wire::Wt { conn, .. } => conn.close(0u32.into(), b""),
            Wire::Ws { sink, .. } => {
                let _ = sink.send(Message::Close(None)).await;
            }
        }
    }

    pub async fn send(&mut self, command: Command) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_bytes(&encode_command(&ClientFrame { id, command }))
            .await?;
        Ok(id)
    }

    /// Writes bytes on the control stream, or as one binary WebSocket message.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.wire {
            Wire::Wt { send, .. } => send.write_all(bytes).await?,
            Wire::Ws { sink, .. } => sink.send(Message::binary(bytes.to_vec())).await?,
        }
        Ok(())
    }

    /// Sends a WebSocket ping frame (WebSocket clients only).
    pub async fn ws_ping(&mut self) -> Result<()> {
        match &mut self.wire {
            Wire::Ws { sink, .. } => Ok(sink.send(Message::Ping(Bytes::from_static(b"p"))).await?),
            Wire::Wt { .. } => bail!("not a WebSocket client"),
        }
    }

    /// Finishes (FIN) the WebTransport control stream: the client is leaving.
    pub async fn finish_control(&mut self) -> Result<()> {
        match &mut self.wire {
            Wire::Wt { send, .. } => Ok(send.finish().await?),
            Wire::Ws { .. } => bail!("not a WebTransport client"),
        }
    }

    /// Stops the WebTransport control stream (STOP_SENDING with `code`): the client will read
    /// nothing more from it.
    pub fn stop_control(&mut self, code: u32) -> Result<()> {
        match &mut self.wire {
            Wire::Wt { recv, .. } => Ok(recv.quic_stream_mut().stop(code.into())?),
            Wire::Ws { .. } => bail!("not a WebTransport client"),
        }
    }

    /// Sends one WebSocket message as it is (text, or several frames in one message).
    pub async fn send_ws(&mut self, message: Message) -> Result<()> {
        match &mut self.wire {
            Wire::Ws { sink, .. } => Ok(sink.send(message).await?),
            Wire::Wt { .. } => bail!("not a WebSocket client"),
        }
    }

    /// Next frame on the control stream (over WebSocket: the next frame that is not a
    /// subscribed room's).
    pub async fn recv(&mut self) -> Result<ServerFrame> {
        let next = async {
            match &mut self.wire {
                Wire::Wt { recv, decoder, .. } => read_frame(recv, decoder).await,
                Wire::Ws { control, .. } => match control.recv().await {
                    Some(Ok(frame)) => Ok(frame),
                    Some(Err(e)) => Err(anyhow!(e)),
                    None => Err(anyhow!("socket closed")),
                },
            }
        };
        tokio::time::timeout(WAIT, next)
            .await
            .map_err(|_| anyhow!("timed out waiting for a control frame"))?
    }

    /// Next frame on the control stream, read `chunk` bytes at most at a time with `pause`
    /// after each read: a client that reads slowly but steadily (WebTransport only; with a
    /// small stream window, the server's writes wait on it).
    pub async fn recv_slowly(
        &mut self,
        chunk: usize,
        pause: std::time::Duration,
    ) -> Result<ServerFrame> {
        let Wire::Wt { recv, decoder, .. } = &mut self.wire else {
            bail!("not a WebTransport client");
        };
        let next = async {
            let mut buf = vec![0u8; chunk];
            loop {
                if let Some(body) = decoder.next_frame()? {
                    return anyhow::Ok(decode_event(&body)?);
                }
                match recv.read(&mut buf).await? {
                    Some(n) => decoder.push(&buf[..n]),
                    None => bail!("stream finished"),
                }
                tokio::time::sleep(pause).await;
            }
        };
        tokio::time::timeout(WAIT, next)
            .await
            .map_err(|_| anyhow!("timed out waiting for a control frame"))?
    }

    /// Next frame answering `id`, skipping unsolicited ones.
    pub async fn recv_reply(&mut self, id: u32) -> Result<Event> {
        loop {
            let frame = self.recv().await?;
            if frame.id == id {
                return Ok(frame.event);
            }
        }
    }

    pub async fn request(&mut self, command: Command) -> Result<Event> {
        let id = self.send(command).await?;
        self.recv_reply(id).await
    }

    /// Every payload `room`'s history holds, oldest first, paging with `History` until a page
    /// is not truncated.
    pub async fn whole_history(&mut self, room: &str) -> Result<Vec<Bytes>> {
        let mut payloads = Vec::new();
        let mut since = None;
        loop {
            let page = self
                .request(Command::History {
                    room: room.to_owned(),
                    since,
                    limit: 1000,
                })
                .await?;
            let Event::History {
                publications,
                truncated,
                ..
            } = page
            else {
                bail!("a History answered {page:?}");
            };
            since = publications.last().map(|p| p.position);
            payloads.extend(publications.into_iter().map(|p| p.payload));
            if !truncated || since.is_none() {
                return Ok(payloads);
            }
        }
    }

    /// Subscribes and returns the room's stream, its header already read.
    pub async fn subscribe(&mut self, room: &str) -> Result<RoomStream> {
        Ok(self.subscribe_from(room, None).await?.1)
    }

    /// Subscribes, resuming from `resume` if given; returns the `Subscribed` reply and the
    /// room's stream with its header already read, on either transport.
    pub async fn subscribe_from(
        &mut self,
        room: &str,
        resume: Option<quiver_proto::Position>,
    ) -> Result<(Event, RoomStream)> {
        let routed = match &self.wire {
            Wire::Ws { rooms, .. } => {
                let (tx, rx) = mpsc::unbounded_channel();
                rooms
                    .lock()
                    .expect("not poisoned")
                    .insert(room.to_owned(), tx);
                Some(rx)
            }
            Wire::Wt { .. } => None,
        };
        let id = self
            .send(Command::Subscribe {
                room: room.into(),
                resume,
            })
            .await?;
        let reply = self.recv_reply(id).await?;
        if !matches!(reply, Event::Subscribed { .. }) {
            bail!("subscribe {room}: {reply:?}");
        }
        let mut stream = match routed {
            Some(rx) => RoomStream::Ws(rx),
            None => RoomStream::accept(self.conn()).await?,
        };
        match stream.next().await? {
            ServerFrame {
                id: got,
                event: Event::SubscriptionStream { room: r },
            } if got == id && r == room => Ok((reply, stream)),
            other => bail!("expected the stream header of {room}, got {other:?}"),
        }
    }

    pub async fn publish(&mut self, room: &str, payload: &[u8]) -> Result<Event> {
        self.request(Command::Publish {
            room: room.into(),
            payload: Bytes::copy_from_slice(payload),
            ack: true,
        })
        .await
    }

    /// Publishes with an ack and returns the position (history rooms); anything else is an error.
    pub async fn published(
        &mut self,
        room: &str,
        payload: &[u8],
    ) -> Result<quiver_proto::Position> {
        match self.publish(room, payload).await? {
            Event::Published { position: Some(p) } => Ok(p),
            other => bail!("publish to {room}: {other:?}"),
        }
    }
}

/// A `Publish` without ack, encoded: frames for [`Raw::send_bytes`], several to one write.
pub fn publish_frame(id: u32, room: &str, payload: impl Into<Bytes>) -> Vec<u8> {
    encode_command(&ClientFrame {
        id,
        command: Command::Publish {
            room: room.into(),
            payload: payload.into(),
            ack: false,
        },
    })
}

/// The server events in one binary WebSocket message (it holds whole frames, PROTOCOL §9.2).
pub fn events_in(message: &[u8]) -> Result<Vec<Event>> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.push(message);
    let mut events = Vec::new();
    while let Some(body) = decoder.next_frame()? {
        events.push(decode_event(&body)?.event);
    }
    Ok(events)
}

/// A raw WebSocket that says Hello, subscribes to `room`, and is then never read (tests of a
/// peer that stops reading). Returned so the test decides when it goes away.
pub async fn deaf_websocket(server: &TestServer, user: &str, room: &str) -> Result<WsStream> {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/ws?token={}",
        server.http,
        crate::full_token("acme", user)
    ))
    .await?;
    let hello = Command::Hello {
        version: PROTOCOL_VERSION,
        client: "deaf".into(),
    };
    let subscribe = Command::Subscribe {
        room: room.into(),
        resume: None,
    };
    for (id, command) in [(1, hello), (2, subscribe)] {
        socket
            .send(Message::binary(encode_command(&ClientFrame {
                id,
                command,
            })))
            .await?;
    }
    Ok(socket)
}

fn http_name(name: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    name.parse().expect("header names in tests are valid")
}

/// The WebSocket reader: every message holds whole frames (PROTOCOL §9.2); room frames go to
/// their room, the rest to the control queue.
async fn route(
    mut stream: futures::stream::SplitStream<WsStream>,
    control: mpsc::UnboundedSender<std::result::Result<ServerFrame, String>>,
    rooms: RoomRoutes,
    close: Arc<Mutex<Option<(u16, String)>>>,
    trace: Trace,
) {
    let end = loop {
        let data = match stream.next().await {
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Close(frame))) => {
                *close.lock().expect("not poisoned") =
                    frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                break "closed by the server".to_owned();
            }
            Some(Ok(Message::Text(_))) => break "the server sent a text message".to_owned(),
            Some(Ok(_)) => continue,
            Some(Err(e)) => break format!("socket error: {e}"),
            None => break "socket ended".to_owned(),
        };
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        decoder.push(&data);
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => match decode_event(&body) {
                    Ok(frame) => {
                        trace.lock().expect("not poisoned").push(frame.clone());
                        dispatch(frame, &control, &rooms)
                    }
                    Err(e) => {
                        let _ = control.send(Err(format!("undecodable frame: {e}")));
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let _ = control.send(Err(format!("bad framing: {e}")));
                    break;
                }
            }
        }
        if decoder.finish().is_err() {
            let _ = control.send(Err("a frame spans two messages".into()));
        }
    };
    let _ = control.send(Err(end));
    rooms.lock().expect("not poisoned").clear();
}

fn dispatch(
    frame: ServerFrame,
    control: &mpsc::UnboundedSender<std::result::Result<ServerFrame, String>>,
    rooms: &RoomRoutes,
) {
    let room = match &frame.event {
        Event::Publication { room, .. }
        | Event::Latest { room, .. }
        | Event::SubscriptionStream { room }
        | Event::Joined { room, .. }
        | Event::Left { room, .. } => Some(room.clone()),
        Event::Unsubscribed { room, .. } => {
            // The subscription's frames all came before this (PROTOCOL §9.2).
            rooms.lock().expect("not poisoned").remove(room);
            None
        }
        _ => None,
    };
    match room {
        Some(room) => {
            if let Some(tx) = rooms.lock().expect("not poisoned").get(&room) {
                let _ = tx.send(frame);
            }
            // Else stale: a room not subscribed. Dropped, as the protocol says.
        }
        None => {
            let _ = control.send(Ok(frame));
        }
    }
}

/// One subscription's frames: a server-opened stream (WebTransport) or the frames of that room
/// on the shared socket (WebSocket).
pub enum RoomStream {
    Wt {
        recv: RecvStream,
        decoder: FrameDecoder,
    },
    Ws(mpsc::UnboundedReceiver<ServerFrame>),
}

impl RoomStream {
    pub async fn accept(conn: &Connection) -> Result<Self> {
        let recv = tokio::time::timeout(WAIT, conn.accept_uni())
            .await
            .map_err(|_| anyhow!("timed out waiting for a subscription stream"))??;
        Ok(Self::Wt {
            recv,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME),
        })
    }

    pub async fn next(&mut self) -> Result<ServerFrame> {
        let next = async {
            match self {
                RoomStream::Wt { recv, decoder } => read_frame(recv, decoder).await,
                RoomStream::Ws(rx) => rx.recv().await.ok_or_else(|| anyhow!("stream finished")),
            }
        };
        tokio::time::timeout(WAIT, next)
            .await
            .map_err(|_| anyhow!("timed out waiting for a publication"))?
    }

    /// The next publication's payload.
    pub async fn payload(&mut self) -> Result<Bytes> {
        match self.next().await?.event {
            Event::Publication { payload, .. } => Ok(payload),
            other => bail!("expected a publication, got {other:?}"),
        }
    }

    /// Reads a WebTransport stream to its end, dropping what it holds: `Ok` when finished,
    /// the error when reset (or the connection is gone).
    pub async fn drain(&mut self) -> Result<std::result::Result<(), StreamReadError>> {
        let recv = self.recv_stream();
        let mut buf = vec![0u8; 64 * 1024];
        let end = async {
            loop {
                match recv.read(&mut buf).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        tokio::time::timeout(WAIT, end)
            .await
            .map_err(|_| anyhow!("timed out draining a subscription stream"))
    }

    /// The WebTransport stream (WebTransport-only tests).
    pub fn recv_stream(&mut self) -> &mut RecvStream {
        match self {
            RoomStream::Wt { recv, .. } => recv,
            RoomStream::Ws(_) => panic!("not a WebTransport stream"),
        }
    }
}

/// A stream frames are read from, keeping its own read error: a WebTransport stream's
/// `StreamReadError::Reset` carries the WebTransport code the tests match on (read through
/// `AsyncRead`, it became an `io::Error` holding quinn's HTTP/3-encoded code, and a test that
/// tells a reset by its code failed when the race it covers came up).
pub trait FrameSource {
    /// Reads some bytes into `buf`: `None` once the stream has finished.
    fn read_some(
        &mut self,
        buf: &mut [u8],
    ) -> impl std::future::Future<Output = Result<Option<usize>>> + Send;
}

impl FrameSource for RecvStream {
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        Ok(self.read(buf).await?)
    }
}

impl FrameSource for wtransport::quinn::RecvStream {
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        Ok(self.read(buf).await?)
    }
}

/// The next server frame on a stream (a WebTransport stream, or a bare QUIC one), read into
/// `decoder` as it comes; an error once the stream finishes first.
pub async fn read_frame(
    recv: &mut impl FrameSource,
    decoder: &mut FrameDecoder,
) -> Result<ServerFrame> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(body) = decoder.next_frame()? {
            return Ok(decode_event(&body)?);
        }
        match recv.read_some(&mut buf).await? {
            Some(n) => decoder.push(&buf[..n]),
            None => bail!("stream finished"),
        }
    }
}

/// Runs test bodies `async fn NAME(via: Via) -> anyhow::Result<()>` once per transport, as
/// `webtransport::NAME` and `websocket::NAME`.
#[macro_export]
macro_rules! over_both_transports {
    ($($name:ident),* $(,)?) => {
        mod webtransport {
            $(#[tokio::test]
            async fn $name() -> anyhow::Result<()> {
                super::$name($crate::Via::WebTransport).await
            })*
        }
        mod websocket {
            $(#[tokio::test]
            async fn $name() -> anyhow::Result<()> {
                super::$name($crate::Via::WebSocket).await
            })*
        }
    };
}

/// Runs native-client test bodies `async fn NAME(via: quiver_client::Transport) ->
/// anyhow::Result<()>` once per transport, as `webtransport::NAME` and `websocket::NAME`.
#[macro_export]
macro_rules! over_both_client_transports {
    ($($name:ident),* $(,)?) => {
        mod webtransport {
            $(#[tokio::test]
            async fn $name() -> anyhow::Result<()> {
                super::$name(quiver_client::Transport::WebTransport).await
            })*
        }
        mod websocket {
            $(#[tokio::test]
            async fn $name() -> anyhow::Result<()> {
                super::$name(quiver_client::Transport::WebSocket).await
            })*
        }
    };
}
