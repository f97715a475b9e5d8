//! The connection task: one actor owns the session, the subscriptions, the replies in flight and
//! the publish buffer. [`crate::Client`] handles talk to it through [`Request`]s; the tasks of the
//! live connection (writer, control reader, stream acceptor, one reader per subscription stream)
//! report to it through [`ConnEvent`]s tagged with the connection's epoch, so events from a
//! connection that has since been torn down are ignored.
//!
//! Nothing in the actor awaits the network: it only reacts to messages and timers, so a slow
//! server can never wedge the control stream's reader behind the writer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quiver_proto::{
    decode_event, encode_command, ClientFrame, CloseCode, Command, DecodeError, ErrorCode, Event,
    FrameDecoder, Limits, Member, Position, Recovery, ServerFrame, DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio::task::{AbortHandle, JoinSet};
use wtransport::endpoint::endpoint_side;
use wtransport::error::{ConnectingError, ConnectionError};
use wtransport::{Connection, Endpoint, RecvStream, SendStream, VarInt};

use crate::client::{lock, ConnectionState, Shared, WelcomeInfo};
use crate::config::{connect_url, redact, ClientConfig, TokenProvider};
use crate::error::ClientError;
use crate::pacer::Pacer;
use crate::streams::{
    accept_streams, control_reader, deliver, drain, read_chunk, watch_closed, writer,
};
use crate::subscription::{SubEvent, SubParts};

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;
type WtEndpoint = Endpoint<endpoint_side::Client>;

/// Frame id of `Hello`; later commands count up from here.
const HELLO_ID: u32 = 1;

/// What a [`crate::Client`] asks of the connection task.
pub(crate) enum Request {
    Subscribe {
        room: String,
        reply: Reply<SubParts>,
    },
    Unsubscribe {
        room: String,
        reply: Reply<()>,
    },
    /// A [`crate::Subscription`] was dropped.
    Dropped {
        room: String,
        gen: u64,
    },
    Publish {
        room: String,
        payload: Bytes,
        ack: Option<Reply<Option<Position>>>,
        permit: OwnedSemaphorePermit,
    },
    Ping {
        reply: Reply<Duration>,
    },
    Presence {
        room: String,
        reply: Reply<Vec<Member>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// What the tasks of a connection (or a connect attempt) report.
pub(crate) enum ConnEvent {
    Attempt(Box<Result<Established, ClientError>>),
    Frame(ServerFrame),
    Stream {
        id: u32,
        room: String,
        recv: RecvStream,
        dec: FrameDecoder,
    },
    Lost {
        code: u16,
        reason: String,
    },
    RefreshToken(Result<String, String>),
    RetrySubscribe {
        room: String,
        gen: u64,
    },
}

pub(crate) type EventTx = mpsc::UnboundedSender<(u64, ConnEvent)>;

/// A session that got its `Welcome`.
pub(crate) struct Established {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    dec: FrameDecoder,
    welcome: WelcomeInfo,
}

/// A command waiting for its reply, by frame id.
enum Pending {
    Subscribe {
        room: String,
        gen: u64,
    },
    Unsubscribe {
        reply: Option<Reply<()>>,
    },
    PublishAck {
        reply: Reply<Option<Position>>,
    },
    Ping {
        sent: Instant,
        reply: Reply<Duration>,
    },
    Presence {
        reply: Reply<Vec<Member>>,
    },
    Refresh,
}

/// One frame for the writer task; the permit (for publishes) is released once it is written.
pub(crate) struct Outgoing {
    pub(crate) frame: Vec<u8>,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

/// A publish made while disconnected.
struct Buffered {
    room: String,
    payload: Bytes,
    ack: Option<Reply<Option<Position>>>,
    permit: OwnedSemaphorePermit,
}

/// One room the application is subscribed to (or waiting to be).
struct Sub {
    gen: u64,
    /// The subscription's event queue; readers get clones. Dropping every sender ends it.
    tx: mpsc::Sender<SubEvent>,
    /// Where the end reason goes; yielded after the queue is drained.
    end_tx: Option<oneshot::Sender<SubEvent>>,
    /// Handed to the application with the first `Subscribed`.
    parts: Option<(mpsc::Receiver<SubEvent>, oneshot::Receiver<SubEvent>)>,
    /// The `subscribe()` call waiting for the first `Subscribed`.
    waiter: Option<Reply<SubParts>>,
    /// Last position delivered to the application: the resume point.
    last: Arc<Mutex<Option<Position>>>,
    /// Id of the `Subscribe` sent on the current connection.
    cmd_id: Option<u32>,
    /// `Subscribed` received for `cmd_id`.
    confirmed: bool,
    /// The subscription stream, when it arrived before `Subscribed`.
    stream: Option<(RecvStream, FrameDecoder)>,
    /// Sent before the first publication of the current stream (`Resubscribed`).
    preamble: Option<SubEvent>,
    reader: Option<AbortHandle>,
}

impl Sub {
    /// Forgets everything tied to the connection that just went away.
    fn reset_connection(&mut self) {
        self.cmd_id = None;
        self.confirmed = false;
        self.stream = None;
        self.preamble = None;
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

struct Live {
    conn: Connection,
    writer: mpsc::UnboundedSender<Outgoing>,
    tasks: JoinSet<()>,
    pending: HashMap<u32, Pending>,
    next_id: u32,
    limits: Limits,
    /// When to fetch a new token and send `Refresh`.
    refresh_at: Option<tokio::time::Instant>,
    refresh_failures: u32,
}

impl Live {
    fn next_id(&mut self) -> u32 {
        let mut id = self.next_id;
        // Skip 0 (unsolicited events) and ids still waiting for a reply.
        while id == 0 || self.pending.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        id
    }

    fn send(&mut self, command: Command, pending: Option<Pending>) -> u32 {
        self.send_with(command, pending, None)
    }

    fn send_with(
        &mut self,
        command: Command,
        pending: Option<Pending>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> u32 {
        let id = self.next_id();
        if let Some(p) = pending {
            self.pending.insert(id, p);
        }
        let frame = encode_command(&ClientFrame { id, command });
        // If the writer is gone the connection is being torn down: the Lost event follows and
        // fails the pending reply.
        let _ = self.writer.send(Outgoing { frame, permit });
        id
    }

    /// Largest frame accepted on subscription streams: a publication of `max_payload` bytes plus
    /// its envelope must fit even when the server announces `max_frame` = `max_payload`.
    fn stream_max_frame(&self) -> usize {
        (self.limits.max_frame as usize)
            .max(self.limits.max_payload as usize + 1024)
            .max(DEFAULT_MAX_FRAME)
    }
}

/// Connects (first attempt, failing fast) and spawns the connection task.
pub(crate) async fn start(
    config: ClientConfig,
    shared: Arc<Shared>,
) -> Result<
    (
        mpsc::UnboundedSender<Request>,
        watch::Receiver<ConnectionState>,
    ),
    ClientError,
> {
    let wt_config = config.wtransport_config().await?;
    let endpoint = Arc::new(
        Endpoint::client(wt_config)
            .map_err(|e| ClientError::Connect(format!("cannot create endpoint: {e}")))?,
    );
    let mut last_err = None;
    let mut established = None;
    let mut url_index = 0;
    for (i, url) in config.urls.iter().enumerate() {
        match attempt(&endpoint, url, &config).await {
            Ok(est) => {
                established = Some(est);
                url_index = i;
                break;
            }
            Err(
                e @ (ClientError::Refused { .. }
                | ClientError::Token(_)
                | ClientError::Closed { .. }),
            ) => return Err(e),
            Err(e) => {
                tracing::debug!(url = %url, error = %e, "connect attempt failed");
                last_err = Some(e);
            }
        }
    }
    let Some(est) = established else {
        return Err(last_err.unwrap_or_else(|| ClientError::Connect("no URL".into())));
    };

    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let mut actor = Actor {
        cfg: config,
        endpoint,
        shared,
        state_tx,
        req_rx,
        ev_tx,
        ev_rx,
        epoch: 1,
        live: None,
        subs: HashMap::new(),
        next_gen: 1,
        buffer: VecDeque::new(),
        failures: 0,
        url_index,
        reconnect_at: None,
        closed: false,
    };
    actor.on_established(est);
    tokio::spawn(actor.run());
    Ok((req_tx, state_rx))
}

/// One connect attempt: token, CONNECT, control stream, `Hello`, `Welcome`.
async fn attempt(
    endpoint: &WtEndpoint,
    base: &str,
    cfg: &ClientConfig,
) -> Result<Established, ClientError> {
    let fut = attempt_inner(endpoint, base, &cfg.token, &cfg.client_name);
    match tokio::time::timeout(cfg.connect_timeout, fut).await {
        Ok(res) => res,
        Err(_) => Err(ClientError::Timeout),
    }
}

async fn attempt_inner(
    endpoint: &WtEndpoint,
    base: &str,
    token: &TokenProvider,
    client_name: &str,
) -> Result<Established, ClientError> {
    let token = token().await.map_err(ClientError::Token)?;
    let url = connect_url(base, &token)?;
    tracing::debug!(url = %redact(&url), "connecting");
    let conn = endpoint.connect(url.as_str()).await.map_err(|e| match e {
        ConnectingError::SessionRejected => ClientError::Refused {
            url: base.to_string(),
        },
        other => ClientError::Connect(format!("{base}: {other}")),
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
            client: client_name.to_string(),
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
            match frame.event {
                Event::Welcome {
                    version,
                    session,
                    user,
                    tenant,
                    expires_at,
                    limits,
                } => {
                    if version != PROTOCOL_VERSION {
                        conn.close(VarInt::from_u32(0), b"unsupported version");
                        return Err(ClientError::Protocol(format!(
                            "server speaks protocol version {version}, this client {PROTOCOL_VERSION}"
                        )));
                    }
                    return Ok(Established {
                        conn,
                        send,
                        recv,
                        dec,
                        welcome: WelcomeInfo {
                            session,
                            user,
                            tenant,
                            expires_at,
                            limits,
                        },
                    });
                }
                Event::Goodbye {
                    code,
                    reason,
                    reconnect,
                } => {
                    return Err(if reconnect {
                        ClientError::Connect(format!("server said goodbye ({code}): {reason}"))
                    } else {
                        ClientError::Closed { code, reason }
                    });
                }
                Event::Error { code, message } => {
                    return Err(ClientError::Server { code, message });
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected Welcome, got {other:?}"
                    )));
                }
            }
        }
        match read_chunk(&mut recv).await {
            Ok(Some(bytes)) => dec.push(&bytes),
            Ok(None) => {
                return Err(ClientError::Connect(
                    "control stream closed before Welcome".into(),
                ))
            }
            Err(e) => {
                // The server announces closes with a Goodbye, but the QUIC close may win the
                // race: look at the connection's close code.
                let (code, reason) = close_info(&conn.closed().await);
                return Err(if code_forbids_reconnect(code) {
                    ClientError::Closed { code, reason }
                } else {
                    ClientError::Connect(format!("connection closed before Welcome: {e}; {reason}"))
                });
            }
        }
    }
}

fn code_forbids_reconnect(code: u16) -> bool {
    CloseCode::from_u16(code).is_some_and(|c| !c.reconnect())
}

/// The application close code and reason of a closed connection, if it has them.
pub(crate) fn close_info(err: &ConnectionError) -> (u16, String) {
    match err {
        ConnectionError::ApplicationClosed(close) => (
            u16::try_from(close.code().into_inner()).unwrap_or(0),
            String::from_utf8_lossy(close.reason()).into_owned(),
        ),
        other => (0, other.to_string()),
    }
}

struct Actor {
    cfg: ClientConfig,
    endpoint: Arc<WtEndpoint>,
    shared: Arc<Shared>,
    state_tx: watch::Sender<ConnectionState>,
    req_rx: mpsc::UnboundedReceiver<Request>,
    ev_tx: EventTx,
    ev_rx: mpsc::UnboundedReceiver<(u64, ConnEvent)>,
    /// Identifies the current connection (or connect attempt); bumped on every teardown/attempt.
    epoch: u64,
    live: Option<Live>,
    subs: HashMap<String, Sub>,
    next_gen: u64,
    buffer: VecDeque<Buffered>,
    /// Consecutive failed attempts: the backoff exponent.
    failures: u32,
    url_index: usize,
    reconnect_at: Option<tokio::time::Instant>,
    closed: bool,
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) {
        while !self.closed {
            let refresh_at = self.live.as_ref().and_then(|l| l.refresh_at);
            let reconnect_at = self.reconnect_at;
            tokio::select! {
                req = self.req_rx.recv() => match req {
                    Some(req) => self.on_request(req),
                    None => self.close_all(0, "client dropped".into(), false),
                },
                Some((epoch, ev)) = self.ev_rx.recv() => self.on_event(epoch, ev),
                _ = sleep_until_opt(reconnect_at) => {
                    self.reconnect_at = None;
                    self.start_attempt();
                }
                _ = sleep_until_opt(refresh_at) => self.start_refresh(),
                Some(_) = async {
                    match self.live.as_mut() {
                        Some(l) if !l.tasks.is_empty() => l.tasks.join_next().await,
                        _ => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    fn set_state(&self, state: ConnectionState) {
        self.state_tx.send_replace(state);
    }

    // ----- requests from the application -----

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Subscribe { room, reply } => self.subscribe(room, reply),
            Request::Unsubscribe { room, reply } => self.unsubscribe(&room, None, Some(reply)),
            Request::Dropped { room, gen } => self.unsubscribe(&room, Some(gen), None),
            Request::Publish {
                room,
                payload,
                ack,
                permit,
            } => {
                let item = Buffered {
                    room,
                    payload,
                    ack,
                    permit,
                };
                if self.live.is_some() && self.buffer.is_empty() {
                    self.send_publish(item);
                } else {
                    self.buffer.push_back(item);
                }
            }
            Request::Ping { reply } => match self.live.as_mut() {
                Some(live) => {
                    let sent = Instant::now();
                    live.send(Command::Ping, Some(Pending::Ping { sent, reply }));
                }
                None => {
                    let _ = reply.send(Err(ClientError::NotConnected));
                }
            },
            Request::Presence { room, reply } => match self.live.as_mut() {
                Some(live) => {
                    live.send(
                        Command::Presence { room },
                        Some(Pending::Presence { reply }),
                    );
                }
                None => {
                    let _ = reply.send(Err(ClientError::NotConnected));
                }
            },
            Request::Close { reply } => {
                self.close_all(0, "closed by client".into(), false);
                let _ = reply.send(());
            }
        }
    }

    fn subscribe(&mut self, room: String, reply: Reply<SubParts>) {
        if self.subs.contains_key(&room) {
            let _ = reply.send(Err(ClientError::server(
                ErrorCode::AlreadySubscribed,
                format!("this client is already subscribed to {room}"),
            )));
            return;
        }
        let (tx, rx) = mpsc::channel(self.cfg.subscription_buffer.max(1));
        let (end_tx, end_rx) = oneshot::channel();
        let gen = self.next_gen;
        self.next_gen += 1;
        self.subs.insert(
            room.clone(),
            Sub {
                gen,
                tx,
                end_tx: Some(end_tx),
                parts: Some((rx, end_rx)),
                waiter: Some(reply),
                last: Arc::new(Mutex::new(None)),
                cmd_id: None,
                confirmed: false,
                stream: None,
                preamble: None,
                reader: None,
            },
        );
        self.send_subscribe(&room);
    }

    /// Sends `Subscribe` (with the resume position) for `room` on the live connection, if any.
    fn send_subscribe(&mut self, room: &str) {
        let (Some(live), Some(sub)) = (self.live.as_mut(), self.subs.get_mut(room)) else {
            return;
        };
        let resume = *lock(&sub.last);
        let id = live.send(
            Command::Subscribe {
                room: room.to_string(),
                resume,
            },
            Some(Pending::Subscribe {
                room: room.to_string(),
                gen: sub.gen,
            }),
        );
        sub.cmd_id = Some(id);
        sub.confirmed = false;
    }

    /// Ends the application's subscription to `room` (only generation `gen`, if given) and tells
    /// the server.
    fn unsubscribe(&mut self, room: &str, gen: Option<u64>, reply: Option<Reply<()>>) {
        let matches = self
            .subs
            .get(room)
            .is_some_and(|s| gen.is_none_or(|g| g == s.gen));
        if !matches {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ClientError::server(
                    ErrorCode::NotSubscribed,
                    format!("this client is not subscribed to {room}"),
                )));
            }
            return;
        }
        let Some(mut sub) = self.subs.remove(room) else {
            return;
        };
        if let Some(w) = sub.waiter.take() {
            let _ = w.send(Err(ClientError::server(
                ErrorCode::NotSubscribed,
                "unsubscribed before the subscription was confirmed",
            )));
        }
        let sent = sub.cmd_id.is_some();
        sub.reset_connection();
        drop(sub);
        match self.live.as_mut() {
            Some(live) if sent => {
                live.send(
                    Command::Unsubscribe {
                        room: room.to_string(),
                    },
                    Some(Pending::Unsubscribe { reply }),
                );
            }
            _ => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    fn send_publish(&mut self, item: Buffered) {
        let Some(live) = self.live.as_mut() else {
            self.buffer.push_back(item);
            return;
        };
        // A frame over `max_frame` would make the server close the whole session
        // (protocol_error), so refuse locally what could not fit (room + envelope < 64 bytes
        // beyond the room name).
        let frame_len = item.payload.len() + item.room.len() + 32;
        if item.payload.len() > live.limits.max_payload as usize
            || frame_len > live.limits.max_frame as usize
        {
            let err = ClientError::server(
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload of {} bytes exceeds limits.max_payload {} / max_frame {} (checked locally)",
                    item.payload.len(),
                    live.limits.max_payload,
                    live.limits.max_frame
                ),
            );
            match item.ack {
                Some(reply) => {
                    let _ = reply.send(Err(err));
                }
                None => tracing::warn!(room = %item.room, "dropping buffered publish: {err}"),
            }
            return;
        }
        let ack = item.ack.is_some();
        let pending = item.ack.map(|reply| Pending::PublishAck { reply });
        live.send_with(
            Command::Publish {
                room: item.room,
                payload: item.payload,
                ack,
            },
            pending,
            Some(item.permit),
        );
    }

    // ----- events from the connection's tasks -----

    fn on_event(&mut self, epoch: u64, ev: ConnEvent) {
        if epoch != self.epoch {
            if let ConnEvent::Attempt(res) = ev {
                if let Ok(est) = *res {
                    est.conn.close(VarInt::from_u32(0), b"superseded");
                }
            }
            return;
        }
        match ev {
            ConnEvent::Attempt(res) => match *res {
                Ok(est) => self.on_established(est),
                Err(ClientError::Closed { code, reason }) => self.close_all(code, reason, true),
                Err(e) => {
                    tracing::warn!(error = %e, "reconnect attempt failed");
                    self.set_state(ConnectionState::Disconnected {
                        code: 0,
                        reason: e.to_string(),
                    });
                    self.schedule_reconnect();
                }
            },
            ConnEvent::Frame(frame) => self.on_frame(frame),
            ConnEvent::Stream {
                id,
                room,
                recv,
                dec,
            } => self.on_stream(id, room, recv, dec),
            ConnEvent::Lost { code, reason } => {
                let reconnect = !code_forbids_reconnect(code);
                self.teardown(code, reason, reconnect);
            }
            ConnEvent::RefreshToken(res) => self.on_refresh_token(res),
            ConnEvent::RetrySubscribe { room, gen } => {
                if self.subs.get(&room).is_some_and(|s| s.gen == gen) {
                    self.send_subscribe(&room);
                }
            }
        }
    }

    fn on_established(&mut self, est: Established) {
        let Established {
            conn,
            send,
            recv,
            dec,
            welcome,
        } = est;
        self.failures = 0;
        let epoch = self.epoch;
        let limits = welcome.limits;
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let pacer = if self.cfg.pace_commands {
            Pacer::for_server_limit(limits.commands_per_second, Instant::now())
        } else {
            None
        };
        tasks.spawn(writer(send, writer_rx, pacer, self.ev_tx.clone(), epoch));
        tasks.spawn(control_reader(recv, dec, self.ev_tx.clone(), epoch));
        let mut live = Live {
            conn: conn.clone(),
            writer: writer_tx,
            tasks,
            pending: HashMap::new(),
            next_id: HELLO_ID + 1,
            limits,
            refresh_at: None,
            refresh_failures: 0,
        };
        let max_frame = live.stream_max_frame();
        live.tasks.spawn(accept_streams(
            conn.clone(),
            max_frame,
            self.ev_tx.clone(),
            epoch,
        ));
        live.tasks
            .spawn(watch_closed(conn, self.ev_tx.clone(), epoch));
        live.refresh_at = refresh_deadline(welcome.expires_at, self.cfg.refresh_ahead);
        tracing::info!(session = %welcome.session, user = %welcome.user, tenant = %welcome.tenant, "connected");
        self.set_state(ConnectionState::Connected {
            session: welcome.session.clone(),
        });
        self.shared.set_welcome(Some(welcome));
        self.live = Some(live);

        // Resubscribe every room (and send subscribes made while disconnected), then flush the
        // publishes buffered while disconnected, in order.
        let rooms: Vec<String> = self.subs.keys().cloned().collect();
        for room in rooms {
            let abandoned = self
                .subs
                .get(&room)
                .is_some_and(|s| s.waiter.as_ref().is_some_and(|w| w.is_closed()));
            if abandoned {
                self.subs.remove(&room);
            } else {
                self.send_subscribe(&room);
            }
        }
        while let Some(item) = self.buffer.pop_front() {
            self.send_publish(item);
        }
    }

    fn on_frame(&mut self, frame: ServerFrame) {
        let ServerFrame { id, event } = frame;
        let Some(live) = self.live.as_mut() else {
            return;
        };
        match event {
            Event::Subscribed {
                room,
                position,
                recovery,
            } => match live.pending.remove(&id) {
                Some(Pending::Subscribe { room: r, gen }) if r == room => {
                    self.on_subscribed(id, &room, gen, position, recovery)
                }
                _ => tracing::warn!(id, room = %room, "unexpected Subscribed"),
            },
            Event::Unsubscribed { room, code, reason } => {
                if id == 0 {
                    self.on_server_unsubscribed(&room, code, reason);
                } else {
                    match live.pending.remove(&id) {
                        Some(Pending::Unsubscribe { reply }) => {
                            if let Some(reply) = reply {
                                let _ = reply.send(Ok(()));
                            }
                        }
                        _ => tracing::warn!(id, room = %room, "unexpected Unsubscribed"),
                    }
                }
            }
            Event::Published { position } => match live.pending.remove(&id) {
                Some(Pending::PublishAck { reply }) => {
                    let _ = reply.send(Ok(position));
                }
                _ => tracing::warn!(id, "unexpected Published"),
            },
            Event::Pong => match live.pending.remove(&id) {
                Some(Pending::Ping { sent, reply }) => {
                    let _ = reply.send(Ok(sent.elapsed()));
                }
                _ => tracing::warn!(id, "unexpected Pong"),
            },
            Event::Refreshed { expires_at } => match live.pending.remove(&id) {
                Some(Pending::Refresh) => {
                    tracing::debug!(?expires_at, "token refreshed");
                    live.refresh_failures = 0;
                    live.refresh_at = refresh_deadline(expires_at, self.cfg.refresh_ahead);
                    if let Some(w) = lock(&self.shared.welcome).as_mut() {
                        w.expires_at = expires_at;
                    }
                }
                _ => tracing::warn!(id, "unexpected Refreshed"),
            },
            Event::Error { code, message } => match live.pending.remove(&id) {
                Some(Pending::Subscribe { room, gen }) => {
                    self.on_subscribe_refused(id, &room, gen, code, message)
                }
                Some(Pending::Unsubscribe { reply }) => {
                    if let Some(reply) = reply {
                        // Not subscribed on the server (the subscribe was refused or the server
                        // ended it meanwhile): the outcome the caller wanted.
                        let res = if code == ErrorCode::NotSubscribed.as_u16() {
                            Ok(())
                        } else {
                            Err(ClientError::Server { code, message })
                        };
                        let _ = reply.send(res);
                    }
                }
                Some(Pending::PublishAck { reply }) => {
                    let _ = reply.send(Err(ClientError::Server { code, message }));
                }
                Some(Pending::Ping { reply, .. }) => {
                    let _ = reply.send(Err(ClientError::Server { code, message }));
                }
                Some(Pending::Presence { reply }) => {
                    let _ = reply.send(Err(ClientError::Server { code, message }));
                }
                Some(Pending::Refresh) => {
                    tracing::warn!(code, %message, "token refresh refused");
                    self.retry_refresh();
                }
                None => {
                    // Most likely an un-acknowledged publish the server refused.
                    tracing::warn!(id, code, %message, "command refused");
                }
            },
            Event::Goodbye {
                code,
                reason,
                reconnect,
            } => {
                tracing::info!(code, %reason, reconnect, "server said goodbye");
                self.teardown(code, reason, reconnect);
            }
            Event::Presence {
                room,
                members,
                truncated,
            } => match live.pending.remove(&id) {
                Some(Pending::Presence { reply }) => {
                    if truncated {
                        // The server listed only as many members as fit in one frame.
                        tracing::debug!(%room, listed = members.len(), "presence truncated");
                    }
                    let _ = reply.send(Ok(members));
                }
                _ => tracing::warn!(id, "unexpected Presence"),
            },
            Event::Welcome { .. }
            | Event::Publication { .. }
            | Event::SubscriptionStream { .. }
            | Event::Joined { .. }
            | Event::Left { .. } => {
                tracing::warn!(id, "ignoring unexpected event on the control stream");
            }
        }
    }

    fn on_subscribed(
        &mut self,
        id: u32,
        room: &str,
        gen: u64,
        position: Option<Position>,
        recovery: Recovery,
    ) {
        let Some(sub) = self
            .subs
            .get_mut(room)
            .filter(|s| s.gen == gen && s.cmd_id == Some(id))
        else {
            return;
        };
        sub.confirmed = true;
        {
            let mut last = lock(&sub.last);
            match recovery {
                // Replayed publications move `last` forward as they are delivered.
                Recovery::Recovered { .. } => {}
                // Missed messages cannot be recovered: continue from the room's current
                // position (which may be in a new epoch).
                Recovery::Failed => *last = position,
                Recovery::NotRequested => {
                    if last.is_none() {
                        *last = position;
                    }
                }
            }
        }
        if let Some(waiter) = sub.waiter.take() {
            let Some((rx, end)) = sub.parts.take() else {
                return;
            };
            if waiter.send(Ok(SubParts { rx, end, gen })).is_err() {
                // The caller gave up (timeout or dropped future): nobody will read it.
                self.unsubscribe(room, Some(gen), None);
                return;
            }
        } else {
            sub.preamble = Some(SubEvent::Resubscribed { recovery });
        }
        if let Some((recv, dec)) = sub.stream.take() {
            self.start_reader(room, recv, dec);
        }
    }

    fn on_subscribe_refused(&mut self, id: u32, room: &str, gen: u64, code: u16, message: String) {
        let Some(sub) = self
            .subs
            .get_mut(room)
            .filter(|s| s.gen == gen && s.cmd_id == Some(id))
        else {
            return;
        };
        if let Some(waiter) = sub.waiter.take() {
            self.subs.remove(room);
            let _ = waiter.send(Err(ClientError::Server { code, message }));
            return;
        }
        // A resubscribe after reconnecting. Transient refusals are retried; anything else
        // (permission_denied with a new token, ...) ends the subscription.
        let transient = matches!(
            ErrorCode::from_u16(code),
            Some(ErrorCode::RateLimited | ErrorCode::Internal | ErrorCode::Unavailable)
        );
        if transient {
            sub.cmd_id = None;
            let delay = self.cfg.backoff.delay(3).max(Duration::from_millis(200));
            let tx = self.ev_tx.clone();
            let epoch = self.epoch;
            let ev = ConnEvent::RetrySubscribe {
                room: room.to_string(),
                gen,
            };
            if let Some(live) = self.live.as_mut() {
                live.tasks.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send((epoch, ev));
                });
            }
            return;
        }
        tracing::info!(room, code, %message, "resubscribe refused, ending subscription");
        self.end_sub(
            room,
            SubEvent::Ended {
                code,
                reason: message,
            },
        );
    }

    /// The server ended a subscription (slow_consumer, session_closing, ...). Its stream is
    /// finished by the server; the reader delivers what is left, then the end event follows.
    fn on_server_unsubscribed(&mut self, room: &str, code: u16, reason: String) {
        if self.subs.get(room).is_some_and(|s| s.confirmed) {
            tracing::info!(room, code, %reason, "server ended subscription");
            self.end_sub(room, SubEvent::Ended { code, reason });
        }
    }

    /// Removes the subscription; its stream yields `ev` once the queued events are read.
    fn end_sub(&mut self, room: &str, ev: SubEvent) {
        if let Some(mut sub) = self.subs.remove(room) {
            if let Some(end) = sub.end_tx.take() {
                let _ = end.send(ev);
            }
            // The reader (if any) keeps its sender until the stream ends: the queue drains first.
        }
    }

    fn on_stream(&mut self, id: u32, room: String, recv: RecvStream, dec: FrameDecoder) {
        let current = self
            .subs
            .get_mut(&room)
            .filter(|s| s.cmd_id == Some(id) && s.reader.is_none() && s.stream.is_none());
        match current {
            Some(sub) if sub.confirmed => self.start_reader(&room, recv, dec),
            Some(sub) => sub.stream = Some((recv, dec)),
            None => {
                tracing::debug!(id, room = %room, "draining stale subscription stream");
                if let Some(live) = self.live.as_mut() {
                    live.tasks.spawn(drain(recv));
                }
            }
        }
    }

    fn start_reader(&mut self, room: &str, recv: RecvStream, dec: FrameDecoder) {
        let (Some(live), Some(sub)) = (self.live.as_mut(), self.subs.get_mut(room)) else {
            return;
        };
        let handle = live.tasks.spawn(deliver(
            recv,
            dec,
            sub.tx.clone(),
            sub.last.clone(),
            sub.preamble.take(),
        ));
        sub.reader = Some(handle);
    }

    // ----- token refresh -----

    fn start_refresh(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.refresh_at = None;
        let provider = self.cfg.token.clone();
        let tx = self.ev_tx.clone();
        let epoch = self.epoch;
        live.tasks.spawn(async move {
            let res = provider().await;
            let _ = tx.send((epoch, ConnEvent::RefreshToken(res)));
        });
    }

    fn on_refresh_token(&mut self, res: Result<String, String>) {
        match res {
            Ok(token) => {
                if let Some(live) = self.live.as_mut() {
                    live.send(Command::Refresh { token }, Some(Pending::Refresh));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "token provider failed during refresh");
                self.retry_refresh();
            }
        }
    }

    fn retry_refresh(&mut self) {
        let backoff = self.cfg.backoff;
        if let Some(live) = self.live.as_mut() {
            let delay = backoff
                .delay(live.refresh_failures)
                .max(Duration::from_secs(1));
            live.refresh_failures = live.refresh_failures.saturating_add(1);
            live.refresh_at = Some(tokio::time::Instant::now() + delay);
        }
    }

    // ----- connection lifecycle -----

    /// Drops the live connection; reconnects after a backoff unless `reconnect` is false.
    fn teardown(&mut self, code: u16, reason: String, reconnect: bool) {
        let Some(live) = self.live.take() else {
            return;
        };
        self.epoch += 1;
        tracing::info!(code, %reason, reconnect, "disconnected");
        live.conn.close(VarInt::from_u32(0), b"");
        // Dropping the JoinSet aborts the writer, readers and timers of this connection.
        drop(live.tasks);
        for (_, p) in live.pending {
            fail_pending(p, || ClientError::ConnectionLost);
        }
        for sub in self.subs.values_mut() {
            sub.reset_connection();
        }
        if reconnect {
            self.set_state(ConnectionState::Disconnected { code, reason });
            self.schedule_reconnect();
        } else {
            self.close_all(code, reason, true);
        }
    }

    fn schedule_reconnect(&mut self) {
        let delay = self.cfg.backoff.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        tracing::debug!(?delay, "reconnecting after backoff");
        self.reconnect_at = Some(tokio::time::Instant::now() + delay);
    }

    fn start_attempt(&mut self) {
        self.epoch += 1;
        let epoch = self.epoch;
        self.url_index = (self.url_index + 1) % self.cfg.urls.len().max(1);
        let url = self.cfg.urls[self.url_index].clone();
        self.set_state(ConnectionState::Connecting);
        let endpoint = self.endpoint.clone();
        let cfg = self.cfg.clone();
        let tx = self.ev_tx.clone();
        tokio::spawn(async move {
            let res = attempt(&endpoint, &url, &cfg).await;
            if let Err(mpsc::error::SendError((_, ConnEvent::Attempt(res)))) =
                tx.send((epoch, ConnEvent::Attempt(Box::new(res))))
            {
                // The client was closed meanwhile.
                if let Ok(est) = *res {
                    est.conn.close(VarInt::from_u32(0), b"closed");
                }
            }
        });
    }

    /// Closes for good: fails everything waiting, ends every subscription.
    fn close_all(&mut self, code: u16, reason: String, by_server: bool) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.epoch += 1;
        self.reconnect_at = None;
        *lock(&self.shared.closed) = Some((code, reason.clone()));
        let closed = || ClientError::Closed {
            code,
            reason: reason.clone(),
        };
        if let Some(live) = self.live.take() {
            live.conn.close(VarInt::from_u32(0), reason.as_bytes());
            drop(live.tasks);
            for (_, p) in live.pending {
                fail_pending(p, closed);
            }
        }
        for item in self.buffer.drain(..) {
            if let Some(reply) = item.ack {
                let _ = reply.send(Err(closed()));
            }
        }
        for (_, mut sub) in self.subs.drain() {
            sub.reset_connection();
            if let Some(w) = sub.waiter.take() {
                let _ = w.send(Err(closed()));
            }
            if by_server {
                if let Some(end) = sub.end_tx.take() {
                    let _ = end.send(SubEvent::Ended {
                        code,
                        reason: reason.clone(),
                    });
                }
            }
        }
        self.shared.permits.close();
        self.set_state(ConnectionState::Closed);
        tracing::info!(code, %reason, "client closed");
    }
}

fn fail_pending(p: Pending, err: impl Fn() -> ClientError) {
    match p {
        Pending::Subscribe { .. } | Pending::Refresh => {}
        Pending::Unsubscribe { reply } => {
            if let Some(reply) = reply {
                // The session (and the server's subscription with it) is gone.
                let _ = reply.send(Ok(()));
            }
        }
        Pending::PublishAck { reply } => {
            let _ = reply.send(Err(err()));
        }
        Pending::Ping { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Pending::Presence { reply } => {
            let _ = reply.send(Err(err()));
        }
    }
}

/// When to refresh a token expiring at `expires_at` (Unix seconds): `min(ahead, remaining / 2)`
/// before expiry.
fn refresh_deadline(expires_at: Option<u64>, ahead: Duration) -> Option<tokio::time::Instant> {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let delay = refresh_delay(expires_at?, now_unix, ahead);
    Some(tokio::time::Instant::now() + delay)
}

/// How long from now (`now_unix`) to wait before refreshing a token that expires at `exp`.
pub(crate) fn refresh_delay(exp: u64, now_unix: Duration, ahead: Duration) -> Duration {
    let remaining = Duration::from_secs(exp).saturating_sub(now_unix);
    let lead = ahead.min(remaining / 2);
    remaining - lead
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_delay_leads_expiry() {
        let now = Duration::from_secs(1_000_000);
        let ahead = Duration::from_secs(30);
        // One hour left: refresh 30 s before expiry.
        assert_eq!(
            refresh_delay(1_000_000 + 3600, now, ahead),
            Duration::from_secs(3570)
        );
        // 20 s left: refresh halfway.
        assert_eq!(
            refresh_delay(1_000_000 + 20, now, ahead),
            Duration::from_secs(10)
        );
        // Already expired: now.
        assert_eq!(refresh_delay(999_000, now, ahead), Duration::ZERO);
    }

    #[test]
    fn close_codes_that_forbid_reconnect() {
        assert!(code_forbids_reconnect(3001));
        assert!(code_forbids_reconnect(3004));
        assert!(!code_forbids_reconnect(3000));
        assert!(!code_forbids_reconnect(3002));
        assert!(!code_forbids_reconnect(0));
        assert!(!code_forbids_reconnect(42));
    }
}
