//! One WebTransport session: the control-stream reader, command dispatch, authorisation, limits,
//! token expiry, and the in-band goodbye before every close the server starts.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use quiver_proto::{
    decode_command, encode_event, ClientFrame, CloseCode, Command, DecodeError, ErrorCode, Event,
    FrameDecoder, Limits, Member, Position, Recovery, RoomName, ServerFrame, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wtransport::{Connection, RecvStream, SendStream, VarInt};

use crate::auth::{unix_now, Grant};
use crate::hub::{publication_frame, RoomKey, Subscriber};
use crate::metrics as m;
use crate::server::Shared;
use crate::subscription::{Ended, Sink, Writer};

/// Refused commands are counted over windows of this length for abuse detection.
const ABUSE_WINDOW: Duration = Duration::from_secs(10);
/// How long a goodbye frame may take to reach the client before the connection closes anyway.
const GOODBYE_GRACE: Duration = Duration::from_secs(1);

/// Why a session ended, for the closed-sessions metric and the goodbye frame.
enum Exit {
    /// The client closed or the connection was lost: nobody to say goodbye to.
    Gone(&'static str),
    /// We close: goodbye frame, then QUIC close with the same code.
    Close(CloseCode, String),
}

/// What the control-stream reader hands to the session loop.
enum Inbound {
    /// Boxed: the channel allocates its first block of slots eagerly, so the slot size is
    /// memory every idle session pays.
    Frame(Box<ClientFrame>),
    Unknown {
        id: u32,
        kind: u32,
    },
    Malformed(String),
    Ended,
}

struct Sub {
    id: u64,
    key: RoomKey,
}

/// A command refused with an error reply.
struct Refusal(ErrorCode, String);

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(code, message.into())
    }
}

pub struct Session {
    shared: Arc<Shared>,
    conn: Connection,
    id: String,
    grant: Grant,
    out: mpsc::Sender<Bytes>,
    subs: HashMap<RoomName, Sub>,
    ended_tx: mpsc::UnboundedSender<Ended>,
    limiter: DefaultDirectRateLimiter,
    abuse_window: (Instant, u32),
    /// A reply found no room on the control stream within `timeouts.reply`: the client is not
    /// reading, and the session ends.
    stalled: bool,
}

/// Runs an accepted session to its end and frees everything it held.
pub async fn run(shared: Arc<Shared>, conn: Connection, grant: Grant) {
    let id = format!("{:x}", rand::random::<u64>());
    metrics::gauge!(m::SESSIONS_ACTIVE).increment(1.0);
    metrics::counter!(m::SESSIONS_OPENED).increment(1);
    shared.sessions.fetch_add(1, Ordering::Relaxed);
    info!(session = %id, user = %grant.user, tenant = %grant.tenant, remote = %conn.remote_address(), "session opened");

    let quic = conn.quic_connection().clone();
    let reason = match accept_control(&shared, &conn).await {
        Ok(streams) => serve(shared.clone(), conn, id.clone(), grant, streams).await,
        Err(Exit::Gone(label)) => label,
        Err(Exit::Close(code, reason)) => {
            // No control stream: the QUIC close is all we can say.
            conn.close(close_code(code), reason.as_bytes());
            code.label()
        }
    };

    metrics::gauge!(m::SESSIONS_ACTIVE).decrement(1.0);
    metrics::counter!(m::SESSIONS_CLOSED, "reason" => reason).increment(1);
    shared.sessions.fetch_sub(1, Ordering::Relaxed);
    // What the path was like, for telling a slow network from a slow server.
    let path = quic.stats().path;
    info!(
        session = %id,
        reason,
        rtt_ms = path.rtt.as_secs_f64() * 1e3,
        sent_packets = path.sent_packets,
        lost_packets = path.lost_packets,
        congestion_events = path.congestion_events,
        "session closed"
    );
}

/// Runs the session on its control stream until it ends; returns the reason's label.
async fn serve(
    shared: Arc<Shared>,
    conn: Connection,
    id: String,
    grant: Grant,
    (send, recv): (SendStream, RecvStream),
) -> &'static str {
    let (out, out_rx) = mpsc::channel(256);
    let writer = tokio::spawn(control_writer(send, out_rx));
    let (in_tx, in_rx) = mpsc::channel(64);
    let max_frame = shared.config.limits.max_frame as usize;
    let reader = tokio::spawn(control_reader(recv, in_tx, max_frame));
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let per_sec =
        NonZeroU32::new(shared.config.limits.commands_per_second).unwrap_or(NonZeroU32::MIN);
    let mut session = Session {
        shared,
        conn: conn.clone(),
        id,
        grant,
        out,
        subs: HashMap::new(),
        ended_tx,
        limiter: RateLimiter::direct(Quota::per_second(per_sec)),
        abuse_window: (Instant::now(), 0),
        stalled: false,
    };
    let exit = session.drive(in_rx, ended_rx).await;
    session.release().await;
    reader.abort();
    match exit {
        Exit::Gone(label) => label,
        Exit::Close(code, reason) => {
            let goodbye = encode_event(&ServerFrame {
                id: 0,
                event: Event::Goodbye {
                    code: code.as_u16(),
                    reason: reason.clone(),
                    reconnect: code.reconnect(),
                },
            });
            // The writer sends everything queued, then the goodbye; once every sender is gone
            // it finishes the stream and waits (bounded) for the client to have it. A client
            // that does not read may never make room for the goodbye: the QUIC close says it.
            let _ = tokio::time::timeout(GOODBYE_GRACE, session.out.send(goodbye)).await;
            drop(session);
            let _ = tokio::time::timeout(GOODBYE_GRACE * 2, writer).await;
            conn.close(close_code(code), reason.as_bytes());
            code.label()
        }
    }
}

fn close_code(code: CloseCode) -> VarInt {
    VarInt::from_u32(u32::from(code.as_u16()))
}

async fn accept_control(
    shared: &Shared,
    conn: &Connection,
) -> Result<(SendStream, RecvStream), Exit> {
    tokio::select! {
        accepted = tokio::time::timeout(shared.config.timeouts.hello, conn.accept_bi()) => match accepted {
            Ok(Ok(streams)) => Ok(streams),
            Ok(Err(_)) => Err(Exit::Gone("client_closed")),
            Err(_) => Err(Exit::Close(CloseCode::HelloTimeout, "no control stream".into())),
        },
        _ = shared.shutdown.cancelled() => Err(Exit::Close(CloseCode::Shutdown, "server shutting down".into())),
    }
}

/// Writes queued frames to the control stream. Ends when every sender is gone, then finishes the
/// stream and waits (bounded) for the client to acknowledge it, so a goodbye frame written last
/// arrives before the connection closes.
async fn control_writer(mut send: SendStream, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(frame) = rx.recv().await {
        if send.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(GOODBYE_GRACE, send.finish()).await;
}

async fn control_reader(mut recv: RecvStream, tx: mpsc::Sender<Inbound>, max_frame: usize) {
    let mut decoder = FrameDecoder::new(max_frame);
    loop {
        // Chunks as quinn holds them: no read buffer per session (idle sessions are most
        // sessions), and no copy before the decoder's own.
        let chunk = match recv.quic_stream_mut().read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) | Err(_) => {
                let _ = tx.send(Inbound::Ended).await;
                return;
            }
        };
        decoder.push(&chunk);
        loop {
            let item = match decoder.next_frame() {
                Ok(None) => break,
                Err(e) => Inbound::Malformed(e.to_string()),
                Ok(Some(body)) => match decode_command(&body) {
                    Ok(frame) => Inbound::Frame(Box::new(frame)),
                    Err(DecodeError::UnknownType { id, kind }) => Inbound::Unknown { id, kind },
                    Err(e @ DecodeError::Malformed(_)) => Inbound::Malformed(e.to_string()),
                },
            };
            let stop = matches!(item, Inbound::Malformed(_));
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    }
}

impl Session {
    async fn drive(
        &mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut ended: mpsc::UnboundedReceiver<Ended>,
    ) -> Exit {
        let shutdown = self.shared.shutdown.clone();
        if let Err(exit) = self.hello(&mut inbound, &shutdown).await {
            return exit;
        }
        loop {
            let expiry = expiry_instant(self.grant.expires_at);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return Exit::Close(CloseCode::Shutdown, "server shutting down".into());
                }
                _ = tokio::time::sleep_until(expiry) => {
                    return Exit::Close(CloseCode::TokenExpired, "token expired".into());
                }
                Some(end) = ended.recv() => self.subscription_ended(end).await,
                item = inbound.recv() => match item {
                    Some(Inbound::Frame(frame)) => {
                        if let Some(exit) = self.command(*frame).await {
                            return exit;
                        }
                    }
                    Some(Inbound::Unknown { id, kind }) => {
                        self.refuse(id, Refusal::new(ErrorCode::UnknownCommand, format!("unknown command type {kind}"))).await;
                    }
                    Some(Inbound::Malformed(reason)) => {
                        warn!(session = %self.id, %reason, "protocol error");
                        return Exit::Close(CloseCode::ProtocolError, reason);
                    }
                    Some(Inbound::Ended) | None => return Exit::Gone("client_closed"),
                },
                _ = self.conn.closed() => return Exit::Gone("connection_lost"),
            }
            if self.stalled {
                warn!(session = %self.id, "client does not read its control stream");
                return Exit::Close(CloseCode::ProtocolError, "control stream not read".into());
            }
        }
    }

    async fn hello(
        &mut self,
        inbound: &mut mpsc::Receiver<Inbound>,
        shutdown: &CancellationToken,
    ) -> Result<(), Exit> {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Err(Exit::Close(CloseCode::Shutdown, "server shutting down".into())),
            first = tokio::time::timeout(self.shared.config.timeouts.hello, inbound.recv()) => first,
        };
        let hello = match first {
            Err(_) => return Err(Exit::Close(CloseCode::HelloTimeout, "no Hello".into())),
            Ok(None | Some(Inbound::Ended)) => return Err(Exit::Gone("client_closed")),
            Ok(Some(Inbound::Malformed(reason))) => {
                return Err(Exit::Close(CloseCode::ProtocolError, reason))
            }
            Ok(Some(Inbound::Frame(frame))) => match *frame {
                ClientFrame {
                    id,
                    command: Command::Hello { version, .. },
                } => Some((id, version)),
                _ => None,
            },
            Ok(Some(Inbound::Unknown { .. })) => None,
        };
        let Some((id, version)) = hello else {
            return Err(Exit::Close(
                CloseCode::ProtocolError,
                "the first frame must be Hello".into(),
            ));
        };
        if version != PROTOCOL_VERSION {
            return Err(Exit::Close(
                CloseCode::UnsupportedVersion,
                format!("protocol version {version} not supported; this server speaks {PROTOCOL_VERSION}"),
            ));
        }
        let limits = &self.shared.config.limits;
        self.reply(
            id,
            Event::Welcome {
                version: PROTOCOL_VERSION,
                session: self.id.clone(),
                user: self.grant.user.clone(),
                tenant: self.grant.tenant.to_string(),
                expires_at: Some(self.grant.expires_at),
                limits: Limits {
                    max_frame: limits.max_frame,
                    max_payload: limits.max_payload,
                    max_subscriptions: limits.max_subscriptions,
                    commands_per_second: limits.commands_per_second,
                },
            },
        )
        .await;
        Ok(())
    }

    async fn command(&mut self, frame: ClientFrame) -> Option<Exit> {
        metrics::counter!(m::COMMANDS).increment(1);
        if self.limiter.check().is_err() {
            self.refuse(
                frame.id,
                Refusal::new(
                    ErrorCode::RateLimited,
                    format!(
                        "rate limit of {} commands per second exceeded",
                        self.shared.config.limits.commands_per_second
                    ),
                ),
            )
            .await;
            return self.count_abuse();
        }
        let id = frame.id;
        let result = match frame.command {
            Command::Hello { .. } => Err(Refusal::new(
                ErrorCode::BadRequest,
                "Hello was already sent",
            )),
            Command::Subscribe { room, resume } => self.subscribe(id, &room, resume).await,
            Command::Unsubscribe { room } => self.unsubscribe(&room).await,
            Command::Publish { room, payload, ack } => self.publish(&room, payload, ack).await,
            Command::Ping => Ok(Some(Event::Pong)),
            Command::Refresh { token } => self.refresh(&token),
            Command::Presence { room } => self.presence(&room).await,
        };
        match result {
            Ok(Some(event)) => self.reply(id, event).await,
            Ok(None) => {}
            Err(refusal) => self.refuse(id, refusal).await,
        }
        None
    }

    fn count_abuse(&mut self) -> Option<Exit> {
        let now = Instant::now();
        let (start, count) = &mut self.abuse_window;
        if now.duration_since(*start) > ABUSE_WINDOW {
            *start = now;
            *count = 0;
        }
        *count += 1;
        let limits = &self.shared.config.limits;
        let threshold = limits
            .commands_per_second
            .saturating_mul(limits.abuse_factor.max(1));
        (*count > threshold).then(|| {
            Exit::Close(
                CloseCode::RateAbuse,
                "command rate limit exceeded repeatedly".into(),
            )
        })
    }

    fn room(&self, room: &str) -> Result<RoomKey, Refusal> {
        let room = RoomName::parse(room)
            .map_err(|e| Refusal::new(ErrorCode::InvalidRoom, format!("invalid room name: {e}")))?;
        Ok(RoomKey {
            tenant: self.grant.tenant.clone(),
            room,
        })
    }

    async fn subscribe(
        &mut self,
        cmd_id: u32,
        room: &str,
        resume: Option<Position>,
    ) -> Result<Option<Event>, Refusal> {
        let key = self.room(room)?;
        if !self.grant.may_subscribe(&key.room) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!("no subscribe permission for room {}", key.room),
            ));
        }
        if self.subs.contains_key(&key.room) {
            return Err(Refusal::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {}", key.room),
            ));
        }
        let max = self.shared.config.limits.max_subscriptions as usize;
        if self.subs.len() >= max {
            return Err(Refusal::new(
                ErrorCode::TooManySubscriptions,
                format!("subscription limit of {max} reached"),
            ));
        }

        let sub_id = self.shared.next_sub_id.fetch_add(1, Ordering::Relaxed);
        let (queue, queue_rx) = mpsc::channel(self.shared.config.limits.subscriber_queue.max(1));
        let overflow = CancellationToken::new();
        // Live deliveries start queueing before history is read, so the replay and the live
        // queue overlap rather than leave a gap; the writer drops the overlap by offset.
        let first = self.shared.hub.subscribe(
            key.clone(),
            Subscriber {
                id: sub_id,
                queue,
                overflow: overflow.clone(),
            },
        );
        let prepared = async {
            if first {
                self.shared.broker.add_interest(key.clone()).await?;
            }
            self.shared.broker.recover(key.clone(), resume).await
        };
        let recovered = match prepared.await {
            Ok(recovered) => recovered,
            Err(e) => {
                if self.shared.hub.unsubscribe(&key, sub_id) {
                    let _ = self.shared.broker.remove_interest(key.clone()).await;
                }
                return Err(Refusal::new(ErrorCode::Unavailable, e.to_string()));
            }
        };

        let mut preamble = encode_event(&ServerFrame {
            id: cmd_id,
            event: Event::SubscriptionStream {
                room: key.room.to_string(),
            },
        })
        .to_vec();
        let (recovery, skip_through) = match (resume, recovered.replay) {
            (None, _) => (Recovery::NotRequested, None),
            (Some(_), None) => (Recovery::Failed, None),
            (Some(since), Some(replay)) => {
                let last = replay.last().map_or(since.offset, |(p, _)| p.offset);
                for (position, payload) in &replay {
                    preamble.extend_from_slice(&publication_frame(
                        &key,
                        Some(*position),
                        payload.clone(),
                    ));
                }
                let replayed = u32::try_from(replay.len()).unwrap_or(u32::MAX);
                (Recovery::Recovered { replayed }, Some(last))
            }
        };
        // Without a resume, live messages older than the position we announce are skipped too,
        // so `position` is exactly where this subscriber's stream starts.
        let skip_through = skip_through.or(recovered.current.map(|p| p.offset));
        tokio::spawn(
            Writer {
                sink: if self.shared.config.ablation.single_stream {
                    Sink::Control(self.out.clone())
                } else {
                    Sink::OwnStream(self.conn.clone())
                },
                sub_id,
                preamble,
                skip_through,
                queue: queue_rx,
                overflow,
                ended: self.ended_tx.clone(),
            }
            .run(),
        );
        metrics::gauge!(m::SUBSCRIPTIONS_ACTIVE).increment(1.0);
        debug!(session = %self.id, room = %key.room, ?recovery, "subscribed");
        let room = key.room.to_string();
        if self.shared.config.presence(&key.room) {
            self.announce_presence(&key, true).await;
        }
        self.subs.insert(key.room.clone(), Sub { id: sub_id, key });
        Ok(Some(Event::Subscribed {
            room,
            position: recovered.current,
            recovery,
        }))
    }

    async fn unsubscribe(&mut self, room: &str) -> Result<Option<Event>, Refusal> {
        let key = self.room(room)?;
        let Some(sub) = self.subs.remove(&key.room) else {
            return Err(Refusal::new(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {}", key.room),
            ));
        };
        self.drop_sub(sub).await;
        Ok(Some(Event::Unsubscribed {
            room: key.room.to_string(),
            code: 0,
            reason: String::new(),
        }))
    }

    async fn publish(
        &mut self,
        room: &str,
        payload: Bytes,
        ack: bool,
    ) -> Result<Option<Event>, Refusal> {
        let key = self.room(room)?;
        if !self.grant.may_publish(&key.room) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!("no publish permission for room {}", key.room),
            ));
        }
        let max = self.shared.config.limits.max_payload as usize;
        if payload.len() > max {
            return Err(Refusal::new(
                ErrorCode::PayloadTooLarge,
                format!("payload of {} bytes exceeds {max}", payload.len()),
            ));
        }
        let position = self
            .shared
            .broker
            .publish(key, payload)
            .await
            .map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?;
        metrics::counter!(m::PUBLICATIONS).increment(1);
        Ok(ack.then_some(Event::Published { position }))
    }

    fn refresh(&mut self, token: &str) -> Result<Option<Event>, Refusal> {
        let grant = self
            .shared
            .verifier
            .verify(token)
            .map_err(|e| Refusal::new(ErrorCode::InvalidToken, e.to_string()))?;
        if grant.user != self.grant.user || grant.tenant != self.grant.tenant {
            return Err(Refusal::new(
                ErrorCode::InvalidToken,
                "token is for another user or tenant",
            ));
        }
        let expires_at = grant.expires_at;
        self.grant = grant;
        debug!(session = %self.id, expires_at, "token refreshed");
        Ok(Some(Event::Refreshed {
            expires_at: Some(expires_at),
        }))
    }

    async fn subscription_ended(&mut self, end: Ended) {
        let Some(room) = self
            .subs
            .iter()
            .find(|(_, s)| s.id == end.sub_id)
            .map(|(r, _)| r.clone())
        else {
            return;
        };
        let Some(sub) = self.subs.remove(&room) else {
            return;
        };
        self.drop_sub(sub).await;
        if let Some((code, reason)) = end.cause {
            warn!(session = %self.id, %room, %code, "subscription ended by server");
            self.reply(
                0,
                Event::Unsubscribed {
                    room: room.to_string(),
                    code: code.as_u16(),
                    reason: reason.to_owned(),
                },
            )
            .await;
        } else {
            debug!(session = %self.id, %room, "client stopped the subscription stream");
        }
    }

    async fn presence(&self, room: &str) -> Result<Option<Event>, Refusal> {
        let key = self.room(room)?;
        if !self.grant.may_subscribe(&key.room) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!("no subscribe permission for room {}", key.room),
            ));
        }
        if !self.shared.config.presence(&key.room) {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("namespace {} does not track presence", key.room.namespace()),
            ));
        }
        let room = key.room.to_string();
        let members = self
            .shared
            .broker
            .members(key)
            .await
            .map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?;
        let max_frame = self.shared.config.limits.max_frame as usize;
        Ok(Some(crate::presence::bounded_event(
            room, members, max_frame,
        )))
    }

    /// Records (or removes) this session's presence in a room and tells the room. Presence is
    /// best effort: a broker failure is logged, never fails the subscription.
    async fn announce_presence(&self, key: &RoomKey, joined: bool) {
        let member = Member {
            user: self.grant.user.clone(),
            session: self.id.clone(),
        };
        let stored = if joined {
            self.shared.broker.join(key.clone(), member.clone()).await
        } else {
            self.shared.broker.leave(key.clone(), member.clone()).await
        };
        let room = key.room.to_string();
        let event = if joined {
            Event::Joined { room, member }
        } else {
            Event::Left { room, member }
        };
        let frame = encode_event(&ServerFrame { id: 0, event });
        if let Err(e) = stored.and(self.shared.broker.announce(key.clone(), frame).await) {
            warn!(session = %self.id, room = %key.room, error = %e, "presence not recorded");
        }
    }

    /// Removes a subscription from the hub (ending its writer) and the broker's interest.
    async fn drop_sub(&self, sub: Sub) {
        metrics::gauge!(m::SUBSCRIPTIONS_ACTIVE).decrement(1.0);
        if self.shared.config.presence(&sub.key.room) {
            self.announce_presence(&sub.key, false).await;
        }
        if self.shared.hub.unsubscribe(&sub.key, sub.id) {
            if let Err(e) = self.shared.broker.remove_interest(sub.key).await {
                warn!(error = %e, "broker refused to drop interest");
            }
        }
    }

    /// Frees everything the session registered.
    async fn release(&mut self) {
        for (_, sub) in std::mem::take(&mut self.subs) {
            self.drop_sub(sub).await;
        }
    }

    async fn reply(&mut self, id: u32, event: Event) {
        if self.stalled {
            return;
        }
        let frame = encode_event(&ServerFrame { id, event });
        let wait = self.shared.config.timeouts.reply;
        if tokio::time::timeout(wait, self.out.send(frame))
            .await
            .is_err()
        {
            self.stalled = true;
        }
    }

    async fn refuse(&mut self, id: u32, Refusal(code, message): Refusal) {
        metrics::counter!(m::COMMANDS_REFUSED, "code" => code.label()).increment(1);
        debug!(session = %self.id, %code, %message, "command refused");
        self.reply(
            id,
            Event::Error {
                code: code.as_u16(),
                message,
            },
        )
        .await;
    }
}

fn expiry_instant(expires_at: u64) -> tokio::time::Instant {
    let left = expires_at.saturating_sub(unix_now());
    tokio::time::Instant::now() + Duration::from_secs(left)
}
