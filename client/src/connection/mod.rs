//! The connection state machine: one actor owns the session, the subscriptions, the replies in
//! flight and the publish buffer, and decides when to reconnect, resubscribe (resuming from the
//! last position), refresh the token, and declare a silent server dead. [`crate::Client`]
//! handles talk to it through [`Request`]s; the tasks of the live connection (see
//! `transport/`: writer, readers, one delivery task per subscription) report to it through
//! [`ConnEvent`]s tagged with the connection's epoch, so events from a connection that has since
//! been torn down are ignored. It never looks at which transport carries the session.
//!
//! Here: the actor's types and its loop. `lifecycle.rs` holds the connection's lifecycle
//! (established, lost, reconnect, close) and the heartbeat, `commands.rs` the application's
//! requests and the server's replies, `subscriptions.rs` the subscriptions' life, `refresh.rs`
//! the token refresh.
//!
//! Nothing in the actor awaits the network: it only reacts to messages and timers, so a slow
//! server can never wedge the control stream's reader behind the writer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use quiver_proto::{
    encode_command, ClientFrame, CloseCode, Command, ErrorCode, Event, Limits, Member, Position,
    Recovery, ServerFrame, DEFAULT_MAX_FRAME, LENGTH_PREFIX,
};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio::task::{AbortHandle, JoinSet};

use crate::client::{lock, ConnectionState, Shared};
use crate::config::ClientConfig;
use crate::error::{clip, ClientError};
use crate::heartbeat::{Beat, Liveness, Watch};
use crate::latest::{LatestCell, LatestRoutes};
use crate::pacer::{Pacer, SharedPacer};
use crate::subscription::{SubEvent, SubParts};
use crate::transport::{deliver, Connector, EndGrace, Established, Link, RunCtx, SubStream};
use crate::writer::{Claim, Outgoing, WriterHandle};

mod commands;
mod datagrams;
mod lifecycle;
mod refresh;
mod subscriptions;

use refresh::{refresh_deadline, refresh_done, unix_now};

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// Frame id of `Hello`; later commands count up from here.
pub(crate) const HELLO_ID: u32 = 1;

/// What a [`crate::Client`] asks of the connection task.
pub(crate) enum Request {
    Subscribe {
        room: String,
        /// Resume after this position (`subscribe_from`).
        from: Option<Position>,
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
        /// Holds its place in the publish buffer until it is written (across a reconnect too:
        /// one sent again still holds it, so the buffer bounds what waits in all, outside
        /// audit 115, F9); withdrawn by a `publish_ack` caller that gave up before that.
        claim: Claim,
    },
    /// A `publish_ack` caller withdrew its publication: let go of every withdrawn one (their
    /// buffer places and pending replies) now, not when the writer or a reconnect reaches them.
    Withdrawn,
    Ping {
        reply: Reply<Duration>,
    },
    /// `Client::flush`: the datagram publications made before it handed to the transport (those
    /// waiting for the pacer sent as tokens free up), then a `Ping` answered.
    Flush {
        reply: Reply<Duration>,
    },
    /// A publication to a `latest` room, sent as a datagram where possible.
    PublishUnreliable {
        room: String,
        payload: Bytes,
        /// Its place in the publish buffer; none when the buffer was full while disconnected:
        /// it may then only replace its room's buffered value, and `replaced` says whether it
        /// did.
        permit: Option<OwnedSemaphorePermit>,
        replaced: Option<oneshot::Sender<bool>>,
    },
    Presence {
        room: String,
        reply: Reply<Vec<Member>>,
    },
    PresenceStats {
        room: String,
        reply: Reply<crate::PresenceStats>,
    },
    History {
        room: String,
        since: Option<Position>,
        limit: u32,
        reply: Reply<crate::HistoryPage>,
    },
    Call {
        method: String,
        payload: Bytes,
        timeout_ms: u32,
        idempotency_key: String,
        reply: Reply<Bytes>,
        /// Withdrawn by a caller that gave up before the frame was written: never sent late.
        claim: Claim,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Control frames a connection's reader may have read and handed on before the state machine
/// has handled them: past it the reader waits, so the server's frames wait in the transport
/// (TCP's or QUIC's flow control), not in this process. Without it a server flooding `Pong`s
/// grew the client by 100 MB a second (outside client audit 13, F1).
pub(crate) const CONTROL_CREDIT: usize = 64;

/// A control frame's place among a connection's [`CONTROL_CREDIT`], given back when the state
/// machine has handled (or dropped) the frame.
pub(crate) type Credit = OwnedSemaphorePermit;

/// How long a subscription must have lasted for its next re-subscribe to start the backoff
/// again (as the TypeScript client's `STABLE_MS`).
const STABLE: Duration = Duration::from_secs(5);

/// What the tasks of a connection (or a connect attempt) report.
pub(crate) enum ConnEvent {
    Attempt(Box<Result<Established, ClientError>>),
    Frame(ServerFrame, Credit),
    /// A subscription's frames begin (`SubscriptionStream` with the `Subscribe`'s id).
    Stream {
        id: u32,
        room: String,
        stream: SubStream,
        /// WebSocket: its place in `CONTROL_CREDIT`, as a control frame's (a server repeating
        /// `SubscriptionStream` for a room it announced handed on events without bound:
        /// outside audit 115, F8); WebTransport's streams are bounded by QUIC's stream limit.
        credit: Option<Credit>,
    },
    /// WebSocket: the subscription with this `SubscriptionStream` id fell behind; the reader
    /// stopped routing its frames.
    Overflow {
        id: u32,
        room: String,
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
    /// The stream of the subscription `id` (its `Subscribe`'s) ended `STREAM_END_GRACE` ago.
    StreamEnded {
        room: String,
        id: u32,
    },
    /// The subscription `id` was confirmed [`stream_wait`] ago: its stream must have come.
    StreamDue {
        room: String,
        id: u32,
    },
}

/// How long after a subscription's stream ends its `Unsubscribed` may still come.
const STREAM_END_GRACE: Duration = Duration::from_secs(5);

/// How long after its `Subscribed` a subscription's stream may still come: the server opens
/// it or ends the subscription (`stream_limit`, 114) within `timeouts.stream_open` (5 s,
/// PROTOCOL.md §5), here with a reply's time to arrive on top.
fn stream_wait(cfg: &ClientConfig) -> Duration {
    cfg.request_timeout.saturating_add(STREAM_END_GRACE)
}

pub(crate) type EventTx = mpsc::UnboundedSender<(u64, ConnEvent)>;

/// A command waiting for its reply, by frame id.
enum Pending {
    Subscribe {
        room: String,
        gen: u64,
        /// It carried a resume position: a server must answer `Recovered` or `Failed`.
        resumed: bool,
    },
    Unsubscribe {
        reply: Option<Reply<()>>,
    },
    PublishAck {
        reply: Reply<Option<Position>>,
        /// The room and payload, sent again after a drain's goodbye left it unanswered (the
        /// server carried out every command it answered before `Goodbye 3000`, and no other),
        /// or when the connection went before it was written (`claim`).
        again: (String, Bytes),
        /// Taken by the writer as it writes the frame, or by the teardown to keep it.
        claim: Claim,
    },
    Ping {
        sent: Instant,
        reply: Reply<Duration>,
    },
    Presence {
        reply: Reply<Vec<Member>>,
    },
    PresenceStats {
        reply: Reply<crate::PresenceStats>,
    },
    History {
        reply: Reply<crate::HistoryPage>,
    },
    Call {
        reply: Reply<Bytes>,
    },
    Refresh,
    /// A heartbeat `Ping`: its `Pong` matters only as traffic.
    Heartbeat,
}

/// `pending`'s size at which abandoned requests are first looked for.
const PRUNE_FIRST: usize = 64;

impl Pending {
    /// A request nobody waits for the answer of any more. An acknowledged publish is one too
    /// once its caller gave up: a drain's goodbye sends again only those still awaited
    /// (`Buffered::abandoned`), so keeping it kept its payload for nothing, for the session's
    /// life with a server that never answers (outside audit 73). Subscribes, unsubscribes and
    /// refreshes are kept: their answers change the client's state.
    fn abandoned(&self) -> bool {
        match self {
            Pending::PublishAck { reply, .. } => reply.is_closed(),
            Pending::Ping { reply, .. } => reply.is_closed(),
            Pending::Presence { reply } => reply.is_closed(),
            Pending::PresenceStats { reply } => reply.is_closed(),
            Pending::History { reply } => reply.is_closed(),
            Pending::Call { reply } => reply.is_closed(),
            Pending::Subscribe { .. }
            | Pending::Unsubscribe { .. }
            | Pending::Refresh
            | Pending::Heartbeat => false,
        }
    }
}

/// A publish without acknowledgement that the writer may not have written yet.
struct Unacked {
    id: u32,
    claim: Claim,
    room: String,
    payload: Bytes,
}

/// A publish made while disconnected, or to send again after a drain.
struct Buffered {
    room: String,
    payload: Bytes,
    ack: Option<Reply<Option<Position>>>,
    /// Held for this buffer, or withdrawn by its caller; made writable again when it is sent.
    /// Holds its place in `ClientConfig::publish_buffer` until written.
    claim: Claim,
    /// An unreliable publish buffered while disconnected: a newer one to its room replaces it.
    newest_only: bool,
}

impl Buffered {
    /// Whether its `publish_ack` caller gave up (timed out, or was dropped) before it was
    /// written: it is then withdrawn, never sent later, so a caller that retries after a
    /// timeout does not publish twice (outside audit 45, 1).
    fn abandoned(&self) -> bool {
        self.claim.is_withdrawn() || self.ack.as_ref().is_some_and(|reply| reply.is_closed())
    }
}

/// One room the application is subscribed to (or waiting to be).
struct Sub {
    gen: u64,
    /// The subscription's event queue, bounded in events and in bytes; readers get clones.
    /// Dropping every sender ends it.
    tx: crate::subscription::QueueTx,
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
    /// When the last `Subscribed` came: a subscription that lasted [`STABLE`] starts its
    /// re-subscribe backoff again from the first delay.
    confirmed_at: Option<Instant>,
    /// Re-subscribes in a row (the server ended or refused the room each time): the backoff's
    /// exponent.
    retries: u32,
    /// The subscription's frames, when they began before `Subscribed`.
    stream: Option<SubStream>,
    /// How the current stream starts (`Resubscribed`) and what its positions are checked
    /// against: set by `Subscribed`.
    preamble: Option<subscriptions::Start>,
    reader: Option<AbortHandle>,
    /// Tells the reader the subscription ended (WebTransport): its waits on the stream are then
    /// bounded by [`STREAM_END_GRACE`] (`crate::transport::EndGrace`).
    reader_end: Option<oneshot::Sender<()>>,
    /// The newest value of a `latest` room (PROTOCOL.md §10), shared with the `Subscription`.
    latest: Arc<LatestCell>,
}

impl Sub {
    /// Forgets everything tied to the connection that just went away.
    pub(super) fn reset_connection(&mut self) {
        self.cmd_id = None;
        self.confirmed = false;
        self.stream = None;
        self.preamble = None;
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        self.reader_end = None;
    }
}

struct Live {
    link: Link,
    writer: WriterHandle,
    tasks: JoinSet<()>,
    liveness: Arc<Liveness>,
    /// The heartbeat and when to look at it next.
    heartbeat: Option<(Watch, tokio::time::Instant)>,
    /// When the oldest heartbeat `Ping` still unanswered was sent: packets (the transport's
    /// acknowledgements, a WebSocket pong) prove the server's machine alive, only an answer
    /// proves its session is.
    unanswered_since: Option<Instant>,
    /// [`Link::datagrams_received`] when the heartbeat last looked, and when that was.
    datagrams_seen: (Option<u64>, Instant),
    pending: HashMap<u32, Pending>,
    /// `pending`'s size at which abandoned requests are looked for next.
    prune_at: usize,
    /// Replies that answered no command of this connection so far (`Live::unexpected`).
    unexpected: u32,
    /// Publishes without acknowledgement handed to the writer, by id, until it claims them
    /// (pruned from the front: it claims in order): those it never claimed go out again on the
    /// next session. At most `publish_buffer` unclaimed (each holds its place until written).
    unacked: VecDeque<Unacked>,
    next_id: u32,
    limits: Limits,
    /// When to fetch a new token and send `Refresh`.
    refresh_at: Option<tokio::time::Instant>,
    refresh_failures: u32,
    /// When its `Welcome` came.
    since: Instant,
    /// The writer's pacer, which datagram publications take tokens of too.
    pacer: Option<SharedPacer>,
    /// Datagram publications waiting for a pacer token, and when one is due.
    datagrams: datagrams::HeldDatagrams,
    datagram_at: Option<tokio::time::Instant>,
    /// `Client::flush` calls waiting for the datagram publications held before their mark
    /// ([`datagrams::HeldDatagrams::mark`]) to be sent, in the order they came; then each sends
    /// its `Ping`.
    flushes: VecDeque<(u64, Reply<Duration>)>,
}

/// How long a session must last for the reconnect backoff to start over after it ends.
const STABLE_SESSION: std::time::Duration = std::time::Duration::from_secs(10);

impl Live {
    /// The command waiting under `id`, if it is of the kind a reply names: a reply of another
    /// kind (a hostile or broken server's) leaves it waiting instead of dropping it.
    fn take(&mut self, id: u32, is: impl Fn(&Pending) -> bool) -> Option<Pending> {
        if self.pending.get(&id).is_some_and(is) {
            self.pending.remove(&id)
        } else {
            None
        }
    }

    fn next_id(&mut self) -> u32 {
        let mut id = self.next_id;
        // Skip 0 (unsolicited events) and ids still waiting for a reply.
        while id == 0 || self.pending.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        id
    }

    /// Queues `command`, its answer awaited as `pending`; its frame id. A command too large for
    /// the session's `max_frame` is not sent ([`Live::queue`]): its reply (if any) fails with
    /// the error returned.
    fn send(&mut self, command: Command, pending: Option<Pending>) -> Result<u32, ClientError> {
        self.send_with(command, pending)
    }

    fn send_with(
        &mut self,
        command: Command,
        pending: Option<Pending>,
    ) -> Result<u32, ClientError> {
        let claim = match &pending {
            Some(Pending::PublishAck { claim, .. }) => Some(claim.clone()),
            _ => None,
        };
        self.send_claimed(command, pending, claim)
    }

    /// [`Live::send_with`] with the `claim` that lets the caller withdraw the frame while it
    /// waits to be written.
    fn send_claimed(
        &mut self,
        command: Command,
        pending: Option<Pending>,
        claim: Option<Claim>,
    ) -> Result<u32, ClientError> {
        let id = self.next_id();
        if let Err(e) = self.queue(id, command, claim) {
            match pending {
                // Not carried out, so not the "gone with the session" `Ok` of `fail_pending`.
                Some(Pending::Unsubscribe { reply: Some(reply) }) => {
                    let _ = reply.send(Err(e.clone()));
                }
                Some(p) => lifecycle::fail_pending(p, || e.clone()),
                None => {}
            }
            return Err(e);
        }
        if let Some(p) = pending {
            self.pending.insert(id, p);
            if self.pending.len() >= self.prune_at {
                self.prune_abandoned();
            }
        }
        Ok(id)
    }

    /// Forgets the requests whose caller stopped waiting (a `Timeout`): a server that never
    /// answers them would otherwise make them pile up for the session's life (outside audit
    /// 68, 6). Run when `pending` doubles, so it costs a constant per request.
    fn prune_abandoned(&mut self) {
        self.pending.retain(|_, p| !p.abandoned());
        self.prune_at = (self.pending.len() * 2).max(PRUNE_FIRST);
    }

    /// A publish without acknowledgement, kept in `unacked` until the writer claims it.
    fn send_unacked(&mut self, room: String, payload: Bytes, claim: Claim) {
        self.prune_unacked();
        let id = self.next_id();
        let command = Command::Publish {
            room: room.clone(),
            payload: payload.clone(),
            ack: false,
        };
        match self.queue(id, command, Some(claim.clone())) {
            Ok(()) => self.unacked.push_back(Unacked {
                id,
                claim,
                room,
                payload,
            }),
            // Nobody waits to hear about a publish without ack: said in the log.
            Err(e) => tracing::warn!(room = %clip(&room), "dropping a publish: {e}"),
        }
    }

    /// Lets go of the publishes without acknowledgement that the writer has taken.
    fn prune_unacked(&mut self) {
        while self.unacked.front().is_some_and(|u| u.claim.is_taken()) {
            self.unacked.pop_front();
        }
    }

    /// Hands the command's frame to the writer, unless it is larger than the session's
    /// `max_frame`: the server would take such a frame as a protocol error and close the whole
    /// session for good (3001, `reconnect: false`), every subscription with it, so it fails
    /// here instead, alone (outside audit 115, F1: a 70 KB room name given to `subscribe`
    /// closed the client).
    fn queue(
        &mut self,
        id: u32,
        command: Command,
        claim: Option<Claim>,
    ) -> Result<(), ClientError> {
        let code = commands::oversize_code(&command);
        let frame = encode_command(&ClientFrame { id, command });
        let body = frame.len().saturating_sub(LENGTH_PREFIX);
        let max = self.limits.max_frame as usize;
        if body > max {
            return Err(ClientError::server(
                code,
                format!(
                    "command of {body} bytes exceeds the session's max_frame of {max} \
                     (checked locally, not sent)"
                ),
            ));
        }
        // If the writer is gone the connection is being torn down: the Lost event follows and
        // fails the pending reply.
        let _ = self.writer.queue.send(Outgoing { frame, claim });
        Ok(())
    }

    /// A heartbeat `Ping`, ahead of anything queued.
    fn send_heartbeat(&mut self) {
        self.unanswered_since.get_or_insert_with(Instant::now);
        let id = self.next_id();
        self.pending.insert(id, Pending::Heartbeat);
        let frame = encode_command(&ClientFrame {
            id,
            command: Command::Ping,
        });
        let _ = self.writer.priority.send(frame);
    }
}

/// Connects (first attempt, failing fast) and spawns the connection task.
pub(crate) async fn start(
    mut config: ClientConfig,
    shared: Arc<Shared>,
) -> Result<
    (
        mpsc::UnboundedSender<Request>,
        watch::Receiver<ConnectionState>,
    ),
    ClientError,
> {
    // Durations the heartbeat adds to instants: bounded, so none overflows (outside audit 115,
    // F12).
    config.heartbeat = config.heartbeat.map(|hb| hb.bounded());
    let connector = Arc::new(Connector::new(config.clone()));
    connector.check()?;
    let mut last_err = None;
    let mut established = None;
    let mut url_index = 0;
    for i in 0..connector.targets() {
        match connector.attempt(i).await {
            Ok(est) => {
                established = Some(est);
                url_index = i;
                break;
            }
            // A busy or draining instance (429, 503) says "try later, or another instance"
            // (PROTOCOL.md §1, §9.1): the next URL is tried, as for one that is down (outside
            // audit 26: the first connect gave up on a 429 from the first of several URLs).
            Err(
                e @ ClientError::Refused {
                    status: Some(429 | 503),
                    ..
                },
            ) => {
                tracing::debug!(target = i, error = %e, "connect attempt refused for now");
                last_err = Some(e);
            }
            Err(
                e @ (ClientError::Refused { .. }
                | ClientError::TokenRefused { .. }
                | ClientError::Token(_)
                | ClientError::Closed { .. }),
            ) => return Err(e),
            Err(e) => {
                tracing::debug!(target = i, error = %e, "connect attempt failed");
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
        connector,
        shared,
        state_tx,
        req_rx,
        ev_tx,
        ev_rx,
        epoch: 1,
        live: None,
        latest_routes: LatestRoutes::default(),
        subs: HashMap::new(),
        next_gen: 1,
        buffer: VecDeque::new(),
        failures: 0,
        url_index,
        reconnect_at: None,
        closed: false,
        closing: None,
    };
    actor.on_established(est);
    tokio::spawn(actor.run());
    Ok((req_tx, state_rx))
}

pub(crate) fn code_forbids_reconnect(code: u16) -> bool {
    CloseCode::from_u16(code).is_some_and(|c| !c.reconnect())
}

struct Actor {
    cfg: ClientConfig,
    connector: Arc<Connector>,
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
    /// A `close()` flushing what was accepted before the connection closes.
    closing: Option<lifecycle::Closing>,
    /// `latest` subscriptions by the current connection's subscription ids.
    latest_routes: LatestRoutes,
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
            let heartbeat_at = self
                .live
                .as_ref()
                .and_then(|l| l.heartbeat.as_ref().map(|(_, at)| *at));
            let reconnect_at = self.reconnect_at;
            let datagram_at = self.live.as_ref().and_then(|l| l.datagram_at);
            // Held datagram values are given up at `datagrams_until` (then the end may go),
            // the close itself at `deadline`.
            let close_at = self.closing.as_ref().map(|c| {
                let held = self.live.as_ref().is_some_and(|l| !l.datagrams.is_empty());
                if held && tokio::time::Instant::now() < c.datagrams_until {
                    c.datagrams_until
                } else {
                    c.deadline
                }
            });
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
                _ = sleep_until_opt(heartbeat_at) => self.on_heartbeat(),
                _ = sleep_until_opt(datagram_at) => self.flush_datagrams(),
                _ = sleep_until_opt(close_at) => {}
                Some(_) = async {
                    match self.live.as_mut() {
                        Some(l) if !l.tasks.is_empty() => l.tasks.join_next().await,
                        _ => std::future::pending().await,
                    }
                } => {}
            }
            // Whatever happened may be what a close waits for (the last acknowledgement).
            self.advance_close();
        }
    }

    fn set_state(&self, state: ConnectionState) {
        self.state_tx.send_replace(state);
    }

    // ----- events from the connection's tasks -----

    fn on_event(&mut self, epoch: u64, ev: ConnEvent) {
        if epoch != self.epoch {
            if let ConnEvent::Attempt(res) = ev {
                if let Ok(est) = *res {
                    est.abandon("superseded");
                }
            }
            return;
        }
        match ev {
            ConnEvent::Attempt(res) => match *res {
                Ok(est) => self.on_established(est),
                Err(ClientError::Closed { code, reason }) => self.close_all(code, reason, true),
                // The token was refused for good (3007 token_invalid): retrying with it is
                // pointless. 3002 token_expired goes on: the next attempt asks for a fresh one.
                Err(ClientError::TokenRefused { code, reason }) if code_forbids_reconnect(code) => {
                    tracing::warn!(code, %reason, "token refused; not reconnecting");
                    self.close_all(code, reason, true);
                }
                // The same expired token twice: the provider has no other (`token_fixed`).
                Err(ClientError::TokenRefused { code, reason })
                    if self.connector.expired_again() =>
                {
                    tracing::warn!(code, %reason, "the token provider gave the expired token again; not reconnecting");
                    self.close_all(code, reason, true);
                }
                Err(ClientError::TokenRefused { code, reason }) => {
                    tracing::warn!(code, %reason, "token refused; reconnecting with a fresh one");
                    self.set_state(ConnectionState::Disconnected { code, reason });
                    self.schedule_reconnect();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconnect attempt failed");
                    // The server's goodbye code when it gave one (PROTOCOL.md §7).
                    let code = match &e {
                        ClientError::Goodbye { code, .. } => *code,
                        _ => 0,
                    };
                    self.set_state(ConnectionState::Disconnected {
                        code,
                        reason: e.to_string(),
                    });
                    self.schedule_reconnect();
                }
            },
            // The credit goes back once the frame is handled.
            ConnEvent::Frame(frame, _credit) => self.on_frame(frame),
            ConnEvent::Stream {
                id,
                room,
                stream,
                credit,
            } => {
                self.on_stream(id, room, stream);
                // Given back once the stream is handled.
                drop(credit);
            }
            ConnEvent::Overflow { id, room } => self.on_overflow(id, &room),
            ConnEvent::Lost { code, reason } => {
                let reconnect = !code_forbids_reconnect(code);
                // A close code is not the goodbye frame: see `teardown`'s `goodbye`.
                self.teardown(code, reason, reconnect, false);
            }
            ConnEvent::RefreshToken(res) => self.on_refresh_token(res),
            ConnEvent::StreamEnded { room, id } => self.on_stream_ended(&room, id),
            ConnEvent::StreamDue { room, id } => self.on_stream_due(&room, id),
            ConnEvent::RetrySubscribe { room, gen } => {
                if self.subs.get(&room).is_some_and(|s| s.gen == gen) {
                    self.send_subscribe(&room);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_nobody_waits_for_are_abandoned() {
        let (reply, waiting) = oneshot::channel();
        let presence = Pending::Presence { reply };
        assert!(!presence.abandoned());
        drop(waiting);
        assert!(presence.abandoned(), "its caller timed out");
        let (reply, waiting) = oneshot::channel();
        drop(waiting);
        let publish = Pending::PublishAck {
            reply,
            again: ("r".into(), Bytes::new()),
            claim: Claim::default(),
        };
        assert!(
            publish.abandoned(),
            "its caller gave up: never sent again after a drain either"
        );
        assert!(!Pending::Refresh.abandoned());
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
